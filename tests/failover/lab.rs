//! The two-gateway failover lab, shared by `tests/failover.rs` and
//! `benches/failover.rs`: two real `pier` gateways with the same static
//! services peer with one router (BIRD 2, or FRR's zebra + bgpd (+ bfdd));
//! a client loads a `nodes` VIP and a `self` VIP; one gateway freezes the
//! way a hung box does.
//!
//! ```text
//!  c (client) 10.0.0.50 ─┐
//!  r (router) 10.0.0.1  ─┤ LAN 10.0.0.0/24; the client reaches
//!  gw  (pier) 10.0.0.2  ─┤ 192.0.2.0/24 through the router, which
//!  gw2 (pier) 10.0.0.3  ─┤ hashes flows over its ECMP next hops (L4)
//!  n1..n3     10.0.0.11-13 ┘ kube-proxy stand-ins (nft DNAT of VIP:80)
//! ```
//!
//! - `nodes` VIP 192.0.2.10: each gateway sends the router one path per
//!   node (ADD-PATH); the router forwards to the nodes.
//! - `self` VIP 192.0.2.20: each gateway sends itself as next hop; the
//!   router spreads flows over the two gateways, which forward to the
//!   nodes.
//! - Freeze: pier SIGSTOPped and every frame to or from the gateway
//!   dropped in its namespace (nftables netdev ingress + output), links up.
//!   Thaw: the reverse.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::netlab::{self, path_str, wait_for, Lab};

pub const NODES_VIP: &str = "192.0.2.10";
pub const SELF_VIP: &str = "192.0.2.20";
pub const GATEWAYS: [(&str, &str); 2] = [("gw", "10.0.0.2"), ("gw2", "10.0.0.3")];
const NODES: [(&str, &str); 3] = [
    ("n1", "10.0.0.11"),
    ("n2", "10.0.0.12"),
    ("n3", "10.0.0.13"),
];
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The router's BGP (and BFD) implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Router {
    Bird,
    Frr,
}

pub fn prerequisites(test: &str) -> bool {
    prerequisites_for(test, Router::Bird)
}

pub fn prerequisites_for(test: &str, router: Router) -> bool {
    let programs: &[&str] = match router {
        Router::Bird => &["ip", "bird", "birdc", "nft", "python3"],
        Router::Frr => &["ip", "zebra", "bgpd", "bfdd", "vtysh", "nft", "python3"],
    };
    netlab::prerequisites(test, programs)
}

/// Detection settings of one run.
#[derive(Debug, Clone, Copy)]
pub struct Detection {
    /// BGP hold time on both sides (seconds).
    pub hold_time: u16,
    /// BFD interval (ms, both directions) and multiplier; `None`: no BFD.
    pub bfd: Option<(u32, u8)>,
}

impl Detection {
    pub fn label(&self) -> String {
        match self.bfd {
            Some((ms, m)) => format!("BFD {ms} ms × {m}, hold {} s", self.hold_time),
            None => format!("no BFD, hold {} s", self.hold_time),
        }
    }
}

pub struct FailoverLab {
    pub lab: Lab,
    pub pier: Vec<String>,
    pub router: Router,
}

impl FailoverLab {
    /// The lab with a BIRD router.
    pub fn new(tag: &str, pier_bin: &str, d: Detection) -> FailoverLab {
        FailoverLab::with_router(tag, pier_bin, d, Router::Bird)
    }

    pub fn with_router(tag: &str, pier_bin: &str, d: Detection, router: Router) -> FailoverLab {
        let mut lab = Lab::new(tag);
        lab.host("r", &["10.0.0.1/24"]);
        for (g, ip) in GATEWAYS {
            lab.host(g, &[&format!("{ip}/24")]);
        }
        for (n, ip) in NODES {
            lab.host(n, &[&format!("{ip}/24")]);
        }
        lab.host("c", &["10.0.0.50/24"]);
        lab.sh("c", "ip route add 192.0.2.0/24 via 10.0.0.1");
        lab.sh(
            "r",
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 \
             net.ipv4.conf.eth0.send_redirects=0 net.ipv4.fib_multipath_hash_policy=1",
        );
        let node_http = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lab/node_http.py");
        for (n, ip) in NODES {
            // One client opens thousands of connections a trial, each from
            // a new port; after ~28,000 (five or six trials of a bench) its
            // ports come round again while the node still holds the old
            // connection in TIME_WAIT, and now and then the new SYN is not
            // answered within the client's 200 ms: a failed request no
            // routing change caused (seen only after the fifth trial of a
            // lab). No TIME_WAIT on the nodes: real nodes serve many
            // clients, not one reusing its ports within seconds.
            lab.sh(n, "sysctl -qw net.ipv4.tcp_max_tw_buckets=0");
            lab.sh(
                n,
                &format!(
                    "nft -f - <<'EOF'
table inet kubeproxy {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr 192.0.2.0/24 tcp dport 80 dnat ip to {ip}:8080
    }}
}}
EOF"
                ),
            );
            lab.spawn(
                n,
                &format!("http-{n}"),
                &["/usr/bin/python3", node_http, n, ip, "8080", "10256"],
            );
        }
        match router {
            Router::Bird => start_bird(&mut lab, d),
            Router::Frr => start_frr(&mut lab, d),
        }
        let bfd_keys = match d.bfd {
            Some((ms, m)) => format!(
                "bfd = true\nbfd_min_rx_ms = {ms}\nbfd_min_tx_ms = {ms}\nbfd_multiplier = {m}\n"
            ),
            None => String::new(),
        };
        let nodes: Vec<String> = NODES.iter().map(|(_, ip)| format!("\"{ip}\"")).collect();
        let mut pier = Vec::new();
        for (g, ip) in GATEWAYS {
            let text = format!(
                r#"[gateway]
router_id = "{ip}"
state_dir = "{dir}/state-{g}"
api_socket = "{dir}/{g}.sock"
metrics_listen = "127.0.0.1:0"
shutdown = "withdraw"

[bgp]
asn = 65010
graceful_restart = false

[[bgp.peers]]
address = "10.0.0.1"
asn = 65000
hold_time = {hold}
connect_retry_s = 1
{bfd_keys}
[[pools]]
name = "nodes"
addresses = ["192.0.2.0/28"]
mode = "bgp"
next_hop = "nodes"

[[pools]]
name = "self"
addresses = ["192.0.2.16/28"]
mode = "bgp"
next_hop = "self"

[[static_services]]
name = "shop/nodes"
pool = "nodes"
ip = "{NODES_VIP}"
ports = ["80/tcp"]
nodes = [{nodes}]
health = "none"

[[static_services]]
name = "shop/self"
pool = "self"
ip = "{SELF_VIP}"
ports = ["80/tcp"]
nodes = [{nodes}]
health = "none"
"#,
                dir = path_str(&lab.dir),
                hold = d.hold_time,
                nodes = nodes.join(", "),
            );
            let cfg = lab.write(&format!("{g}.toml"), &text);
            let name = format!("pier-{g}");
            lab.spawn(g, &name, &[pier_bin, "run", "--config", &path_str(&cfg)]);
            pier.push(name);
        }
        let fl = FailoverLab { lab, pier, router };
        fl.wait_both_gateways();
        fl
    }

    pub fn birdc(&self, cmd: &str) -> String {
        let sock = path_str(&self.lab.dir.join("bird.ctl"));
        self.lab.try_sh("r", &format!("birdc -s {sock} {cmd}")).1
    }

    pub fn vtysh(&self, cmd: &str) -> String {
        let dir = path_str(&self.lab.dir);
        self.lab
            .try_sh("r", &format!("vtysh --vty_socket {dir} -c '{cmd}'"))
            .1
    }

    /// The router's sessions, for failure messages.
    pub fn router_sessions(&self) -> String {
        match self.router {
            Router::Bird => self.birdc("show protocols"),
            Router::Frr => self.vtysh("show bgp summary") + &self.vtysh("show bfd peers"),
        }
    }

    /// The router's next hops for a VIP.
    pub fn router_hops(&self, vip: &str) -> Vec<String> {
        netlab::route_gateways(&self.lab, "r", "-4", vip)
    }

    fn wait_hops(&self, vip: &str, want: &[&str], what: &str) {
        wait_for(what, PATIENCE, || {
            let got = self.router_hops(vip);
            if got == want {
                Ok(())
            } else {
                Err(format!(
                    "{got:?}, want {want:?}\n{}\ngw log:\n{}",
                    self.router_sessions(),
                    self.lab.log("pier-gw")
                ))
            }
        });
    }

    /// Both gateways' sessions up: the `self` VIP over both, the `nodes`
    /// VIP over the three nodes.
    pub fn wait_both_gateways(&self) {
        self.wait_hops(
            SELF_VIP,
            &["10.0.0.2", "10.0.0.3"],
            "self VIP over both gateways",
        );
        self.wait_hops(
            NODES_VIP,
            &["10.0.0.11", "10.0.0.12", "10.0.0.13"],
            "nodes VIP over the three nodes",
        );
    }

    /// Freezes `gw`: its pier stopped, its frames dropped; returns when
    /// the drop is in place (the instant the outage starts).
    pub fn freeze(&self) -> Instant {
        self.lab.signal("pier-gw", libc::SIGSTOP);
        self.lab.sh(
            "gw",
            "nft -f - <<'EOF'
table netdev freeze {
    chain in { type filter hook ingress device \"eth0\" priority -500; policy drop; }
}
table inet freeze {
    chain out { type filter hook output priority -500; policy drop; }
}
EOF",
        );
        Instant::now()
    }

    /// Waits until the router sends the `self` VIP to `gw2` alone.
    pub fn wait_router_dropped_gw(&self) {
        self.wait_hops(SELF_VIP, &["10.0.0.3"], "router to drop the frozen gateway");
    }

    pub fn thaw(&self) {
        self.lab.sh(
            "gw",
            "nft delete table netdev freeze; nft delete table inet freeze",
        );
        self.lab.signal("pier-gw", libc::SIGCONT);
    }
}

/// BIRD in `r`: passive, ADD-PATH receive, ECMP merged into the kernel.
fn start_bird(lab: &mut Lab, d: Detection) {
    let (bfd_proto, bfd_on) = match d.bfd {
            Some((ms, m)) => (
                format!(
                    "protocol bfd {{\n  interface \"eth0\" {{ min rx interval {ms} ms; min tx interval {ms} ms; multiplier {m}; }};\n}}"
                ),
                "bfd on;",
            ),
            None => (String::new(), ""),
        };
    // `error wait time`: BIRD waits 60 s by default before it takes a
    // peer back after repeated errors (a hold timer expiry or a BFD
    // Down is one); shortened so a thawed gateway returns promptly.
    let conf = lab.write(
        "bird.conf",
        &format!(
            r#"log "{dir}/bird-log" all;
router id 10.0.0.1;
protocol device {{ scan time 1; }}
protocol kernel k4 {{ ipv4 {{ export all; import none; }}; merge paths on; }}
{bfd_proto}
template bgp gws {{
  local 10.0.0.1 as 65000;
  passive on;
  hold time {hold};
  error wait time 1, 5;
  {bfd_on}
  ipv4 {{ import all; export none; add paths rx; }};
}}
protocol bgp gw1 from gws {{ neighbor 10.0.0.2 as 65010; }}
protocol bgp gw2 from gws {{ neighbor 10.0.0.3 as 65010; }}
"#,
            dir = path_str(&lab.dir),
            hold = d.hold_time,
        ),
    );
    let sock = path_str(&lab.dir.join("bird.ctl"));
    lab.spawn(
        "r",
        "bird",
        &["bird", "-f", "-c", &path_str(&conf), "-s", &sock],
    );
}

/// FRR in `r` (zebra, bgpd, and bfdd when `d.bfd`): passive, ECMP over
/// up to 8 paths (bgpd receives ADD-PATH by default). Each neighbor has
/// its `update-source`: with its source address known from the start,
/// bgpd does not re-create its BFD session (and take BGP down) once BGP
/// is up (as in `tests/bgp_interop.rs`, `frr_bgp_with_bfd`).
fn start_frr(lab: &mut Lab, d: Detection) {
    let profile = match d.bfd {
        Some((ms, m)) => format!(
            "bfd\n profile fast\n  receive-interval {ms}\n  transmit-interval {ms}\n  detect-multiplier {m}\n !\n!"
        ),
        None => String::new(),
    };
    let keepalive = (d.hold_time / 3).max(1);
    let mut neighbors = String::new();
    let mut activate = String::new();
    for (_, ip) in GATEWAYS {
        neighbors += &format!(
            " neighbor {ip} remote-as 65010\n neighbor {ip} passive\n \
             neighbor {ip} timers {keepalive} {hold}\n neighbor {ip} update-source 10.0.0.1\n",
            hold = d.hold_time
        );
        if d.bfd.is_some() {
            neighbors += &format!(" neighbor {ip} bfd\n neighbor {ip} bfd profile fast\n");
        }
        activate += &format!("  neighbor {ip} activate\n");
    }
    lab.write(
        "frr.conf",
        &format!(
            "frr defaults traditional\nhostname r\nlog file {dir}/frr-log informational\n!\n{profile}\n\
             router bgp 65000\n bgp router-id 10.0.0.1\n no bgp ebgp-requires-policy\n \
             no bgp default ipv4-unicast\n{neighbors} address-family ipv4 unicast\n{activate}  \
             maximum-paths 8\n exit-address-family\n!\n",
            dir = path_str(&lab.dir),
        ),
    );
    let daemons: &[&str] = if d.bfd.is_some() {
        &["bfdd", "bgpd"]
    } else {
        &["bgpd"]
    };
    netlab::start_frr_daemons(lab, "r", daemons);
}

/// One client request: when it started, whether it got an HTTP 200, and
/// if not, at which step it failed.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub start: Instant,
    pub ok: bool,
    pub failure: Option<Failure>,
}

/// Where a failed request stopped: a refused or reset connection is a
/// node that never saw it (misrouted); a timeout is a lost or slow packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    ConnectTimeout,
    ConnectRefused,
    Write,
    Reset,
    NoAnswer,
}

/// A client loop in `c`: one new TCP connection per request to `vip:80`
/// (connect timeout 200 ms, answer within 1 s), back to back.
pub struct Load {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Request>>>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    pub fn start(lab: &Lab, vip: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let ns = lab.ns("c");
        let addr: SocketAddr = format!("{vip}:80").parse().expect("VIP");
        let (s, l) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            netlab::enter(&ns);
            while !s.load(Ordering::Relaxed) {
                let start = Instant::now();
                let failure = request(addr).err();
                let ok = failure.is_none();
                if let Ok(mut v) = l.lock() {
                    v.push(Request { start, ok, failure });
                }
                if !ok {
                    // A refused connection fails at once: pace the retries.
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        Load {
            stop,
            log,
            thread: Some(thread),
        }
    }

    /// Requests so far.
    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().map(|v| v.clone()).unwrap_or_default()
    }

    pub fn stop(mut self) -> Vec<Request> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.requests()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn request(addr: SocketAddr) -> Result<(), Failure> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).map_err(|e| {
            match e.kind() {
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                    Failure::ConnectTimeout
                }
                _ => Failure::ConnectRefused,
            }
        })?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
    s.write_all(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")
        .map_err(|_| Failure::Write)?;
    let mut buf = Vec::new();
    match s.read_to_end(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Err(Failure::Reset),
        _ => {}
    }
    if buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(Failure::NoAnswer)
    }
}

/// The failures among `reqs` in the window of [`outage`], with how long
/// after `from` each started (for messages).
pub fn failures(reqs: &[Request], from: Instant, to: Option<Instant>) -> Vec<(Duration, Failure)> {
    reqs.iter()
        .filter(|r| r.start >= from && to.is_none_or(|t| r.start < t))
        .filter_map(|r| r.failure.map(|f| (r.start.duration_since(from), f)))
        .collect()
}

/// Failed requests among `reqs` started at or after `from` (and before
/// `to`, if given), and how long after `from` the last failed one started
/// (zero when none failed): how long the router still sent new flows to
/// the dead gateway.
pub fn outage(reqs: &[Request], from: Instant, to: Option<Instant>) -> (usize, usize, Duration) {
    let window: Vec<&Request> = reqs
        .iter()
        .filter(|r| r.start >= from && to.is_none_or(|t| r.start < t))
        .collect();
    let failed: Vec<&&Request> = window.iter().filter(|r| !r.ok).collect();
    let last = failed
        .iter()
        .map(|r| r.start.duration_since(from))
        .max()
        .unwrap_or_default();
    (window.len(), failed.len(), last)
}
