//! The one owner of the BGP speaker and of its configuration.
//!
//! ```text
//!  config file (start, SIGHUP) ──┐
//!                                ├─► watch<Option<EffectiveBgp>> ──► this task ──► Speaker
//!  OpenELB merge (kubernetes.crds)┘   (whoever owns the merge publishes)   │
//!                                                                        StatusBoard ──► API, OpenELB status,
//!                                                                                        route actuator (fallback)
//! ```
//!
//! Whoever decides pier's effective BGP settings publishes them into one
//! `watch` channel: `src/daemon.rs` from the config file, or, with
//! `kubernetes.crds = true`, the OpenELB merge task (`src/watch/openelb/`),
//! which merges the file with the `BgpConf`/`BgpPeer` objects. This task
//! alone starts the speaker (on the first settings with an AS),
//! reconfigures it (peers whose settings did not change keep their
//! sessions), stops every session when the settings go away, and shuts it
//! down when pier stops, choosing between a graceful stop and Cease from
//! the settings it last applied. It also owns the graceful-restart marker
//! file: a restart within the restart time after a graceful stop sets the
//! Restart State bit (RFC 4724 §3), so routers keep forwarding meanwhile.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::speaker::{BgpError, Speaker};
use super::status::StatusBoard;
use crate::config::BgpConfig;
use crate::metrics::Metrics;
use crate::model::Desired;

/// The settings the speaker runs with: the file's `[bgp]` (or its merge
/// with the OpenELB objects) and the router id.
#[derive(Debug, Clone, PartialEq)]
pub struct EffectiveBgp {
    pub bgp: BgpConfig,
    pub router_id: Ipv4Addr,
}

/// What the task needs.
pub struct BgpSpawn {
    /// The effective settings; `None`: no BGP (no AS configured anywhere).
    pub config: watch::Receiver<Option<EffectiveBgp>>,
    pub desired: watch::Receiver<Arc<Desired>>,
    pub metrics: Metrics,
    /// Where the graceful-restart marker lives (`gateway.state_dir`).
    pub state_dir: PathBuf,
    /// `gateway.shutdown = "keep"`: a stop is graceful when graceful
    /// restart is configured.
    pub keep_on_stop: bool,
}

/// The running task.
pub struct BgpHandle {
    board: StatusBoard,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl BgpHandle {
    /// The peers' status (empty until a speaker runs).
    pub fn board(&self) -> StatusBoard {
        self.board.clone()
    }

    /// Stop every session (gracefully or with Cease, see the module doc)
    /// and wait for the task.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

const MARKER: &str = "bgp-graceful-stop";

/// Whether a speaker for `bgp` restarts within the graceful-restart time
/// of a graceful stop `marker_age` ago.
pub fn restarting(bgp: &BgpConfig, marker_age: Option<Duration>) -> bool {
    bgp.graceful_restart && marker_age.is_some_and(|age| age.as_secs() < bgp.restart_time_s.into())
}

/// Start the owner task. Settings present at start are applied before this
/// returns, so a listen address in use or an unreadable password file
/// stops `pier run` with that error; later settings that fail are logged
/// and shown by [`StatusBoard::note`].
pub async fn spawn(s: BgpSpawn) -> Result<BgpHandle, BgpError> {
    let marker = s.state_dir.join(MARKER);
    let marker_age = std::fs::metadata(&marker)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    let _ = std::fs::remove_file(&marker);
    let board = StatusBoard::default();
    let mut owner = Owner {
        speaker: None,
        applied: None,
        marker_age,
        desired: s.desired,
        metrics: s.metrics,
        board: board.clone(),
    };
    let mut config = s.config;
    let first = config.borrow_and_update().clone();
    if let Some(e) = &first {
        owner.start(e).await?;
    }
    let (stop, stop_rx) = oneshot::channel();
    let task = tokio::spawn(owner.run(config, stop_rx, marker, s.keep_on_stop));
    Ok(BgpHandle { board, stop, task })
}

struct Owner {
    speaker: Option<Speaker>,
    /// The settings last applied, with the listen settings the speaker
    /// was started with.
    applied: Option<EffectiveBgp>,
    /// Consumed by the first start.
    marker_age: Option<Duration>,
    desired: watch::Receiver<Arc<Desired>>,
    metrics: Metrics,
    board: StatusBoard,
}

impl Owner {
    async fn start(&mut self, e: &EffectiveBgp) -> Result<(), BgpError> {
        let restarting = restarting(&e.bgp, self.marker_age.take());
        let sp = Speaker::start(
            &e.bgp,
            e.router_id,
            restarting,
            self.desired.clone(),
            Some(self.metrics.clone()),
            self.board.clone(),
        )
        .await?;
        info!(
            asn = e.bgp.asn,
            peers = e.bgp.peers.len(),
            restarting,
            "BGP speaker started"
        );
        self.speaker = Some(sp);
        self.applied = Some(e.clone());
        Ok(())
    }

    async fn apply(&mut self, wanted: Option<EffectiveBgp>) {
        let mut note = None;
        match (self.speaker.as_mut(), wanted) {
            (Some(sp), Some(e)) => {
                let started = self.applied.as_ref().map(|a| listen(&a.bgp));
                if started.is_some_and(|l| l != listen(&e.bgp)) {
                    let text = "listen / listen_port / listen_addresses changes take effect when pier restarts";
                    warn!("BGP: {text}");
                    note = Some(text.to_string());
                }
                match sp.reconfigure(&e.bgp, e.router_id).await {
                    Ok(()) => {
                        // Keep the listen settings the speaker runs with.
                        let mut bgp = e.bgp.clone();
                        if let Some(a) = &self.applied {
                            (bgp.listen, bgp.listen_port, bgp.listen_addresses) = listen(&a.bgp);
                        }
                        self.applied = Some(EffectiveBgp {
                            bgp,
                            router_id: e.router_id,
                        });
                    }
                    Err(err) => {
                        warn!("BGP peers not changed: {err}");
                        note = Some(err.to_string());
                    }
                }
            }
            (Some(sp), None) => {
                // No AS any more: stop every session, keep the speaker.
                if let Some(a) = &mut self.applied {
                    a.bgp.peers.clear();
                    let _ = sp.reconfigure(&a.bgp, a.router_id).await;
                }
            }
            (None, Some(e)) => {
                if let Err(err) = self.start(&e).await {
                    warn!("cannot start the BGP speaker: {err}");
                    note = Some(format!("cannot start BGP: {err}"));
                }
            }
            (None, None) => {}
        }
        self.board.set_note(note);
    }

    async fn run(
        mut self,
        mut config: watch::Receiver<Option<EffectiveBgp>>,
        mut stop: oneshot::Receiver<()>,
        marker: PathBuf,
        keep_on_stop: bool,
    ) {
        loop {
            tokio::select! {
                changed = config.changed() => {
                    // Every publisher gone: keep the running sessions.
                    if changed.is_err() {
                        let _ = (&mut stop).await;
                        break;
                    }
                    let wanted = config.borrow_and_update().clone();
                    self.apply(wanted).await;
                }
                _ = &mut stop => break,
            }
        }
        let Some(sp) = self.speaker else { return };
        let graceful = keep_on_stop
            && self
                .applied
                .as_ref()
                .is_some_and(|a| a.bgp.graceful_restart);
        if graceful {
            let _ = std::fs::write(&marker, b"");
        }
        info!(graceful, "stopping BGP sessions");
        sp.shutdown(graceful).await;
    }
}

fn listen(b: &BgpConfig) -> (bool, u16, Vec<std::net::IpAddr>) {
    (b.listen, b.listen_port, b.listen_addresses.clone())
}
