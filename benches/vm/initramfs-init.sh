#!/bin/busybox sh
# /init of the initramfs benches/flowtable_vm.sh builds: load the virtio and
# 9p modules, mount the host's root read-only (9p tag "hostroot") and the
# harness's output directory (tag "out"), give the guest writable tmpfs where
# tools write, and switch to the host root, where benches/vm/guest-init.sh
# runs the command the host wrote. Not part of CI (docs/datapath.md,
# "Flowtable offload, tested in a VM").
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.list); do insmod /mod/$m.ko || echo "initramfs: insmod $m failed"; done
mkdir -p /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 hostroot /newroot || { echo "initramfs: 9p mount failed"; poweroff -f; }
for d in tmp run var/tmp root; do mount -t tmpfs tmpfs /newroot/$d 2>/dev/null || echo "initramfs: no tmpfs on /$d"; done
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
out=$(sed -n 's/.*pier\.out=\([^ ]*\).*/\1/p' /proc/cmdline)
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 out "/newroot$out" || echo "initramfs: out mount failed"
guest=$(sed -n 's/.*pier\.init=\([^ ]*\).*/\1/p' /proc/cmdline)
exec switch_root /newroot "$guest"
