#!/usr/bin/env python3
"""What an nftables forward chain costs a forwarded 64-byte UDP packet.

Root; needs iperf3, nft and ip. Builds client -- gateway -- node (three
network namespaces of its own, two veths), floods 64-byte UDP datagrams
from the client to a VIP the gateway routes to the node, and, during that
one flood, switches the gateway between rulesets every second: each is
loaded once as its own table and kept dormant (`flags dormant`: its hooks
unregistered) but while it is measured. Every cycle measures each ruleset
once, in a rotating order, so the machine's drift hits all alike; a
ruleset's figure is the median over cycles of its rate divided by the
rate with no table in the same cycle.

Rulesets (10,000 VIPs in 10.77.0.0/16, 5201/tcp and 5201/udp open on each,
the target VIP 10.77.200.1 among them):
  none          no nftables table at all: plain forwarding
  empty         one base chain on the forward hook, no rule: the floor of
                any nftables filter
  compare       one rule, `ip daddr 10.77.0.0/16 accept`: a compare
  set           one rule, `ip daddr @vips4 accept`: a 4-byte hash lookup
  pier-before   pier's table before covers: `ip daddr @vips4 goto vip4`,
                then the verdict map (two lookups per VIP packet)
  pier          pier's table (src/route/nft.rs): the cover compare, then
                the verdict map (one lookup per VIP packet)

Usage: sudo benches/nft_hook_cost.py [SECONDS]   (default 120)
Prints a table; docs/benchmarks.md has the figures.
"""

import collections
import json
import os
import statistics
import subprocess
import sys
import time

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 120.0
SLOT = 1.0
SETTLE = 0.2
N = 10_000
TAG = f"nhc{os.getpid() % 100000}"
C, G, S = f"{TAG}c", f"{TAG}g", f"{TAG}n"
TARGET = "10.77.200.1"
RULESETS = ["none", "empty", "compare", "set", "pier-before", "pier"]


def sh(cmd, inp=None):
    return subprocess.run(
        cmd, shell=True, input=inp, capture_output=True, text=True, check=True
    ).stdout


def lab():
    for n in (C, G, S):
        sh(f"ip netns add {n} && ip -n {n} link set lo up")
    sh(f"ip link add ca netns {C} type veth peer name gc netns {G}")
    sh(f"ip link add gn netns {G} type veth peer name ng netns {S}")
    for ns, addr, dev in [
        (C, "192.0.2.2/24", "ca"),
        (G, "192.0.2.1/24", "gc"),
        (G, "10.0.3.1/24", "gn"),
        (S, "10.0.3.11/24", "ng"),
    ]:
        sh(f"ip -n {ns} addr add {addr} dev {dev} && ip -n {ns} link set {dev} up")
    sh(f"ip -n {S} addr add {TARGET}/32 dev lo")
    sh(f"ip -n {S} route add default via 10.0.3.1 src {TARGET}")
    sh(f"ip -n {C} route add 10.77.0.0/16 via 192.0.2.1")
    sh(f"ip netns exec {G} sysctl -qw net.ipv4.ip_forward=1")
    sh(f"ip -n {G} route add {TARGET}/32 via 10.0.3.11")


def table(name, kind):
    vips = [f"10.77.{i // 250}.{i % 250 + 1}" for i in range(N)] + [TARGET]
    t = f"inet {name}"
    out = [
        f"table {t} {{",
        f"\tset vips4 {{ type ipv4_addr; size {2 * N}; }}",
        f"\tmap ranged4 {{ type ipv4_addr . inet_proto . inet_service : verdict; size {4 * N}; }}",
        "\tcounter dropped_port {}",
        "\tchain forward { type filter hook forward priority filter; policy accept; }",
        "\tchain vip4 {}",
        "}",
    ]
    for i in range(0, len(vips), 1000):
        chunk = vips[i : i + 1000]
        out.append(f"add element {t} vips4 {{ {', '.join(chunk)} }}")
        ports = [f"{v} . {p} . 5201 : accept" for v in chunk for p in ("tcp", "udp")]
        out.append(f"add element {t} ranged4 {{ {', '.join(ports)} }}")
    forward = {
        "empty": [],
        "compare": ["ip daddr 10.77.0.0/16 accept"],
        "set": ["ip daddr @vips4 accept"],
        "pier-before": ["ip daddr @vips4 goto vip4"],
        "pier": ["ip daddr 10.77.0.0/16 goto vip4"],
    }[kind]
    out += [f"add rule {t} forward {r}" for r in forward]
    if kind.startswith("pier"):
        for r in [
            "ip daddr . meta l4proto . th dport vmap @ranged4",
            "icmp type { destination-unreachable, time-exceeded, parameter-problem } accept",
            "ip frag-off & 0x1fff != 0 accept",
            "counter name dropped_port drop",
        ]:
            out.append(f"add rule {t} vip4 {r}")
    return "\n".join(out) + "\n"


def rx_packets():
    j = json.loads(sh(f"ip -n {S} -s -j link show ng"))
    return j[0]["stats64"]["rx"]["packets"]


def select(active):
    for r in RULESETS[1:]:
        name = "t_" + r.replace("-", "_")
        if r == active:
            sh(f"ip netns exec {G} nft add table inet {name}")
        else:
            sh(f"ip netns exec {G} nft add table inet {name} '{{ flags dormant; }}'")


def main():
    os.sched_setaffinity(0, {1})
    flood = None
    try:
        lab()
        for r in RULESETS[1:]:
            name = "t_" + r.replace("-", "_")
            sh(f"ip netns exec {G} nft -f -", table(name, r))
            sh(f"ip netns exec {G} nft add table inet {name} '{{ flags dormant; }}'")
        subprocess.run(
            ["ip", "netns", "exec", S, "taskset", "-c", "1", "iperf3", "-s", "-D"],
            check=True,
        )
        time.sleep(1)
        flood = subprocess.Popen(
            f"ip netns exec {C} taskset -c 0 iperf3 -c {TARGET} -u -b 0 -l 64 -t {int(SECONDS) + 30}",
            shell=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(2)
        rates = collections.defaultdict(list)
        order = list(RULESETS)
        start = time.time()
        while time.time() - start < SECONDS:
            for r in order:
                select(r)
                time.sleep(SETTLE)
                a, ta = rx_packets(), time.time()
                time.sleep(SLOT)
                b, tb = rx_packets(), time.time()
                rates[r].append((b - a) / (tb - ta))
            order = order[1:] + order[:1]
        cycles = min(len(v) for v in rates.values())
        base = rates["none"]
        print("| ruleset | kpps (median) | × no table, paired median (IQR) | cycles |")
        print("|---|---|---|---|")
        for r in RULESETS:
            xs = rates[r][:cycles]
            ratios = sorted(x / b for x, b in zip(xs, base))
            q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
            print(
                f"| {r} | {statistics.median(xs) / 1e3:.1f} | ×{statistics.median(ratios):.3f} ({q1:.3f}–{q3:.3f}) | {cycles} |"
            )
        print(f"\nload average: {open('/proc/loadavg').read().split()[0]}")
    finally:
        if flood is not None:
            flood.kill()
        for n in (C, G, S):
            pids = subprocess.run(
                ["ip", "netns", "pids", n], capture_output=True, text=True
            ).stdout.split()
            for p in pids:
                subprocess.run(["kill", p], capture_output=True)
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


if __name__ == "__main__":
    main()
