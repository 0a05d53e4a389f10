//! pier's flowtable offload against a kernel that has flowtables
//! (`CONFIG_NF_FLOW_TABLE`). The development machine's kernel has none, so
//! this test is `#[ignore]`d: `benches/flowtable_vm.sh` boots Debian's
//! kernel in a guest and runs it there with `--ignored`
//! (docs/datapath.md, "Flowtable offload, tested in a VM").
//!
//! client (10.0.1.2) — gw (pier's route actuator) — n1..n3 (VIP on lo), as
//! in tests/conn_keep_netns.rs. With `flowtable = "software"` and each
//! `vip_counters`: the probe finds flowtables and pier's table declares one
//! with `flow add` on its accepts; kept connections to an open port are
//! offloaded (`conntrack -L` shows `[OFFLOAD]`) and keep answering; a closed
//! port and a port whose source ranges exclude the client stay dropped and
//! are never offloaded; then a node leaves the VIP's next hops and joins
//! again, and every kept connection is asked once more (counts printed on
//! `FTVM` lines). The same for an IPv6 VIP (fd66::10, nodes in
//! fd00:2::/64): offload, a closed port, a node leaving. Last, iperf3 through pier with and without the flowtable
//! and through plain forwarding (`FTVM iperf3` lines, for
//! docs/benchmarks.md).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

#[path = "common/netlab.rs"]
mod netlab;

#[path = "common/gateway_lab.rs"]
mod gateway_lab;

use gateway_lab::{
    client_gateway_nodes, connect_kept, forwarded_vip, nodes6_named, nodes_named, port, round,
    NODES, NODES6,
};

use netlab::{line_server, Lab};
use pier::config::{Flowtable, Forwarding, SysctlMode};
use pier::model::Desired;
use pier::route::{RouteActuator, RouteConfig};

const VIP: &str = "10.77.0.10";
/// The VIP of the IPv6 scenario (nodes in fd00:2::/64).
const VIP6: &str = "fd66::10";
/// Open to every source.
const OPEN: u16 = 8080;
/// Open only to 10.0.9.0/24: the client (10.0.1.2) is outside.
const RANGED: u16 = 8081;
/// Open only to 10.0.1.0/24: the client is inside.
const ALLOWED: u16 = 8082;
/// Not declared: closed.
const CLOSED: u16 = 9999;
const IPERF: u16 = 5201;
const CONNECTIONS: usize = 24;
/// Generous: the guest may be emulated (TCG).
const ANSWER: Duration = Duration::from_secs(5);

/// The VIP, forwarded to those of `NODES` named in `nodes`.
fn desired(generation: u64, nodes: &[&str]) -> Desired {
    let hops = nodes_named(nodes);
    let tcp = |p: u16, sources: &[&str]| port(&format!("{p}/tcp"), sources);
    let ports = vec![
        tcp(OPEN, &[]),
        tcp(RANGED, &["10.0.9.0/24"]),
        tcp(ALLOWED, &["10.0.1.0/24"]),
        tcp(IPERF, &[]),
        port(&format!("{IPERF}/udp"), &[]),
    ];
    forwarded_vip(generation, VIP, &hops, ports)
}

fn lab(tag: &str) -> Lab {
    let lab = client_gateway_nodes(tag, VIP, &NODES);
    for (n, _) in NODES {
        for port in [OPEN, RANGED, ALLOWED, CLOSED] {
            line_server(&lab, n, SocketAddr::new(VIP.parse().unwrap(), port), n);
        }
    }
    lab
}

fn config(flowtable: Flowtable, vip_counters: bool) -> RouteConfig {
    RouteConfig {
        lan_interfaces: vec!["eth0".into(), "g0".into()],
        sysctl: SysctlMode::Set,
        repair_interval: Duration::from_secs(3600),
        forwarding: Forwarding {
            resilient_buckets: 128,
            resilient_idle_timer_s: 3,
            resilient_unbalanced_timer_s: 0,
            vip_counters,
            flowtable,
            ..Forwarding::default()
        },
        ..RouteConfig::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// `conntrack -L` lines of the gateway for a destination port.
fn conntrack(lab: &Lab, port: u16) -> Vec<String> {
    conntrack_proto(lab, "tcp", port)
}

/// `conntrack -L` lines of the gateway for a protocol and destination port.
fn conntrack_proto(lab: &Lab, proto: &str, port: u16) -> Vec<String> {
    conntrack_family(lab, "ipv4", proto, port)
}

/// The same for a family (`ipv4`, `ipv6`).
fn conntrack_family(lab: &Lab, family: &str, proto: &str, port: u16) -> Vec<String> {
    let (_, text) = lab.try_sh(
        "gw",
        &format!("conntrack -L -f {family} -p {proto} --dport {port} 2>/dev/null"),
    );
    text.lines()
        .filter(|l| l.starts_with(proto))
        .map(str::to_string)
        .collect()
}

fn offloaded(lab: &Lab, port: u16) -> usize {
    count_offloaded(&conntrack(lab, port))
}

fn count_offloaded(lines: &[String]) -> usize {
    lines.iter().filter(|l| l.contains("[OFFLOAD]")).count()
}

/// Packets of the VIP's accepted counter (vip_counters = true).
fn accepted_packets(lab: &Lab) -> u64 {
    let text = lab.sh("gw", "nft list counter inet pier a_0a4d000a");
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A connection attempt that must not get through.
fn refused(lab: &Lab, port: u16) -> bool {
    refused_at(lab, SocketAddr::new(VIP.parse().unwrap(), port))
}

fn refused_at(lab: &Lab, addr: SocketAddr) -> bool {
    let cl = lab.ns("cl");
    let connected = netlab::in_ns(&cl, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
    });
    !connected
}

fn tally(answers: &BTreeMap<usize, Result<String, String>>) -> BTreeMap<String, usize> {
    answers.values().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(match r {
            Ok(n) => n.clone(),
            Err(_) => "broken".into(),
        })
        .or_default() += 1;
        m
    })
}

/// Per node of the first answers: (connections that broke or moved, held).
fn broken_per_node(
    first: &BTreeMap<usize, String>,
    after: &BTreeMap<usize, Result<String, String>>,
) -> BTreeMap<String, (usize, usize)> {
    let mut moved = BTreeMap::<String, (usize, usize)>::new();
    for (i, was) in first {
        let e = moved.entry(was.clone()).or_default();
        e.1 += 1;
        if after.get(i).and_then(|r| r.as_ref().ok()) != Some(was) {
            e.0 += 1;
        }
    }
    moved
}

/// n3 left: none of the offloaded connections to n1 and n2 broke, every
/// one to n3 did (it now reaches another node, which resets it).
fn assert_only_n3_broke(moved: &BTreeMap<String, (usize, usize)>) {
    for (node, (broke, held)) in moved {
        if node != "n3" {
            assert_eq!(
                *broke, 0,
                "{node}: {broke}/{held} offloaded connections broke when n3 left"
            );
        } else {
            assert_eq!(
                broke, held,
                "connections to n3 now reach another node, which resets them"
            );
        }
    }
}

fn offload_scenario(vip_counters: bool) {
    let lab = lab(if vip_counters { "fc" } else { "fn" });
    let gw = lab.ns("gw");
    let cl = lab.ns("cl");
    let vip = SocketAddr::new(VIP.parse().unwrap(), OPEN);
    let tag = format!("vip_counters={vip_counters}");
    netlab::in_ns(&gw, || {
        runtime().block_on(async {
            let mut act = RouteActuator::start(config(Flowtable::Software, vip_counters))
                .await
                .expect("start");
            let status = act.status().lock().unwrap().clone();
            println!("FTVM {tag} status: {:?} lines {:?}", status, status.lines());
            assert_eq!(
                status.flowtable_missing, None,
                "the probe finds flowtables in this kernel"
            );
            assert!(
                status
                    .lines()
                    .iter()
                    .any(|l| l.starts_with("flowtable: software offload")),
                "pier status says offload is on: {:?}",
                status.lines()
            );
            act.apply(&desired(1, &["n1", "n2", "n3"]))
                .await
                .expect("apply");
            let table = lab.sh("gw", "nft list table inet pier");
            println!("FTVM {tag} table:\n{table}");
            assert!(table.contains("flowtable ft"), "{table}");
            assert!(table.contains("flow add @ft"), "{table}");

            // (b) kept connections are offloaded and keep answering.
            let mut conns = connect_kept(&cl, vip, 0, CONNECTIONS, ANSWER);
            let first: BTreeMap<usize, String> = round(&mut conns, ANSWER)
                .into_iter()
                .map(|(i, r)| (i, r.expect("first request")))
                .collect();
            let counted_after_first = if vip_counters {
                accepted_packets(&lab)
            } else {
                0
            };
            for _ in 0..5 {
                let r = round(&mut conns, ANSWER);
                assert!(r.values().all(Result::is_ok), "{r:?}");
            }
            let off = offloaded(&lab, OPEN);
            println!(
                "FTVM {tag} offload: {off}/{CONNECTIONS} kept connections [OFFLOAD] after 6 requests each; spread {:?}",
                tally(&first.iter().map(|(i, n)| (*i, Ok(n.clone()))).collect())
            );
            for l in conntrack(&lab, OPEN).iter().take(2) {
                println!("FTVM {tag} conntrack: {l}");
            }
            assert_eq!(off, CONNECTIONS, "{:#?}", conntrack(&lab, OPEN));
            if vip_counters {
                let later = accepted_packets(&lab);
                println!(
                    "FTVM {tag} accepted counter: {counted_after_first} packets after the first request, {later} after 5 more on each connection"
                );
            }

            // An allowed source on a port with source ranges: accepted and
            // offloaded too.
            let allowed = SocketAddr::new(VIP.parse().unwrap(), ALLOWED);
            let mut ranged = connect_kept(&cl, allowed, 0, 4, ANSWER);
            for _ in 0..6 {
                let r = round(&mut ranged, ANSWER);
                assert!(r.values().all(Result::is_ok), "{r:?}");
            }
            let off_ranged = offloaded(&lab, ALLOWED);
            println!("FTVM {tag} allowed source on a ranged port: 4/4 answered, {off_ranged}/4 [OFFLOAD]");
            assert_eq!(off_ranged, 4, "{:#?}", conntrack(&lab, ALLOWED));
            drop(ranged);

            // (c) a closed port, and a port whose source ranges exclude the client.
            assert!(refused(&lab, CLOSED), "closed port {CLOSED} let a connection through");
            assert!(refused(&lab, RANGED), "port {RANGED} let a source outside its ranges through");
            let stray = conntrack(&lab, CLOSED).len() + conntrack(&lab, RANGED).len();
            let counters = lab.sh("gw", "nft list counters table inet pier | grep -A1 -E 'dropped_(port|source)' | tr -s ' \\t\\n' ' '");
            println!("FTVM {tag} dropped: closed port and outside source refused; conntrack entries for them: {stray}; {counters}");
            assert_eq!(stray, 0, "dropped connections left conntrack entries");

            // (d) n3 leaves, then joins again.
            act.apply(&desired(2, &["n1", "n2"]))
                .await
                .expect("apply without n3");
            let after = round(&mut conns, ANSWER);
            let moved = broken_per_node(&first, &after);
            let off_after = offloaded(&lab, OPEN);
            println!(
                "FTVM {tag} leave: broken/held per node {moved:?}; answers {:?}; errors {:?}; [OFFLOAD] afterwards {off_after}/{}",
                tally(&after),
                after.values().filter_map(|r| r.as_ref().err()).take(3).collect::<Vec<_>>(),
                conns.len()
            );
            assert_only_n3_broke(&moved);
            let before_join: BTreeMap<usize, String> = after
                .into_iter()
                .filter_map(|(i, r)| r.ok().map(|n| (i, n)))
                .collect();
            for _ in 0..3 {
                round(&mut conns, ANSWER);
            }
            let off_before_join = offloaded(&lab, OPEN);
            act.apply(&desired(3, &["n1", "n2", "n3"]))
                .await
                .expect("apply with n3");
            let joined = round(&mut conns, ANSWER);
            let join_broken = joined
                .iter()
                .filter(|(i, r)| r.as_ref().ok() != before_join.get(i))
                .count();
            println!(
                "FTVM {tag} join: [OFFLOAD] before {off_before_join}/{}; broken {join_broken}/{}; answers {:?}; [OFFLOAD] afterwards {}",
                before_join.len(),
                before_join.len(),
                tally(&joined),
                offloaded(&lab, OPEN)
            );
            assert_eq!(join_broken, 0, "offloaded connections broke when n3 joined");
            drop(conns);
            act.shutdown(false).await.expect("shutdown");
        })
    });
    let left = lab.try_sh("gw", "nft list table inet pier").0;
    assert!(!left, "shutdown leaves no table");
}

/// An IPv6 VIP: kept connections offloaded, a closed port dropped and
/// never offloaded, a node leaving breaks none of the others'.
#[test]
#[ignore = "needs a kernel with CONFIG_NF_FLOW_TABLE: run by benches/flowtable_vm.sh"]
fn flowtable_offload_ipv6() {
    if !netlab::prerequisites("flowtable_offload_ipv6", &["ip", "nft", "conntrack"]) {
        return;
    }
    let lab = client_gateway_nodes("f6", VIP6, &NODES6);
    let vip: IpAddr = VIP6.parse().unwrap();
    for (n, _) in NODES6 {
        for p in [OPEN, CLOSED] {
            line_server(&lab, n, SocketAddr::new(vip, p), n);
        }
    }
    let desired6 = |generation: u64, nodes: &[&str]| {
        forwarded_vip(
            generation,
            VIP6,
            &nodes6_named(nodes),
            vec![port(&format!("{OPEN}/tcp"), &[])],
        )
    };
    let offloaded6 = || count_offloaded(&conntrack_family(&lab, "ipv6", "tcp", OPEN));
    let (gw, cl) = (lab.ns("gw"), lab.ns("cl"));
    let open = SocketAddr::new(vip, OPEN);
    netlab::in_ns(&gw, || {
        runtime().block_on(async {
            let mut act = RouteActuator::start(config(Flowtable::Software, false))
                .await
                .expect("start");
            act.apply(&desired6(1, &["n1", "n2", "n3"]))
                .await
                .expect("apply");
            let table = lab.sh("gw", "nft list table inet pier");
            assert!(
                table.contains("ip6 daddr fd66::10 goto vip6") && table.contains("flow add @ft"),
                "{table}"
            );
            let mut conns = connect_kept(&cl, open, 0, CONNECTIONS, ANSWER);
            let first: BTreeMap<usize, String> = round(&mut conns, ANSWER)
                .into_iter()
                .map(|(i, r)| (i, r.expect("first request")))
                .collect();
            for _ in 0..5 {
                let r = round(&mut conns, ANSWER);
                assert!(r.values().all(Result::is_ok), "{r:?}");
            }
            let off = offloaded6();
            println!(
                "FTVM ipv6 offload: {off}/{CONNECTIONS} kept connections [OFFLOAD] after 6 requests each; spread {:?}",
                tally(&first.iter().map(|(i, n)| (*i, Ok(n.clone()))).collect())
            );
            assert_eq!(
                off,
                CONNECTIONS,
                "{:#?}",
                conntrack_family(&lab, "ipv6", "tcp", OPEN)
            );
            assert!(
                refused_at(&lab, SocketAddr::new(vip, CLOSED)),
                "closed port {CLOSED} let an IPv6 connection through"
            );
            let stray = conntrack_family(&lab, "ipv6", "tcp", CLOSED).len();
            println!("FTVM ipv6 dropped: closed port refused; conntrack entries for it: {stray}");
            assert_eq!(stray, 0, "a dropped connection left a conntrack entry");

            act.apply(&desired6(2, &["n1", "n2"]))
                .await
                .expect("apply without n3");
            let after = round(&mut conns, ANSWER);
            let moved = broken_per_node(&first, &after);
            println!(
                "FTVM ipv6 leave: broken/held per node {moved:?}; answers {:?}; [OFFLOAD] afterwards {}/{}",
                tally(&after),
                offloaded6(),
                conns.len()
            );
            assert_only_n3_broke(&moved);
            drop(conns);
            act.shutdown(false).await.expect("shutdown");
        })
    });
    assert!(
        !lab.try_sh("gw", "nft list table inet pier").0,
        "shutdown leaves no table"
    );
}

#[test]
#[ignore = "needs a kernel with CONFIG_NF_FLOW_TABLE: run by benches/flowtable_vm.sh"]
fn flowtable_offload_default_layout() {
    if !netlab::prerequisites(
        "flowtable_offload_default_layout",
        &["ip", "nft", "conntrack"],
    ) {
        return;
    }
    offload_scenario(false);
}

#[test]
#[ignore = "needs a kernel with CONFIG_NF_FLOW_TABLE: run by benches/flowtable_vm.sh"]
fn flowtable_offload_with_vip_counters() {
    if !netlab::prerequisites(
        "flowtable_offload_with_vip_counters",
        &["ip", "nft", "conntrack"],
    ) {
        return;
    }
    offload_scenario(true);
}

/// One iperf3 run from the client to the VIP, up to three tries (a run
/// now and then ends without a result, e.g. the server still busy with the
/// previous one): TCP received bits/s, or UDP received packets/s.
fn iperf(lab: &Lab, args: &str) -> f64 {
    let mut last = String::new();
    for _ in 0..3 {
        let (_, json) = lab.try_sh(
            "cl",
            &format!("iperf3 -c {VIP} -p {IPERF} -t 5 -O 1 -J {args}"),
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        let end = &v["end"];
        let got = if args.contains("-u") {
            // Received datagrams per second, from the server's side.
            let sum = &end["sum"];
            match (
                sum["packets"].as_f64(),
                sum["lost_packets"].as_f64(),
                sum["seconds"].as_f64(),
            ) {
                (Some(p), Some(l), Some(t)) if t > 0.0 => Some((p - l) / t),
                _ => None,
            }
        } else {
            end["sum_received"]["bits_per_second"].as_f64()
        };
        if let Some(x) = got {
            return x;
        }
        last = v["error"].as_str().unwrap_or(&json).to_string();
        println!("FTVM iperf3 {args}: no result ({last}), again");
        std::thread::sleep(Duration::from_secs(2));
    }
    panic!("iperf3 {args}: no result in three tries: {last}");
}

/// One path's [TCP 1 stream Gbit/s, TCP 8 streams Gbit/s, UDP 64 B kpps].
fn throughput(mode: &str) -> [f64; 3] {
    let mut lab = lab(&format!("t{}", &mode[..1]));
    // Bound to the VIP: the UDP server's replies must come from it.
    lab.spawn("n1", "iperf3", &["iperf3", "-s", "-p", "5201", "-B", VIP]);
    std::thread::sleep(Duration::from_secs(1));
    let gw = lab.ns("gw");
    let run = |lab: &Lab| {
        [
            iperf(lab, "-P 1") / 1e9,
            iperf(lab, "-P 8") / 1e9,
            iperf(lab, "-u -l 64 -b 0") / 1e3,
        ]
    };
    let r = if mode == "plain" {
        lab.sh(
            "gw",
            &format!("sysctl -qw net.ipv4.ip_forward=1 && ip route add {VIP}/32 via 10.0.2.11"),
        );
        run(&lab)
    } else {
        let flowtable = if mode == "flowtable" {
            Flowtable::Software
        } else {
            Flowtable::Off
        };
        netlab::in_ns(&gw, || {
            runtime().block_on(async {
                let mut act = RouteActuator::start(config(flowtable, false))
                    .await
                    .expect("start");
                act.apply(&desired(1, &["n1"])).await.expect("apply");
                // Count offloaded iperf3 flows 3 s into the 1-stream TCP run
                // and into the UDP run (which starts after two TCP runs of
                // 6 s each).
                let (r, tcp, udp) = std::thread::scope(|scope| {
                    let probe = scope.spawn(|| {
                        std::thread::sleep(Duration::from_secs(3));
                        let tcp = offloaded(&lab, IPERF);
                        std::thread::sleep(Duration::from_secs(12));
                        let udp = conntrack_proto(&lab, "udp", IPERF)
                            .iter()
                            .filter(|l| l.contains("[OFFLOAD]"))
                            .count();
                        (tcp, udp)
                    });
                    let r = run(&lab);
                    let (tcp, udp) = probe.join().unwrap_or((0, 0));
                    (r, tcp, udp)
                });
                println!(
                    "FTVM iperf3 {mode}: [OFFLOAD] during the runs: {tcp} TCP (1 stream), {udp} UDP"
                );
                act.shutdown(false).await.expect("shutdown");
                r
            })
        })
    };
    lab.stop("iperf3");
    r
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
#[ignore = "needs a kernel with CONFIG_NF_FLOW_TABLE: run by benches/flowtable_vm.sh"]
fn flowtable_throughput() {
    if !netlab::prerequisites(
        "flowtable_throughput",
        &["ip", "nft", "iperf3", "conntrack"],
    ) {
        return;
    }
    // Interleaved rounds (each path once per round, a fresh lab each
    // time); medians and min–max of the rounds.
    let rounds: usize = std::env::var("FT_VM_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let modes = ["flowtable", "noflowtable", "plain"];
    let mut runs: Vec<Vec<[f64; 3]>> = vec![Vec::new(); modes.len()];
    for round in 0..rounds {
        for (k, m) in modes.iter().enumerate() {
            let r = throughput(m);
            println!(
                "FTVM iperf3 round {round} {m}: {:.2} / {:.2} Gbit/s, {:.1} kpps",
                r[0], r[1], r[2]
            );
            runs[k].push(r);
        }
    }
    let stat = |k: usize, w: usize| {
        let v: Vec<f64> = runs[k].iter().map(|r| r[w]).collect();
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
        (median(v), lo, hi)
    };
    println!("FTVM iperf3 | path | TCP 1 stream, Gbit/s | × plain | TCP 8 streams, Gbit/s | × plain | UDP 64 B, kpps received | × plain |");
    println!("FTVM iperf3 |---|---|---|---|---|---|---|");
    for (k, m) in modes.iter().enumerate() {
        let name = match *m {
            "flowtable" => "pier, `flowtable = \"software\"`",
            "noflowtable" => "pier, `flowtable = \"off\"`",
            _ => "plain forwarding (no pier table)",
        };
        let cells: Vec<String> = (0..3)
            .map(|w| {
                let (m, lo, hi) = stat(k, w);
                format!("{m:.2} ({lo:.2}–{hi:.2}) | ×{:.3}", m / stat(2, w).0)
            })
            .collect();
        println!("FTVM iperf3 | {name} | {} |", cells.join(" | "));
    }
}
