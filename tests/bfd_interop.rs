//! pier's BFD (src/bfd, crates/bfd-wire) against real routers: BIRD 2's
//! `protocol bfd` and FRR's bfdd from Debian's packages, in network
//! namespaces. For each router, over IPv4 and IPv6 single hop:
//!   1. the sessions come Up on both sides;
//!   2. an nftables drop of the router's BFD packets (in the router's
//!      namespace) takes pier's sessions Down with diag "control detection
//!      time expired" — how long that took is printed, not asserted;
//!   3. without the drop they come Up again;
//!   4. removing pier's IPv4 session makes the router see it Down.
//!
//! Multihop (RFC 5883) through one forwarding namespace, with each router.
//! And GTSM (RFC 5881 §5) against hand-made packets: one sent with TTL 64
//! is ignored, one with TTL 255 is taken.

#[path = "common/netlab.rs"]
mod netlab;

use netlab::{path_str, Lab};
use pier::bfd::{BfdHandle, BfdPeer, BfdState, BfdTimers, Diag, Hops, State};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Router .1, pier .2 on 10.0.0.0/24 and fd00::/64.
fn lan(tag: &str) -> Lab {
    let mut lab = Lab::new(tag);
    lab.host("r", &["10.0.0.1/24", "fd00::1/64"]);
    lab.host("gw", &["10.0.0.2/24", "fd00::2/64"]);
    lab
}

fn peer(addr: &str) -> BfdPeer {
    BfdPeer {
        peer: addr.parse().unwrap(),
        local: None,
        hops: Hops::Single,
    }
}

/// pier's defaults, 300 ms / 300 ms / 3 (detection time 900 ms): slow
/// enough that a loaded 2-core CI machine does not flap the session.
fn timers() -> BfdTimers {
    BfdTimers::default()
}

/// A current-thread runtime (call it on a thread inside a namespace).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn wait_state(
    rx: &mut watch::Receiver<BfdState>,
    what: &str,
    f: impl FnMut(&BfdState) -> bool,
    context: impl Fn() -> String,
) -> BfdState {
    let got = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(f))
        .await
        .map(|r| r.map(|s| s.clone()));
    match got {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => panic!("{what}: BFD task stopped\n{}", context()),
        Err(_) => panic!(
            "{what}: timed out, last state {:?}\n{}",
            *rx.borrow(),
            context()
        ),
    }
}

async fn wait_router(what: &str, mut f: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if start.elapsed() > Duration::from_secs(30) => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The router: how to read its view of a peer's session.
trait Router: Sync {
    fn name(&self) -> &'static str;
    /// The router's state of its session to `peer`, lowercase
    /// ("up", "down", "init", …), or all it said when it has none.
    fn session_state(&self, lab: &Lab, peer: &str) -> Result<String, String>;
    fn dump(&self, lab: &Lab) -> String;
}

/// Steps 1–4 of the module doc, with pier running in "gw".
fn up_blackhole_up_remove(lab: &Lab, router: &dyn Router) {
    let name = router.name();
    let context = || format!("{}\nrouter log:\n{}", router.dump(lab), lab.log(name));
    lab.in_host("gw", || {
        runtime().block_on(async {
            let bfd = BfdHandle::spawn();
            let mut v4 = bfd.add_session(peer("10.0.0.1"), timers()).await.unwrap();
            let mut v6 = bfd.add_session(peer("fd00::1"), timers()).await.unwrap();
            let up = |s: &BfdState| s.state == State::Up;
            for (rx, fam) in [(&mut v4, "IPv4"), (&mut v6, "IPv6")] {
                let s = wait_state(rx, &format!("{name} {fam} Up"), up, context).await;
                eprintln!("{name} {fam}: Up, {s:?}");
            }
            for addr in ["10.0.0.2", "fd00::2"] {
                wait_router(&format!("{name} sees {addr} Up"), || {
                    match router.session_state(lab, addr)? {
                        s if s == "up" => Ok(()),
                        s => Err(format!("{s}\n{}", context())),
                    }
                })
                .await;
            }
            // The Poll Sequence brought both sides to 300 ms.
            wait_state(
                &mut v4,
                &format!("{name} 300 ms"),
                |s| s.tx_interval == Duration::from_millis(300),
                context,
            )
            .await;

            // 2. Drop everything the router sends to BFD's port.
            let since = Instant::now();
            lab.sh(
                "r",
                "nft add table inet bfdtest && \
                 nft add chain inet bfdtest out '{ type filter hook output priority 0; }' && \
                 nft add rule inet bfdtest out udp dport 3784 drop",
            );
            for (rx, fam) in [(&mut v4, "IPv4"), (&mut v6, "IPv6")] {
                let s = wait_state(
                    rx,
                    &format!("{name} {fam} Down on blackhole"),
                    |s| s.state != State::Up,
                    context,
                )
                .await;
                eprintln!(
                    "{name} {fam}: blackholed → pier Down after {:?} (detection time {:?}): {s:?}",
                    since.elapsed(),
                    s.detection_time
                );
                assert_eq!(s.state, State::Down, "{name} {fam}");
                assert_eq!(s.diag, Diag::ControlDetectionTimeExpired, "{name} {fam}");
                assert_eq!(s.last_down, Some(Diag::ControlDetectionTimeExpired));
                assert!(s.downs >= 1);
            }

            // 3. Lift it: Up again.
            lab.sh("r", "nft delete table inet bfdtest");
            for (rx, fam) in [(&mut v4, "IPv4"), (&mut v6, "IPv6")] {
                wait_state(rx, &format!("{name} {fam} Up again"), up, context).await;
            }

            // 4. pier removes its IPv4 session: the router sees it Down.
            let since = Instant::now();
            bfd.remove_session(peer("10.0.0.1")).await.unwrap();
            wait_router(&format!("{name} sees 10.0.0.2 Down"), || {
                match router.session_state(lab, "10.0.0.2")? {
                    s if s == "down" => Ok(()),
                    s => Err(format!("{s}\n{}", context())),
                }
            })
            .await;
            eprintln!(
                "{name}: pier removed its session → router Down after {:?}: {}",
                since.elapsed(),
                router.dump(lab)
            );
            // The IPv6 session is untouched.
            assert_eq!(v6.borrow().state, State::Up, "{}", context());
            assert_eq!(router.session_state(lab, "fd00::2").as_deref(), Ok("up"));
        })
    });
}

struct Bird;

impl Router for Bird {
    fn name(&self) -> &'static str {
        "bird"
    }

    fn session_state(&self, lab: &Lab, peer: &str) -> Result<String, String> {
        let out = self.dump(lab);
        // "10.0.0.2   eth0   Up   22:15:00.123   0.300   0.900"
        out.lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(peer)).then(|| f.nth(1).unwrap_or_default().to_lowercase())
            })
            .ok_or(out)
    }

    fn dump(&self, lab: &Lab) -> String {
        let sock = path_str(&lab.dir.join("bird.ctl"));
        lab.try_sh("r", &format!("birdc -s {sock} show bfd sessions"))
            .1
    }
}

/// BIRD in "r" with `protocol bfd { BODY }`.
fn start_bird(lab: &mut Lab, body: &str) {
    let dir = path_str(&lab.dir);
    let conf = lab.write(
        "bird.conf",
        &format!(
            r#"log "{dir}/bird-log" all;
router id 10.0.0.1;
protocol device {{ scan time 1; }}
protocol bfd {{
{body}
}}
"#
        ),
    );
    let sock = path_str(&lab.dir.join("bird.ctl"));
    let conf = path_str(&conf);
    lab.spawn("r", "bird", &["bird", "-f", "-c", &conf, "-s", &sock]);
}

#[test]
fn bird_sessions_up_detection_and_admin_down() {
    if !netlab::prerequisites("bfd_bird", &["ip", "bird", "birdc", "nft"]) {
        return;
    }
    let mut lab = lan("fb");
    start_bird(
        &mut lab,
        r#"  interface "eth0" {
    min rx interval 300 ms;
    min tx interval 300 ms;
    idle tx interval 1000 ms;
    multiplier 3;
  };
  neighbor 10.0.0.2;
  neighbor fd00::2;"#,
    );
    up_blackhole_up_remove(&lab, &Bird);
}

struct Frr;

impl Router for Frr {
    fn name(&self) -> &'static str {
        "bfdd"
    }

    fn session_state(&self, lab: &Lab, peer: &str) -> Result<String, String> {
        let json = vtysh(lab, "show bfd peers json");
        let v: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| format!("{e}: {json}"))?;
        let want: IpAddr = peer.parse().unwrap();
        v.as_array()
            .into_iter()
            .flatten()
            .find(|p| p["peer"].as_str().and_then(|a| a.parse::<IpAddr>().ok()) == Some(want))
            .and_then(|p| p["status"].as_str().map(str::to_lowercase))
            .ok_or(json)
    }

    fn dump(&self, lab: &Lab) -> String {
        vtysh(lab, "show bfd peers")
    }
}

fn vtysh(lab: &Lab, cmd: &str) -> String {
    let dir = path_str(&lab.dir);
    lab.try_sh("r", &format!("vtysh --vty_socket {dir} -c '{cmd}'"))
        .1
}

/// zebra and bfdd in "r" with `bfd` block BODY.
fn start_frr(lab: &mut Lab, body: &str) {
    let dir = path_str(&lab.dir);
    lab.write(
        "frr.conf",
        &format!(
            r#"frr defaults traditional
hostname r
log file {dir}/frr-log debugging
!
bfd
{body}
!
"#
        ),
    );
    netlab::start_frr_daemons(lab, "r", &["bfdd"]);
}

#[test]
fn frr_sessions_up_detection_and_admin_down() {
    if !netlab::prerequisites("bfd_frr", &["ip", "zebra", "bfdd", "vtysh", "nft"]) {
        return;
    }
    let mut lab = lan("ff");
    start_frr(
        &mut lab,
        r#" peer 10.0.0.2
  receive-interval 300
  transmit-interval 300
  detect-multiplier 3
 !
 peer fd00::2
  receive-interval 300
  transmit-interval 300
  detect-multiplier 3
 !"#,
    );
    up_blackhole_up_remove(&lab, &Frr);
}

/// pier in "gw" 10.1.0.2, a forwarding hop "m", the router "r" 10.2.0.2.
fn routed(tag: &str) -> Lab {
    let mut lab = Lab::new(tag);
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
    lab
}

/// RFC 5883 through one forwarding hop: pier with `hops` accepts the
/// router's packets and comes Up; removed, the router sees Down.
fn multihop_up(lab: &Lab, router: &dyn Router, hops: Hops) {
    let name = router.name();
    let context = || format!("{}\nrouter log:\n{}", router.dump(lab), lab.log(name));
    lab.in_host("gw", || {
        runtime().block_on(async {
            let bfd = BfdHandle::spawn();
            let p = BfdPeer {
                peer: "10.2.0.2".parse().unwrap(),
                local: Some("10.1.0.2".parse().unwrap()),
                hops,
            };
            let mut st = bfd.add_session(p.clone(), timers()).await.unwrap();
            let s = wait_state(
                &mut st,
                &format!("{name} multihop Up"),
                |s| s.state == State::Up,
                context,
            )
            .await;
            eprintln!("{name} multihop: Up, {s:?}");
            wait_router(&format!("{name} sees 10.1.0.2 Up"), || {
                match router.session_state(lab, "10.1.0.2")? {
                    s if s == "up" => Ok(()),
                    s => Err(format!("{s}\n{}", context())),
                }
            })
            .await;
            bfd.remove_session(p).await.unwrap();
            wait_router(&format!("{name} sees 10.1.0.2 Down"), || {
                match router.session_state(lab, "10.1.0.2")? {
                    s if s == "down" => Ok(()),
                    s => Err(format!("{s}\n{}", context())),
                }
            })
            .await;
        })
    });
}

#[test]
fn frr_multihop_through_a_router() {
    if !netlab::prerequisites("bfd_frr_multihop", &["ip", "zebra", "bfdd", "vtysh"]) {
        return;
    }
    let mut lab = routed("fm");
    start_frr(
        &mut lab,
        r#" peer 10.1.0.2 multihop local-address 10.2.0.2
  receive-interval 300
  transmit-interval 300
 !"#,
    );
    // FRR sends with TTL 255: it arrives with 254.
    multihop_up(&lab, &Frr, Hops::Multi(2));
}

#[test]
fn bird_multihop_through_a_router() {
    if !netlab::prerequisites("bfd_bird_multihop", &["ip", "bird", "birdc"]) {
        return;
    }
    let mut lab = routed("bm");
    start_bird(
        &mut lab,
        r#"  multihop { min rx interval 300 ms; min tx interval 300 ms; };
  neighbor 10.1.0.2 local 10.2.0.2 multihop on;"#,
    );
    // BIRD sends multihop BFD with the system's default TTL (64), so no
    // TTL check is possible: 255 hops accepts any TTL (docs/bfd.md).
    multihop_up(&lab, &Bird, Hops::Multi(255));
}

/// A Control packet from the "router" 10.0.0.1 to pier's session.
fn hand_made(state: pier_bfd_wire::State, my: u32, your: u32) -> Vec<u8> {
    pier_bfd_wire::encode(&pier_bfd_wire::ControlPacket {
        diag: Diag::None,
        state,
        poll: false,
        fin: false,
        cpi: false,
        demand: false,
        detect_mult: 3,
        my_discr: my,
        your_discr: your,
        desired_min_tx_us: 1_000_000,
        required_min_rx_us: 1_000_000,
        required_min_echo_rx_us: 0,
        auth: None,
    })
}

#[test]
fn gtsm_drops_packets_not_sent_with_ttl_255() {
    if !netlab::prerequisites("bfd_gtsm", &["ip"]) {
        return;
    }
    let lab = lan("fg");
    let (tx, rx) = std::sync::mpsc::channel::<u32>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        // pier in gw: one session to 10.0.0.1; reports its discriminator,
        // then waits for the first state change.
        let gw = lab.ns("gw");
        let pier = s.spawn(move || {
            netlab::enter(&gw);
            runtime().block_on(async {
                let bfd = BfdHandle::spawn();
                let mut st = bfd.add_session(peer("10.0.0.1"), timers()).await.unwrap();
                tx.send(st.borrow().local_discr).unwrap();
                let s = wait_state(
                    &mut st,
                    "GTSM: a state change",
                    |s| s.state != State::Down || s.diag != Diag::None,
                    String::new,
                )
                .await;
                let _ = done_rx.recv_timeout(Duration::from_secs(1));
                s
            })
        });
        let local = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        lab.in_host("r", || {
            let send = |ttl: u32, wire: &[u8]| {
                let sock = std::net::UdpSocket::bind("10.0.0.1:49999").unwrap();
                sock.set_ttl(ttl).unwrap();
                sock.send_to(wire, "10.0.0.2:3784").unwrap();
            };
            // With TTL 64, Init naming pier would take a Down session Up.
            send(64, &hand_made(pier_bfd_wire::State::Init, 7, local));
            // With TTL 255, Down: a Down session goes Init, an Up one Down.
            send(255, &hand_made(pier_bfd_wire::State::Down, 8, 0));
        });
        let _ = done_tx.send(());
        let s = pier.join().unwrap();
        assert_eq!(s.state, State::Init, "TTL 64 packet was taken: {s:?}");
        assert_eq!(s.remote_discr, 8);
    });
}
