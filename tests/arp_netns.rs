//! The ARP/NDP responder against the real kernel: two network namespaces
//! joined by a veth; the responder runs in A on its end, and B's kernel
//! neighbour table says what B learned.
//!
//! Needs root and `ip`; skips with a message without them, fails instead
//! when CI=true.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[path = "common/netlab.rs"]
mod netlab;

use netlab::{arp_ask as ask, arp_request, parse_mac, raw_arp_socket};
use netlab::{in_ns, wait_until};
use pier::arp::{ArpConfig, ArpResponder, Schedule};
use pier::model::{AnnounceMode, Announcement, BgpAttributes, Desired, NextHop};

static COUNTER: AtomicU32 = AtomicU32::new(0);

const MAC_A: &str = "02:00:5e:aa:00:01";
const FAKE_MAC: &str = "02:00:5e:99:99:99";

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sysctl(ns: &str, key: &str, value: &str) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "sh",
            "-c",
            &format!("echo {value} > {path}"),
        ])
        .output()
        .expect("run ip netns exec");
    assert!(
        out.status.success(),
        "sysctl {key}={value} in {ns}: {out:?}"
    );
}

/// Two namespaces `a` and `b`, veth `va` (in a) <-> `vb` (in b), removed on drop.
struct Lab {
    a: String,
    b: String,
    va: String,
    vb: String,
}

impl Lab {
    fn new() -> Lab {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}{}", std::process::id(), n);
        let lab = Lab {
            a: format!("pierarp{id}a"),
            b: format!("pierarp{id}b"),
            va: format!("pa{id}a"),
            vb: format!("pa{id}b"),
        };
        ip(&["netns", "add", &lab.a]);
        ip(&["netns", "add", &lab.b]);
        ip(&[
            "link", "add", &lab.va, "netns", &lab.a, "type", "veth", "peer", "name", &lab.vb,
            "netns", &lab.b,
        ]);
        ip(&["-n", &lab.a, "link", "set", &lab.va, "address", MAC_A, "up"]);
        ip(&["-n", &lab.b, "addr", "add", "10.66.50.2/24", "dev", &lab.vb]);
        ip(&[
            "-n",
            &lab.b,
            "addr",
            "add",
            "fd66:50::2/64",
            "dev",
            &lab.vb,
            "nodad",
        ]);
        ip(&["-n", &lab.b, "link", "set", &lab.vb, "up"]);
        // Give up on unanswered neighbours quickly (3 probes, 100 ms apart).
        sysctl(
            &lab.b,
            &format!("net.ipv4.neigh.{}.retrans_time_ms", lab.vb),
            "100",
        );
        sysctl(
            &lab.b,
            &format!("net.ipv6.neigh.{}.retrans_time_ms", lab.vb),
            "100",
        );
        // Until the kernel's link watch marks both ends up (it can take a
        // second), the veth's queue drops what is sent.
        for (ns, dev) in [(&lab.a, &lab.va), (&lab.b, &lab.vb)] {
            wait_until(&format!("{dev} up"), Duration::from_secs(5), || {
                let out = ip(&["-j", "-n", ns, "link", "show", "dev", dev]);
                out.contains("\"operstate\":\"UP\"")
            });
        }
        lab
    }

    /// B's neighbour entry for `ip`: (lladdr, states), if any.
    fn neigh(&self, addr: IpAddr) -> Option<(Option<String>, Vec<String>)> {
        let fam = if addr.is_ipv4() { "-4" } else { "-6" };
        let out = ip(&["-j", fam, "-n", &self.b, "neigh", "show", "dev", &self.vb]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v.as_array()?.iter().find_map(|e| {
            let dst: IpAddr = e.get("dst")?.as_str()?.parse().ok()?;
            (dst == addr).then(|| {
                let ll = e.get("lladdr").and_then(|l| l.as_str()).map(String::from);
                let states = e
                    .get("state")
                    .and_then(|s| s.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                (ll, states)
            })
        })
    }

    fn lladdr(&self, addr: IpAddr) -> Option<String> {
        self.neigh(addr).and_then(|(ll, _)| ll)
    }

    /// Send one UDP datagram from B to `addr`, which makes B's kernel
    /// resolve it (ARP request / neighbour solicitation).
    fn poke(&self, addr: IpAddr) {
        in_ns(&self.b, move || {
            let bind: SocketAddr = if addr.is_ipv4() {
                "0.0.0.0:0".parse().unwrap()
            } else {
                "[::]:0".parse().unwrap()
            };
            let s = UdpSocket::bind(bind).expect("udp socket in b");
            s.send_to(b"who", SocketAddr::new(addr, 9))
                .expect("send from b");
        });
    }

    /// Link-layer multicast addresses on A's veth (`ip maddr`).
    fn multicast_a(&self) -> String {
        ip(&["-n", &self.a, "maddr", "show", "dev", &self.va])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// The responder, running on its own thread (and tokio runtime) inside A.
struct Responder {
    arp: Arc<ArpResponder>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Responder {
    fn start(ns: &str, cfg: ArpConfig) -> Responder {
        let ns = ns.to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            netlab::enter(&ns);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                tx.send(Arc::new(ArpResponder::spawn(cfg)))
                    .expect("hand over");
                let _ = stopped.await;
            });
        });
        let arp = rx.recv().expect("responder started");
        Responder {
            arp,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn desired(vips: &[(&str, &str)]) -> Desired {
    let mut announcements: Vec<Arc<Announcement>> = vips
        .iter()
        .map(|(vip, interface)| {
            Arc::new(Announcement {
                vip: vip.parse().unwrap(),
                pool: "lan".into(),
                mode: AnnounceMode::L2 {
                    interface: interface.to_string(),
                },
                next_hops: Arc::from(vec![NextHop {
                    node: "n1".into(),
                    address: "10.66.50.11".parse().unwrap(),
                    labels: Default::default(),
                }]),
                bgp: BgpAttributes::default(),
                services: vec![],
                ports: vec![],
            })
        })
        .collect();
    announcements.sort_by_key(|a| a.vip);
    Desired {
        generation: 1,
        announcements,
    }
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// B's kernel gave up on `a` (FAILED) or never had an entry, and in no
/// case holds A's MAC for it.
fn wait_unanswered(lab: &Lab, a: IpAddr) {
    wait_until(
        &format!("{a} to fail in b"),
        Duration::from_secs(10),
        || match lab.neigh(a) {
            None => true,
            Some((_, states)) => states.iter().any(|s| s == "FAILED"),
        },
    );
    assert_ne!(lab.lladdr(a).as_deref(), Some(MAC_A), "{a} resolved to A");
}

#[test]
fn resolves_owned_vips_only_and_stops_on_release() {
    if !netlab::prerequisites("arp_netns", &["ip"]) {
        return;
    }
    let lab = Lab::new();
    // A second interface in A, to own a VIP that must not be answered on va.
    let other = format!("{}x", lab.va);
    let other_peer = format!("{}y", lab.va);
    ip(&[
        "-n",
        &lab.a,
        "link",
        "add",
        &other,
        "type",
        "veth",
        "peer",
        "name",
        &other_peer,
    ]);
    let r = Responder::start(
        &lab.a,
        ArpConfig {
            reopen: Duration::from_millis(200),
            ..ArpConfig::default()
        },
    );
    let (vip4, vip6) = (addr("10.66.50.100"), addr("fd66:50::100"));
    let (elsewhere4, elsewhere6) = (addr("10.66.50.101"), addr("fd66:50::101"));
    let (nobody4, nobody6) = (addr("10.66.50.102"), addr("fd66:50::102"));
    r.arp.update(&desired(&[
        ("10.66.50.100", &lab.va),
        ("fd66:50::100", &lab.va),
        ("10.66.50.101", &other),
        ("fd66:50::101", &other),
    ]));
    wait_until("responder serving", Duration::from_secs(5), || {
        let c = r.arp.counters();
        c.get(&lab.va).is_some_and(|c| c.serving) && c.get(&other).is_some_and(|c| c.serving)
    });
    // Joined the solicited-node group of fd66:50::100 (33:33:ff:00:01:00).
    assert!(
        lab.multicast_a().contains("33:33:ff:00:01:00"),
        "{}",
        lab.multicast_a()
    );

    for a in [vip4, vip6, elsewhere4, elsewhere6, nobody4, nobody6] {
        lab.poke(a);
    }
    wait_until("VIPs resolved in b", Duration::from_secs(5), || {
        lab.lladdr(vip4).as_deref() == Some(MAC_A) && lab.lladdr(vip6).as_deref() == Some(MAC_A)
    });
    for a in [elsewhere4, elsewhere6, nobody4, nobody6] {
        wait_unanswered(&lab, a);
    }
    let c = r.arp.counters()[&lab.va];
    assert!(c.replies >= 2, "{c:?}");
    assert!(
        c.ignored >= 2,
        "requests for other addresses ignored: {c:?}"
    );
    assert_eq!(r.arp.counters()[&other].replies, 0);

    // Release the IPv6 VIP only: its group is left, B's new question about
    // it goes unanswered, the IPv4 VIP is still answered.
    r.arp.update(&desired(&[("10.66.50.100", &lab.va)]));
    wait_until("solicited-node group left", Duration::from_secs(5), || {
        !lab.multicast_a().contains("33:33:ff:00:01:00")
    });
    ip(&["-n", &lab.b, "neigh", "flush", "dev", &lab.vb]);
    ip(&["-n", &lab.b, "-6", "neigh", "flush", "dev", &lab.vb]);
    lab.poke(vip6);
    lab.poke(vip4);
    wait_unanswered(&lab, vip6);
    wait_until("IPv4 VIP still answered", Duration::from_secs(5), || {
        lab.lladdr(vip4).as_deref() == Some(MAC_A)
    });

    // Release everything: the interface is dropped, B gets no answer.
    r.arp.update(&desired(&[]));
    let replies = r.arp.counters()[&lab.va].replies;
    wait_until("interface no longer served", Duration::from_secs(5), || {
        !r.arp.counters()[&lab.va].serving
    });
    ip(&["-n", &lab.b, "neigh", "flush", "dev", &lab.vb]);
    lab.poke(vip4);
    wait_unanswered(&lab, vip4);
    assert_eq!(r.arp.counters()[&lab.va].replies, replies);
}

#[test]
fn takeover_is_announced_gratuitously() {
    if !netlab::prerequisites("arp_netns", &["ip"]) {
        return;
    }
    let lab = Lab::new();
    // B learns from gratuitous ARP without asking (no entry exists yet).
    sysctl(&lab.b, &format!("net.ipv4.conf.{}.arp_accept", lab.vb), "1");
    // B believes the IPv6 VIP is elsewhere; an unsolicited NA with the
    // override flag must correct it (RFC 4861 §7.2.5).
    ip(&[
        "-n",
        &lab.b,
        "-6",
        "neigh",
        "add",
        "fd66:50::100",
        "lladdr",
        FAKE_MAC,
        "dev",
        &lab.vb,
        "nud",
        "stale",
    ]);
    let (vip4, vip6) = (addr("10.66.50.100"), addr("fd66:50::100"));
    assert_eq!(lab.lladdr(vip4), None);
    assert_eq!(lab.lladdr(vip6).as_deref(), Some(FAKE_MAC));

    let r = Responder::start(
        &lab.a,
        ArpConfig {
            schedule: Schedule {
                takeover: 2,
                spacing: Duration::from_millis(200),
                refresh: Duration::from_secs(60),
            },
            reopen: Duration::from_millis(200),
        },
    );
    r.arp.update(&desired(&[
        ("10.66.50.100", &lab.va),
        ("fd66:50::100", &lab.va),
    ]));
    // B sends nothing; only the announcements can teach it A's MAC.
    wait_until(
        "gratuitous announcements learned by b",
        Duration::from_secs(5),
        || lab.lladdr(vip4).as_deref() == Some(MAC_A) && lab.lladdr(vip6).as_deref() == Some(MAC_A),
    );
    wait_until("takeover burst sent", Duration::from_secs(5), || {
        r.arp.counters()[&lab.va].gratuitous >= 4
    });
    let c = r.arp.counters()[&lab.va];
    assert_eq!(c.replies, 0, "nobody asked: {c:?}");
}

/// A raw ARP socket in the current thread's namespace, bound to `dev`.
/// ARP replies checked byte by byte against a request written by hand, and
/// the responder's reply latency measured (printed, not asserted).
#[test]
fn arp_replies_are_exact_and_timed() {
    if !netlab::prerequisites("arp_netns", &["ip"]) {
        return;
    }
    let lab = Lab::new();
    let r = Responder::start(&lab.a, ArpConfig::default());
    r.arp.update(&desired(&[("10.66.50.100", &lab.va)]));
    wait_until("responder serving", Duration::from_secs(5), || {
        r.arp.counters().get(&lab.va).is_some_and(|c| c.serving)
    });
    let vb = lab.vb.clone();
    let mac_b = parse_mac(&{
        let out = ip(&["-j", "-n", &lab.b, "link", "show", "dev", &lab.vb]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["address"].as_str().unwrap().to_string()
    });
    let (latencies, unowned) = in_ns(&lab.b, move || {
        let fd = raw_arp_socket(&vb);
        let req = arp_request(mac_b, [10, 66, 50, 2], [10, 66, 50, 100]);
        let (reply, _) = ask(&fd, &req, [10, 66, 50, 100], Duration::from_secs(2))
            .expect("reply for the owned VIP");
        let mut want = mac_b.to_vec();
        want.extend_from_slice(&parse_mac(MAC_A));
        want.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
        want.extend_from_slice(&parse_mac(MAC_A));
        want.extend_from_slice(&[10, 66, 50, 100]);
        want.extend_from_slice(&mac_b);
        want.extend_from_slice(&[10, 66, 50, 2]);
        assert_eq!(&reply[..42], &want[..], "reply bytes");
        let mut latencies = Vec::new();
        for _ in 0..200 {
            if let Some((_, dt)) = ask(&fd, &req, [10, 66, 50, 100], Duration::from_secs(1)) {
                latencies.push(dt);
            }
        }
        let other = arp_request(mac_b, [10, 66, 50, 2], [10, 66, 50, 77]);
        let unowned = ask(&fd, &other, [10, 66, 50, 77], Duration::from_millis(300));
        (latencies, unowned)
    });
    // The kernel answering for an address of its own, same path, same run.
    ip(&["-n", &lab.a, "addr", "add", "10.66.50.1/24", "dev", &lab.va]);
    let vb = lab.vb.clone();
    let kernel = in_ns(&lab.b, move || {
        let fd = raw_arp_socket(&vb);
        let req = arp_request(mac_b, [10, 66, 50, 2], [10, 66, 50, 1]);
        (0..200)
            .filter_map(|_| ask(&fd, &req, [10, 66, 50, 1], Duration::from_secs(1)))
            .map(|(_, dt)| dt)
            .collect::<Vec<_>>()
    });
    assert!(unowned.is_none(), "answered for an address it does not own");
    assert!(
        latencies.len() >= 190,
        "{} of 200 answered",
        latencies.len()
    );
    for (who, mut l) in [("pier", latencies), ("kernel", kernel)] {
        if l.is_empty() {
            println!("ARP reply latency, {who}: no replies");
            continue;
        }
        l.sort();
        let p = |q: f64| l[((l.len() as f64 - 1.0) * q) as usize];
        println!(
            "ARP reply latency over veth, {who} ({} requests): p50 {:?}, p99 {:?}, max {:?}",
            l.len(),
            p(0.5),
            p(0.99),
            l[l.len() - 1]
        );
    }
}

/// Level-triggered: an interface that does not exist yet is served once it
/// appears, and a changed MAC is picked up and announced.
#[test]
fn late_interface_and_mac_change_are_followed() {
    if !netlab::prerequisites("arp_netns", &["ip"]) {
        return;
    }
    let lab = Lab::new();
    let late = format!("{}l", lab.va);
    let late_b = format!("{}l", lab.vb);
    let r = Responder::start(
        &lab.a,
        ArpConfig {
            schedule: Schedule {
                takeover: 2,
                spacing: Duration::from_millis(200),
                refresh: Duration::from_secs(60),
            },
            reopen: Duration::from_millis(100),
        },
    );
    r.arp.update(&desired(&[("10.66.60.100", &late)]));
    wait_until(
        "open errors for the missing interface",
        Duration::from_secs(5),
        || {
            r.arp
                .counters()
                .get(&late)
                .is_some_and(|c| c.errors >= 2 && !c.serving)
        },
    );

    ip(&[
        "link", "add", &late, "netns", &lab.a, "type", "veth", "peer", "name", &late_b, "netns",
        &lab.b,
    ]);
    ip(&["-n", &lab.a, "link", "set", &late, "address", MAC_A, "up"]);
    ip(&["-n", &lab.b, "addr", "add", "10.66.60.2/24", "dev", &late_b]);
    ip(&["-n", &lab.b, "link", "set", &late_b, "up"]);
    sysctl(&lab.b, &format!("net.ipv4.neigh.{late_b}.locktime"), "0");
    wait_until("late interface served", Duration::from_secs(5), || {
        r.arp.counters()[&late].serving
    });
    for (ns, dev) in [(&lab.a, &late), (&lab.b, &late_b)] {
        wait_until(&format!("{dev} up"), Duration::from_secs(5), || {
            ip(&["-j", "-n", ns, "link", "show", "dev", dev]).contains("\"operstate\":\"UP\"")
        });
    }
    let vip = addr("10.66.60.100");
    let neigh = |lab: &Lab| {
        let out = ip(&["-j", "-4", "-n", &lab.b, "neigh", "show", "dev", &late_b]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v.as_array().and_then(|a| {
            a.iter()
                .find(|e| e["dst"] == "10.66.60.100")
                .and_then(|e| e["lladdr"].as_str().map(String::from))
        })
    };
    lab.poke(vip);
    wait_until(
        "VIP resolved on the late interface",
        Duration::from_secs(5),
        || neigh(&lab).as_deref() == Some(MAC_A),
    );

    const NEW_MAC: &str = "02:00:5e:aa:00:02";
    let before = r.arp.counters()[&late].gratuitous;
    ip(&["-n", &lab.a, "link", "set", &late, "address", NEW_MAC]);
    // B asks nothing: the responder notices the new MAC, reopens and
    // announces it, and B's existing entry follows.
    wait_until("B learned the new MAC", Duration::from_secs(5), || {
        neigh(&lab).as_deref() == Some(NEW_MAC)
    });
    assert!(r.arp.counters()[&late].gratuitous > before);
}
