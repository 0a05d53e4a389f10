//! The real `pier` binary (bench profile) against the in-process test API
//! server. Prints a markdown table:
//!
//! - create → status latency, p50/p99 over 1,000 Services created one by
//!   one (from the create's return to the status being readable);
//! - full initial sync of 10,000 Services and 500 Nodes with their
//!   EndpointSlices already present (from process start to every status
//!   written, and to every IPAllocated Event), with the phases read from
//!   pier's log, against the test API server with its cost model on
//!   (`KUBE_SYNC_COST_US` per write and per read through etcd, on one
//!   serial pipe; 0 turns it off), and in the same run the floor: a bare
//!   writer doing one merge PATCH of the status per Service, 64 at a time
//!   (pier's concurrency), once pier has stopped; pier's time as a ratio
//!   of it; and the reads pier made, by kind (quorum or cache);
//! - pier's resident memory at that point (VmRSS, VmHWM);
//! - idle cost: pier's CPU time and memory while nothing changes, after
//!   syncing 1,000 Services (CPU from `/proc/PID/stat` over 30 s).
//!
//! `cargo bench --bench kube_sync [-- latency|sync|idle]` (env `KUBE_SYNC_SERVICES`,
//! `KUBE_SYNC_NODES`, `KUBE_SYNC_LATENCY_N`, `KUBE_SYNC_IDLE_SERVICES`,
//! `KUBE_SYNC_IDLE_S` and `KUBE_SYNC_COST_US` change the sizes;
//! `KUBE_SYNC_WRAPPER` runs pier under a profiler).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Patch, PatchParams};
use pier_testapi::{CostModel, ReadKind, ServerOptions, TestApiServer};
use serde_json::{json, Value};

struct Pier {
    child: Child,
    log: PathBuf,
}

impl Drop for Pier {
    fn drop(&mut self) {
        // SIGTERM first, so a profiler wrapping pier can write its data;
        // to the whole process group, so pier under a wrapper stops too.
        let group = -(self.child.id() as i32);
        // SAFETY: kill(2) on our own child's process group.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; whatever is left of the group.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn start_pier(dir: &Path, kc: &Path, pool: &str) -> Pier {
    let cfg = dir.join("pier.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[gateway]
router_id = "10.66.0.2"
state_dir = "{dir}/state"
api_socket = "{dir}/pier.sock"
metrics_listen = "127.0.0.1:0"

[kubernetes]
kubeconfig = "{kc}"
load_balancer_class = "pier.io/gateway"
claim_unclassed = true
lease_namespace = "pier-system"
lease_duration_s = 15
lease_renew_s = 5

[[pools]]
name = "public"
addresses = ["{pool}"]
"#,
            dir = dir.display(),
            kc = kc.display(),
        ),
    )
    .expect("write config");
    let log = dir.join("pier.log");
    // `KUBE_SYNC_WRAPPER="heaptrack -o /tmp/pier"` runs pier under a profiler.
    let mut cmd = match std::env::var("KUBE_SYNC_WRAPPER") {
        Ok(w) if !w.trim().is_empty() => {
            let mut parts = w.split_whitespace();
            let mut c = Command::new(parts.next().unwrap_or("env"));
            c.args(parts).arg(env!("CARGO_BIN_EXE_pier"));
            c
        }
        _ => Command::new(env!("CARGO_BIN_EXE_pier")),
    };
    use std::os::unix::process::CommandExt;
    let child = cmd
        .process_group(0)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("PIER_LOG", "pier=info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start pier");
    Pier { child, log }
}

async fn server(dir: &Path) -> (Arc<TestApiServer>, PathBuf) {
    let api = TestApiServer::start_with(ServerOptions::default())
        .await
        .expect("test API server");
    api.create(json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"pier-system"}}))
        .expect("namespace");
    api.create(json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"shop"}}))
        .expect("namespace");
    let kc = dir.join("kubeconfig");
    api.kubeconfig(&kc).expect("kubeconfig");
    (Arc::new(api), kc)
}

fn lb(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    })
}

fn node(n: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": format!("node{n:04}"), "labels": {"kubernetes.io/hostname": format!("node{n:04}")}},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "addresses": [{"type": "InternalIP", "address": format!("127.66.{}.{}", n / 200, 10 + n % 200)}]
        }
    })
}

fn slice(name: &str, i: usize, nodes: usize) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{name}-abcde"), "namespace": "shop",
            "labels": {"kubernetes.io/service-name": name}
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": (0..3).map(|k| json!({
            "addresses": [format!("10.{}.{}.{}", 100 + (i * 3 + k) / 62500, (i * 3 + k) / 250 % 250, (i * 3 + k) % 250 + 1)],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "nodeName": format!("node{:04}", (i * 7 + k) % nodes)
        })).collect::<Vec<_>>()
    })
}

fn has_status(api: &TestApiServer, name: &str) -> bool {
    api.get("v1", "Service", Some("shop"), name)
        .and_then(|s| {
            s["status"]["loadBalancer"]["ingress"]
                .as_array()
                .map(|a| !a.is_empty())
        })
        .unwrap_or(false)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Seconds since midnight of an RFC 3339 timestamp at the start of a log line.
fn log_time(line: &str) -> Option<f64> {
    let t = line.split_whitespace().next()?;
    let time = t.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn phase(log: &str, pat: &str, last: bool) -> Option<f64> {
    let mut it = log.lines().filter(|l| l.contains(pat));
    let line = if last { it.next_back() } else { it.next() };
    line.and_then(log_time)
}

fn rss(pid: u32) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// (a) create → status, one Service at a time.
async fn latency(n: usize) -> Vec<Duration> {
    let dir = tempfile::tempdir().expect("tempdir");
    let (api, kc) = server(dir.path()).await;
    for k in 0..50 {
        api.create(node(k)).expect("node");
    }
    let pier = start_pier(dir.path(), &kc, "10.80.0.0/16");
    // Warm up: pier leads and has synced once a first Service is written.
    api.create(lb("warmup")).expect("create");
    let t = Instant::now();
    while !has_status(&api, "warmup") {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "pier never wrote status"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let api2 = api.clone();
    let samples = tokio::task::spawn_blocking(move || {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("lat{i:04}");
            api2.create(lb(&name)).expect("create");
            let t0 = Instant::now();
            while !has_status(&api2, &name) {
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "no status for {name}"
                );
                std::thread::sleep(Duration::from_micros(100));
            }
            out.push(t0.elapsed());
        }
        out
    })
    .await
    .expect("latency loop");
    drop(pier);
    samples
}

struct Sync {
    total: Duration,
    /// Start → every IPAllocated Event written.
    events: Duration,
    /// IPAllocated Events written before the last status.
    events_before_last_status: usize,
    /// The bare writer's time for the same number of status PATCHes.
    bare: Duration,
    cost: Duration,
    /// pier's reads during the sync: (quorum, exact, any, not older than).
    reads: [usize; 4],
    /// pier's reads of single Services through etcd.
    quorum_per_service: usize,
    listed: Option<f64>,
    first_alloc: Option<f64>,
    last_alloc: Option<f64>,
    first_write: Option<f64>,
    last_write: Option<f64>,
    rss: String,
    hwm: String,
    /// pier's user + system CPU time, and the bench process's (the API server).
    cpu_pier: f64,
    cpu_server: f64,
}

/// The floor: one merge PATCH of `status.loadBalancer.ingress` per Service,
/// `in_flight` at a time, over keep-alive connections (kube's client, as pier).
async fn bare_writer(api: &TestApiServer, services: usize, in_flight: usize) -> Duration {
    let client =
        kube::Client::try_from(kube::Config::new(api.url().parse().expect("url"))).expect("client");
    let svcs: kube::Api<Service> = kube::Api::namespaced(client, "shop");
    let t = Instant::now();
    let failed = futures::stream::iter(0..services)
        .map(|i| {
            let svcs = svcs.clone();
            async move {
                let ip = format!("10.90.{}.{}", i / 250, i % 250 + 1);
                let patch =
                    json!({"status": {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}}});
                svcs.patch_status(
                    &format!("s{i:05}"),
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await
                .is_err()
            }
        })
        .buffer_unordered(in_flight)
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await;
    assert_eq!(failed, 0, "the bare writer's PATCHes failed");
    t.elapsed()
}

/// (b) + (c): everything present, then pier starts.
async fn full_sync(services: usize, nodes: usize, cost: Duration) -> Sync {
    let dir = tempfile::tempdir().expect("tempdir");
    let (api, kc) = server(dir.path()).await;
    for k in 0..nodes {
        api.create(node(k)).expect("node");
    }
    for i in 0..services {
        let name = format!("s{i:05}");
        api.create(lb(&name)).expect("service");
        api.create(slice(&name, i, nodes)).expect("slice");
    }
    api.clear_requests();
    api.set_costs(CostModel {
        quorum_read: cost,
        write: cost,
    });
    let cpu_before = cpu_seconds("/proc/self/stat");
    let t0 = Instant::now();
    let pier = start_pier(dir.path(), &kc, "10.80.0.0/16");
    let written = |api: &TestApiServer| {
        api.count_requests(|r| {
            r.method == "PATCH" && r.status == 200 && r.path.ends_with("/status")
        })
    };
    loop {
        if written(&api) >= services {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "full sync did not finish: {} of {services}",
            written(&api)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let total = t0.elapsed();
    let event_posts = |r: &pier_testapi::RequestRecord| {
        r.method == "POST" && r.path.ends_with("/events") && r.status == 201
    };
    let events_before_last_status = api.count_requests(event_posts);
    // Check the real effect once: every Service has its status.
    let missing = api
        .list("v1", "Service", Some("shop"))
        .iter()
        .filter(|s| {
            s["status"]["loadBalancer"]["ingress"]
                .as_array()
                .is_none_or(|a| a.is_empty())
        })
        .count();
    assert_eq!(missing, 0, "Services without status after the sync");
    // Memory once the sync has settled: every IPAllocated Event written
    // (they follow the status writes, at the outbox's rate), then a moment more.
    while api.count_requests(event_posts) < services {
        assert!(
            t0.elapsed() < Duration::from_secs(900),
            "Events did not follow: {} of {services}",
            api.count_requests(event_posts)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = t0.elapsed();
    let log_reads = api.requests();
    let kind = |k: ReadKind| log_reads.iter().filter(|r| r.read == Some(k)).count();
    let reads = [
        kind(ReadKind::Quorum),
        kind(ReadKind::Exact),
        kind(ReadKind::Any),
        kind(ReadKind::NotOlderThan),
    ];
    let quorum_per_service = log_reads
        .iter()
        .filter(|r| {
            r.path.starts_with("/api/v1/namespaces/shop/services/")
                && r.read.is_some_and(ReadKind::reaches_etcd)
        })
        .count();
    drop(log_reads);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, hwm) = rss(pier.child.id());
    let cpu_pier = cpu_seconds(&format!("/proc/{}/stat", pier.child.id()));
    let cpu_server = cpu_seconds("/proc/self/stat") - cpu_before;
    let log = std::fs::read_to_string(&pier.log).unwrap_or_default();
    let start = phase(&log, "pier started", false);
    let rel = |t: Option<f64>| Some(t? - start?);
    // The floor, same server, same objects, same cost model: pier stopped
    // first, so the two do not share the machine.
    drop(pier);
    let bare = bare_writer(&api, services, 64).await;
    Sync {
        total,
        events,
        events_before_last_status,
        bare,
        cost,
        reads,
        quorum_per_service,
        listed: rel(phase(&log, "initial list of Services", false)),
        first_alloc: rel(phase(&log, "engine: allocated", false)),
        last_alloc: rel(phase(&log, "engine: allocated", true)),
        first_write: rel(phase(&log, "status written", false)),
        last_write: rel(phase(&log, "status written", true)),
        rss,
        hwm,
        cpu_pier,
        cpu_server,
    }
}

struct Idle {
    services: usize,
    secs: u64,
    cpu_pier: f64,
    cpu_server: f64,
    rss_before: String,
    rss_after: String,
}

/// (d) idle cost: `services` Services synced, then pier left alone for
/// `secs` seconds (it renews its lease, the watches get bookmarks).
async fn idle(services: usize, nodes: usize, secs: u64) -> Idle {
    let dir = tempfile::tempdir().expect("tempdir");
    let (api, kc) = server(dir.path()).await;
    for k in 0..nodes {
        api.create(node(k)).expect("node");
    }
    for i in 0..services {
        let name = format!("s{i:05}");
        api.create(lb(&name)).expect("service");
        api.create(slice(&name, i, nodes)).expect("slice");
    }
    api.clear_requests();
    let pier = start_pier(dir.path(), &kc, "10.80.0.0/16");
    let t0 = Instant::now();
    while api
        .count_requests(|r| r.method == "PATCH" && r.status == 200 && r.path.ends_with("/status"))
        < services
    {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "sync did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the Events and the first lease renewals pass.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stat = format!("/proc/{}/stat", pier.child.id());
    let (rss_before, _) = rss(pier.child.id());
    let (p0, s0) = (cpu_seconds(&stat), cpu_seconds("/proc/self/stat"));
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (p1, s1) = (cpu_seconds(&stat), cpu_seconds("/proc/self/stat"));
    let (rss_after, _) = rss(pier.child.id());
    drop(pier);
    Idle {
        services,
        secs,
        cpu_pier: p1 - p0,
        cpu_server: s1 - s0,
        rss_before,
        rss_after,
    }
}

/// utime + stime of a process, in seconds (clock ticks of 1/100 s).
fn cpu_seconds(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after ")".
    (tick(11) + tick(12)) / 100.0
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

fn main() {
    // `cargo bench` passes `--bench`; a section name runs that section alone.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let run = |section: &str| only.is_empty() || only.iter().any(|a| a == section);
    let n_lat = env_usize("KUBE_SYNC_LATENCY_N", 1_000);
    let n_svc = env_usize("KUBE_SYNC_SERVICES", 10_000);
    let n_nodes = env_usize("KUBE_SYNC_NODES", 500);
    let n_idle = env_usize("KUBE_SYNC_IDLE_SERVICES", 1_000);
    let idle_secs = env_usize("KUBE_SYNC_IDLE_S", 30) as u64;
    let cost = Duration::from_micros(env_usize("KUBE_SYNC_COST_US", 500) as u64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let secs = |t: Option<f64>| t.map_or("?".into(), |t| format!("{t:.2} s"));

    println!("machine: {}", machine());
    println!();
    println!("| measure | value | target |");
    println!("|---|---|---|");
    if run("latency") {
        let mut lat = rt.block_on(latency(n_lat));
        lat.sort();
        println!(
            "| create → status, p50 ({n_lat} Services one by one) | {} | |",
            ms(percentile(&lat, 0.5))
        );
        println!(
            "| create → status, p99 | {} | < 100 ms |",
            ms(percentile(&lat, 0.99))
        );
        println!("| create → status, max | {} | |", ms(lat[lat.len() - 1]));
    }
    if run("sync") {
        let sync = rt.block_on(full_sync(n_svc, n_nodes, cost));
        println!(
            "| cost model: per write and per read through etcd, one serial pipe | {} µs | |",
            sync.cost.as_micros()
        );
        println!(
            "| bare writer: {n_svc} merge PATCHes of the status, 64 at a time (the floor) | {:.2} s | |",
            sync.bare.as_secs_f64()
        );
        println!(
            "| full sync, {n_svc} Services + {n_nodes} Nodes + slices (start → last status) | {:.2} s | |",
            sync.total.as_secs_f64()
        );
        println!(
            "| … pier ÷ bare writer | ×{:.2} | ≤ ×1.2 |",
            sync.total.as_secs_f64() / sync.bare.as_secs_f64()
        );
        println!(
            "| … start → last IPAllocated Event | {:.2} s | |",
            sync.events.as_secs_f64()
        );
        println!(
            "| … IPAllocated Events written before the last status | {} | |",
            sync.events_before_last_status
        );
        let [quorum, exact, any, newer] = sync.reads;
        println!(
            "| … pier's reads: quorum / exact / cache (rv=0) / cache (not older than) | {quorum} / {exact} / {any} / {newer} | |"
        );
        println!(
            "| … pier's reads of single Services through etcd | {} | 0 |",
            sync.quorum_per_service
        );
        println!(
            "| … initial lists complete (from pier's log) | {} | |",
            secs(sync.listed)
        );
        println!(
            "| … first / last allocation by the engine | {} / {} | |",
            secs(sync.first_alloc),
            secs(sync.last_alloc)
        );
        println!("| … first status written | {} | |", secs(sync.first_write));
        println!("| … last status written | {} | |", secs(sync.last_write));
        println!(
            "| … CPU until the Events are written: pier / test API server (same 2 cores) | {:.2} s / {:.2} s | |",
            sync.cpu_pier, sync.cpu_server
        );
        println!(
            "| pier RSS at {n_svc} Services with slices (VmRSS / VmHWM) | {} / {} | < 100 MiB |",
            sync.rss, sync.hwm
        );
    }
    if run("idle") {
        let idle = rt.block_on(idle(n_idle, 50, idle_secs));
        println!(
            "| idle, {} Services + 50 Nodes synced: pier CPU over {} s (share of one core) | {:.2} s ({:.2} %) | |",
            idle.services,
            idle.secs,
            idle.cpu_pier,
            idle.cpu_pier / idle.secs as f64 * 100.0
        );
        println!(
            "| … test API server CPU over the same time | {:.2} s | |",
            idle.cpu_server
        );
        println!(
            "| … pier VmRSS at the start / end of the idle time | {} / {} | |",
            idle.rss_before, idle.rss_after
        );
    }
}
