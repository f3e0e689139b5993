#!/bin/sh
# PID 1 of the guest (no systemd: it would cost seconds under TCG). The initramfs has done
# all set-up; start sshd with this run's keys (-r: no re-exec per connection, which costs
# a dynamic link under TCG), announce readiness, keep a root shell on the serial console.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mkdir -p /run/sshd
/usr/sbin/sshd -r -f /run/ksm/sshd_config || echo "ksm-guest: sshd failed to start"
echo "KSM-HARNESS-READY $(uname -r)" > /dev/ttyS0
# The console shell, respawned forever; as PID 1 this loop also reaps orphans.
while :; do
    setsid -c /bin/sh </dev/ttyS0 >/dev/ttyS0 2>&1
done
