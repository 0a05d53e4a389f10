#!/usr/bin/env bash
# Connections broken per node leave/join, resilient nexthop groups vs
# hash-threshold multipath routes: runs tests/conn_keep_netns.rs ROUNDS
# times (root; real kernel, network namespaces) and sums its COUNT lines.
# A counting run, not a timing: figures go to docs/benchmarks.md.
#
#   sudo benches/conn_keep.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-10}
cargo test --test conn_keep_netns --no-run --quiet
out=$(for _ in $(seq "$rounds"); do
    cargo test --quiet --test conn_keep_netns -- --nocapture --test-threads=1 2>&1 | grep -o 'COUNT .*' || true
done)
echo "$out"
for mode in resilient multipath; do
    echo "$out" | awk -v m="mode=$mode" '
        $2 == m {
            split($3, l, /[=\/]/); split($4, j, /[=\/]/)
            lb += l[2]; lt += l[3]; jb += j[2]; jt += j[3]; n++
        }
        END {
            if (n) printf "%-9s %d runs: node leaves: %d of %d connections to surviving nodes broken (%.1f %%); node joins: %d of %d established broken (%.1f %%)\n",
                substr(m, 6), n, lb, lt, 100 * lb / lt, jb, jt, 100 * jb / jt
        }'
done
