//! Shared domain types.
//!
//! Everything here is plain data: the sources (Kubernetes, static config)
//! produce [`Service`], [`Node`] and [`EndpointSlice`] values, the ipam turns
//! requests into [`Allocation`]s, and the planner turns all of it into one
//! immutable [`Desired`] value that the actuators (bgp, route, arp) apply.

pub mod selector;
pub mod subset;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// `namespace/name` of a Service (or of a static service, whose name in the
/// config is written the same way).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FromStr for ServiceKey {
    type Err = String;
    /// `ns/name`; a bare `name` means namespace `default`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (ns, name) = match s.split_once('/') {
            Some((ns, name)) => (ns, name),
            None => ("default", s),
        };
        if ns.is_empty() || name.is_empty() || name.contains('/') {
            return Err(format!(
                "{s:?} is not a service name: expected \"namespace/name\""
            ));
        }
        Ok(ServiceKey::new(ns, name))
    }
}

/// IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    #[serde(rename = "ipv4")]
    V4,
    #[serde(rename = "ipv6")]
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Transport protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "sctp" => Ok(Protocol::Sctp),
            _ => Err(format!("unknown protocol {s:?}: expected tcp, udp or sctp")),
        }
    }
}

/// One exposed port of a Service: `80/tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortSpec {
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol.as_str())
    }
}

impl FromStr for PortSpec {
    type Err = String;
    /// `80/tcp`, `53/udp`; a bare `80` means TCP.
    fn from_str(s: &str) -> Result<Self, String> {
        let (port, proto) = match s.split_once('/') {
            Some((p, proto)) => (p, proto.parse::<Protocol>()?),
            None => (s, Protocol::Tcp),
        };
        let port: u16 = port
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a port: expected e.g. \"80/tcp\""))?;
        if port == 0 {
            return Err(format!("{s:?}: port 0 is not a port"));
        }
        Ok(PortSpec {
            port,
            protocol: proto,
        })
    }
}

/// How a pool's VIPs reach the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    Bgp,
    L2,
}

impl std::fmt::Display for PoolMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PoolMode::Bgp => "bgp",
            PoolMode::L2 => "l2",
        })
    }
}

/// Next hop advertised for a `bgp` pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NextHopMode {
    /// Every eligible node as its own path (ADD-PATH).
    Nodes,
    /// pier's own address; pier forwards with a multipath kernel route.
    #[serde(rename = "self")]
    Gateway,
}

/// An inclusive range of addresses of one family. Serialised as its text
/// form (`10.0.0.0/24`, `10.0.0.1-10.0.0.9`, `10.0.0.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpRange {
    pub start: IpAddr,
    pub end: IpAddr,
}

impl IpRange {
    pub fn family(&self) -> Family {
        Family::of(&self.start)
    }
    pub fn contains(&self, ip: &IpAddr) -> bool {
        Family::of(ip) == self.family() && *ip >= self.start && *ip <= self.end
    }
    /// Number of addresses, saturating at `u128::MAX` for `::/0`.
    pub fn size(&self) -> u128 {
        (ip_to_u128(&self.end) - ip_to_u128(&self.start)).saturating_add(1)
    }
    pub fn overlaps(&self, other: &IpRange) -> bool {
        self.family() == other.family() && self.start <= other.end && other.start <= self.end
    }
    /// The addresses both ranges hold, if any.
    pub fn intersection(&self, other: &IpRange) -> Option<IpRange> {
        if !self.overlaps(other) {
            return None;
        }
        Some(IpRange {
            start: self.start.max(other.start),
            end: self.end.min(other.end),
        })
    }
}

impl IpRange {
    /// The prefix length if the range is exactly one CIDR block.
    pub fn prefix_len(&self) -> Option<u8> {
        let bits: u32 = match self.family() {
            Family::V4 => 32,
            Family::V6 => 128,
        };
        let size = self.size();
        if !size.is_power_of_two() && size != u128::MAX {
            return None;
        }
        let host_bits = if size == u128::MAX {
            128
        } else {
            size.trailing_zeros()
        };
        let start = ip_to_u128(&self.start);
        let aligned = host_bits == 128 || start & ((1u128 << host_bits) - 1) == 0;
        (aligned && host_bits <= bits).then(|| (bits - host_bits) as u8)
    }
}

impl fmt::Display for IpRange {
    /// `10.0.0.7`, `10.0.0.0/24` where the range is one CIDR block, else
    /// `10.0.0.10-10.0.0.20`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else if let Some(len) = self.prefix_len() {
            write!(f, "{}/{len}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl FromStr for IpRange {
    type Err = String;
    /// `10.0.0.0/24`, `10.0.0.10-10.0.0.20` or `10.0.0.7` (IPv4 or IPv6).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some((a, b)) = s.split_once('-') {
            let start: IpAddr = a
                .trim()
                .parse()
                .map_err(|_| format!("{a:?} in range {s:?} is not an IP address"))?;
            let end: IpAddr = b
                .trim()
                .parse()
                .map_err(|_| format!("{b:?} in range {s:?} is not an IP address"))?;
            if Family::of(&start) != Family::of(&end) {
                return Err(format!("range {s:?} mixes IPv4 and IPv6"));
            }
            if end < start {
                return Err(format!("range {s:?} ends before it starts"));
            }
            Ok(IpRange { start, end })
        } else if s.contains('/') {
            let net: IpNet = s
                .parse()
                .map_err(|_| format!("{s:?} is not a CIDR (expected e.g. 10.0.0.0/24)"))?;
            if net.trunc() != net {
                return Err(format!(
                    "{s:?} has host bits set: did you mean {}?",
                    net.trunc()
                ));
            }
            Ok(IpRange {
                start: net.network(),
                end: net.broadcast(),
            })
        } else {
            let ip: IpAddr = s
                .parse()
                .map_err(|_| format!("{s:?} is not an IP address, CIDR or range (a-b)"))?;
            Ok(IpRange { start: ip, end: ip })
        }
    }
}

impl Serialize for IpRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// IPv4 addresses map to `0..2^32`, IPv6 to the whole `u128`; callers keep
/// families apart (see [`Family`]).
pub fn ip_to_u128(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(*v4) as u128,
        IpAddr::V6(v6) => u128::from(*v6),
    }
}

pub fn u128_to_ip(family: Family, n: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4((n as u32).into()),
        Family::V6 => IpAddr::V6(n.into()),
    }
}

/// RFC 1997 community `asn:value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Community(pub u32);

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.0 >> 16, self.0 & 0xffff)
    }
}

impl FromStr for Community {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a community: expected \"asn:value\", each 0-65535");
        let (a, b) = s.split_once(':').ok_or_else(bad)?;
        let a: u16 = a.trim().parse().map_err(|_| bad())?;
        let b: u16 = b.trim().parse().map_err(|_| bad())?;
        Ok(Community(((a as u32) << 16) | b as u32))
    }
}

/// RFC 8092 large community `global:local1:local2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LargeCommunity(pub u32, pub u32, pub u32);

impl fmt::Display for LargeCommunity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.0, self.1, self.2)
    }
}

impl FromStr for LargeCommunity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("{s:?} is not a large community: expected \"global:local1:local2\", each 0-4294967295")
        };
        let mut it = s.split(':');
        let mut next = || -> Result<u32, String> {
            it.next()
                .ok_or_else(bad)?
                .trim()
                .parse::<u32>()
                .map_err(|_| bad())
        };
        let v = LargeCommunity(next()?, next()?, next()?);
        if it.next().is_some() {
            return Err(bad());
        }
        Ok(v)
    }
}

/// BGP path attributes pier attaches to a VIP, from its pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BgpAttributes {
    pub communities: Vec<Community>,
    pub large_communities: Vec<LargeCommunity>,
    pub local_pref: Option<u32>,
    /// MULTI_EXIT_DISC (RFC 4271 §5.1.4), the pool's `med`.
    #[serde(default)]
    pub med: Option<u32>,
}

/// Label equality selector (Kubernetes `matchLabels`): every pair must match.
pub type LabelSelector = BTreeMap<String, String>;

pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// An address pool, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub name: String,
    /// Sorted, non-overlapping.
    pub ranges: Vec<IpRange>,
    pub mode: PoolMode,
    pub next_hop: NextHopMode,
    /// LAN interface of an `l2` pool.
    pub interface: Option<String>,
    /// If non-empty, only Services in these namespaces may use the pool.
    pub namespaces: Vec<String>,
    /// If non-empty, only Services whose namespace has these labels may use it.
    pub namespace_selector: LabelSelector,
    /// Lower is preferred among eligible pools.
    pub priority: i32,
    /// Whether Services that name no pool and request no IP may get an IP here.
    pub auto_assign: bool,
    /// A disabled pool hands out no new IPs; existing ones stay.
    pub disabled: bool,
    /// Only nodes whose labels match are next hops for this pool's VIPs.
    pub node_selector: LabelSelector,
    pub bgp: BgpAttributes,
}

impl Pool {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }
    pub fn families(&self) -> Vec<Family> {
        let mut f: Vec<Family> = self.ranges.iter().map(|r| r.family()).collect();
        f.sort();
        f.dedup();
        f
    }
    pub fn size(&self, family: Family) -> u128 {
        self.ranges
            .iter()
            .filter(|r| r.family() == family)
            .fold(0u128, |acc, r| acc.saturating_add(r.size()))
    }
    /// May a Service in `namespace` (with `ns_labels`) use this pool?
    pub fn admits_namespace(&self, namespace: &str, ns_labels: &BTreeMap<String, String>) -> bool {
        (self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace))
            && selector_matches(&self.namespace_selector, ns_labels)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum IpFamilyPolicy {
    #[default]
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

/// Where a Service comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Kubernetes,
    Static,
}

/// A LoadBalancer Service as the engine sees it (already claimed by pier).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub key: ServiceKey,
    pub origin: Origin,
    /// Annotations pier reads (pool, IP and sharing-key keys); others may be
    /// dropped. Static services use `static_request` instead.
    pub annotations: BTreeMap<String, String>,
    /// `spec.loadBalancerIP` (deprecated in Kubernetes, still honoured).
    pub load_balancer_ip: Option<String>,
    /// `spec.ipFamilies`, in order (first = primary). Empty means IPv4.
    pub ip_families: Vec<Family>,
    pub ip_family_policy: IpFamilyPolicy,
    pub ports: Vec<PortSpec>,
    pub traffic_policy: TrafficPolicy,
    /// `spec.healthCheckNodePort` (set by Kubernetes for `Local`).
    pub health_check_node_port: Option<u16>,
    /// `spec.loadBalancerSourceRanges`; empty means every source.
    pub source_ranges: Vec<IpNet>,
    /// IPs currently in `status.loadBalancer.ingress`.
    pub status_ips: Vec<IpAddr>,
    /// Static services name their next hops directly instead of using nodes
    /// and endpoints.
    pub static_next_hops: Option<Vec<IpAddr>>,
    /// Static services: the port of the HTTP `/healthz` probe on each next
    /// hop (kube-proxy's by default); `None` = not probed.
    pub static_probe_port: Option<u16>,
    /// Static services: the pool, IPs and sharing key they ask for, as
    /// typed values. Kubernetes Services carry these as annotations instead
    /// (`annotations`, read by src/ipam/request.rs); when this is set the
    /// annotations are not read.
    pub static_request: Option<StaticRequest>,
}

/// What a static service asks ipam for (a `[[static_services]]` entry,
/// already validated by the config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticRequest {
    pub pool: String,
    /// Requested IPs, at most one per family; empty = allocate from the pool.
    pub ips: Vec<IpAddr>,
    pub sharing_key: Option<String>,
}

impl Service {
    /// A Service with defaults, for tests and for sources to fill in.
    pub fn new(key: ServiceKey) -> Self {
        Service {
            key,
            origin: Origin::Kubernetes,
            annotations: BTreeMap::new(),
            load_balancer_ip: None,
            ip_families: vec![Family::V4],
            ip_family_policy: IpFamilyPolicy::SingleStack,
            ports: Vec::new(),
            traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            source_ranges: Vec::new(),
            status_ips: Vec::new(),
            static_next_hops: None,
            static_probe_port: None,
            static_request: None,
        }
    }
}

/// A Kubernetes node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    /// `Ready` condition is `True`.
    pub ready: bool,
    pub labels: BTreeMap<String, String>,
    /// `InternalIP` addresses, in the order the node reports them.
    pub internal_ips: Vec<IpAddr>,
    /// `ExternalIP` addresses, used only when no InternalIP of the family exists.
    pub external_ips: Vec<IpAddr>,
}

pub const EXCLUDE_FROM_LB_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

impl Node {
    /// The node's address of `family`: InternalIP first, then ExternalIP.
    pub fn address(&self, family: Family) -> Option<IpAddr> {
        self.internal_ips
            .iter()
            .chain(self.external_ips.iter())
            .find(|ip| Family::of(ip) == family)
            .copied()
    }
}

/// One EndpointSlice, reduced to what the planner reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSlice {
    /// The slice's own name.
    pub name: String,
    /// The Service it belongs to (`kubernetes.io/service-name`).
    pub service: ServiceKey,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `conditions.ready` (unset counts as ready, as Kubernetes specifies).
    pub ready: bool,
    pub node_name: Option<String>,
}

/// An IP given to a Service, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Allocation {
    pub service: ServiceKey,
    pub ip: IpAddr,
    pub pool: String,
    /// Services with the same key and disjoint ports may share the IP.
    pub sharing_key: Option<String>,
    /// Ports held on the IP (for the sharing check).
    pub ports: Vec<PortSpec>,
}

/// How a VIP is announced.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum AnnounceMode {
    /// BGP, one path per node (ADD-PATH), router forwards.
    BgpNodes,
    /// BGP with pier as next hop; pier forwards over a multipath route.
    BgpSelf,
    /// ARP/NDP on `interface`; pier forwards over a multipath route.
    L2 { interface: String },
}

impl AnnounceMode {
    /// Does pier forward this VIP's traffic itself (kernel route + nft)?
    pub fn gateway_forwards(&self) -> bool {
        !matches!(self, AnnounceMode::BgpNodes)
    }
}

/// A node's labels, shared by every next hop of that node.
pub type NodeLabels = Arc<BTreeMap<String, String>>;

/// A node that receives a VIP's traffic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NextHop {
    /// Node name (static services use the address itself).
    pub node: String,
    pub address: IpAddr,
    /// The node's labels (empty for static services), for the peers that
    /// are sent only some nodes (`node_selector`, src/bgp/rib.rs). A label
    /// change is a change of the announcement, so peers see it.
    #[serde(default, skip_serializing_if = "labels_empty")]
    pub labels: NodeLabels,
}

fn labels_empty(l: &NodeLabels) -> bool {
    l.is_empty()
}

/// Everything the actuators need to know about one VIP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub vip: IpAddr,
    pub pool: String,
    pub mode: AnnounceMode,
    /// Sorted by address; never empty (no next hop → no announcement).
    /// Shared between announcements with the same set (every Cluster Service
    /// of a pool has the same nodes), so a plan for 10,000 VIPs × 500 nodes
    /// stays small.
    pub next_hops: Arc<[NextHop]>,
    pub bgp: BgpAttributes,
    /// The Services on this VIP (more than one when shared), sorted.
    pub services: Vec<ServiceKey>,
    /// Every port of the Services on this VIP with the sources allowed to
    /// reach it (from that Service's `loadBalancerSourceRanges`; empty = any
    /// source), sorted by port.
    pub ports: Vec<PortRule>,
}

/// One forwarded port of a VIP and who may reach it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRule {
    pub port: PortSpec,
    /// Allowed source prefixes; empty means every source.
    pub sources: Vec<IpNet>,
}

/// The whole state the actuators converge to. Immutable once published.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// Increases by one with every published plan.
    pub generation: u64,
    /// Sorted by VIP; one entry per VIP. Shared with earlier plans, so
    /// publishing after one change copies pointers, not announcements.
    pub announcements: Vec<Arc<Announcement>>,
}

impl Desired {
    pub fn get(&self, vip: &IpAddr) -> Option<&Announcement> {
        self.announcements
            .binary_search_by(|a| a.vip.cmp(vip))
            .ok()
            .map(|i| &*self.announcements[i])
    }
}

/// An HTTP health endpoint the health prober checks (on a node address only).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProbeTarget {
    pub address: IpAddr,
    pub port: u16,
    /// `/healthz` for kube-proxy, `/` for a Service's `healthCheckNodePort`.
    pub path: String,
}

impl fmt::Display for ProbeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            IpAddr::V4(a) => write!(f, "http://{a}:{}{}", self.port, self.path),
            IpAddr::V6(a) => write!(f, "http://[{a}]:{}{}", self.port, self.path),
        }
    }
}

/// The prober's verdicts. A target not listed has no verdict yet and counts
/// as healthy (so a restart does not withdraw everything while the first
/// probes run).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthView {
    pub down: std::collections::BTreeSet<ProbeTarget>,
}

impl HealthView {
    pub fn is_up(&self, t: &ProbeTarget) -> bool {
        !self.down.contains(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_in_three_forms() {
        let r: IpRange = "10.0.0.0/30".parse().unwrap();
        assert_eq!(r.size(), 4);
        let r: IpRange = "10.0.0.10-10.0.0.20".parse().unwrap();
        assert_eq!(r.size(), 11);
        let r: IpRange = "fd00::1".parse().unwrap();
        assert_eq!(r.size(), 1);
        let r: IpRange = "fd66:0:0:77::/64".parse().unwrap();
        assert_eq!(r.size(), 1u128 << 64);
        assert!("10.0.0.20-10.0.0.10"
            .parse::<IpRange>()
            .unwrap_err()
            .contains("ends before"));
        assert!("10.0.0.1-fd00::1"
            .parse::<IpRange>()
            .unwrap_err()
            .contains("mixes"));
        assert!("10.0.0.1/24"
            .parse::<IpRange>()
            .unwrap_err()
            .contains("host bits"));
        assert!("10.0.0.300".parse::<IpRange>().is_err());
        let all: IpRange = "::/0".parse().unwrap();
        assert_eq!(all.size(), u128::MAX);
        for text in [
            "10.0.0.0/24",
            "10.0.0.3-10.0.0.9",
            "10.0.0.7",
            "fd66::/64",
            "::/0",
            "0.0.0.0/0",
            "10.0.0.1-10.0.0.2",
        ] {
            assert_eq!(text.parse::<IpRange>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn ports_and_communities_parse() {
        assert_eq!(
            "53/udp".parse::<PortSpec>().unwrap(),
            PortSpec {
                port: 53,
                protocol: Protocol::Udp
            }
        );
        assert_eq!("80".parse::<PortSpec>().unwrap().protocol, Protocol::Tcp);
        assert!("0/tcp".parse::<PortSpec>().is_err());
        assert!("80/icmp".parse::<PortSpec>().is_err());
        assert!("70000/tcp".parse::<PortSpec>().is_err());
        let c: Community = "65001:100".parse().unwrap();
        assert_eq!(c.to_string(), "65001:100");
        assert!("65536:1".parse::<Community>().is_err());
        let l: LargeCommunity = "4200000000:1:2".parse().unwrap();
        assert_eq!(l.to_string(), "4200000000:1:2");
        assert!("1:2".parse::<LargeCommunity>().is_err());
        assert!("1:2:3:4".parse::<LargeCommunity>().is_err());
    }

    #[test]
    fn node_address_prefers_internal() {
        let n = Node {
            name: "n1".into(),
            ready: true,
            labels: BTreeMap::new(),
            internal_ips: vec!["10.0.0.1".parse().unwrap()],
            external_ips: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
        };
        assert_eq!(n.address(Family::V4), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(n.address(Family::V6), Some("2001:db8::1".parse().unwrap()));
    }
}
