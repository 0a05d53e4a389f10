//! The gateway data path end to end, on the real kernel with the real
//! `pier` binary: a client, the gateway and three nodes in network
//! namespaces this test creates (removed on drop, also on failure).
//!
//! ```text
//!   c (192.0.2.2) ── up0 ── gw (192.0.2.1 | 10.66.2.1) ── eth0 ── br0 ──┬── n1 10.66.2.11
//!                            pier run                                  ├── n2 10.66.2.12
//!   lc (10.66.2.50, on the LAN: the l2 VIP's client) ──────────────────┼── n3 10.66.2.13
//! ```
//!
//! Each node stands in for kube-proxy: the VIPs are on its `lo` (ARP for
//! them ignored on `eth0`), an HTTP server on :80 answers with the node's
//! name, and `/healthz` is served on 10256 (kube-proxy's port) and 10257
//! (the port one static service names as its `health` override). pier runs
//! on static services:
//!
//! | service   | pool               | VIP          | health        |
//! |-----------|--------------------|--------------|---------------|
//! | demo/web  | bgp, next_hop=self | 10.77.0.10   | default 10256 |
//! | demo/lan  | l2 on eth0         | 10.66.2.241  | 10257         |
//! | demo/none | bgp, next_hop=self | 10.77.0.11   | "none"        |
//!
//! Checked: the kernel multipath routes have the three nodes and all three
//! answer; node2's kube-proxy health endpoint killed → node2 leaves demo/web
//! (but not demo/lan, probed on 10257, nor demo/none) while requests keep
//! succeeding, only from nodes 1 and 3; restored → it comes back after
//! `rise`; node3's link down → node3 leaves the probed VIPs and traffic
//! continues. Failed requests during each transition are counted and
//! printed; after each removal none may fail. Then `pier routes` shows the
//! per-VIP counters and `/metrics` the ARP counters.

#[path = "common/netlab.rs"]
mod netlab;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netlab::{http_get, must, path_str, wait_for, HttpServer, Lab};

const PIER: &str = env!("CARGO_BIN_EXE_pier");
const WEB: &str = "10.77.0.10";
const NONE: &str = "10.77.0.11";
const L2: &str = "10.66.2.241";
const NODES: [(&str, &str); 3] = [
    ("n1", "10.66.2.11"),
    ("n2", "10.66.2.12"),
    ("n3", "10.66.2.13"),
];
/// How long a request may take before it counts as failed. A request sent
/// to a node that is gone never completes (its SYN retransmits at 1 s,
/// 3 s...), so this can be generous: it only has to outlast the 2-core
/// VM's scheduling hiccups (a 500 ms bound failed 1 request of ~360 once
/// in CI, on a node that was serving).
const REQUEST_TIMEOUT: Duration = Duration::from_millis(2000);

struct Node {
    _app: HttpServer,
    kube_proxy: HttpServer,
    _health: HttpServer,
}

fn lab() -> (Lab, Vec<Node>) {
    let mut lab = Lab::new("dpe");
    lab.host("gw", &["10.66.2.1/24"]);
    lab.host("lc", &["10.66.2.50/24"]);
    lab.bare_host("c");
    lab.link(
        "c",
        "up0",
        &["192.0.2.2/24"],
        "gw",
        "up0",
        &["192.0.2.1/24"],
    );
    lab.sh("c", "ip route add 10.77.0.0/24 via 192.0.2.1");
    let mut nodes = Vec::new();
    for (name, addr) in NODES {
        lab.host(name, &[&format!("{addr}/24")]);
        // kube-proxy (IPVS mode) style: the VIPs are local, ARP for them is
        // left to the gateway.
        lab.sh(
            name,
            &format!(
                "ip route add default via 10.66.2.1 && \
                 for a in {WEB} {NONE} {L2}; do ip addr add $a/32 dev lo; done && \
                 sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2"
            ),
        );
        nodes.push(Node {
            _app: lab.http_server(name, "0.0.0.0:80", name),
            kube_proxy: lab.http_server(name, "0.0.0.0:10256", "ok"),
            _health: lab.http_server(name, "0.0.0.0:10257", "ok"),
        });
    }
    (lab, nodes)
}

fn config(lab: &Lab) -> std::path::PathBuf {
    let nodes = NODES
        .iter()
        .map(|(_, a)| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        r#"[gateway]
router_id = "10.66.2.1"
state_dir = "{dir}/state"
api_socket = "{dir}/pier.sock"
metrics_listen = "127.0.0.1:9469"
sysctl = "set"
# `pier routes` must show accepted packets (off by default).
vip_counters = true

[[pools]]
name = "public"
addresses = ["10.77.0.0/24"]
mode = "bgp"
next_hop = "self"

[[pools]]
name = "lan"
addresses = ["10.66.2.240/28"]
mode = "l2"
interface = "eth0"

[health]
interval_ms = 100
timeout_ms = 100
fall = 2
rise = 3

[[static_services]]
name = "demo/web"
pool = "public"
ip = "{WEB}"
ports = ["80/tcp"]
nodes = [{nodes}]

[[static_services]]
name = "demo/lan"
pool = "lan"
ip = "{L2}"
ports = ["80/tcp"]
nodes = [{nodes}]
health = 10257

[[static_services]]
name = "demo/none"
pool = "public"
ip = "{NONE}"
ports = ["80/tcp"]
nodes = [{nodes}]
health = "none"
"#,
        dir = path_str(&lab.dir),
    );
    lab.write("pier.toml", &text)
}

fn hops(names: &[&str]) -> BTreeSet<String> {
    NODES
        .iter()
        .filter(|(n, _)| names.contains(n))
        .map(|(_, a)| a.to_string())
        .collect()
}

/// Wait until pier's route for `vip` in the gateway goes over `want`.
fn wait_route(lab: &Lab, vip: &str, want: &BTreeSet<String>) -> Instant {
    wait_for(
        &format!("route {vip} over {want:?}"),
        Duration::from_secs(15),
        || {
            let routes = lab.routes("gw", 201);
            match routes.get(vip) {
                Some(h) if h == want => Ok(Instant::now()),
                other => Err(format!("{other:?}; pier log:\n{}", lab.log("pier"))),
            }
        },
    )
}

/// `n` requests from host `from` to `vip`:80, each on a new connection:
/// answers per node and failures.
fn requests(lab: &Lab, from: &str, vip: &str, n: usize) -> (BTreeMap<String, usize>, Vec<String>) {
    let addr: SocketAddr = format!("{vip}:80").parse().unwrap();
    lab.in_host(from, || {
        let mut answers = BTreeMap::new();
        let mut failures = Vec::new();
        for _ in 0..n {
            match http_get(addr, "/", REQUEST_TIMEOUT) {
                Ok(body) => *answers.entry(body).or_insert(0) += 1,
                Err(e) => failures.push(e),
            }
        }
        (answers, failures)
    })
}

fn assert_answered_by(lab: &Lab, from: &str, vip: &str, names: &[&str]) {
    let (answers, failures) = requests(lab, from, vip, 60);
    assert!(
        failures.is_empty(),
        "{vip} from {from}: {} of 60 failed: {failures:?}",
        failures.len()
    );
    let who: BTreeSet<&str> = answers.keys().map(|s| s.as_str()).collect();
    assert_eq!(
        who,
        names.iter().copied().collect::<BTreeSet<_>>(),
        "{vip} from {from}: answers {answers:?}"
    );
}

/// When each request started and ended, and its answer.
type RequestLog = Arc<Mutex<Vec<(Instant, Instant, Result<String, String>)>>>;

/// Requests from the client to demo/web, one after another, in the
/// background, while a node fails or comes back.
struct Traffic {
    stop: Arc<AtomicBool>,
    log: RequestLog,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(lab: &Lab) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let log: RequestLog = Arc::default();
        let (s, l) = (stop.clone(), log.clone());
        let ns = lab.ns("c");
        let addr: SocketAddr = format!("{WEB}:80").parse().unwrap();
        let thread = std::thread::spawn(move || {
            netlab::enter(&ns);
            while !s.load(Ordering::Relaxed) {
                let started = Instant::now();
                let r = http_get(addr, "/", REQUEST_TIMEOUT);
                l.lock().unwrap().push((started, Instant::now(), r));
            }
        });
        Traffic {
            stop,
            log,
            thread: Some(thread),
        }
    }

    /// Requests in flight at some time between `from` and `to`, and how
    /// many of them failed.
    fn between(&self, from: Instant, to: Instant) -> (usize, usize) {
        let log = self.log.lock().unwrap();
        let window: Vec<_> = log
            .iter()
            .filter(|(start, end, _)| *start <= to && *end >= from)
            .collect();
        (
            window.len(),
            window.iter().filter(|(_, _, r)| r.is_err()).count(),
        )
    }

    /// Answers per node to requests started after `from`, and the
    /// failures (when each started and ended after `from`, and why).
    fn since(&self, from: Instant) -> (BTreeMap<String, usize>, Vec<String>) {
        let log = self.log.lock().unwrap();
        let mut answers = BTreeMap::new();
        let mut failed = Vec::new();
        for (start, end, r) in log.iter().filter(|(start, _, _)| *start > from) {
            match r {
                Ok(body) => *answers.entry(body.clone()).or_insert(0) += 1,
                Err(e) => failed.push(format!(
                    "started +{:?}, ended +{:?}: {e}",
                    *start - from,
                    *end - from
                )),
            }
        }
        (answers, failed)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Requests started after `from` that have finished.
fn finished_since(traffic: &Traffic, from: Instant) -> usize {
    let (answers, failed) = traffic.since(from);
    answers.values().sum::<usize>() + failed.len()
}

/// Keep the background traffic running for 60 more requests after a
/// removal and check that all of them succeeded and reached exactly
/// `names`.
fn assert_traffic_after(traffic: &Traffic, removed: Instant, names: &[&str], what: &str) {
    wait_for(
        "60 requests after the route changed",
        Duration::from_secs(30),
        || match finished_since(traffic, removed) {
            n if n >= 60 => Ok(()),
            n => Err(format!("{n} requests")),
        },
    );
    let (answers, failed) = traffic.since(removed);
    assert!(
        failed.is_empty(),
        "{what}: requests failed after the route changed: {failed:?}; answers {answers:?}"
    );
    let who: BTreeSet<&str> = answers.keys().map(|s| s.as_str()).collect();
    assert_eq!(
        who,
        names.iter().copied().collect::<BTreeSet<_>>(),
        "{what}: answers after the route changed"
    );
}

#[test]
fn node_failures_leave_the_route_while_traffic_flows() {
    if !netlab::prerequisites("datapath_e2e", &["ip", "nft"]) {
        return;
    }
    let (mut lab, mut nodes) = lab();
    let cfg = config(&lab);
    lab.spawn("gw", "pier", &[PIER, "run", "--config", &path_str(&cfg)]);
    let all = hops(&["n1", "n2", "n3"]);
    for vip in [WEB, NONE, L2] {
        wait_route(&lab, vip, &all);
    }
    assert_eq!(
        lab.sh("gw", "sysctl -n net.ipv4.fib_multipath_hash_policy")
            .trim(),
        "1",
        "pier sets the L4 hash"
    );
    assert_answered_by(&lab, "c", WEB, &["n1", "n2", "n3"]);
    assert_answered_by(&lab, "c", NONE, &["n1", "n2", "n3"]);
    assert_answered_by(&lab, "lc", L2, &["n1", "n2", "n3"]);

    let mut report = Vec::new();
    let start = Instant::now();
    let traffic = Traffic::start(&lab);
    wait_for(
        "the background traffic flowing",
        Duration::from_secs(30),
        || match finished_since(&traffic, start) {
            n if n >= 10 => Ok(()),
            n => Err(format!("{n} requests")),
        },
    );

    // node2's kube-proxy health endpoint dies (its service still works).
    let t0 = Instant::now();
    nodes[1].kube_proxy.stop();
    let removed = wait_route(&lab, WEB, &hops(&["n1", "n3"]));
    let (done, failed) = traffic.between(t0, removed);
    report.push(format!(
        "node2 health killed: removed after {:?}; {failed} of {done} requests failed meanwhile",
        removed - t0
    ));
    assert_traffic_after(&traffic, removed, &["n1", "n3"], "node2 health killed");
    assert_eq!(
        lab.routes("gw", 201)[L2],
        all,
        "demo/lan probes 10257, not 10256"
    );
    assert_eq!(lab.routes("gw", 201)[NONE], all, "demo/none is not probed");
    assert_answered_by(&lab, "lc", L2, &["n1", "n2", "n3"]);

    // It comes back after `rise` good probes.
    let t0 = Instant::now();
    nodes[1].kube_proxy = lab.http_server("n2", "0.0.0.0:10256", "ok");
    let back = wait_route(&lab, WEB, &all);
    let (done, failed) = traffic.between(t0, back);
    report.push(format!(
        "node2 health restored: back after {:?}; {failed} of {done} requests failed meanwhile",
        back - t0
    ));
    assert_traffic_after(&traffic, back, &["n1", "n2", "n3"], "node2 restored");

    // node3's link goes down.
    let t0 = Instant::now();
    must(&["ip", "-n", &lab.ns("n3"), "link", "set", "eth0", "down"]);
    let removed = wait_route(&lab, WEB, &hops(&["n1", "n2"]));
    wait_route(&lab, L2, &hops(&["n1", "n2"]));
    let (done, failed) = traffic.between(t0, removed);
    report.push(format!(
        "node3 link down: removed after {:?}; {failed} of {done} requests failed meanwhile",
        removed - t0
    ));
    assert_traffic_after(&traffic, removed, &["n1", "n2"], "node3 link down");
    assert_answered_by(&lab, "lc", L2, &["n1", "n2"]);
    assert_eq!(
        lab.routes("gw", 201)[NONE],
        all,
        "health = \"none\": node3 stays a next hop"
    );
    drop(traffic);
    for line in &report {
        println!("datapath_e2e: {line}");
    }

    // `pier routes` shows the per-VIP forwarding counters (refreshed every
    // few seconds).
    let socket = path_str(&lab.dir.join("pier.sock"));
    wait_for("pier routes counters", Duration::from_secs(15), || {
        let out = must(&[PIER, "routes", "--json", "--socket", &socket]);
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        let row = v
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["vip"] == format!("{WEB}/32")))
            .ok_or(out.clone())?;
        match row["accepted_packets"].as_u64() {
            Some(n) if n > 0 => Ok(()),
            _ => Err(out),
        }
    });
    // ARP replies and gratuitous ARPs are counted per interface.
    let metrics = lab.in_host("gw", || {
        http_get(
            "127.0.0.1:9469".parse().unwrap(),
            "/metrics",
            Duration::from_secs(2),
        )
    });
    let metrics = metrics.expect("metrics");
    for name in ["pier_arp_replies_sent_total", "pier_garp_sent_total"] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{interface=\"eth0\"}}")))
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"));
        let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n >= 1.0, "{line}");
    }

    // A clean stop withdraws (shutdown = "withdraw" by default).
    lab.stop("pier");
    assert!(
        lab.routes("gw", 201).is_empty(),
        "routes left after stop: {:?}",
        lab.routes("gw", 201)
    );
    let (_, tables) = lab.try_sh("gw", "nft list tables");
    assert!(!tables.contains("pier"), "{tables}");
}

/// `pier run` refuses to start, saying which and why, when the forwarding
/// sysctls are wrong under `sysctl = "check"`, and when nftables cannot be
/// used (here: no `nft` on the PATH).
#[test]
fn start_is_refused_with_the_reason() {
    if !netlab::prerequisites("datapath_e2e", &["ip", "nft", "timeout"]) {
        return;
    }
    let mut lab = Lab::new("dpr");
    lab.host("gw", &["10.66.2.1/24"]);
    let text = std::fs::read_to_string(config(&lab))
        .unwrap()
        .replace("sysctl = \"set\"", "sysctl = \"check\"");
    let cfg = lab.write("check.toml", &text);
    let run = |path: &str| {
        let out = std::process::Command::new("timeout")
            .args(["20", "ip", "netns", "exec", &lab.ns("gw"), "env"])
            .arg(format!("PATH={path}"))
            .args([PIER, "run", "--config", &path_str(&cfg)])
            .output()
            .expect("run pier");
        assert!(!out.status.success(), "pier started: {out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A new namespace forwards nothing and hashes on addresses only.
    let err = run(&std::env::var("PATH").unwrap_or_default());
    for want in [
        "net.ipv4.ip_forward = 0, pier needs 1",
        "net.ipv4.fib_multipath_hash_policy = 0, pier needs 1",
        "net.ipv4.conf.eth0.send_redirects = 1, pier needs 0",
        "one client always hits one node",
    ] {
        assert!(err.contains(want), "{want:?} not in:\n{err}");
    }
    assert_eq!(
        lab.sh("gw", "sysctl -n net.ipv4.ip_forward").trim(),
        "0",
        "check mode changes nothing"
    );
    let err = run("/nonexistent");
    assert!(
        err.contains("nftables is not usable") && err.contains("install the nftables package"),
        "{err}"
    );
}
