#!/bin/sh
# Captures the BGP messages BIRD 2, FRR and GoBGP send, as wire vectors for
# tests/peer_vectors.rs (an independent reference for pier's codec).
#
#   sudo crates/bgp-wire/tests/capture.sh [bird|frr|gobgp]...   (default: all three)
#
# Not run in CI: the fixtures it writes (tests/fixtures/<peer>.hex) are
# committed. Needs root, iproute2, tcpdump, python3, bird2, frr, gobgpd.
#
# Two namespaces joined by one veth pair:
#
#   peer  10.0.0.1/24 fd00::1/64  AS 4200000001   the speaker under capture
#   col   10.0.0.2/24 fd00::2/64  BIRD collector  two sessions to the peer:
#           "ebgp": IPv4 transport, collector AS 65000 (eBGP)
#           "ibgp": IPv6 transport, collector AS 4200000001 (iBGP)
#
# The collector offers everything pier decodes: IPv4 and IPv6 unicast on
# both sessions, 4-octet AS, ADD-PATH send+receive, route refresh (and
# enhanced), graceful restart, extended messages. The peer originates three
# IPv4 and three IPv6 static routes with communities, large communities,
# MED and (iBGP) LOCAL_PREF, and sends them with ADD-PATH where it can.
# Then, while tcpdump records on the peer's eth0:
#   1. sessions up, initial table, End-of-RIB, keepalives
#   2. the peer asks for a ROUTE-REFRESH on both sessions
#   3. the collector asks the peer for a ROUTE-REFRESH (the peer re-sends)
#   4. the peer withdraws 192.0.2.1/32 and 2001:db8::1/128
#   5. the peer resets the iBGP session (NOTIFICATION Cease), it comes back
#   6. the peer shuts the eBGP session down (NOTIFICATION Cease/admin shutdown)
# extract_bgp.py then reassembles the TCP streams and writes every message
# the peer sent as "SESSION TYPE HEX" lines.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
OUT="$HERE/fixtures"
mkdir -p "$OUT"
TAG="bgpcap$$"
P="$TAG-peer"
C="$TAG-col"
DIR=$(mktemp -d /tmp/pier-capture.XXXXXX)
chmod 0777 "$DIR"

cleanup() {
    for ns in "$P" "$C"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
}
trap cleanup EXIT INT TERM

inp() { ip netns exec "$P" "$@"; }
inc() { ip netns exec "$C" "$@"; }
birdc_c() { inc birdc -s "$DIR/col.ctl" "$@"; }

wait_until() { # seconds what command...
    secs=$1; what=$2; shift 2
    i=0
    while ! "$@" >/dev/null 2>&1; do
        i=$((i + 1))
        if [ "$i" -gt $((secs * 5)) ]; then echo "timeout: $what" >&2; return 1; fi
        sleep 0.2
    done
}

established() { # protocol
    birdc_c show protocols "$1" | grep -q Established
}

setup_lab() {
    cleanup
    ip netns add "$P"
    ip netns add "$C"
    ip link add "$TAG-a" type veth peer name "$TAG-b"
    ip link set "$TAG-a" netns "$P" name eth0
    ip link set "$TAG-b" netns "$C" name eth0
    for ns in "$P" "$C"; do
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.eth0.accept_dad=0
        ip -n "$ns" link set lo up
    done
    ip -n "$P" addr add 10.0.0.1/24 dev eth0
    ip -n "$P" addr add fd00::1/64 dev eth0 nodad
    ip -n "$C" addr add 10.0.0.2/24 dev eth0
    ip -n "$C" addr add fd00::2/64 dev eth0 nodad
    ip -n "$P" link set eth0 up
    ip -n "$C" link set eth0 up
    # The collector: BIRD, passive, taking everything in.
    cat >"$DIR/col.conf" <<EOF
log "$DIR/col.log" all;
router id 10.0.0.2;
protocol device { }
template bgp collector {
  hold time 9;
  passive on;
  enable extended messages on;
  graceful restart on;
  enable route refresh on;
  ipv4 { import all; export none; add paths on; };
  ipv6 { import all; export none; add paths on; };
}
protocol bgp sess_e from collector { local 10.0.0.2 as 65000; neighbor 10.0.0.1 as 4200000001; }
protocol bgp sess_i from collector { local fd00::2 as 4200000001; neighbor fd00::1 as 4200000001; }
EOF
    inc bird -c "$DIR/col.conf" -s "$DIR/col.ctl" -P "$DIR/col.pid"
    inp tcpdump -i eth0 -U -s 0 -w "$DIR/peer.pcap" 'tcp port 179' >"$DIR/tcpdump.log" 2>&1 &
    sleep 1
}

sessions_up() {
    wait_until 60 "eBGP session" established sess_e
    wait_until 60 "iBGP session" established sess_i
    sleep 4 # initial table, End-of-RIB, a keepalive or two
}

finish() { # peer version
    sleep 2
    for pid in $(ip netns pids "$P"); do
        if [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = tcpdump ]; then kill -INT "$pid"; fi
    done
    sleep 1
    file="$OUT/$1.hex"
    {
        echo "# BGP messages sent by $2, captured from a live session by"
        echo "# crates/bgp-wire/tests/capture.sh on $(date -u +%Y-%m-%d) (tcpdump in a network"
        echo "# namespace, TCP streams reassembled by extract_bgp.py). The peer is AS"
        echo "# 4200000001 at 10.0.0.1 / fd00::1; the collector (BIRD) offered IPv4+IPv6"
        echo "# unicast, 4-octet AS, ADD-PATH send+receive, route refresh, graceful restart"
        echo "# and extended messages. Sessions: ebgp (IPv4 transport, collector AS 65000),"
        echo "# ibgp (IPv6 transport, collector AS 4200000001)."
        echo "# Format: SESSION TYPE HEX, in the order sent."
        python3 "$HERE/extract_bgp.py" "$DIR/peer.pcap" 10.0.0.1=ebgp fd00::1=ibgp
    } >"$file"
    echo "$file: $(grep -vc '^#' "$file") messages"
    cleanup
}

capture_bird() {
    setup_lab
    cat >"$DIR/peer.conf" <<'EOF'
router id 10.0.0.1;
protocol device { }
protocol static s4 {
  ipv4;
  route 198.51.100.0/24 blackhole;
  route 203.0.113.0/25 blackhole;
  route 192.0.2.1/32 blackhole;
}
protocol static s6 {
  ipv6;
  route 2001:db8:1::/48 blackhole;
  route 2001:db8:2:3::/64 blackhole;
  route 2001:db8::1/128 blackhole;
}
filter attrs {
  bgp_community.add((65001, 100));
  if net = 198.51.100.0/24 || net = 2001:db8:1::/48 then bgp_community.add((65001, 200));
  bgp_large_community.add((4200000001, 1, 2));
  bgp_med = 50;
  bgp_local_pref = 200;
  accept;
}
template bgp peer {
  hold time 9;
  enable extended messages on;
  graceful restart on;
  ipv4 { import none; export filter attrs; add paths tx; };
  ipv6 { import none; export filter attrs; add paths tx; };
}
protocol bgp sess_e from peer { local 10.0.0.1 as 4200000001; neighbor 10.0.0.2 as 65000; }
protocol bgp sess_i from peer {
  local fd00::1 as 4200000001; neighbor fd00::2 as 4200000001;
  ipv4 { import none; export filter attrs; add paths tx; next hop address 10.0.0.1; };
}
EOF
    sed "s|^router id|log \"$DIR/peer.log\" all;\nrouter id|" -i "$DIR/peer.conf"
    inp bird -c "$DIR/peer.conf" -s "$DIR/peer.ctl" -P "$DIR/peer.pid"
    pc() { inp birdc -s "$DIR/peer.ctl" "$@"; }
    sessions_up
    pc reload in sess_e
    pc reload in sess_i
    sleep 2
    birdc_c reload in sess_e
    birdc_c reload in sess_i
    sleep 2
    sed -i '/192.0.2.1\/32/d; /2001:db8::1\/128/d' "$DIR/peer.conf"
    pc configure
    sleep 2
    pc restart sess_i
    wait_until 60 "iBGP session back" established sess_i
    sleep 3
    pc disable sess_e '"capture done"'
    finish bird "BIRD $(inp bird --version 2>&1 | sed -n 's/.*version //p') (Debian bird2 $(dpkg-query -W -f '${Version}' bird2))"
}

capture_frr() {
    setup_lab
    cat >"$DIR/frr.conf" <<'EOF'
frr defaults traditional
hostname peer
!
route-map ATTRS permit 10
 set community 65001:100
 set large-community 4200000001:1:2
 set metric 50
 set local-preference 200
!
route-map ATTRS2 permit 10
 set community 65001:100 65001:200
 set large-community 4200000001:1:2
 set metric 50
 set local-preference 200
!
router bgp 4200000001
 bgp router-id 10.0.0.1
 no bgp ebgp-requires-policy
 no bgp default ipv4-unicast
 no bgp network import-check
 bgp graceful-restart
 neighbor 10.0.0.2 remote-as 65000
 neighbor 10.0.0.2 timers 3 9
 neighbor fd00::2 remote-as 4200000001
 neighbor fd00::2 timers 3 9
 address-family ipv4 unicast
  network 198.51.100.0/24 route-map ATTRS2
  network 203.0.113.0/25 route-map ATTRS
  network 192.0.2.1/32 route-map ATTRS
  neighbor 10.0.0.2 activate
  neighbor 10.0.0.2 addpath-tx-all-paths
  neighbor fd00::2 activate
  neighbor fd00::2 addpath-tx-all-paths
 exit-address-family
 address-family ipv6 unicast
  network 2001:db8:1::/48 route-map ATTRS2
  network 2001:db8:2:3::/64 route-map ATTRS
  network 2001:db8::1/128 route-map ATTRS
  neighbor 10.0.0.2 activate
  neighbor 10.0.0.2 addpath-tx-all-paths
  neighbor fd00::2 activate
  neighbor fd00::2 addpath-tx-all-paths
 exit-address-family
!
EOF
    chown -R frr:frr "$DIR"
    common="-d -u frr -g frr -f $DIR/frr.conf -z $DIR/zserv.api --vty_socket $DIR"
    # shellcheck disable=SC2086
    inp /usr/lib/frr/zebra $common -i "$DIR/zebra.pid"
    sleep 1
    # shellcheck disable=SC2086
    inp /usr/lib/frr/bgpd $common -i "$DIR/bgpd.pid"
    vt() { inp vtysh --vty_socket "$DIR" "$@"; }
    sessions_up
    vt -c 'clear bgp 10.0.0.2 soft in'
    vt -c 'clear bgp fd00::2 soft in'
    sleep 2
    birdc_c reload in sess_e
    birdc_c reload in sess_i
    sleep 2
    vt -c 'configure terminal' -c 'router bgp 4200000001' \
        -c 'address-family ipv4 unicast' -c 'no network 192.0.2.1/32' -c 'exit-address-family' \
        -c 'address-family ipv6 unicast' -c 'no network 2001:db8::1/128'
    sleep 2
    vt -c 'clear bgp fd00::2'
    wait_until 60 "iBGP session back" established sess_i
    sleep 3
    vt -c 'configure terminal' -c 'router bgp 4200000001' -c 'neighbor 10.0.0.2 shutdown message capture done'
    finish frr "FRR $(dpkg-query -W -f '${Version}' frr) (Debian frr)"
}

capture_gobgp() {
    setup_lab
    cat >"$DIR/gobgpd.toml" <<'EOF'
[global.config]
  as = 4200000001
  router-id = "10.0.0.1"
  port = 179

[[neighbors]]
  [neighbors.config]
    neighbor-address = "10.0.0.2"
    peer-as = 65000
  [neighbors.timers.config]
    hold-time = 9
  [neighbors.graceful-restart.config]
    enabled = true
    restart-time = 120
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
    [neighbors.afi-safis.add-paths.config]
      send-max = 8
      receive = true
    [neighbors.afi-safis.mp-graceful-restart.config]
      enabled = true
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
    [neighbors.afi-safis.add-paths.config]
      send-max = 8
      receive = true
    [neighbors.afi-safis.mp-graceful-restart.config]
      enabled = true

[[neighbors]]
  [neighbors.config]
    neighbor-address = "fd00::2"
    peer-as = 4200000001
  [neighbors.timers.config]
    hold-time = 9
  [neighbors.graceful-restart.config]
    enabled = true
    restart-time = 120
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
    [neighbors.afi-safis.add-paths.config]
      send-max = 8
      receive = true
    [neighbors.afi-safis.mp-graceful-restart.config]
      enabled = true
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
    [neighbors.afi-safis.add-paths.config]
      send-max = 8
      receive = true
    [neighbors.afi-safis.mp-graceful-restart.config]
      enabled = true
EOF
    inp gobgpd -f "$DIR/gobgpd.toml" -t toml --api-hosts 127.0.0.1:50051 >"$DIR/gobgpd.log" 2>&1 &
    g() { inp gobgp -u 127.0.0.1 -p 50051 "$@"; }
    wait_until 20 "gobgpd API" g global
    attrs="med 50 local-pref 200 large-community 4200000001:1:2"
    # shellcheck disable=SC2086
    {
        g global rib add -a ipv4 198.51.100.0/24 nexthop 10.0.0.1 community 65001:100,65001:200 $attrs
        g global rib add -a ipv4 203.0.113.0/25 nexthop 10.0.0.1 community 65001:100 $attrs
        g global rib add -a ipv4 192.0.2.1/32 nexthop 10.0.0.1 community 65001:100 $attrs
        g global rib add -a ipv6 2001:db8:1::/48 nexthop fd00::1 community 65001:100,65001:200 $attrs
        g global rib add -a ipv6 2001:db8:2:3::/64 nexthop fd00::1 community 65001:100 $attrs
        g global rib add -a ipv6 2001:db8::1/128 nexthop fd00::1 community 65001:100 $attrs
    }
    sessions_up
    g neighbor 10.0.0.2 softresetin
    g neighbor fd00::2 softresetin
    sleep 2
    birdc_c reload in sess_e
    birdc_c reload in sess_i
    sleep 2
    g global rib del -a ipv4 192.0.2.1/32
    g global rib del -a ipv6 2001:db8::1/128
    sleep 2
    g neighbor fd00::2 reset
    wait_until 60 "iBGP session back" established sess_i
    sleep 3
    g neighbor 10.0.0.2 disable
    finish gobgp "GoBGP $(dpkg-query -W -f '${Version}' gobgpd) (Debian gobgpd)"
}

[ "$#" -gt 0 ] || set -- bird frr gobgp
for peer in "$@"; do
    case "$peer" in
    bird) capture_bird ;;
    frr) capture_frr ;;
    gobgp) capture_gobgp ;;
    *) echo "unknown peer $peer (bird, frr, gobgp)" >&2; exit 64 ;;
    esac
done
rm -rf "$DIR"
