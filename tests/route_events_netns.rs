//! The route actuator reacting to the network, and what it finds out about
//! the host at start, against the real kernel in namespaces this test
//! creates: a next hop that becomes reachable when the gateway's interface
//! gets its address is routed at once (not at the repair timer), and the
//! flowtable probe agrees with the kernel and leaves nothing behind.

use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/netlab.rs"]
mod netlab;

#[path = "common/gateway_lab.rs"]
mod gateway_lab;

use gateway_lab::{forwarded_vip, port};

use netlab::Lab;
use pier::config::SysctlMode;
use pier::model::Desired;
use pier::route::{RouteActuator, RouteConfig};

fn desired(vip: &str, hops: &[&str]) -> Desired {
    let hops: Vec<(&str, &str)> = hops.iter().map(|h| (*h, *h)).collect();
    forwarded_vip(1, vip, &hops, vec![port("80/tcp", &[])])
}

fn config() -> RouteConfig {
    RouteConfig {
        lan_interfaces: vec!["eth0".into()],
        sysctl: SysctlMode::Set,
        // Far beyond the test's bound: only a netlink event can repair.
        repair_interval: Duration::from_secs(3600),
        ..RouteConfig::default()
    }
}

#[test]
fn routes_follow_an_address_that_appears_without_waiting_for_the_timer() {
    if !netlab::prerequisites("routes_follow_an_address", &["ip", "nft"]) {
        return;
    }
    let mut lab = Lab::new("ev");
    // The gateway's LAN interface is up but has no address yet: the node
    // is unreachable and the route cannot be installed.
    lab.host("gw", &[]);
    lab.host("n1", &["10.0.2.11/24"]);
    let gw = lab.ns("gw");
    let want = desired("10.77.0.10", &["10.0.2.11"]);
    let routes = netlab::in_ns(&gw, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async {
                let mut act = RouteActuator::start(config()).await.expect("start");
                let r = act.apply(&want).await.expect("apply");
                assert_eq!(r.added, 0, "{r:?}");
                assert_eq!(
                    r.failed.len(),
                    1,
                    "the unreachable next hop is reported: {r:?}"
                );
                assert!(lab.routes("gw", 201).is_empty());
                let (_tx, rx) = tokio::sync::watch::channel(Arc::new(want.clone()));
                let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
                let runner = act.run(rx, async {
                    let _ = stop_rx.await;
                });
                let checker = async {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    lab.sh("gw", "ip addr add 10.0.2.1/24 dev eth0");
                    // A bound for the test only (the timer is an hour).
                    let deadline = Instant::now() + Duration::from_secs(20);
                    let mut routes = lab.routes("gw", 201);
                    while routes.is_empty() && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        routes = lab.routes("gw", 201);
                    }
                    let _ = stop_tx.send(());
                    routes
                };
                let ((), routes) = tokio::join!(runner, checker);
                act.shutdown(false).await.expect("shutdown");
                routes
            })
    });
    assert_eq!(
        routes
            .get("10.77.0.10")
            .map(|g| g.iter().cloned().collect::<Vec<_>>()),
        Some(vec!["10.0.2.11".to_string()]),
        "the route appeared after the address did: {routes:?}"
    );
    assert!(lab.routes("gw", 201).is_empty(), "shutdown removes it");
}

#[test]
fn flowtable_support_is_detected_and_the_probe_leaves_nothing() {
    if !netlab::prerequisites("flowtable_support_is_detected", &["ip", "nft"]) {
        return;
    }
    let mut lab = Lab::new("ft");
    lab.host("gw", &["10.0.2.1/24"]);
    // The kernel's own answer, asked step by step with nft.
    lab.sh("gw", "nft add table inet scratch");
    let (kernel_has_it, why) = lab.try_sh(
        "gw",
        "nft add flowtable inet scratch ft '{ hook ingress priority 0; devices = { lo }; }'",
    );
    lab.sh("gw", "nft delete table inet scratch");
    let gw = lab.ns("gw");
    let status = netlab::in_ns(&gw, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async {
                let act = RouteActuator::start(config()).await.expect("start");
                let s = act.status().lock().expect("status").clone();
                act.shutdown(false).await.expect("shutdown");
                s
            })
    });
    assert_eq!(
        status.flowtable_missing.is_none(),
        kernel_has_it,
        "probe and kernel disagree (nft said: {why}); status: {status:?}"
    );
    if !kernel_has_it {
        assert!(
            status
                .lines()
                .iter()
                .any(|l| l.starts_with("flowtable: not available")),
            "{:?}",
            status.lines()
        );
    }
    let tables = lab.sh("gw", "nft list tables");
    assert!(
        !tables.contains("probe"),
        "the probe left a table: {tables}"
    );
}
