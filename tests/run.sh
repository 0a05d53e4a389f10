#!/usr/bin/env bash
# Runs every test of pier: formatting, lints, unit, property, integration
# (network namespaces, real BIRD/FRR/GoBGP, real kernel) and bounded fuzzing.
# Needs root for the namespace tests; installs what it needs with apt-get
# when missing. Under CI=true a missing prerequisite fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
for pair in bird:bird2 vtysh:frr gobgpd:gobgpd nft:nftables ip:iproute2 iperf3:iperf3 tcpdump:tcpdump ping:iputils-ping \
    python3:python3 curl:curl iptables-legacy:iptables rpm:rpm mmdebstrap:mmdebstrap systemd-analyze:systemd vagrant:vagrant ruby:ruby; do
    bin=${pair%%:*}; pkg=${pair#*:}
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || [ -x "/usr/lib/frr/$bin" ] || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing ${need_pkgs[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
    else
        echo "warning: missing ${need_pkgs[*]} (run as root to install); tests needing them will skip" >&2
    fi
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace --lib --bins --tests --no-fail-fast
echo "== fuzz the BGP decoders (bounded: ${PIER_FUZZ_SECONDS:=20} s per target)"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
# cargo-fuzz needs nightly flags (sanitizers); RUSTC_BOOTSTRAP lets the
# stable toolchain accept them. The codec is its own small crate, so this
# builds in seconds.
(
    cd fuzz
    for target in bgp_message bgp_open bgp_update bfd_packet; do
        RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$target" -- \
            -max_total_time="$PIER_FUZZ_SECONDS" -print_final_stats=1 2>&1 | grep -E "^(Done|stat::number_of_executed_units)|ERROR|panicked" || true
        # A crash leaves an artifact: fail the run.
        if [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
            echo "fuzz target $target found a crash: fuzz/artifacts/$target" >&2
            exit 1
        fi
    done
)
echo "== packages: .deb and .rpm contents, install into a throwaway root, systemd unit, Vagrantfile"
tests/package.sh
echo "== demo lab: up, requests through all three modes, down"
PIER="$PWD/target/release/pier" tests/lab_test.sh
