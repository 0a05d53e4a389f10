//! The gateway data path on the real kernel, in network namespaces this
//! program creates and removes (on drop, also when it panics). Needs root,
//! `ip`, `nft` and `iperf3`. Prints a markdown table for
//! docs/benchmarks.md:
//!
//! 1. 10,000 VIP multipath routes (3 next hops each) installed by pier's
//!    route code, and by `ip -batch` doing the same, in the same run; a
//!    no-op reconcile at 10k; the whole actuator apply (routes + nft table).
//! 2. Forwarding cost (iperf3: one TCP stream, 8 streams, 64-byte UDP
//!    datagrams as packets/s; client and server in their own namespaces)
//!    through the gateway namespace with pier's 10,000 VIPs installed
//!    (routes + nft table), with and without per-VIP counters, vs plain
//!    forwarding through the same namespace (no nft), vs the same with one
//!    empty nftables forward chain (the floor of any nftables filter), vs
//!    one veth between client and node; the host's softirq time per
//!    Gbit/s, the load
//!    average, and with `DATAPATH_PERF=1` netfilter's share of a
//!    `perf record -a` taken during the first round.
//! 3. Time from a node's health endpoint being killed to the node leaving
//!    the VIP's kernel route, with the real `pier` binary at the default
//!    health settings, p50/p99 over 20 trials, observed by polling netlink
//!    from outside pier; and the time back after the endpoint returns.
//! 4. ARP and NDP reply latency: pier's responder vs the kernel answering
//!    for a local address, same veth, same run.
//!
//! `cargo bench --bench datapath` (env `DATAPATH_TRIALS`, `DATAPATH_VIPS`,
//! `DATAPATH_IPERF_SECONDS`, `DATAPATH_IPERF_ROUNDS` change the sizes;
//! `DATAPATH_PERF=1` profiles).

#[path = "../tests/common/netlab.rs"]
mod netlab;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netlab::{arp_ask, arp_request, must, parse_mac, path_str, HttpServer, Lab};
use pier::arp::{ArpConfig, ArpResponder};
use pier::config::SysctlMode;
use pier::model::{
    AnnounceMode, Announcement, BgpAttributes, Desired, NextHop, PortRule, PortSpec,
};
use pier::route::{kernel, RouteActuator, RouteConfig, RouteTable};

const PIER: &str = env!("CARGO_BIN_EXE_pier");

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0a4d_0000 + i as u32)
}

fn announcement(vip: IpAddr, hops: &[&str], ports: &[&str]) -> Arc<Announcement> {
    Arc::new(Announcement {
        vip,
        pool: "bench".into(),
        mode: AnnounceMode::BgpSelf,
        next_hops: hops
            .iter()
            .map(|h| NextHop {
                node: h.to_string(),
                address: h.parse().expect("hop"),
                labels: Default::default(),
            })
            .collect::<Vec<_>>()
            .into(),
        bgp: BgpAttributes::default(),
        services: vec![],
        ports: ports
            .iter()
            .map(|p| PortRule {
                port: p.parse::<PortSpec>().expect("port"),
                sources: if p.starts_with("443") {
                    vec!["192.0.2.0/24".parse().expect("cidr")]
                } else {
                    vec![]
                },
            })
            .collect(),
    })
}

/// `n` VIPs over three next hops on `subnet` (.11-.13), plus `extra`.
fn desired(n: usize, subnet: &str, extra: Vec<Arc<Announcement>>) -> Desired {
    let hops: Vec<String> = (11..=13).map(|h| format!("{subnet}.{h}")).collect();
    let hops: Vec<&str> = hops.iter().map(|s| s.as_str()).collect();
    let mut announcements: Vec<Arc<Announcement>> = (0..n)
        .map(|i| announcement(IpAddr::V4(vip(i)), &hops, &["80/tcp", "443/tcp"]))
        .chain(extra)
        .collect();
    announcements.sort_by_key(|a| a.vip);
    Desired {
        generation: 1,
        announcements,
    }
}

fn route_config() -> RouteConfig {
    RouteConfig {
        lan_interfaces: vec!["eth0".into()],
        sysctl: SysctlMode::Set,
        repair_interval: Duration::from_secs(3600),
        ..RouteConfig::default()
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// 10000 → "10,000".
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

struct Row {
    what: String,
    value: String,
    note: String,
}

fn row(what: impl Into<String>, value: impl Into<String>, note: impl Into<String>) -> Row {
    let r = Row {
        what: what.into(),
        value: value.into(),
        note: note.into(),
    };
    eprintln!("  {} | {} | {}", r.what, r.value, r.note);
    r
}

/// 1. Route installation at 10k.
fn routes(n: usize, rows: &mut Vec<Row>) {
    eprintln!("== {n} VIP routes");
    let mut lab = Lab::new("bro");
    lab.host("gw", &["10.0.2.1/24"]);
    let d = desired(n, "10.0.2", vec![]);
    let want = kernel::desired_routes(&d);
    let rounds = 3;
    let (mut pier_add, mut pier_noop, mut pier_del) = (vec![], vec![], vec![]);
    let (mut batch_add, mut batch_del) = (vec![], vec![]);
    let (mut apply, mut repair, mut rewrite, mut remove) = (vec![], vec![], vec![], vec![]);
    let batch_file = lab.write(
        "routes.batch",
        &want
            .iter()
            .map(|(dst, hops)| {
                let nh: Vec<String> = hops.iter().map(|h| format!("nexthop via {h}")).collect();
                format!("route add {dst} proto 201 {}\n", nh.join(" "))
            })
            .collect::<String>(),
    );
    let del_file = lab.write(
        "routes-del.batch",
        &want
            .keys()
            .map(|dst| format!("route del {dst} proto 201\n"))
            .collect::<String>(),
    );
    let gw = lab.ns("gw");
    for _ in 0..rounds {
        // pier's route code alone: dump, diff, one netlink request per route.
        let (add, noop, del) = lab.in_host("gw", || {
            runtime().block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection().expect("netlink");
                let task = tokio::spawn(conn);
                let sync = |target: RouteTable| {
                    let handle = handle.clone();
                    async move {
                        let t = Instant::now();
                        let current = kernel::dump(&handle).await.expect("dump");
                        for op in kernel::diff(&current, &target) {
                            kernel::execute(&handle, &op).await.expect("route op");
                        }
                        t.elapsed()
                    }
                };
                let add = sync(want.clone()).await;
                let noop = sync(want.clone()).await;
                let del = sync(RouteTable::new()).await;
                task.abort();
                (add, noop, del)
            })
        });
        pier_add.push(add);
        pier_noop.push(noop);
        pier_del.push(del);
        // ip -batch, the same routes.
        let t = Instant::now();
        must(&["ip", "-n", &gw, "-batch", &path_str(&batch_file)]);
        batch_add.push(t.elapsed());
        let t = Instant::now();
        must(&["ip", "-n", &gw, "-batch", &path_str(&del_file)]);
        batch_del.push(t.elapsed());
        // The whole actuator: routes and the nft table.
        let (a, r, x) = lab.in_host("gw", || {
            runtime().block_on(async {
                let mut act = RouteActuator::start(route_config()).await.expect("start");
                let t = Instant::now();
                let rep = act.apply(&d).await.expect("apply");
                assert_eq!(rep.added, n, "{rep:?}");
                let a = t.elapsed();
                let t = Instant::now();
                let rep = act.repair().await.expect("repair");
                assert_eq!(rep.added + rep.replaced + rep.deleted, 0);
                assert!(!rep.table_written, "untouched table rewritten: {rep:?}");
                let r = t.elapsed();
                // Another transaction in the namespace (here: a table of
                // someone else's): the next repair rewrites pier's table.
                must(&["nft", "add", "table", "inet", "bench_other"]);
                let t = Instant::now();
                let rep = act.repair().await.expect("repair");
                assert!(rep.table_written, "{rep:?}");
                let rw = t.elapsed();
                must(&["nft", "delete", "table", "inet", "bench_other"]);
                let t = Instant::now();
                act.shutdown(false).await.expect("shutdown");
                (a, (r, rw), t.elapsed())
            })
        });
        apply.push(a);
        repair.push(r.0);
        rewrite.push(r.1);
        remove.push(x);
    }
    assert!(lab.routes("gw", 201).is_empty());
    let k = thousands(n);
    let per = |d: Duration| format!("{:.1} µs/route", d.as_secs_f64() * 1e6 / n as f64);
    let (pa, ba) = (median(pier_add), median(batch_add));
    rows.push(row(
        format!("install {k} VIP routes (3 next hops), pier route code"),
        ms(pa),
        format!(
            "{}; ×{:.2} of ip -batch",
            per(pa),
            pa.as_secs_f64() / ba.as_secs_f64()
        ),
    ));
    rows.push(row(
        format!("install {k} VIP routes, `ip -batch` (same run)"),
        ms(ba),
        per(ba),
    ));
    rows.push(row(
        format!("no-op reconcile at {k} (dump + diff), pier"),
        ms(median(pier_noop)),
        "nothing changed",
    ));
    let (pd, bd) = (median(pier_del), median(batch_del));
    rows.push(row(
        format!("remove {k} routes: pier / `ip -batch`"),
        format!("{} / {}", ms(pd), ms(bd)),
        "",
    ));
    rows.push(row(
        format!("actuator apply at {k}: routes + nft table (one transaction)"),
        ms(median(apply)),
        "from an empty kernel",
    ));
    rows.push(row(
        format!("actuator timer repair at {k}, nothing changed"),
        ms(median(repair)),
        "routes dumped and diffed; ruleset generation unchanged, table not rewritten",
    ));
    rows.push(row(
        format!("actuator timer repair at {k} after another nft transaction"),
        ms(median(rewrite)),
        "routes checked, table rewritten",
    ));
    rows.push(row(
        format!("actuator shutdown at {k}: routes and table removed"),
        ms(median(remove)),
        "",
    ));
}

/// One iperf3 run: what the receiver got, and the host's softirq time
/// while it ran.
#[derive(Clone, Copy, Default)]
struct Sample {
    /// Bits per second received.
    bps: f64,
    /// Packets per second received (UDP only).
    pps: f64,
    /// Softirq CPU-seconds per second of run, all CPUs (/proc/stat is not
    /// per namespace: client, gateway and server are all in it).
    softirq: f64,
}

/// The `softirq` column of /proc/stat's `cpu` line, in seconds.
fn softirq_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let ticks: f64 = stat
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(7))
        .and_then(|v| v.parse().ok())
        .expect("softirq in /proc/stat");
    // USER_HZ is 100 on every Linux architecture pier runs on.
    ticks / 100.0
}

/// The iperf3 workloads: (label, extra arguments).
const WORKLOADS: [(&str, &str); 3] = [
    ("TCP, 1 stream", ""),
    ("TCP, 8 streams", "-P 8"),
    ("UDP, 64-byte datagrams", "-u -l 64 -b 0"),
];

fn iperf(lab: &Lab, host: &str, server: &str, seconds: usize, extra: &str) -> Sample {
    // Client on CPU 0, server on CPU 1 (where there are two): the same
    // placement for every path, and less run-to-run spread.
    let pin = if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        "-A 0,1"
    } else {
        ""
    };
    let si0 = softirq_seconds();
    let t0 = Instant::now();
    let out = lab.sh(
        host,
        &format!("iperf3 -c {server} -t {seconds} {pin} {extra} -J --connect-timeout 3000"),
    );
    let wall = t0.elapsed().as_secs_f64();
    let softirq = (softirq_seconds() - si0) / wall;
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 -J");
    if extra.contains("-u") {
        let sum = &v["end"]["sum"];
        let got =
            sum["packets"].as_f64().unwrap_or(0.0) - sum["lost_packets"].as_f64().unwrap_or(0.0);
        let secs = sum["seconds"]
            .as_f64()
            .filter(|s| *s > 0.0)
            .unwrap_or(seconds as f64);
        Sample {
            bps: got * 64.0 * 8.0 / secs,
            pps: got / secs,
            softirq,
        }
    } else {
        Sample {
            bps: v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap_or_else(|| panic!("iperf3 output without a result: {out}")),
            pps: 0.0,
            softirq,
        }
    }
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One-minute load average, for the notes.
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Self time of netfilter's functions (`nft_*`, `nf_*`, `__nft_*`) in a
/// system-wide `perf record` taken while one run went on, in % of the
/// samples of iperf3 and ksoftirqd (where the forwarding softirq runs on
/// veths: in the sender's context, or in ksoftirqd); `None` when perf is
/// missing or failed.
fn perf_netfilter_share(report: &str) -> Option<f64> {
    let mut share = 0.0;
    let mut any = false;
    for line in report.lines().filter(|l| !l.starts_with('#')) {
        let mut words = line.split_whitespace();
        let (Some(pct), Some(_kind), Some(sym)) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        let Ok(pct) = pct.trim_end_matches('%').parse::<f64>() else {
            continue;
        };
        any = true;
        let sym = sym.trim_start_matches('_');
        if sym.starts_with("nft_") || sym.starts_with("nf_") {
            share += pct;
        }
    }
    any.then_some(share)
}

/// Run `perf record -a` for `seconds` while `f` runs; `perf report` text.
fn with_perf<R>(label: &str, seconds: usize, f: impl FnOnce() -> R) -> (R, Option<String>) {
    let data = std::env::temp_dir().join(format!("pier-datapath-{label}.perf"));
    let child = std::process::Command::new("perf")
        .args(["record", "-a", "-q", "-o"])
        .arg(&data)
        .args(["--", "sleep", &seconds.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let r = f();
    let report = child.ok().and_then(|mut c| {
        c.wait().ok().filter(|s| s.success())?;
        let out = std::process::Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "--sort",
                "symbol",
                "--comms",
                "iperf3,ksoftirqd/0,ksoftirqd/1",
                "--percentage",
                "relative",
                "-i",
            ])
            .arg(&data)
            .output()
            .ok()?;
        let _ = std::fs::remove_file(&data);
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    });
    (r, report)
}

/// Section 2: throughput through the gateway with 10k VIPs vs plain
/// forwarding vs the direct path, for 1 and 8 TCP streams and small-packet UDP, with
/// the host's softirq time per Gbit/s; interleaved rounds so the
/// machine's load hits every path alike.
fn throughput(n: usize, seconds: usize, rows: &mut Vec<Row>) {
    eprintln!("== throughput");
    let mut lab = Lab::new("bth");
    lab.host("gw", &["10.0.3.1/24"]);
    lab.host("n1", &["10.0.3.11/24"]);
    lab.bare_host("c");
    lab.link(
        "c",
        "up0",
        &["192.0.2.2/24"],
        "gw",
        "up0",
        &["192.0.2.1/24"],
    );
    lab.link(
        "c",
        "d0",
        &["198.51.100.2/24"],
        "n1",
        "d0",
        &["198.51.100.1/24"],
    );
    let target = "10.77.200.1";
    lab.sh("c", "ip route add 10.77.0.0/16 via 192.0.2.1");
    lab.sh(
        "n1",
        // Replies leave from the VIP: iperf3's UDP server answers from its
        // wildcard socket, whose source would otherwise be 10.0.3.11.
        &format!(
            "ip addr add {target}/32 dev lo && ip route add default via 10.0.3.1 src {target}"
        ),
    );
    lab.sh("gw", "sysctl -qw net.ipv4.ip_forward=1");
    lab.spawn("n1", "iperf3", &["iperf3", "-s"]);
    netlab::wait_for("iperf3 server", Duration::from_secs(10), || {
        let (ok, out) = lab.try_sh("n1", "ss -ltn 'sport = :5201'");
        if ok && out.contains("5201") {
            Ok(())
        } else {
            Err(out)
        }
    });
    // pier's state: 10k VIPs (routes + nft sets), the target among them.
    let extra = vec![announcement(
        target.parse().unwrap(),
        &["10.0.3.11"],
        &["5201/tcp", "5201/udp"],
    )];
    let d = desired(n, "10.0.3", extra);
    let pier_state = |install: Option<bool>| {
        lab.in_host("gw", || {
            runtime().block_on(async {
                let mut config = route_config();
                if let Some(counters) = install {
                    config.forwarding.vip_counters = counters;
                }
                let mut act = RouteActuator::start(config).await.expect("start");
                if install.is_some() {
                    act.apply(&d).await.expect("apply");
                    // Dropped without shutdown: the routes and table stay.
                } else {
                    act.shutdown(false).await.expect("remove");
                }
            })
        })
    };
    // paths: direct, plain forwarding (one static route, no nft), the
    // same with one empty nftables forward chain (what any netfilter rule
    // costs before it matches anything: the floor for pier's table), pier
    // with per-VIP counters (asked for), pier without them (the default).
    const PATHS: [&str; 5] = [
        "direct: one veth client → node (no gateway)",
        "plain forwarding through the gateway (1 route, no nft)",
        "plain forwarding + one empty nftables forward chain",
        "pier, vip_counters = true",
        "pier, vip_counters = false (default)",
    ];
    const EMPTY_CHAIN: usize = 2;
    let plain_route = format!("ip route add {target}/32 via 10.0.3.11");
    let mut samples: Vec<Vec<Vec<Sample>>> = vec![vec![Vec::new(); WORKLOADS.len()]; PATHS.len()];
    let mut perf_rows: Vec<(String, f64)> = Vec::new();
    let perf = std::env::var("DATAPATH_PERF").is_ok_and(|v| v == "1");
    let mut loads = Vec::new();
    let mut accepted = String::new();
    let rounds = env_usize("DATAPATH_IPERF_ROUNDS", 5);
    for round in 0..rounds {
        for (p, _) in PATHS.iter().enumerate() {
            match p {
                1 => lab.sh("gw", &plain_route),
                EMPTY_CHAIN => lab.sh(
                    "gw",
                    &format!(
                        "{plain_route} && nft add table inet floor && nft add chain inet floor forward \
                         '{{ type filter hook forward priority filter; policy accept; }}'"
                    ),
                ),
                3 | 4 => {
                    pier_state(Some(p == 3));
                    assert_eq!(lab.routes("gw", 201).len(), n + 1);
                    String::new()
                }
                _ => String::new(),
            };
            let server = if p == 0 { "198.51.100.1" } else { target };
            for (w, (label, extra)) in WORKLOADS.iter().enumerate() {
                let s = if perf && round == 0 && w != 1 && p != 0 {
                    let (s, report) = with_perf(&format!("{p}-{w}"), seconds, || {
                        iperf(&lab, "c", server, seconds, extra)
                    });
                    if let Some(share) = report.as_deref().and_then(perf_netfilter_share) {
                        perf_rows.push((format!("{}, {label}", PATHS[p]), share));
                    }
                    s
                } else {
                    iperf(&lab, "c", server, seconds, extra)
                };
                samples[p][w].push(s);
                loads.push(loadavg());
            }
            match p {
                1 => {
                    lab.sh("gw", &format!("ip route del {target}/32"));
                }
                EMPTY_CHAIN => {
                    lab.sh(
                        "gw",
                        &format!("ip route del {target}/32 && nft delete table inet floor"),
                    );
                }
                3 => {
                    accepted = lab.sh("gw", "nft list counter inet pier a_0a4dc801");
                    pier_state(None);
                }
                4 => pier_state(None),
                _ => {}
            }
        }
    }
    assert!(
        !accepted.contains("packets 0 "),
        "iperf3 traffic did not go through pier's rules: {accepted}"
    );
    let load = median_f(loads.clone());
    let load_max = loads.iter().copied().fold(0.0, f64::max);
    for (w, (label, _)) in WORKLOADS.iter().enumerate() {
        let udp = label.starts_with("UDP");
        let med = |p: usize, f: fn(&Sample) -> f64| median_f(samples[p][w].iter().map(f).collect());
        let value = |p: usize| {
            if udp {
                med(p, |s| s.pps)
            } else {
                med(p, |s| s.bps)
            }
        };
        let plain = value(1);
        let floor = value(EMPTY_CHAIN);
        for (p, path) in PATHS.iter().enumerate() {
            let v = value(p);
            let vals: Vec<f64> = samples[p][w]
                .iter()
                .map(|s| if udp { s.pps } else { s.bps })
                .collect();
            let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = vals.iter().copied().fold(0.0, f64::max);
            // softirq CPU (% of one CPU) per Gbit/s received.
            let si_per_gbit = median_f(
                samples[p][w]
                    .iter()
                    .map(|s| 100.0 * s.softirq / (s.bps / 1e9))
                    .collect(),
            );
            // softirq CPU per packet received (UDP): µs.
            let si_per_packet = |p: usize| {
                median_f(
                    samples[p][w]
                        .iter()
                        .map(|s| 1e6 * s.softirq / s.pps.max(1.0))
                        .collect(),
                )
            };
            let per_packet = if udp {
                format!(
                    "; softirq {:.2} µs per packet (×{:.3} of plain forwarding's)",
                    si_per_packet(p),
                    si_per_packet(p) / si_per_packet(1)
                )
            } else {
                String::new()
            };
            let (figure, range) = if udp {
                (
                    format!("{:.0} kpps", v / 1e3),
                    format!("{:.0}–{:.0}", lo / 1e3, hi / 1e3),
                )
            } else {
                (
                    format!("{:.2} Gbit/s", v / 1e9),
                    format!("{:.2}–{:.2}", lo / 1e9, hi / 1e9),
                )
            };
            rows.push(row(
                format!("{label}: {path}"),
                figure,
                format!(
                    "×{:.3} of plain forwarding{}; range {range}; softirq {:.1} % CPU per Gbit/s{per_packet}",
                    v / plain,
                    if p > EMPTY_CHAIN {
                        format!(" (×{:.3} of the empty chain)", v / floor)
                    } else {
                        String::new()
                    },
                    si_per_gbit
                ),
            ));
        }
    }
    for (what, share) in perf_rows {
        rows.push(row(
            format!("perf: netfilter self time, {what}"),
            format!("{share:.1} %"),
            "of the samples of iperf3 and ksoftirqd (client, gateway and server together), first round",
        ));
    }
    rows.push(row(
        "load average during the throughput runs (1 min)",
        format!("{load:.1}"),
        format!(
            "median over runs, max {load_max:.1}; {rounds} rounds of {seconds} s, 2 CPUs shared by client, gateway and server namespaces"
        ),
    ));
}

/// 3. Node failure → removal from the kernel route, real pier binary.
fn failover(trials: usize, rows: &mut Vec<Row>) {
    eprintln!("== failure to removal, {trials} trials");
    let mut lab = Lab::new("bfo");
    lab.host("gw", &["10.0.4.1/24"]);
    let nodes = ["10.0.4.11", "10.0.4.12", "10.0.4.13"];
    let mut health: Vec<HttpServer> = Vec::new();
    for (i, a) in nodes.iter().enumerate() {
        let name = format!("n{}", i + 1);
        lab.host(&name, &[&format!("{a}/24")]);
        health.push(lab.http_server(&name, "0.0.0.0:10256", "ok"));
    }
    let cfg = lab.write(
        "pier.toml",
        &format!(
            r#"[gateway]
router_id = "10.0.4.1"
state_dir = "{dir}/state"
api_socket = "{dir}/pier.sock"
metrics_listen = "127.0.0.1:9469"

[[pools]]
name = "public"
addresses = ["10.77.0.0/24"]
mode = "bgp"
next_hop = "self"

[[static_services]]
name = "demo/web"
pool = "public"
ip = "10.77.0.10"
ports = ["80/tcp"]
nodes = ["10.0.4.11", "10.0.4.12", "10.0.4.13"]
"#,
            dir = path_str(&lab.dir)
        ),
    );
    lab.spawn("gw", "pier", &[PIER, "run", "--config", &path_str(&cfg)]);
    let vip: ipnet::IpNet = "10.77.0.10/32".parse().unwrap();
    let all: BTreeSet<IpAddr> = nodes.iter().map(|a| a.parse().unwrap()).collect();
    let (removal, back) = lab.in_host("gw", || {
        runtime().block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().expect("netlink");
            let task = tokio::spawn(conn);
            // Poll pier's route from outside pier, every 2 ms.
            let wait = |want: BTreeSet<IpAddr>, limit: Duration| {
                let handle = handle.clone();
                async move {
                    let t = Instant::now();
                    loop {
                        let table = kernel::dump(&handle).await.expect("dump");
                        if table.get(&vip) == Some(&want) {
                            return t.elapsed();
                        }
                        assert!(
                            t.elapsed() < limit,
                            "route never became {want:?}: {table:?}"
                        );
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            };
            wait(all.clone(), Duration::from_secs(30)).await;
            let (mut removal, mut back) = (vec![], vec![]);
            for trial in 0..trials {
                let i = trial % nodes.len();
                let mut rest = all.clone();
                rest.remove(&nodes[i].parse::<IpAddr>().unwrap());
                // A random moment within the probe interval.
                tokio::time::sleep(Duration::from_millis(137 * (trial as u64 % 7) + 50)).await;
                let t0 = Instant::now();
                health[i].stop();
                wait(rest, Duration::from_secs(10)).await;
                removal.push(t0.elapsed());
                let t1 = Instant::now();
                health[i] = lab.http_server(&format!("n{}", i + 1), "0.0.0.0:10256", "ok");
                wait(all.clone(), Duration::from_secs(10)).await;
                back.push(t1.elapsed());
                eprintln!(
                    "  trial {trial}: node {} removed after {:?}, back after {:?}",
                    i + 1,
                    removal[trial],
                    back[trial]
                );
            }
            task.abort();
            (removal, back)
        })
    });
    lab.stop("pier");
    let pct = |v: &[Duration], q: f64| {
        let mut v = v.to_vec();
        v.sort();
        v[((v.len() - 1) as f64 * q).round() as usize]
    };
    rows.push(row(
        format!("node health endpoint killed → node out of the kernel route (p50 / p99 / max, {trials} trials)"),
        format!(
            "{} / {} / {}",
            ms(pct(&removal, 0.5)),
            ms(pct(&removal, 0.99)),
            ms(pct(&removal, 1.0))
        ),
        "real pier, default [health]: interval 500 ms, fall 3 (fast re-probe at 100 ms once failing)",
    ));
    rows.push(row(
        "health endpoint back → node back in the route (p50 / p99)",
        format!("{} / {}", ms(pct(&back, 0.5)), ms(pct(&back, 0.99))),
        "rise 2",
    ));
}

/// 4. ARP reply latency, pier's responder vs the kernel.
fn arp(requests: usize, rows: &mut Vec<Row>) {
    eprintln!("== ARP reply latency");
    let mut lab = Lab::new("bar");
    lab.bare_host("a");
    lab.bare_host("b");
    lab.link(
        "a",
        "va",
        &[],
        "b",
        "vb",
        &["10.66.50.2/24", "fd66:50::2/64"],
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let a_ns = lab.ns("a");
    let responder = std::thread::spawn(move || {
        netlab::enter(&a_ns);
        runtime().block_on(async move {
            let arp = Arc::new(ArpResponder::spawn(ArpConfig::default()));
            let mut d = desired(0, "10.66.50", vec![]);
            for (vip, hop) in [
                ("10.66.50.100", "10.66.50.11"),
                ("fd66:50::100", "fd66:50::11"),
            ] {
                d.announcements.push(Arc::new(Announcement {
                    mode: AnnounceMode::L2 {
                        interface: "va".into(),
                    },
                    ..(*announcement(vip.parse().unwrap(), &[hop], &[])).clone()
                }));
            }
            arp.update(&d);
            while !arp.counters().get("va").is_some_and(|c| c.serving) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = ready_tx.send(());
            let _ = stop_rx.await;
        })
    });
    ready_rx.recv().expect("responder serving");
    let mac_b = parse_mac(lab.sh("b", "cat /sys/class/net/vb/address").trim());
    let measure = |target: [u8; 4]| {
        lab.in_host("b", || {
            let fd = netlab::raw_arp_socket("vb");
            let req = arp_request(mac_b, [10, 66, 50, 2], target);
            let mut l: Vec<Duration> = (0..requests)
                .filter_map(|_| arp_ask(&fd, &req, target, Duration::from_secs(1)))
                .map(|(_, dt)| dt)
                .collect();
            l.sort();
            l
        })
    };
    let measure6 = |target: &str| {
        let target: std::net::Ipv6Addr = target.parse().unwrap();
        lab.in_host("b", || {
            let fd = netlab::raw_socket("vb", 0x86dd);
            let req = netlab::ndp_solicit(mac_b, "fd66:50::2".parse().unwrap(), target);
            let mut l: Vec<Duration> = (0..requests)
                .filter_map(|_| netlab::ndp_ask(&fd, &req, target, Duration::from_secs(1)))
                .collect();
            l.sort();
            l
        })
    };
    let pier = measure([10, 66, 50, 100]);
    let pier6 = measure6("fd66:50::100");
    lab.sh(
        "a",
        "ip addr add 10.66.50.1/24 dev va && ip addr add fd66:50::1/64 dev va nodad",
    );
    let kernel = measure([10, 66, 50, 1]);
    let kernel6 = measure6("fd66:50::1");
    let _ = stop_tx.send(());
    let _ = responder.join();
    let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
    for (who, l) in [
        ("ARP, pier's responder", pier),
        ("ARP, the kernel (own address)", kernel),
        ("NDP, pier's responder", pier6),
        ("NDP, the kernel (own address)", kernel6),
    ] {
        assert!(!l.is_empty(), "no replies: {who}");
        let p = |q: f64| l[((l.len() - 1) as f64 * q) as usize];
        rows.push(row(
            format!("{who}: reply latency over a veth (p50 / p99)"),
            format!("{} / {}", us(p(0.5)), us(p(0.99))),
            format!("{} of {requests} answered", l.len()),
        ));
    }
}

fn main() {
    // `cargo bench` passes --bench; a filter argument picks sections.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |s: &str| filter.is_empty() || filter.iter().any(|f| s.contains(f.as_str()));
    if !netlab::prerequisites("datapath bench", &["ip", "nft", "iperf3"]) {
        return;
    }
    let n = env_usize("DATAPATH_VIPS", 10_000);
    let trials = env_usize("DATAPATH_TRIALS", 20);
    let seconds = env_usize("DATAPATH_IPERF_SECONDS", 4);
    let mut rows = Vec::new();
    if want("routes") {
        routes(n, &mut rows);
    }
    if want("throughput") {
        throughput(n, seconds, &mut rows);
    }
    if want("failover") {
        failover(trials, &mut rows);
    }
    if want("arp") {
        arp(1000, &mut rows);
    }
    println!("\n| what | figure | note |\n|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} |", r.what, r.value, r.note);
    }
}
