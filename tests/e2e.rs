//! End to end: the real `pier` binary in network namespaces, against the
//! test API server, with a BIRD router, three nodes emulating kube-proxy
//! and a client (lab in `tests/e2e/lab.rs`).
//!
//! - `bgp_*`: a Service gets an IP in its status, BIRD installs an ECMP
//!   route over the three nodes (ADD-PATH) and the client is served by all
//!   of them; `externalTrafficPolicy: Local` uses only nodes with ready
//!   endpoints; the CLI, `/metrics`, `/healthz`, `/readyz` against the
//!   daemon; an API-server outage withdraws nothing; SIGHUP adds a pool
//!   and a static service without resetting the session, and a broken
//!   config on SIGHUP keeps everything; a node that dies stops being a next
//!   hop; a deleted Service is withdrawn and its IP reusable; pier
//!   restarts (graceful restart) with the same IPs and no failed request.
//! - `l2_*`: two gateways share the lease; only the leader answers ARP;
//!   the leader dies, the other takes the lease, sends gratuitous ARP and
//!   the client's requests resume.

#[path = "common/netlab.rs"]
mod netlab;

#[path = "e2e/lab.rs"]
mod lab;

use std::collections::BTreeSet;
use std::time::Duration;

use lab::{E2eLab, Gateway, PATIENCE};
use netlab::wait_for;
use serde_json::{json, Value};

const PIER: &str = env!("CARGO_BIN_EXE_pier");
const ALL: [&str; 3] = ["10.0.0.11", "10.0.0.12", "10.0.0.13"];

fn set(items: &[String]) -> BTreeSet<&str> {
    items.iter().map(String::as_str).collect()
}

/// A pool, a static service and a peer (nobody at 10.0.0.9) appended to
/// the config on SIGHUP.
const EXTRA: &str = r#"[[pools]]
name = "extra"
addresses = ["192.0.2.64/28"]
mode = "bgp"
next_hop = "nodes"

[[static_services]]
name = "demo/static"
pool = "extra"
ip = "192.0.2.70"
ports = ["80/tcp"]
nodes = ["10.0.0.11", "10.0.0.12", "10.0.0.13"]
health = "none"

[[bgp.peers]]
address = "10.0.0.9"
asn = 65009
connect_retry_s = 1
"#;

/// Two errors, each to be logged with its place.
const BROKEN: &str = r#"[[pools]]
name = "broken"
addresses = ["192.0.2.300/28"]
mode = "bgp"
colour = "blue"
"#;

#[test]
fn bgp_service_lifecycle_cli_metrics_reload_node_failure_and_restart() {
    if !lab::prerequisites("e2e_bgp") {
        return;
    }
    let mut e = E2eLab::new("eb", PIER, true, &["gw"]);
    let cfg = e.gateway_config(&Gateway::default());
    let pier = e.start_pier("gw", &cfg);

    // Create → IP in status → ECMP route in BIRD → served by every node.
    e.create_service("web", false, json!({}));
    let vip = e.wait_status_ip("web", &pier);
    assert!(vip.starts_with("192.0.2."), "{vip}");
    e.wait_router_hops(&vip, &ALL, "ECMP route over the three nodes", &pier);
    wait_for("the client served by every node", PATIENCE, || {
        let a = e.requests(&vip, 30);
        if set(&a) == BTreeSet::from(["n1", "n2", "n3"]) {
            Ok(())
        } else {
            Err(format!("{a:?}"))
        }
    });

    // externalTrafficPolicy: Local → only the nodes with ready endpoints.
    e.create_service("local", true, json!({}));
    e.endpoints("local", &["n1", "n2"]);
    let lvip = e.wait_status_ip("local", &pier);
    e.wait_router_hops(
        &lvip,
        &["10.0.0.11", "10.0.0.12"],
        "the Local Service routed to n1 and n2 only",
        &pier,
    );
    let a = e.requests(&lvip, 20);
    assert!(
        set(&a).is_subset(&BTreeSet::from(["n1", "n2"])),
        "Local Service answered by {a:?}"
    );

    // A Service that cannot get its IP is pending, and the CLI says why.
    e.create_service("outside", false, json!({"pier.io/ip": "203.0.113.7"}));
    let line = wait_for("the pending reason in `pier services`", PATIENCE, || {
        let (ok, out) = e.cli("gw", "services");
        match out.lines().find(|l| l.starts_with("shop/outside")) {
            Some(l) if ok && l.contains("203.0.113.7") => Ok(l.to_string()),
            _ => Err(out),
        }
    });
    assert!(line.contains("kubernetes"), "{line}");

    check_cli(&e, &vip);
    check_metrics(&e);

    // An API-server outage withdraws nothing.
    e.api.set_available(false);
    for _ in 0..8 {
        assert_eq!(e.router_hops(&vip), ALL, "route changed during the outage");
        assert_eq!(e.router_hops(&lvip), ["10.0.0.11", "10.0.0.12"]);
        std::thread::sleep(Duration::from_millis(250));
    }
    let a = e.requests(&vip, 6);
    assert!(!a.iter().any(|x| x == "FAIL"), "during the outage: {a:?}");
    e.api.set_available(true);

    check_reload(&mut e, &cfg, &pier, &vip);

    // A node dies (kube-proxy's health endpoint and the service with it):
    // the others take its traffic.
    e.lab.stop("http-n3");
    e.wait_router_hops(
        &vip,
        &["10.0.0.11", "10.0.0.12"],
        "n3 withdrawn after failing its probe",
        &pier,
    );
    let a = e.requests(&vip, 20);
    assert!(
        set(&a).is_subset(&BTreeSet::from(["n1", "n2"])),
        "after n3 died: {a:?}"
    );
    let (_, metrics) = e.http_get("gw", "/metrics");
    assert!(
        metrics.contains("pier_node_healthy{node=\"n3\"} 0"),
        "{metrics}"
    );
    let node_http = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lab/node_http.py");
    e.lab.spawn(
        "n3",
        "http-n3-again",
        &[
            "/usr/bin/python3",
            node_http,
            "n3",
            "10.0.0.13",
            "8080",
            "10256",
        ],
    );
    e.wait_router_hops(&vip, &ALL, "n3 back after passing its probes", &pier);
    let log = e.lab.log(&pier);
    assert!(
        log.lines()
            .any(|l| l.contains("node down") && l.contains("n3")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("node up") && l.contains("n3")),
        "{log}"
    );

    // Delete → withdrawn; the IP can be given to another Service.
    e.api
        .delete("v1", "Service", Some("shop"), "web")
        .expect("delete");
    e.wait_router_hops(&vip, &[], "the deleted Service withdrawn", &pier);
    let log = e.lab.log(&pier);
    assert!(
        log.lines()
            .any(|l| l.contains("withdraw") && l.contains(&vip) && l.contains("shop/web")),
        "no withdraw line naming the Service: {log}"
    );
    e.create_service("web2", false, json!({"pier.io/ip": vip}));
    assert_eq!(e.wait_status_ip("web2", &pier), vip, "IP not reusable");
    e.wait_router_hops(&vip, &ALL, "the reused IP routed again", &pier);

    let pier = check_graceful_restart(&mut e, &cfg, &pier, &vip, &lvip);

    // shutdown = "withdraw": a stop withdraws at once (the router's
    // graceful-restart hold would otherwise keep the routes for 60 s).
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(
        &cfg,
        text.replace("shutdown = \"keep\"", "shutdown = \"withdraw\""),
    )
    .expect("config");
    e.lab.stop(&pier);
    let pier = e.start_pier("gw", &cfg);
    wait_for("the session back, pier ready", PATIENCE, || {
        match (e.http_get("gw", "/readyz"), e.lab.log(&pier)) {
            ((200, _), log) if log.contains("BGP session established") => Ok(()),
            (_, log) => Err(log),
        }
    });
    e.wait_router_hops(&vip, &ALL, "routes after the restart", &pier);
    e.lab.stop(&pier);
    e.wait_router_hops(&vip, &[], "routes withdrawn by the stop", &pier);
    e.wait_router_hops("192.0.2.70", &[], "routes withdrawn by the stop", &pier);
}

/// The CLI against the running daemon: readable tables, `--json`, and a
/// clear message when no daemon listens.
fn check_cli(e: &E2eLab, vip: &str) {
    let peers = wait_for("the session in `pier peers`", PATIENCE, || {
        let (ok, out) = e.cli("gw", "peers");
        if ok && out.contains("Established") {
            Ok(out)
        } else {
            Err(out)
        }
    });
    let header = peers.lines().next().unwrap_or_default();
    for col in [
        "PEER",
        "ASN",
        "STATE",
        "UPTIME",
        "SENT",
        "NEGOTIATED",
        "LAST ERROR",
    ] {
        assert!(header.contains(col), "{peers}");
    }
    let row = peers.lines().nth(1).unwrap_or_default();
    for cell in [
        "10.0.0.1",
        "65000",
        "Established",
        "ipv4-unicast",
        "add-path(ipv4-unicast)",
    ] {
        assert!(row.contains(cell), "{peers}");
    }

    let (ok, services) = e.cli("gw", "services");
    assert!(ok, "{services}");
    assert!(
        services
            .lines()
            .any(|l| l.starts_with("shop/web ") && l.contains(vip)),
        "{services}"
    );
    let (ok, pools) = e.cli("gw", "pools");
    assert!(
        ok && pools.contains("public") && pools.contains("192.0.2.0/28"),
        "{pools}"
    );
    let (ok, nodes) = e.cli("gw", "nodes");
    assert!(ok, "{nodes}");
    for n in ["n1", "n2", "n3"] {
        assert!(
            nodes
                .lines()
                .any(|l| l.starts_with(n) && l.contains("eligible")),
            "{nodes}"
        );
    }
    let (ok, status) = e.cli("gw", "status");
    assert!(
        ok && status.contains("initial sync") && status.contains("done"),
        "{status}"
    );
    // next_hop = nodes: pier installs no kernel routes.
    let (ok, routes) = e.cli("gw", "routes");
    assert!(ok && routes.starts_with("no routes installed"), "{routes}");

    let (ok, json) = e.cli("gw", "services --json");
    assert!(ok, "{json}");
    let v: Value = serde_json::from_str(&json).expect("services --json is JSON");
    assert!(
        v.as_array()
            .is_some_and(|a| a.iter().any(|s| s["service"]["name"] == "web")),
        "{json}"
    );
    let (ok, json) = e.cli("gw", "peers --json");
    let v: Value = serde_json::from_str(&json).expect("peers --json is JSON");
    assert!(ok && v[0]["state"] == "Established", "{json}");

    let missing = e.lab.dir.join("nobody.sock");
    let bin = netlab::path_str(&e.pier_bin);
    let (ok, out) = e.lab.try_sh(
        "gw",
        &format!("{bin} status --socket {}", missing.display()),
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("no pier daemon is running") && out.contains("does not exist"),
        "{out}"
    );
    // The socket is 0660 by default.
    let mode = std::fs::metadata(e.socket("gw"))
        .expect("socket")
        .permissions();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.mode() & 0o777, 0o660);
}

/// Every metric docs/architecture.md names, with its labels; health endpoints.
fn check_metrics(e: &E2eLab) {
    let (code, _) = e.http_get("gw", "/healthz");
    assert_eq!(code, 200);
    let (code, body) = e.http_get("gw", "/readyz");
    assert_eq!(code, 200, "{body}");
    let (code, text) = wait_for("the node health series", PATIENCE, || {
        let (code, text) = e.http_get("gw", "/metrics");
        if text.contains("pier_node_healthy{node=\"n3\"} 1") {
            Ok((code, text))
        } else {
            Err(text)
        }
    });
    assert_eq!(code, 200);
    for series in [
        "pier_pool_addresses_total{pool=\"public\",family=\"ipv4\"} 16",
        "pier_pool_addresses_in_use{pool=\"public\",family=\"ipv4\"} 2",
        "pier_services{state=\"allocated\"} 2",
        "pier_services{state=\"pending\"} 1",
        "pier_bgp_session_up{peer=\"10.0.0.1\"} 1",
        "pier_bgp_prefixes_announced{peer=\"10.0.0.1\"} 5",
        "pier_bgp_updates_sent_total{peer=\"10.0.0.1\"}",
        "pier_node_healthy{node=\"n1\"} 1",
        "pier_reconcile_seconds_bucket{le=",
        "pier_reconcile_seconds_count",
    ] {
        assert!(text.contains(series), "missing {series} in\n{text}");
    }
}

/// SIGHUP: a new pool and static service, nothing else touched; then a
/// broken file, which changes nothing and is reported error by error.
fn check_reload(e: &mut E2eLab, cfg: &std::path::Path, pier: &str, vip: &str) {
    let session = e.bird_session();
    assert!(session.contains("Established"), "{session}");
    // BIRD's routes carry the time they were last received: a route pier
    // re-sent would show a new one.
    let routes = e.birdc(&format!("show route for {vip} all"));
    assert!(
        routes.contains(&format!("{vip}/32")) && routes.contains("[pier "),
        "{routes}"
    );
    let good = std::fs::read_to_string(cfg).expect("config");
    std::fs::write(cfg, format!("{good}\n{EXTRA}")).expect("config");
    e.lab.signal(pier, libc::SIGHUP);
    e.wait_router_hops(
        "192.0.2.70",
        &ALL,
        "the static service added by SIGHUP routed",
        pier,
    );
    let now = e.bird_session();
    assert!(
        lab::same_bird_text(&now, &session),
        "SIGHUP reset the BGP session: {now} / {session}"
    );
    assert_eq!(e.router_hops(vip), ALL);
    let now = e.birdc(&format!("show route for {vip} all"));
    assert!(
        lab::same_bird_text(&now, &routes),
        "SIGHUP re-sent an unchanged route: {now} / {routes}"
    );
    let (_, peers) = e.cli("gw", "peers");
    assert!(
        peers
            .lines()
            .any(|l| l.starts_with("10.0.0.9 ") && l.contains("65009")),
        "the peer added by SIGHUP: {peers}"
    );
    assert_eq!(e.status_ips("web"), [vip]);
    let a = e.requests("192.0.2.70", 6);
    assert!(!a.iter().any(|x| x == "FAIL"), "{a:?}");

    std::fs::write(cfg, format!("{good}\n{EXTRA}\n{BROKEN}")).expect("config");
    e.lab.signal(pier, libc::SIGHUP);
    let log = wait_for("the broken reload reported", PATIENCE, || {
        let log = e.lab.log(pier);
        if log.contains("keeping the running one") {
            Ok(log)
        } else {
            Err(log)
        }
    });
    assert!(log.contains("192.0.2.300"), "{log}");
    assert!(log.contains("colour"), "{log}");
    let now = e.bird_session();
    assert!(
        lab::same_bird_text(&now, &session),
        "a broken reload reset the session: {now} / {session}"
    );
    let now = e.birdc(&format!("show route for {vip} all"));
    assert!(
        lab::same_bird_text(&now, &routes),
        "a broken reload re-sent a route: {now} / {routes}"
    );
    assert_eq!(e.router_hops("192.0.2.70"), ALL);
    assert_eq!(e.router_hops(vip), ALL);
    let (_, pools) = e.cli("gw", "pools");
    assert!(
        pools.contains("extra") && !pools.contains("broken"),
        "{pools}"
    );
    std::fs::write(cfg, format!("{good}\n{EXTRA}")).expect("config");
}

/// pier stops (graceful restart: routes kept) and starts again: the same
/// IPs, and a client requesting all along sees no failure.
fn check_graceful_restart(
    e: &mut E2eLab,
    cfg: &std::path::Path,
    pier: &str,
    vip: &str,
    lvip: &str,
) -> String {
    let before = (e.status_ips("web2"), e.status_ips("local"));
    let stop = e.lab.dir.join("stop-load");
    let load = format!(
        "while [ ! -e {stop} ]; do curl -s -m 1 http://{vip}/ || echo FAIL; sleep 0.02; done; echo END",
        stop = stop.display()
    );
    e.lab.spawn("c", "load", &["sh", "-c", &load]);
    wait_for("the load running", PATIENCE, || {
        match e.lab.log("load").lines().count() {
            n if n >= 5 => Ok(()),
            n => Err(format!("{n} answers")),
        }
    });
    e.lab.stop(pier);
    let again = e.start_pier("gw", cfg);
    wait_for(
        "the session re-established, nothing stale",
        PATIENCE,
        || {
            let p = e.birdc("show protocols all pier");
            let log = e.lab.log(&again);
            if p.contains("Established")
                && !p.to_lowercase().contains("stale")
                && log.contains("BGP session established")
            {
                Ok(())
            } else {
                Err(format!("{p}\n{log}"))
            }
        },
    );
    wait_for("pier ready after the restart", PATIENCE, || {
        match e.http_get("gw", "/readyz") {
            (200, _) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(e.router_hops(vip), ALL);
    assert_eq!(e.router_hops(lvip), ["10.0.0.11", "10.0.0.12"]);
    std::fs::write(&stop, "").expect("stop file");
    // The loop ends after at most one more request.
    let out = wait_for("the load loop ended", PATIENCE, || {
        let out = e.lab.log("load");
        if out.lines().any(|l| l == "END") {
            Ok(out)
        } else {
            Err(out)
        }
    });
    let answers: Vec<&str> = out.lines().filter(|l| *l != "END").collect();
    assert!(answers.len() > 10, "too few requests: {out}");
    assert!(
        !answers.contains(&"FAIL"),
        "{} of {} requests failed across the restart",
        answers.iter().filter(|a| **a == "FAIL").count(),
        answers.len()
    );
    assert_eq!((e.status_ips("web2"), e.status_ips("local")), before);
    again
}

/// `gw` leads with an `l2` Service served through it, then `gw2` (started
/// with `args`) is ready as standby: (leader, standby, VIP).
fn l2_leader_and_standby(e: &mut E2eLab, args: &[&str]) -> (String, String, String) {
    let lease = (2, 1);
    let cfg1 = e.gateway_config(&Gateway {
        mode: "l2",
        lease,
        ..Gateway::default()
    });
    let leader = e.start_pier("gw", &cfg1);
    e.create_service("lan", false, json!({}));
    let vip = e.wait_status_ip("lan", &leader);
    assert!(vip.starts_with("10.0.0.24"), "{vip}");
    wait_for("the client served through the leader", PATIENCE, || {
        e.request(&vip, 1000)
    });
    let cfg2 = e.gateway_config(&Gateway {
        host: "gw2",
        address: "10.0.0.3",
        mode: "l2",
        lease,
        // `pier routes` on the new leader shows accepted packets.
        vip_counters: true,
        ..Gateway::default()
    });
    let standby = e.start_pier_with("gw2", &cfg2, args);
    wait_for("the standby ready", PATIENCE, || {
        match e.http_get("gw2", "/readyz") {
            (200, _) => Ok(()),
            other => Err(format!("{other:?}\n{}", e.lab.log(&standby))),
        }
    });
    (leader, standby, vip)
}

#[test]
fn l2_leader_dies_and_the_other_gateway_takes_over_with_gratuitous_arp() {
    if !lab::prerequisites("e2e_l2") {
        return;
    }
    let mut e = E2eLab::new("el", PIER, false, &["gw", "gw2"]);
    let (leader, standby, vip) = l2_leader_and_standby(&mut e, &["--log-format", "json"]);
    // Only the leader answers ARP: a fresh resolution finds gw.
    e.lab.sh("c", "ip neigh flush dev eth0");
    let a = e.requests(&vip, 5);
    assert!(!a.iter().any(|x| x == "FAIL"), "{a:?}");
    assert_eq!(e.client_neighbour(&vip), Some(e.mac("gw")));
    // The leader runs the default (`vip_counters = false`): `pier routes`
    // lists the VIP with drops counted and accepts not (null, `-`).
    wait_for("the VIP in the leader's `pier routes`", PATIENCE, || {
        let (ok, out) = e.cli("gw", "routes --json");
        let v: Value = serde_json::from_str(&out).map_err(|err| format!("{err}: {out}"))?;
        let row = v
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["vip"] == format!("{vip}/32")))
            .ok_or(out.clone())?;
        if ok && row["accepted_packets"].is_null() && row["dropped_packets"].is_u64() {
            Ok(())
        } else {
            Err(out)
        }
    });
    let (ok, table) = e.cli("gw", "routes");
    assert!(
        ok && table.contains("ACCEPTED -: not counted (gateway.vip_counters = false)"),
        "{table}"
    );
    // ... and the standby sent no reply (its counters reach /metrics once
    // a second).
    std::thread::sleep(Duration::from_millis(1500));
    let (_, metrics) = e.http_get("gw2", "/metrics");
    assert!(
        !metrics.contains("pier_arp_replies_sent_total{")
            || metrics.contains("pier_arp_replies_sent_total{interface=\"eth0\"} 0"),
        "the standby answered ARP:\n{metrics}"
    );

    // The leader's box dies: process killed, link down.
    e.lab.signal(&leader, libc::SIGKILL);
    e.lab.sh("gw", "ip link set eth0 down");
    wait_for("the client served through the standby", PATIENCE, || {
        e.request(&vip, 500)
    });
    assert_eq!(
        e.client_neighbour(&vip),
        Some(e.mac("gw2")),
        "the client did not learn the new gateway"
    );
    // Counters reach /metrics within a second.
    let metrics = wait_for("gratuitous ARP counted", PATIENCE, || {
        let (_, metrics) = e.http_get("gw2", "/metrics");
        let garp = metrics
            .lines()
            .find(|l| l.starts_with("pier_garp_sent_total{interface=\"eth0\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok());
        if garp.is_some_and(|n| n > 0) {
            Ok(metrics)
        } else {
            Err(metrics)
        }
    });
    assert!(
        metrics.contains("pier_arp_replies_sent_total{interface=\"eth0\"}"),
        "{metrics}"
    );
    // --log-format json: one JSON object per line, the decision in
    // `fields.message`.
    let log = e.lab.log(&standby);
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|err| panic!("not JSON ({err}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("lease acquired"))),
        "{log}"
    );
    let a = e.requests(&vip, 6);
    assert!(!a.iter().any(|x| x == "FAIL"), "after the failover: {a:?}");
    assert_eq!(
        e.status_ips("lan"),
        std::slice::from_ref(&vip),
        "the IP changed with the leader"
    );
    // In l2 mode pier forwards: `pier routes` shows the route over the
    // nodes and the packets its nftables rules accepted (refreshed every
    // 5 s; counted because gw2 has `vip_counters = true`).
    wait_for("the forwarded VIP in `pier routes`", PATIENCE, || {
        let (ok, out) = e.cli("gw2", "routes --json");
        let v: Value = serde_json::from_str(&out).map_err(|err| format!("{err}: {out}"))?;
        let row = v
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["vip"] == format!("{vip}/32")))
            .ok_or(out.clone())?;
        let hops: Vec<&str> = row["next_hops"]
            .as_array()
            .map(|a| a.iter().filter_map(|h| h.as_str()).collect())
            .unwrap_or_default();
        match row["accepted_packets"].as_u64() {
            Some(n) if ok && hops == ALL && n > 0 => Ok(()),
            _ => Err(out),
        }
    });
    // The table too: the accepted column is a number, not `-`.
    let (ok, table) = e.cli("gw2", "routes");
    assert!(ok && !table.contains("not counted"), "{table}");
}

/// The counter `name{interface="eth0"}` on a gateway's `/metrics` (0 when
/// absent).
fn eth0_counter(e: &E2eLab, host: &str, name: &str) -> u64 {
    let (_, metrics) = e.http_get(host, "/metrics");
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{interface=\"eth0\"}}")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn l2_leader_cut_from_the_api_goes_silent_and_the_standby_takes_over() {
    if !lab::prerequisites("e2e_l2_cut") {
        return;
    }
    let mut e = E2eLab::new("ec", PIER, false, &["gw", "gw2"]);
    let (leader, standby, vip) = l2_leader_and_standby(&mut e, &[]);
    assert_eq!(e.client_neighbour(&vip), Some(e.mac("gw")));

    // The leader loses the API server only: its box, links and forwarding
    // stay up.
    e.lab.sh(
        "gw",
        "nft add table ip cut; \
         nft add chain ip cut out '{ type filter hook output priority 0; }'; \
         nft add rule ip cut out ip daddr 10.0.0.5 drop",
    );
    // The client keeps being served while the standby takes over and
    // announces itself with gratuitous ARP.
    let mut answers = Vec::new();
    wait_for("the client moved to the standby", PATIENCE, || {
        answers.extend(e.requests(&vip, 1));
        match e.client_neighbour(&vip) {
            Some(mac) if mac == e.mac("gw2") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert!(!answers.iter().any(|a| a == "FAIL"), "{answers:?}");
    wait_for(
        "gratuitous ARP from the standby",
        PATIENCE,
        || match eth0_counter(&e, "gw2", "pier_garp_sent_total") {
            0 => Err(e.lab.log(&standby)),
            n => Ok(n),
        },
    );
    // The old leader is silent: fresh resolutions reach only the standby
    // and its reply counter stands still.
    wait_for(
        "the old leader logs that it stopped answering",
        PATIENCE,
        || {
            let log = e.lab.log(&leader);
            if log.contains("stops answering ARP/NDP") {
                Ok(())
            } else {
                Err(log)
            }
        },
    );
    // Counters reach /metrics once a second.
    std::thread::sleep(Duration::from_millis(1200));
    let before = eth0_counter(&e, "gw", "pier_arp_replies_sent_total");
    for _ in 0..3 {
        e.lab.sh("c", "ip neigh flush dev eth0");
        let a = e.requests(&vip, 2);
        assert!(!a.iter().any(|x| x == "FAIL"), "{a:?}");
        assert_eq!(e.client_neighbour(&vip), Some(e.mac("gw2")));
    }
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        eth0_counter(&e, "gw", "pier_arp_replies_sent_total"),
        before,
        "the old leader still answers ARP:\n{}",
        e.lab.log(&leader)
    );
}
