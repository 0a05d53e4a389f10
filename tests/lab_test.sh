#!/usr/bin/env bash
# Runs the demo lab (tests/lab/lab.sh) the way a user does — up, requests,
# down — under a unique prefix, and checks what it prints and what it leaves
# behind: the router's ECMP route over the three nodes, answers from the
# nodes through all three modes, and after `down` no namespace, process or
# file of the lab. Needs root; under CI=true a missing prerequisite fails.
#
# PIER=/path/to/pier uses that binary (tests/run.sh passes the release build
# tests/package.sh made); otherwise the lab builds one.
set -euo pipefail
cd "$(dirname "$0")/.."

CI=${CI:-false}
if [ "$(id -u)" != 0 ]; then
    if [ "$CI" = true ]; then echo "lab_test: needs root (CI=true)" >&2; exit 1; fi
    echo "lab_test: skipped (needs root)" >&2
    exit 0
fi

export PIER_LAB_PREFIX="plt$$"
export PIER_LAB_DIR="/tmp/pier-lab-test-$$"
lab=tests/lab/lab.sh
fails=0
pass() { printf '  ok    %s\n' "$*"; }
fail() { printf '  FAIL  %s\n' "$*" >&2; fails=$((fails + 1)); }
# Whatever happens, leave nothing behind.
trap '"$lab" down >/dev/null 2>&1 || true' EXIT

echo "== lab up (prefix $PIER_LAB_PREFIX)"
if ! "$lab" up >"$PIER_LAB_DIR.up.log" 2>&1; then
    cat "$PIER_LAB_DIR.up.log" >&2
    [ -f "$PIER_LAB_DIR/pier.log" ] && tail -n 30 "$PIER_LAB_DIR/pier.log" >&2
    fail "lab.sh up failed"
    exit 1
fi
up_out=$(cat "$PIER_LAB_DIR.up.log")
rm -f "$PIER_LAB_DIR.up.log"
echo "$up_out" | sed 's/^/  | /'

# What `up` printed: the router's routes and the answers.
if echo "$up_out" | grep -q "nexthop via 10.66.2.1[123]"; then pass "up prints the router's ECMP route"; else fail "up printed no ECMP route"; fi
if echo "$up_out" | grep -qE '^  10\.77\.0\.10 .*node[123]'; then pass "up prints which node answered"; else fail "up printed no answers"; fi

# The router: one route over the three nodes for the node-next-hop VIP, one
# via pier for the next-hop-self VIP (kernel, installed by BIRD).
r=$(ip netns exec "$PIER_LAB_PREFIX-router" ip route show 10.77.0.10)
hops=$(echo "$r" | { grep -oE 'nexthop via 10\.66\.2\.1[123]' || true; } | sort -u | wc -l)
if [ "$hops" = 3 ]; then pass "router: 10.77.0.10 ECMP over node1..3"; else fail "router: 10.77.0.10 has $hops node next hops: $r"; fi
r=$(ip netns exec "$PIER_LAB_PREFIX-router" ip route show 10.77.1.10)
if echo "$r" | grep -q "via 10.66.2.2 "; then pass "router: 10.77.1.10 via pier"; else fail "router: 10.77.1.10: '$r'"; fi
if ip netns exec "$PIER_LAB_PREFIX-router" ip route show 10.66.2.240 | grep -q proto.bird; then
    fail "router: the l2 VIP came by BGP"
else
    pass "router: no BGP route for the l2 VIP"
fi

# 12 requests per VIP from the client: every one answered by a node, and
# (L4 ECMP hashing, new source port each time) more than one node per VIP.
# With three equal next hops, one node answering all 12 happens with
# probability 3 * 3^-12 ~ 6e-6.
echo "== lab requests 12"
req=$("$lab" requests 12)
echo "$req" | sed 's/^/  | /'
for vip in 10.77.0.10 10.77.1.10 10.66.2.240; do
    line=$(echo "$req" | grep -E "^  $vip " || true)
    answers=$(echo "$line" | { grep -oE 'node[0-9]+|(^| )-( |$)' || true; } | tr -d ' ')
    total=$(echo "$answers" | grep -c . || true)
    bad=$(echo "$answers" | grep -cv '^node[123]$' || true)
    distinct=$(echo "$answers" | { grep '^node' || true; } | sort -u | wc -l)
    if [ "$total" = 12 ] && [ "$bad" = 0 ]; then pass "$vip: 12/12 answered by nodes"; else fail "$vip: $line"; fi
    if [ "$distinct" -ge 2 ]; then pass "$vip: spread over $distinct nodes"; else fail "$vip: one node only: $line"; fi
done

# The CLI against the lab's pier.
if out=$("${PIER:-target/release/pier}" services --socket "$PIER_LAB_DIR/pier.sock" 2>&1) &&
    echo "$out" | grep -q "demo/web" && echo "$out" | grep -q "10.77.0.10"; then
    pass "pier services lists demo/web 10.77.0.10"
else
    fail "pier services: $out"
fi

echo "== lab down"
# Every process of the lab: those in its namespaces, and the pid files.
lab_pids=$( (for ns in $(ip netns list | awk '{print $1}' | grep "^$PIER_LAB_PREFIX-"); do ip netns pids "$ns"; done
    cat "$PIER_LAB_DIR"/*.pid 2>/dev/null) | sort -u | tr '\n' ' ')
if [ "$(echo "$lab_pids" | wc -w)" -ge 5 ]; then pass "lab runs $(echo "$lab_pids" | wc -w) processes (pier, BIRD, 3 nodes)"; else fail "lab processes: $lab_pids"; fi
"$lab" down >/dev/null
left=$(ip netns list | awk '{print $1}' | grep "^$PIER_LAB_PREFIX-" || true)
if [ -z "$left" ]; then pass "no namespace left"; else fail "namespaces left: $left"; fi
# (A zombie waiting for its new parent to reap it counts as gone.)
alive=""
for pid in $lab_pids; do
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)
    [ -n "$state" ] && [ "$state" != Z ] && alive="$alive $pid($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null))"
done
if [ -z "$alive" ]; then pass "no process left"; else fail "processes left:$alive"; fi
if [ ! -e "$PIER_LAB_DIR" ]; then pass "lab directory removed"; else fail "$PIER_LAB_DIR left"; fi
if ip -o link show | grep -qE "p-(router|gw|node)"; then fail "lab links left in the host namespace"; else pass "no lab link in the host namespace"; fi
trap - EXIT

echo "== lab test: $fails failure(s)"
[ "$fails" = 0 ]
