#!/bin/sh
# Manual harness (not CI: it needs /dev/kvm and Debian's archive): boot
# Debian's 6.1 kernel, which has CONFIG_NF_FLOW_TABLE, in a KVM guest whose
# root is this host's root over 9p (read-only), and run pier's flowtable
# test (tests/flowtable_vm.rs, #[ignore]d in plain `cargo test`) there.
# What it showed and how to read it: docs/datapath.md, "Flowtable offload,
# tested in a VM"; figures: docs/benchmarks.md.
#
#   sudo benches/flowtable_vm.sh            # the whole test, iperf3 included
#   sudo benches/flowtable_vm.sh -- NAME    # one test of tests/flowtable_vm.rs
#   FT_VM_SHELL='nft list ruleset' sudo benches/flowtable_vm.sh   # any command
#
# FT_VM_ROUNDS (iperf3 rounds, 3), FT_VM_ACCEL (qemu -accel: kvm, or tcg
# where /dev/kvm is missing or PVM), FT_VM_TIMEOUT (s, 3600).
#
# Downloads and the initramfs go to target/vm (git-ignored).
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
vm="$repo/target/vm"
mkdir -p "$vm/debs" "$vm/out"
[ "$(id -u)" = 0 ] || { echo "flowtable_vm: run as root (apt-get, /dev/kvm, namespaces in the guest)" >&2; exit 1; }

# 1. Debian's kernel (the version linux-image-amd64 points at), busybox, qemu.
pkg=$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: \(linux-image-[^ ]*-amd64\)$/\1/p' | head -n1)
[ -n "$pkg" ] || { echo "flowtable_vm: apt-cache knows no linux-image-amd64 (apt-get update?)" >&2; exit 1; }
kver=${pkg#linux-image-}
if [ ! -f "$vm/root/boot/vmlinuz-$kver" ]; then
	(cd "$vm/debs" && apt-get download "$pkg" busybox-static)
	for d in "$vm"/debs/*.deb; do dpkg-deb -x "$d" "$vm/root"; done
	"$vm/root/bin/busybox" depmod -b "$vm/root" "$kver"
fi
command -v qemu-system-x86_64 >/dev/null || apt-get install -y --no-install-recommends qemu-system-x86
command -v conntrack >/dev/null || apt-get install -y --no-install-recommends conntrack
command -v iperf3 >/dev/null || apt-get install -y --no-install-recommends iperf3

# 2. The initramfs: busybox, the modules the 9p root needs, benches/vm/initramfs-init.sh.
ird="$vm/initramfs"
rm -rf "$ird" && mkdir -p "$ird/bin" "$ird/mod" "$ird/proc" "$ird/sys" "$ird/dev"
cp "$vm/root/bin/busybox" "$ird/bin/busybox"
cp "$repo/benches/vm/initramfs-init.sh" "$ird/init"
mods="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci netfs fscache 9pnet 9pnet_virtio 9p"
: > "$ird/modules.list"
for m in $mods; do
	f=$(find "$vm/root/lib/modules/$kver/kernel" -name "$m.ko" | head -n1)
	[ -n "$f" ] || { echo "flowtable_vm: module $m not in $pkg" >&2; exit 1; }
	cp "$f" "$ird/mod/"
	echo "$m" >> "$ird/modules.list"
done
(cd "$ird" && find . | "$vm/root/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -1) > "$vm/initramfs.cpio.gz"

# 3. What the guest runs: the test binary of tests/flowtable_vm.rs, or $FT_VM_SHELL.
if [ -n "${FT_VM_SHELL:-}" ]; then
	printf '%s\n' "$FT_VM_SHELL" > "$vm/out/cmd.sh"
else
	[ "${1:-}" = "--" ] && shift
	(cd "$repo" && cargo build --bin pier && cargo test --test flowtable_vm --no-run)
	bin=$(cd "$repo" && cargo test --test flowtable_vm --no-run --message-format=json 2>/dev/null |
		sed -n 's/.*"executable":"\([^"]*flowtable_vm-[^"]*\)".*/\1/p' | tail -n1)
	[ -n "$bin" ] || { echo "flowtable_vm: no test binary" >&2; exit 1; }
	cat > "$vm/out/cmd.sh" <<CMD
cd "$repo"
export FT_VM=1 FT_VM_ROUNDS=${FT_VM_ROUNDS:-3} CARGO_MANIFEST_DIR="$repo"
"$bin" --ignored --nocapture --test-threads=1 $*
echo "flowtable_vm: test exit \$?"
CMD
fi
rm -f "$vm/out/guest.log"

# 4. Boot. -no-reboot: the guest's power-off ends qemu. KVM where it runs a
# stock kernel; a host whose KVM is PVM (kvm_pvm: the guest kernel must be
# built with CONFIG_PVM_GUEST, Debian's hangs before its first message)
# gets qemu's TCG emulation: slower, functionally the same kernel.
accel=${FT_VM_ACCEL:-kvm}
if [ -z "${FT_VM_ACCEL:-}" ] && { [ -d /sys/module/kvm_pvm ] || [ ! -w /dev/kvm ]; }; then
	accel=tcg,thread=multi,tb-size=512
fi
echo "flowtable_vm: $pkg in qemu, accel $accel"
timeout "${FT_VM_TIMEOUT:-3600}" qemu-system-x86_64 -accel "$accel" -m 2048 -smp 2 -nographic -no-reboot -nic none \
	-kernel "$vm/root/boot/vmlinuz-$kver" -initrd "$vm/initramfs.cpio.gz" \
	-virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
	-virtfs "local,path=$vm/out,mount_tag=out,security_model=none" \
	-append "console=ttyS0 panic=-1 pier.out=$vm/out pier.init=$repo/benches/vm/guest-init.sh" \
	> "$vm/out/console.log" 2>&1 || true
grep -q "flowtable_vm: test exit 0" "$vm/out/guest.log" 2>/dev/null || [ -n "${FT_VM_SHELL:-}" ] || {
	echo "flowtable_vm: the guest's test failed or did not finish; console: $vm/out/console.log" >&2
	tail -n 40 "$vm/out/console.log" >&2
	exit 1
}
grep '^FTVM\|^test ' "$vm/out/guest.log" 2>/dev/null | grep -v 'table:$' || true
echo "flowtable_vm: guest output in $vm/out/guest.log"
