//! Configuration: the TOML schema, parsing and validation.
//!
//! [`Config::load`] reads a file and returns either a fully validated
//! [`Config`] or *every* problem found, each naming file, line and key.
//! `toml_reader.rs` reads TOML values with their positions and collects the
//! problems; `schema/` holds pier's sections and keys and their checks.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Serialize;

use crate::model::{Family, Pool, PortSpec, ServiceKey};

mod schema;
mod toml_reader;

pub use toml_reader::{ConfigError, ConfigErrors};

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// The file it was read from (for messages).
    pub path: PathBuf,
    pub gateway: GatewayConfig,
    /// `None` when the `[kubernetes]` section is absent: static services only.
    pub kubernetes: Option<KubernetesConfig>,
    /// `None` when the `[bgp]` section is absent.
    pub bgp: Option<BgpConfig>,
    pub pools: Vec<Pool>,
    pub health: HealthConfig,
    pub static_services: Vec<StaticService>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GatewayConfig {
    pub router_id: Ipv4Addr,
    pub state_dir: PathBuf,
    pub api_socket: PathBuf,
    pub metrics_listen: SocketAddr,
    /// Permission bits of the API socket.
    pub api_socket_mode: u32,
    /// Group owning the API socket (members may run `pier status`).
    pub api_socket_group: Option<String>,
    /// User owning the API socket (default: the user pier runs as).
    pub api_socket_owner: Option<String>,
    /// On stop: withdraw everything, or keep routes and let BGP graceful
    /// restart hold them at the routers.
    pub shutdown: Shutdown,
    /// Set the sysctls pier depends on, or only check them.
    pub sysctl: SysctlMode,
    pub log_format: LogFormat,
    /// How forwarded VIPs reach their nodes, and what pier does about a
    /// host firewall (keys of `[gateway]`).
    #[serde(flatten)]
    pub forwarding: Forwarding,
}

/// The `[gateway]` keys of the forwarding path (`docs/configuration.md`,
/// `docs/datapath.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Forwarding {
    /// `next_hop_groups`: resilient nexthop groups, or multipath routes.
    pub next_hop_groups: NextHopGroups,
    /// `resilient_buckets`: hash buckets per group.
    pub resilient_buckets: u16,
    /// `resilient_idle_timer_s`: a bucket idle this long may move to a
    /// next hop that has too few.
    pub resilient_idle_timer_s: u32,
    /// `resilient_unbalanced_timer_s`: after this long unbalanced, busy
    /// buckets move too (0: never).
    pub resilient_unbalanced_timer_s: u32,
    /// `host_firewall`: open a host firewall's forward chain for pier's
    /// VIPs, or only check and report.
    pub host_firewall: HostFirewall,
    /// `vip_counters`: count accepted packets per VIP on the hot path
    /// (`pier routes`); off by default, so that an accepted packet costs
    /// what plain forwarding does (docs/datapath.md, "nftables"). Drops
    /// are counted per VIP either way.
    pub vip_counters: bool,
    /// `flowtable`: offload established, accepted VIP flows where the
    /// kernel has flowtables.
    pub flowtable: Flowtable,
}

impl Default for Forwarding {
    fn default() -> Self {
        Forwarding {
            next_hop_groups: NextHopGroups::Resilient,
            resilient_buckets: 256,
            resilient_idle_timer_s: 120,
            resilient_unbalanced_timer_s: 600,
            host_firewall: HostFirewall::Open,
            vip_counters: false,
            flowtable: Flowtable::Software,
        }
    }
}

/// `gateway.flowtable` (`docs/datapath.md`, "Flowtables").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flowtable {
    /// Software offload where the kernel has `CONFIG_NF_FLOW_TABLE`.
    Software,
    /// Also ask the NICs to offload (`flags offload`); needs drivers that
    /// support it.
    Hardware,
    /// Never offload.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NextHopGroups {
    Resilient,
    Multipath,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostFirewall {
    Open,
    Check,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shutdown {
    Withdraw,
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SysctlMode {
    Set,
    Check,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KubernetesConfig {
    pub kubeconfig: PathBuf,
    /// kubeconfig context; `None` = the current context.
    pub context: Option<String>,
    pub load_balancer_class: String,
    pub claim_unclassed: bool,
    /// Claim Services without a class that carry OpenELB's / PorterLB's
    /// `lb.kubesphere.io/v1alpha1: openelb|porter` (default true).
    pub claim_openelb_annotation: bool,
    pub lease_namespace: String,
    pub lease_name: String,
    pub lease_duration_s: u32,
    pub lease_renew_s: u32,
    /// Read pools and peers from OpenELB-compatible Eip/BgpConf/BgpPeer objects.
    pub crds: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BgpConfig {
    pub asn: u32,
    /// Accept incoming sessions.
    pub listen: bool,
    pub listen_port: u16,
    /// Empty: every address.
    pub listen_addresses: Vec<IpAddr>,
    pub graceful_restart: bool,
    /// Seconds routers keep pier's routes while it restarts (RFC 4724, ≤ 4095).
    pub restart_time_s: u16,
    pub peers: Vec<PeerConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerConfig {
    pub address: IpAddr,
    pub asn: u32,
    /// Seconds; 0 (no keepalives) or at least 3 (RFC 4271 §4.2).
    pub hold_time: u16,
    pub password_file: Option<PathBuf>,
    pub passive: bool,
    /// eBGP multihop TTL; `None` = directly connected (TTL 1 for eBGP).
    pub multihop_ttl: Option<u8>,
    /// Seconds; `None` = hold_time / 3.
    pub keepalive_s: Option<u16>,
    pub connect_retry_s: u16,
    /// RFC 5082: send with TTL 255 and accept only TTL 255.
    pub gtsm: bool,
    pub port: u16,
    /// Our AS towards this peer, if not `bgp.asn`.
    pub local_asn: Option<u32>,
    pub source_address: Option<IpAddr>,
    /// Address families announced to this peer.
    pub families: Vec<Family>,
    /// Offer ADD-PATH send (needed for node next hops).
    pub add_path: bool,
    /// At most this many paths per VIP to this peer (`next_hop = "nodes"`),
    /// chosen per VIP by rendezvous hashing (`src/model/subset.rs`).
    pub max_paths: u16,
    /// Only the next hops of nodes these labels select are sent to this
    /// peer (`next_hop = "nodes"`); `None` = every node. See docs/bgp.md,
    /// "Rack-aware next hops".
    pub node_selector: Option<crate::model::selector::Selector>,

    /// BFD to this peer (`bfd = true`); see `docs/bfd.md`.
    pub bfd: Option<PeerBfd>,
}

/// `bfd_min_rx_ms`, `bfd_min_tx_ms`, `bfd_multiplier` of a peer with
/// `bfd = true` (defaults 300 / 300 / 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PeerBfd {
    pub min_rx_ms: u32,
    pub min_tx_ms: u32,
    pub multiplier: u8,
}

impl Default for PeerBfd {
    fn default() -> Self {
        PeerBfd {
            min_rx_ms: 300,
            min_tx_ms: 300,
            multiplier: 3,
        }
    }
}

/// Default `max_paths`: BIRD merges at most 16 paths into a kernel route
/// (`merge paths on limit 16`, its default), FRR's `maximum-paths` is 64
/// by default and many hardware routers stop at 16, 32 or 64 ECMP members.
/// 16 fits all of them; more paths would be held by the router but unused.
pub const DEFAULT_MAX_PATHS: u16 = 16;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthConfig {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub fall: u32,
    pub rise: u32,
    pub kube_proxy_port: u16,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_ms: 500,
            timeout_ms: 500,
            fall: 3,
            rise: 2,
            kube_proxy_port: 10256,
        }
    }
}

/// A Service defined in the config file instead of Kubernetes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StaticService {
    pub key: ServiceKey,
    pub pool: String,
    /// Requested IPs (at most one per family); empty = allocate from the pool.
    pub ips: Vec<IpAddr>,
    /// Families to allocate when `ips` is empty.
    pub families: Vec<Family>,
    pub ports: Vec<PortSpec>,
    /// The next hops (node addresses).
    pub nodes: Vec<IpAddr>,
    pub sharing_key: Option<String>,
    pub source_ranges: Vec<IpNet>,
    pub health: StaticHealth,
}

/// How a static service's next hops are probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum StaticHealth {
    KubeProxy,
    None,
    Port(u16),
}

impl StaticHealth {
    pub fn probe_port(&self, kube_proxy_port: u16) -> Option<u16> {
        match self {
            StaticHealth::KubeProxy => Some(kube_proxy_port),
            StaticHealth::None => None,
            StaticHealth::Port(p) => Some(*p),
        }
    }
}

impl Config {
    /// Read, parse and validate `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors::single(ConfigError::io(path, &e)))?;
        Config::parse(path, &text)
    }

    /// Parse and validate `text`, naming `path` in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        schema::parse(path, text)
    }

    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests;
