//! IP address management: pure allocation over pools (no I/O, no clock).
//!
//! Rules:
//! - **Pool choice**: an explicitly named pool → the pool holding a requested
//!   IP → pools that select the Service's namespace (non-empty `namespaces`
//!   or `namespace_selector` that match), by ascending `priority` then name →
//!   unrestricted pools with `auto_assign`, by ascending `priority` then name.
//!   A pool whose restriction excludes the namespace is never used; a
//!   disabled pool gives no new IP; an exhausted pool falls through to the
//!   next. Every IP of one Service comes from one pool.
//! - **Lowest free address** of the chosen pool, deterministic. Used
//!   addresses are merged intervals ([`intervals::IntervalSet`]): O(log n)
//!   per operation, memory per run of used addresses, a /64 never enumerated.
//! - **Sharing**: Services with the same sharing key and no common
//!   port/protocol get the same IP (an existing shared IP is reused before a
//!   new one is taken). A requested IP held without a matching key, or with
//!   an overlapping port, is refused — never silently shared.
//! - **Stability**: a Service keeps its IPs while they still satisfy its
//!   request, even if the pool is edited or disabled; an IP that left every
//!   pool stays with its Service and is reported by [`Ipam::orphans`].
//! - **Atomic**: a refusal changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use thiserror::Error;

use crate::model::{ip_to_u128, u128_to_ip, Allocation, Family, Pool, PoolMode, ServiceKey};

pub mod intervals;
mod request;

pub use request::{annotations, request_for, Request};

use intervals::IntervalSet;

/// Why a Service gets no IP (it stays pending).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    #[error("pool {pool:?} has no free {family} address")]
    PoolExhausted { pool: String, family: Family },
    #[error("no pool can serve {service}: {why}")]
    NoPool { service: ServiceKey, why: String },
    #[error("requested IP {ip} is outside every pool")]
    IpOutsidePools { ip: IpAddr },
    #[error("requested IP {ip} is taken by {by}: {why}")]
    IpTaken {
        ip: IpAddr,
        by: ServiceKey,
        why: String,
    },
    #[error("pool {name:?} does not exist")]
    UnknownPool { name: String },
    #[error("pool {name:?} is disabled: it gives out no new addresses")]
    PoolDisabled { name: String },
    #[error("pool {pool:?} offers no {family} addresses")]
    FamilyNotOffered { pool: String, family: Family },
    #[error("pool {pool:?} is not open to namespace {namespace:?} (its namespaces / namespace_selector)")]
    NamespaceNotAllowed { pool: String, namespace: String },
    #[error("requested IP {ip} is not in the requested pool {pool:?}")]
    PoolMismatch { ip: IpAddr, pool: String },
    #[error("invalid annotation {key}={value:?}: {why}")]
    InvalidAnnotation {
        key: String,
        value: String,
        why: String,
    },
    #[error("pool {pool:?} is of mode {pool_mode} but the Service's protocol annotation asks for a {asked} pool")]
    ProtocolMismatch {
        pool: String,
        pool_mode: PoolMode,
        asked: PoolMode,
    },
    #[error("{key}=vip is OpenELB's in-cluster keepalived mode, which pier does not run: use an l2 pool (pier answers ARP/NDP for the VIP from the gateway; protocol layer2) or a bgp pool")]
    UnsupportedProtocol { key: String },
    #[error("{ip} in status.loadBalancer.ingress (written by another controller, e.g. OpenELB) lies outside every pool: pier leaves it in the status but cannot announce it; add it to a pool (an Eip or [[pools]]) to keep it, or remove it from the status for a new IP")]
    StatusOutsidePools { ip: IpAddr },
    #[error("{service} already holds {held}, another {family} address")]
    FamilyTaken {
        service: ServiceKey,
        held: IpAddr,
        family: Family,
    },
}

impl Refusal {
    /// Short CamelCase label for Events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::PoolExhausted { .. } => "PoolExhausted",
            Refusal::NoPool { .. } => "NoPool",
            Refusal::IpOutsidePools { .. } => "IPOutsidePools",
            Refusal::IpTaken { .. } => "IPTaken",
            Refusal::UnknownPool { .. } => "UnknownPool",
            Refusal::PoolDisabled { .. } => "PoolDisabled",
            Refusal::FamilyNotOffered { .. } => "FamilyNotOffered",
            Refusal::NamespaceNotAllowed { .. } => "NamespaceNotAllowed",
            Refusal::PoolMismatch { .. } => "PoolMismatch",
            Refusal::InvalidAnnotation { .. } => "InvalidAnnotation",
            Refusal::FamilyTaken { .. } => "FamilyTaken",
            Refusal::ProtocolMismatch { .. } => "ProtocolMismatch",
            Refusal::UnsupportedProtocol { .. } => "UnsupportedProtocol",
            Refusal::StatusOutsidePools { .. } => "StatusOutsidePools",
        }
    }
}

/// The result of [`Ipam::assign`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Every allocation the Service holds now.
    pub allocations: Vec<Allocation>,
    /// Allocations it gave up (request changed).
    pub released: Vec<Allocation>,
    /// Whether anything differs from before (to persist).
    pub changed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUsage {
    pub family: Family,
    pub total: u128,
    pub in_use: u128,
}

#[derive(Debug, Default)]
pub struct Ipam {
    pools: BTreeMap<String, Pool>,
    /// Addresses with at least one holder, per family.
    used: [IntervalSet; 2],
    /// Holders of each IP (several when shared), sorted.
    holders: BTreeMap<IpAddr, Vec<Allocation>>,
    /// Each Service's allocations, sorted by IP.
    by_service: BTreeMap<ServiceKey, Held>,
    /// IPs per sharing key, to find a shared IP to reuse.
    by_sharing_key: BTreeMap<String, BTreeSet<IpAddr>>,
}

/// One Service's allocations, sorted by IP: one (a single family) inline,
/// so the common case costs no allocation of its own.
#[derive(Debug, Clone)]
enum Held {
    One(Allocation),
    Many(Vec<Allocation>),
}

impl Held {
    fn as_slice(&self) -> &[Allocation] {
        match self {
            Held::One(a) => std::slice::from_ref(a),
            Held::Many(v) => v,
        }
    }

    fn insert(&mut self, a: Allocation) {
        let mut all = match std::mem::replace(self, Held::Many(Vec::new())) {
            Held::One(x) => vec![x],
            Held::Many(v) => v,
        };
        all.retain(|x| x.ip != a.ip);
        all.push(a);
        all.sort_by_key(|x| x.ip);
        *self = if all.len() == 1 {
            Held::One(all.remove(0))
        } else {
            Held::Many(all)
        };
    }

    /// Remove the allocation of `ip`; true when none is left.
    fn remove(&mut self, ip: &IpAddr) -> bool {
        match self {
            Held::One(a) => a.ip == *ip,
            Held::Many(v) => {
                v.retain(|x| x.ip != *ip);
                if v.len() == 1 {
                    *self = Held::One(v.remove(0));
                }
                matches!(self, Held::Many(v) if v.is_empty())
            }
        }
    }
}

/// A pool of another mode than the Service's protocol annotation asks for
/// is refused, as OpenELB refuses an Eip of the wrong protocol.
fn check_mode(req: &Request, pool: &Pool) -> Result<(), Refusal> {
    match req.mode {
        Some(asked) if asked != pool.mode => Err(Refusal::ProtocolMismatch {
            pool: pool.name.clone(),
            pool_mode: pool.mode,
            asked,
        }),
        _ => Ok(()),
    }
}

fn slot(f: Family) -> usize {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

/// Why `a` cannot sit on an IP next to `other`, if it cannot.
fn sharing_conflict(a: &Allocation, other: &Allocation) -> Option<String> {
    match (&a.sharing_key, &other.sharing_key) {
        (Some(k1), Some(k2)) if k1 == k2 => {
            let common: Vec<String> = a
                .ports
                .iter()
                .filter(|p| other.ports.contains(p))
                .map(|p| p.to_string())
                .collect();
            if !common.is_empty() {
                Some(format!(
                    "same sharing key {k1:?} but both use {}",
                    common.join(", ")
                ))
            } else if a.pool != other.pool {
                Some(format!("it belongs to pool {:?}", other.pool))
            } else {
                None
            }
        }
        (None, _) | (_, None) => {
            Some("no common sharing key (set pier.io/sharing-key on both to share)".into())
        }
        (Some(k1), Some(k2)) => Some(format!("sharing keys differ ({k1:?} vs {k2:?})")),
    }
}

impl Ipam {
    pub fn new(pools: Vec<Pool>) -> Self {
        Ipam {
            pools: pools.into_iter().map(|p| (p.name.clone(), p)).collect(),
            ..Default::default()
        }
    }

    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.pools.values()
    }

    /// Replace the pools. Allocations are kept; those now outside their
    /// pool are returned (and stay reported by [`Ipam::orphans`]).
    pub fn set_pools(&mut self, pools: Vec<Pool>) -> Vec<Allocation> {
        self.pools = pools.into_iter().map(|p| (p.name.clone(), p)).collect();
        self.orphans()
    }

    /// Allocations whose IP is no longer inside their pool.
    pub fn orphans(&self) -> Vec<Allocation> {
        self.all()
            .filter(|a| !self.pools.get(&a.pool).is_some_and(|p| p.contains(&a.ip)))
            .cloned()
            .collect()
    }

    /// Every allocation, sorted by Service then IP.
    pub fn all(&self) -> impl Iterator<Item = &Allocation> {
        self.by_service.values().flat_map(Held::as_slice)
    }

    pub fn allocations_of(&self, key: &ServiceKey) -> &[Allocation] {
        self.by_service.get(key).map_or(&[], Held::as_slice)
    }

    /// Every held IP with its holders, sorted: the planner's index.
    pub fn by_ip(&self) -> &BTreeMap<IpAddr, Vec<Allocation>> {
        &self.holders
    }

    /// The Services on `ip`.
    pub fn holders(&self, ip: &IpAddr) -> &[Allocation] {
        self.holders.get(ip).map_or(&[], Vec::as_slice)
    }

    /// Size and use of a pool per family it offers.
    pub fn usage(&self, pool: &str) -> Vec<PoolUsage> {
        let Some(p) = self.pools.get(pool) else {
            return Vec::new();
        };
        p.families()
            .into_iter()
            .map(|family| {
                let in_use = p
                    .ranges
                    .iter()
                    .filter(|r| r.family() == family)
                    .map(|r| {
                        self.used[slot(family)].count_in(ip_to_u128(&r.start), ip_to_u128(&r.end))
                    })
                    .fold(0u128, u128::saturating_add);
                PoolUsage {
                    family,
                    total: p.size(family),
                    in_use,
                }
            })
            .collect()
    }

    /// Put back an allocation (from the store, or adopted from a Service's
    /// status). Refused if it conflicts with what is held; an IP outside
    /// every pool is accepted (and reported as an orphan): losing it would
    /// re-number the Service.
    pub fn restore(&mut self, a: Allocation) -> Result<(), Refusal> {
        if let Some(held) = self
            .allocations_of(&a.service)
            .iter()
            .find(|h| Family::of(&h.ip) == Family::of(&a.ip))
        {
            if held.ip == a.ip {
                return Ok(());
            }
            return Err(Refusal::FamilyTaken {
                service: a.service.clone(),
                held: held.ip,
                family: Family::of(&a.ip),
            });
        }
        self.check_can_hold(&a)?;
        self.insert(a);
        Ok(())
    }

    fn check_can_hold(&self, a: &Allocation) -> Result<(), Refusal> {
        for other in self.holders(&a.ip) {
            if other.service == a.service {
                continue;
            }
            if let Some(why) = sharing_conflict(a, other) {
                return Err(Refusal::IpTaken {
                    ip: a.ip,
                    by: other.service.clone(),
                    why,
                });
            }
        }
        Ok(())
    }

    fn insert(&mut self, a: Allocation) {
        self.used[slot(Family::of(&a.ip))].insert(ip_to_u128(&a.ip));
        if let Some(k) = &a.sharing_key {
            self.by_sharing_key
                .entry(k.clone())
                .or_default()
                .insert(a.ip);
        }
        let h = self.holders.entry(a.ip).or_default();
        // Almost every IP has one holder: room for exactly one, not the
        // four a first push reserves (~430 bytes per VIP at 10,000 VIPs;
        // docs/benchmarks.md, "kube_sync").
        h.reserve_exact(1);
        h.push(a.clone());
        h.sort();
        match self.by_service.get_mut(&a.service) {
            Some(s) => s.insert(a),
            None => {
                self.by_service.insert(a.service.clone(), Held::One(a));
            }
        }
    }

    fn remove(&mut self, a: &Allocation) {
        if let Some(h) = self.holders.get_mut(&a.ip) {
            h.retain(|x| x.service != a.service);
            if h.is_empty() {
                self.holders.remove(&a.ip);
                self.used[slot(Family::of(&a.ip))].remove(ip_to_u128(&a.ip));
            }
        }
        if let Some(k) = &a.sharing_key {
            let still_shared = self
                .holders(&a.ip)
                .iter()
                .any(|x| x.sharing_key.as_ref() == Some(k));
            if !still_shared {
                if let Some(set) = self.by_sharing_key.get_mut(k) {
                    set.remove(&a.ip);
                    if set.is_empty() {
                        self.by_sharing_key.remove(k);
                    }
                }
            }
        }
        if let Some(s) = self.by_service.get_mut(&a.service) {
            if s.remove(&a.ip) {
                self.by_service.remove(&a.service);
            }
        }
    }

    /// Give back every IP of `key`.
    pub fn release(&mut self, key: &ServiceKey) -> Vec<Allocation> {
        let held = self.allocations_of(key).to_vec();
        for a in &held {
            self.remove(a);
        }
        held
    }

    /// Make `req.service` hold IPs satisfying `req`. Idempotent; on a
    /// refusal nothing changes.
    pub fn assign(&mut self, req: &Request) -> Result<Assignment, Refusal> {
        let held: Vec<Allocation> = self.allocations_of(&req.service).to_vec();
        let plan = self.plan(req, &held)?;
        let changed = plan != held;
        if changed {
            for a in &held {
                self.remove(a);
            }
            for a in &plan {
                self.insert(a.clone());
            }
        }
        let released = held
            .iter()
            .filter(|h| !plan.iter().any(|p| p.ip == h.ip))
            .cloned()
            .collect();
        Ok(Assignment {
            allocations: plan,
            released,
            changed,
        })
    }

    /// The allocations `req` should hold, computed without changing
    /// anything.
    fn plan(&self, req: &Request, held: &[Allocation]) -> Result<Vec<Allocation>, Refusal> {
        let make = |ip: IpAddr, pool: &str| Allocation {
            service: req.service.clone(),
            ip,
            pool: pool.to_string(),
            sharing_key: req.sharing_key.clone(),
            ports: req.ports.clone(),
        };
        let requested = |f: Family| req.ips.iter().copied().find(|ip| Family::of(ip) == f);

        // A Service switched from another controller (OpenELB) keeps the IP
        // in its status: IPs inside a pool were adopted before anything was
        // allocated (docs/architecture.md, rule 3), so holding nothing with
        // an IP in the status that no pool contains means that IP is not
        // pier's to announce. Renumbering would break its users: refuse.
        if held.is_empty() && req.ips.is_empty() {
            if let Some(ip) = req
                .status_ips
                .iter()
                .find(|ip| !self.pools.values().any(|p| p.contains(ip)))
            {
                return Err(Refusal::StatusOutsidePools { ip: *ip });
            }
        }

        // Keep what still fits: right family, the requested IP if any, the
        // requested pool if any. Its pool may have been edited or disabled
        // since: stability wins.
        let wanted: Vec<Family> = req
            .families
            .iter()
            .copied()
            .chain(req.optional_family)
            .collect();
        let keep: Vec<&Allocation> = held
            .iter()
            .filter(|h| {
                let f = Family::of(&h.ip);
                wanted.contains(&f)
                    && requested(f).is_none_or(|ip| ip == h.ip)
                    && req.pool.as_ref().is_none_or(|p| *p == h.pool)
                    && req
                        .mode
                        .is_none_or(|m| self.pools.get(&h.pool).is_none_or(|p| p.mode == m))
            })
            .collect();
        // A kept IP fixes the pool for the Service's other families.
        let kept_pool = keep.first().map(|h| h.pool.clone());
        // Ports and sharing key follow the Service.
        let kept: Vec<Allocation> = keep
            .iter()
            .map(|h| Allocation {
                ports: req.ports.clone(),
                sharing_key: req.sharing_key.clone(),
                ..(*h).clone()
            })
            .collect();

        let candidates: Vec<&Pool> = match (&kept_pool, &req.pool, req.ips.first()) {
            (Some(p), _, _) => self.pools.get(p).into_iter().collect(),
            (None, Some(name), _) => {
                let p = self
                    .pools
                    .get(name)
                    .ok_or_else(|| Refusal::UnknownPool { name: name.clone() })?;
                if !p.admits_namespace(&req.service.namespace, &req.namespace_labels) {
                    return Err(Refusal::NamespaceNotAllowed {
                        pool: p.name.clone(),
                        namespace: req.service.namespace.clone(),
                    });
                }
                check_mode(req, p)?;
                if let Some(ip) = req.ips.iter().find(|ip| !p.contains(ip)) {
                    return Err(Refusal::PoolMismatch {
                        ip: *ip,
                        pool: p.name.clone(),
                    });
                }
                vec![p]
            }
            (None, None, Some(ip)) => {
                let p = self
                    .pools
                    .values()
                    .find(|p| p.contains(ip))
                    .ok_or(Refusal::IpOutsidePools { ip: *ip })?;
                if let Some(other) = req.ips.iter().find(|ip| !p.contains(ip)) {
                    return Err(Refusal::InvalidAnnotation {
                        key: "ip".into(),
                        value: other.to_string(),
                        why: format!(
                            "not in pool {:?} with {ip}: one Service's IPs come from one pool",
                            p.name
                        ),
                    });
                }
                if !p.admits_namespace(&req.service.namespace, &req.namespace_labels) {
                    return Err(Refusal::NamespaceNotAllowed {
                        pool: p.name.clone(),
                        namespace: req.service.namespace.clone(),
                    });
                }
                check_mode(req, p)?;
                vec![p]
            }
            (None, None, None) => self.auto_pools(req)?,
        };

        if candidates.is_empty() {
            // The kept IPs' pool is gone: keep them (never re-number), but
            // nothing new can come from it.
            let covered = req
                .families
                .iter()
                .all(|f| keep.iter().any(|h| Family::of(&h.ip) == *f));
            return if covered {
                Ok(kept)
            } else {
                Err(Refusal::UnknownPool {
                    name: kept_pool.unwrap_or_default(),
                })
            };
        }
        let mut first_error: Option<Refusal> = None;
        'pools: for pool in &candidates {
            let mut out = kept.clone();
            for a in &out {
                // A kept IP whose sharing no longer fits (ports or key
                // changed): refuse; the Service keeps what it has.
                self.check_can_hold(a)?;
            }
            for (f, optional) in req
                .families
                .iter()
                .map(|f| (*f, false))
                .chain(req.optional_family.map(|f| (f, true)))
            {
                if out.iter().any(|a| Family::of(&a.ip) == f) {
                    continue;
                }
                let got = match requested(f) {
                    Some(ip) => self.take_requested(pool, ip, &make),
                    None => self.take_free(pool, f, req, &make),
                };
                match got {
                    Ok(a) => out.push(a),
                    Err(_) if optional => {}
                    Err(e) => {
                        first_error.get_or_insert(e);
                        continue 'pools;
                    }
                }
            }
            out.sort_by_key(|x| x.ip);
            return Ok(out);
        }
        Err(first_error.unwrap_or_else(|| Refusal::NoPool {
            service: req.service.clone(),
            why: "no pool left to try".into(),
        }))
    }

    /// Pools for a Service that names none and requests no IP, in order.
    fn auto_pools(&self, req: &Request) -> Result<Vec<&Pool>, Refusal> {
        let ns = &req.service.namespace;
        let restricted = |p: &Pool| !p.namespaces.is_empty() || !p.namespace_selector.is_empty();
        let offers = |p: &Pool| {
            req.families.iter().all(|f| p.families().contains(f))
                && req.mode.is_none_or(|m| p.mode == m)
        };
        let mut selecting: Vec<&Pool> = self
            .pools
            .values()
            .filter(|p| restricted(p) && p.admits_namespace(ns, &req.namespace_labels))
            .filter(|p| !p.disabled && offers(p))
            .collect();
        let mut open: Vec<&Pool> = self
            .pools
            .values()
            .filter(|p| !restricted(p) && p.auto_assign && !p.disabled && offers(p))
            .collect();
        selecting.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        open.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        selecting.extend(open);
        if selecting.is_empty() {
            let fams: Vec<String> = req.families.iter().map(|f| f.to_string()).collect();
            let mode = req
                .mode
                .map(|m| format!(" in a pool of mode {m} (protocol annotation)"))
                .unwrap_or_default();
            return Err(Refusal::NoPool {
                service: req.service.clone(),
                why: format!(
                    "no enabled pool with auto_assign offers {}{mode} to namespace {ns:?}; name a pool (pier.io/pool) or an IP (pier.io/ip)",
                    fams.join(" and ")
                ),
            });
        }
        Ok(selecting)
    }

    fn take_requested(
        &self,
        pool: &Pool,
        ip: IpAddr,
        make: &dyn Fn(IpAddr, &str) -> Allocation,
    ) -> Result<Allocation, Refusal> {
        if !pool.contains(&ip) {
            return Err(Refusal::PoolMismatch {
                ip,
                pool: pool.name.clone(),
            });
        }
        if pool.disabled {
            return Err(Refusal::PoolDisabled {
                name: pool.name.clone(),
            });
        }
        let a = make(ip, &pool.name);
        self.check_can_hold(&a)?;
        Ok(a)
    }

    fn take_free(
        &self,
        pool: &Pool,
        family: Family,
        req: &Request,
        make: &dyn Fn(IpAddr, &str) -> Allocation,
    ) -> Result<Allocation, Refusal> {
        if pool.disabled {
            return Err(Refusal::PoolDisabled {
                name: pool.name.clone(),
            });
        }
        if !pool.families().contains(&family) {
            return Err(Refusal::FamilyNotOffered {
                pool: pool.name.clone(),
                family,
            });
        }
        // Join an IP already shared under the same key, lowest first.
        if let Some(key) = &req.sharing_key {
            for ip in self.by_sharing_key.get(key).into_iter().flatten() {
                if Family::of(ip) != family || !pool.contains(ip) {
                    continue;
                }
                let a = make(*ip, &pool.name);
                if self.check_can_hold(&a).is_ok() {
                    return Ok(a);
                }
            }
        }
        let used = &self.used[slot(family)];
        for r in pool.ranges.iter().filter(|r| r.family() == family) {
            if let Some(n) = used.lowest_free(ip_to_u128(&r.start), ip_to_u128(&r.end)) {
                return Ok(make(u128_to_ip(family, n), &pool.name));
            }
        }
        Err(Refusal::PoolExhausted {
            pool: pool.name.clone(),
            family,
        })
    }
}

#[cfg(test)]
mod tests;
