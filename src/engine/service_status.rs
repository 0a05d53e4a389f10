//! The engine's side of Kubernetes Service status: what it asks the
//! status writer for ([`ServiceEvent`]), and the IPs it adopts from
//! Services' status (first complete view, a new term as leader, a
//! follower mirroring the leader).

use super::*;

/// What happened to a Service, for logs, Events and status.
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceEvent {
    /// The Service now holds these IPs (durably).
    Allocated {
        service: ServiceKey,
        ips: Vec<IpAddr>,
    },
    /// These IPs were given back.
    Released {
        service: ServiceKey,
        ips: Vec<IpAddr>,
    },
    /// The Service stays pending (deduplicated: sent once per distinct reason).
    Refused {
        service: ServiceKey,
        reason: Refusal,
    },
    /// An IP found in the Service's status could not be adopted.
    AdoptConflict {
        service: ServiceKey,
        ip: IpAddr,
        reason: Refusal,
    },
    /// The store could not be written; the change was undone and is retried.
    StoreFailed { service: ServiceKey, error: String },
    /// The leader wants `status.loadBalancer.ingress` to hold exactly these
    /// IPs (primary family first); the Service's status differs.
    StatusWanted {
        service: ServiceKey,
        ips: Vec<IpAddr>,
    },
    /// The Service is gone or no longer pier's (after its `Released`, if
    /// it held IPs): what is remembered about it can go.
    Gone { service: ServiceKey },
}

impl Engine {
    /// The leader asks for the status of every changed Kubernetes Service
    /// whose `status.loadBalancer.ingress` differs from what it holds. A
    /// Service holding nothing gets no request: a conflicting IP in its
    /// status is reported, not cleared.
    pub(super) fn status_wanted(
        &self,
        touched: &BTreeSet<IpAddr>,
        dirty: &BTreeSet<ServiceKey>,
        step: &mut Step,
    ) {
        if !self.settings.leader {
            return;
        }
        let mut keys: BTreeSet<&ServiceKey> = dirty.iter().collect();
        for vip in touched {
            if let Some(on_vip) = self.ipam.by_ip().get(vip) {
                keys.extend(on_vip.iter().map(|a| &a.service));
            }
        }
        for key in keys {
            let Some(svc) = self.services.get(key) else {
                continue;
            };
            if svc.origin != Origin::Kubernetes {
                continue;
            }
            let held = self.ipam.allocations_of(key);
            if held.is_empty() {
                continue;
            }
            // Primary family first, as the Service lists its families.
            let mut ips: Vec<IpAddr> = held.iter().map(|a| a.ip).collect();
            ips.sort_by_key(|ip| {
                let fam = Family::of(ip);
                svc.ip_families
                    .iter()
                    .position(|f| *f == fam)
                    .unwrap_or(usize::MAX)
            });
            let mut have = svc.status_ips.clone();
            have.sort();
            let mut want = ips.clone();
            want.sort();
            if have != want {
                step.events.push(ServiceEvent::StatusWanted {
                    service: key.clone(),
                    ips,
                });
            }
        }
    }

    /// Take IPs from Services' status that the ipam does not have yet.
    pub(super) fn adopt_status(&mut self, step: &mut Step) {
        let mut batch = StoreBatch::default();
        let services: Vec<Service> = self
            .services
            .values()
            .filter(|s| !s.status_ips.is_empty())
            .cloned()
            .collect();
        for svc in &services {
            self.adopt_service(svc, &mut batch, step);
        }
        if let Err(e) = self.store.apply(&batch) {
            error!(error = %e, "cannot persist IPs adopted from Service status; they stay adopted in memory and are retried");
            self.retry
                .extend(batch.put.iter().map(|a| a.service.clone()));
        }
    }

    pub(super) fn adopt_service(&mut self, svc: &Service, batch: &mut StoreBatch, step: &mut Step) {
        let held: BTreeSet<IpAddr> = self
            .ipam
            .allocations_of(&svc.key)
            .iter()
            .map(|a| a.ip)
            .collect();
        let labels = self
            .namespaces
            .get(&svc.key.namespace)
            .cloned()
            .unwrap_or_default();
        let sharing_key = request_for(svc, &labels)
            .ok()
            .and_then(|r| r.sharing_key.clone());
        for ip in &svc.status_ips {
            if held.contains(ip) {
                continue;
            }
            let Some(pool) = self.pools.values().find(|p| p.contains(ip)) else {
                // Not ours (another controller's IP, or a removed pool).
                continue;
            };
            let a = Allocation {
                service: svc.key.clone(),
                ip: *ip,
                pool: pool.name.clone(),
                sharing_key: sharing_key.clone(),
                ports: svc.ports.clone(),
            };
            match self.ipam.restore(a.clone()) {
                Ok(()) => {
                    info!(service = %svc.key, ip = %ip, "adopted IP from Service status");
                    batch.put.push(a);
                }
                Err(reason) => {
                    warn!(service = %svc.key, ip = %ip, %reason, "IP in Service status conflicts; left alone");
                    step.events.push(ServiceEvent::AdoptConflict {
                        service: svc.key.clone(),
                        ip: *ip,
                        reason,
                    });
                }
            }
        }
    }

    /// Make a follower's allocations for `key` equal the IPs in its status
    /// that lie in a pool. Returns whether anything changed.
    pub(super) fn mirror_status(
        &mut self,
        key: &ServiceKey,
        held: &[Allocation],
        batch: &mut StoreBatch,
    ) -> bool {
        let Some(svc) = self.services.get(key) else {
            return false;
        };
        let mut want: Vec<IpAddr> = svc
            .status_ips
            .iter()
            .filter(|ip| self.pools.values().any(|p| p.contains(ip)))
            .copied()
            .collect();
        want.sort();
        let mut have: Vec<IpAddr> = held.iter().map(|a| a.ip).collect();
        have.sort();
        if want == have {
            return false;
        }
        let svc = svc.clone();
        let released = self.ipam.release(key);
        batch
            .remove
            .extend(released.iter().map(|a| (a.service.clone(), a.ip)));
        let mut scratch = Step::default();
        self.adopt_service(&svc, batch, &mut scratch);
        true
    }
}
