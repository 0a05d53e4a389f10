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
# Usage: tests/lab/lab.sh up | down | status | requests
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
LAB=${PIER_LAB_DIR:-/tmp/pier-lab}
P=pierlab
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
    command -v python3 >/dev/null || missing+=(python3)
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

down() {
    for pidf in "$LAB"/*.pid; do
        [ -f "$pidf" ] || continue
        kill "$(cat "$pidf")" 2>/dev/null || true
    done
    sleep 0.3
    for ns in $NS_C $NS_GW $NS_R $NS_LAN ${NODES[@]/#/$P-}; do
        if ip netns pids "$ns" >/dev/null 2>&1; then
            ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
            ip netns del "$ns" 2>/dev/null || true
        fi
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
    for ns in $NS_LAN $NS_R $NS_GW $NS_C ${NODES[@]/#/$P-}; do
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
        nsx "$ns" python3 "$HERE/node_http.py" "${NODES[$i]}" "${NODE_IP[$i]}" 8080 10256 \
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
    nsx $NS_GW "$PIER" run --config "$LAB/pier.toml" >"$LAB/pier.log" 2>&1 &
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

status() {
    say "router's routes to the VIPs (kernel, installed by BIRD)"
    nsx $NS_R ip route show proto bird || true
    nsx $NS_R ip -6 route show proto bird || true
    say "BIRD's view"
    birdc -s "$LAB/bird.ctl" show route all 2>/dev/null | sed -n '1,40p' || true
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
    say "building pier (release)"
    (cd "$ROOT" && cargo build --release --quiet)
    PIER="$ROOT/target/release/pier"
    topology
    nodes
    router
    gateway
    say "waiting for the router to learn the VIPs"
    for _ in $(seq 60); do
        if nsx $NS_R ip route show 10.77.0.10 | grep -q nexthop; then break; fi
        sleep 0.5
    done
    status
    echo
    echo "pier log: $LAB/pier.log   BIRD: birdc -s $LAB/bird.ctl   tear down: $0 down"
}

PIER="$ROOT/target/release/pier"
case "${1:-up}" in
    up) up ;;
    down) down; say "lab removed" ;;
    status) status ;;
    requests) requests "${2:-6}" ;;
    *) die "usage: $0 up | down | status | requests [N]" ;;
esac
