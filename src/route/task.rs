//! The route actuator's task: when to start it, what it is fed, how it
//! stops, and the view of what it installed for `pier routes`.
//!
//! ```text
//!  Desired (watch) ──────────────┐
//!  BGP fallback peers (watch) ───┼─► this task ── RouteActuator::run ──► kernel routes, inet pier
//!  stop (watch) ─────────────────┘        └── every 5 s: installed routes + counters ─► watch<RoutesView> ─► API
//! ```
//!
//! The actuator changes sysctls and nftables, so it starts only when pier
//! has traffic to forward: at once when the file's pools include a
//! `next_hop = "self"` or `l2` pool (a refused sysctl or a missing
//! nftables then stops `pier run`), otherwise on the first plan that
//! [`needed`] says needs it: such pools arriving from Eip objects, or a peer
//! without ADD-PATH receive that is sent pier as next hop (the BGP status
//! board publishes that set; see `docs/architecture.md`).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::{needed, routes_view, InstalledRoute, RouteActuator, RouteConfig, RouteError};
use crate::model::Desired;

/// What the API reads: the routes as last read back from the kernel.
pub type RoutesView = watch::Receiver<Arc<Vec<InstalledRoute>>>;

/// What the task needs (from `src/daemon.rs`).
pub struct RouteSpawn {
    pub config: RouteConfig,
    /// The file's pools forward through pier: start at once, and refuse
    /// the start when the actuator cannot run.
    pub eager: bool,
    /// Pools from Eip objects or a peer's next-hop-self fallback may make
    /// pier forward later: wait for a plan that needs it.
    pub may_forward_later: bool,
    /// `gateway.shutdown = "keep"`: leave routes and table in place on stop.
    pub keep_on_stop: bool,
    pub desired: watch::Receiver<Arc<Desired>>,
    /// Peers sent pier as next hop (from `bgp::StatusBoard::fallback`).
    pub fallback: watch::Receiver<BTreeSet<IpAddr>>,
    pub stop: watch::Receiver<bool>,
}

/// The running task (if any) and its view.
pub struct RouteTask {
    pub view: RoutesView,
    task: Option<JoinHandle<()>>,
}

impl RouteTask {
    /// Wait (at most 10 s) for the task to remove or keep its state after
    /// the stop signal.
    pub async fn finished(self) {
        if let Some(t) = self.task {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

/// Start the task; with `eager`, a failing actuator start is the error.
pub async fn spawn(s: RouteSpawn) -> Result<RouteTask, RouteError> {
    let (view_tx, view) = watch::channel(Arc::new(Vec::new()));
    let eager = if s.eager {
        Some(RouteActuator::start(s.config.clone()).await?)
    } else {
        None
    };
    if eager.is_none() && !s.may_forward_later {
        return Ok(RouteTask { view, task: None });
    }
    let task = tokio::spawn(run(s, eager, view_tx));
    Ok(RouteTask {
        view,
        task: Some(task),
    })
}

async fn run(
    s: RouteSpawn,
    eager: Option<RouteActuator>,
    view: watch::Sender<Arc<Vec<InstalledRoute>>>,
) {
    let RouteSpawn {
        config,
        keep_on_stop,
        desired,
        fallback,
        mut stop,
        ..
    } = s;
    // Apply nothing before the engine's first plan: an empty plan at start
    // would remove the routes a restart should keep.
    let mut first = desired.clone();
    let planned = async { first.wait_for(|d| d.generation > 0).await.is_ok() };
    let go = tokio::select! {
        ok = planned => ok,
        _ = stop.wait_for(|s| *s) => false,
    };
    if !go {
        if let Some(actuator) = eager {
            let _ = actuator.shutdown(keep_on_stop).await;
        }
        return;
    }
    let mut actuator = match eager {
        Some(a) => a,
        None => match start_when_needed(config, desired.clone(), fallback, stop.clone()).await {
            Some(a) => a,
            None => return,
        },
    };
    let refresher = tokio::spawn(refresh_view(view));
    actuator
        .run(desired, async move {
            let _ = stop.wait_for(|s| *s).await.is_ok();
        })
        .await;
    refresher.abort();
    if let Err(e) = actuator.shutdown(keep_on_stop).await {
        warn!(error = %e, "removing routes at shutdown failed");
    }
}

/// Read pier's routes and counters back every 5 s for `pier routes`.
async fn refresh_view(view: watch::Sender<Arc<Vec<InstalledRoute>>>) {
    loop {
        view.send_replace(Arc::new(routes_view().await));
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Wait until a plan needs pier to forward ([`needed`]), then start the
/// actuator; `None` when pier stops first. A start that fails (sysctls,
/// nftables) is logged once and tried again every few seconds.
async fn start_when_needed(
    config: RouteConfig,
    mut desired: watch::Receiver<Arc<Desired>>,
    mut fallback: watch::Receiver<BTreeSet<IpAddr>>,
    mut stop: watch::Receiver<bool>,
) -> Option<RouteActuator> {
    let mut logged = false;
    let mut fallback_open = true;
    loop {
        let mut failed = false;
        let d = desired.borrow_and_update().clone();
        let falls_back = !fallback.borrow_and_update().is_empty();
        if needed(&d, falls_back) {
            match RouteActuator::start(config.clone()).await {
                Ok(a) => {
                    info!(
                        next_hop_self_fallback = falls_back,
                        "routes: VIP traffic now comes through this gateway; kernel routes and nftables started"
                    );
                    return Some(a);
                }
                Err(e) if !logged => {
                    error!("cannot start the kernel route and nftables actuator: {e}; VIP traffic sent to this gateway is not forwarded");
                    logged = true;
                    failed = true;
                }
                Err(_) => failed = true,
            }
        }
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return None },
            changed = fallback.changed(), if fallback_open => fallback_open = changed.is_ok(),
            _ = stop.wait_for(|s| *s) => return None,
            _ = tokio::time::sleep(Duration::from_secs(2)), if failed => {}
        }
    }
}
