#!/bin/bash
# VIPs to BIRD, pier vs gobgpd: how long 1,000 / 10,000 / 100,000 VIPs take
# to reach BIRD's table, for pier's BGP speaker and for Debian's gobgpd in
# the same run against the same BIRD, and pier's resident memory with
# 100,000 prefixes announced. Prints one table (markdown).
#
#   sudo benches/bgp_vips.sh            # SIZES="1000 10000 100000" REPEAT=3
#
# Needs root, iproute2, bird2 (bird, birdc), gobgpd (gobgpd, gobgp), cargo.
# Not run in CI. Everything it starts lives in two network namespaces,
# removed on exit (trap), also on failure or Ctrl-C.
#
#   gw  10.0.0.2 pier (AS 65010)  ── veth ──  r  10.0.0.1 BIRD (AS 65000)
#       10.0.0.3 gobgpd (AS 65020)
#
# BIRD has one eBGP protocol per speaker (import all, export none, no
# kernel protocol: BIRD's own table is the finish line), both speakers are
# passive and BIRD connects when its protocol is enabled. One speaker runs
# at a time. Phases, per size N, per speaker:
#   session-up bulk   the speaker holds N routes; `birdc enable`; time from
#                     BIRD's session Established to N routes imported
#   incremental       session up with no routes; N routes handed to the
#                     speaker; time until BIRD has them all
#   withdraw all      every route withdrawn; time until BIRD has none
# "Reached BIRD" is polled on BIRD's control socket every 2 ms
# (`show protocols all P`, the imported routes counter) by bgp_vips's `time`.
#
# How each speaker is fed:
#   pier    the library's Speaker (what `pier run` starts) in bgp_vips's
#           `speaker` harness, fed a prepared Desired through the engine's
#           watch channel ("publish"): the cost measured is the speaker's
#           (Adj-RIB-Out diff, UPDATE packing, TCP), not the engine's.
#   gobgpd  the routes from an MRT file with the same attributes through
#           `gobgp mrt inject global` (the gRPC AddPath stream, gobgp's bulk
#           input), and `gobgp global rib del all` to withdraw. gobgpd 3.10
#           drops the last routes of an injected stream, so the finish line
#           is what gobgpd's RIB holds once the inject exits (`global rib
#           summary`), shown in the table.
set -euo pipefail

SIZES=${SIZES:-"1000 10000 100000"}
REPEAT=${REPEAT:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TAG="bv$$"
R="$TAG-r"
GW="$TAG-gw"
DIR=$(mktemp -d /tmp/pier-bgp-vips.XXXXXX)

cleanup() {
    for ns in "$GW" "$R"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${BGP_VIPS_BIN:-}" ]; then
    BGP_VIPS_BIN=$(cd "$ROOT" && cargo bench --bench bgp_vips --no-run 2>&1 |
        sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
    BGP_VIPS_BIN="$ROOT/$BGP_VIPS_BIN"
fi
[ -x "$BGP_VIPS_BIN" ] || { echo "no bgp_vips binary ($BGP_VIPS_BIN)" >&2; exit 1; }

ip netns add "$R"
ip netns add "$GW"
ip link add "$TAG-a" type veth peer name "$TAG-b"
ip link set "$TAG-a" netns "$R" name eth0
ip link set "$TAG-b" netns "$GW" name eth0
ip -n "$R" addr add 10.0.0.1/24 dev eth0
ip -n "$GW" addr add 10.0.0.2/24 dev eth0
ip -n "$GW" addr add 10.0.0.3/24 dev eth0
for ns in "$R" "$GW"; do
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
done

SOCK="$DIR/bird.ctl"
cat >"$DIR/bird.conf" <<EOF
log "$DIR/bird.log" { info, warning, error, fatal, bug };
router id 10.0.0.1;
protocol device { }
template bgp speaker {
  local 10.0.0.1 as 65000;
  hold time 90;
  connect delay time 1;
  connect retry time 1;
  error wait time 1, 2;
  disabled;
  ipv4 { import all; export none; };
}
protocol bgp pier from speaker { neighbor 10.0.0.2 as 65010; }
protocol bgp gobgpd from speaker { neighbor 10.0.0.3 as 65020; }
EOF
ip netns exec "$R" bird -c "$DIR/bird.conf" -s "$SOCK" -P "$DIR/bird.pid"
birdc() { ip netns exec "$R" birdc -s "$SOCK" "$@" >/dev/null; }

# `time` prints "from_trigger_ms from_established_ms count".
measure() { "$BGP_VIPS_BIN" time "$SOCK" "$@"; }

wait_for() { # file pattern
    for _ in $(seq 1 3000); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "timeout waiting for '$2' in $1" >&2
    cat "$1" >&2
    return 1
}

FIFO="$DIR/pier.fifo"
mkfifo "$FIFO"
pier_cmd() { echo "$1" >"$FIFO"; }

# pier at size N: prints "bulk incremental withdraw [rss]"
run_pier() {
    local n=$1 out="$DIR/pier.out" bulk inc wd rss=""
    : >"$out"
    ip netns exec "$GW" "$BGP_VIPS_BIN" speaker 10.0.0.1 65000 65010 10.0.0.2 "$FIFO" >"$out" 2>&1 &
    pier_cmd "prepare $n"
    wait_for "$out" "prepared $n"
    # Resident memory of the harness holding the plan alone (the engine's
    # data, which pier holds anyway), then with the routes announced.
    pier_cmd rss
    wait_for "$out" "^rss"
    pier_cmd publish
    wait_for "$out" "published $n"
    bulk=$(measure pier "$n" -- ip netns exec "$R" birdc -s "$SOCK" enable pier | awk '{print $2}')
    pier_cmd withdraw
    measure pier 0 -- true >/dev/null
    pier_cmd "prepare $n"
    wait_for "$out" "prepared $n"
    inc=$(measure pier "$n" -- sh -c "echo publish > '$FIFO'" | awk '{print $1}')
    if [ "$n" -ge 100000 ]; then
        pier_cmd rss
        for _ in $(seq 1 100); do [ "$(grep -c '^rss' "$out")" -ge 2 ] && break; sleep 0.1; done
        rss=$(grep '^rss' "$out" | awk 'NR==1{p=$5} END{printf "VmHWM %.1f MiB, VmRSS %.1f MiB (the plan alone: %.1f MiB)", $3/1024, $5/1024, p/1024}')
    fi
    wd=$(measure pier 0 -- sh -c "echo withdraw > '$FIFO'" | awk '{print $1}')
    pier_cmd quit
    wait_for "$out" "^bye"
    birdc disable pier
    wait
    echo "$bulk $inc $wd${rss:+ $rss}"
}

cat >"$DIR/gobgpd.toml" <<'EOF'
[global.config]
  as = 65020
  router-id = "10.0.0.3"
  port = 179
  local-address-list = ["10.0.0.3"]

[[neighbors]]
  [neighbors.config]
    neighbor-address = "10.0.0.1"
    peer-as = 65000
  [neighbors.transport.config]
    passive-mode = true
    local-address = "10.0.0.3"
  [neighbors.timers.config]
    hold-time = 90
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
EOF
G=(ip netns exec "$GW" gobgp -u 127.0.0.1 -p 50051)
gobgp_cmd() { "${G[@]}" "$@"; }
SUMMARY="${G[*]} global rib summary -a ipv4" # run by bgp_vips through sh -c

# gobgpd at size N: prints "bulk arrived incremental arrived withdraw rss"
run_gobgpd() {
    local n=$1 mrt="$DIR/vips-$1.mrt" bulk inc wd pid got1 got2 rss
    [ -f "$mrt" ] || "$BGP_VIPS_BIN" mrt "$n" 10.0.0.3 "$mrt"
    ip netns exec "$GW" gobgpd -f "$DIR/gobgpd.toml" -t toml --api-hosts 127.0.0.1:50051 \
        >"$DIR/gobgpd.log" 2>&1 &
    for _ in $(seq 1 100); do gobgp_cmd global >/dev/null 2>&1 && break; sleep 0.1; done
    pid=$(ip netns pids "$GW" | while read -r p; do
        [ "$(cat /proc/"$p"/comm)" = gobgpd ] && echo "$p"; done | head -1)
    gobgp_cmd mrt inject global "$mrt" >/dev/null
    sleep 1
    got1=$(gobgp_cmd global rib summary -a ipv4 | sed -n 's/.*Destination: \([0-9]*\).*/\1/p')
    read -r _ bulk got1 < <(measure gobgpd "$got1" -- ip netns exec "$R" birdc -s "$SOCK" enable gobgpd)
    gobgp_cmd global rib del all -a ipv4 >/dev/null
    measure gobgpd 0 -- true >/dev/null
    read -r inc _ got2 < <(measure gobgpd - "$SUMMARY" -- "${G[@]}" mrt inject global "$mrt")
    rss=$(awk '/VmHWM/{h=$2} /VmRSS/{r=$2} END{printf "VmHWM %.1f MiB, VmRSS %.1f MiB", h/1024, r/1024}' /proc/"$pid"/status)
    read -r wd _ _ < <(measure gobgpd 0 -- "${G[@]}" global rib del all -a ipv4)
    birdc disable gobgpd
    kill "$pid"
    wait
    echo "$bulk $got1 $inc $got2 $wd $rss"
}

median() { sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
ratio() { awk -v p="$1" -v g="$2" 'BEGIN{ if (g > 0) printf "%.2f", p/g; else print "-" }'; }

declare -A P G_ ARRIVED
PIER_RSS="" GOBGPD_RSS=""
for n in $SIZES; do
    for rep in $(seq 1 "$REPEAT"); do
        read -r pb pi pw prss < <(run_pier "$n")
        echo "pier    N=$n run $rep: bulk $pb ms, incremental $pi ms, withdraw $pw ms ${prss}" >&2
        read -r gb ga gi gi_a gw grss < <(run_gobgpd "$n")
        echo "gobgpd  N=$n run $rep: bulk $gb ms ($ga routes), incremental $gi ms ($gi_a routes), withdraw $gw ms, $grss" >&2
        P[$n,bulk]+="$pb "; P[$n,inc]+="$pi "; P[$n,wd]+="$pw "
        G_[$n,bulk]+="$gb "; G_[$n,inc]+="$gi "; G_[$n,wd]+="$gw "
        ARRIVED[$n,bulk]+="$ga "; ARRIVED[$n,inc]+="$gi_a "
        if [ "$n" -ge 100000 ]; then PIER_RSS=$prss; GOBGPD_RSS=$grss; fi
    done
done

med() { tr ' ' '\n' <<<"$1" | grep . | median; }
echo
echo "BGP: VIPs to BIRD, pier vs gobgpd — median of $REPEAT runs, ms (lower is better)"
echo
echo "| VIPs | phase | pier | gobgpd | routes gobgpd delivered | pier/gobgpd |"
echo "|---:|---|---:|---:|---:|---:|"
for n in $SIZES; do
    for phase in bulk inc wd; do
        case $phase in bulk) name="session-up bulk" ;; inc) name="incremental while up" ;; wd) name="withdraw all" ;; esac
        p=$(med "${P[$n,$phase]}")
        g=$(med "${G_[$n,$phase]}")
        if [ "$phase" = wd ]; then a="-"; else a=$(tr ' ' '\n' <<<"${ARRIVED[$n,$phase]}" | grep . | sort -u | paste -sd/); fi
        printf "| %s | %s | %.1f | %.1f | %s | %s |\n" "$n" "$name" "$p" "$g" "$a" "$(ratio "$p" "$g")"
    done
done
if [ -n "$PIER_RSS" ]; then
    echo
    echo "Resident memory with 100,000 prefixes announced: pier speaker harness $PIER_RSS; gobgpd $GOBGPD_RSS."
fi
