#!/bin/busybox sh
# PID 1 of the initramfs. Under TCG every exec of a dynamically linked program costs ~0.15 s,
# so all set-up is done here with the static busybox and shell builtins: load the boot
# modules, mount the disposable root (vda, a qcow2 overlay) and the read-only module disk
# (vdb), mount the API file systems, apply sysctls, configure the network, then switch to
# the real root, where guest-init.sh only starts sshd and the console shell.
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
i=0
while [ ! -b /dev/vda ]; do
    i=$((i+1)); [ $i -gt 500 ] && fail "no root disk /dev/vda (virtio_blk missing?)"
    usleep 10000
done
R=/newroot
mount -t ext4 -o rw,noatime /dev/vda $R || fail "cannot mount root /dev/vda"
mount -t tmpfs -o mode=0755 tmpfs $R/run
cp -a /ksm $R/run/ksm
if [ -b /dev/vdb ]; then
    read -r rel < /proc/sys/kernel/osrelease
    mount -t tmpfs -o mode=0755 tmpfs $R/lib/modules
    mkdir -p "$R/lib/modules/$rel"
    mount -t ext4 -o ro,noatime /dev/vdb "$R/lib/modules/$rel" \
        || echo "ksm-initramfs: cannot mount module disk /dev/vdb" > /dev/console
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
