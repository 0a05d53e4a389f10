//! End to end through the lab of `tests/e2e.rs` (network namespaces, the
//! real `pier` binary of the bench profile, BIRD, three kube-proxy
//! stand-ins, the test API server). Needs root. Prints a markdown table:
//!
//! - Service create → first successful client request (bgp, next hops =
//!   nodes over ADD-PATH): from the API server's create returning to the
//!   client's first HTTP 200 through the router, p50/p99 over
//!   `E2E_CREATE_TRIALS` (30) Services created one at a time (each deleted,
//!   and its route gone, before the next);
//! - L2 gateway failover, p50/p99 over `E2E_FAILOVER_TRIALS` (10) trials:
//!   from the leader's death (SIGKILL and its link down) or its stop
//!   (SIGTERM: the lease is released; then its link down) to the client's
//!   first HTTP 200
//!   through the other gateway, at the default lease settings (15 s, renew
//!   5 s) and at faster ones (2 s, renew 1 s).
//!
//! The client polls from inside its namespace every 10 ms with a new TCP
//! connection (200 ms connect timeout), so figures carry up to ~10 ms of
//! polling granularity.
//!
//! `cargo bench --bench e2e`

#[path = "../tests/common/netlab.rs"]
mod netlab;

#[path = "../tests/e2e/lab.rs"]
mod lab;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use lab::{E2eLab, Gateway};
use netlab::wait_for;
use serde_json::json;

const PIER: &str = env!("CARGO_BIN_EXE_pier");

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One HTTP GET to `vip:80` on a new connection; whether it got a 200.
fn served(vip: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&vip, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && buf[..12].ends_with(b"200"))
}

/// From inside the client's namespace: poll `vip` until served; the time
/// from `since` (None after `limit`).
fn first_served(e: &E2eLab, vip: &str, since: Instant, limit: Duration) -> Option<Duration> {
    let addr: SocketAddr = format!("{vip}:80").parse().expect("vip");
    netlab::in_ns(&e.lab.ns("c"), || {
        while since.elapsed() < limit {
            if served(addr) {
                return Some(since.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Row {
    what: String,
    samples: Vec<Duration>,
    failed: usize,
}

fn create_to_served(trials: usize) -> Row {
    let mut e = E2eLab::new("bc", PIER, true, &["gw"]);
    let cfg = e.gateway_config(&Gateway::default());
    let pier = e.start_pier("gw", &cfg);
    // Warm up: the session is up and a first Service served.
    e.create_service("warm", false, json!({}));
    let vip = e.wait_status_ip("warm", &pier);
    first_served(&e, &vip, Instant::now(), Duration::from_secs(60)).expect("warm-up served");
    let mut row = Row {
        what: "Service create → first served client request (bgp, ADD-PATH, 3 nodes)".into(),
        samples: Vec::new(),
        failed: 0,
    };
    for i in 0..trials {
        let name = format!("svc{i}");
        let t = Instant::now();
        e.create_service(&name, false, json!({}));
        // The IP is known once the status is written; poll it tightly.
        let ip = loop {
            if let Some(ip) = e.status_ips(&name).first() {
                break ip.clone();
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "no status for {name}"
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        match first_served(&e, &ip, t, Duration::from_secs(30)) {
            Some(d) => row.samples.push(d),
            None => row.failed += 1,
        }
        e.api
            .delete("v1", "Service", Some("shop"), &name)
            .expect("delete");
        wait_for("withdrawn", Duration::from_secs(30), || {
            if e.router_hops(&ip).is_empty() {
                Ok(())
            } else {
                Err(String::new())
            }
        });
    }
    row
}

/// `trials` failovers between two l2 gateways, alternating the leader.
fn failover(trials: usize, lease: (u32, u32), kill: bool) -> Row {
    let mut e = E2eLab::new(if kill { "bk" } else { "bs" }, PIER, false, &["gw", "gw2"]);
    let hosts = [("gw", "10.0.0.2"), ("gw2", "10.0.0.3")];
    let cfgs: Vec<_> = hosts
        .iter()
        .map(|(host, address)| {
            e.gateway_config(&Gateway {
                host,
                address,
                mode: "l2",
                lease,
                ..Gateway::default()
            })
        })
        .collect();
    let mut names = [e.start_pier("gw", &cfgs[0]), String::new()];
    e.create_service("lan", false, json!({}));
    let vip = e.wait_status_ip("lan", &names[0]);
    first_served(&e, &vip, Instant::now(), Duration::from_secs(60)).expect("served");
    names[1] = e.start_pier("gw2", &cfgs[1]);
    let ready = |e: &E2eLab, host: &str| {
        wait_for("standby ready", Duration::from_secs(60), || {
            match e.http_get(host, "/readyz") {
                (200, _) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
    };
    ready(&e, "gw2");
    let mut leader = 0;
    let mut row = Row {
        what: format!(
            "l2 failover, leader {} (lease {} s, renew {} s{})",
            if kill {
                "killed (SIGKILL, link down)"
            } else {
                "stopped (SIGTERM)"
            },
            lease.0,
            lease.1,
            if lease == (15, 5) { ", default" } else { "" }
        ),
        samples: Vec::new(),
        failed: 0,
    };
    for _ in 0..trials {
        let (host, _) = hosts[leader];
        let t = Instant::now();
        if kill {
            e.lab.signal(&names[leader], libc::SIGKILL);
        } else {
            // A clean stop releases the lease (and keeps the kernel's
            // forwarding state); the box then leaves the LAN.
            e.lab.stop(&names[leader]);
        }
        e.lab.sh(host, "ip link set eth0 down");
        match first_served(&e, &vip, t, Duration::from_secs(60)) {
            Some(d) => row.samples.push(d),
            None => row.failed += 1,
        }
        // The old leader comes back as the standby.
        e.lab.stop(&names[leader]);
        e.lab.sh(host, "ip link set eth0 up");
        names[leader] = e.start_pier(host, &cfgs[leader]);
        ready(&e, host);
        leader = 1 - leader;
    }
    row
}

fn main() {
    if !lab::prerequisites("bench_e2e") {
        return;
    }
    let creates = env_usize("E2E_CREATE_TRIALS", 30);
    let failovers = env_usize("E2E_FAILOVER_TRIALS", 10);
    let rows = vec![
        create_to_served(creates),
        failover(failovers, (15, 5), true),
        failover(failovers, (15, 5), false),
        failover(failovers, (2, 1), true),
    ];
    println!("| measurement | trials | p50 | p99 | max | failed |");
    println!("|---|---|---|---|---|---|");
    for mut r in rows {
        r.samples.sort();
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.what,
            r.samples.len() + r.failed,
            ms(percentile(&r.samples, 0.5)),
            ms(percentile(&r.samples, 0.99)),
            ms(r.samples.last().copied().unwrap_or_default()),
            r.failed
        );
    }
}
