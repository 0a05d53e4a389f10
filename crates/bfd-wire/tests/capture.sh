#!/bin/sh
# Captures the BFD Control packets BIRD 2 and FRR's bfdd send each other,
# as wire vectors for tests/peer_vectors.rs (an independent reference for
# pier's codec).
#
#   sudo crates/bfd-wire/tests/capture.sh
#
# Not run in CI: the fixture it writes (tests/fixtures/bird_frr.hex) is
# committed. Needs root, iproute2, tcpdump, python3, bird2, frr.
#
# Two namespaces joined by one veth pair, single-hop sessions over IPv4
# and IPv6:
#
#   a  10.0.0.1/24 fd00::1/64  BIRD  min rx/tx 100 ms, multiplier 3
#   b  10.0.0.2/24 fd00::2/64  FRR   receive/transmit 200 ms, multiplier 4
#
# While tcpdump records on b's eth0:
#   1. both sessions come Up (Down → Init → Up, Poll/Final to the fast rate)
#   2. FRR shuts its IPv4 peer down (AdminDown); BIRD goes Down
#      (diag 3, neighbor signaled session down)
#   3. FRR enables it again: Up
#   4. FRR's packets to BIRD are dropped (nft): BIRD's session expires
#      (diag 1, control detection time expired), then the drop is lifted
# extract_bfd.py writes every BFD packet as "SENDER FAMILY TTL HEX".
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
OUT="$HERE/fixtures"
mkdir -p "$OUT"
TAG="bfdcap$$"
A="$TAG-a"
B="$TAG-b"
DIR=$(mktemp -d /tmp/pier-bfd-capture.XXXXXX)
chmod 0777 "$DIR"

cleanup() {
    for ns in "$A" "$B"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
}
trap cleanup EXIT INT TERM

ina() { ip netns exec "$A" "$@"; }
inb() { ip netns exec "$B" "$@"; }
birdc_a() { ina birdc -s "$DIR/bird.ctl" "$@"; }
vt() { inb vtysh --vty_socket "$DIR" "$@"; }

wait_until() { # seconds what command...
    secs=$1; what=$2; shift 2
    i=0
    while ! "$@" >/dev/null 2>&1; do
        i=$((i + 1))
        if [ "$i" -gt $((secs * 5)) ]; then echo "timeout: $what" >&2; return 1; fi
        sleep 0.2
    done
}

bird_says() { # address state
    birdc_a show bfd sessions | grep -E "^$1 " | grep -q "$2"
}

cleanup
ip netns add "$A"
ip netns add "$B"
ip link add "$TAG-x" type veth peer name "$TAG-y"
ip link set "$TAG-x" netns "$A" name eth0
ip link set "$TAG-y" netns "$B" name eth0
for ns in "$A" "$B"; do
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
    ip -n "$ns" link set lo up
done
ip -n "$A" addr add 10.0.0.1/24 dev eth0
ip -n "$A" addr add fd00::1/64 dev eth0 nodad
ip -n "$B" addr add 10.0.0.2/24 dev eth0
ip -n "$B" addr add fd00::2/64 dev eth0 nodad
ip -n "$A" link set eth0 up
ip -n "$B" link set eth0 up

inb tcpdump -i eth0 -U -s 0 -w "$DIR/bfd.pcap" 'udp port 3784' >"$DIR/tcpdump.log" 2>&1 &
sleep 1

cat >"$DIR/bird.conf" <<EOF2
log "$DIR/bird.log" all;
router id 10.0.0.1;
protocol device { scan time 1; }
protocol bfd {
  interface "eth0" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };
  neighbor 10.0.0.2;
  neighbor fd00::2;
}
EOF2
cat >"$DIR/frr.conf" <<'EOF2'
frr defaults traditional
hostname b
!
bfd
 peer 10.0.0.1
  receive-interval 200
  transmit-interval 200
  detect-multiplier 4
 !
 peer fd00::1
  receive-interval 200
  transmit-interval 200
  detect-multiplier 4
 !
!
EOF2
chown -R frr:frr "$DIR"
common="-d -u frr -g frr -f $DIR/frr.conf -z $DIR/zserv.api --vty_socket $DIR"
# shellcheck disable=SC2086
inb /usr/lib/frr/zebra $common -i "$DIR/zebra.pid"
sleep 1
# shellcheck disable=SC2086
inb /usr/lib/frr/bfdd $common -i "$DIR/bfdd.pid" --bfdctl "$DIR/bfdd.sock"
ina bird -c "$DIR/bird.conf" -s "$DIR/bird.ctl" -P "$DIR/bird.pid"

wait_until 30 "IPv4 Up" bird_says 10.0.0.2 Up
wait_until 30 "IPv6 Up" bird_says fd00::2 Up
sleep 2
vt -c 'configure terminal' -c 'bfd' -c 'peer 10.0.0.1' -c 'shutdown'
wait_until 30 "IPv4 Down" bird_says 10.0.0.2 Down
sleep 2
vt -c 'configure terminal' -c 'bfd' -c 'peer 10.0.0.1' -c 'no shutdown'
wait_until 30 "IPv4 Up again" bird_says 10.0.0.2 Up
sleep 1
inb nft add table inet cap
inb nft add chain inet cap out '{ type filter hook output priority 0; }'
inb nft add rule inet cap out ip daddr 10.0.0.1 udp dport 3784 drop
wait_until 30 "IPv4 expired" bird_says 10.0.0.2 Down
sleep 1
inb nft delete table inet cap
wait_until 30 "IPv4 Up after expiry" bird_says 10.0.0.2 Up
sleep 1

for pid in $(ip netns pids "$B"); do
    if [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = tcpdump ]; then kill -INT "$pid"; fi
done
sleep 1
file="$OUT/bird_frr.hex"
{
    echo "# BFD Control packets between BIRD $(ina bird --version 2>&1 | sed -n 's/.*version //p') (Debian bird2"
    echo "# $(dpkg-query -W -f '${Version}' bird2)) at 10.0.0.1 / fd00::1 (100 ms, multiplier 3) and FRR"
    echo "# $(dpkg-query -W -f '${Version}' frr) bfdd at 10.0.0.2 / fd00::2 (200 ms, multiplier 4),"
    echo "# captured by crates/bfd-wire/tests/capture.sh on $(date -u +%Y-%m-%d) (tcpdump in a"
    echo "# network namespace): sessions Up, FRR shuts the IPv4 peer down and up, FRR's"
    echo "# IPv4 packets dropped until BIRD's detection time expires, then Up again."
    echo "# Format: SENDER FAMILY TTL HEX, in the order seen (as captured: packets"
    echo "# dropped by nft on output are not in it)."
    python3 "$HERE/extract_bfd.py" "$DIR/bfd.pcap" 10.0.0.1=bird fd00::1=bird 10.0.0.2=frr fd00::2=frr
} >"$file"
echo "$file: $(grep -vc '^#' "$file") packets"
cleanup
rm -rf "$DIR"
