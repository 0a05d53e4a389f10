//! Host firewalls that drop forwarded traffic, against the real kernel in
//! namespaces this test creates: iptables-nft `FORWARD DROP`,
//! iptables-legacy `FORWARD DROP`, a Docker-style ruleset (`DOCKER-USER` +
//! `FORWARD DROP`) and an `inet filter` chain with `policy drop`. With
//! `host_firewall = "open"` pier serves its VIP where it may insert its
//! accepts (iptables, either backend) and reports the rest; with
//! `"check"` it changes nothing and reports. pier's jump comes back after
//! the chain is flushed; nothing of pier's is left after a stop.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/netlab.rs"]
mod netlab;

#[path = "common/gateway_lab.rs"]
mod gateway_lab;

use gateway_lab::{client_gateway_nodes, forwarded_vip, port};

use netlab::{line_request, line_server, Lab};
use pier::config::{Forwarding, HostFirewall, SysctlMode};
use pier::model::Desired;
use pier::route::{DatapathStatus, RouteActuator, RouteConfig};

const VIP: &str = "10.77.0.10";

fn desired() -> Desired {
    forwarded_vip(1, VIP, &[("n1", "10.0.2.11")], vec![port("80/tcp", &[])])
}

/// client (10.0.1.2) — gw (10.0.1.1 | 10.0.2.1) — n1 (10.0.2.11, VIP on lo)
fn lab(tag: &str) -> Lab {
    let lab = client_gateway_nodes(tag, VIP, &[("n1", "10.0.2.11")]);
    line_server(&lab, "n1", SocketAddr::new(VIP.parse().unwrap(), 80), "n1");
    lab
}

fn served(lab: &Lab) -> bool {
    let vip = SocketAddr::new(VIP.parse().unwrap(), 80);
    netlab::in_ns(&lab.ns("cl"), || {
        TcpStream::connect_timeout(&vip, Duration::from_secs(1))
            .map_err(|e| e.to_string())
            .and_then(|mut c| line_request(&mut c, Duration::from_secs(1)))
            .is_ok()
    })
}

fn config(mode: HostFirewall, repair: Duration) -> RouteConfig {
    RouteConfig {
        lan_interfaces: vec!["eth0".into(), "g0".into()],
        sysctl: SysctlMode::Set,
        repair_interval: repair,
        forwarding: Forwarding {
            host_firewall: mode,
            ..Forwarding::default()
        },
        ..RouteConfig::default()
    }
}

/// Start pier in the gateway with `mode`, apply, run `during` (with the
/// status), stop with `shutdown = "withdraw"`.
fn with_pier(lab: &Lab, mode: HostFirewall, during: impl FnOnce(&DatapathStatus) + Send) {
    netlab::in_ns(&lab.ns("gw"), || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async {
                let mut act = RouteActuator::start(config(mode, Duration::from_secs(3600)))
                    .await
                    .expect("start");
                act.apply(&desired()).await.expect("apply");
                let status = act.status().lock().expect("status").clone();
                during(&status);
                act.shutdown(false).await.expect("shutdown");
            })
    });
}

fn ipt(lab: &Lab, program: &str, args: &str) -> String {
    lab.sh("gw", &format!("{program} {args}"))
}

fn prerequisites(test: &str, legacy: bool) -> bool {
    let mut bins = vec!["ip", "nft", "iptables-nft"];
    if legacy {
        bins.push("iptables-legacy");
    }
    netlab::prerequisites(test, &bins)
}

#[test]
fn iptables_nft_forward_drop_is_opened_kept_open_and_cleaned_up() {
    if !prerequisites("iptables_nft_forward_drop", false) {
        return;
    }
    let lab = lab("fn");
    ipt(&lab, "iptables-nft", "-P FORWARD DROP");
    assert!(
        !served(&lab),
        "FORWARD DROP blackholes the VIP without pier"
    );
    // Open, and re-inserted after a flush within one repair period.
    netlab::in_ns(&lab.ns("gw"), || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async {
                let mut act =
                    RouteActuator::start(config(HostFirewall::Open, Duration::from_secs(1)))
                        .await
                        .expect("start");
                act.apply(&desired()).await.expect("apply");
                let status = act.status().lock().expect("status").clone();
                assert!(status.blocked().is_empty(), "{:?}", status.lines());
                assert!(
                    status.lines().iter().any(
                        |l| l.contains("ip filter chain FORWARD") && l.contains("PIER-FORWARD")
                    ),
                    "{:?}",
                    status.lines()
                );
                assert!(served(&lab), "VIP served through iptables FORWARD DROP");
                let (_tx, rx) = tokio::sync::watch::channel(Arc::new(desired()));
                let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
                let runner = act.run(rx, async {
                    let _ = stop_rx.await;
                });
                let checker = async {
                    ipt(&lab, "iptables-nft", "-F FORWARD");
                    assert!(!ipt(&lab, "iptables-nft", "-S FORWARD").contains("PIER-FORWARD"));
                    let deadline = Instant::now() + Duration::from_secs(20);
                    let mut back = false;
                    while !back && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        back = ipt(&lab, "iptables-nft", "-S FORWARD")
                            .contains("-A FORWARD -j PIER-FORWARD");
                    }
                    let _ = stop_tx.send(());
                    back
                };
                let ((), back) = tokio::join!(runner, checker);
                assert!(back, "pier's jump re-inserted after a flush");
                assert!(served(&lab));
                act.shutdown(false).await.expect("shutdown");
            })
    });
    let left = ipt(&lab, "iptables-nft", "-S");
    assert!(
        !left.contains("PIER-FORWARD"),
        "nothing of pier's left: {left}"
    );
    assert!(
        left.contains("-P FORWARD DROP"),
        "the operator's policy stays: {left}"
    );
}

#[test]
fn iptables_legacy_forward_drop_is_opened_and_cleaned_up() {
    if !prerequisites("iptables_legacy_forward_drop", true) {
        return;
    }
    let lab = lab("fl");
    ipt(&lab, "iptables-legacy", "-P FORWARD DROP");
    assert!(!served(&lab));
    with_pier(&lab, HostFirewall::Open, |s| {
        assert!(s.blocked().is_empty(), "{:?}", s.lines());
        assert!(
            s.lines()
                .iter()
                .any(|l| l.contains("iptables-legacy ip filter chain FORWARD")),
            "{:?}",
            s.lines()
        );
        assert!(ipt(&lab, "iptables-legacy", "-S FORWARD").contains("-A FORWARD -j PIER-FORWARD"));
        assert!(
            served(&lab),
            "VIP served through iptables-legacy FORWARD DROP"
        );
    });
    let left = ipt(&lab, "iptables-legacy", "-S");
    assert!(
        !left.contains("PIER-FORWARD"),
        "nothing of pier's left: {left}"
    );
}

#[test]
fn docker_style_ruleset_gets_piers_jump_in_docker_user() {
    if !prerequisites("docker_style_ruleset", false) {
        return;
    }
    let lab = lab("fd");
    for args in [
        "-P FORWARD DROP",
        "-N DOCKER-USER",
        "-A DOCKER-USER -j RETURN",
        "-A FORWARD -j DOCKER-USER",
    ] {
        ipt(&lab, "iptables-nft", args);
    }
    assert!(!served(&lab));
    with_pier(&lab, HostFirewall::Open, |s| {
        assert!(s.blocked().is_empty(), "{:?}", s.lines());
        let user = ipt(&lab, "iptables-nft", "-S DOCKER-USER");
        assert!(
            user.lines().nth(1) == Some("-A DOCKER-USER -j PIER-FORWARD"),
            "first in DOCKER-USER: {user}"
        );
        assert!(
            !ipt(&lab, "iptables-nft", "-S FORWARD").contains("PIER-FORWARD"),
            "FORWARD itself is Docker's"
        );
        assert!(served(&lab), "VIP served through Docker's FORWARD DROP");
    });
    let left = ipt(&lab, "iptables-nft", "-S");
    assert!(
        !left.contains("PIER-FORWARD"),
        "nothing of pier's left: {left}"
    );
    assert!(left.contains("-A FORWARD -j DOCKER-USER"), "{left}");
}

#[test]
fn an_nftables_drop_chain_is_reported_with_the_rule_to_add_and_not_changed() {
    if !prerequisites("nftables_drop_chain", false) {
        return;
    }
    let lab = lab("fi");
    lab.sh(
        "gw",
        "nft add table inet filter && nft add chain inet filter forward '{ type filter hook forward priority 0; policy drop; }'",
    );
    let before = lab.sh("gw", "nft list table inet filter");
    with_pier(&lab, HostFirewall::Open, |s| {
        assert_eq!(
            s.blocked(),
            vec![("inet filter".to_string(), "forward".to_string())],
            "{:?}",
            s.lines()
        );
        let line = s
            .lines()
            .into_iter()
            .find(|l| l.contains("inet filter chain forward"))
            .expect("status line");
        assert!(
            line.contains("DROPS traffic to 1 VIP(s) (10.77.0.10)"),
            "{line}"
        );
        assert!(
            line.contains("nft insert rule inet filter forward ip daddr { 10.77.0.10 } accept"),
            "{line}"
        );
        assert!(!served(&lab), "pier does not edit a table it does not own");
        // The operator adds the rules the status names: the next check is clean.
        lab.sh(
            "gw",
            "nft insert rule inet filter forward ct state established,related accept",
        );
        lab.sh(
            "gw",
            "nft insert rule inet filter forward ip daddr { 10.77.0.10 } accept",
        );
        assert!(served(&lab));
    });
    let after = lab.sh("gw", "nft list table inet filter");
    assert!(
        after.starts_with(before.lines().next().unwrap_or_default()),
        "{after}"
    );
}

#[test]
fn check_mode_changes_nothing_and_reports() {
    if !prerequisites("check_mode_changes_nothing", false) {
        return;
    }
    let lab = lab("fc");
    ipt(&lab, "iptables-nft", "-P FORWARD DROP");
    let before = ipt(&lab, "iptables-nft", "-S");
    with_pier(&lab, HostFirewall::Check, |s| {
        assert_eq!(
            s.blocked(),
            vec![("ip filter".to_string(), "FORWARD".to_string())],
            "{:?}",
            s.lines()
        );
        assert!(
            s.lines()
                .iter()
                .any(|l| l.contains("fix: set host_firewall = \"open\"")),
            "{:?}",
            s.lines()
        );
        assert_eq!(
            ipt(&lab, "iptables-nft", "-S"),
            before,
            "check mode changed iptables"
        );
        assert!(!served(&lab));
    });
}
