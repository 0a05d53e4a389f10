//! The pure planner: (services, nodes, endpoint slices, allocations, node
//! health, pools) → [`Desired`].
//!
//! Rules (docs/architecture.md, "Behaviour rules": next hops):
//! - `externalTrafficPolicy: Cluster` → every eligible node;
//!   `Local` → eligible nodes with at least one ready endpoint of the Service,
//!   whose `healthCheckNodePort` probe (if any) passes.
//! - eligible = Ready, not labelled
//!   `node.kubernetes.io/exclude-from-external-load-balancers`, matching the
//!   pool's `node_selector`, with an address of the VIP's family (InternalIP
//!   first), passing the kube-proxy health probe.
//! - A VIP shared by several Services goes only to nodes that can serve all
//!   of them (the intersection): a node that cannot serve one of the Services
//!   would drop that Service's share of the traffic.
//! - No next hop → no announcement (the VIP is withdrawn), with a reason.
//!
//! Next-hop sets are `Arc`s shared between every Cluster VIP of a pool and
//! family, so a plan for 10,000 VIPs over 500 nodes holds a handful of sets.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::model::{
    selector_matches, Allocation, AnnounceMode, Announcement, EndpointSlice, Family, HealthView,
    NextHop, NextHopMode, Node, Pool, PoolMode, PortRule, ProbeTarget, Service, ServiceKey,
    TrafficPolicy, EXCLUDE_FROM_LB_LABEL,
};

pub const KUBE_PROXY_HEALTH_PATH: &str = "/healthz";
pub const HEALTH_CHECK_NODE_PORT_PATH: &str = "/";

/// Everything the planner reads, borrowed from the engine.
#[derive(Clone, Copy)]
pub struct World<'a> {
    pub services: &'a BTreeMap<ServiceKey, Service>,
    pub nodes: &'a BTreeMap<String, Node>,
    /// Per Service, its slices by slice name.
    pub endpoints: &'a BTreeMap<ServiceKey, Vec<EndpointSlice>>,
    pub pools: &'a BTreeMap<String, Pool>,
    pub health: &'a HealthView,
    pub kube_proxy_port: u16,
}

/// Why an allocated VIP is not announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unannounced {
    /// The allocation's pool no longer exists.
    PoolGone { pool: String },
    /// No node can take the traffic.
    NoNextHop { why: String },
}

impl fmt::Display for Unannounced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unannounced::PoolGone { pool } => {
                write!(
                    f,
                    "pool {pool:?} no longer exists; the IP is kept but not announced"
                )
            }
            Unannounced::NoNextHop { why } => write!(f, "not announced: {why}"),
        }
    }
}

/// Caches the next-hop sets that do not depend on one Service. Reset it
/// whenever nodes, health or pools change.
#[derive(Default)]
pub struct Planner {
    cluster_sets: BTreeMap<(String, Family), Arc<[NextHop]>>,
}

impl Planner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget cached node sets (after a node, health or pool change).
    pub fn reset(&mut self) {
        self.cluster_sets.clear();
    }

    /// Plan every VIP. `holders` maps each allocated IP to the allocations
    /// on it (several when shared). Returns the announcements sorted by VIP
    /// and the reason for every VIP left out.
    pub fn plan_all(
        &mut self,
        world: &World<'_>,
        holders: &BTreeMap<IpAddr, Vec<Allocation>>,
    ) -> (Vec<Arc<Announcement>>, BTreeMap<IpAddr, Unannounced>) {
        let mut out = Vec::with_capacity(holders.len());
        let mut left_out = BTreeMap::new();
        for (vip, on_vip) in holders {
            match self.plan_vip(world, *vip, on_vip) {
                Ok(a) => out.push(Arc::new(a)),
                Err(why) => {
                    left_out.insert(*vip, why);
                }
            }
        }
        (out, left_out)
    }

    /// Plan one VIP from the allocations on it.
    pub fn plan_vip(
        &mut self,
        world: &World<'_>,
        vip: IpAddr,
        on_vip: &[Allocation],
    ) -> Result<Announcement, Unannounced> {
        let family = Family::of(&vip);
        // Every allocation on one IP comes from the same pool (ipam keeps
        // sharing within a pool); take the first.
        let pool_name = on_vip.first().map(|a| a.pool.as_str()).unwrap_or_default();
        let pool = world
            .pools
            .get(pool_name)
            .ok_or_else(|| Unannounced::PoolGone {
                pool: pool_name.to_string(),
            })?;
        let mut next_hops: Option<Arc<[NextHop]>> = None;
        let mut services = Vec::with_capacity(on_vip.len());
        let mut ports = Vec::new();
        for alloc in on_vip {
            let Some(svc) = world.services.get(&alloc.service) else {
                continue;
            };
            let hops = self.next_hops_for(world, pool, svc, family);
            next_hops = Some(match next_hops {
                None => hops,
                Some(prev) if Arc::ptr_eq(&prev, &hops) => prev,
                Some(prev) => intersect(&prev, &hops),
            });
            services.push(svc.key.clone());
            ports.extend(svc.ports.iter().map(|p| PortRule {
                port: *p,
                sources: svc.source_ranges.clone(),
            }));
        }
        let Some(next_hops) = next_hops else {
            return Err(Unannounced::NoNextHop {
                why: "no Service holds it".into(),
            });
        };
        if next_hops.is_empty() {
            return Err(Unannounced::NoNextHop {
                why: self.explain_no_next_hop(world, pool, on_vip, family),
            });
        }
        services.sort();
        ports.sort();
        ports.dedup();
        Ok(Announcement {
            vip,
            pool: pool.name.clone(),
            mode: announce_mode(pool),
            next_hops,
            bgp: pool.bgp.clone(),
            services,
            ports,
        })
    }

    fn next_hops_for(
        &mut self,
        world: &World<'_>,
        pool: &Pool,
        svc: &Service,
        family: Family,
    ) -> Arc<[NextHop]> {
        if let Some(addrs) = &svc.static_next_hops {
            let mut hops: Vec<NextHop> = addrs
                .iter()
                .filter(|a| Family::of(a) == family)
                .filter(|a| match svc.static_probe_port {
                    Some(port) => world.health.is_up(&ProbeTarget {
                        address: **a,
                        port,
                        path: KUBE_PROXY_HEALTH_PATH.into(),
                    }),
                    None => true,
                })
                .map(|a| NextHop {
                    node: a.to_string(),
                    address: *a,
                    labels: Default::default(),
                })
                .collect();
            hops.sort();
            hops.dedup();
            return hops.into();
        }
        let cluster = self.cluster_set(world, pool, family);
        match svc.traffic_policy {
            TrafficPolicy::Cluster => cluster,
            TrafficPolicy::Local => {
                let with_endpoints = ready_endpoint_nodes(world, &svc.key);
                cluster
                    .iter()
                    .filter(|h| with_endpoints.contains(h.node.as_str()))
                    .filter(|h| match svc.health_check_node_port {
                        Some(port) => world.health.is_up(&ProbeTarget {
                            address: h.address,
                            port,
                            path: HEALTH_CHECK_NODE_PORT_PATH.into(),
                        }),
                        None => true,
                    })
                    .cloned()
                    .collect()
            }
        }
    }

    /// Eligible nodes of a pool and family (the Cluster set), cached.
    fn cluster_set(&mut self, world: &World<'_>, pool: &Pool, family: Family) -> Arc<[NextHop]> {
        if let Some(s) = self.cluster_sets.get(&(pool.name.clone(), family)) {
            return s.clone();
        }
        let mut hops: Vec<NextHop> = world
            .nodes
            .values()
            .filter_map(|n| {
                let address = candidate_address(n, pool, family)?;
                world
                    .health
                    .is_up(&kube_proxy_target(address, world.kube_proxy_port))
                    .then(|| NextHop {
                        node: n.name.clone(),
                        address,
                        // Peers with a node_selector filter by these
                        // (src/bgp/rib.rs); one copy per set, shared by
                        // every VIP of the pool and family.
                        labels: Arc::new(n.labels.clone()),
                    })
            })
            .collect();
        hops.sort();
        let set: Arc<[NextHop]> = hops.into();
        self.cluster_sets
            .insert((pool.name.clone(), family), set.clone());
        set
    }

    fn explain_no_next_hop(
        &mut self,
        world: &World<'_>,
        pool: &Pool,
        on_vip: &[Allocation],
        family: Family,
    ) -> String {
        let total = world.nodes.len();
        let mut not_ready = 0;
        let mut excluded = 0;
        let mut unselected = 0;
        let mut no_address = 0;
        let mut unhealthy = 0;
        for n in world.nodes.values() {
            if !n.ready {
                not_ready += 1;
            } else if n.labels.contains_key(EXCLUDE_FROM_LB_LABEL) {
                excluded += 1;
            } else if !selector_matches(&pool.node_selector, &n.labels) {
                unselected += 1;
            } else if let Some(a) = n.address(family) {
                if !world
                    .health
                    .is_up(&kube_proxy_target(a, world.kube_proxy_port))
                {
                    unhealthy += 1;
                }
            } else {
                no_address += 1;
            }
        }
        let services: Vec<&Service> = on_vip
            .iter()
            .filter_map(|a| world.services.get(&a.service))
            .collect();
        if services.iter().any(|s| s.static_next_hops.is_some()) {
            return format!("no {family} next hop of the static service passes its health probe");
        }
        let eligible = self.cluster_set(world, pool, family).len();
        let mut why = format!(
            "no eligible {family} node: {total} nodes, {eligible} eligible ({not_ready} not Ready, {excluded} excluded by label, {unselected} outside node_selector of pool {:?}, {no_address} without an {family} address, {unhealthy} failing the kube-proxy probe)",
            pool.name
        );
        if eligible > 0 {
            let local: Vec<String> = services
                .iter()
                .filter(|s| s.traffic_policy == TrafficPolicy::Local)
                .map(|s| s.key.to_string())
                .collect();
            why = if services.len() > 1 && local.is_empty() {
                format!(
                    "{eligible} eligible nodes, but none can serve every Service sharing the IP"
                )
            } else {
                format!(
                    "{eligible} eligible nodes, but none has a ready endpoint (externalTrafficPolicy: Local) of {} passing its health check",
                    local.join(", ")
                )
            };
        }
        why
    }
}

fn announce_mode(pool: &Pool) -> AnnounceMode {
    match (pool.mode, pool.next_hop) {
        (PoolMode::L2, _) => AnnounceMode::L2 {
            interface: pool.interface.clone().unwrap_or_default(),
        },
        (PoolMode::Bgp, NextHopMode::Nodes) => AnnounceMode::BgpNodes,
        (PoolMode::Bgp, NextHopMode::Gateway) => AnnounceMode::BgpSelf,
    }
}

/// The node's address for a VIP of `family` in `pool`, if the node is
/// eligible apart from its health probe.
fn candidate_address(n: &Node, pool: &Pool, family: Family) -> Option<IpAddr> {
    if !n.ready
        || n.labels.contains_key(EXCLUDE_FROM_LB_LABEL)
        || !selector_matches(&pool.node_selector, &n.labels)
    {
        return None;
    }
    n.address(family)
}

pub fn kube_proxy_target(address: IpAddr, port: u16) -> ProbeTarget {
    ProbeTarget {
        address,
        port,
        path: KUBE_PROXY_HEALTH_PATH.into(),
    }
}

fn ready_endpoint_nodes<'w>(world: &World<'w>, key: &ServiceKey) -> BTreeSet<&'w str> {
    world
        .endpoints
        .get(key)
        .into_iter()
        .flatten()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.ready)
        .filter_map(|e| e.node_name.as_deref())
        .collect()
}

fn intersect(a: &[NextHop], b: &[NextHop]) -> Arc<[NextHop]> {
    let b: BTreeSet<&NextHop> = b.iter().collect();
    a.iter().filter(|h| b.contains(h)).cloned().collect()
}

/// What one Service needs probed: its own targets (the nodes of a Local
/// Service's ready endpoints on its `healthCheckNodePort`, or a static
/// Service's nodes), and the (pool, family) pairs whose nodes' kube-proxy
/// it relies on. Kept per Service by the engine, so one Service's change
/// costs only its own share.
///
/// Sorted vectors rather than sets: a Service has one or two of each, and
/// the engine keeps one of these per Service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeNeeds {
    /// Sorted, no duplicates.
    pub targets: Vec<ProbeTarget>,
    /// Sorted, no duplicates.
    pub cluster: Vec<(String, Family)>,
}

impl ProbeNeeds {
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty() && self.cluster.is_empty()
    }
}

/// The probe needs of the Service holding `allocs`.
pub fn service_probe_needs(world: &World<'_>, allocs: &[Allocation]) -> ProbeNeeds {
    let mut targets = BTreeSet::new();
    let mut cluster = BTreeSet::new();
    for alloc in allocs {
        let family = Family::of(&alloc.ip);
        let (Some(svc), Some(pool)) = (
            world.services.get(&alloc.service),
            world.pools.get(&alloc.pool),
        ) else {
            continue;
        };
        if let Some(addrs) = &svc.static_next_hops {
            if let Some(port) = svc.static_probe_port {
                targets.extend(
                    addrs
                        .iter()
                        .filter(|a| Family::of(a) == family)
                        .map(|a| kube_proxy_target(*a, port)),
                );
            }
            continue;
        }
        cluster.insert((pool.name.clone(), family));
        if let (TrafficPolicy::Local, Some(port)) = (svc.traffic_policy, svc.health_check_node_port)
        {
            for node in ready_endpoint_nodes(world, &svc.key) {
                if let Some(a) = world
                    .nodes
                    .get(node)
                    .and_then(|n| candidate_address(n, pool, family))
                {
                    targets.insert(ProbeTarget {
                        address: a,
                        port,
                        path: HEALTH_CHECK_NODE_PORT_PATH.into(),
                    });
                }
            }
        }
    }
    ProbeNeeds {
        targets: targets.into_iter().collect(),
        cluster: cluster.into_iter().collect(),
    }
}

/// kube-proxy's health endpoint on every candidate node of each
/// (pool, family): one probe per node, however many Services use it.
pub fn cluster_probe_targets<'a>(
    world: &World<'_>,
    pairs: impl IntoIterator<Item = &'a (String, Family)>,
) -> BTreeSet<ProbeTarget> {
    let mut targets = BTreeSet::new();
    for (pool, family) in pairs {
        let Some(pool) = world.pools.get(pool) else {
            continue;
        };
        targets.extend(
            world
                .nodes
                .values()
                .filter_map(|n| candidate_address(n, pool, *family))
                .map(|a| kube_proxy_target(a, world.kube_proxy_port)),
        );
    }
    targets
}

/// Every probe the plan depends on, computed from scratch (the engine keeps
/// the same result incrementally; tests compare the two).
pub fn probe_targets(
    world: &World<'_>,
    holders: &BTreeMap<IpAddr, Vec<Allocation>>,
) -> BTreeSet<ProbeTarget> {
    let mut by_service: BTreeMap<&ServiceKey, Vec<Allocation>> = BTreeMap::new();
    for a in holders.values().flatten() {
        by_service.entry(&a.service).or_default().push(a.clone());
    }
    let mut targets = BTreeSet::new();
    let mut cluster = BTreeSet::new();
    for allocs in by_service.values() {
        let needs = service_probe_needs(world, allocs);
        targets.extend(needs.targets);
        cluster.extend(needs.cluster);
    }
    targets.extend(cluster_probe_targets(world, &cluster));
    targets
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
