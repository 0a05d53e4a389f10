//! The prober's timing, against real HTTP endpoints on loopback addresses
//! (tests/common/health_endpoint.rs): how often a target is probed, how
//! fast a failing one is found down, and how often a down one is probed.
//! tests/health.rs asserts the behaviour (counts, order); the durations
//! are measured here and printed as a table (figures in
//! docs/benchmarks.md). `cargo bench --bench health`.

#[path = "../tests/common/health_endpoint.rs"]
mod health_endpoint;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use health_endpoint::{Server, UNHEALTHY};
use pier::config::HealthConfig;
use pier::health::Prober;
use pier::model::{HealthView, ProbeTarget};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How long the rate measurements count.
const WINDOW: Duration = Duration::from_secs(3);

struct Row {
    what: String,
    value: String,
    expected: String,
}

async fn next_view(rx: &mut mpsc::UnboundedReceiver<HealthView>) -> HealthView {
    match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
        Ok(Some(v)) => v,
        _ => panic!("no view from the prober within 30 s"),
    }
}

async fn until(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Two targets on one endpoint at interval 100 ms: probes per target in
/// WINDOW, from the first probe of each.
async fn probe_rate(rows: &mut Vec<Row>) {
    let srv = Server::start("127.0.2.1").await;
    let targets = BTreeSet::from([srv.target("/healthz"), srv.target("/")]);
    let cfg = HealthConfig {
        interval_ms: 100,
        timeout_ms: 80,
        ..HealthConfig::default()
    };
    let (_tx, targets_rx) = watch::channel(targets);
    let (vtx, _vrx) = mpsc::unbounded_channel();
    let _prober = Prober::spawn(cfg, targets_rx, vtx);
    until(|| srv.served("/healthz").total() >= 1 && srv.served("/").total() >= 1).await;
    let (h0, r0) = (srv.served("/healthz").total(), srv.served("/").total());
    let start = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let elapsed = start.elapsed();
    let (h, r) = (
        srv.served("/healthz").total() - h0,
        srv.served("/").total() - r0,
    );
    let most = elapsed.as_millis() as u64 / 100 + 1;
    rows.push(Row {
        what: format!("healthy targets, interval 100 ms: probes per target in {elapsed:.2?}"),
        value: format!("/healthz {h}, / {r}"),
        expected: format!("≤ {most} (one per interval)"),
    });
}

/// Ten targets at interval 300 ms, fall 4, failing 71 ms apart: time from
/// the failure to the verdict; then probes of the down targets in WINDOW.
async fn fast_until_down(rows: &mut Vec<Row>) {
    let cfg = HealthConfig {
        interval_ms: 300,
        timeout_ms: 200,
        fall: 4,
        rise: 2,
        ..HealthConfig::default()
    };
    // The prober keeps running: the down targets' probes are counted next.
    let d = detection(cfg.clone(), 10, "127.0.3", Duration::from_millis(71)).await;
    let (times, servers) = (&d.times, &d.servers);
    rows.push(Row {
        what: "interval 300 ms, fall 4: failure → down (fast interval 60 ms), 10 targets".into(),
        value: spread(times),
        expected: "0.18–0.48 s (at the interval: 0.9–1.2 s)".into(),
    });
    let bad0: u64 = servers.iter().map(|s| s.served("/healthz").bad).sum();
    let start = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let elapsed = start.elapsed();
    let bad: u64 = servers
        .iter()
        .map(|s| s.served("/healthz").bad)
        .sum::<u64>()
        - bad0;
    let most = elapsed.as_millis() as u64 / 300 + 1;
    rows.push(Row {
        what: format!("down targets, interval 300 ms: probes per target in {elapsed:.2?}"),
        value: format!("{:.1}", bad as f64 / servers.len() as f64),
        expected: format!("≤ {most} (one per interval, not the fast rate)"),
    });
}

/// What [`detection`] measured, and the prober, still running.
struct Detection {
    /// From each failure to the view saying so, sorted.
    times: Vec<Duration>,
    servers: Arc<Vec<Server>>,
    _running: (
        Prober,
        watch::Sender<BTreeSet<ProbeTarget>>,
        mpsc::UnboundedReceiver<HealthView>,
    ),
}

/// `n` targets on 127.x.y.1..n that start failing `gap` apart: the time
/// from each failure to the view saying it is down, sorted.
async fn detection(cfg: HealthConfig, n: usize, net: &str, gap: Duration) -> Detection {
    let mut servers = Vec::new();
    for i in 0..n {
        servers.push(Server::start(&format!("{net}.{}", i + 1)).await);
    }
    let targets: BTreeSet<ProbeTarget> = servers.iter().map(|s| s.target("/healthz")).collect();
    let (targets_tx, targets_rx) = watch::channel(targets);
    let (vtx, mut rx) = mpsc::unbounded_channel();
    let prober = Prober::spawn(cfg, targets_rx, vtx);
    until(|| servers.iter().all(|s| s.served("/healthz").ok >= 1)).await;
    let servers = Arc::new(servers);
    let failed_at: Arc<Mutex<BTreeMap<ProbeTarget, Instant>>> = Arc::default();
    {
        let (servers, failed_at) = (servers.clone(), failed_at.clone());
        tokio::spawn(async move {
            for s in servers.iter() {
                tokio::time::sleep(gap).await;
                failed_at
                    .lock()
                    .unwrap()
                    .insert(s.target("/healthz"), Instant::now());
                s.set(UNHEALTHY);
            }
        });
    }
    let mut detected: BTreeMap<ProbeTarget, Duration> = BTreeMap::new();
    while detected.len() < n {
        let v = next_view(&mut rx).await;
        let now = Instant::now();
        for t in v.down {
            if let Some(at) = failed_at.lock().unwrap().get(&t) {
                detected.entry(t).or_insert_with(|| now - *at);
            }
        }
    }
    let mut times: Vec<Duration> = detected.into_values().collect();
    times.sort();
    Detection {
        times,
        servers,
        _running: (prober, targets_tx, rx),
    }
}

fn spread(times: &[Duration]) -> String {
    format!(
        "p50 {}, p99 {} (min {})",
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1]),
        ms(times[0])
    )
}

fn main() {
    // `cargo test --benches` runs bench binaries with `--bench` absent:
    // measure only when asked (`cargo bench`).
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rows = rt.block_on(async {
        let mut rows = Vec::new();
        probe_rate(&mut rows).await;
        fast_until_down(&mut rows).await;
        let cfg = HealthConfig::default();
        let d = detection(cfg.clone(), 20, "127.0.4", Duration::from_millis(37)).await;
        rows.push(Row {
            what: format!(
                "defaults (interval {} ms, fall {}): failure → down, 20 targets 37 ms apart",
                cfg.interval_ms, cfg.fall
            ),
            value: spread(&d.times),
            expected: "0.2–0.7 s (src/health/mod.rs)".into(),
        });
        rows
    });
    println!("| measure | value | expected |");
    println!("|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} |", r.what, r.value, r.expected);
    }
}
