//! Node health probes feeding the engine.
//!
//! The engine says what to probe ([`crate::engine::Engine::probe_targets`]:
//! kube-proxy's `/healthz` of every node a Cluster Service may use, the
//! `healthCheckNodePort` of Local Services, the nodes of static services).
//! The prober answers with a [`HealthView`], the set of targets that are
//! down, sent whenever it changes:
//!
//! ```no_run
//! # async fn f(engine_tx: tokio::sync::mpsc::UnboundedSender<pier::engine::Input>) {
//! use std::collections::BTreeSet;
//! use pier::config::HealthConfig;
//! use pier::health::Prober;
//! use tokio::sync::{mpsc, watch};
//!
//! let (targets_tx, targets_rx) = watch::channel(BTreeSet::new());
//! let (views_tx, mut views_rx) = mpsc::unbounded_channel();
//! let _prober = Prober::spawn(HealthConfig::default(), targets_rx, views_tx);
//! // after each engine step: targets_tx.send_if_modified(..engine.probe_targets()..)
//! while let Some(view) = views_rx.recv().await {
//!     let _ = engine_tx.send(pier::engine::Input::Health(view));
//! }
//! # }
//! ```
//!
//! - Every target (deduplicated: a set, so a node's kube-proxy is probed
//!   once however many Services use it) is probed once per `interval_ms`
//!   by its own task: an HTTP/1.1 GET that must return status 200 within
//!   `timeout_ms` ([`http::probe`]). A probe still running when the next
//!   one is due makes that one skip, never overlap.
//! - While a target is in transition (it failed but is not down yet, or
//!   succeeded again but is not up yet) it is probed at a fifth of the
//!   interval ([`verdict::fast_interval`], HAProxy's `fastinter`): a
//!   health endpoint that starts refusing is down
//!   `[0, interval) + (fall - 1) × interval / 5` later (0.2–0.7 s at the
//!   defaults) instead of up to `fall × interval`; one that stops
//!   answering adds `timeout_ms` per probe. A steady target, up or down,
//!   still costs one probe per interval.
//! - Each target is probed at a fixed offset within the interval
//!   ([`verdict::phase`], a hash of the target), so 500 nodes are not all
//!   probed at the same instant.
//! - A target goes down after `fall` failures in a row and comes back after
//!   `rise` successes in a row; a new target has no verdict and counts as
//!   up ([`verdict::Verdicts`], pure).
//! - Probes go only to the addresses of the targets given. A target removed
//!   from the set stops being probed at once (its task is aborted) and
//!   leaves the view.
//!
//! ```text
//! targets (watch) ─► prober task ─┬─ spawn/abort ─► probe task per target ─┐
//!                        ▲        │                                        │ outcome
//!                        │        └─ Verdicts (pure) ◄─────────────────────┘
//!                        └──────────── HealthView (mpsc, on change) ─► engine
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::HealthConfig;
use crate::model::{HealthView, ProbeTarget};

pub mod http;
pub mod verdict;

pub use http::ProbeError;
pub use verdict::{Verdict, Verdicts};

/// The running prober. Dropping it stops every probe.
pub struct Prober {
    task: JoinHandle<()>,
}

impl Prober {
    /// Probe the targets `targets` holds (and follow its changes); send a
    /// [`HealthView`] on `out` whenever the set of down targets changes.
    /// Stops when `targets`' sender or `out`'s receiver is dropped. Must be
    /// called within a tokio runtime.
    pub fn spawn(
        cfg: HealthConfig,
        targets: watch::Receiver<BTreeSet<ProbeTarget>>,
        out: mpsc::UnboundedSender<HealthView>,
    ) -> Prober {
        Prober {
            task: tokio::spawn(run(cfg, targets, out)),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An outcome reported by a probe task: which spawn of which target.
type Report = (u64, ProbeTarget, Result<(), ProbeError>);

struct Running {
    id: u64,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    cfg: HealthConfig,
    mut targets: watch::Receiver<BTreeSet<ProbeTarget>>,
    out: mpsc::UnboundedSender<HealthView>,
) {
    let interval = Duration::from_millis(cfg.interval_ms.max(1));
    let timing = Timing {
        interval,
        fast: verdict::fast_interval(interval),
        timeout: Duration::from_millis(cfg.timeout_ms.max(1)),
        rise: cfg.rise,
        fall: cfg.fall,
    };
    let mut verdicts = Verdicts::new(cfg.rise, cfg.fall);
    let mut running: BTreeMap<ProbeTarget, Running> = BTreeMap::new();
    let (report_tx, mut reports) = mpsc::unbounded_channel::<Report>();
    let mut next_id: u64 = 0;
    let mut sent = HealthView::default();

    let mut apply = |set: &BTreeSet<ProbeTarget>,
                     running: &mut BTreeMap<ProbeTarget, Running>,
                     verdicts: &mut Verdicts| {
        // Dropping a Running aborts its task: no more probes to it.
        running.retain(|t, _| set.contains(t));
        for t in set {
            if !running.contains_key(t) {
                next_id += 1;
                let task = tokio::spawn(probe_loop(t.clone(), next_id, timing, report_tx.clone()));
                running.insert(t.clone(), Running { id: next_id, task });
            }
        }
        verdicts.set_targets(set);
        debug!(targets = set.len(), "health: probing");
    };

    let first = targets.borrow_and_update().clone();
    apply(&first, &mut running, &mut verdicts);
    loop {
        // Whether the view may have changed (a verdict changed or a target
        // left), so it is rebuilt only then, not after every probe.
        let dirty = tokio::select! {
            r = targets.changed() => {
                if r.is_err() {
                    return;
                }
                let set = targets.borrow_and_update().clone();
                apply(&set, &mut running, &mut verdicts);
                true
            }
            Some((id, target, outcome)) = reports.recv() => {
                // A late report from an aborted task (target removed, or
                // removed and added again) is not about the current target.
                if running.get(&target).map(|r| r.id) != Some(id) {
                    continue;
                }
                if let Err(e) = &outcome {
                    e.count();
                }
                let change = verdicts.record(&target, outcome.is_ok());
                match change {
                    Some(Verdict::Down) => match &outcome {
                        Err(e) => warn!(%target, error = %e, "health: target down"),
                        Ok(()) => warn!(%target, "health: target down"),
                    },
                    Some(Verdict::Up) => info!(%target, "health: target up"),
                    _ => {
                        if let Err(e) = &outcome {
                            debug!(%target, error = %e, "health: probe failed");
                        }
                    }
                }
                change.is_some()
            }
            _ = out.closed() => return,
        };
        if !dirty {
            continue;
        }
        let view = verdicts.view();
        if view != sent {
            if out.send(view.clone()).is_err() {
                return;
            }
            sent = view;
        }
    }
}

/// How one target is probed.
#[derive(Debug, Clone, Copy)]
struct Timing {
    interval: Duration,
    fast: Duration,
    timeout: Duration,
    rise: u32,
    fall: u32,
}

async fn probe_loop(
    target: ProbeTarget,
    id: u64,
    timing: Timing,
    reports: mpsc::UnboundedSender<Report>,
) {
    // The schedule starts at the target's phase. The task keeps its own
    // copy of the rise/fall state only to know when it is in transition
    // (probed at the fast interval); the verdict is the prober's.
    let start = tokio::time::Instant::now() + verdict::phase(&target, timing.interval);
    let mut state = verdict::TargetState::default();
    let mut next = Duration::ZERO;
    loop {
        tokio::time::sleep_until(start + next).await;
        // Sequential: a probe that outlasts the interval delays the next,
        // none overlap.
        let outcome = http::probe(&target, timing.timeout).await;
        state.record(outcome.is_ok(), timing.rise, timing.fall);
        if reports.send((id, target.clone(), outcome)).is_err() {
            return;
        }
        let now = tokio::time::Instant::now().saturating_duration_since(start);
        next = verdict::next_probe(&state, now, timing.interval, timing.fast);
    }
}
