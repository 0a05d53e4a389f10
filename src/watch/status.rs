//! The status and Event writer. Only the lease holder writes. Status goes
//! through the status subresource, only when it differs, with the
//! Service's resourceVersion (a 409 means the Service changed: read it
//! again and retry). Writes are coalesced per Service, so a burst of
//! changes ends in one write of the last state.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, ObjectReference, Service as KService};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::engine::ServiceEvent;
use crate::ipam::Refusal;
use crate::model::ServiceKey;

/// `ipMode` pier writes: traffic arrives with the VIP as destination.
pub const IP_MODE: &str = "VIP";

/// What a Service's status should become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// Exactly these IPs (pier's Service).
    Set(Vec<IpAddr>),
    /// Remove these IPs, keep every other entry (a Service that stopped
    /// being pier's: only what pier wrote is cleared).
    Clear(BTreeSet<IpAddr>),
}

impl Work {
    /// Fold a newer request into this one.
    fn merge(&mut self, newer: Work) {
        match (&mut *self, newer) {
            (Work::Clear(a), Work::Clear(b)) => a.extend(b),
            (_, newer) => *self = newer,
        }
    }

    /// The ingress list this work makes of `current`.
    pub fn apply(&self, current: &[LoadBalancerIngress]) -> Vec<LoadBalancerIngress> {
        match self {
            Work::Set(ips) => ips
                .iter()
                .map(|ip| LoadBalancerIngress {
                    ip: Some(ip.to_string()),
                    ip_mode: Some(IP_MODE.to_string()),
                    ..Default::default()
                })
                .collect(),
            Work::Clear(ips) => current
                .iter()
                .filter(|i| {
                    !i.ip
                        .as_deref()
                        .and_then(|s| s.parse::<IpAddr>().ok())
                        .is_some_and(|ip| ips.contains(&ip))
                })
                .cloned()
                .collect(),
        }
    }
}

/// The Event (reason, type, note) for an engine event, if any.
pub fn event_for(ev: &ServiceEvent) -> Option<(&ServiceKey, &'static str, EventType, String)> {
    let list = |ips: &[IpAddr]| {
        ips.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(match ev {
        ServiceEvent::Allocated { service, ips } => (
            service,
            "IPAllocated",
            EventType::Normal,
            format!("allocated {}", list(ips)),
        ),
        ServiceEvent::Released { service, ips } => (
            service,
            "IPReleased",
            EventType::Normal,
            format!("released {}", list(ips)),
        ),
        ServiceEvent::Refused { service, reason } => (
            service,
            match reason {
                Refusal::InvalidAnnotation { .. } => "InvalidAnnotation",
                _ => "AllocationFailed",
            },
            EventType::Warning,
            format!("{reason}; the Service stays pending"),
        ),
        ServiceEvent::AdoptConflict {
            service,
            ip,
            reason,
        } => (
            service,
            "AllocationFailed",
            EventType::Warning,
            format!("{ip} in status.loadBalancer.ingress was not adopted: {reason}"),
        ),
        ServiceEvent::StoreFailed { service, error } => (
            service,
            "AllocationFailed",
            EventType::Warning,
            format!("cannot persist the allocation on the gateway, retrying: {error}"),
        ),
        ServiceEvent::StatusWanted { .. } => return None,
    })
}

fn reference(key: &ServiceKey) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        namespace: Some(key.namespace.clone()),
        name: Some(key.name.clone()),
        ..Default::default()
    }
}

/// Write one Service's status. `Ok(true)` when written, `Ok(false)` when
/// nothing had to change (or the Service is gone).
pub async fn write_status(
    client: &Client,
    key: &ServiceKey,
    work: &Work,
) -> Result<bool, kube::Error> {
    let api: Api<KService> = Api::namespaced(client.clone(), &key.namespace);
    for _ in 0..5 {
        let Some(svc) = api.get_opt(&key.name).await? else {
            return Ok(false);
        };
        let current: Vec<LoadBalancerIngress> = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.clone())
            .unwrap_or_default();
        let next = work.apply(&current);
        if next == current {
            return Ok(false);
        }
        let patch = json!({
            "metadata": {"resourceVersion": svc.metadata.resource_version},
            "status": {"loadBalancer": {"ingress": next}},
        });
        match api
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                debug!(service = %key, "status conflict; reading the Service again");
                continue;
            }
            Err(e) => return Err(e),
        }
    }
    Err(kube::Error::Api(Box::new(kube::core::Status {
        code: 409,
        reason: "Conflict".into(),
        message: "the Service kept changing under five status writes".into(),
        ..Default::default()
    })))
}

/// Start the writer. `leader` says whether this box may write; when it
/// turns false, pending writes are dropped at once.
pub fn spawn(
    client: Client,
    mut events: mpsc::UnboundedReceiver<ServiceEvent>,
    mut leader: watch::Receiver<bool>,
    instance: String,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "pier".into(),
                instance: Some(instance),
            },
        );
        let mut pending: BTreeMap<ServiceKey, Work> = BTreeMap::new();
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let sleep = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let mut notes = Vec::new();
            tokio::select! {
                ev = events.recv() => {
                    let Some(ev) = ev else { return };
                    notes.push(ev);
                    while let Ok(ev) = events.try_recv() {
                        notes.push(ev);
                    }
                }
                _ = leader.changed() => {}
                _ = sleep => { retry_at = None; }
            }
            let is_leader = *leader.borrow_and_update();
            if !is_leader {
                if !pending.is_empty() {
                    info!(
                        services = pending.len(),
                        "lease lost: pending status writes dropped"
                    );
                }
                pending.clear();
                retry_at = None;
                continue;
            }
            for ev in &notes {
                match ev {
                    ServiceEvent::StatusWanted { service, ips } => {
                        queue(&mut pending, service, Work::Set(ips.clone()));
                    }
                    ServiceEvent::Released { service, ips } => {
                        queue(
                            &mut pending,
                            service,
                            Work::Clear(ips.iter().copied().collect()),
                        );
                    }
                    _ => {}
                }
            }
            // Status first (what users and controllers wait for), several
            // Services at a time; each write checks leadership as it starts.
            if retry_at.is_none() {
                let work: Vec<(ServiceKey, Work)> =
                    std::mem::take(&mut pending).into_iter().collect();
                let leader_now = &leader;
                let client = &client;
                let results: Vec<WriteOutcome> = futures::stream::iter(work)
                    .map(|(key, w)| async move {
                        if !*leader_now.borrow() {
                            return (key, w, None);
                        }
                        let r = write_status(client, &key, &w).await;
                        match &r {
                            Ok(true) => info!(service = %key, status = ?w, "status written"),
                            Ok(false) => debug!(service = %key, "status already as wanted"),
                            Err(_) => {}
                        }
                        (key, w, Some(r))
                    })
                    .buffer_unordered(WRITES_IN_FLIGHT)
                    .collect()
                    .await;
                for (key, w, r) in results {
                    match r {
                        None | Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            warn!(service = %key, error = %super::explain(&e), "cannot write status; retrying");
                            queue(&mut pending, &key, w);
                            retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                        }
                    }
                }
            }
            let recorder = &recorder;
            futures::stream::iter(notes.iter().filter_map(event_for))
                .for_each_concurrent(WRITES_IN_FLIGHT, |(key, reason, type_, note)| async move {
                    let e = Event {
                        type_,
                        reason: reason.into(),
                        note: Some(note),
                        action: "Allocate".into(),
                        secondary: None,
                    };
                    if let Err(err) = recorder.publish(&e, &reference(key)).await {
                        warn!(service = %key, reason, error = %super::explain(&err), "cannot record Event");
                    }
                })
                .await;
        }
    })
}

/// One status write: the Service, its work, and the result (`None`: not
/// tried, this box no longer leads).
type WriteOutcome = (ServiceKey, Work, Option<Result<bool, kube::Error>>);

/// Status writes and Events sent at once.
const WRITES_IN_FLIGHT: usize = 64;

fn queue(pending: &mut BTreeMap<ServiceKey, Work>, key: &ServiceKey, w: Work) {
    match pending.get_mut(key) {
        Some(old) => old.merge(w),
        None => {
            pending.insert(key.clone(), w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ing(ip: &str, mode: Option<&str>) -> LoadBalancerIngress {
        LoadBalancerIngress {
            ip: Some(ip.into()),
            ip_mode: mode.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn set_replaces_clear_keeps_others() {
        let cur = vec![ing("10.0.0.1", None), ing("192.0.2.9", Some("Proxy"))];
        let set = Work::Set(vec!["10.0.0.1".parse().unwrap()]);
        assert_eq!(set.apply(&cur), vec![ing("10.0.0.1", Some("VIP"))]);
        let clear = Work::Clear(["10.0.0.1".parse().unwrap()].into());
        assert_eq!(clear.apply(&cur), vec![ing("192.0.2.9", Some("Proxy"))]);
    }

    #[test]
    fn merge_keeps_the_last_set_and_unions_clears() {
        let mut w = Work::Clear(["10.0.0.1".parse().unwrap()].into());
        w.merge(Work::Clear(["10.0.0.2".parse().unwrap()].into()));
        assert_eq!(
            w,
            Work::Clear(["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()].into())
        );
        w.merge(Work::Set(vec!["10.0.0.3".parse().unwrap()]));
        assert_eq!(w, Work::Set(vec!["10.0.0.3".parse().unwrap()]));
    }
}
