//! Leader election over a `coordination.k8s.io/v1` Lease, as client-go does
//! it: expiry is judged by this box's own clock from when it last saw the
//! record change (never by comparing its clock with another box's
//! `renewTime`), and a leader that cannot renew steps down before anyone
//! else may take over.
//!
//! [`Elector`] is the pure decision; [`run`] does the I/O.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::engine::Input;

/// What the elector read: the holder and something that changes with
/// every renewal (resourceVersion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub holder: Option<String>,
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Take or renew the lease (write ourselves as holder).
    Write,
    /// Someone else holds a live lease.
    Wait,
}

#[derive(Debug, Clone)]
pub struct Elector {
    pub id: String,
    pub duration: Duration,
    pub renew: Duration,
    /// The record last seen and when (local clock) it was first seen.
    seen: Option<(Observed, Duration)>,
    /// When this box last wrote the lease successfully.
    last_write: Option<Duration>,
}

impl Elector {
    pub fn new(id: String, duration: Duration, renew: Duration) -> Self {
        Elector {
            id,
            duration,
            renew,
            seen: None,
            last_write: None,
        }
    }

    /// Decide from the current record (`None`: no Lease yet) at `now`.
    pub fn decide(&mut self, current: Option<&Observed>, now: Duration) -> Decision {
        let Some(cur) = current else {
            return Decision::Write;
        };
        if self.seen.as_ref().map(|(o, _)| o) != Some(cur) {
            self.seen = Some((cur.clone(), now));
        }
        match cur.holder.as_deref() {
            None | Some("") => Decision::Write,
            Some(h) if h == self.id => Decision::Write,
            Some(_) => {
                // Another holder is written in the record: whatever this
                // box renewed before no longer makes it the leader.
                self.last_write = None;
                let since = self.seen.as_ref().map_or(now, |(_, t)| *t);
                if now.saturating_sub(since) >= self.duration {
                    Decision::Write
                } else {
                    Decision::Wait
                }
            }
        }
    }

    pub fn wrote(&mut self, now: Duration) {
        self.last_write = Some(now);
    }

    /// Whether this box may act as leader at `now`: it renewed recently
    /// enough that no other box can have taken over. Others wait a full
    /// `duration` from when they saw the last renewal; stepping down
    /// `renew` earlier leaves room for clock rate and delivery delays.
    pub fn leading(&self, now: Duration) -> bool {
        let deadline = self.duration.saturating_sub(self.renew);
        self.last_write
            .is_some_and(|t| now.saturating_sub(t) < deadline)
    }
}

fn observed(l: &Lease) -> Observed {
    Observed {
        holder: l.spec.as_ref().and_then(|s| s.holder_identity.clone()),
        version: l.metadata.resource_version.clone().unwrap_or_default(),
    }
}

/// This box's identity in the Lease: host name and process id, so two
/// gateways on one host (a lab) are told apart and a restarted process is
/// a new holder (a clean stop releases the lease; a crash lets it expire).
pub fn identity() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    let host = if name.is_empty() { "pier" } else { &name };
    format!("{host}_{}", std::process::id())
}

/// Write ourselves as holder: create the Lease, or replace it at the
/// version we decided on (a 409 means someone else wrote first).
async fn write(
    api: &Api<Lease>,
    name: &str,
    current: Option<Lease>,
    el: &Elector,
) -> Result<(), kube::Error> {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    match current {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(el.id.clone()),
                    lease_duration_seconds: Some(el.duration.as_secs() as i32),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await.map(|_| ())
        }
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() != Some(el.id.as_str()) {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                spec.acquire_time = Some(now.clone());
                spec.holder_identity = Some(el.id.clone());
            }
            spec.lease_duration_seconds = Some(el.duration.as_secs() as i32);
            spec.renew_time = Some(now);
            api.replace(name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
    }
}

/// Hold the lease while this box runs. Leadership changes go to `leader`
/// first (the status writer stops at once) and then to the engine.
pub async fn run(
    client: Client,
    namespace: String,
    name: String,
    mut el: Elector,
    engine: mpsc::Sender<Input>,
    leader: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let start = tokio::time::Instant::now();
    let mut is_leader = false;
    loop {
        let now = start.elapsed();
        // A call hanging on an unreachable API server must not hold up the
        // step-down below: give each round at most one renew period.
        let renew = el.renew;
        let round = async {
            match api.get_opt(&name).await {
                Ok(current) => {
                    let obs = current.as_ref().map(observed);
                    if el.decide(obs.as_ref(), now) == Decision::Write {
                        match write(&api, &name, current, &el).await {
                            Ok(()) => el.wrote(start.elapsed()),
                            Err(kube::Error::Api(s)) if s.code == 409 => {}
                            Err(e) => {
                                warn!(lease = %format!("{namespace}/{name}"), error = %super::explain(&e), "cannot write the lease")
                            }
                        }
                    }
                }
                Err(e) => {
                    warn!(lease = %format!("{namespace}/{name}"), error = %super::explain(&e), "cannot read the lease")
                }
            }
        };
        if tokio::time::timeout(renew, round).await.is_err() {
            warn!(lease = %format!("{namespace}/{name}"), "the API server did not answer within {renew:?}");
        }
        let now_leading = el.leading(start.elapsed());
        if now_leading != is_leader {
            is_leader = now_leading;
            if is_leader {
                info!(id = %el.id, "lease acquired: this gateway allocates and writes status");
            } else {
                warn!(id = %el.id, "lease lost: writes and ARP/NDP answers stop; BGP announcements continue");
            }
            leader.send_replace(is_leader);
            if engine.send(Input::Leader(is_leader)).await.is_err() {
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(el.renew) => {}
            _ = stop.changed() => {
                if is_leader {
                    leader.send_replace(false);
                    release(&api, &name, &el).await;
                }
                return;
            }
        }
    }
}

/// Give the lease up on shutdown so another gateway takes over at once.
async fn release(api: &Api<Lease>, name: &str, el: &Elector) {
    if let Ok(Some(mut lease)) = api.get_opt(name).await {
        if let Some(spec) = lease.spec.as_mut() {
            if spec.holder_identity.as_deref() == Some(el.id.as_str()) {
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
                match api.replace(name, &PostParams::default(), &lease).await {
                    Ok(_) => info!("lease released"),
                    Err(e) => warn!(error = %super::explain(&e), "cannot release the lease"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(holder: Option<&str>, v: &str) -> Observed {
        Observed {
            holder: holder.map(Into::into),
            version: v.into(),
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn takes_a_free_or_missing_lease_and_renews_its_own() {
        let mut e = Elector::new("a".into(), 15 * S, 5 * S);
        assert_eq!(e.decide(None, S), Decision::Write);
        assert_eq!(e.decide(Some(&obs(None, "1")), S), Decision::Write);
        assert_eq!(e.decide(Some(&obs(Some("a"), "2")), S), Decision::Write);
    }

    #[test]
    fn waits_a_full_duration_after_the_last_renewal_it_saw() {
        let mut e = Elector::new("b".into(), 15 * S, 5 * S);
        assert_eq!(
            e.decide(Some(&obs(Some("a"), "1")), 100 * S),
            Decision::Wait
        );
        assert_eq!(
            e.decide(Some(&obs(Some("a"), "1")), 114 * S),
            Decision::Wait
        );
        // Renewed: the clock starts again.
        assert_eq!(
            e.decide(Some(&obs(Some("a"), "2")), 114 * S),
            Decision::Wait
        );
        assert_eq!(
            e.decide(Some(&obs(Some("a"), "2")), 128 * S),
            Decision::Wait
        );
        assert_eq!(
            e.decide(Some(&obs(Some("a"), "2")), 129 * S),
            Decision::Write
        );
    }

    #[test]
    fn a_leader_that_sees_another_holder_steps_down_at_once() {
        let mut e = Elector::new("a".into(), 15 * S, 5 * S);
        assert_eq!(
            e.decide(Some(&obs(Some("a"), "1")), 10 * S),
            Decision::Write
        );
        e.wrote(10 * S);
        assert!(e.leading(11 * S));
        assert_eq!(e.decide(Some(&obs(Some("b"), "2")), 11 * S), Decision::Wait);
        assert!(!e.leading(11 * S), "b holds the lease now");
        // b stops renewing: a takes the lease back after a full duration.
        assert_eq!(
            e.decide(Some(&obs(Some("b"), "2")), 26 * S),
            Decision::Write
        );
        e.wrote(26 * S);
        assert!(e.leading(26 * S));
    }

    #[test]
    fn a_leader_that_cannot_renew_steps_down_before_others_take_over() {
        let mut e = Elector::new("a".into(), 15 * S, 5 * S);
        assert!(!e.leading(Duration::ZERO));
        e.wrote(10 * S);
        assert!(e.leading(10 * S));
        assert!(e.leading(19 * S));
        assert!(!e.leading(20 * S), "steps down at duration - renew");
        // Another box saw the renewal at 10 s at the earliest and waits 15 s.
        let mut other = Elector::new("b".into(), 15 * S, 5 * S);
        other.decide(Some(&obs(Some("a"), "7")), 10 * S);
        assert_eq!(
            other.decide(Some(&obs(Some("a"), "7")), 24 * S),
            Decision::Wait
        );
    }
}
