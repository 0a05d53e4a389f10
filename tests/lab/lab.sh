#!/usr/bin/env bash
# The pier demo lab, in network namespaces on this machine:
#
#   client ── router (BIRD) ──┬── LAN 10.66.2.0/24, fd66:2::/64 (bridge)
#   10.66.9.2   10.66.9.1     │
#               10.66.2.1     ├── pier gateway 10.66.2.2 (eth-lan)
#                             ├── node1 10.66.2.11 ┐ kube-proxy stand-ins: nft DNAT of
#                             ├── node2 10.66.2.12 ├ VIP:80 to an HTTP server that answers
#                             └── node3 10.66.2.13 ┘ with the node's name; /healthz on 10256
#
# pier runs on static services in all three modes:
#   bgp, next_hop = nodes  10.77.0.10  router learns 3 paths (ADD-PATH), ECMP to the nodes
#   bgp, next_hop = self   10.77.1.10  router learns pier; pier forwards (multipath route)
#   l2                     10.66.2.240 pier answers ARP on the LAN; pier forwards
#
# Usage: tests/lab/lab.sh up | down | status | requests [N] | routes
#
# Environment:
#   PIER_LAB_PREFIX  prefix of the namespace names (default pierlab); set a
#                    unique one to run several labs side by side (tests do)
#   PIER_LAB_DIR     working directory under /tmp, /var/tmp or /run: configs,
#                    logs, sockets, pid files; removed by down
#                    (default /tmp/$PIER_LAB_PREFIX)
#   PIER             a pier binary to use instead of building one
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
P=${PIER_LAB_PREFIX:-pierlab}
case $P in *[!a-z0-9-]* | "") echo "lab: PIER_LAB_PREFIX must be [a-z0-9-]+" >&2; exit 2 ;; esac
LAB=${PIER_LAB_DIR:-/tmp/$P}
# `down` removes $LAB: only a directory of its own.
case $LAB in /tmp/?* | /var/tmp/?* | /run/?*) ;; *) echo "lab: PIER_LAB_DIR must be under /tmp, /var/tmp or /run" >&2; exit 2 ;; esac
NS_LAN=$P-lan NS_R=$P-router NS_GW=$P-gw NS_C=$P-client
NODES=(node1 node2 node3)
NODE_IP=(10.66.2.11 10.66.2.12 10.66.2.13)
NODE_IP6=(fd66:2::11 fd66:2::12 fd66:2::13)
VIPS=(10.77.0.10 10.77.1.10 10.66.2.240)
VIP_MODES=("bgp next_hop=nodes" "bgp next_hop=self" "l2")

say() { printf '\033[1m== %s\033[0m\n' "$*"; }
die() { echo "lab: $*" >&2; exit 1; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

need() {
    [ "$(id -u)" = 0 ] || die "run as root (it creates network namespaces)"
    local missing=()
    command -v bird >/dev/null || missing+=(bird2)
    command -v nft >/dev/null || missing+=(nftables)
    command -v ip >/dev/null || missing+=(iproute2)
    command -v python3 >/dev/null || missing+=(python3)
    if [ ${#missing[@]} -gt 0 ]; then
        command -v apt-get >/dev/null || die "missing ${missing[*]}: install them"
        say "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# cargo build --release, as the user who ran sudo when there is one (their
# toolchain, their target/ stays theirs), else as root.
build_pier() {
    local user=${SUDO_USER:-root} cargo
    if [ "$user" != root ]; then
        local home
        home=$(getent passwd "$user" | cut -d: -f6)
        cargo=$(sudo -u "$user" -H bash -lc 'command -v cargo' 2>/dev/null || true)
        [ -n "$cargo" ] || cargo="$home/.cargo/bin/cargo"
        [ -x "$cargo" ] || die "cargo not found for $user: install Rust (https://rustup.rs) or set PIER=/path/to/pier"
        (cd "$ROOT" && sudo -u "$user" -H "$cargo" build --release --quiet --bin pier)
    else
        cargo=$(command -v cargo || echo "$HOME/.cargo/bin/cargo")
        [ -x "$cargo" ] || die "cargo not found: install Rust (https://rustup.rs) or set PIER=/path/to/pier"
        (cd "$ROOT" && "$cargo" build --release --quiet --bin pier)
    fi
}

# Every namespace of this lab that exists now.
lab_namespaces() {
    ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$P-(lan|router|gw|client|node[0-9]+)$" || true
}

down() {
    local pidf ns pids
    if [ -d "$LAB" ]; then
        for pidf in "$LAB"/*.pid; do
            [ -f "$pidf" ] || continue
            kill "$(cat "$pidf")" 2>/dev/null || true
        done
    fi
    # pier gets up to 10 s to withdraw and remove its routes and table (it
    # needs far less); whatever is still running then is killed.
    for _ in $(seq 100); do
        pids=""
        for ns in $(lab_namespaces); do pids="$pids $(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"; done
        [ -z "${pids// /}" ] && break
        sleep 0.1
    done
    # shellcheck disable=SC2086
    [ -n "${pids// /}" ] && kill -9 $pids 2>/dev/null || true
    for ns in $(lab_namespaces); do
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$LAB"
}

# veth pair: $1 ns/$2 name  <->  bridge port in the LAN namespace
lan_port() {
    local ns=$1 ifname=$2 port=$3
    ip link add "$port" netns $NS_LAN type veth peer name "$ifname" netns "$ns"
    nsx $NS_LAN ip link set "$port" master br0 up
    nsx "$ns" ip link set "$ifname" up
}

sysctls() {
    local ns=$1
    nsx "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
    nsx "$ns" ip link set lo up
}

topology() {
    say "namespaces"
    for ns in $NS_LAN $NS_R $NS_GW $NS_C "${NODES[@]/#/$P-}"; do
        ip netns add "$ns"
        sysctls "$ns"
    done
    nsx $NS_LAN ip link add br0 type bridge
    nsx $NS_LAN ip link set br0 up

    lan_port $NS_R lan0 p-router
    nsx $NS_R ip addr add 10.66.2.1/24 dev lan0
    nsx $NS_R ip addr add fd66:2::1/64 dev lan0 nodad
    ip link add cl0 netns $NS_R type veth peer name eth0 netns $NS_C
    nsx $NS_R ip link set cl0 up
    nsx $NS_R ip addr add 10.66.9.1/24 dev cl0
    nsx $NS_R ip addr add fd66:9::1/64 dev cl0 nodad
    nsx $NS_R sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
        net.ipv4.fib_multipath_hash_policy=1 net.ipv6.fib_multipath_hash_policy=1

    nsx $NS_C ip link set eth0 up
    nsx $NS_C ip addr add 10.66.9.2/24 dev eth0
    nsx $NS_C ip addr add fd66:9::2/64 dev eth0 nodad
    nsx $NS_C ip route add default via 10.66.9.1
    nsx $NS_C ip -6 route add default via fd66:9::1

    lan_port $NS_GW eth-lan p-gw
    nsx $NS_GW ip addr add 10.66.2.2/24 dev eth-lan
    nsx $NS_GW ip addr add fd66:2::2/64 dev eth-lan nodad
    nsx $NS_GW ip route add default via 10.66.2.1

    for i in 0 1 2; do
        local ns=$P-${NODES[$i]}
        lan_port "$ns" eth0 "p-${NODES[$i]}"
        nsx "$ns" ip addr add "${NODE_IP[$i]}/24" dev eth0
        nsx "$ns" ip addr add "${NODE_IP6[$i]}/64" dev eth0 nodad
        nsx "$ns" ip route add default via 10.66.2.1
        nsx "$ns" ip -6 route add default via fd66:2::1
    done
}

nodes() {
    say "nodes: kube-proxy stand-ins"
    for i in 0 1 2; do
        local ns=$P-${NODES[$i]}
        nsx "$ns" nft -f - <<EOF
table inet kubeproxy {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr { 10.77.0.0/16, 10.66.2.240/28 } tcp dport 80 dnat ip to ${NODE_IP[$i]}:8080
        ip6 daddr fd66:77::/32 tcp dport 80 dnat ip6 to [${NODE_IP6[$i]}]:8080
    }
}
EOF
        # Not through nsx (a function runs in a subshell): $! must be the
        # process itself, which `ip netns exec` becomes.
        ip netns exec "$ns" python3 "$HERE/node_http.py" "${NODES[$i]}" "${NODE_IP[$i]}" 8080 10256 \
            >"$LAB/${NODES[$i]}.log" 2>&1 &
        echo $! >"$LAB/${NODES[$i]}.pid"
    done
}

router() {
    say "router: BIRD 2, ADD-PATH receive, ECMP into the kernel"
    cat >"$LAB/bird.conf" <<'EOF'
router id 10.66.2.1;
log "/tmp/pier-lab/bird.log" all;
protocol device { scan time 10; }
protocol kernel k4 { ipv4 { import none; export all; }; merge paths on; }
protocol kernel k6 { ipv6 { import none; export all; }; merge paths on; }
protocol bgp pier {
    local 10.66.2.1 as 65000;
    neighbor 10.66.2.2 as 65001;
    hold time 9;
    graceful restart on;
    ipv4 { import all; export none; add paths rx; };
    ipv6 { import all; export none; add paths rx; };
}
EOF
    sed -i "s#/tmp/pier-lab#$LAB#" "$LAB/bird.conf"
    nsx $NS_R bird -c "$LAB/bird.conf" -s "$LAB/bird.ctl" -P "$LAB/bird.pid"
}

gateway() {
    say "pier gateway"
    cat >"$LAB/pier.toml" <<EOF
[gateway]
router_id = "10.66.2.2"
state_dir = "$LAB/state"
api_socket = "$LAB/pier.sock"
metrics_listen = "127.0.0.1:9469"

[bgp]
asn = 65001

[[bgp.peers]]
address = "10.66.2.1"
asn = 65000
hold_time = 9

[[pools]]
name = "nodes"
addresses = ["10.77.0.0/24", "fd66:77::/64"]
mode = "bgp"
next_hop = "nodes"
communities = ["65001:100"]

[[pools]]
name = "self"
addresses = ["10.77.1.0/24"]
mode = "bgp"
next_hop = "self"

[[pools]]
name = "lan"
addresses = ["10.66.2.240/28"]
mode = "l2"
interface = "eth-lan"

[health]
interval_ms = 500
fall = 3
rise = 2

[[static_services]]
name = "demo/web"
pool = "nodes"
ip = "10.77.0.10"
ports = ["80/tcp"]
nodes = ["10.66.2.11", "10.66.2.12", "10.66.2.13"]

[[static_services]]
name = "demo/self"
pool = "self"
ip = "10.77.1.10"
ports = ["80/tcp"]
nodes = ["10.66.2.11", "10.66.2.12", "10.66.2.13"]

[[static_services]]
name = "demo/lan"
pool = "lan"
ip = "10.66.2.240"
ports = ["80/tcp"]
nodes = ["10.66.2.11", "10.66.2.12", "10.66.2.13"]
EOF
    "$PIER" check --config "$LAB/pier.toml" >/dev/null
    ip netns exec $NS_GW "$PIER" run --config "$LAB/pier.toml" >"$LAB/pier.log" 2>&1 &
    echo $! >"$LAB/pier.pid"
}

# One HTTP GET from the client; prints the answering node or "-".
get() {
    local vip=$1
    nsx $NS_C timeout 2 bash -c "exec 3<>/dev/tcp/$vip/80 && printf 'GET / HTTP/1.0\r\nHost: $vip\r\n\r\n' >&3 && tail -n1 <&3" 2>/dev/null || echo "-"
}

requests() {
    local n=${1:-6}
    for idx in 0 1 2; do
        local vip=${VIPS[$idx]} answers=()
        for _ in $(seq "$n"); do answers+=("$(get "$vip")"); done
        printf '  %-12s %-20s %s\n' "$vip" "${VIP_MODES[$idx]}" "${answers[*]}"
    done
}

routes() {
    nsx $NS_R ip route show proto bird
    nsx $NS_R ip -6 route show proto bird
}

status() {
    say "router's routes to the VIPs (kernel, installed by BIRD: ECMP over the nodes for next_hop = nodes)"
    routes || true
    say "BIRD's view"
    birdc -s "$LAB/bird.ctl" show route 2>/dev/null || true
    say "pier"
    "$PIER" status --socket "$LAB/pier.sock" || true
    "$PIER" services --socket "$LAB/pier.sock" || true
    say "requests from the client (answering node per request)"
    requests 6
}

up() {
    need
    down
    mkdir -p "$LAB"
    if [ -z "${PIER:-}" ]; then
        say "building pier (cargo build --release; the first build takes a few minutes)"
        build_pier
        PIER="$ROOT/target/release/pier"
    fi
    [ -x "$PIER" ] || die "no pier binary at $PIER"
    topology
    nodes
    router
    gateway
    say "waiting for pier and the router (ECMP route, ARP answer, forwarding)"
    local ok=0
    for _ in $(seq 120); do
        if [ "$(nsx $NS_R ip route show 10.77.0.10 | grep -c nexthop)" = 3 ] &&
            nsx $NS_R ip route show 10.77.1.10 | grep -q 10.66.2.2 &&
            [ "$(get 10.77.1.10)" != - ] && [ "$(get 10.66.2.240)" != - ]; then
            ok=1
            break
        fi
        if ! kill -0 "$(cat "$LAB/pier.pid")" 2>/dev/null; then
            tail -n 20 "$LAB/pier.log" >&2
            die "pier exited (log above: $LAB/pier.log)"
        fi
        sleep 0.5
    done
    [ $ok = 1 ] || echo "lab: not every VIP is reachable yet; see $LAB/pier.log and 'birdc -s $LAB/bird.ctl show protocols all'" >&2
    status
    echo
    echo "pier log: $LAB/pier.log   BIRD: birdc -s $LAB/bird.ctl   again: $0 requests   tear down: $0 down"
}

PIER=${PIER:-}
case "${1:-up}" in
    up) up ;;
    down) down; say "lab removed" ;;
    status) PIER=${PIER:-$ROOT/target/release/pier}; status ;;
    routes) routes ;;
    requests) requests "${2:-6}" ;;
    *) die "usage: $0 up | down | status | routes | requests [N]" ;;
esac
