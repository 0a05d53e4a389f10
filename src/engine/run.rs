//! The async task around [`Engine::step`]: batches inputs, answers
//! queries between steps, and publishes what a step produced.

use std::time::Duration;

use tokio::time::Instant;

use super::*;

/// Handles to what the engine publishes.
pub struct EngineOutputs {
    pub desired: watch::Sender<Arc<Desired>>,
    pub probe_targets: watch::Sender<BTreeSet<ProbeTarget>>,
    /// Service events (for status and Events writers); dropped if nobody listens.
    pub events: Option<mpsc::UnboundedSender<ServiceEvent>>,
    /// Service states (IPs and pending reasons), republished after every
    /// step that changed an allocation or a plan.
    pub states: watch::Sender<Arc<Vec<ServiceState>>>,
    pub metrics: crate::metrics::Metrics,
}

/// The engine task: waits for inputs, applies them in batches, publishes,
/// and answers queries between steps. Ends when every input sender is dropped.
pub async fn run(
    mut engine: Engine,
    mut inputs: mpsc::Receiver<Input>,
    mut queries: mpsc::Receiver<Query>,
    out: EngineOutputs,
) {
    let mut buf = Vec::with_capacity(1024);
    let mut queries_open = true;
    let mut node_health: BTreeMap<String, bool> = BTreeMap::new();
    // A failing store is retried on this timer (docs/ha.md, "A full disk").
    let mut retry_at: Option<Instant> = None;
    let mut backoff = STORE_RETRY_MIN;
    // The published plan is saved this long after it first changed, so a
    // sync publishing many plans writes a few, not one per step.
    let mut save_at: Option<Instant> = None;
    publish_durability(&engine, &out.metrics);
    loop {
        let wake = match (retry_at, save_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut retry = false;
        tokio::select! {
            n = inputs.recv_many(&mut buf, MAX_BATCH) => {
                if n == 0 {
                    break;
                }
            }
            q = queries.recv(), if queries_open => {
                match q {
                    Some(q) => engine.answer(q),
                    None => queries_open = false,
                }
                continue;
            }
            _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {
                let now = Instant::now();
                if save_at.is_some_and(|t| t <= now) {
                    save_at = None;
                    if engine.store_failure().is_none() {
                        engine.save_desired();
                    }
                }
                retry = retry_at.is_some_and(|t| t <= now);
                if retry {
                    retry_at = None;
                } else {
                    schedule_retry(&mut engine, &mut retry_at, &mut backoff, &out.metrics);
                    continue;
                }
            }
        }
        let mut nodes_touched = buf.iter().any(|i| {
            matches!(
                i,
                Input::Health(_) | Input::Node(_) | Input::NodeGone(_) | Input::Synced(_)
            )
        });
        let started = std::time::Instant::now();
        let large = buf.len() >= LARGE_STEP;
        let step = if retry {
            engine.retry_store()
        } else {
            engine.step(std::mem::take(&mut buf))
        };
        out.metrics
            .reconcile_seconds
            .observe(started.elapsed().as_secs_f64());
        let changed = step.desired.is_some() || !step.events.is_empty();
        if let Some(d) = step.desired {
            out.desired.send_replace(d);
        }
        if engine.desired_save_pending() && save_at.is_none() {
            save_at = Some(Instant::now() + SAVE_DELAY);
        }
        schedule_retry(&mut engine, &mut retry_at, &mut backoff, &out.metrics);
        if let Some(t) = step.probe_targets {
            nodes_touched = true;
            out.probe_targets.send_replace(t);
        }
        if engine.synced() && (changed || out.states.borrow().is_empty()) {
            out.states.send_replace(Arc::new(engine.service_states()));
            let (allocated, pending) = engine.ipam_counts();
            out.metrics.set_services(allocated, pending);
            out.metrics.clear_pools();
            for p in engine.pools() {
                for u in engine.ipam().usage(&p.name) {
                    out.metrics
                        .set_pool(&p.name, u.family.as_str(), u.total, u.in_use);
                }
            }
        }
        if engine.synced() && nodes_touched {
            let now = engine.node_health();
            for (node, healthy) in &now {
                match node_health.get(node) {
                    Some(was) if was == healthy => continue,
                    None if *healthy => {}
                    Some(_) | None => {
                        if *healthy {
                            info!(%node, "node up: passes its health probes again");
                        } else {
                            warn!(%node, "node down: failing its health probe; no longer a next hop");
                        }
                    }
                }
                out.metrics
                    .node_healthy
                    .get_or_create(&out.metrics.node(node))
                    .set(i64::from(*healthy));
            }
            for gone in node_health.keys().filter(|n| !now.contains_key(*n)) {
                out.metrics.node_healthy.remove(&out.metrics.node(gone));
            }
            node_health = now;
        }
        if let Some(tx) = &out.events {
            for ev in step.events {
                // Unbounded: status writes must not be lost; the writer
                // coalesces them per Service.
                if tx.send(ev).is_err() {
                    debug!("service event dropped: writer gone");
                }
            }
        }
        if large {
            release_free_memory();
        }
    }
    // A stop saves what the debounce had not yet (a crash loses at most
    // SAVE_DELAY of plan changes; the allocations themselves are durable).
    if engine.store_failure().is_none() {
        engine.save_desired();
    }
}

/// First retry of a failing store; doubled after each failure up to
/// [`STORE_RETRY_MAX`].
const STORE_RETRY_MIN: Duration = Duration::from_millis(250);
const STORE_RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a published plan waits before it is saved (docs/ha.md).
const SAVE_DELAY: Duration = Duration::from_secs(1);

/// Arm the store retry while the store fails (with backoff), disarm it
/// once it works, and publish the store's state.
fn schedule_retry(
    engine: &mut Engine,
    retry_at: &mut Option<Instant>,
    backoff: &mut Duration,
    metrics: &crate::metrics::Metrics,
) {
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    engine.stamp(now_unix);
    if engine.store_failure().is_some() {
        if retry_at.is_none() {
            *retry_at = Some(Instant::now() + *backoff);
            *backoff = (*backoff * 2).min(STORE_RETRY_MAX);
        }
    } else {
        *retry_at = None;
        *backoff = STORE_RETRY_MIN;
    }
    publish_durability(engine, metrics);
}

/// `pier_store_failing` and `pier_running_from_last_known_state`.
fn publish_durability(engine: &Engine, metrics: &crate::metrics::Metrics) {
    metrics.set_store_failing(engine.store_failure().is_some());
    metrics.set_store_write_failures(engine.store_failures_total());
    metrics.set_running_from_last_known_state(engine.last_known().is_some());
}

/// Give memory that is free inside the allocator back to the system.
/// glibc keeps freed memory in its per-thread arenas; after a full sync
/// (lists decoded on every worker thread, a store batch, thousands of
/// status writes) that is tens of megabytes resident but unused.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
