//! pier's BGP speaker against real routers (BIRD 2, FRR, GoBGP from
//! Debian's packages) in network namespaces: the real `pier` binary on
//! static services peers with a router on a LAN shared with three "nodes";
//! the router's kernel table must get the VIP as one ECMP route over the
//! nodes.

#[path = "common/netlab.rs"]
mod netlab;

use netlab::{must, path_str, wait_for, Lab};
use std::time::Duration;

const PIER: &str = env!("CARGO_BIN_EXE_pier");

/// Router .1, pier .2, nodes .11-.13 on 10.0.0.0/24 and fd00::/64.
fn lan(tag: &str) -> Lab {
    let mut lab = Lab::new(tag);
    lab.host("r", &["10.0.0.1/24", "fd00::1/64"]);
    lab.host("gw", &["10.0.0.2/24", "fd00::2/64"]);
    for (i, n) in ["n1", "n2", "n3"].iter().enumerate() {
        let v4 = format!("10.0.0.{}/24", 11 + i);
        let v6 = format!("fd00::{}/64", 11 + i);
        lab.host(n, &[&v4, &v6]);
    }
    lab
}

struct PierOpts<'a> {
    peer_address: &'a str,
    peer_asn: u32,
    local_asn: u32,
    extra_peer: &'a str,
    nodes: &'a [&'a str],
    shutdown: &'a str,
    /// More keys of the IPv4 and IPv6 pools.
    pool_extra: &'a str,
    metrics_listen: &'a str,
}

impl Default for PierOpts<'_> {
    fn default() -> Self {
        PierOpts {
            peer_address: "10.0.0.1",
            peer_asn: 65000,
            local_asn: 65010,
            extra_peer: "",
            nodes: &["10.0.0.11", "10.0.0.12", "10.0.0.13"],
            shutdown: "withdraw",
            pool_extra: "",
            metrics_listen: "127.0.0.1:0",
        }
    }
}

fn pier_config(lab: &Lab, o: &PierOpts) -> std::path::PathBuf {
    let nodes: Vec<String> = o.nodes.iter().map(|n| format!("\"{n}\"")).collect();
    let nodes6: Vec<String> = o
        .nodes
        .iter()
        .map(|n| format!("\"fd00::{}\"", n.rsplit('.').next().unwrap()))
        .collect();
    let text = format!(
        r#"[gateway]
router_id = "10.0.0.2"
state_dir = "{dir}/state"
api_socket = "{dir}/pier.sock"
metrics_listen = "{metrics}"
shutdown = "{shutdown}"

[bgp]
asn = {local}
restart_time_s = 60

[[bgp.peers]]
address = "{peer_address}"
asn = {peer}
hold_time = 9
connect_retry_s = 1
{extra}

[[pools]]
name = "public"
addresses = ["192.0.2.0/24"]
mode = "bgp"
next_hop = "nodes"
communities = ["65010:100"]
large_communities = ["65010:1:2"]
{pool_extra}

[[pools]]
name = "public6"
addresses = ["2001:db8:77::/64"]
mode = "bgp"
next_hop = "nodes"
{pool_extra}

[[static_services]]
name = "demo/web"
pool = "public"
ip = "192.0.2.10"
ports = ["80/tcp"]
nodes = [{nodes}]
health = "none"

[[static_services]]
name = "demo/web6"
pool = "public6"
ip = "2001:db8:77::10"
ports = ["80/tcp"]
nodes = [{nodes6}]
health = "none"
"#,
        dir = path_str(&lab.dir),
        shutdown = o.shutdown,
        metrics = o.metrics_listen,
        peer_address = o.peer_address,
        pool_extra = o.pool_extra,
        local = o.local_asn,
        peer = o.peer_asn,
        extra = o.extra_peer,
        nodes = nodes.join(", "),
        nodes6 = nodes6.join(", "),
    );
    lab.write("pier.toml", &text)
}

fn start_pier(lab: &mut Lab, cfg: &std::path::Path) {
    let cfg = path_str(cfg);
    lab.spawn("gw", "pier", &[PIER, "run", "--config", &cfg]);
}

fn bird_config(lab: &Lab, extra: &str) -> std::path::PathBuf {
    let text = format!(
        r#"log "{dir}/bird-log" all;
router id 10.0.0.1;
protocol device {{ scan time 1; }}
protocol kernel k4 {{ ipv4 {{ export all; import none; }}; merge paths on; }}
protocol kernel k6 {{ ipv6 {{ export all; import none; }}; merge paths on; }}
protocol bgp pier {{
  local 10.0.0.1 as 65000;
  neighbor 10.0.0.2 as 65010;
  passive on;
  hold time 9;
  {extra}
  ipv4 {{ import all; export none; add paths rx; }};
  ipv6 {{ import all; export none; add paths rx; }};
}}
"#,
        dir = path_str(&lab.dir)
    );
    lab.write("bird.conf", &text)
}

fn start_bird(lab: &mut Lab, conf: &std::path::Path) {
    let conf = path_str(conf);
    let sock = path_str(&lab.dir.join("bird.ctl"));
    lab.spawn("r", "bird", &["bird", "-f", "-c", &conf, "-s", &sock]);
}

fn birdc(lab: &Lab, cmd: &str) -> String {
    let sock = path_str(&lab.dir.join("bird.ctl"));
    lab.try_sh("r", &format!("birdc -s {sock} {cmd}")).1
}

/// The gateways of the router's kernel route to `prefix`, sorted.
fn kernel_gateways(lab: &Lab, family: &str, prefix: &str) -> Vec<String> {
    netlab::route_gateways(lab, "r", family, prefix)
}

fn wait_gateways(lab: &Lab, family: &str, prefix: &str, want: &[&str], what: &str) {
    wait_for(what, Duration::from_secs(30), || {
        let g = kernel_gateways(lab, family, prefix);
        if g == want {
            Ok(())
        } else {
            Err(format!(
                "{g:?}\nbird: {}\npier log:\n{}",
                birdc(lab, "show route all"),
                lab.log("pier")
            ))
        }
    });
}

#[test]
fn bird_ecmp_over_add_path_withdraw_and_attributes() {
    if !netlab::prerequisites("bird_ecmp", &["ip", "bird", "birdc"]) {
        return;
    }
    let mut lab = lan("b1");
    let bird = bird_config(&lab, "");
    start_bird(&mut lab, &bird);
    let cfg = pier_config(&lab, &PierOpts::default());
    start_pier(&mut lab, &cfg);

    wait_gateways(
        &lab,
        "-4",
        "192.0.2.10",
        &["10.0.0.11", "10.0.0.12", "10.0.0.13"],
        "an IPv4 ECMP route over three nodes",
    );
    wait_gateways(
        &lab,
        "-6",
        "2001:db8:77::10",
        &["fd00::11", "fd00::12", "fd00::13"],
        "an IPv6 ECMP route over three nodes",
    );
    // Communities and large communities as BIRD sees them.
    let all = birdc(&lab, "show route 192.0.2.10/32 all");
    assert!(all.contains("(65010,100)"), "{all}");
    assert!(all.contains("(65010, 1, 2)"), "{all}");
    assert!(all.contains("BGP.as_path: 65010"), "{all}");

    // A node leaves: its path is withdrawn, the others stay.
    let cfg = pier_config(
        &lab,
        &PierOpts {
            nodes: &["10.0.0.11", "10.0.0.13"],
            ..PierOpts::default()
        },
    );
    assert!(cfg.exists());
    lab.signal("pier", libc::SIGHUP);
    wait_gateways(
        &lab,
        "-4",
        "192.0.2.10",
        &["10.0.0.11", "10.0.0.13"],
        "the departed node's path withdrawn",
    );
    // pier stops with shutdown = "withdraw": Cease, the router drops the routes.
    lab.stop("pier");
    wait_gateways(
        &lab,
        "-4",
        "192.0.2.10",
        &[],
        "routes gone after pier stopped",
    );
    let log = must(&["cat", &path_str(&lab.dir.join("bird-log"))]);
    assert!(
        log.contains("Administrative shutdown")
            || log.contains("Received: Administrative shutdown"),
        "{log}"
    );
}

/// FRR's zebra and bgpd in the router namespace, with their own sockets.
fn start_frr(lab: &mut Lab, extra_neighbor: &str) {
    start_frr_with(lab, extra_neighbor, "", false);
}

/// FRR with `preamble` before `router bgp`, and bfdd when `bfdd`.
fn start_frr_with(lab: &mut Lab, extra_neighbor: &str, preamble: &str, bfdd: bool) {
    let dir = path_str(&lab.dir);
    let conf = format!(
        r#"frr defaults traditional
hostname r
log file {dir}/frr-log debugging
!
{preamble}
!
router bgp 65000
 bgp router-id 10.0.0.1
 no bgp ebgp-requires-policy
 no bgp default ipv4-unicast
 neighbor 10.0.0.2 remote-as 65010
 neighbor 10.0.0.2 timers 3 9
 neighbor 10.0.0.2 timers connect 1
 {extra_neighbor}
 address-family ipv4 unicast
  neighbor 10.0.0.2 activate
  maximum-paths 8
 exit-address-family
 address-family ipv6 unicast
  neighbor 10.0.0.2 activate
  maximum-paths 8
 exit-address-family
!
"#
    );
    lab.write("frr.conf", &conf);
    let daemons: &[&str] = if bfdd { &["bfdd", "bgpd"] } else { &["bgpd"] };
    netlab::start_frr_daemons(lab, "r", daemons);
}

fn vtysh(lab: &Lab, cmd: &str) -> String {
    let dir = path_str(&lab.dir);
    lab.try_sh("r", &format!("vtysh --vty_socket {dir} -c '{cmd}'"))
        .1
}

#[test]
fn frr_ecmp_ipv4_ipv6_and_hold_timer() {
    if !netlab::prerequisites("frr_ecmp", &["ip", "bgpd", "zebra", "vtysh"]) {
        return;
    }
    let mut lab = lan("f1");
    start_frr(&mut lab, "");
    let cfg = pier_config(&lab, &PierOpts::default());
    start_pier(&mut lab, &cfg);
    let frr_state = |lab: &Lab| {
        vtysh(lab, "show bgp neighbors 10.0.0.2")
            + &vtysh(lab, "show bgp ipv4 unicast")
            + &lab.log("pier")
    };
    wait_for(
        "FRR ECMP route over three nodes",
        Duration::from_secs(40),
        || {
            let g = kernel_gateways(&lab, "-4", "192.0.2.10");
            if g == ["10.0.0.11", "10.0.0.12", "10.0.0.13"] {
                Ok(())
            } else {
                Err(format!("{g:?}\n{}", frr_state(&lab)))
            }
        },
    );
    wait_for("FRR IPv6 ECMP route", Duration::from_secs(20), || {
        let g = kernel_gateways(&lab, "-6", "2001:db8:77::10");
        if g == ["fd00::11", "fd00::12", "fd00::13"] {
            Ok(())
        } else {
            Err(format!("{g:?}\n{}", vtysh(&lab, "show bgp ipv6 unicast")))
        }
    });
    let detail = vtysh(&lab, "show bgp ipv4 unicast 192.0.2.10/32");
    assert!(detail.contains("65010:100"), "{detail}");
    assert!(detail.contains("65010:1:2"), "{detail}");
    let nb = vtysh(&lab, "show bgp neighbors 10.0.0.2");
    assert!(nb.contains("4 Byte AS: advertised and received"), "{nb}");

    // Freeze pier (SIGSTOP): no keepalives; FRR's hold timer (9 s) expires
    // and it drops the routes.
    lab.signal("pier", libc::SIGSTOP);
    wait_for("FRR hold timer expiry", Duration::from_secs(20), || {
        let g = kernel_gateways(&lab, "-4", "192.0.2.10");
        if g.is_empty() {
            Ok(())
        } else {
            Err(format!("{g:?}"))
        }
    });
    let nb = vtysh(&lab, "show bgp neighbors 10.0.0.2");
    assert!(
        nb.to_lowercase().contains("hold timer expired") || nb.contains("Hold Timer Expired"),
        "{nb}"
    );
    // Thawed, pier sees its session gone (or FRR's NOTIFICATION) and
    // re-establishes; the routes come back.
    lab.signal("pier", libc::SIGCONT);
    wait_for(
        "re-sync after hold timer expiry",
        Duration::from_secs(40),
        || {
            let g = kernel_gateways(&lab, "-4", "192.0.2.10");
            if g.len() == 3 {
                Ok(())
            } else {
                Err(format!("{g:?}\n{}", frr_state(&lab)))
            }
        },
    );
}

/// The router's TcpExt TCPMD5Failure counter (its namespace's own).
fn md5_failures(lab: &Lab) -> u64 {
    let text = lab.sh("r", "cat /proc/net/netstat");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let [names, values] = lines[..] else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "TCPMD5Failure")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn bird_established(lab: &Lab) -> bool {
    birdc(lab, "show protocols pier").contains("Established")
}

#[test]
fn bird_md5_four_octet_asn_and_router_restart() {
    if !netlab::prerequisites("bird_md5", &["ip", "bird", "birdc"]) {
        return;
    }
    let mut lab = lan("b2");
    let bird = bird_config(&lab, "password \"s3cret-pw\";");
    let text = std::fs::read_to_string(&bird)
        .unwrap()
        .replace("as 65010", "as 4200000001");
    let bird = lab.write("bird.conf", &text);
    start_bird(&mut lab, &bird);
    // Wrong password first: the kernel drops every segment, no session.
    let pw = lab.write("peer.pw", "wrong\n");
    let extra = format!("password_file = \"{}\"", path_str(&pw));
    let opts = PierOpts {
        local_asn: 4_200_000_001,
        extra_peer: &extra,
        ..PierOpts::default()
    };
    let cfg = pier_config(&lab, &opts);
    start_pier(&mut lab, &cfg);
    // pier's SYNs reach the router, whose kernel drops them: a wrong
    // signature, counted, twice (a connect and a retry or retransmit).
    wait_for(
        "the router to drop pier's wrongly signed SYNs",
        Duration::from_secs(30),
        || match md5_failures(&lab) {
            n if n >= 2 => Ok(()),
            n => Err(format!("TCPMD5Failure {n}")),
        },
    );
    assert!(
        !bird_established(&lab),
        "session up with a wrong TCP-MD5 password"
    );
    assert!(kernel_gateways(&lab, "-4", "192.0.2.10").is_empty());
    lab.stop("pier");
    // The right password.
    lab.write("peer.pw", "s3cret-pw\n");
    start_pier(&mut lab, &cfg);
    wait_gateways(
        &lab,
        "-4",
        "192.0.2.10",
        &["10.0.0.11", "10.0.0.12", "10.0.0.13"],
        "routes over an MD5-signed session with a 4-octet ASN",
    );
    let all = birdc(&lab, "show route 192.0.2.10/32 all");
    assert!(all.contains("BGP.as_path: 4200000001"), "{all}");
    // The router restarts: pier reconnects and sends its table again.
    lab.stop("bird");
    let _ = lab.try_sh("r", "ip route flush proto bird");
    start_bird(&mut lab, &bird);
    wait_gateways(
        &lab,
        "-4",
        "192.0.2.10",
        &["10.0.0.11", "10.0.0.12", "10.0.0.13"],
        "routes re-sent after the router restarted",
    );
}

fn gobgp_config(lab: &Lab) -> std::path::PathBuf {
    let text = r#"[global.config]
  as = 65000
  router-id = "10.0.0.1"
  port = 179

[[neighbors]]
  [neighbors.config]
    neighbor-address = "10.0.0.2"
    peer-as = 65010
  [neighbors.transport.config]
    passive-mode = true
  [neighbors.timers.config]
    hold-time = 9
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
    [neighbors.afi-safis.add-paths.config]
      receive = true
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
    [neighbors.afi-safis.add-paths.config]
      receive = true
"#;
    lab.write("gobgpd.toml", text)
}

/// Next hops GoBGP holds for `prefix` in its global RIB.
fn gobgp_next_hops(lab: &Lab, family: &str, prefix: &str) -> Vec<String> {
    let (_, out) = lab.try_sh(
        "r",
        &format!("gobgp -u 127.0.0.1 -p 50051 global rib -a {family} {prefix} -j"),
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_default();
    let mut hops = Vec::new();
    for paths in v.as_object().into_iter().flat_map(|m| m.values()) {
        for p in paths.as_array().into_iter().flatten() {
            for a in p
                .get("attrs")
                .and_then(|a| a.as_array())
                .into_iter()
                .flatten()
            {
                if let Some(nh) = a.get("nexthop").and_then(|n| n.as_str()) {
                    hops.push(nh.to_string());
                }
            }
        }
    }
    hops.sort();
    hops
}

#[test]
fn gobgp_receives_one_path_per_node() {
    if !netlab::prerequisites("gobgp", &["ip", "gobgpd", "gobgp"]) {
        return;
    }
    let mut lab = lan("g1");
    let conf = path_str(&gobgp_config(&lab));
    lab.spawn(
        "r",
        "gobgpd",
        &[
            "gobgpd",
            "-f",
            &conf,
            "-t",
            "toml",
            "--api-hosts",
            "127.0.0.1:50051",
        ],
    );
    let cfg = pier_config(&lab, &PierOpts::default());
    start_pier(&mut lab, &cfg);
    for (family, prefix, want) in [
        (
            "ipv4",
            "192.0.2.10/32",
            ["10.0.0.11", "10.0.0.12", "10.0.0.13"],
        ),
        (
            "ipv6",
            "2001:db8:77::10/128",
            ["fd00::11", "fd00::12", "fd00::13"],
        ),
    ] {
        wait_for(
            &format!("three {family} paths in GoBGP"),
            Duration::from_secs(30),
            || {
                let hops = gobgp_next_hops(&lab, family, prefix);
                if hops == want {
                    Ok(())
                } else {
                    Err(format!(
                        "{hops:?}\n{}\n{}",
                        lab.try_sh("r", "gobgp -u 127.0.0.1 -p 50051 neighbor").1,
                        lab.log("pier")
                    ))
                }
            },
        );
    }
    // Remove a node: GoBGP drops exactly that path.
    pier_config(
        &lab,
        &PierOpts {
            nodes: &["10.0.0.12"],
            ..PierOpts::default()
        },
    );
    lab.signal("pier", libc::SIGHUP);
    wait_for("GoBGP down to one path", Duration::from_secs(20), || {
        let hops = gobgp_next_hops(&lab, "ipv4", "192.0.2.10/32");
        if hops == ["10.0.0.12"] {
            Ok(())
        } else {
            Err(format!("{hops:?}"))
        }
    });
}

/// A client `c` on the LAN that reaches 192.0.2.0/24 through the router,
/// which forwards back out the same interface (no redirects).
fn client_via_router(lab: &mut Lab) {
    lab.host("c", &["10.0.0.50/24"]);
    lab.sh("c", "ip route add 192.0.2.0/24 via 10.0.0.1");
    lab.sh("r", "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.eth0.send_redirects=0");
}

#[test]
fn graceful_restart_keeps_traffic_flowing_while_pier_restarts() {
    if !netlab::prerequisites("graceful_restart", &["ip", "bird", "birdc", "ping"]) {
        return;
    }
    let mut lab = lan("gr");
    // Each node holds the VIP on its loopback, as kube-proxy would accept it.
    client_via_router(&mut lab);
    for n in ["n1", "n2", "n3"] {
        lab.sh(n, "ip addr add 192.0.2.10/32 dev lo");
    }
    let bird = bird_config(&lab, "graceful restart on;");
    start_bird(&mut lab, &bird);
    let cfg = pier_config(
        &lab,
        &PierOpts {
            shutdown: "keep",
            ..PierOpts::default()
        },
    );
    start_pier(&mut lab, &cfg);
    let three = ["10.0.0.11", "10.0.0.12", "10.0.0.13"];
    wait_gateways(
        &lab,
        "-4",
        "192.0.2.10",
        &three,
        "ECMP route before the restart",
    );
    wait_for(
        "client reaches the VIP",
        Duration::from_secs(10),
        || match lab.try_sh("c", "ping -c1 -W1 192.0.2.10") {
            (true, _) => Ok(()),
            (false, out) => Err(out),
        },
    );
    // pier stops gracefully: no NOTIFICATION, the router keeps the paths,
    // from the stop until the router has seen the session go down, and on.
    lab.stop("pier");
    let down_checked = |lab: &Lab| {
        assert_eq!(
            kernel_gateways(lab, "-4", "192.0.2.10"),
            three,
            "routes lost while pier was down"
        );
        let (ok, out) = lab.try_sh("c", "ping -c1 -W1 192.0.2.10");
        assert!(ok, "client lost the VIP while pier was down: {out}");
    };
    wait_for(
        "the router to see the session down",
        Duration::from_secs(30),
        || {
            down_checked(&lab);
            let p = birdc(&lab, "show protocols pier");
            (!p.contains("Established")).then_some(()).ok_or(p)
        },
    );
    for _ in 0..3 {
        down_checked(&lab);
    }
    // pier comes back (Restart State bit set), sends the same paths and
    // End-of-RIB; the router never loses the route meanwhile.
    start_pier(&mut lab, &cfg);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert_eq!(
            kernel_gateways(&lab, "-4", "192.0.2.10"),
            three,
            "route flapped during the restart"
        );
        let protocols = birdc(&lab, "show protocols all pier");
        if protocols.contains("Established") && !protocols.to_lowercase().contains("stale") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no re-sync: {protocols}\n{}",
            lab.log("pier")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, out) = lab.try_sh("c", "ping -c3 -i0.2 -W1 192.0.2.10");
    assert!(ok, "{out}");
    let pier_log = lab.log("pier");
    assert!(pier_log.contains("BGP session established"), "{pier_log}");
}

/// `pier peers --json` against the running pier of `lab`.
fn pier_peers(lab: &Lab) -> Vec<serde_json::Value> {
    let sock = path_str(&lab.dir.join("pier.sock"));
    let out = std::process::Command::new(PIER)
        .args(["peers", "--json", "--socket", &sock])
        .output()
        .expect("pier peers");
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// pier's Prometheus metrics, read inside its namespace (the listener is
/// on the namespace's loopback; bash's /dev/tcp needs no HTTP client).
fn pier_metrics(lab: &Lab, port: u16) -> String {
    lab.try_sh(
        "gw",
        &format!(
            "bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}; printf \"GET /metrics HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n\" >&3; cat <&3'"
        ),
    )
    .1
}

/// iBGP over an IPv6 session (both families on it), LOCAL_PREF from the
/// pool, empty AS_PATH; `pier peers` and the metrics while up; pier's own
/// hold timer expiring when the router falls silent.
#[test]
fn bird_ibgp_over_ipv6_local_pref_status_and_hold_timer() {
    if !netlab::prerequisites("bird_ibgp6", &["ip", "bird", "birdc", "bash"]) {
        return;
    }
    let mut lab = lan("b6");
    let bird = bird_config(&lab, "direct;");
    let text = std::fs::read_to_string(&bird).unwrap().replace(
        "local 10.0.0.1 as 65000;\n  neighbor 10.0.0.2 as 65010;",
        "local fd00::1 as 65010;\n  neighbor fd00::2 as 65010;",
    );
    assert!(text.contains("neighbor fd00::2"), "{text}");
    let bird = lab.write("bird.conf", &text);
    start_bird(&mut lab, &bird);
    let cfg = pier_config(
        &lab,
        &PierOpts {
            peer_address: "fd00::1",
            peer_asn: 65010,
            local_asn: 65010,
            pool_extra: "local_pref = 200",
            metrics_listen: "127.0.0.1:9469",
            ..PierOpts::default()
        },
    );
    start_pier(&mut lab, &cfg);
    wait_gateways(
        &lab,
        "-4",
        "192.0.2.10",
        &["10.0.0.11", "10.0.0.12", "10.0.0.13"],
        "IPv4 ECMP route learnt over an IPv6 iBGP session",
    );
    wait_gateways(
        &lab,
        "-6",
        "2001:db8:77::10",
        &["fd00::11", "fd00::12", "fd00::13"],
        "IPv6 ECMP route learnt over an IPv6 iBGP session",
    );
    for prefix in ["192.0.2.10/32", "2001:db8:77::10/128"] {
        let all = birdc(&lab, &format!("show route {prefix} all"));
        assert!(all.contains("BGP.local_pref: 200"), "{all}");
        assert!(
            all.contains("BGP.as_path: \n") || all.contains("BGP.as_path:\n"),
            "{all}"
        );
    }
    let all = birdc(&lab, "show route 192.0.2.10/32 all");
    assert!(
        all.contains("(65010,100)") && all.contains("(65010, 1, 2)"),
        "{all}"
    );

    // Status: state, uptime, negotiated capabilities, prefixes sent.
    let peers = pier_peers(&lab);
    let p = peers
        .iter()
        .find(|p| p["peer"] == "fd00::1")
        .unwrap_or_else(|| panic!("{peers:?}"));
    assert_eq!(p["state"], "Established", "{p}");
    assert!(
        p["uptime_s"].is_u64() && p["established_at"].is_u64(),
        "{p}"
    );
    let caps: Vec<&str> = p["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    for c in [
        "ipv4-unicast",
        "ipv6-unicast",
        "add-path(ipv4-unicast)",
        "add-path(ipv6-unicast)",
        "4-octet-as",
        "route-refresh",
    ] {
        assert!(caps.contains(&c), "{c} missing from {caps:?}");
    }
    assert_eq!(p["prefixes_sent"], 6, "three paths per family: {p}");
    assert_eq!(p["next_hop_self_fallback"], false, "{p}");
    assert!(p["last_error"].is_null(), "{p}");
    let m = pier_metrics(&lab, 9469);
    assert!(m.contains("pier_bgp_session_up{peer=\"fd00::1\"} 1"), "{m}");
    assert!(
        m.contains("pier_bgp_prefixes_announced{peer=\"fd00::1\"} 6"),
        "{m}"
    );
    let updates: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("pier_bgp_updates_sent_total{peer=\"fd00::1\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{m}"));
    assert!(updates >= 2, "IPv4 and IPv6 UPDATEs at least: {updates}");

    // The router freezes: no keepalives; pier's hold timer (9 s) expires,
    // it says so, and the metrics follow.
    lab.signal("bird", libc::SIGSTOP);
    wait_for("pier's hold timer expiry", Duration::from_secs(30), || {
        let peers = pier_peers(&lab);
        let p = peers.iter().find(|p| p["peer"] == "fd00::1");
        match p.and_then(|p| p["last_error"].as_str()) {
            Some(e) if e.contains("hold timer expired") => Ok(()),
            _ => Err(format!("{peers:?}")),
        }
    });
    let peers = pier_peers(&lab);
    assert_ne!(peers[0]["state"], "Established", "{peers:?}");
    assert_eq!(peers[0]["prefixes_sent"], 0, "{peers:?}");
    let m = pier_metrics(&lab, 9469);
    assert!(m.contains("pier_bgp_session_up{peer=\"fd00::1\"} 0"), "{m}");
    lab.signal("bird", libc::SIGCONT);
}

/// A router without ADD-PATH receive is sent pier itself as next hop for
/// `next_hop = "nodes"` VIPs (the speaker's fallback); pier must then
/// forward that traffic to the nodes, or the VIP is blackholed.
#[test]
fn router_without_add_path_gets_next_hop_self_and_pier_forwards() {
    if !netlab::prerequisites("bird_no_addpath", &["ip", "bird", "birdc", "nft"]) {
        return;
    }
    let mut lab = lan("nap");
    client_via_router(&mut lab);
    let mut servers = Vec::new();
    for n in ["n1", "n2", "n3"] {
        lab.sh(n, "ip addr add 192.0.2.10/32 dev lo");
        servers.push(lab.http_server(n, "192.0.2.10:80", n));
    }
    let bird = bird_config(&lab, "");
    let text = std::fs::read_to_string(&bird)
        .unwrap()
        .replace(" add paths rx;", "");
    assert!(!text.contains("add paths"), "{text}");
    let bird = lab.write("bird.conf", &text);
    start_bird(&mut lab, &bird);
    let cfg = pier_config(&lab, &PierOpts::default());
    start_pier(&mut lab, &cfg);
    wait_gateways(
        &lab,
        "-4",
        "192.0.2.10",
        &["10.0.0.2"],
        "the router's route via pier (no ADD-PATH)",
    );
    let three = ["10.0.0.11", "10.0.0.12", "10.0.0.13"];
    wait_for(
        "pier's kernel route over the nodes",
        Duration::from_secs(15),
        || {
            let g = netlab::route_gateways(&lab, "gw", "-4", "192.0.2.10");
            if g == three {
                Ok(())
            } else {
                Err(format!("{g:?}\n{}", lab.log("pier")))
            }
        },
    );
    let vip: std::net::SocketAddr = "192.0.2.10:80".parse().unwrap();
    let answers: Vec<Result<String, String>> = lab.in_host("c", || {
        (0..12)
            .map(|_| netlab::http_get(vip, "/", Duration::from_secs(2)))
            .collect()
    });
    for a in &answers {
        assert!(
            a.is_ok(),
            "a request through pier failed: {answers:?}\n{}",
            lab.log("pier")
        );
    }
    let peers = pier_peers(&lab);
    assert_eq!(
        peers[0]["next_hop_self_fallback"], true,
        "pier peers shows the fallback: {peers:?}"
    );
}

/// pier's peer keys for BFD at 100 ms × 3 (detection time 300 ms).
const PIER_BFD_100: &str =
    "bfd = true\nbfd_min_rx_ms = 100\nbfd_min_tx_ms = 100\nbfd_multiplier = 3";

/// pier's view of its one peer: (BGP state, BFD state, last error).
fn pier_peer_state(lab: &Lab) -> (String, String, String) {
    let peers = pier_peers(lab);
    let p = peers.first().cloned().unwrap_or_default();
    (
        p["state"].as_str().unwrap_or("?").to_string(),
        p["bfd"]["state"].as_str().unwrap_or("-").to_string(),
        p["last_error"].as_str().unwrap_or("").to_string(),
    )
}

/// BGP with BFD against a router, once both sessions are configured:
///   1. both come up, and the router's kernel gets the VIP;
///   2. the router's BFD packets blackholed (nftables in its namespace):
///      pier's BGP session goes down, "BFD session down" (time printed);
///   3. the blackhole lifted: BFD and BGP come back, the routes too;
///   4. pier frozen (SIGSTOP): the router's BFD sees it down and its
///      kernel loses the VIP (time printed); thawed, everything returns.
fn bgp_with_bfd(lab: &Lab, router: &str, router_view: &dyn Fn(&Lab) -> String) {
    let three = ["10.0.0.11", "10.0.0.12", "10.0.0.13"];
    wait_gateways(lab, "-4", "192.0.2.10", &three, "routes with BGP + BFD");
    // Settled: up for 3 s (routers may re-create their BFD session once
    // BGP is up; see `bfd::path_failure`).
    wait_for(
        "pier: BGP Established for 3 s, BFD Up",
        Duration::from_secs(60),
        || {
            let peers = pier_peers(lab);
            let p = peers.first().cloned().unwrap_or_default();
            match pier_peer_state(lab) {
                (b, f, _)
                    if b == "Established" && f == "Up" && p["uptime_s"].as_u64() >= Some(3) =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}\n{}", router_view(lab))),
            }
        },
    );
    // 2. Blackhole the router's BFD packets.
    let since = std::time::Instant::now();
    lab.sh(
        "r",
        "nft add table inet bfdtest && \
         nft add chain inet bfdtest out '{ type filter hook output priority 0; }' && \
         nft add rule inet bfdtest out udp dport 3784 drop",
    );
    wait_for(
        "pier: BGP down on BFD down",
        Duration::from_secs(30),
        || match pier_peer_state(lab) {
            (b, _, _) if b != "Established" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let took = since.elapsed();
    eprintln!(
        "{router}: BFD blackholed → pier's BGP session down after {took:?} (detection 300 ms)"
    );
    let (_, bfd, why) = pier_peer_state(lab);
    assert_ne!(bfd, "Up", "{}", lab.log("pier"));
    assert_eq!(why, "BFD session down", "{}", lab.log("pier"));
    // While BFD is down the session stays down (pier waits for BFD Up).
    std::thread::sleep(Duration::from_millis(1500));
    let (bgp, _, _) = pier_peer_state(lab);
    assert_ne!(bgp, "Established", "BGP came up without BFD");
    // 3. Lift it.
    lab.sh("r", "nft delete table inet bfdtest");
    wait_gateways(lab, "-4", "192.0.2.10", &three, "routes back after BFD Up");
    // 4. Freeze pier.
    lab.signal("pier", libc::SIGSTOP);
    let since = std::time::Instant::now();
    let deadline = since + Duration::from_secs(30);
    while !kernel_gateways(lab, "-4", "192.0.2.10").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{router} kept pier's routes while pier was frozen: {}",
            router_view(lab)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "{router}: pier frozen → router withdrew its routes after {:?} (BFD 100 ms × 3)",
        since.elapsed()
    );
    lab.signal("pier", libc::SIGCONT);
    wait_gateways(lab, "-4", "192.0.2.10", &three, "routes back after thaw");
    let peers = pier_peers(lab);
    assert!(
        peers[0]["bfd"]["downs"].as_u64().unwrap_or(0) >= 2,
        "{peers:?}"
    );
    // 5. New BFD timers (SIGHUP): the BFD session takes them with a Poll
    //    Sequence with the router; the BGP session is not restarted.
    let uptime = |lab: &Lab| pier_peers(lab)[0]["uptime_s"].as_u64().unwrap_or(0);
    wait_for(
        "pier: BGP up for 5 s again",
        Duration::from_secs(60),
        || match (pier_peer_state(lab), uptime(lab)) {
            ((b, f, _), u) if b == "Established" && f == "Up" && u >= 5 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let cfg = lab.dir.join("pier.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("bfd_min_tx_ms = 100"), "{text}");
    lab.write(
        "pier.toml",
        &text.replace("bfd_min_tx_ms = 100", "bfd_min_tx_ms = 150"),
    );
    let before = uptime(lab);
    lab.signal("pier", libc::SIGHUP);
    wait_for(
        "pier: BFD transmits every 150 ms (Poll Sequence done)",
        Duration::from_secs(30),
        || {
            let p = pier_peers(lab)[0].clone();
            match (
                p["bfd"]["min_tx_ms"].as_u64(),
                p["bfd"]["tx_interval_ms"].as_u64(),
            ) {
                (Some(150), Some(150)) => Ok(()),
                _ => Err(format!("{p}\n{}", router_view(lab))),
            }
        },
    );
    let (bgp, bfd, _) = pier_peer_state(lab);
    assert_eq!((bgp.as_str(), bfd.as_str()), ("Established", "Up"));
    let after = uptime(lab);
    assert!(
        after >= before,
        "the BGP session restarted on a BFD timer change (uptime {before} s → {after} s): {}",
        lab.log("pier")
    );
    assert!(
        lab.log("pier")
            .contains("BFD timers changed; the BGP session stays up"),
        "{}",
        lab.log("pier")
    );
}

#[test]
fn bird_bgp_with_bfd() {
    if !netlab::prerequisites("bird_bgp_bfd", &["ip", "bird", "birdc", "nft", "bash"]) {
        return;
    }
    let mut lab = lan("bb");
    // BIRD delays a restart after repeated errors by 60 s by default (a
    // BFD Down counts): shortened so the thaw is seen within the test.
    let bird = bird_config(&lab, "bfd on;\n  error wait time 1, 5;");
    let text = std::fs::read_to_string(&bird).unwrap().replace(
        "protocol bgp pier {",
        "protocol bfd {\n  debug { states, events };\n  interface \"eth0\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };\n}\nprotocol bgp pier {\n  debug { states, events };",
    );
    let bird = lab.write("bird.conf", &text);
    start_bird(&mut lab, &bird);
    let cfg = pier_config(
        &lab,
        &PierOpts {
            extra_peer: PIER_BFD_100,
            metrics_listen: "127.0.0.1:9471",
            ..PierOpts::default()
        },
    );
    start_pier(&mut lab, &cfg);
    let view = |lab: &Lab| {
        format!(
            "{}\n{}",
            birdc(lab, "show protocols all pier"),
            birdc(lab, "show bfd sessions")
        )
    };
    bgp_with_bfd(&lab, "BIRD", &view);
    let bird_log = must(&["cat", &path_str(&lab.dir.join("bird-log"))]);
    assert!(bird_log.contains("BFD session down"), "{bird_log}");
    // `pier peers` table and the metrics.
    let sock = path_str(&lab.dir.join("pier.sock"));
    let out = std::process::Command::new(PIER)
        .args(["peers", "--socket", &sock])
        .output()
        .expect("pier peers");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("BFD LAST DOWN"), "{table}");
    // rx/tx: the transmit interval changed to 150 ms by step 5.
    assert!(table.contains("100/150 x3"), "{table}");
    let m = pier_metrics(&lab, 9471);
    assert!(
        m.contains("pier_bfd_session_up{peer=\"10.0.0.1\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("pier_bfd_transitions_total{peer=\"10.0.0.1\"}"),
        "{m}"
    );
}

#[test]
fn frr_bgp_with_bfd() {
    if !netlab::prerequisites(
        "frr_bgp_bfd",
        &["ip", "zebra", "bgpd", "bfdd", "vtysh", "nft", "bash"],
    ) {
        return;
    }
    let mut lab = lan("fb");
    start_frr_with(
        &mut lab,
        // With its source address known from the start, bgpd does not
        // re-create its BFD session (and take BGP down) once BGP is up.
        "neighbor 10.0.0.2 update-source 10.0.0.1\n neighbor 10.0.0.2 bfd\n neighbor 10.0.0.2 bfd profile fast",
        "debug bfd peer\ndebug bfd zebra\ndebug bgp bfd\n!\nbfd\n profile fast\n  receive-interval 100\n  transmit-interval 100\n  detect-multiplier 3\n !\n!",
        true,
    );
    let cfg = pier_config(
        &lab,
        &PierOpts {
            extra_peer: PIER_BFD_100,
            ..PierOpts::default()
        },
    );
    start_pier(&mut lab, &cfg);
    let view = |lab: &Lab| {
        format!(
            "{}\n{}",
            vtysh(lab, "show bgp neighbors 10.0.0.2"),
            vtysh(lab, "show bfd peers")
        )
    };
    bgp_with_bfd(&lab, "FRR", &view);
}

/// Item 6 of the BGP options: the pool's `med` as MULTI_EXIT_DISC, GTSM
/// (BIRD `ttl security on`), and pier passive (BIRD connects).
#[test]
fn bird_med_gtsm_and_pier_passive() {
    if !netlab::prerequisites("bird_med_gtsm_passive", &["ip", "bird", "birdc"]) {
        return;
    }
    let mut lab = lan("bg");
    // pier first: BIRD connects as soon as it starts.
    let cfg = pier_config(
        &lab,
        &PierOpts {
            extra_peer: "passive = true\ngtsm = true",
            pool_extra: "med = 250",
            ..PierOpts::default()
        },
    );
    start_pier(&mut lab, &cfg);
    let bird = bird_config(
        &lab,
        "ttl security on;\n  connect delay time 1;\n  connect retry time 1;",
    );
    let text = std::fs::read_to_string(&bird)
        .unwrap()
        .replace("  passive on;\n", "");
    assert!(!text.contains("passive on"), "{text}");
    let bird = lab.write("bird.conf", &text);
    start_bird(&mut lab, &bird);
    wait_gateways(
        &lab,
        "-4",
        "192.0.2.10",
        &["10.0.0.11", "10.0.0.12", "10.0.0.13"],
        "routes over a GTSM session the router opened",
    );
    let all = birdc(&lab, "show route 192.0.2.10/32 all");
    assert!(all.contains("BGP.med: 250"), "{all}");
    // The router opened the connection: its source port is 179 on pier's side.
    let (_, ss) = lab.try_sh("gw", "ss -tnH state established '( sport = :179 )'");
    assert!(
        ss.contains("10.0.0.1:"),
        "pier did not accept the router's connection: {ss}"
    );
    // GTSM: the router sends with TTL 255 and checks it (BIRD logs nothing
    // else); a GTSM mismatch would have kept the session down.
    let protocols = birdc(&lab, "show protocols all pier");
    assert!(protocols.contains("Established"), "{protocols}");
}

/// eBGP multihop: the router two hops away through a forwarding
/// namespace; `multihop_ttl = 2` on pier, `multihop 2` on BIRD.
#[test]
fn bird_ebgp_multihop_through_a_forwarding_namespace() {
    if !netlab::prerequisites("bird_multihop", &["ip", "bird", "birdc"]) {
        return;
    }
    let mut lab = Lab::new("bm");
    for h in ["gw", "m", "r"] {
        lab.bare_host(h);
    }
    lab.link(
        "gw",
        "eth0",
        &["10.1.0.2/24"],
        "m",
        "eth0",
        &["10.1.0.1/24"],
    );
    lab.link("m", "eth1", &["10.2.0.1/24"], "r", "eth0", &["10.2.0.2/24"]);
    lab.sh("gw", "ip route add default via 10.1.0.1");
    lab.sh("r", "ip route add default via 10.2.0.1");
    lab.sh("m", "sysctl -qw net.ipv4.ip_forward=1");
    let text = format!(
        r#"log "{dir}/bird-log" all;
router id 10.2.0.2;
protocol device {{ scan time 1; }}
protocol static {{ ipv4; route 10.0.0.0/24 via 10.2.0.1; route 10.1.0.0/24 via 10.2.0.1; }}
protocol kernel k4 {{ ipv4 {{ export filter {{ if proto = "pier" then accept; reject; }}; import none; }}; merge paths on; }}
protocol bgp pier {{
  local 10.2.0.2 as 65000;
  neighbor 10.1.0.2 as 65010;
  multihop 2;
  passive on;
  hold time 9;
  ipv4 {{ import all; export none; add paths rx; }};
}}
"#,
        dir = path_str(&lab.dir)
    );
    let bird = lab.write("bird.conf", &text);
    start_bird(&mut lab, &bird);
    let cfg = pier_config(
        &lab,
        &PierOpts {
            peer_address: "10.2.0.2",
            extra_peer: "multihop_ttl = 2\nfamilies = [\"ipv4\"]",
            ..PierOpts::default()
        },
    );
    start_pier(&mut lab, &cfg);
    wait_for(
        "multihop session Established",
        Duration::from_secs(30),
        || {
            let p = birdc(&lab, "show protocols all pier");
            if p.contains("Established") {
                Ok(())
            } else {
                Err(format!("{p}\n{}", lab.log("pier")))
            }
        },
    );
    wait_for("the VIP at the router", Duration::from_secs(30), || {
        let r = birdc(&lab, "show route 192.0.2.10/32 all");
        if r.contains("192.0.2.10/32") && r.contains("BGP.as_path: 65010") {
            Ok(())
        } else {
            Err(r)
        }
    });
    // One hop more than configured is refused: TTL 1 would not reach.
    let cfg = pier_config(
        &lab,
        &PierOpts {
            peer_address: "10.2.0.2",
            extra_peer: "families = [\"ipv4\"]",
            ..PierOpts::default()
        },
    );
    assert!(cfg.exists());
    lab.signal("pier", libc::SIGHUP);
    wait_for("session down with TTL 1", Duration::from_secs(30), || {
        let p = birdc(&lab, "show protocols pier");
        if p.contains("Established") {
            Err(p)
        } else {
            Ok(())
        }
    });
    std::thread::sleep(Duration::from_secs(3));
    let p = birdc(&lab, "show protocols pier");
    assert!(
        !p.contains("Established"),
        "an eBGP session with TTL 1 crossed a router: {p}"
    );
}
