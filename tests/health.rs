//! The prober against real HTTP servers on loopback addresses (127.0.0.x),
//! each switchable between healthy (200), unhealthy (503) and hanging (no
//! answer: the probe times out), and counting what it was asked.

use std::collections::BTreeSet;
use std::time::Duration;

use pier::config::HealthConfig;
use pier::health::Prober;
use pier::model::{HealthView, ProbeTarget};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

#[path = "common/health_endpoint.rs"]
mod health_endpoint;
#[path = "common/wait.rs"]
mod wait;
use health_endpoint::{Server, HANGING, HEALTHY, UNHEALTHY};

fn cfg() -> HealthConfig {
    HealthConfig {
        interval_ms: 100,
        timeout_ms: 80,
        fall: 3,
        rise: 2,
        ..HealthConfig::default()
    }
}

/// Receive views until one satisfies `pred` (generous deadline: this is a
/// correctness test, not a speed test).
async fn wait_view(
    rx: &mut mpsc::UnboundedReceiver<HealthView>,
    what: &str,
    pred: impl Fn(&HealthView) -> bool,
) -> HealthView {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(v)) if pred(&v) => return v,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("prober stopped while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    wait::until_within(what, Duration::from_secs(20), || cond().then_some(())).await
}

#[tokio::test]
async fn down_after_fall_failures_up_after_rise_successes() {
    let srv = Server::start("127.0.0.2").await;
    let t = srv.target("/healthz");
    let (_targets_tx, targets_rx) = watch::channel(BTreeSet::from([t.clone()]));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _prober = Prober::spawn(cfg(), targets_rx, tx);

    wait_until("healthy probes", || srv.served("/healthz").ok >= 3).await;
    assert!(rx.try_recv().is_err(), "a healthy target changes no view");

    srv.set(UNHEALTHY);
    let v = wait_view(&mut rx, "target down", |v| v.down.contains(&t)).await;
    assert_eq!(v.down, BTreeSet::from([t.clone()]));
    let s = srv.served("/healthz");
    assert!(s.bad >= 3, "down only after fall = 3 failures: {s:?}");

    srv.set(HEALTHY);
    let ok_before = srv.served("/healthz").ok;
    let v = wait_view(&mut rx, "target up", |v| v.down.is_empty()).await;
    assert!(v.down.is_empty());
    let ok = srv.served("/healthz").ok - ok_before;
    assert!(ok >= 2, "up only after rise = 2 successes: {ok}");
}

#[tokio::test]
async fn hanging_endpoint_times_out_and_goes_down() {
    let srv = Server::start("127.0.0.3").await;
    let t = srv.target("/healthz");
    let (_targets_tx, targets_rx) = watch::channel(BTreeSet::from([t.clone()]));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _prober = Prober::spawn(cfg(), targets_rx, tx);
    srv.set(HANGING);
    wait_view(&mut rx, "hanging target down", |v| v.down.contains(&t)).await;
    let s = srv.served("/healthz");
    assert!(s.hung >= 3, "{s:?}");
}

#[tokio::test]
async fn closed_port_goes_down() {
    // Bind, note the port, close: connecting is refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.4:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let t = ProbeTarget {
        address: "127.0.0.4".parse().unwrap(),
        port,
        path: "/healthz".into(),
    };
    let (_targets_tx, targets_rx) = watch::channel(BTreeSet::from([t.clone()]));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _prober = Prober::spawn(cfg(), targets_rx, tx);
    wait_view(&mut rx, "refused target down", |v| v.down.contains(&t)).await;
}

#[tokio::test]
async fn removed_targets_are_no_longer_probed_and_leave_the_view() {
    let a = Server::start("127.0.0.5").await;
    let b = Server::start("127.0.0.6").await;
    let (ta, tb) = (a.target("/healthz"), b.target("/healthz"));
    let (targets_tx, targets_rx) = watch::channel(BTreeSet::from([ta.clone(), tb.clone()]));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _prober = Prober::spawn(cfg(), targets_rx, tx);

    b.set(UNHEALTHY);
    wait_view(&mut rx, "b down", |v| v.down.contains(&tb)).await;

    targets_tx.send_replace(BTreeSet::from([ta.clone()]));
    let v = wait_view(&mut rx, "b gone from the view", |v| !v.down.contains(&tb)).await;
    assert!(v.down.is_empty());
    // Once a is probed twice more (an interval: a probe of b in flight at
    // the removal has landed), count; then a is probed eight more times.
    let a_now = a.served("/healthz").total();
    wait_until("a probed twice more", || {
        a.served("/healthz").total() >= a_now + 2
    })
    .await;
    let b_then = b.served("/healthz").total();
    let a_then = a.served("/healthz").total();
    wait_until("a probed eight more times", || {
        a.served("/healthz").total() >= a_then + 8
    })
    .await;
    assert_eq!(
        b.served("/healthz").total(),
        b_then,
        "removed target probed"
    );
    assert!(
        a.served("/healthz").total() > a_then,
        "the other target still probed"
    );
}

#[tokio::test]
async fn one_probe_per_target_per_interval() {
    let srv = Server::start("127.0.0.7").await;
    // Two targets on one server (kube-proxy and a healthCheckNodePort path),
    // and the kube-proxy target given twice: a set holds it once.
    let targets: BTreeSet<ProbeTarget> = [
        srv.target("/healthz"),
        srv.target("/"),
        srv.target("/healthz"),
    ]
    .into();
    assert_eq!(targets.len(), 2);
    let (_targets_tx, targets_rx) = watch::channel(targets);
    let (tx, _rx) = mpsc::unbounded_channel();
    let _prober = Prober::spawn(cfg(), targets_rx, tx);

    // Each target at the same rate (one probe per interval: the rate
    // itself is measured by benches/health.rs): counted from the first
    // probe of each, so the phase offsets do not enter the count, until
    // each has been probed ten times more.
    wait_until("first probes", || {
        srv.served("/healthz").total() >= 1 && srv.served("/").total() >= 1
    })
    .await;
    let (h0, r0) = (srv.served("/healthz").total(), srv.served("/").total());
    wait_until("ten more probes of each", || {
        srv.served("/healthz").total() >= h0 + 10 && srv.served("/").total() >= r0 + 10
    })
    .await;
    let (h, r) = (
        srv.served("/healthz").total() - h0,
        srv.served("/").total() - r0,
    );
    assert!(
        h.abs_diff(r) <= 2,
        "/healthz {h}, / {r}: not one probe each per interval"
    );
}

/// A target that fails goes down after exactly `fall` failed probes (sent
/// at the fast interval, see `verdict::next_probe`); once down, and
/// staying down, it is back to one probe per interval, not the fast rate:
/// no more often than a healthy target probed alongside it. (How long the
/// fast probes take is measured by benches/health.rs.)
#[tokio::test]
async fn failing_targets_are_probed_fast_until_down_then_at_the_interval() {
    let srv = Server::start("127.0.0.8").await;
    let reference = Server::start("127.0.0.9").await;
    let t = srv.target("/healthz");
    let cfg = HealthConfig {
        interval_ms: 300,
        timeout_ms: 200,
        fall: 4,
        rise: 2,
        ..HealthConfig::default()
    };
    let (_targets_tx, targets_rx) =
        watch::channel(BTreeSet::from([t.clone(), reference.target("/healthz")]));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _prober = Prober::spawn(cfg, targets_rx, tx);
    wait_until("first probe", || srv.served("/healthz").ok >= 1).await;
    srv.set(UNHEALTHY);
    wait_view(&mut rx, "target down", |v| v.down.contains(&t)).await;
    assert_eq!(srv.served("/healthz").bad, 4, "down at the 4th failure");
    let (bad0, ok0) = (srv.served("/healthz").bad, reference.served("/healthz").ok);
    wait_until("the healthy target probed six more times", || {
        reference.served("/healthz").ok >= ok0 + 6
    })
    .await;
    let n = srv.served("/healthz").bad - bad0;
    let healthy = reference.served("/healthz").ok - ok0;
    assert!(
        n >= 1 && n <= healthy + 2,
        "{n} probes of a down target while a healthy one had {healthy}"
    );
}

#[tokio::test]
async fn stops_when_the_engine_side_closes() {
    let srv = Server::start("127.0.0.8").await;
    let (_targets_tx, targets_rx) = watch::channel(BTreeSet::from([srv.target("/healthz")]));
    let (tx, rx) = mpsc::unbounded_channel();
    let prober = Prober::spawn(cfg(), targets_rx, tx);
    wait_until("a probe", || srv.served("/healthz").total() >= 1).await;
    drop(rx);
    wait_until("prober stopped", || prober.is_finished()).await;
    drop(prober);
    // Another prober, still running, is the clock: once it has probed its
    // target twice (a probe in flight at the stop has landed), count; then
    // five more times.
    let other = Server::start("127.0.0.10").await;
    let (_other_tx, other_rx) = watch::channel(BTreeSet::from([other.target("/healthz")]));
    let (otx, _orx) = mpsc::unbounded_channel();
    let _other = Prober::spawn(cfg(), other_rx, otx);
    wait_until("the other prober's probes", || {
        other.served("/healthz").total() >= 2
    })
    .await;
    let n = srv.served("/healthz").total();
    wait_until("five more", || other.served("/healthz").total() >= 7).await;
    assert_eq!(srv.served("/healthz").total(), n, "probes after stop");
}

#[tokio::test]
async fn ipv6_targets_are_probed() {
    // ::1 is missing where IPv6 is disabled; then there is nothing to test.
    if TcpListener::bind("[::1]:0").await.is_err() {
        eprintln!("SKIP ipv6_targets_are_probed: no ::1");
        return;
    }
    let srv = Server::start("::1").await;
    let t = srv.target("/healthz");
    assert!(t.address.is_ipv6());
    let (_targets_tx, targets_rx) = watch::channel(BTreeSet::from([t.clone()]));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _prober = Prober::spawn(cfg(), targets_rx, tx);
    wait_until("IPv6 probes", || srv.served("/healthz").ok >= 2).await;
    srv.set(UNHEALTHY);
    wait_view(&mut rx, "IPv6 target down", |v| v.down.contains(&t)).await;
}

/// At the default settings, over 20 targets failing at staggered moments:
/// every one goes down, none before `fall` failed probes. (The time from
/// failure to verdict is measured by benches/health.rs.)
#[tokio::test]
async fn every_failing_target_goes_down_after_fall_failures_at_default_settings() {
    let cfg = HealthConfig::default();
    let mut servers = Vec::new();
    for i in 0..20 {
        servers.push(Server::start(&format!("127.0.1.{}", i + 1)).await);
    }
    let targets: BTreeSet<ProbeTarget> = servers.iter().map(|s| s.target("/healthz")).collect();
    let (_targets_tx, targets_rx) = watch::channel(targets.clone());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _prober = Prober::spawn(cfg.clone(), targets_rx, tx);
    wait_until("first probes", || {
        servers.iter().all(|s| s.served("/healthz").ok >= 1)
    })
    .await;
    for s in &servers {
        // 37 ms apart: the failures land at varied points of the interval.
        tokio::time::sleep(Duration::from_millis(37)).await;
        s.set(UNHEALTHY);
    }
    wait_view(&mut rx, "all 20 targets down", |v| v.down == targets).await;
    for s in servers.iter() {
        let served = s.served("/healthz");
        assert!(
            served.bad >= cfg.fall as u64,
            "down before fall failures: {served:?}"
        );
    }
}
