//! The route actuator against the real kernel, in network namespaces this
//! test creates (and removes on drop). Needs root, `ip` and `nft`; without
//! them the tests are skipped with a message, unless CI=true, where they fail.
//!
//! Actuator code runs in a thread that has `setns`'d into the gateway
//! namespace before it builds its tokio runtime, so its netlink sockets,
//! `/proc/sys/net` view and `nft` children all belong to that namespace.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/netlab.rs"]
mod netlab;

use pier::config::SysctlMode;
use pier::model::{
    AnnounceMode, Announcement, BgpAttributes, Desired, NextHop, PortRule, PortSpec,
};
use pier::route::{self, RouteActuator, RouteConfig, ROUTE_PROTOCOL};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Prerequisites: root, `ip`, `nft`. `false` = skip (after printing why).
fn prerequisites(test: &str) -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    for bin in ["ip", "nft"] {
        let ok = Command::new(bin)
            .arg("-V")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            missing.push(format!("the `{bin}` binary"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: needs {}", missing.join(", "));
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg} (CI=true: not skipping)");
    }
    eprintln!("SKIP {msg}");
    false
}

/// A network namespace, deleted on drop.
struct Ns(String);

impl Ns {
    fn new(role: &str) -> Ns {
        let name = format!(
            "pier-rt{}-{}-{role}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        run(&["ip", "netns", "add", &name]);
        let ns = Ns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }
    fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.0];
        full.extend_from_slice(args);
        run(&full)
    }
    fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(args);
        run(&full)
    }
    /// pier's routes as `ip -j route show proto 201` lists them:
    /// destination → gateways.
    fn pier_routes(&self) -> Vec<(String, BTreeSet<String>)> {
        let mut out = Vec::new();
        for fam in ["-4", "-6"] {
            let json = self.ip(&[
                "-j",
                fam,
                "route",
                "show",
                "proto",
                &ROUTE_PROTOCOL.to_string(),
            ]);
            let v: serde_json::Value = serde_json::from_str(&json).expect("ip -j output");
            for r in v.as_array().cloned().unwrap_or_default() {
                let dst = r["dst"].as_str().unwrap_or_default().to_string();
                let mut gws = BTreeSet::new();
                if let Some(g) = r["gateway"].as_str() {
                    gws.insert(g.to_string());
                }
                for nh in r["nexthops"].as_array().cloned().unwrap_or_default() {
                    if let Some(g) = nh["gateway"].as_str() {
                        gws.insert(g.to_string());
                    }
                }
                out.push((dst, gws));
            }
        }
        out.sort();
        out
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run `f` on a thread inside namespace `ns`.
fn in_ns<R: Send>(ns: &Ns, f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        s.spawn(|| {
            netlab::enter(&ns.0);
            f()
        })
        .join()
        .expect("thread in netns panicked")
    })
}

/// Run an async block on a fresh runtime inside `ns`.
fn block_on_in<R: Send>(ns: &Ns, fut: impl std::future::Future<Output = R> + Send) -> R {
    in_ns(ns, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(fut)
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn announcement(vip: &str, hops: &[&str], ports: &[(&str, &[&str])]) -> Arc<Announcement> {
    Arc::new(Announcement {
        vip: ip(vip),
        pool: "lab".into(),
        mode: AnnounceMode::BgpSelf,
        next_hops: hops
            .iter()
            .map(|h| NextHop {
                node: h.to_string(),
                address: ip(h),
                labels: Default::default(),
            })
            .collect::<Vec<_>>()
            .into(),
        bgp: BgpAttributes::default(),
        services: vec![],
        ports: ports
            .iter()
            .map(|(p, srcs)| PortRule {
                port: p.parse::<PortSpec>().expect("port"),
                sources: srcs.iter().map(|s| s.parse().expect("cidr")).collect(),
            })
            .collect(),
    })
}

fn desired(generation: u64, mut anns: Vec<Arc<Announcement>>) -> Desired {
    anns.sort_by_key(|a| a.vip);
    Desired {
        generation,
        announcements: anns,
    }
}

fn config(lans: &[&str]) -> RouteConfig {
    RouteConfig {
        lan_interfaces: lans.iter().map(|s| s.to_string()).collect(),
        sysctl: SysctlMode::Set,
        // Only the netlink event may repair in this test.
        repair_interval: Duration::from_secs(3600),
        ..RouteConfig::default()
    }
}

/// [`config`] with per-VIP accept counters (`vip_counters = true`; off by
/// default).
fn counted_config(lans: &[&str]) -> RouteConfig {
    let mut c = config(lans);
    c.forwarding.vip_counters = true;
    c
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn routes_are_installed_replaced_repaired_and_removed() {
    if !prerequisites("routes_are_installed_replaced_repaired_and_removed") {
        return;
    }
    let gw = Ns::new("gw");
    // A veth pair (no dummy module everywhere); d0 carries the node subnet.
    gw.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
    gw.ip(&["link", "set", "d0", "up"]);
    gw.ip(&["link", "set", "d1", "up"]);
    gw.ip(&["addr", "add", "10.0.2.1/24", "dev", "d0"]);
    gw.ip(&["addr", "add", "fd00:2::1/64", "dev", "d0", "nodad"]);
    // Not pier's: a route of another protocol, and one on a VIP's own
    // destination that pier must not take over.
    gw.ip(&[
        "route",
        "add",
        "10.99.0.0/24",
        "via",
        "10.0.2.11",
        "proto",
        "static",
    ]);
    gw.ip(&[
        "route",
        "add",
        "10.77.0.20/32",
        "via",
        "10.0.2.13",
        "proto",
        "static",
    ]);

    let three = desired(
        1,
        vec![
            announcement(
                "10.77.0.10",
                &["10.0.2.11", "10.0.2.12", "10.0.2.13"],
                &[("80/tcp", &[])],
            ),
            announcement("10.77.0.20", &["10.0.2.11"], &[("80/tcp", &[])]),
            announcement(
                "fd66::10",
                &["fd00:2::11", "fd00:2::12"],
                &[("443/tcp", &[])],
            ),
        ],
    );
    let two = desired(
        2,
        vec![
            announcement(
                "10.77.0.10",
                &["10.0.2.11", "10.0.2.12"],
                &[("80/tcp", &[])],
            ),
            announcement("10.77.0.20", &["10.0.2.11"], &[("80/tcp", &[])]),
            announcement(
                "fd66::10",
                &["fd00:2::11", "fd00:2::12"],
                &[("443/tcp", &[])],
            ),
        ],
    );

    block_on_in(&gw, async {
        let mut act = RouteActuator::start(config(&["d0"])).await.expect("start");
        let r = act.apply(&three).await.expect("apply 1");
        assert_eq!((r.added, r.replaced, r.deleted), (2, 0, 0), "{r:?}");
        assert_eq!(
            r.conflicts.len(),
            1,
            "static route on 10.77.0.20 is not pier's: {r:?}"
        );
        assert_eq!(
            gw.pier_routes(),
            vec![
                (
                    "10.77.0.10".to_string(),
                    set(&["10.0.2.11", "10.0.2.12", "10.0.2.13"])
                ),
                ("fd66::10".to_string(), set(&["fd00:2::11", "fd00:2::12"])),
            ]
        );
        // The sysctls were set in this namespace.
        for (key, want) in [
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv6/conf/all/forwarding", "1"),
            ("net/ipv4/fib_multipath_hash_policy", "1"),
            ("net/ipv6/fib_multipath_hash_policy", "1"),
            ("net/ipv4/conf/d0/send_redirects", "0"),
        ] {
            let v = gw.exec(&["cat", &format!("/proc/sys/{key}")]);
            assert_eq!(v.trim(), want, "{key}");
        }

        // Applying the same state again changes nothing.
        let r = act.apply(&three).await.expect("apply again");
        assert_eq!((r.added, r.replaced, r.deleted), (0, 0, 0), "{r:?}");

        // Only next hops change (a node failing): the routes are replaced,
        // the nft table is not rewritten (its sets keep their handles); a
        // repair rewrites it.
        let handles = || gw.exec(&["nft", "-a", "list", "set", "inet", "pier", "vips4"]);
        let before = handles();
        let r = act.apply(&two).await.expect("apply 2");
        assert_eq!((r.added, r.replaced, r.deleted), (0, 1, 0), "{r:?}");
        assert_eq!(
            gw.pier_routes()[0],
            ("10.77.0.10".to_string(), set(&["10.0.2.11", "10.0.2.12"]))
        );
        assert_eq!(handles(), before, "table rewritten for a next-hop change");
        // Nothing touched any table since pier's write: the repair checks
        // the ruleset generation and leaves the table alone.
        let r = act.repair().await.expect("repair");
        assert!(!r.table_written, "{r:?}");
        assert_eq!(handles(), before, "an untouched table is not rewritten");
        // A hand edit of pier's table: the next repair rewrites it and the
        // element comes back.
        gw.exec(&[
            "nft",
            "delete",
            "element",
            "inet",
            "pier",
            "vips4",
            "{ 10.77.0.10 }",
        ]);
        let r = act.repair().await.expect("repair after a hand edit");
        assert!(r.table_written, "{r:?}");
        assert_ne!(handles(), before, "repair rewrites the table");
        let vips = gw.exec(&["nft", "list", "set", "inet", "pier", "vips4"]);
        assert!(vips.contains("10.77.0.10"), "element restored: {vips}");
        // A change in another table moves the generation too (pier cannot
        // tell which table changed): one rewrite, then quiet again.
        gw.exec(&["nft", "add", "table", "inet", "not_pier"]);
        assert!(act.repair().await.expect("repair").table_written);
        assert!(!act.repair().await.expect("repair").table_written);
        gw.exec(&["nft", "delete", "table", "inet", "not_pier"]);

        // A route deleted by hand comes back, triggered by the netlink event
        // (the repair timer is an hour).
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(two.clone()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let runner = act.run(rx, async {
            let _ = stop_rx.await;
        });
        let checker = async {
            // Twice: the first deletion may meet the loop's first reconcile;
            // once the routes are back the loop is past it, and the second
            // deletion can only come back through the netlink event.
            let mut restored = 0;
            for _ in 0..2 {
                gw.ip(&[
                    "route",
                    "del",
                    "10.77.0.10/32",
                    "proto",
                    &ROUTE_PROTOCOL.to_string(),
                ]);
                gw.ip(&[
                    "-6",
                    "route",
                    "del",
                    "fd66::10/128",
                    "proto",
                    &ROUTE_PROTOCOL.to_string(),
                ]);
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline && gw.pier_routes().len() != 2 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if gw.pier_routes().len() != 2 {
                    break;
                }
                restored += 1;
            }
            let _ = stop_tx.send(());
            drop(tx);
            restored == 2
        };
        let ((), restored) = tokio::join!(runner, checker);
        assert!(
            restored,
            "hand-deleted routes not restored: {:?}",
            gw.pier_routes()
        );
        assert_eq!(
            gw.pier_routes(),
            vec![
                ("10.77.0.10".to_string(), set(&["10.0.2.11", "10.0.2.12"])),
                ("fd66::10".to_string(), set(&["fd00:2::11", "fd00:2::12"])),
            ]
        );
        let installed = route::installed_routes().await.expect("installed");
        assert_eq!(installed.len(), 2);

        // The table deleted by hand, then a VIP goes away: the incremental
        // transaction (deleting that VIP's counters, now gone) fails and the
        // table is recreated whole; the VIP also loses its route.
        gw.exec(&["nft", "delete", "table", "inet", "pier"]);
        let one = desired(3, vec![two.announcements[0].clone()]);
        let r = act.apply(&one).await.expect("apply 3");
        assert_eq!(r.deleted, 1, "{r:?}");
        let vips = gw.exec(&["nft", "list", "set", "inet", "pier", "vips4"]);
        assert!(vips.contains("10.77.0.10"), "{vips}");
        let vips6 = gw.exec(&["nft", "list", "set", "inet", "pier", "vips6"]);
        assert!(!vips6.contains("fd66::10"), "{vips6}");

        act.shutdown(false).await.expect("shutdown");
    });

    assert!(
        gw.pier_routes().is_empty(),
        "shutdown(false) leaves no pier route"
    );
    let foreign = gw.ip(&["route", "show", "proto", "static"]);
    assert!(foreign.contains("10.99.0.0/24"), "{foreign}");
    assert!(foreign.contains("10.77.0.20 via 10.0.2.13"), "{foreign}");
    let tables = gw.exec(&["nft", "list", "tables"]);
    assert!(!tables.contains("pier"), "table removed: {tables}");
}

/// Serve TCP on `addrs` (answer "ok") and echo UDP on `udp`, inside `ns`,
/// until `stop`.
fn serve(
    ns: &Ns,
    tcp: Vec<SocketAddr>,
    udp: SocketAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let ns = ns.0.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        netlab::enter(&ns);
        let listeners: Vec<TcpListener> = tcp
            .iter()
            .map(|a| {
                let l = TcpListener::bind(a).unwrap_or_else(|e| panic!("bind {a}: {e}"));
                l.set_nonblocking(true).expect("nonblocking");
                l
            })
            .collect();
        let u = UdpSocket::bind(udp).expect("bind udp");
        u.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let _ = ready_tx.send(());
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::SeqCst) {
            for l in &listeners {
                if let Ok((mut s, _)) = l.accept() {
                    let _ = s.write_all(b"ok");
                }
            }
            if let Ok((n, from)) = u.recv_from(&mut buf) {
                let _ = u.send_to(&buf[..n], from);
            }
        }
    });
    ready_rx.recv().expect("server ready");
    h
}

fn tcp_ok(addr: SocketAddr, timeout: Duration) -> Result<(), std::io::Error> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf)?;
    assert_eq!(&buf, b"ok");
    Ok(())
}

fn veth(a: &Ns, a_if: &str, b: &Ns, b_if: &str) {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.0,
    ]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// client (10.0.1.2, fd00:1::2) — gateway (10.0.1.1 | 10.0.2.1, where
/// pier runs) — node (10.0.2.11 and .12, fd00:2::11; the VIPs 10.77.0.10
/// and fd66::10 on its lo): (client, gateway, node).
fn forwarding_lab() -> (Ns, Ns, Ns) {
    let client = Ns::new("cl");
    let gw = Ns::new("gw");
    let node = Ns::new("nd");
    veth(&client, "c0", &gw, "g0");
    veth(&gw, "g1", &node, "n0");
    client.ip(&["addr", "add", "10.0.1.2/24", "dev", "c0"]);
    client.ip(&["route", "add", "default", "via", "10.0.1.1"]);
    gw.ip(&["addr", "add", "10.0.1.1/24", "dev", "g0"]);
    gw.ip(&["addr", "add", "10.0.2.1/24", "dev", "g1"]);
    node.ip(&["addr", "add", "10.0.2.11/24", "dev", "n0"]);
    node.ip(&["addr", "add", "10.0.2.12/24", "dev", "n0"]);
    node.ip(&["addr", "add", "10.77.0.10/32", "dev", "lo"]);
    node.ip(&["route", "add", "default", "via", "10.0.2.1"]);
    for (ns, addr, dev) in [
        (&client, "fd00:1::2/64", "c0"),
        (&gw, "fd00:1::1/64", "g0"),
        (&gw, "fd00:2::1/64", "g1"),
        (&node, "fd00:2::11/64", "n0"),
        (&node, "fd66::10/128", "lo"),
    ] {
        ns.ip(&["-6", "addr", "add", addr, "dev", dev, "nodad"]);
    }
    client.ip(&["-6", "route", "add", "default", "via", "fd00:1::1"]);
    node.ip(&["-6", "route", "add", "default", "via", "fd00:2::1"]);
    (client, gw, node)
}

/// A connection the gateway dropped times out: the node did not refuse it.
fn assert_dropped(r: Result<(), std::io::Error>, what: &str) {
    let e = r.expect_err(what);
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ),
        "{what}: dropped, not refused by the node: {e}"
    );
}

#[test]
fn nft_forwards_declared_ports_and_drops_the_rest() {
    if !prerequisites("nft_forwards_declared_ports_and_drops_the_rest") {
        return;
    }
    // Per-VIP accept counters asked for (`vip_counters = true`); the
    // default table is `default_table_forwards_and_counts_only_drops`.
    let (client, gw, node) = forwarding_lab();

    let vip = "10.77.0.10";
    let d = desired(
        1,
        vec![
            announcement(
                vip,
                &["10.0.2.11", "10.0.2.12"],
                &[
                    ("8080/tcp", &[]),
                    ("5353/udp", &[]),
                    ("8443/tcp", &["192.0.2.0/24"]),
                    ("8444/tcp", &["10.0.1.0/24"]),
                ],
            ),
            announcement(
                "fd66::10",
                &["fd00:2::11"],
                &[("8080/tcp", &[]), ("8443/tcp", &["2001:db8::/32"])],
            ),
        ],
    );
    let redirects = |dev: &str| {
        gw.exec(&[
            "cat",
            &format!("/proc/sys/net/ipv4/conf/{dev}/send_redirects"),
        ])
        .trim()
        .to_string()
    };
    assert_eq!(redirects("g1"), "1", "a new interface sends redirects");
    // A table left by a pier with the earlier layout (one interval set of
    // VIP . proto . port . source), in use by a rule: the first apply
    // replaces it.
    gw.exec(&[
        "nft",
        "add table inet pier; \
         add set inet pier ports4 { type ipv4_addr . inet_proto . inet_service; }; \
         add set inet pier allow4 { type ipv4_addr . inet_proto . inet_service . ipv4_addr; flags interval; }; \
         add chain inet pier vip4; \
         add rule inet pier vip4 ip daddr . meta l4proto . th dport . ip saddr @allow4 accept; \
         add rule inet pier vip4 ip daddr . meta l4proto . th dport @ports4 drop",
    ]);
    block_on_in(&gw, async {
        // Only the client side is configured: the interface towards the
        // nodes is found from pier's own routes once they exist.
        let mut act = RouteActuator::start(counted_config(&["g0"]))
            .await
            .expect("start");
        act.apply(&d).await.expect("apply");
        act.repair().await.expect("repair");
        // Dropped without shutdown: routes and table stay (as with keep).
    });
    assert_eq!(
        redirects("g1"),
        "0",
        "send_redirects off where routes leave"
    );
    let json = gw.exec(&["nft", "-j", "list", "table", "inet", "pier"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("nft json");
    let items = || v["nftables"].as_array().into_iter().flatten();
    let elems = |set: &str| -> String {
        items()
            .filter_map(|i| i.get("set").or_else(|| i.get("map")))
            .find(|s| s["name"] == set)
            .map(|s| s["elem"].to_string())
            .unwrap_or_default()
    };
    let sets = gw.exec(&["nft", "list", "sets", "inet"]);
    assert!(
        !sets.contains("allow4") && !sets.contains("ports4"),
        "the earlier layout's sets are gone: {sets}"
    );
    assert!(elems("vips4").contains(vip), "vips4: {}", elems("vips4"));
    assert!(elems("open4").contains("8080"), "open4: {}", elems("open4"));
    let ranged = elems("ranged4");
    assert!(
        ranged.contains("8443") && ranged.contains("src4_0") && ranged.contains("src4_1"),
        "ranged4: {ranged}"
    );
    let chains: Vec<String> = items()
        .filter_map(|i| i.get("chain"))
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    assert!(
        chains.contains(&"src4_1".to_string()) && chains.contains(&"src6_0".to_string()),
        "one source chain per distinct source list: {chains:?}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let vip_addr = |port: u16| SocketAddr::new(ip(vip), port);
    let server = serve(
        &node,
        vec![
            vip_addr(8080),
            vip_addr(8081),
            vip_addr(8443),
            vip_addr(8444),
            "10.0.2.11:9000".parse().expect("addr"),
            "[fd66::10]:8080".parse().expect("addr"),
            "[fd66::10]:8443".parse().expect("addr"),
        ],
        vip_addr(5353),
        stop.clone(),
    );

    let drop_timeout = Duration::from_millis(1500);
    let ok_timeout = Duration::from_secs(5);
    let results = in_ns(&client, || {
        let udp = UdpSocket::bind("10.0.1.2:0").expect("udp bind");
        udp.set_read_timeout(Some(ok_timeout)).expect("timeout");
        udp.send_to(b"ping", vip_addr(5353)).expect("send");
        let mut buf = [0u8; 8];
        let udp_echo = udp.recv_from(&mut buf).map(|(n, _)| buf[..n].to_vec());
        (
            tcp_ok(vip_addr(8080), ok_timeout),
            tcp_ok(vip_addr(8444), ok_timeout),
            tcp_ok(vip_addr(8081), drop_timeout),
            tcp_ok(vip_addr(8443), drop_timeout),
            tcp_ok("10.0.2.11:9000".parse().expect("addr"), ok_timeout),
            udp_echo,
            tcp_ok("[fd66::10]:8080".parse().expect("addr"), ok_timeout),
            tcp_ok("[fd66::10]:8443".parse().expect("addr"), drop_timeout),
        )
    });
    stop.store(true, Ordering::SeqCst);
    let _ = server.join();
    let (allowed, allowed_src, undeclared, wrong_src, not_vip, udp, v6_allowed, v6_wrong_src) =
        results;
    v6_allowed.expect("[fd66::10]:8080/tcp is declared: must arrive");
    assert_dropped(
        v6_wrong_src,
        "[fd66::10]:8443 allows only 2001:db8::/32: must be dropped",
    );
    allowed.expect("8080/tcp is declared: must arrive");
    allowed_src.expect("8444/tcp allows 10.0.1.0/24: must arrive");
    assert_dropped(undeclared, "8081/tcp is not declared: must be dropped");
    assert_dropped(
        wrong_src,
        "8443/tcp allows only 192.0.2.0/24: must be dropped",
    );
    not_vip.expect("traffic not to a VIP is untouched");
    assert_eq!(udp.expect("5353/udp echo"), b"ping");

    let (counters, source_drops, port_drops) = block_on_in(&gw, async {
        let c = route::counters().await.expect("counters");
        let objs = route::nft::read_counters().await.expect("objects");
        (c, objs["dropped_source"], objs["dropped_port"])
    });
    let c = counters.get(&ip(vip)).copied().expect("VIP counters");
    // 8080 and 8444 handshakes + data, and the UDP ping.
    let accepted = c
        .accepted
        .expect("accepts counted with vip_counters")
        .packets;
    assert!(accepted >= 5, "{c:?}");
    // At least the first SYN of each dropped connection.
    assert!(c.dropped.packets >= 2, "{c:?}");
    assert!(source_drops.packets >= 1, "{source_drops:?}");
    assert!(port_drops.packets >= 1, "{port_drops:?}");
    let c6 = counters
        .get(&ip("fd66::10"))
        .copied()
        .expect("IPv6 VIP counters");
    assert!(
        c6.accepted.is_some_and(|a| a.packets >= 2) && c6.dropped.packets >= 1,
        "{c6:?}"
    );

    // A restarted pier (which reads the table's objects back) whose
    // Service lost one source list: that list's chain goes, the counters
    // stay.
    let fewer = desired(
        2,
        vec![announcement(
            vip,
            &["10.0.2.11", "10.0.2.12"],
            &[("8080/tcp", &[]), ("8443/tcp", &["192.0.2.0/24"])],
        )],
    );
    block_on_in(&gw, async {
        let mut act = RouteActuator::start(counted_config(&["g0", "g1"]))
            .await
            .expect("restart");
        act.apply(&fewer).await.expect("apply after restart");
    });
    let chains = gw.exec(&["nft", "list", "chains", "inet"]);
    assert!(
        chains.contains("chain src4_0") && !chains.contains("src4_1") && !chains.contains("src6_"),
        "{chains}"
    );
    let kept = block_on_in(&gw, async { route::counters().await.expect("counters") });
    assert!(
        kept[&ip(vip)]
            .accepted
            .is_some_and(|a| a.packets >= accepted),
        "counters survive an apply: {kept:?}"
    );

    // Another restart removes the state.
    block_on_in(&gw, async {
        let act = RouteActuator::start(counted_config(&["g0", "g1"]))
            .await
            .expect("restart");
        act.shutdown(false).await.expect("shutdown");
    });
    assert!(gw.pier_routes().is_empty());
}

/// The table as pier installs it by default (`vip_counters = false`, issue
/// 14: no per-VIP counter on the hot path unless asked for): open ports
/// and allowed sources are forwarded, everything else is dropped and
/// counted on the VIP's drop counter; accepts are not counted, and
/// `pier routes` says so (`None`) instead of showing 0.
#[test]
fn default_table_forwards_and_counts_only_drops() {
    if !prerequisites("default_table_forwards_and_counts_only_drops") {
        return;
    }
    assert!(
        !RouteConfig::default().forwarding.vip_counters,
        "this test is of the default"
    );
    let (client, gw, node) = forwarding_lab();
    let vip = "10.77.0.10";
    let d = desired(
        1,
        vec![
            announcement(
                vip,
                &["10.0.2.11", "10.0.2.12"],
                &[
                    ("8080/tcp", &[]),
                    ("8443/tcp", &["192.0.2.0/24"]),
                    ("8444/tcp", &["10.0.1.0/24"]),
                    ("5353/udp", &[]),
                ],
            ),
            announcement("10.77.0.12", &["10.0.2.11"], &[("8080/tcp", &[])]),
            announcement("fd66::10", &["fd00:2::11"], &[("8080/tcp", &[])]),
        ],
    );
    block_on_in(&gw, async {
        let mut act = RouteActuator::start(config(&["g0"])).await.expect("start");
        act.apply(&d).await.expect("apply");
    });
    // 10.77.0.11 lies inside the VIPs' cover (10.77.0.8/29) but is no VIP:
    // routed by the operator, not pier; pier's table must let it through.
    let not_vip = "10.77.0.11";
    node.ip(&["addr", "add", &format!("{not_vip}/32"), "dev", "lo"]);
    gw.ip(&["route", "add", &format!("{not_vip}/32"), "via", "10.0.2.11"]);

    // The hot chains: no accept counter, no counter-naming map; counters
    // only on the drop rules. Every VIP has its drop counter, none an
    // accept counter.
    let table = gw.exec(&["nft", "list", "table", "inet", "pier"]);
    assert!(
        table.contains("ip daddr . meta l4proto . th dport vmap @ranged4")
            && table.contains("ip6 daddr . meta l4proto . th dport vmap @ranged6"),
        "one verdict map decides: {table}"
    );
    assert!(
        !table.contains("@accepted") && !table.contains("@open"),
        "no per-VIP accept counter on the hot path: {table}"
    );
    // Traffic outside the VIPs' covers meets a compare per cover, no lookup.
    assert!(
        table.contains("ip daddr 10.77.0.8/29 goto vip4")
            && table.contains("ip6 daddr fd66::10 goto vip6")
            && !table.contains("@vips4 goto"),
        "the forward chain matches covers: {table}"
    );
    for line in table.lines().filter(|l| l.contains("counter")) {
        let line = line.trim();
        // Declarations of counters and counter maps are not rules.
        if line.starts_with("counter ") || line.starts_with("type ") {
            continue;
        }
        assert!(line.ends_with("drop"), "a counter on an accept: {line}");
    }
    let counters = gw.exec(&["nft", "list", "counters", "table", "inet", "pier"]);
    assert!(
        counters.contains("counter d_0a4d000a ")
            && counters.contains("counter d_fd660000000000000000000000000010 "),
        "{counters}"
    );
    assert!(!counters.contains("counter a_"), "{counters}");

    let read = || {
        block_on_in(&gw, async {
            let c = route::counters().await.expect("counters");
            let objs = route::nft::read_counters().await.expect("objects");
            (
                c.get(&ip(vip)).copied().expect("VIP counters"),
                objs["dropped_port"].packets,
                objs["dropped_source"].packets,
            )
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let vip_addr = |port: u16| SocketAddr::new(ip(vip), port);
    let v6_open: SocketAddr = "[fd66::10]:8080".parse().expect("addr");
    let server = serve(
        &node,
        vec![
            vip_addr(8080),
            vip_addr(8081),
            vip_addr(8443),
            vip_addr(8444),
            SocketAddr::new(ip(not_vip), 9000),
            v6_open,
        ],
        vip_addr(5353),
        stop.clone(),
    );
    let drop_timeout = Duration::from_millis(1500);
    let ok_timeout = Duration::from_secs(5);

    // Open ports, and a ranged one from inside its range: real TCP
    // connections through the gateway, answered by the node.
    // A UDP datagram of 3,000 bytes leaves the client in three fragments;
    // only the first carries the port. The rest must pass too, or the
    // node never reassembles it (pier loads no conntrack to do that).
    let (open, in_range, open6, fragmented, inside_cover) = in_ns(&client, || {
        let udp = UdpSocket::bind("10.0.1.2:0").expect("udp bind");
        udp.set_read_timeout(Some(ok_timeout)).expect("timeout");
        udp.send_to(&[7u8; 3000], vip_addr(5353)).expect("send");
        let mut buf = [0u8; 128];
        let echo = udp.recv_from(&mut buf).map(|(n, _)| n);
        (
            tcp_ok(vip_addr(8080), ok_timeout),
            tcp_ok(vip_addr(8444), ok_timeout),
            tcp_ok(v6_open, ok_timeout),
            echo,
            tcp_ok(SocketAddr::new(ip(not_vip), 9000), ok_timeout),
        )
    });
    inside_cover.expect("10.77.0.11 is no VIP: pier must not drop it");
    // The node's echo server reads 64 bytes of what it reassembled.
    assert_eq!(
        fragmented.expect("a fragmented datagram to 5353/udp must arrive whole"),
        64
    );
    open.expect("8080/tcp is open: must arrive");
    in_range.expect("8444/tcp allows 10.0.1.0/24: must arrive");
    open6.expect("[fd66::10]:8080/tcp is open: must arrive");
    let (c, port_drops, source_drops) = read();
    assert_eq!(c.accepted, None, "accepts are not counted: {c:?}");
    assert_eq!(
        (c.dropped.packets, port_drops, source_drops),
        (0, 0, 0),
        "nothing dropped yet: {c:?}"
    );

    // A port the VIP does not open: dropped, on the VIP's drop counter.
    let closed = in_ns(&client, || tcp_ok(vip_addr(8081), drop_timeout));
    assert_dropped(closed, "8081/tcp is not open: must be dropped");
    let (c, port_drops, source_drops) = read();
    assert!(c.dropped.packets >= 1 && port_drops >= 1, "{c:?}");
    assert_eq!(source_drops, 0, "a closed port is no source drop");
    let after_port = c.dropped.packets;

    // loadBalancerSourceRanges: a source outside the range is refused,
    // also on the VIP's drop counter.
    let outside = in_ns(&client, || tcp_ok(vip_addr(8443), drop_timeout));
    assert_dropped(
        outside,
        "8443/tcp allows only 192.0.2.0/24: must be dropped",
    );
    let (c, _, source_drops) = read();
    assert!(
        c.dropped.packets > after_port && source_drops >= 1,
        "{c:?}, {source_drops} source drops"
    );
    stop.store(true, Ordering::SeqCst);
    let _ = server.join();

    // `pier routes`: accepted not counted (null, shown as `-`), drops are.
    let rows = block_on_in(&gw, route::routes_view());
    let row = rows
        .iter()
        .find(|r| r.vip.addr() == ip(vip))
        .unwrap_or_else(|| panic!("{vip} in pier routes: {rows:?}"));
    assert_eq!(row.accepted_packets, None, "{row:?}");
    assert!(row.dropped_packets >= c.dropped.packets, "{row:?}");

    block_on_in(&gw, async {
        let act = RouteActuator::start(config(&["g0", "g1"]))
            .await
            .expect("restart");
        act.shutdown(false).await.expect("shutdown");
    });
    assert!(gw.pier_routes().is_empty());
}
