//! What the local API asks the engine ([`Query`], answered between steps)
//! and the views it gets back.

use super::*;

/// A Service's state as the engine sees it, for the API.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServiceState {
    pub service: ServiceKey,
    pub origin: Origin,
    pub ips: Vec<IpAddr>,
    /// Why it has no IP, or why an IP is not announced.
    pub pending: Option<String>,
}

/// A question from the local API, answered between steps.
#[derive(Debug)]
pub enum Query {
    Status(oneshot::Sender<EngineStatus>),
    Services(oneshot::Sender<Vec<ServiceState>>),
    Pools(oneshot::Sender<Vec<PoolState>>),
    Nodes(oneshot::Sender<Vec<NodeState>>),
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EngineStatus {
    /// Every source delivered its initial list.
    pub synced: bool,
    pub leader: bool,
    /// Generation of the last published plan.
    pub generation: u64,
    pub services: usize,
    pub allocated: usize,
    pub pending: usize,
    pub vips_announced: usize,
    pub vips_unannounced: usize,
    pub nodes: usize,
    pub pools: usize,
    /// Generation of the last plan saved in the store (docs/ha.md).
    pub plan_saved_generation: u64,
    /// Set while store writes fail (docs/ha.md, "A full disk").
    pub store_failing: Option<StoreFailure>,
    /// Set while pier publishes the plan stored before its start, the API
    /// server being unreachable (docs/ha.md).
    pub last_known_state: Option<LastKnownState>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PoolState {
    pub pool: Pool,
    pub usage: Vec<PoolUsageState>,
    /// Allocations of this pool whose IP is no longer inside it.
    pub orphans: Vec<Allocation>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PoolUsageState {
    pub family: crate::model::Family,
    /// As a string: an IPv6 pool can hold more than JSON numbers carry.
    pub total: String,
    pub in_use: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NodeState {
    pub node: Node,
    /// Why the node is not a next hop for Cluster VIPs, if it is not.
    pub ineligible: Option<String>,
    /// Probe targets on this node that are failing.
    pub failing_probes: Vec<ProbeTarget>,
    /// VIPs this node is a next hop of.
    pub vips: usize,
}

impl Engine {
    /// Every known Service with its IPs and, if any, why it is pending.
    pub fn service_states(&self) -> Vec<ServiceState> {
        self.services
            .values()
            .map(|s| {
                let ips: Vec<IpAddr> = self
                    .ipam
                    .allocations_of(&s.key)
                    .iter()
                    .map(|a| a.ip)
                    .collect();
                let pending = self
                    .refused
                    .get(&s.key)
                    .map(|r| r.to_string())
                    .or_else(|| {
                        self.store_failed().contains(&s.key).then(|| {
                            "cannot persist the allocation on the gateway (store failing), retrying"
                                .to_string()
                        })
                    })
                    .or_else(|| {
                        ips.iter()
                            .find_map(|ip| self.unannounced.get(ip))
                            .map(|u| u.to_string())
                    });
                ServiceState {
                    service: s.key.clone(),
                    origin: s.origin,
                    ips,
                    pending,
                }
            })
            .collect()
    }

    pub fn status(&self) -> EngineStatus {
        let states = self.ipam_counts();
        EngineStatus {
            synced: self.synced(),
            leader: self.settings.leader,
            generation: self.desired.generation,
            services: self.services.len(),
            allocated: states.0,
            pending: states.1,
            vips_announced: self.desired.announcements.len(),
            vips_unannounced: self.unannounced.len(),
            nodes: self.nodes.len(),
            pools: self.pools.len(),
            plan_saved_generation: self.plan_saved_generation(),
            store_failing: self.store_failure().cloned(),
            last_known_state: self.last_known().cloned(),
        }
    }

    /// (Services holding IPs, Services refused).
    pub(super) fn ipam_counts(&self) -> (usize, usize) {
        let allocated = self
            .services
            .keys()
            .filter(|k| !self.ipam.allocations_of(k).is_empty())
            .count();
        let waiting = self
            .store_failed()
            .iter()
            .filter(|k| !self.refused.contains_key(*k) && self.ipam.allocations_of(k).is_empty())
            .count();
        (allocated, self.refused.len() + waiting)
    }

    pub fn pool_states(&self) -> Vec<PoolState> {
        let orphans = self.ipam.orphans();
        self.pools
            .values()
            .map(|p| PoolState {
                pool: p.clone(),
                usage: self
                    .ipam
                    .usage(&p.name)
                    .into_iter()
                    .map(|u| PoolUsageState {
                        family: u.family,
                        total: u.total.to_string(),
                        in_use: u.in_use.to_string(),
                    })
                    .collect(),
                orphans: orphans
                    .iter()
                    .filter(|a| a.pool == p.name)
                    .cloned()
                    .collect(),
            })
            .collect()
    }

    pub fn node_states(&self) -> Vec<NodeState> {
        let mut vips: BTreeMap<&str, usize> = BTreeMap::new();
        for a in &self.desired.announcements {
            for h in a.next_hops.iter() {
                *vips.entry(h.node.as_str()).or_default() += 1;
            }
        }
        self.nodes
            .values()
            .map(|n| {
                let failing: Vec<ProbeTarget> = self
                    .health
                    .down
                    .iter()
                    .filter(|t| {
                        n.internal_ips.contains(&t.address) || n.external_ips.contains(&t.address)
                    })
                    .cloned()
                    .collect();
                let ineligible = if !n.ready {
                    Some("not Ready".to_string())
                } else if n.labels.contains_key(crate::model::EXCLUDE_FROM_LB_LABEL) {
                    Some(format!("labelled {}", crate::model::EXCLUDE_FROM_LB_LABEL))
                } else if failing.iter().any(|t| {
                    t.path == plan::KUBE_PROXY_HEALTH_PATH
                        && t.port == self.settings.kube_proxy_port
                }) {
                    Some("failing the kube-proxy health probe".to_string())
                } else {
                    None
                };
                NodeState {
                    node: n.clone(),
                    ineligible,
                    failing_probes: failing,
                    vips: vips.get(n.name.as_str()).copied().unwrap_or(0),
                }
            })
            .collect()
    }

    /// Each node's health for `pier_node_healthy` and the node down/up
    /// log lines: Kubernetes nodes by name (healthy = none of its probes
    /// failing), addresses probed for static services by address.
    pub fn node_health(&self) -> BTreeMap<String, bool> {
        let mut out: BTreeMap<String, bool> = BTreeMap::new();
        let mut covered: BTreeSet<IpAddr> = BTreeSet::new();
        for n in self.nodes.values() {
            let mut healthy = true;
            for a in n.internal_ips.iter().chain(n.external_ips.iter()) {
                covered.insert(*a);
                healthy &= !self.health.down.iter().any(|t| t.address == *a);
            }
            out.insert(n.name.clone(), healthy);
        }
        for t in &self.probe_targets {
            if !covered.contains(&t.address) {
                let up = self.health.is_up(t);
                *out.entry(t.address.to_string()).or_insert(true) &= up;
            }
        }
        out
    }

    pub(super) fn answer(&self, q: Query) {
        // A caller that gave up is no error.
        let _ = match q {
            Query::Status(tx) => tx.send(self.status()).map_err(drop),
            Query::Services(tx) => tx.send(self.service_states()).map_err(drop),
            Query::Pools(tx) => tx.send(self.pool_states()).map_err(drop),
            Query::Nodes(tx) => tx.send(self.node_states()).map_err(drop),
        };
    }
}
