#!/bin/sh
# PID 1 of the guest (no systemd: it would cost seconds under TCG). Mounts the API file
# systems, applies the run's sysctls, brings up the user-net address, starts sshd with the
# run's keys, then keeps a root shell on the serial console as a second channel.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
[ -r /run/ksm/sysctl.conf ] && sysctl -q -p /run/ksm/sysctl.conf
hostname ksm-guest
ip link set lo up
ip link set eth0 up 2>/dev/null && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
mkdir -p /run/sshd && chmod 0755 /run/sshd
/usr/sbin/sshd -f /run/ksm/sshd_config || echo "ksm-guest: sshd failed to start"
echo "KSM-HARNESS-READY $(uname -r)" > /dev/ttyS0
# The console shell: respawned forever; as PID 1 this loop also reaps orphans.
while :; do
    setsid -c /bin/sh </dev/ttyS0 >/dev/ttyS0 2>&1
done
