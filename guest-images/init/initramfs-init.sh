#!/bin/busybox sh
# PID 1 of the initramfs. Under TCG every exec of a dynamically linked program costs ~0.15 s,
# so all set-up is done here with the static busybox and shell builtins: load the boot
# modules, mount the disposable root (a qcow2 overlay) and the read-only module disk (when
# the kernel has modules), mount the API file systems, apply sysctls, configure the network,
# then switch to the real root, where guest-init.sh only starts sshd and the console shell.
# Disks are found by their virtio serial, never by position (vda, vdb, ... follow the order
# in which QEMU attaches them, which depends on the kernel and on the extra disks).
# Errors go to the console prefixed "ksm-initramfs:" so the host can quote them.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "ksm-initramfs: $*" > /dev/console; poweroff -f; }
while read -r m; do
    [ -n "$m" ] || continue  # a kernel with everything built in has an empty list
    insmod "/modules/$m" || echo "ksm-initramfs: insmod $m failed" > /dev/console
done < /modules.list
# find_disk SERIAL: dev=/dev/NAME of the disk whose virtio serial is SERIAL, once its device
# node exists; false until then (no udev here, so no /dev/disk/by-id either)
find_disk() {
    dev=
    for b in /sys/block/*; do
        [ -e "$b/serial" ] || continue
        s=
        read -r s < "$b/serial"  # no newline at the end: read fails but sets s
        [ "$s" = "$1" ] || continue
        [ -b "/dev/${b##*/}" ] || return 1
        dev=/dev/${b##*/}
        return 0
    done
    return 1
}
# disks.list: the serial of every disk the harness attached, one a line: "root" always,
# "modules" when the kernel has a module tree, then the extra disks. Wait for all of them.
root= mods= i=0
while read -r serial; do
    [ -n "$serial" ] || continue
    until find_disk "$serial"; do
        i=$((i+1))
        [ $i -gt 500 ] && fail "no disk with serial '$serial' (virtio_blk missing?)"
        usleep 10000
    done
    case $serial in
        root) root=$dev ;;
        modules) mods=$dev ;;
    esac
done < /ksm/disks.list
[ -n "$root" ] || fail "no root disk in /ksm/disks.list"
R=/newroot
mount -t ext4 -o rw,noatime "$root" $R || fail "cannot mount root disk $root (serial root)"
mount -t tmpfs -o mode=0755 tmpfs $R/run
cp -a /ksm $R/run/ksm
if [ -n "$mods" ]; then
    read -r rel < /proc/sys/kernel/osrelease
    mount -t tmpfs -o mode=0755 tmpfs $R/lib/modules
    mkdir -p "$R/lib/modules/$rel"
    mount -t ext4 -o ro,noatime "$mods" "$R/lib/modules/$rel" \
        || fail "cannot mount module disk $mods (serial modules)"
fi
mount --move /dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
mount -t tmpfs tmpfs $R/tmp
mount --move /proc $R/proc
mount --move /sys $R/sys
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup
# memory and pids controllers for child cgroups (memory.max, memory.reclaim in scenarios)
echo "+memory +pids" > $R/sys/fs/cgroup/cgroup.subtree_control
# One memory cgroup for the guest's life. The first memcg turns static keys on (kmem and
# socket accounting) and freeing the last turns the socket key off; each flip rewrites
# kernel text through text_poke_bp()'s int3. Under QEMU 7.2's multi-threaded TCG a vCPU was
# seen stuck on an int3 already patched away, in __sk_mem_reduce_allocated (the socket key's
# site) as a test's cgroup came and went: flipped once here, before anything runs, the keys
# never move during a test (mm/memcontrol.c: static_branch_inc/dec per memcg).
mkdir $R/sys/fs/cgroup/ksm-harness-keys 2>/dev/null
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
# sysctls: "path value" lines, written with the shell's own echo (no exec)
while read -r path value; do
    [ -e "$R$path" ] || continue  # e.g. no numa_balancing without CONFIG_NUMA_BALANCING
    echo "$value" > "$R$path" || echo "ksm-initramfs: cannot set $path" > /dev/console
done < /ksm/sysctl.list
echo ksm-guest > $R/proc/sys/kernel/hostname
ip link set lo up
if ip link set eth0 up 2>/dev/null; then
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via 10.0.2.2
fi
exec switch_root $R /bin/sh /run/ksm/guest-init.sh
