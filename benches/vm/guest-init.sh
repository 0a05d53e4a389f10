#!/bin/sh
# PID 1 in the guest, on the host's read-only root (see
# benches/vm/initramfs-init.sh): the kernel loads modules through
# benches/vm/modprobe (Debian's modules, extracted by benches/flowtable_vm.sh),
# then the command the host put in $out/cmd.sh runs; its output goes to the
# serial console and to $out/guest.log; then the guest powers off.
set -u
out=$(sed -n 's/.*pier\.out=\([^ ]*\).*/\1/p' /proc/cmdline)
here=$(dirname "$0")
echo "$here/modprobe" > /proc/sys/kernel/modprobe
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp
ip link set lo up
echo "guest: kernel $(uname -r), $(nproc) CPUs"
sh "$out/cmd.sh" 2>&1 | tee "$out/guest.log"
echo "guest: done"
sync
echo o > /proc/sysrq-trigger
sleep 5
