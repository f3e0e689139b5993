#!/bin/busybox sh
# PID 1 of the initramfs: load the boot modules, mount the disposable root (vda, a qcow2
# overlay) and the read-only module disk (vdb), hand the per-run files over, switch root.
# Errors go to the console prefixed "ksm-initramfs:" so the host can quote them.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "ksm-initramfs: $*" > /dev/console; echo "KSM-HARNESS-BOOT-FAILED" > /dev/console; poweroff -f; }
for m in $(cat /modules.list); do
    insmod "/modules/$m" 2>/dev/null || echo "ksm-initramfs: insmod $m failed" > /dev/console
done
i=0
while [ ! -b /dev/vda ]; do
    i=$((i+1)); [ $i -gt 500 ] && fail "no root disk /dev/vda (virtio_blk missing?)"
    usleep 10000
done
mkdir -p /newroot
mount -t ext4 -o rw,noatime /dev/vda /newroot || fail "cannot mount root /dev/vda"
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mkdir -p /newroot/run/ksm
cp -a /ksm/. /newroot/run/ksm/
if [ -b /dev/vdb ]; then
    mount -t tmpfs -o mode=0755 tmpfs /newroot/lib/modules
    mkdir -p "/newroot/lib/modules/$(uname -r)"
    mount -t ext4 -o ro,noatime /dev/vdb "/newroot/lib/modules/$(uname -r)" \
        || echo "ksm-initramfs: cannot mount module disk /dev/vdb" > /dev/console
fi
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /bin/sh /run/ksm/guest-init.sh
