//! The status and Event writer. Only the lease holder writes. Status goes
//! through the status subresource, only when it differs, with the
//! Service's resourceVersion as a precondition (a 409 means the Service
//! changed: read it again and retry). Writes are coalesced per Service, so
//! a burst of changes ends in one write of the last state.
//!
//! No read at all on the way for a [`StatusWrite::Set`], and no quorum
//! read for a [`StatusWrite::Clear`]. A Set is asked for by the engine when
//! the status its watch delivered differs, and its list does not depend on
//! what the Service holds: it is one merge PATCH naming only
//! `status.loadBalancer.ingress` (a resourceVersion precondition would
//! only turn another writer's change into a 409 and the same write again).
//! A Clear keeps the other entries, so it reads the Service first with
//! `resourceVersion=0`, which kube-apiserver answers from its watch cache
//! (the cache the engine's own watch is fed from), writes with that
//! resourceVersion as a precondition, and reads through etcd only after a
//! 409. A plain GET before each PATCH would be one more etcd round per
//! Service (docs/kubernetes.md, "What pier costs the API server").
//!
//! Events are `events.k8s.io/v1`, deduplicated by
//! [`super::events::EventBook`] and paced by [`super::events::EventOutbox`]:
//! they go after the status writes of their round, at a bounded rate.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, ObjectReference, Service as KService};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{GetParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::events::{
    EventBook, EventKind, EventOutbox, EventWrite, Occurrence, Offered, OutgoingEvent,
};
use crate::engine::ServiceEvent;
use crate::ipam::Refusal;
use crate::model::ServiceKey;

/// `ipMode` pier writes: traffic arrives with the VIP as destination.
pub const IP_MODE: &str = "VIP";

/// A status write waiting to be made: what one Service's
/// `status.loadBalancer.ingress` should become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusWrite {
    /// Exactly these IPs (pier's Service).
    Set(Vec<IpAddr>),
    /// Remove these IPs, keep every other entry (a Service that stopped
    /// being pier's: only what pier wrote is cleared).
    Clear(BTreeSet<IpAddr>),
}

impl StatusWrite {
    /// Fold a newer request into this one.
    fn merge(&mut self, newer: StatusWrite) {
        match (&mut *self, newer) {
            (StatusWrite::Clear(a), StatusWrite::Clear(b)) => a.extend(b),
            (_, newer) => *self = newer,
        }
    }

    /// The ingress list this write makes of `current`.
    pub fn apply(&self, current: &[LoadBalancerIngress]) -> Vec<LoadBalancerIngress> {
        match self {
            StatusWrite::Set(ips) => ips
                .iter()
                .map(|ip| LoadBalancerIngress {
                    ip: Some(ip.to_string()),
                    ip_mode: Some(IP_MODE.to_string()),
                    ..Default::default()
                })
                .collect(),
            StatusWrite::Clear(ips) => current
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

/// The Event an engine event is reported by, if any.
pub fn occurrence(ev: &ServiceEvent) -> Option<Occurrence> {
    let list = |ips: &[IpAddr]| {
        ips.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (service, reason, kind, action, note) = match ev {
        ServiceEvent::Allocated { service, ips } => (
            service,
            "IPAllocated",
            EventKind::Normal,
            "Allocate",
            format!("allocated {}", list(ips)),
        ),
        ServiceEvent::Released { service, ips } => (
            service,
            "IPReleased",
            EventKind::Normal,
            "Release",
            format!("released {}", list(ips)),
        ),
        ServiceEvent::Refused { service, reason } => (
            service,
            match reason {
                Refusal::InvalidAnnotation { .. } => "InvalidAnnotation",
                _ => "AllocationFailed",
            },
            EventKind::Warning,
            "Allocate",
            format!("{reason}; the Service stays pending"),
        ),
        ServiceEvent::AdoptConflict {
            service,
            ip,
            reason,
        } => (
            service,
            "AllocationFailed",
            EventKind::Warning,
            "Adopt",
            format!("{ip} in status.loadBalancer.ingress was not adopted: {reason}"),
        ),
        ServiceEvent::StoreFailed { service, error } => (
            service,
            "AllocationFailed",
            EventKind::Warning,
            "Persist",
            format!("cannot persist the allocation on the gateway, retrying: {error}"),
        ),
        ServiceEvent::StatusWanted { .. } | ServiceEvent::Gone { .. } => return None,
    };
    Some(Occurrence {
        service: service.clone(),
        reason,
        kind,
        action,
        note,
    })
}

/// What writing a status found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusOutcome {
    /// The status was written (false: already as wanted, or no Service).
    pub written: bool,
    /// The Service's uid, when it exists (for the Events about it).
    pub uid: Option<String>,
}

/// The Service is gone: nothing written, no uid.
const GONE: StatusOutcome = StatusOutcome {
    written: false,
    uid: None,
};

/// Write one Service's status: a Set in one merge PATCH, a Clear after a
/// read from the watch cache (see the module's documentation).
pub async fn write_status(
    client: &Client,
    key: &ServiceKey,
    work: &StatusWrite,
) -> Result<StatusOutcome, kube::Error> {
    let api: Api<KService> = Api::namespaced(client.clone(), &key.namespace);
    if let StatusWrite::Set(_) = work {
        let patch = json!({"status": {"loadBalancer": {"ingress": work.apply(&[])}}});
        return match api
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(svc) => Ok(StatusOutcome {
                written: true,
                uid: svc.metadata.uid,
            }),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(GONE),
            Err(e) => Err(e),
        };
    }
    let mut read = GetParams::any();
    for _ in 0..5 {
        let svc = match api.get_with(&key.name, &read).await {
            Ok(svc) => svc,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(GONE),
            Err(e) => return Err(e),
        };
        let uid = svc.metadata.uid.clone();
        let current: Vec<LoadBalancerIngress> = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.clone())
            .unwrap_or_default();
        let next = work.apply(&current);
        if next == current {
            return Ok(StatusOutcome {
                written: false,
                uid,
            });
        }
        // Only the ingress list is named: the rest of the status
        // (conditions, other writers' fields) is left as it is, and the
        // resourceVersion keeps the entries another writer added meanwhile.
        let patch = json!({
            "metadata": {"resourceVersion": svc.metadata.resource_version},
            "status": {"loadBalancer": {"ingress": next}},
        });
        match api
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(StatusOutcome { written: true, uid }),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                debug!(service = %key, "status conflict; reading the Service again");
                read = GetParams::default();
                continue;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(GONE),
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

/// The `events.k8s.io/v1` Event for a new occurrence.
pub fn event_object(
    name: &str,
    occ: &Occurrence,
    event_time: Timestamp,
    instance: &str,
    uid: Option<String>,
) -> K8sEvent {
    K8sEvent {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(occ.service.namespace.clone()),
            ..Default::default()
        },
        event_time: Some(MicroTime(event_time)),
        regarding: Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(occ.service.namespace.clone()),
            name: Some(occ.service.name.clone()),
            // `kubectl describe` selects a Service's Events by its uid.
            uid,
            ..Default::default()
        }),
        reason: Some(occ.reason.to_string()),
        note: Some(occ.note.clone()),
        type_: Some(occ.kind.as_str().to_string()),
        action: Some(occ.action.to_string()),
        reporting_controller: Some(REPORTING_CONTROLLER.to_string()),
        reporting_instance: Some(instance.chars().take(128).collect()),
        ..Default::default()
    }
}

/// `reportingController` of pier's Events.
pub const REPORTING_CONTROLLER: &str = "pier";

/// Perform one Event write. `Err` carries the Event's name, for the book.
/// Why an Event write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventFailure {
    /// Waiting can heal it (the API server unreachable, restarting, 5xx,
    /// 429): tried again.
    Transient,
    /// Refused: the book forgets the Event.
    Refused,
}

fn event_failure(e: &kube::Error) -> EventFailure {
    if super::transient(e) {
        EventFailure::Transient
    } else {
        EventFailure::Refused
    }
}

async fn send_event(
    client: &Client,
    write: &EventWrite,
    instance: &str,
    uid: Option<String>,
) -> Result<(), EventFailure> {
    match write {
        EventWrite::Create {
            name,
            occurrence,
            event_time,
        } => {
            let api: Api<K8sEvent> = Api::namespaced(client.clone(), &occurrence.service.namespace);
            let ev = event_object(name, occurrence, *event_time, instance, uid);
            match api.create(&PostParams::default(), &ev).await {
                Ok(_) => {
                    debug!(service = %occurrence.service, reason = occurrence.reason, "Event recorded");
                    Ok(())
                }
                // A try whose answer was lost (the server restarting)
                // created it: names are not reused.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                Err(e) => {
                    warn!(service = %occurrence.service, reason = occurrence.reason, error = %super::explain(&e), "cannot record Event");
                    Err(event_failure(&e))
                }
            }
        }
        EventWrite::Series {
            service,
            name,
            count,
            last_observed,
        } => {
            let api: Api<K8sEvent> = Api::namespaced(client.clone(), &service.namespace);
            let patch =
                json!({"series": {"count": count, "lastObservedTime": MicroTime(*last_observed)}});
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => {
                    // Gone (the API server's Event TTL) or refused: the
                    // next occurrence starts a new Event.
                    debug!(service = %service, event = %name, error = %super::explain(&e), "cannot update the Event's series");
                    Err(event_failure(&e))
                }
            }
        }
    }
}

/// How often finished series are written and old entries forgotten.
const EVENT_TICK: Duration = Duration::from_secs(30);

/// Start the writer. `leader` says whether this box may write; when it
/// turns false, pending writes are dropped at once.
///
/// Each round: the engine's events that arrived, then the status writes
/// they ask for (64 at a time), then the Event writes the outbox lets go
/// (the writer's bucket allows a burst, then a steady rate; the rest
/// wait for a timer and go in later rounds, after those rounds' statuses).
pub fn spawn(
    client: Client,
    mut events: mpsc::UnboundedReceiver<ServiceEvent>,
    mut leader: watch::Receiver<bool>,
    instance: String,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut book = EventBook::default();
        let mut outbox = EventOutbox::default();
        let mut pending: BTreeMap<ServiceKey, StatusWrite> = BTreeMap::new();
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut events_at: Option<tokio::time::Instant> = None;
        let mut burst = false;
        let mut was_leader = false;
        let mut tick = tokio::time::interval(EVENT_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let until = |t: Option<tokio::time::Instant>| async move {
                match t {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            // Each engine event is taken apart as it arrives (its status
            // request into `pending`, its Event aside until the statuses are
            // written), so a round of 10,000 keeps no copy of the events.
            let mut round = Round::default();
            let mut ticked = false;
            tokio::select! {
                ev = events.recv() => {
                    let Some(ev) = ev else { return };
                    round.take(ev, &mut pending);
                    while let Ok(ev) = events.try_recv() {
                        round.take(ev, &mut pending);
                    }
                }
                _ = leader.changed() => {}
                _ = until(retry_at) => { retry_at = None; }
                _ = until(events_at) => {}
                _ = tick.tick() => { ticked = true; }
            }
            let is_leader = *leader.borrow_and_update();
            if !is_leader {
                // A standby's engine reports its own releases too: taken
                // apart above like the leader's, dropped here without a word.
                if was_leader && (!pending.is_empty() || !outbox.is_empty()) {
                    info!(
                        services = pending.len(),
                        events = outbox.len(),
                        "lease lost: pending status and Event writes dropped"
                    );
                }
                pending.clear();
                book.clear();
                outbox.clear();
                retry_at = None;
                events_at = None;
                was_leader = false;
                continue;
            }
            was_leader = true;
            // Status first (what users and controllers wait for), several
            // Services at a time; each write checks leadership as it starts.
            // The writes are consumed as they go and their outcomes handled
            // as they come: no list of the round's writes or results.
            let mut uids: BTreeMap<ServiceKey, Option<String>> = BTreeMap::new();
            burst |= round.events >= LARGE_ROUND;
            if retry_at.is_none() && !pending.is_empty() {
                let leader_now = &leader;
                let client = &client;
                let mut outcomes = futures::stream::iter(std::mem::take(&mut pending))
                    .map(|(key, w)| async move {
                        if !*leader_now.borrow() {
                            return (key, w, None);
                        }
                        let r = write_status(client, &key, &w).await;
                        match &r {
                            Ok(o) if o.written => {
                                info!(service = %key, status = ?w, "status written")
                            }
                            Ok(_) => debug!(service = %key, "status already as wanted"),
                            Err(_) => {}
                        }
                        (key, w, Some(r))
                    })
                    .buffer_unordered(WRITES_IN_FLIGHT);
                let mut failed: Vec<(ServiceKey, StatusWrite)> = Vec::new();
                while let Some((key, w, r)) = outcomes.next().await {
                    match r {
                        None => {}
                        Some(Ok(o)) => {
                            uids.insert(key, o.uid);
                        }
                        Some(Err(e)) => {
                            warn!(service = %key, error = %super::explain(&e), "cannot write status; retrying");
                            failed.push((key, w));
                        }
                    }
                }
                drop(outcomes);
                if !failed.is_empty() {
                    for (key, w) in failed {
                        queue(&mut pending, &key, w);
                    }
                    retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                }
            }
            // Events: the book decides what (one Event per Service, reason
            // and note; repeats counted in its series), the outbox when.
            let now = Timestamp::now();
            let (mut limited, mut dropped) = (0usize, 0usize);
            let mut offer = |w: EventWrite, outbox: &mut EventOutbox| {
                let uid = match &w {
                    EventWrite::Create { occurrence, .. } => {
                        uids.get(&occurrence.service).cloned().flatten()
                    }
                    EventWrite::Series { .. } => None,
                };
                match outbox.offer(w, uid, now) {
                    Offered::Queued => {}
                    Offered::Limited => limited += 1,
                    Offered::Dropped => dropped += 1,
                }
            };
            for occ in std::mem::take(&mut round.occurrences) {
                if let Some(w) = book.record(occ, now) {
                    offer(w, &mut outbox);
                }
            }
            if ticked {
                for w in book.tick(now) {
                    offer(w, &mut outbox);
                }
                outbox.prune(now);
            }
            if limited + dropped > 0 {
                info!(
                    limited,
                    dropped, "Events not written: too many for one Service, or the queue is full"
                );
            }
            drop(uids);
            for service in &round.gone {
                book.forget(service);
            }
            let due = outbox.take(now);
            if !due.is_empty() {
                send_events(&client, &instance, &leader, due, &mut book, &mut outbox).await;
            }
            events_at = outbox
                .due(Timestamp::now())
                .map(|d| tokio::time::Instant::now() + d.max(EVENT_ROUND));
            // After a burst of full rounds (an initial sync), give the
            // memory its writes used back to the system.
            if burst && events.is_empty() {
                burst = false;
                crate::engine::release_free_memory();
            }
        }
    })
}

/// The shortest wait between two rounds of Event writes: tokens gathered
/// meanwhile go out together rather than one round each.
const EVENT_ROUND: Duration = Duration::from_millis(50);

/// Send the outbox's writes, several at a time. A write that failed for a
/// reason waiting can heal goes back to the outbox (up to
/// [`super::events::EVENT_TRIES`] tries, as client-go's recorder); the
/// book forgets an Event that was refused or given up.
async fn send_events(
    client: &Client,
    instance: &str,
    leader: &watch::Receiver<bool>,
    writes: Vec<OutgoingEvent>,
    book: &mut EventBook,
    outbox: &mut EventOutbox,
) {
    let leader_now = leader;
    let failed: Vec<(OutgoingEvent, EventFailure)> = futures::stream::iter(writes)
        .map(|mut out| async move {
            if !*leader_now.borrow() {
                return None;
            }
            if out.uid.is_none() {
                if let EventWrite::Create { occurrence, .. } = &out.write {
                    out.uid = service_uid(client, &occurrence.service).await;
                }
            }
            let r = send_event(client, &out.write, instance, out.uid.clone()).await;
            r.err().map(|f| (out, f))
        })
        .buffer_unordered(WRITES_IN_FLIGHT)
        .filter_map(|r| async move { r })
        .collect()
        .await;
    let now = Timestamp::now();
    for (out, failure) in failed {
        let (service, name) = match &out.write {
            EventWrite::Create {
                name, occurrence, ..
            } => (occurrence.service.clone(), name.clone()),
            EventWrite::Series { service, name, .. } => (service.clone(), name.clone()),
        };
        if failure == EventFailure::Refused || !outbox.retry(out, now) {
            book.failed(&service, &name);
        }
    }
}

/// One round of the engine's events, taken apart as they arrive: status
/// requests go straight into the pending writes, what an Event reports waits
/// (in order) for the statuses, a Service that is gone is forgotten last.
#[derive(Default)]
struct Round {
    /// Engine events in the round (a large round is an initial sync).
    events: usize,
    occurrences: Vec<Occurrence>,
    gone: Vec<ServiceKey>,
}

impl Round {
    fn take(&mut self, ev: ServiceEvent, pending: &mut BTreeMap<ServiceKey, StatusWrite>) {
        self.events += 1;
        if let Some(occ) = occurrence(&ev) {
            self.occurrences.push(occ);
        }
        match ev {
            ServiceEvent::StatusWanted { service, ips } => {
                queue(pending, &service, StatusWrite::Set(ips));
            }
            ServiceEvent::Released { service, ips } => {
                queue(
                    pending,
                    &service,
                    StatusWrite::Clear(ips.into_iter().collect()),
                );
            }
            ServiceEvent::Gone { service } => self.gone.push(service),
            _ => {}
        }
    }
}

/// Engine events in one round above which the memory the round used is
/// given back to the system once the writer has caught up (an initial sync).
const LARGE_ROUND: usize = 1_000;

/// The uid of a Service, if it can be read (from the watch cache: a uid
/// never changes, so any copy will do).
async fn service_uid(client: &Client, key: &ServiceKey) -> Option<String> {
    let api: Api<KService> = Api::namespaced(client.clone(), &key.namespace);
    api.get_with(&key.name, &GetParams::any())
        .await
        .ok()?
        .metadata
        .uid
}

/// Status writes and Events sent at once.
const WRITES_IN_FLIGHT: usize = 64;

fn queue(pending: &mut BTreeMap<ServiceKey, StatusWrite>, key: &ServiceKey, w: StatusWrite) {
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
        let set = StatusWrite::Set(vec!["10.0.0.1".parse().unwrap()]);
        assert_eq!(set.apply(&cur), vec![ing("10.0.0.1", Some("VIP"))]);
        let clear = StatusWrite::Clear(["10.0.0.1".parse().unwrap()].into());
        assert_eq!(clear.apply(&cur), vec![ing("192.0.2.9", Some("Proxy"))]);
    }

    #[test]
    fn merge_keeps_the_last_set_and_unions_clears() {
        let mut w = StatusWrite::Clear(["10.0.0.1".parse().unwrap()].into());
        w.merge(StatusWrite::Clear(["10.0.0.2".parse().unwrap()].into()));
        assert_eq!(
            w,
            StatusWrite::Clear(["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()].into())
        );
        w.merge(StatusWrite::Set(vec!["10.0.0.3".parse().unwrap()]));
        assert_eq!(w, StatusWrite::Set(vec!["10.0.0.3".parse().unwrap()]));
    }
}
