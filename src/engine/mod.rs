//! The engine: the one owner of pier's state.
//!
//! Sources (Kubernetes watchers, the static config, the health prober, config
//! reloads, the leader lease) send [`Input`]s. [`Engine::step`] applies a batch
//! of them: it allocates through the ipam, makes the changes durable in the
//! store (one flush per batch), re-plans what changed and produces the new
//! [`Desired`]. Only after the flush does anything leave the engine, so no
//! router or Service status ever learns of an allocation that a crash could
//! lose. [`run`] is the thin async task around it.
//!
//! `step` is synchronous and does no I/O besides the store, so the engine is
//! tested with plain `#[test]`s and a [`crate::store::MemoryStore`].
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | [`Input`], [`Engine`] and its step: absorb inputs, allocate, persist, re-plan |
//! | `plan.rs` | the pure planner: allocations → announcements |
//! | `service_status.rs` | [`ServiceEvent`] (status requests and Events) and IPs adopted from Services' status |
//! | `probes.rs` | which nodes the health prober probes |
//! | `views.rs` | the local API's [`Query`] and the views it gets |
//! | `durable.rs` | a failing store retried, the last plan saved and started from |
//! | `run.rs` | the async task around the step |
//! | `source.rs` | static services from the config file |

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::ipam::{request_for, Ipam, Refusal};
use crate::model::{
    Allocation, Announcement, Desired, EndpointSlice, Family, HealthView, Node, Origin, Pool,
    ProbeTarget, Service, ServiceKey,
};
use crate::store::{AllocationStore, StoreBatch, StoreError};

mod durable;
pub mod plan;
mod probes;
mod run;
mod service_status;
pub mod source;
mod views;

pub use durable::{LastKnownState, StoreFailure};
use probes::ProbeBook;
pub use run::{release_free_memory, run, EngineOutputs};
pub use service_status::ServiceEvent;
pub use views::{EngineStatus, NodeState, PoolState, PoolUsageState, Query, ServiceState};

pub use plan::{Planner, ProbeNeeds, Unannounced, World};

/// A change reported by a source.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A Service pier claims was added or changed.
    Service(Service),
    /// A Service is gone or no longer pier's.
    ServiceGone(ServiceKey),
    Node(Node),
    NodeGone(String),
    Slice(EndpointSlice),
    SliceGone {
        service: ServiceKey,
        name: String,
    },
    Namespace {
        name: String,
        labels: BTreeMap<String, String>,
    },
    NamespaceGone(String),
    /// The source has delivered its complete initial list.
    Synced(Origin),
    /// The source lost its state and will list again: replace everything it
    /// had with what follows up to its next `Synced` (a relist must not
    /// change allocations by itself).
    Resync(Origin),
    Health(HealthView),
    /// New pools (config reload).
    Pools(Vec<Pool>),
    /// Leadership of the lease changed. Only the leader allocates.
    Leader(bool),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSettings {
    /// Sources whose initial list must arrive before the first allocation.
    pub sources: BTreeSet<Origin>,
    /// kube-proxy's health port, probed on every node.
    pub kube_proxy_port: u16,
    /// Start as leader (true when no lease is used).
    pub leader: bool,
}

/// The outcome of one [`Engine::step`].
#[derive(Debug, Default)]
pub struct Step {
    pub events: Vec<ServiceEvent>,
    /// Set when the plan changed; publish it.
    pub desired: Option<Arc<Desired>>,
    /// Set when the set of health-probe targets changed.
    pub probe_targets: Option<BTreeSet<ProbeTarget>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Engine {
    store: Box<dyn AllocationStore>,
    ipam: Ipam,
    planner: Planner,
    settings: EngineSettings,
    services: BTreeMap<ServiceKey, Service>,
    nodes: BTreeMap<String, Node>,
    /// Each Service's slices, sorted by name (a Service has one or a few:
    /// a vector, not a map, whose first node alone would cost a kilobyte).
    endpoints: BTreeMap<ServiceKey, Vec<EndpointSlice>>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pools: BTreeMap<String, Pool>,
    health: HealthView,
    /// Last refusal per pending Service (to deduplicate events).
    refused: BTreeMap<ServiceKey, Refusal>,
    unannounced: BTreeMap<IpAddr, Unannounced>,
    /// Sources that have not finished their initial list.
    awaiting: BTreeSet<Origin>,
    /// Sources relisting: Services they do not re-send by `Synced` are gone.
    relisting: BTreeMap<Origin, BTreeSet<ServiceKey>>,
    /// Services that failed to persist, retried on the next step.
    retry: BTreeSet<ServiceKey>,
    adopted: bool,
    desired: Arc<Desired>,
    probe_targets: BTreeSet<ProbeTarget>,
    /// Each Service's share of the probe targets, with reference counts
    /// over all Services, so a change costs only that Service's share.
    probes: ProbeBook,
    /// Set while store writes fail (cleared by the first that succeeds).
    store_failure: Option<StoreFailure>,
    /// Services told their allocation could not be persisted, during the
    /// current store failure (each is told once).
    store_failed: BTreeSet<ServiceKey>,
    /// Store writes that failed since the start.
    store_failures_total: u64,
    /// Generation of the plan last saved in the store.
    desired_saved: u64,
    /// Leadership saved with it.
    leader_saved: bool,
    /// Set while the published plan is the one stored before a restart
    /// (the API server unreachable at start), until the first full sync.
    last_known: Option<LastKnownState>,
}

impl Engine {
    /// Load every allocation from `store` into a fresh ipam over `pools`.
    /// Allocations that conflict or lie outside every pool are kept (in the
    /// store, and reported), never dropped.
    pub fn new(
        store: Box<dyn AllocationStore>,
        pools: Vec<Pool>,
        settings: EngineSettings,
    ) -> Result<Engine, EngineError> {
        let stored = store.load()?;
        let mut ipam = Ipam::new(pools.clone());
        let mut restored = 0usize;
        for a in stored {
            let (service, ip) = (a.service.clone(), a.ip);
            match ipam.restore(a) {
                Ok(()) => restored += 1,
                Err(reason) => {
                    warn!(%service, %ip, %reason, "stored allocation not restored; it stays in the store")
                }
            }
        }
        for a in ipam.orphans() {
            warn!(service = %a.service, ip = %a.ip, pool = %a.pool, "allocated IP lies outside every pool; kept, not moved");
        }
        info!(
            allocations = restored,
            store = %store.location().display(),
            "allocations loaded"
        );
        Ok(Engine {
            store,
            ipam,
            planner: Planner::new(),
            awaiting: settings.sources.clone(),
            settings,
            services: BTreeMap::new(),
            nodes: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            pools: pools.into_iter().map(|p| (p.name.clone(), p)).collect(),
            health: HealthView::default(),
            refused: BTreeMap::new(),
            unannounced: BTreeMap::new(),
            relisting: BTreeMap::new(),
            retry: BTreeSet::new(),
            adopted: false,
            desired: Arc::new(Desired::default()),
            probe_targets: BTreeSet::new(),
            probes: ProbeBook::default(),
            store_failure: None,
            store_failed: BTreeSet::new(),
            store_failures_total: 0,
            desired_saved: 0,
            leader_saved: false,
            last_known: None,
        })
    }

    pub fn desired(&self) -> &Arc<Desired> {
        &self.desired
    }

    /// True once every source delivered its initial list.
    /// The probe targets the plan depends on, as kept incrementally.
    pub fn probe_targets(&self) -> &BTreeSet<ProbeTarget> {
        &self.probe_targets
    }

    /// The same, computed from scratch (for tests of the incremental form).
    pub fn probe_targets_from_scratch(&self) -> BTreeSet<ProbeTarget> {
        let world = World {
            services: &self.services,
            nodes: &self.nodes,
            endpoints: &self.endpoints,
            pools: &self.pools,
            health: &self.health,
            kube_proxy_port: self.settings.kube_proxy_port,
        };
        plan::probe_targets(&world, self.ipam.by_ip())
    }

    pub fn synced(&self) -> bool {
        self.awaiting.is_empty()
    }

    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.pools.values()
    }

    /// Apply a batch of inputs. Deterministic for a given sequence.
    pub fn step(&mut self, inputs: Vec<Input>) -> Step {
        let mut dirty: BTreeSet<ServiceKey> = std::mem::take(&mut self.retry);
        let mut replan_all = false;
        let mut leader_gained = false;
        for input in inputs {
            self.absorb(input, &mut dirty, &mut replan_all, &mut leader_gained);
        }
        let mut step = Step::default();
        if !self.synced() {
            return step;
        }
        if let Some(lk) = self.last_known.take() {
            info!(
                generation = lk.generation,
                "first full sync since the start from the last known state; reconciling"
            );
        }
        if !self.adopted || leader_gained {
            // First complete view (or a new term as leader): take the IPs
            // already in Services' status before allocating anything new, so
            // neither a lost store nor a leader change re-numbers a Service.
            self.adopt_status(&mut step);
            self.adopted = true;
            dirty.extend(self.services.keys().cloned());
            replan_all = true;
        }
        let touched = self.allocate(&dirty, &mut step);
        self.replan(replan_all, &touched, &dirty, &mut step);
        self.update_probes(replan_all, &touched, &dirty, &mut step);
        self.status_wanted(&touched, &dirty, &mut step);
        step
    }

    fn absorb(
        &mut self,
        input: Input,
        dirty: &mut BTreeSet<ServiceKey>,
        replan_all: &mut bool,
        leader_gained: &mut bool,
    ) {
        match input {
            Input::Service(s) => {
                if let Some(seen) = self.relisting.get_mut(&s.origin) {
                    seen.insert(s.key.clone());
                }
                if self.services.get(&s.key) != Some(&s) {
                    dirty.insert(s.key.clone());
                    self.services.insert(s.key.clone(), s);
                }
            }
            Input::ServiceGone(key) => {
                if self.services.remove(&key).is_some() {
                    dirty.insert(key);
                }
            }
            Input::Node(n) => {
                if self.nodes.get(&n.name) != Some(&n) {
                    self.nodes.insert(n.name.clone(), n);
                    *replan_all = true;
                }
            }
            Input::NodeGone(name) => {
                *replan_all |= self.nodes.remove(&name).is_some();
            }
            Input::Slice(slice) => {
                let slices = self.endpoints.entry(slice.service.clone()).or_default();
                match slices.binary_search_by(|s| s.name.cmp(&slice.name)) {
                    Ok(i) if slices[i] == slice => {}
                    Ok(i) => {
                        dirty.insert(slice.service.clone());
                        slices[i] = slice;
                    }
                    Err(i) => {
                        dirty.insert(slice.service.clone());
                        slices.insert(i, slice);
                    }
                }
            }
            Input::SliceGone { service, name } => {
                if let Some(slices) = self.endpoints.get_mut(&service) {
                    if let Ok(i) = slices.binary_search_by(|s| s.name.cmp(&name)) {
                        slices.remove(i);
                        dirty.insert(service.clone());
                    }
                    if slices.is_empty() {
                        self.endpoints.remove(&service);
                    }
                }
            }
            Input::Namespace { name, labels } => {
                if self.namespaces.get(&name) != Some(&labels) {
                    self.namespaces.insert(name.clone(), labels);
                    dirty.extend(
                        self.services
                            .keys()
                            .filter(|k| k.namespace == name)
                            .cloned(),
                    );
                }
            }
            Input::NamespaceGone(name) => {
                self.namespaces.remove(&name);
            }
            Input::Synced(origin) => {
                self.awaiting.remove(&origin);
                if let Some(seen) = self.relisting.remove(&origin) {
                    // Services of this origin not listed again are gone.
                    let gone: Vec<ServiceKey> = self
                        .services
                        .values()
                        .filter(|s| s.origin == origin && !seen.contains(&s.key))
                        .map(|s| s.key.clone())
                        .collect();
                    for key in gone {
                        self.services.remove(&key);
                        dirty.insert(key);
                    }
                }
            }
            Input::Resync(origin) => {
                self.relisting.insert(origin, BTreeSet::new());
            }
            Input::Health(h) => {
                if h != self.health {
                    self.health = h;
                    *replan_all = true;
                }
            }
            Input::Pools(pools) => {
                let new: BTreeMap<String, Pool> =
                    pools.iter().map(|p| (p.name.clone(), p.clone())).collect();
                if new != self.pools {
                    for a in self.ipam.set_pools(pools) {
                        warn!(service = %a.service, ip = %a.ip, pool = %a.pool, "allocated IP no longer in any pool; kept with its Service, not moved");
                    }
                    self.pools = new;
                    // Pending Services may fit now.
                    dirty.extend(self.refused.keys().cloned());
                    *replan_all = true;
                }
            }
            Input::Leader(leader) => {
                if leader && !self.settings.leader {
                    *leader_gained = true;
                }
                if leader != self.settings.leader {
                    info!(leader, "leadership changed");
                    self.settings.leader = leader;
                    dirty.extend(self.services.keys().cloned());
                }
            }
        }
    }

    /// The IPs whose holders may have changed for `key`, which held `old`
    /// before (the ipam's by-IP index is the planner's: nothing to copy).
    fn reindex(&self, key: &ServiceKey, old: &[Allocation]) -> Vec<IpAddr> {
        old.iter()
            .chain(self.ipam.allocations_of(key))
            .map(|a| a.ip)
            .collect()
    }

    /// Allocate or release for every dirty Service; persist in one batch.
    /// Returns the IPs whose holders changed.
    /// Allocate or release for one Service, collecting the store changes.
    fn allocate_one(&mut self, key: &ServiceKey, work: &mut Batch, step: &mut Step) {
        let held: Vec<Allocation> = self.ipam.allocations_of(key).to_vec();
        let Some(svc) = self.services.get(key) else {
            let gone = ServiceEvent::Gone {
                service: key.clone(),
            };
            if held.is_empty() {
                step.events.push(gone);
            } else {
                let released = self.ipam.release(key);
                work.batch
                    .remove
                    .extend(released.iter().map(|a| (a.service.clone(), a.ip)));
                work.events.push(ServiceEvent::Released {
                    service: key.clone(),
                    ips: released.iter().map(|a| a.ip).collect(),
                });
                // Published with the release, once it is durable.
                work.events.push(gone);
                work.before.entry(key.clone()).or_insert(held);
            }
            self.refused.remove(key);
            return;
        };
        if !self.settings.leader {
            // Followers allocate nothing: they mirror what the leader
            // wrote into the Service's status, so they announce the same
            // VIPs and their store is warm when they take over.
            if self.mirror_status(key, &held, &mut work.batch) {
                work.before.entry(key.clone()).or_insert(held);
            }
            return;
        }
        let labels = self
            .namespaces
            .get(&key.namespace)
            .cloned()
            .unwrap_or_default();
        let result = request_for(svc, &labels).and_then(|req| self.ipam.assign(&req));
        match result {
            Ok(assignment) => {
                self.refused.remove(key);
                if !assignment.changed {
                    return;
                }
                work.batch.remove.extend(
                    assignment
                        .released
                        .iter()
                        .map(|a| (a.service.clone(), a.ip)),
                );
                work.batch
                    .put
                    .extend(assignment.allocations.iter().cloned());
                if !assignment.released.is_empty() {
                    work.events.push(ServiceEvent::Released {
                        service: key.clone(),
                        ips: assignment.released.iter().map(|a| a.ip).collect(),
                    });
                }
                work.events.push(ServiceEvent::Allocated {
                    service: key.clone(),
                    ips: assignment.allocations.iter().map(|a| a.ip).collect(),
                });
                work.before.entry(key.clone()).or_insert(held);
            }
            Err(reason) => {
                if self.refused.get(key) != Some(&reason) {
                    warn!(service = %key, %reason, "allocation refused; Service stays pending");
                    step.events.push(ServiceEvent::Refused {
                        service: key.clone(),
                        reason: reason.clone(),
                    });
                    self.refused.insert(key.clone(), reason);
                }
            }
        }
    }

    fn allocate(&mut self, dirty: &BTreeSet<ServiceKey>, step: &mut Step) -> BTreeSet<IpAddr> {
        let mut work = Batch::default();
        // Releases first, so that IPs given back in this batch can go to
        // the Services that ask for them in the same batch.
        let (gone, present): (Vec<&ServiceKey>, Vec<&ServiceKey>) =
            dirty.iter().partition(|k| !self.services.contains_key(*k));
        for key in gone.into_iter().chain(present) {
            self.allocate_one(key, &mut work, step);
        }
        // Any change to who holds what (an IP freed, a sharing key or
        // ports changed) may let a pending Service fit, and one that then
        // moves may free what another waits for. Bounded: each pass must
        // change something.
        let mut changed = work.batch.len();
        let mut retried: BTreeSet<ServiceKey> = BTreeSet::new();
        for _ in 0..8 {
            if changed == 0 || self.refused.is_empty() {
                break;
            }
            let retry: Vec<ServiceKey> = self
                .refused
                .keys()
                .filter(|k| !retried.contains(*k))
                .cloned()
                .collect();
            let before = work.batch.len();
            for key in retry {
                self.allocate_one(&key, &mut work, step);
                if !self.refused.contains_key(&key) {
                    retried.insert(key);
                }
            }
            changed = work.batch.len() - before;
        }
        let Batch {
            batch,
            before,
            events: pending_events,
        } = work;
        if batch.is_empty() {
            return BTreeSet::new();
        }
        if let Err(e) = self.store.apply(&batch) {
            // Undo in memory: nothing outside pier may learn of an
            // allocation that is not on disk.
            error!(error = %e, services = before.len(), "cannot persist allocations; changes undone, retrying with backoff");
            self.note_store_failure(&e);
            // Every decision of this batch, refusals included, was made
            // against a state that is now undone: take them all again.
            self.retry.extend(dirty.iter().cloned());
            self.retry.extend(self.refused.keys().cloned());
            // Release everything first: one Service may have taken an IP
            // another gave up in the same batch.
            for key in before.keys() {
                self.ipam.release(key);
            }
            for (key, held) in before {
                for a in held {
                    if let Err(reason) = self.ipam.restore(a) {
                        error!(service = %key, %reason, "cannot restore previous allocation in memory");
                    }
                }
                // Told once per failure, not at every retry.
                if self.store_failed.insert(key.clone()) {
                    step.events.push(ServiceEvent::StoreFailed {
                        service: key.clone(),
                        error: e.to_string(),
                    });
                }
                self.retry.insert(key);
            }
            return BTreeSet::new();
        }
        self.note_store_success();
        let mut touched = BTreeSet::new();
        for (key, held) in &before {
            touched.extend(self.reindex(key, held));
        }
        for ev in &pending_events {
            match ev {
                ServiceEvent::Allocated { service, ips } => {
                    info!(service = %service, ips = ?ips, "allocated")
                }
                ServiceEvent::Released { service, ips } => {
                    info!(service = %service, ips = ?ips, "released")
                }
                _ => {}
            }
        }
        step.events.extend(pending_events);
        touched
    }

    fn replan(
        &mut self,
        all: bool,
        touched: &BTreeSet<IpAddr>,
        dirty: &BTreeSet<ServiceKey>,
        step: &mut Step,
    ) {
        let world = World {
            services: &self.services,
            nodes: &self.nodes,
            endpoints: &self.endpoints,
            pools: &self.pools,
            health: &self.health,
            kube_proxy_port: self.settings.kube_proxy_port,
        };
        let announcements = if all {
            self.planner.reset();
            let (a, left_out) = self.planner.plan_all(&world, self.ipam.by_ip());
            self.unannounced = left_out;
            a
        } else {
            // Only the VIPs of changed Services (endpoints included) and
            // the IPs whose holders changed.
            let mut vips: BTreeSet<IpAddr> = touched.clone();
            for key in dirty {
                vips.extend(self.ipam.allocations_of(key).iter().map(|a| a.ip));
            }
            if vips.is_empty() {
                return;
            }
            let mut next: Vec<Arc<Announcement>> = self.desired.announcements.clone();
            for vip in vips {
                let planned = match self.ipam.by_ip().get(&vip) {
                    Some(on_vip) => self.planner.plan_vip(&world, vip, on_vip),
                    None => Err(Unannounced::NoNextHop {
                        why: "released".into(),
                    }),
                };
                let pos = next.binary_search_by(|a| a.vip.cmp(&vip));
                match (planned, pos) {
                    (Ok(a), Ok(i)) => {
                        self.unannounced.remove(&vip);
                        if *next[i] != a {
                            next[i] = Arc::new(a);
                        }
                    }
                    (Ok(a), Err(i)) => {
                        self.unannounced.remove(&vip);
                        next.insert(i, Arc::new(a));
                    }
                    (Err(why), pos) => {
                        if let Ok(i) = pos {
                            next.remove(i);
                        }
                        if self.ipam.by_ip().contains_key(&vip) {
                            self.unannounced.insert(vip, why);
                        } else {
                            self.unannounced.remove(&vip);
                        }
                    }
                }
            }
            next
        };
        let changed = announcements.len() != self.desired.announcements.len()
            || announcements
                .iter()
                .zip(self.desired.announcements.iter())
                .any(|(a, b)| !Arc::ptr_eq(a, b) && a != b);
        if changed {
            log_plan_changes(&self.desired.announcements, &announcements);
            self.desired = Arc::new(Desired {
                generation: self.desired.generation + 1,
                announcements,
            });
            step.desired = Some(self.desired.clone());
        }
    }
}

/// One log line per announced, changed or withdrawn VIP. Both lists are
/// sorted by VIP: a merge walk, skipping shared (unchanged) entries by
/// pointer, so a one-VIP change costs no formatting for the others.
fn log_plan_changes(old: &[Arc<Announcement>], new: &[Arc<Announcement>]) {
    let announce = |a: &Announcement| {
        if tracing::enabled!(tracing::Level::INFO) {
            let services: Vec<String> = a.services.iter().map(|s| s.to_string()).collect();
            // The count at info: 10,000 VIPs × 500 node addresses would be
            // a fifth of the initial sync's CPU; the list is at debug.
            info!(vip = %a.vip, pool = %a.pool, mode = ?a.mode, next_hops = a.next_hops.len(), services = ?services, "announce");
            if tracing::enabled!(tracing::Level::DEBUG) {
                let hops: Vec<String> = a.next_hops.iter().map(|h| h.address.to_string()).collect();
                debug!(vip = %a.vip, next_hops = ?hops, "announce next hops");
            }
        }
    };
    let withdraw = |a: &Announcement| {
        if tracing::enabled!(tracing::Level::INFO) {
            let services: Vec<String> = a.services.iter().map(|s| s.to_string()).collect();
            info!(vip = %a.vip, pool = %a.pool, services = ?services, "withdraw");
        }
    };
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) if o.vip == n.vip => {
                if !Arc::ptr_eq(o, n) && o != n && tracing::enabled!(tracing::Level::DEBUG) {
                    let hops: Vec<String> =
                        n.next_hops.iter().map(|h| h.address.to_string()).collect();
                    debug!(vip = %n.vip, next_hops = ?hops, "announcement changed");
                }
                i += 1;
                j += 1;
            }
            (Some(o), Some(n)) if o.vip < n.vip => {
                withdraw(o);
                i += 1;
            }
            (Some(o), None) => {
                withdraw(o);
                i += 1;
            }
            (_, Some(n)) => {
                announce(n);
                j += 1;
            }
            (None, None) => break,
        }
    }
}

/// The changes one step makes, persisted together.
#[derive(Default)]
struct Batch {
    batch: StoreBatch,
    /// Each changed Service with what it held before the batch (to undo).
    before: BTreeMap<ServiceKey, Vec<Allocation>>,
    /// Announced only once the batch is durable.
    events: Vec<ServiceEvent>,
}

/// Most inputs taken in one step: enough to batch a full initial list into
/// one store flush, few enough to keep latency bounded under a flood.
const MAX_BATCH: usize = 65_536;

/// Inputs in one step above which the step is large (an initial list, a
/// relist): afterwards the memory its buffers took is given back.
const LARGE_STEP: usize = 1_000;

#[cfg(test)]
mod tests;
