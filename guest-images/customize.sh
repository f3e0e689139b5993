#!/bin/sh
# mmdebstrap customize hook: $1 is the root directory of the new image.
set -e
root="$1"
rm -f "$root"/etc/ssh/ssh_host_*          # the host supplies a key per run and pins it
mkdir -p "$root/lib/modules" "$root/opt/ksm" "$root/root/.ssh"
: > "$root/etc/machine-id"
echo ksm-guest > "$root/etc/hostname"
printf '127.0.0.1 localhost ksm-guest\n' > "$root/etc/hosts"
printf 'LABEL=ksm-root / ext4 rw,noatime 0 1\n' > "$root/etc/fstab"
# apt's lists and caches are dead weight in a disposable guest
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
