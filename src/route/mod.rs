//! The gateway's data path: kernel multipath routes and the nftables
//! forwarding firewall for the VIPs whose traffic reaches pier:
//! `next_hop = "self"` and `l2` pools, and `next_hop = "nodes"` pools too,
//! since a peer that did not negotiate ADD-PATH gets pier as next hop.
//!
//! # API
//!
//! ```text
//! let mut route = RouteActuator::start(RouteConfig { lan_interfaces, sysctl, ..Default::default() }).await?;
//!     // checks nft and the sysctls, opens netlink; refuses with a RouteError naming what is wrong
//! route.apply(&desired).await?        // converge routes + nft to a Desired, returns a Report
//! route.run(desired_rx, stop).await   // loop: apply on every new Desired, repair on a timer
//!                                     // and after netlink events (pier's routes, links,
//!                                     // addresses), until `stop` resolves
//! route.shutdown(keep).await?         // keep = false: remove pier's routes and table
//! route::counters().await?            // per-VIP nft counters, for `pier routes`
//! route::installed_routes().await?    // pier's kernel routes, for `pier routes`
//! ```
//!
//! `run` applies whatever the watch holds first: publish into it only once
//! the engine has its first real plan, or a restart would withdraw every
//! route until then. `start` insists on the sysctls: `pier run` starts the
//! actuator at once when the file's pools forward, and otherwise on the
//! first plan that [`needed`] says pier must forward.
//!
//! # Ownership
//!
//! pier owns exactly:
//! - routes in the main table with protocol [`ROUTE_PROTOCOL`] (`ip route
//!   show proto 201`): one per VIP (/32, /128), multipath over the VIP's next
//!   hops;
//! - the nftables table `inet pier` ([`nft::TABLE`]).
//!
//! It reads back only those, changes only the difference, and never touches
//! another route or table. See `docs/datapath.md`.
//!
//! Pure parts: [`kernel::desired_routes`], [`kernel::diff`],
//! [`nft::firewall`], [`nft::render`], [`sysctl::problems`]; the rest is I/O.

pub mod hostfw;
pub mod kernel;
pub mod nexthop;
pub mod nft;
pub mod nftgen;
pub mod sysctl;
pub mod task;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::UnboundedReceiver;
use futures::StreamExt;
use ipnet::IpNet;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::route::RouteProtocol;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::SocketAddr;
use rtnetlink::{Handle, MulticastGroup};
use tokio::task::JoinHandle;

use crate::config::{Flowtable, Forwarding, HostFirewall, NextHopGroups, SysctlMode};
use crate::model::Desired;

pub use kernel::{Conflict, RouteOp, RouteTable};
pub use nft::{Counter, VipCounters};

/// The route protocol number marking pier's kernel routes (`proto 201` in
/// `ip route`). Not assigned in `/etc/iproute2/rt_protos`; add
/// `201 pier` to `/etc/iproute2/rt_protos.d/pier.conf` to see the name.
pub const ROUTE_PROTOCOL: u8 = 201;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("netlink: {op}{}: {source}", dst.map(|d| format!(" {d}")).unwrap_or_default())]
    Netlink {
        op: &'static str,
        dst: Option<IpNet>,
        source: rtnetlink::Error,
    },
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("route {dst}: {detail}")]
    InvalidRoute { dst: IpNet, detail: String },
    #[error("nftables is not usable: {detail}")]
    NftUnavailable { detail: String },
    #[error("nft: {action}: {detail}")]
    Nft {
        action: &'static str,
        detail: String,
    },
    #[error("nexthop objects: {0}")]
    Nexthop(String),
    #[error("sysctls pier needs are not set: {}{detail}", problems.iter().map(|p| format!("{p}; ")).collect::<String>())]
    Sysctl {
        problems: Vec<sysctl::Problem>,
        detail: String,
    },
}

impl RouteError {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            RouteError::Netlink { .. } | RouteError::Socket(_) | RouteError::Nexthop(_) => {
                "netlink"
            }
            RouteError::InvalidRoute { .. } => "invalid_route",
            RouteError::NftUnavailable { .. } | RouteError::Nft { .. } => "nft",
            RouteError::Sysctl { .. } => "sysctl",
        }
    }

    /// Count it in `pier_errors_total{component="route"}`.
    fn count(&self) {
        crate::metrics::count_error("route", self.metric_label());
    }
}

/// How the route actuator runs.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Interfaces pier forwards on (the `l2` pools' interfaces and the node
    /// LAN): `send_redirects` must be 0 there.
    pub lan_interfaces: Vec<String>,
    /// Check the sysctls, or set them.
    pub sysctl: SysctlMode,
    /// Root of the sysctl tree (`/proc/sys`; tests use a directory).
    pub proc_sys: PathBuf,
    /// Re-read and repair routes and the nft table this often.
    pub repair_interval: Duration,
    /// Next-hop groups and host firewall (the `[gateway]` keys).
    pub forwarding: Forwarding,
    /// Where the actuator keeps what `pier status` shows of the data path
    /// (the caller keeps a clone to read it).
    pub status: Arc<std::sync::Mutex<DatapathStatus>>,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            lan_interfaces: Vec::new(),
            sysctl: SysctlMode::Check,
            proc_sys: PathBuf::from("/proc/sys"),
            repair_interval: Duration::from_secs(30),
            forwarding: Forwarding::default(),
            status: Arc::default(),
        }
    }
}

/// What one apply changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Generation of the Desired applied.
    pub generation: u64,
    /// Routes pier wants.
    pub routes: usize,
    pub added: usize,
    pub replaced: usize,
    pub deleted: usize,
    /// Destinations where a route pier does not own blocks pier's.
    pub conflicts: Vec<Conflict>,
    /// Changes the kernel refused, with its reason; retried at the next
    /// repair.
    pub failed: Vec<(IpNet, String)>,
    /// VIPs in the nft table.
    pub firewalled_vips: usize,
    /// Whether this call wrote the nft table (a repair skips it while the
    /// ruleset generation shows no change since pier's last write).
    pub table_written: bool,
}

/// The task reading route multicast events, and its messages.
type RouteEvents = (
    JoinHandle<()>,
    UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
);

/// Level-triggered owner of pier's kernel routes and nft table.
pub struct RouteActuator {
    config: RouteConfig,
    handle: Handle,
    connection: JoinHandle<()>,
    events: Option<RouteEvents>,
    last: Arc<Desired>,
    /// Counter objects in `inet pier` after the last successful nft apply
    /// (`None`: unknown, read it).
    nft_counters: Option<BTreeSet<String>>,
    /// The firewall of the last successful nft apply: a new Desired that
    /// changes only next hops (a node failing) leaves the table alone, so
    /// the route change is not followed by a rewrite of every set.
    nft_applied: Option<(nft::Firewall, nft::Layout)>,
    /// The ruleset generation right after pier's last table write, when
    /// that write is known to be the only change since the one before.
    nft_written: Option<u32>,
    /// Reads the ruleset generation (`None`: not available here; every
    /// repair then rewrites the table).
    nft_generation: Option<nftgen::Generation>,
    /// Interfaces whose `send_redirects` was checked (the configured LAN
    /// interfaces at start, then every interface pier's routes leave by).
    redirects_checked: BTreeSet<String>,
    /// Interface indexes already looked at (no netlink lookup per repair).
    egress_seen: BTreeSet<u32>,
    /// The socket for nexthop objects (`None`: could not be opened).
    nexthops: Option<nexthop::NexthopSocket>,
    /// Resilient groups in use, or multipath routes (and why).
    groups: GroupMode,
    /// What `pier status` shows of the data path.
    status: Arc<std::sync::Mutex<DatapathStatus>>,
}

/// How VIP routes spread over their next hops.
#[derive(Debug, Clone, PartialEq, Eq)]
enum GroupMode {
    Resilient(nexthop::Resilient),
    /// Multipath routes; `Some(reason)` when resilient groups were asked
    /// for and this kernel cannot have them.
    Multipath(Option<String>),
}

/// The data path as `pier status` shows it (kept up to date by the
/// actuator; read it with [`RouteActuator::status`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DatapathStatus {
    /// `resilient` or `multipath`.
    pub next_hop_groups: String,
    /// Why resilient groups are not used although configured.
    pub next_hop_groups_fallback: Option<String>,
    /// Whether this kernel has flowtables (`CONFIG_NF_FLOW_TABLE`):
    /// `None` when it has, else why not.
    pub flowtable_missing: Option<String>,
    /// `software` or `hardware` when accepted VIP flows are offloaded: the
    /// kernel has flowtables, `flowtable` is not "off", and the table last
    /// written holds the flowtable (it is left out when no interface could
    /// be listed).
    pub flowtable_offload: Option<String>,
    /// Other firewalls' forward chains that drop VIP traffic (opened by
    /// pier, or not).
    pub host_firewall: Vec<hostfw::Finding>,
}

impl DatapathStatus {
    /// (table, chain) of every host firewall chain that drops VIP traffic
    /// pier could not open: `/readyz` is not ready while there is one, and
    /// `pier_forward_blocked{table,chain}` is 1 for each.
    pub fn blocked(&self) -> Vec<(String, String)> {
        self.host_firewall
            .iter()
            .filter(|f| !f.opened)
            .map(|f| (f.table.clone(), f.chain.clone()))
            .collect()
    }

    /// One line per finding, for `pier status`.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.next_hop_groups_fallback {
            Some(why) => out.push(format!("next-hop groups: multipath (fallback: {why})")),
            None if !self.next_hop_groups.is_empty() => {
                out.push(format!("next-hop groups: {}", self.next_hop_groups))
            }
            None => {}
        }
        for f in &self.host_firewall {
            if f.opened {
                out.push(format!(
                    "host firewall: {} chain {} drops forwarded traffic; pier's accepts are in it (jump to {})",
                    f.table,
                    f.chain,
                    hostfw::CHAIN
                ));
            } else {
                out.push(format!(
                    "host firewall: {} chain {} DROPS traffic to {} VIP(s) ({}); fix: {}",
                    f.table,
                    f.chain,
                    f.blocked_vips.len(),
                    f.blocked_vips
                        .iter()
                        .take(5)
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    f.fix
                ));
            }
        }
        if let Some(mode) = &self.flowtable_offload {
            out.push(format!(
                "flowtable: {mode} offload of established, accepted VIP flows (flowtable {} in table inet pier)",
                nft::FLOWTABLE
            ));
        }
        if let Some(why) = &self.flowtable_missing {
            out.push(format!(
                "flowtable: not available in this kernel ({why}); every packet takes the full forward path"
            ));
        }
        out
    }
}

/// Names of the interfaces that are up, loopback aside (the devices a
/// flowtable hooks).
async fn interfaces_up(handle: &Handle) -> Result<BTreeSet<String>, RouteError> {
    use futures::TryStreamExt;
    use netlink_packet_route::link::{LinkAttribute, LinkFlags};
    let mut links = handle.link().get().execute();
    let mut out = BTreeSet::new();
    loop {
        match links.try_next().await {
            Ok(Some(link)) => {
                let flags = link.header.flags;
                if !flags.contains(LinkFlags::Up) || flags.contains(LinkFlags::Loopback) {
                    continue;
                }
                out.extend(link.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n),
                    _ => None,
                }));
            }
            Ok(None) => return Ok(out),
            Err(source) => {
                return Err(RouteError::Netlink {
                    op: "list links",
                    dst: None,
                    source,
                })
            }
        }
    }
}

fn open_events() -> Result<RouteEvents, RouteError> {
    let (conn, _handle, messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
    ])
    .map_err(RouteError::Socket)?;
    Ok((tokio::spawn(conn), messages))
}

/// Does a netlink event concern pier's routes (so a repair is due)? A
/// change of pier's own routes, and any link or address change: an
/// interface coming up or getting its address makes next hops reachable
/// that were not (a route add that failed with "Network is unreachable"
/// is retried at once, not at the repair timer).
fn concerns_pier(msg: &NetlinkMessage<RouteNetlinkMessage>) -> bool {
    match &msg.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(r))
        | NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => {
            r.header.protocol == RouteProtocol::from(ROUTE_PROTOCOL)
        }
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewLink(_)
            | RouteNetlinkMessage::DelLink(_)
            | RouteNetlinkMessage::NewAddress(_)
            | RouteNetlinkMessage::DelAddress(_),
        ) => true,
        // Overrun and the like: we may have missed something.
        NetlinkPayload::Error(_) | NetlinkPayload::Overrun(_) => true,
        _ => false,
    }
}

impl RouteActuator {
    /// Check that nftables works and the sysctls are right (or set them),
    /// then open the netlink sockets. Must run inside a tokio runtime; the
    /// sockets belong to the network namespace of the calling thread.
    pub async fn start(config: RouteConfig) -> Result<Self, RouteError> {
        nft::probe().await?;
        let changed = sysctl::ensure(&config.proc_sys, &config.lan_interfaces, config.sysctl)?;
        for key in changed {
            tracing::info!(sysctl = %key, "set sysctl for forwarding");
        }
        let (conn, handle, _) = rtnetlink::new_connection().map_err(RouteError::Socket)?;
        let connection = tokio::spawn(conn);
        let events = Some(open_events()?);
        let mut nexthops = nexthop::NexthopSocket::open()
            .map_err(|e| tracing::warn!(error = %e, "route netlink socket for nexthop objects"))
            .ok();
        let f = &config.forwarding;
        let groups = match (f.next_hop_groups, nexthops.as_mut()) {
            (NextHopGroups::Multipath, _) => GroupMode::Multipath(None),
            (NextHopGroups::Resilient, None) => {
                GroupMode::Multipath(Some("no route netlink socket for nexthop objects".into()))
            }
            (NextHopGroups::Resilient, Some(sock)) => {
                let params = nexthop::Resilient {
                    buckets: f.resilient_buckets,
                    idle_timer_s: f.resilient_idle_timer_s,
                    unbalanced_timer_s: f.resilient_unbalanced_timer_s,
                };
                match nexthop::probe(sock, &params) {
                    Ok(()) => GroupMode::Resilient(params),
                    Err(why) => GroupMode::Multipath(Some(why)),
                }
            }
        };
        let flowtable_missing = nft::probe_flowtable().await.err();
        if let Some(why) = &flowtable_missing {
            tracing::info!("no flowtable offload in this kernel (CONFIG_NF_FLOW_TABLE): {why}");
        }
        let flowtable_offload = match config.forwarding.flowtable {
            _ if flowtable_missing.is_some() => None,
            Flowtable::Off => None,
            Flowtable::Software => Some("software".to_string()),
            Flowtable::Hardware => Some("hardware".to_string()),
        };
        let status = DatapathStatus {
            flowtable_missing,
            flowtable_offload,
            host_firewall: Vec::new(),
            next_hop_groups: match &groups {
                GroupMode::Resilient(p) => format!(
                    "resilient ({} buckets, idle_timer {} s, unbalanced_timer {} s)",
                    p.buckets, p.idle_timer_s, p.unbalanced_timer_s
                ),
                GroupMode::Multipath(_) => "multipath".into(),
            },
            next_hop_groups_fallback: match &groups {
                GroupMode::Multipath(Some(why)) => {
                    tracing::warn!("next_hop_groups = \"resilient\" is not possible here: {why}");
                    Some(why.clone())
                }
                _ => None,
            },
        };
        Ok(RouteActuator {
            nexthops,
            groups,
            status: {
                if let Ok(mut s) = config.status.lock() {
                    *s = status;
                }
                config.status.clone()
            },
            handle,
            connection,
            events,
            last: Arc::new(Desired::default()),
            nft_counters: None,
            nft_applied: None,
            nft_written: None,
            nft_generation: match nftgen::Generation::open() {
                Ok(g) => Some(g),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the nftables ruleset generation; every repair rewrites table inet pier");
                    None
                }
            },
            redirects_checked: config.lan_interfaces.iter().cloned().collect(),
            egress_seen: BTreeSet::new(),
            config,
        })
    }

    /// Converge the kernel routes and the nft table to `desired`. The
    /// table is written only when its content changes (or was never
    /// written by this actuator).
    pub async fn apply(&mut self, desired: &Desired) -> Result<Report, RouteError> {
        self.last = Arc::new(desired.clone());
        self.converge(false).await
    }

    /// Re-read what is installed and repair any drift from the last
    /// applied state. pier does not read its table back: it rewrites it
    /// whole unless the nftables ruleset generation has not moved since its
    /// last write (no transaction in any table since), which is proof that
    /// the table is as pier left it.
    pub async fn repair(&mut self) -> Result<Report, RouteError> {
        self.converge(true).await
    }

    fn ruleset_generation(&mut self) -> Option<u32> {
        let g = self.nft_generation.as_mut()?;
        match g.current() {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::debug!(error = %e, "reading the nftables ruleset generation failed");
                None
            }
        }
    }

    async fn converge(&mut self, repair: bool) -> Result<Report, RouteError> {
        let report = self.converge_table(repair).await?;
        // At start (the first pass is a repair), on every repair and
        // whenever pier's table was written (new VIPs or ports, or the
        // ruleset generation moved).
        if repair || report.table_written {
            self.check_host_firewall().await;
        }
        Ok(report)
    }

    /// Look at the other firewalls on the forward hook; open the iptables
    /// ones with `host_firewall = "open"`; report the rest.
    async fn check_host_firewall(&mut self) {
        let fw = nft::firewall(&self.last);
        let open = self.config.forwarding.host_firewall == HostFirewall::Open;
        let findings = hostfw::check(&fw, open).await;
        let Ok(mut status) = self.status.lock() else {
            return;
        };
        if status.host_firewall != findings {
            for f in &findings {
                if f.opened {
                    tracing::info!(table = %f.table, chain = %f.chain, "host firewall drops forwarded traffic; pier's accepts are in it (jump to {})", hostfw::CHAIN);
                } else {
                    tracing::warn!(table = %f.table, chain = %f.chain, vips = f.blocked_vips.len(), fix = %f.fix, "host firewall drops VIP traffic pier accepts");
                }
            }
        }
        status.host_firewall = findings;
    }

    async fn converge_table(&mut self, repair: bool) -> Result<Report, RouteError> {
        let mut report = self.converge_routes().await?;
        let fw = nft::firewall(&self.last);
        report.firewalled_vips = fw.len();
        let layout = self.table_layout().await;
        if self
            .nft_applied
            .as_ref()
            .is_some_and(|(f, l)| *f == fw && *l == layout)
        {
            if !repair {
                return Ok(report);
            }
            let now = self.ruleset_generation();
            if now.is_some() && now == self.nft_written {
                return Ok(report);
            }
        }
        self.nft_applied = None;
        self.nft_written = None;
        let before = self.ruleset_generation();
        let known = self.nft_counters.take();
        self.nft_counters = Some(nft::apply(&fw, &layout, known.as_ref()).await?);
        let after = self.ruleset_generation();
        // Only one step past the generation before is proof that nobody
        // else committed in between (pier's transaction is one commit).
        self.nft_written = match (before, after) {
            (Some(b), Some(a)) if a == b.wrapping_add(1) => Some(a),
            _ => None,
        };
        // `pier status` says what this write holds, not what the config
        // asked for: the renderer leaves the flowtable out when no
        // interface could be listed.
        if let Ok(mut status) = self.status.lock() {
            status.flowtable_offload = layout.offload_mode().map(str::to_string);
        }
        self.nft_applied = Some((fw, layout));
        report.table_written = true;
        Ok(report)
    }

    /// How the table is built: per-VIP counters as configured; a flowtable
    /// over every interface that is up (VIP traffic and its replies may
    /// cross any of them) where the kernel has flowtables and
    /// `flowtable` is not "off".
    async fn table_layout(&self) -> nft::Layout {
        let f = &self.config.forwarding;
        let has_flowtable = self
            .status
            .lock()
            .map(|s| s.flowtable_missing.is_none())
            .unwrap_or(false);
        let flowtable = if f.flowtable != Flowtable::Off && has_flowtable {
            match interfaces_up(&self.handle).await {
                Ok(devices) => Some(nft::FlowtableSpec {
                    devices,
                    hardware: f.flowtable == Flowtable::Hardware,
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list interfaces for the flowtable; no offload this time");
                    None
                }
            }
        } else {
            None
        };
        nft::Layout {
            vip_counters: f.vip_counters,
            flowtable,
        }
    }

    /// The data path as `pier status` shows it; the actuator updates it.
    pub fn status(&self) -> Arc<std::sync::Mutex<DatapathStatus>> {
        self.status.clone()
    }

    /// Whether VIP routes go through resilient nexthop groups (`false`:
    /// multipath routes, configured or as a fallback).
    pub fn resilient_groups(&self) -> bool {
        matches!(self.groups, GroupMode::Resilient(_))
    }

    /// Kernel routes only (after a route event: the nft table is not
    /// concerned).
    async fn converge_routes(&mut self) -> Result<Report, RouteError> {
        if let GroupMode::Resilient(params) = self.groups {
            return self.converge_groups(params).await;
        }
        let desired = self.last.clone();
        let want = kernel::desired_routes(&desired);
        let (mut current, via_groups, egress) = kernel::dump_full(&self.handle).await?;
        self.check_redirects(&egress).await;
        // A route through a nexthop group (left by resilient mode) is
        // replaced by a multipath route even when its next hops match.
        for dst in via_groups.keys() {
            if let Some(hops) = current.get_mut(dst) {
                hops.clear();
            }
        }
        let ops = kernel::diff(&current, &want);
        let mut report = Report {
            generation: desired.generation,
            routes: want.len(),
            ..Report::default()
        };
        for op in &ops {
            match kernel::execute(&self.handle, op).await {
                Ok(None) => {}
                Ok(Some(c)) => {
                    tracing::warn!(dst = %c.dst, "{}", c.detail);
                    report.conflicts.push(c);
                    continue;
                }
                // One bad route (a next hop not on a connected subnet, say)
                // must not hold up the others.
                Err(e) => {
                    e.count();
                    tracing::warn!(error = %e, "route change failed");
                    report.failed.push((op.dst(), e.to_string()));
                    continue;
                }
            }
            match op {
                RouteOp::Add { .. } => report.added += 1,
                RouteOp::Replace { .. } => report.replaced += 1,
                RouteOp::Delete { .. } => report.deleted += 1,
            }
        }
        // Nexthop objects of pier's left from resilient mode.
        if !via_groups.is_empty() || self.groups == GroupMode::Multipath(None) {
            if let Some(sock) = self.nexthops.as_mut() {
                remove_nexthops(sock);
            }
        }
        Ok(report)
    }

    /// Kernel routes through resilient groups: members for every next hop,
    /// one group per distinct set (changed in place when a set changes),
    /// routes pointing at the groups; then what is no longer used goes.
    async fn converge_groups(&mut self, params: nexthop::Resilient) -> Result<Report, RouteError> {
        let desired = self.last.clone();
        let want = kernel::desired_routes(&desired);
        let (current, via_groups, mut egress) = kernel::dump_full(&self.handle).await?;
        let mut report = Report {
            generation: desired.generation,
            routes: want.len(),
            ..Report::default()
        };
        let Some(sock) = self.nexthops.as_mut() else {
            return Err(RouteError::Nexthop("no route netlink socket".into()));
        };
        let nexthop_err = |e: nexthop::NexthopError| RouteError::Nexthop(e.to_string());
        let installed = nexthop::Installed::from_dump(sock.dump().map_err(nexthop_err)?);
        // The interface each next hop is reached by.
        let mut oifs = BTreeMap::new();
        let mut why_not: BTreeMap<IpAddr, String> = BTreeMap::new();
        for gw in want.values().flatten().collect::<BTreeSet<_>>() {
            match sock.route_to(*gw) {
                Ok(Some(oif)) => {
                    oifs.insert(*gw, oif);
                }
                Ok(None) => {
                    why_not.insert(*gw, "no route to it".into());
                }
                Err(e) => {
                    why_not.insert(*gw, e.to_string());
                }
            }
        }
        let mut taken = installed.taken.clone();
        let (reqs, mut members) = nexthop::plan_members(&installed, &oifs, &mut taken);
        for req in &reqs {
            if let Err(e) = sock.change(req) {
                if let nexthop::Request::Member { gateway, .. } = req {
                    members.remove(gateway);
                    why_not.insert(*gateway, e.to_string());
                }
            }
        }
        egress.extend(oifs.values().copied());
        let plan = nexthop::plan_groups(
            &installed,
            &want,
            &via_groups,
            &members,
            &params,
            &mut taken,
        );
        let mut broken = BTreeSet::new();
        for req in &plan.groups {
            if let Err(e) = sock.change(req) {
                tracing::warn!(error = %e, "nexthop group change failed");
                if let nexthop::Request::Group { id, .. } = req {
                    broken.insert(*id);
                    for (dst, _) in plan.routes.iter().filter(|(_, g)| *g == id) {
                        report.failed.push((*dst, e.to_string()));
                    }
                }
            } else if let nexthop::Request::Group {
                id, replace: true, ..
            } = req
            {
                // A set changed in place: each VIP on the group changed.
                report.replaced += plan
                    .routes
                    .iter()
                    .filter(|(dst, g)| *g == id && via_groups.get(*dst) == Some(id))
                    .count();
            }
        }
        for dst in &plan.unreachable {
            let hops = want.get(dst).into_iter().flatten();
            let detail = hops
                .map(|h| format!("{h}: {}", why_not.get(h).map_or("unknown", |w| w.as_str())))
                .collect::<Vec<_>>()
                .join("; ");
            tracing::warn!(dst = %dst, "no next hop of this VIP is reachable: {detail}");
            report
                .failed
                .push((*dst, format!("no next hop reachable: {detail}")));
        }
        for (dst, id) in &plan.routes {
            if broken.contains(id) || via_groups.get(dst) == Some(id) {
                continue;
            }
            let exists = current.contains_key(dst);
            match kernel::route_via_group(&self.handle, *dst, *id, exists).await {
                Ok(None) if exists => report.replaced += 1,
                Ok(None) => report.added += 1,
                Ok(Some(c)) => {
                    tracing::warn!(dst = %c.dst, "{}", c.detail);
                    report.conflicts.push(c);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "route change failed");
                    report.failed.push((*dst, e.to_string()));
                }
            }
        }
        for dst in current.keys().filter(|d| !want.contains_key(d)) {
            match kernel::execute(&self.handle, &RouteOp::Delete { dst: *dst }).await {
                Ok(_) => report.deleted += 1,
                Err(e) => report.failed.push((*dst, e.to_string())),
            }
        }
        for id in plan.stale_groups.iter().chain(&plan.stale_members) {
            if let Err(e) = sock.change(&nexthop::Request::Delete { id: *id }) {
                if e.errno() != Some(libc::ENOENT) {
                    tracing::debug!(error = %e, "delete nexthop");
                }
            }
        }
        self.check_redirects(&egress).await;
        Ok(report)
    }

    /// `send_redirects` must be 0 on every interface pier forwards out of,
    /// not only the configured ones: a `next_hop = "self"` pool's nodes
    /// may sit behind any interface. Those are known only once pier's
    /// routes exist (the kernel picks the interface), so they are checked
    /// here, each once: set with `sysctl = "set"`, a warning naming the
    /// setting with `sysctl = "check"` (pier is already running).
    async fn check_redirects(&mut self, egress: &BTreeSet<u32>) {
        let new: Vec<u32> = egress.difference(&self.egress_seen).copied().collect();
        for index in &new {
            let name = match kernel::interface_name(&self.handle, *index).await {
                Ok(Some(n)) => n,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, index, "interface name");
                    continue;
                }
            };
            self.egress_seen.insert(*index);
            if self.redirects_checked.contains(&name) || !sysctl::valid_interface(&name) {
                continue;
            }
            let req = [sysctl::interface_requirement(&name)];
            match sysctl::ensure_requirements(&self.config.proc_sys, &req, self.config.sysctl) {
                Ok(changed) => {
                    for key in changed {
                        tracing::info!(sysctl = %key, "set sysctl for forwarding");
                    }
                }
                Err(e) => {
                    e.count();
                    tracing::warn!(interface = %name, "{e}")
                }
            }
            self.redirects_checked.insert(name);
        }
    }

    /// Apply every new Desired from `desired`, repair every
    /// `repair_interval` and soon after a netlink event about pier's
    /// routes or any link or address (see `concerns_pier`), until `stop` resolves or the sender is dropped. Errors are
    /// logged and retried at the next trigger.
    pub async fn run(
        &mut self,
        mut desired: tokio::sync::watch::Receiver<Arc<Desired>>,
        stop: impl Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let period = self.config.repair_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let first = desired.borrow_and_update().clone();
        self.last = first;
        let mut routes_only = false;
        // The first pass and timer repairs check the table (rewritten
        // unless the ruleset generation proves it untouched); a new
        // Desired writes it only when the firewall changed.
        let mut repair = true;
        loop {
            let result = if routes_only {
                self.converge_routes().await
            } else {
                self.converge(repair).await
            };
            routes_only = false;
            repair = false;
            match result {
                Ok(r) if r.added + r.replaced + r.deleted > 0 => tracing::info!(
                    generation = r.generation,
                    added = r.added,
                    replaced = r.replaced,
                    deleted = r.deleted,
                    "routes converged"
                ),
                Ok(_) => {}
                Err(e) => {
                    e.count();
                    tracing::warn!(error = %e, "route reconcile failed; will retry")
                }
            }
            // Wait for the next trigger.
            loop {
                let event = async {
                    match self.events.as_mut() {
                        Some((_, rx)) => rx.next().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = &mut stop => return,
                    changed = desired.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        self.last = desired.borrow_and_update().clone();
                        break;
                    }
                    _ = tick.tick() => {
                        if self.events.is_none() {
                            self.events = open_events().map_err(|e| {
                                e.count();
                                tracing::warn!(error = %e, "route events")
                            }).ok();
                        }
                        repair = true;
                        break;
                    }
                    msg = event => match msg {
                        Some((m, _)) if concerns_pier(&m) => {
                            // Let a burst of events (our own changes, a
                            // flush) settle, then reconcile once.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            if let Some((_, rx)) = self.events.as_mut() {
                                while rx.try_recv().is_ok() {}
                            }
                            routes_only = true;
                            break;
                        }
                        Some(_) => {}
                        None => {
                            tracing::warn!("route event socket closed; relying on the repair timer");
                            if let Some((task, _)) = self.events.take() {
                                task.abort();
                            }
                        }
                    },
                }
            }
        }
    }

    /// Stop. With `keep = false`, remove every pier route and the nft
    /// table; with `keep = true` leave the data path as it is (traffic keeps
    /// flowing while pier restarts).
    pub async fn shutdown(mut self, keep: bool) -> Result<(), RouteError> {
        let result = if keep {
            Ok(())
        } else {
            self.remove_all().await
        };
        if let Some((task, _)) = &self.events {
            task.abort();
        }
        self.connection.abort();
        result
    }

    async fn remove_all(&mut self) -> Result<(), RouteError> {
        let current = kernel::dump(&self.handle).await?;
        for op in kernel::diff(&current, &RouteTable::new()) {
            kernel::execute(&self.handle, &op).await?;
        }
        if let Some(sock) = self.nexthops.as_mut() {
            remove_nexthops(sock);
        }
        hostfw::remove().await;
        if let Ok(mut s) = self.status.lock() {
            s.host_firewall.clear();
        }
        nft::delete_table().await
    }
}

/// Delete every nexthop object of pier's (groups first); errors are
/// logged (an object already gone is fine).
fn remove_nexthops(sock: &mut nexthop::NexthopSocket) {
    let installed = match sock.dump() {
        Ok(all) => nexthop::Installed::from_dump(all),
        Err(e) => {
            tracing::debug!(error = %e, "dump nexthops");
            return;
        }
    };
    for id in installed.groups.keys().chain(installed.members.keys()) {
        if let Err(e) = sock.change(&nexthop::Request::Delete { id: *id }) {
            if e.errno() != Some(libc::ENOENT) {
                tracing::warn!(error = %e, "removing pier's nexthop object");
            }
        }
    }
}

impl Drop for RouteActuator {
    fn drop(&mut self) {
        self.connection.abort();
        if let Some((task, _)) = &self.events {
            task.abort();
        }
    }
}

/// Per-VIP counters of pier's nft table (empty when the table is absent).
pub async fn counters() -> Result<BTreeMap<IpAddr, VipCounters>, RouteError> {
    Ok(nft::vip_counters(&nft::read_counters().await?))
}

/// pier's kernel routes now installed: destination → next hops.
pub async fn installed_routes() -> Result<RouteTable, RouteError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(RouteError::Socket)?;
    let task = tokio::spawn(conn);
    let r = kernel::dump(&handle).await;
    task.abort();
    r
}

/// The resilient group each of pier's routes uses, with its buckets per
/// next hop (`ip nexthop bucket`): VIP → (group id, next hop → buckets).
/// Empty where there are no nexthop objects.
pub async fn installed_groups() -> Result<BTreeMap<IpNet, (u32, BTreeMap<IpAddr, u32>)>, RouteError>
{
    let (conn, handle, _) = rtnetlink::new_connection().map_err(RouteError::Socket)?;
    let task = tokio::spawn(conn);
    let dumped = kernel::dump_full(&handle).await;
    task.abort();
    let (_, groups, _) = dumped?;
    if groups.is_empty() {
        return Ok(BTreeMap::new());
    }
    let err = |e: nexthop::NexthopError| RouteError::Nexthop(e.to_string());
    let mut sock = nexthop::NexthopSocket::open().map_err(err)?;
    let installed = nexthop::Installed::from_dump(sock.dump().map_err(err)?);
    let mut per_group: BTreeMap<u32, BTreeMap<IpAddr, u32>> = BTreeMap::new();
    for id in groups.values().collect::<BTreeSet<_>>() {
        let buckets = sock.buckets(*id).map_err(err)?;
        let by_hop = buckets
            .into_iter()
            .filter_map(|(member, n)| {
                let gw = installed.members.get(&member)?.gateway?;
                Some((gw, n))
            })
            .collect();
        per_group.insert(*id, by_hop);
    }
    Ok(groups
        .into_iter()
        .map(|(dst, id)| (dst, (id, per_group.get(&id).cloned().unwrap_or_default())))
        .collect())
}

/// One row of `pier routes`: a VIP's kernel route, its nexthop group with
/// the buckets each next hop holds (resilient groups), and its forwarding
/// counters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InstalledRoute {
    pub vip: IpNet,
    pub next_hops: Vec<IpAddr>,
    pub group: Option<u32>,
    pub buckets: Option<BTreeMap<IpAddr, u32>>,
    /// `None` (JSON `null`) where pier's table does not count accepted
    /// packets (`vip_counters = false`, the default).
    pub accepted_packets: Option<u64>,
    pub dropped_packets: u64,
}

/// What `pier routes` shows: pier's routes as the kernel has them, with
/// their groups and the VIPs' nft counters.
pub async fn routes_view() -> Vec<InstalledRoute> {
    let routes = installed_routes().await.unwrap_or_default();
    let counters = counters().await.ok();
    let groups = installed_groups().await.unwrap_or_default();
    routes
        .into_iter()
        .map(|(prefix, hops)| {
            let c = counters
                .as_ref()
                .and_then(|c| c.get(&prefix.addr()).copied())
                .unwrap_or_default();
            let group = groups.get(&prefix);
            InstalledRoute {
                vip: prefix,
                next_hops: hops.into_iter().collect(),
                group: group.map(|(id, _)| *id),
                buckets: group.map(|(_, b)| b.clone()),
                accepted_packets: c.accepted.map(|a| a.packets),
                dropped_packets: c.dropped.packets,
            }
        })
        .collect()
}

/// Does traffic of some VIP of `desired` come to pier, so that pier must
/// route and filter it? VIPs of `next_hop = "self"` and `l2` pools always;
/// `next_hop = "nodes"` VIPs once a peer without ADD-PATH receive was sent
/// pier as their next hop (`peers_fall_back`).
pub fn needed(desired: &Desired, peers_fall_back: bool) -> bool {
    desired
        .announcements
        .iter()
        .any(|a| peers_fall_back || a.mode.gateway_forwards())
}

#[cfg(test)]
mod status_tests {
    use super::DatapathStatus;

    #[test]
    fn status_says_whether_flows_are_offloaded() {
        let on = DatapathStatus {
            flowtable_offload: Some("software".into()),
            ..Default::default()
        };
        assert_eq!(
            on.lines(),
            ["flowtable: software offload of established, accepted VIP flows (flowtable ft in table inet pier)"]
        );
        let missing = DatapathStatus {
            flowtable_missing: Some("No such file or directory".into()),
            ..Default::default()
        };
        assert_eq!(missing.lines().len(), 1);
        assert!(missing.lines()[0].starts_with("flowtable: not available in this kernel"));
        assert!(DatapathStatus::default().lines().is_empty());
    }
}
