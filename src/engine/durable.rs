//! What keeps the data path independent of the control plane and of a
//! passing disk failure (docs/ha.md):
//!
//! - a store write that fails is retried by [`Engine::retry_store`] (the run
//!   task calls it on a timer with backoff) until one succeeds, so Services
//!   left pending by a full disk get their IPs once space is back, without
//!   waiting for a Kubernetes event that a quiet cluster never sends;
//! - the last published plan is saved in the store ([`Engine::save_desired`],
//!   debounced by the run task) and, when the API server cannot be reached
//!   at start, published again by [`Engine::start_from_last_known`] until
//!   the first full sync replaces it. The planner is deterministic and the
//!   actuators diff, so a plan equal to the snapshot changes nothing.
//!
//! No clock is read here: times are inputs (`now_unix`, seconds).

use super::*;
use crate::store::LastPlan;

/// A store that fails to write.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoreFailure {
    /// The last error, as logged.
    pub error: String,
    /// When the failure began (Unix seconds), once the run task stamped it.
    pub since_unix: Option<u64>,
    /// Writes failed since it began.
    pub attempts: u64,
}

/// pier publishes the plan it stored before a restart.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LastKnownState {
    /// Since when (Unix seconds).
    pub since_unix: u64,
    /// The stored plan's generation.
    pub generation: u64,
    pub vips: usize,
}

impl Engine {
    pub(super) fn note_store_failure(&mut self, e: &StoreError) {
        let failure = self.store_failure.get_or_insert(StoreFailure {
            error: String::new(),
            since_unix: None,
            attempts: 0,
        });
        failure.error = e.to_string();
        failure.attempts += 1;
        self.store_failures_total += 1;
    }

    /// Store writes that failed since the start.
    pub fn store_failures_total(&self) -> u64 {
        self.store_failures_total
    }

    pub(super) fn note_store_success(&mut self) {
        if let Some(f) = self.store_failure.take() {
            info!(
                attempts = f.attempts,
                "store writes succeed again; pending allocations persisted"
            );
        }
        self.store_failed.clear();
    }

    /// Set while store writes fail.
    pub fn store_failure(&self) -> Option<&StoreFailure> {
        self.store_failure.as_ref()
    }

    /// Fill in when a failure began (the run task knows the time).
    pub fn stamp(&mut self, now_unix: u64) {
        if let Some(f) = &mut self.store_failure {
            f.since_unix.get_or_insert(now_unix);
        }
    }

    /// Services whose allocation waits for the store.
    pub(super) fn store_failed(&self) -> &BTreeSet<ServiceKey> {
        &self.store_failed
    }

    /// Try the store again after a failure: settle what the failed write
    /// left (a write with nothing new), then redo every decision it undid,
    /// then save the plan if that is pending. Returns what a step returns.
    pub fn retry_store(&mut self) -> Step {
        if let Err(e) = self.store.apply(&StoreBatch::default()) {
            warn!(error = %e, "store still failing; retrying with backoff");
            self.note_store_failure(&e);
            return Step::default();
        }
        let step = self.step(Vec::new());
        if self.store_failure.is_some() {
            return step;
        }
        // Allocations are through (or none were waiting): the store works
        // unless the plan cannot be saved.
        if self.desired_save_pending() {
            self.save_desired();
        }
        if self.store_failure.is_none() {
            self.note_store_success();
        }
        step
    }

    /// Is there a plan from a full view that is not yet saved?
    pub fn desired_save_pending(&self) -> bool {
        self.synced()
            && (self.desired.generation != self.desired_saved
                || self.settings.leader != self.leader_saved)
    }

    /// Save the published plan in the store (only a plan made from a full
    /// view: a start that has not synced must not overwrite the snapshot).
    /// Returns false when the store failed (the failure is noted).
    pub fn save_desired(&mut self) -> bool {
        if !self.desired_save_pending() {
            return true;
        }
        let plan = LastPlan {
            desired: (*self.desired).clone(),
            leader: self.settings.leader,
        };
        match self.store.save_desired(&plan) {
            Ok(()) => {
                self.desired_saved = self.desired.generation;
                self.leader_saved = self.settings.leader;
                debug!(
                    generation = self.desired.generation,
                    vips = self.desired.announcements.len(),
                    "plan saved"
                );
                true
            }
            Err(e) => {
                error!(error = %e, "cannot save the published plan; retrying with backoff");
                self.note_store_failure(&e);
                false
            }
        }
    }

    /// Generation of the last plan saved in the store.
    pub fn plan_saved_generation(&self) -> u64 {
        self.desired_saved
    }

    /// The plan saved before this start, if any, without publishing it.
    pub fn stored_desired(&self) -> Result<Option<LastPlan>, StoreError> {
        self.store.load_desired()
    }

    /// Publish `stored` (from [`Engine::stored_desired`]) as the plan until
    /// the first full sync: the actuators announce it, install its routes
    /// and answer for it. Returns it to publish.
    pub fn start_from_last_known(&mut self, stored: LastPlan, now_unix: u64) -> Arc<Desired> {
        let LastPlan {
            desired: stored,
            leader,
        } = stored;
        self.leader_saved = leader;
        warn!(
            generation = stored.generation,
            vips = stored.announcements.len(),
            "starting from the last known state: the API server cannot be reached"
        );
        self.last_known = Some(LastKnownState {
            since_unix: now_unix,
            generation: stored.generation,
            vips: stored.announcements.len(),
        });
        self.desired_saved = stored.generation;
        self.desired = Arc::new(stored);
        self.desired.clone()
    }

    /// Set while the published plan is the stored one (until the first
    /// full sync).
    pub fn last_known(&self) -> Option<&LastKnownState> {
        self.last_known.as_ref()
    }
}
