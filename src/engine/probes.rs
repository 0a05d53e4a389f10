//! Which nodes the health prober probes: reference-counted per node and
//! port, updated by each step from what the plan needs.

use super::*;

/// Each Service's share of the probe targets, with reference counts over
/// all Services, so one Service's change costs only its own share.
#[derive(Default)]
pub(super) struct ProbeBook {
    needs: BTreeMap<ServiceKey, ProbeNeeds>,
    counts: BTreeMap<ProbeTarget, usize>,
    cluster: BTreeMap<(String, Family), usize>,
}

impl ProbeBook {
    /// Recompute the share of the Service holding `allocs` (none when it
    /// is gone); true when the union changed (a target or a (pool, family)
    /// appeared or went away).
    pub(super) fn update(
        &mut self,
        world: &World<'_>,
        key: &ServiceKey,
        allocs: &[Allocation],
    ) -> bool {
        let new = if allocs.is_empty() {
            ProbeNeeds::default()
        } else {
            plan::service_probe_needs(world, allocs)
        };
        let old = if new.is_empty() {
            self.needs.remove(key).unwrap_or_default()
        } else {
            match self.needs.insert(key.clone(), new.clone()) {
                Some(old) if old == new => return false,
                old => old.unwrap_or_default(),
            }
        };
        let targets = count_diff(&mut self.counts, &old.targets, &new.targets);
        let cluster = count_diff(&mut self.cluster, &old.cluster, &new.cluster);
        targets || cluster
    }
}

/// Move reference counts from `old` to `new`; true when a key appeared or
/// disappeared.
/// Both are sorted without duplicates.
fn count_diff<T: Ord + Clone>(counts: &mut BTreeMap<T, usize>, old: &[T], new: &[T]) -> bool {
    let mut changed = false;
    let has = |v: &[T], x: &T| v.binary_search(x).is_ok();
    for gone in old.iter().filter(|x| !has(new, x)) {
        if let Some(n) = counts.get_mut(gone) {
            *n -= 1;
            if *n == 0 {
                counts.remove(gone);
                changed = true;
            }
        }
    }
    for came in new.iter().filter(|x| !has(old, x)) {
        let n = counts.entry(came.clone()).or_insert(0);
        *n += 1;
        changed |= *n == 1;
    }
    changed
}

impl Engine {
    /// Keep the probe targets current: only the Services whose share may
    /// have changed are recomputed.
    pub(super) fn update_probes(
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
        let mut needs_changed = false;
        if all {
            self.probes = ProbeBook::default();
            for key in self.services.keys() {
                self.probes
                    .update(&world, key, self.ipam.allocations_of(key));
            }
            needs_changed = true;
        } else {
            let mut keys: BTreeSet<&ServiceKey> = dirty.iter().collect();
            for vip in touched {
                if let Some(on_vip) = self.ipam.by_ip().get(vip) {
                    keys.extend(on_vip.iter().map(|a| &a.service));
                }
            }
            for key in keys {
                let allocs = if self.services.contains_key(key) {
                    self.ipam.allocations_of(key)
                } else {
                    &[]
                };
                needs_changed |= self.probes.update(&world, key, allocs);
            }
        }
        if needs_changed {
            let mut targets: BTreeSet<ProbeTarget> = self.probes.counts.keys().cloned().collect();
            targets.extend(plan::cluster_probe_targets(
                &world,
                self.probes.cluster.keys(),
            ));
            if targets != self.probe_targets {
                self.probe_targets = targets.clone();
                step.probe_targets = Some(targets);
            }
        }
    }
}
