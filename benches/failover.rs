//! Gateway failover with two pier gateways and one router, BIRD and then
//! FRR (`FAILOVER_ROUTERS`, default `bird,frr`), the lab of
//! `tests/failover.rs` (network namespaces, the real `pier` binary of the
//! bench profile). Needs root. For each router and detection setting, over
//! `FAILOVER_TRIALS` (10) trials in one lab: a gateway freezes (pier
//! SIGSTOPped, its frames dropped, links up) under continuous client load
//! on a `nodes` VIP and a `self` VIP, then thaws and is waited back.
//! Prints a markdown table, p50 / p99 (the maximum at 10 trials) of:
//!
//! - *router drops it*: freeze → the router's kernel route for the `self`
//!   VIP no longer has the frozen gateway (polled every ~5 ms);
//! - *`self` new flows lost for*: freeze → start of the last request that
//!   failed (requests back to back, one TCP connection each, connect
//!   timeout 200 ms);
//! - failed requests per trial, `self` and `nodes` VIPs.
//!
//! `cargo bench --bench failover`

#[path = "../tests/common/netlab.rs"]
mod netlab;

#[path = "../tests/failover/lab.rs"]
mod lab;

use std::time::{Duration, Instant};

use lab::{failures, outage, Detection, FailoverLab, Load, Router, NODES_VIP, SELF_VIP};

const PIER: &str = env!("CARGO_BIN_EXE_pier");

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

struct Trials {
    dropped_ms: Vec<f64>,
    lost_ms: Vec<f64>,
    self_failed: Vec<f64>,
    nodes_failed: Vec<f64>,
}

fn run(tag: &str, d: Detection, router: Router, trials: usize) -> Trials {
    let fl = FailoverLab::with_router(tag, PIER, d, router);
    let mut t = Trials {
        dropped_ms: Vec::new(),
        lost_ms: Vec::new(),
        self_failed: Vec::new(),
        nodes_failed: Vec::new(),
    };
    for i in 0..trials {
        let nodes = Load::start(&fl.lab, NODES_VIP);
        let selfv = Load::start(&fl.lab, SELF_VIP);
        std::thread::sleep(Duration::from_millis(500));
        let frozen = fl.freeze();
        let deadline = frozen + Duration::from_secs(60);
        while fl.router_hops(SELF_VIP) != ["10.0.0.3"] {
            assert!(
                Instant::now() < deadline,
                "the router kept the frozen gateway"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let dropped = frozen.elapsed();
        std::thread::sleep(Duration::from_millis(500));
        let thawed = Instant::now();
        let nodes = nodes.stop();
        let selfv = selfv.stop();
        fl.thaw();
        fl.wait_both_gateways();
        let (_, nf, _) = outage(&nodes, frozen, Some(thawed));
        let nodes_failures = failures(&nodes, frozen, Some(thawed));
        let (_, sf, last) = outage(&selfv, frozen, Some(thawed));
        eprintln!(
            "{router:?}, {} trial {i}: router dropped the gateway after {dropped:?}; self: {sf} failed, last started {last:?} after the freeze; nodes: {nf} failed {nodes_failures:?}",
            d.label()
        );
        t.dropped_ms.push(dropped.as_secs_f64() * 1000.0);
        t.lost_ms.push(last.as_secs_f64() * 1000.0);
        t.self_failed.push(sf as f64);
        t.nodes_failed.push(nf as f64);
        // Both sessions settled before the next freeze.
        std::thread::sleep(Duration::from_secs(2));
    }
    t
}

fn main() {
    let routers: Vec<Router> = std::env::var("FAILOVER_ROUTERS")
        .unwrap_or_else(|_| "bird,frr".into())
        .split(',')
        .map(|r| match r.trim() {
            "bird" => Router::Bird,
            "frr" => Router::Frr,
            other => panic!("FAILOVER_ROUTERS: unknown router {other:?} (bird, frr)"),
        })
        .collect();
    if !routers
        .iter()
        .all(|r| lab::prerequisites_for("bench failover", *r))
    {
        return;
    }
    let trials = std::env::var("FAILOVER_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let modes = [
        Detection {
            hold_time: 3,
            bfd: None,
        },
        Detection {
            hold_time: 9,
            bfd: Some((300, 3)),
        },
        Detection {
            hold_time: 9,
            bfd: Some((100, 3)),
        },
    ];
    // FAILOVER_MODES: indices into `modes` (default all), e.g. "0" for the
    // hold timer only.
    let chosen: Vec<usize> = std::env::var("FAILOVER_MODES")
        .map(|v| v.split(',').filter_map(|i| i.trim().parse().ok()).collect())
        .unwrap_or_else(|_| (0..modes.len()).collect());
    let mut rows = Vec::new();
    for router in &routers {
        for (i, d) in modes.iter().enumerate().filter(|(i, _)| chosen.contains(i)) {
            let mut t = run(&format!("fb{i}{router:?}"), *d, *router, trials);
            rows.push(format!(
                "| {router:?} | {} | {:.0} / {:.0} ms | {:.0} / {:.0} ms | {:.0} / {:.0} | {:.0} / {:.0} |",
                d.label(),
            pct(&mut t.dropped_ms, 0.5),
            pct(&mut t.dropped_ms, 0.99),
            pct(&mut t.lost_ms, 0.5),
            pct(&mut t.lost_ms, 0.99),
            pct(&mut t.self_failed, 0.5),
            pct(&mut t.self_failed, 0.99),
            pct(&mut t.nodes_failed, 0.5),
            pct(&mut t.nodes_failed, 0.99),
            ));
        }
    }
    println!("\n{trials} trials per row, p50 / p99\n");
    println!("| router | detection | router drops the frozen gateway | `self` new flows lost for | `self` failed requests | `nodes` failed requests |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
