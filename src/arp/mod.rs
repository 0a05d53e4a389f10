//! ARP and NDP responder for `l2` pools.
//!
//! For every interface named by an `l2` announcement
//! ([`AnnounceMode::L2`]) in the [`Desired`] state, one task owns two
//! AF_PACKET sockets on that interface and answers
//! - ARP requests (RFC 826) for the IPv4 VIPs announced on it, and
//! - neighbour solicitations (RFC 4861) for its IPv6 VIPs, after joining
//!   their solicited-node multicast groups,
//!
//! with that interface's MAC, and nothing else: requests for other
//! addresses and requests for a VIP arriving on another interface are
//! ignored. A VIP newly owned is announced with gratuitous ARP / unsolicited
//! neighbour advertisements (override flag), three times a second apart, then
//! refreshed about once a minute ([`announce::Schedule`]).
//!
//! ```text
//!  update(&Desired) ──owned VIPs per interface──► watch ──► interface task ─┬─ recv ARP/NS ─► parse_request ─► owned? ─► build_reply ─► send
//!  (any thread)       (swapped atomically)                   (one per l2     └─ Announcer due ─► build_gratuitous ─► send
//!                                                             interface)
//! ```
//!
//! Whether to answer is decided against the owned set as it is when the
//! request is read, so a released VIP stops being answered at once.
//! Interface tasks are level-triggered: a missing interface, a deleted
//! one or a changed MAC makes the task reopen its sockets every
//! [`ArpConfig::reopen`] until it works.
//!
//! Parsing and building of frames ([`frame`]) and the announcement plan
//! ([`announce`]) are pure; only [`socket`] and the task touch the kernel.
//!
//! Limits, on purpose: solicitations behind IPv6 extension headers are not
//! seen (the socket filter reads ICMPv6 right after the fixed header; NS is
//! never sent that way); another host's gratuitous ARP for a VIP is not
//! answered (no ARP duel). The VIPs must not be local addresses of the box:
//! the kernel would answer for them too (by default on every interface,
//! `arp_ignore = 0`).
//!
//! ```no_run
//! # async fn f(desired: pier::model::Desired) {
//! use pier::arp::{ArpConfig, ArpResponder};
//! let arp = ArpResponder::spawn(ArpConfig::default());
//! arp.update(&desired);
//! for (interface, c) in arp.counters() {
//!     println!("{interface}: {} replies, {} gratuitous", c.replies, c.gratuitous);
//! }
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::model::{AnnounceMode, Desired};

pub mod announce;
pub mod frame;
pub mod socket;
pub mod task;

pub use announce::{Announcer, Schedule};
pub use frame::{build_gratuitous, build_reply, parse_request, Mac, Request};

use socket::{Link, PacketSocket};

#[derive(Debug, thiserror::Error)]
pub enum ArpError {
    #[error("{what} truncated: {len} octets, need {need}")]
    Truncated {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("malformed {what}: {why}")]
    Malformed { what: &'static str, why: String },
    #[error("interface {interface:?}: {why}")]
    Interface { interface: String, why: String },
    #[error("interface {interface:?}: {op}: {source}")]
    Io {
        interface: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl ArpError {
    /// Short label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ArpError::Truncated { .. } => "truncated",
            ArpError::Malformed { .. } => "malformed",
            ArpError::Interface { .. } => "interface",
            ArpError::Io { .. } => "io",
        }
    }

    /// Count it in `pier_errors_total{component="arp"}`.
    fn count(&self) {
        crate::metrics::count_error("arp", self.metric_label());
    }
}

/// Responder settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpConfig {
    pub schedule: Schedule,
    /// How often a task whose interface is missing or broken retries, and
    /// how often a working task checks its interface's index and MAC.
    pub reopen: Duration,
}

impl Default for ArpConfig {
    fn default() -> Self {
        ArpConfig {
            schedule: Schedule::default(),
            reopen: Duration::from_secs(5),
        }
    }
}

/// Counters of one interface (since the responder started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InterfaceCounters {
    /// ARP replies and solicited neighbour advertisements sent.
    pub replies: u64,
    /// Gratuitous ARPs and unsolicited neighbour advertisements sent.
    pub gratuitous: u64,
    /// Frames that claimed to be ARP/NDP but were malformed.
    pub malformed: u64,
    /// Requests for addresses this interface does not own (ignored).
    pub ignored: u64,
    /// Failed sends, socket opens and multicast joins.
    pub errors: u64,
    /// Whether the sockets are open and serving right now.
    pub serving: bool,
}

#[derive(Debug, Default)]
struct Stats {
    replies: AtomicU64,
    gratuitous: AtomicU64,
    malformed: AtomicU64,
    ignored: AtomicU64,
    errors: AtomicU64,
    serving: std::sync::atomic::AtomicBool,
}

impl Stats {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn read(&self) -> InterfaceCounters {
        InterfaceCounters {
            replies: self.replies.load(Ordering::Relaxed),
            gratuitous: self.gratuitous.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            ignored: self.ignored.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            serving: self.serving.load(Ordering::Relaxed),
        }
    }
}

type Owned = Arc<BTreeSet<IpAddr>>;

struct InterfaceTask {
    owned: watch::Sender<Owned>,
    handle: JoinHandle<()>,
}

/// The VIPs each interface must answer for, from the `l2` announcements.
pub fn owned_by_interface(desired: &Desired) -> BTreeMap<String, BTreeSet<IpAddr>> {
    let mut out: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
    for a in &desired.announcements {
        if let AnnounceMode::L2 { interface } = &a.mode {
            out.entry(interface.clone()).or_default().insert(a.vip);
        }
    }
    out
}

/// Handle on the running responder. Dropping it stops every interface task.
pub struct ArpResponder {
    cfg: ArpConfig,
    runtime: tokio::runtime::Handle,
    tasks: Mutex<BTreeMap<String, InterfaceTask>>,
    /// Counters outlive the tasks, so a removed interface keeps its totals.
    stats: Mutex<BTreeMap<String, Arc<Stats>>>,
}

impl ArpResponder {
    /// Start a responder with no interfaces; [`ArpResponder::update`] gives
    /// it work. Must be called within a tokio runtime: interface tasks run
    /// there (and their sockets are opened in that runtime's network
    /// namespace).
    pub fn spawn(cfg: ArpConfig) -> ArpResponder {
        Self::spawn_on(cfg, tokio::runtime::Handle::current())
    }

    /// The same, with interface tasks on `runtime`.
    pub fn spawn_on(cfg: ArpConfig, runtime: tokio::runtime::Handle) -> ArpResponder {
        ArpResponder {
            cfg,
            runtime,
            tasks: Mutex::new(BTreeMap::new()),
            stats: Mutex::new(BTreeMap::new()),
        }
    }

    /// Answer for exactly the `l2` VIPs of `desired` from now on. Interfaces
    /// no longer named stop at once; VIPs removed stop being answered at
    /// once; VIPs added are announced. Callable from any thread.
    pub fn update(&self, desired: &Desired) {
        let wanted = owned_by_interface(desired);
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|name, task| {
            let keep = wanted.contains_key(name) && !task.handle.is_finished();
            if !keep {
                // Empty first: a request read before the abort lands is
                // not answered.
                task.owned.send_replace(Arc::new(BTreeSet::new()));
                task.handle.abort();
                info!(interface = %name, "arp: interface no longer in use");
            }
            keep
        });
        for (name, vips) in wanted {
            let vips = Arc::new(vips);
            if let Some(task) = tasks.get(&name) {
                task.owned.send_if_modified(|cur| {
                    let changed = **cur != *vips;
                    if changed {
                        *cur = vips.clone();
                    }
                    changed
                });
                continue;
            }
            let stats = self
                .stats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(name.clone())
                .or_default()
                .clone();
            let (tx, rx) = watch::channel(vips);
            let handle = self
                .runtime
                .spawn(run_interface(name.clone(), rx, stats, self.cfg));
            tasks.insert(name, InterfaceTask { owned: tx, handle });
        }
    }

    /// Counters per interface ever used.
    pub fn counters(&self) -> BTreeMap<String, InterfaceCounters> {
        self.stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, s)| (k.clone(), s.read()))
            .collect()
    }
}

impl Drop for ArpResponder {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(|e| e.into_inner());
        for task in tasks.values() {
            task.owned.send_replace(Arc::new(BTreeSet::new()));
            task.handle.abort();
        }
    }
}

/// Should a request be answered, given what the interface owns?
pub fn should_answer(req: &Request, owned: &BTreeSet<IpAddr>) -> bool {
    !req.is_announcement() && owned.contains(&req.target())
}

async fn run_interface(
    name: String,
    mut owned: watch::Receiver<Owned>,
    stats: Arc<Stats>,
    cfg: ArpConfig,
) {
    loop {
        match Serving::open(&name) {
            Ok(s) => {
                info!(interface = %name, mac = %s.link.mac, "arp: answering on interface");
                let flag = ServingFlag::raise(&stats);
                let r = s.serve(&mut owned, &stats, &cfg).await;
                drop(flag);
                match r {
                    Ok(()) => return,
                    Err(e) => {
                        Stats::bump(&stats.errors);
                        e.count();
                        warn!(interface = %name, error = %e, "arp: reopening interface");
                    }
                }
            }
            Err(e) => {
                Stats::bump(&stats.errors);
                e.count();
                warn!(interface = %name, error = %e, "arp: cannot answer on interface; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.reopen) => {}
            r = owned.changed() => if r.is_err() { return },
        }
    }
}

/// Marks an interface as served while alive; lowered also when the task
/// is aborted mid-serve (dropping the future drops the flag).
struct ServingFlag(Arc<Stats>);

impl ServingFlag {
    fn raise(stats: &Arc<Stats>) -> ServingFlag {
        stats.serving.store(true, Ordering::Relaxed);
        ServingFlag(stats.clone())
    }
}

impl Drop for ServingFlag {
    fn drop(&mut self) {
        self.0.serving.store(false, Ordering::Relaxed);
    }
}

struct Serving {
    name: String,
    link: Link,
    arp: AsyncFd<PacketSocket>,
    nd: AsyncFd<PacketSocket>,
    /// Solicited-node groups joined, with how many owned VIPs need each.
    groups: BTreeMap<Mac, usize>,
}

/// Frames read per wake-up before the task turns to its other work.
const DRAIN_BATCH: usize = 256;

fn io_err(name: &str, op: &'static str, source: io::Error) -> ArpError {
    ArpError::Io {
        interface: name.to_string(),
        op,
        source,
    }
}

/// Errors after which the socket is useless: the interface is gone or
/// changed. Others (a full queue, a lost frame) are counted and passed over.
fn is_fatal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENXIO) | Some(libc::ENODEV) | Some(libc::EBADF)
    )
}

fn register(sock: PacketSocket) -> io::Result<AsyncFd<PacketSocket>> {
    // SAFETY: a PacketSocket owns its descriptor for its whole life and
    // always returns that same descriptor from as_raw_fd.
    unsafe { AsyncFd::register_with_interest(sock, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}

impl Serving {
    fn open(name: &str) -> Result<Serving, ArpError> {
        let link = socket::link(name)?;
        let arp = PacketSocket::arp(name, link)?;
        let nd = PacketSocket::neighbour(name, link)?;
        Ok(Serving {
            name: name.to_string(),
            link,
            arp: register(arp).map_err(|e| io_err(name, "register ARP socket", e))?,
            nd: register(nd).map_err(|e| io_err(name, "register NDP socket", e))?,
            groups: BTreeMap::new(),
        })
    }

    /// Join the solicited-node groups of the owned IPv6 VIPs, leave others.
    fn sync_groups(&mut self, owned: &BTreeSet<IpAddr>, stats: &Stats) {
        let mut want: BTreeMap<Mac, usize> = BTreeMap::new();
        for ip in owned {
            if let IpAddr::V6(v6) = ip {
                *want
                    .entry(Mac::ipv6_multicast(&frame::solicited_node(v6)))
                    .or_default() += 1;
            }
        }
        for mac in self.groups.keys() {
            if !want.contains_key(mac) {
                if let Err(e) = self.nd.get_ref().leave(&self.name, self.link, *mac) {
                    Stats::bump(&stats.errors);
                    e.count();
                    warn!(error = %e, "arp: leaving multicast group {mac}");
                }
            }
        }
        for mac in want.keys() {
            if !self.groups.contains_key(mac) {
                if let Err(e) = self.nd.get_ref().join(&self.name, self.link, *mac) {
                    Stats::bump(&stats.errors);
                    e.count();
                    warn!(error = %e, "arp: joining multicast group {mac}");
                }
            }
        }
        self.groups = want;
    }

    fn send(&self, sock: &PacketSocket, frame: &[u8], stats: &Stats) -> Result<bool, ArpError> {
        match sock.send(frame) {
            Ok(()) => Ok(true),
            Err(e) if is_fatal(&e) => Err(io_err(&self.name, "send", e)),
            Err(e) => {
                Stats::bump(&stats.errors);
                debug!(interface = %self.name, error = %e, "arp: send failed");
                Ok(false)
            }
        }
    }

    /// Read queued frames of `sock` and answer what is ours. Returns
    /// whether the queue is empty: after [`DRAIN_BATCH`] frames it stops, so
    /// a flood of requests cannot keep the task from its other work.
    fn drain(
        &self,
        sock: &PacketSocket,
        owned: &watch::Receiver<Owned>,
        stats: &Stats,
    ) -> Result<bool, ArpError> {
        let mut buf = [0u8; 1600];
        for _ in 0..DRAIN_BATCH {
            let n = match sock.recv(&mut buf) {
                Ok(Some(n)) => n,
                Ok(None) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(&self.name, "recv", e)),
            };
            let req = match parse_request(&buf[..n]) {
                Ok(Some(req)) => req,
                Ok(None) => continue,
                Err(e) => {
                    Stats::bump(&stats.malformed);
                    e.count();
                    debug!(interface = %self.name, error = %e, "arp: dropped frame");
                    continue;
                }
            };
            // Read the owned set now, not earlier: release takes effect at once.
            if !should_answer(&req, &owned.borrow()) {
                Stats::bump(&stats.ignored);
                continue;
            }
            let reply = build_reply(&req, self.link.mac);
            if self.send(sock, &reply, stats)? {
                Stats::bump(&stats.replies);
            }
        }
        Ok(false)
    }

    async fn serve(
        mut self,
        owned: &mut watch::Receiver<Owned>,
        stats: &Stats,
        cfg: &ArpConfig,
    ) -> Result<(), ArpError> {
        let mut announcer = Announcer::new(cfg.schedule);
        let current = owned.borrow_and_update().clone();
        self.sync_groups(&current, stats);
        announcer.sync(&current, tokio::time::Instant::now().into_std());
        let mut check = tokio::time::interval(cfg.reopen);
        check.tick().await;
        loop {
            let next = announcer.next_due().map(tokio::time::Instant::from_std);
            tokio::select! {
                r = owned.changed() => {
                    if r.is_err() {
                        return Ok(());
                    }
                    let current = owned.borrow_and_update().clone();
                    self.sync_groups(&current, stats);
                    announcer.sync(&current, tokio::time::Instant::now().into_std());
                }
                r = self.arp.readable() => {
                    let mut guard = r.map_err(|e| io_err(&self.name, "poll ARP socket", e))?;
                    if self.drain(self.arp.get_ref(), owned, stats)? {
                        guard.clear_ready();
                    }
                }
                r = self.nd.readable() => {
                    let mut guard = r.map_err(|e| io_err(&self.name, "poll NDP socket", e))?;
                    if self.drain(self.nd.get_ref(), owned, stats)? {
                        guard.clear_ready();
                    }
                }
                _ = sleep_until(next), if next.is_some() => {
                    let now = tokio::time::Instant::now().into_std();
                    for vip in announcer.take_due(now) {
                        let sock = match vip {
                            IpAddr::V4(_) => self.arp.get_ref(),
                            IpAddr::V6(_) => self.nd.get_ref(),
                        };
                        if self.send(sock, &build_gratuitous(vip, self.link.mac), stats)? {
                            Stats::bump(&stats.gratuitous);
                        }
                    }
                }
                _ = check.tick() => {
                    let now = socket::link(&self.name)?;
                    if now != self.link {
                        return Err(ArpError::Interface {
                            interface: self.name.clone(),
                            why: format!(
                                "changed (index {} -> {}, MAC {} -> {})",
                                self.link.index, now.index, self.link.mac, now.mac
                            ),
                        });
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Announcement, BgpAttributes, NextHop};
    use std::net::Ipv4Addr;

    fn ann(vip: &str, mode: AnnounceMode) -> Arc<Announcement> {
        Arc::new(Announcement {
            vip: vip.parse().unwrap(),
            pool: "p".into(),
            mode,
            next_hops: Arc::from(vec![NextHop {
                node: "n".into(),
                address: "10.0.0.9".parse().unwrap(),
                labels: Default::default(),
            }]),
            bgp: BgpAttributes::default(),
            services: vec![],
            ports: vec![],
        })
    }

    fn l2(i: &str) -> AnnounceMode {
        AnnounceMode::L2 {
            interface: i.into(),
        }
    }

    #[test]
    fn only_l2_announcements_per_interface() {
        let d = Desired {
            generation: 1,
            announcements: vec![
                ann("10.0.0.1", l2("eth1")),
                ann("10.0.0.2", AnnounceMode::BgpSelf),
                ann("10.0.0.3", l2("eth2")),
                ann("10.0.0.4", AnnounceMode::BgpNodes),
                ann("fd00::1", l2("eth1")),
            ],
        };
        let o = owned_by_interface(&d);
        assert_eq!(o.len(), 2);
        assert_eq!(
            o["eth1"],
            ["10.0.0.1", "fd00::1"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect()
        );
        assert_eq!(o["eth2"].len(), 1);
    }

    #[test]
    fn answers_owned_targets_only() {
        let owned: BTreeSet<IpAddr> = ["10.0.0.1".parse().unwrap()].into();
        let ask = |target: [u8; 4], sender: [u8; 4]| Request::Arp {
            sender_mac: Mac([2, 0, 0, 0, 0, 1]),
            sender_ip: Ipv4Addr::from(sender),
            target_ip: Ipv4Addr::from(target),
        };
        assert!(should_answer(&ask([10, 0, 0, 1], [10, 0, 0, 9]), &owned));
        assert!(
            should_answer(&ask([10, 0, 0, 1], [0, 0, 0, 0]), &owned),
            "RFC 5227 probe"
        );
        assert!(!should_answer(&ask([10, 0, 0, 2], [10, 0, 0, 9]), &owned));
        assert!(
            !should_answer(&ask([10, 0, 0, 1], [10, 0, 0, 1]), &owned),
            "another host's announcement"
        );
        assert!(!should_answer(
            &ask([10, 0, 0, 1], [10, 0, 0, 9]),
            &BTreeSet::new()
        ));
    }

    #[tokio::test]
    async fn missing_interface_counts_errors_and_does_not_serve() {
        let arp = ArpResponder::spawn(ArpConfig {
            reopen: Duration::from_millis(20),
            ..ArpConfig::default()
        });
        let d = Desired {
            generation: 1,
            announcements: vec![ann("10.0.0.1", l2("pier-nosuch0"))],
        };
        arp.update(&d);
        for _ in 0..200 {
            if arp.counters()["pier-nosuch0"].errors >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let c = arp.counters()["pier-nosuch0"];
        assert!(c.errors >= 2, "{c:?}");
        assert!(!c.serving);
        assert_eq!(c.replies + c.gratuitous, 0);
    }
}
