//! `pier run`: the daemon's wiring, in the order of the task diagram in
//! `docs/architecture.md`: sources → engine → actuators.
//!
//! ```text
//!  static config ─┐                                             ┌─► bgp::task    (speaker; config: watch<EffectiveBgp>)
//!  kubernetes ────┤                                             ├─► route::task  (kernel routes, inet pier)
//!  health probes ─┼─ Input (mpsc) ─► engine ── Desired (watch) ─┼─► arp::task    (ARP/NDP responder)
//!  lease ─────────┤                    │                        └─► API views
//!  SIGHUP ────────┘                    ├─ ServiceEvent (mpsc) ─► watch::status (Service status, Events)
//!                                      ├─ ServiceState (watch) ─► watch::openelb (Eip/BgpPeer status)
//!                                      └─ probe targets (watch) ─► health prober
//! ```
//!
//! Each task owns its outside state and starts itself from the channels it
//! is given; this file only creates the channels, starts the tasks, turns
//! signals into inputs, and stops everything in order.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::api::{self, ApiContext, ApiError, SocketOptions};
use crate::bgp::{self, speaker::BgpError, EffectiveBgp};
use crate::config::{Config, KubernetesConfig, Shutdown};
use crate::engine::{self, source, Engine, EngineError, EngineOutputs, EngineSettings, Input};
use crate::metrics::Metrics;
use crate::model::{Desired, NextHopMode, Origin, PoolMode};
use crate::route::{self, RouteError};
use crate::store::{SledStore, StoreError};
use crate::watch::{self as kubewatch, openelb, WatchError};

/// Why `pier run` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Kubernetes(#[from] WatchError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot load allocations: {0}")]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Bgp(#[from] BgpError),
    #[error("cannot start the kernel route and nftables actuator: {0}")]
    Route(#[from] RouteError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("{key}: {message}")]
    Config { key: &'static str, message: String },
    #[error("cannot handle signals: {0}")]
    Signals(#[source] std::io::Error),
    #[error("the engine stopped")]
    EngineStopped,
    /// The API server cannot be reached and no plan was stored to start
    /// from (the first start on this gateway, or a lost state_dir).
    #[error("{0} (and no plan stored by an earlier run to start from; see docs/ha.md)")]
    NoLastKnownState(String),
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Run until SIGTERM or SIGINT; SIGHUP reloads the config file at `path`.
pub async fn run(path: PathBuf, cfg: Config) -> Result<(), DaemonError> {
    let kube = connect_kubernetes(&cfg).await?;
    let mut engine = open_engine(&cfg, kube.is_some())?;
    let (initial, was_leader) = starting_point(&mut engine, kube.as_ref())?;
    let metrics = Metrics::new();

    // Channels: inputs into the engine, what it publishes, and the stop.
    let (input_tx, input_rx) = mpsc::channel::<Input>(4096);
    let (query_tx, query_rx) = mpsc::channel(64);
    let (desired_tx, desired_rx) = watch::channel(initial);
    let (targets_tx, targets_rx) = watch::channel(Default::default());
    let (states_tx, states_rx) = watch::channel(Arc::new(Vec::new()));
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    // Leadership of the lease; without Kubernetes this box always leads.
    let (leader_tx, leader_rx) = watch::channel(kube.is_none() || was_leader);
    // pier's effective BGP settings: from the file, or (kubernetes.crds)
    // from the OpenELB merge task, which then alone publishes here.
    let (bgp_tx, bgp_rx) = watch::channel(effective_bgp(&cfg));

    // Actuators, each fed from Desired; then the API that shows them.
    let crds = kube.as_ref().is_some_and(|k| k.config.crds);
    let actuators = Actuators::spawn(
        &cfg,
        crds,
        ActuatorInputs {
            bgp: bgp_rx,
            desired: desired_rx.clone(),
            leader: leader_rx.clone(),
            stop: stop_rx.clone(),
        },
        &metrics,
    )
    .await?;
    let board = actuators.bgp.board();
    serve_api(&cfg, &actuators, query_tx, &metrics).await?;

    // The engine, and node health probes feeding it.
    let engine_task = tokio::spawn(engine::run(
        engine,
        input_rx,
        query_rx,
        EngineOutputs {
            desired: desired_tx,
            probe_targets: targets_tx,
            events: kube.as_ref().map(|_| events_tx),
            states: states_tx,
            metrics: metrics.clone(),
        },
    ));
    let health = Health::spawn(&cfg, targets_rx, input_tx.clone());
    info!(config = %path.display(), pools = cfg.pools.len(), static_services = cfg.static_services.len(), "pier started");

    // Sources: static services, then Kubernetes.
    for input in source::static_inputs(&cfg) {
        input_tx
            .send(input)
            .await
            .map_err(|_| DaemonError::EngineStopped)?;
    }
    let mut kubernetes = kube.map(|k| {
        KubernetesSource::start(
            k,
            &cfg,
            KubernetesChannels {
                input: input_tx.clone(),
                events: events_rx,
                states: states_rx,
                leader: leader_rx,
                leader_tx,
                stop: stop_rx,
                bgp: bgp_tx.clone(),
                board,
            },
        )
    });

    let cfg = until_stopped(&path, cfg, &mut kubernetes, &bgp_tx, &input_tx, desired_rx).await?;

    // Stop in order: the lease (another gateway takes over at once), the
    // Kubernetes tasks, BGP (graceful or Cease), the data path, the engine.
    stop_tx.send_replace(true);
    if let Some(k) = kubernetes {
        k.stop().await;
    }
    actuators.stop().await;
    // Every sender of engine inputs must go for the engine to finish.
    health.stop();
    drop(input_tx);
    let _ = engine_task.await;
    let _ = std::fs::remove_file(&cfg.gateway.api_socket);
    info!("stopped");
    Ok(())
}

/// The Kubernetes API at start: the client, and why the server cannot be
/// reached, if it cannot.
struct KubeStart {
    client: Client,
    config: KubernetesConfig,
    unreachable: Option<WatchError>,
}

/// The Kubernetes API first: a kubeconfig that does not parse, a bad
/// certificate or a missing RBAC verb stops pier here, with one clear
/// message. An API server that cannot be reached (refused, timeout, 5xx)
/// stops it only when no plan was stored before: otherwise pier starts from
/// that plan and keeps trying (docs/ha.md).
async fn connect_kubernetes(cfg: &Config) -> Result<Option<KubeStart>, DaemonError> {
    let Some(k) = &cfg.kubernetes else {
        return Ok(None);
    };
    let client = kubewatch::connect(k).await?;
    let unreachable = match kubewatch::preflight(&client, k).await {
        Ok(()) => None,
        Err(e) if e.is_transient() => Some(e),
        Err(e) => return Err(e.into()),
    };
    Ok(Some(KubeStart {
        client,
        config: k.clone(),
        unreachable,
    }))
}

/// What the engine publishes first, and whether this gateway led: the plan
/// stored by the last run when the API server cannot be reached, else an
/// empty one (nothing is applied before the first real plan). A gateway
/// that held the lease when it saved the plan answers ARP/NDP for its l2
/// VIPs from the start, as a leader cut off from the API server would.
fn starting_point(
    engine: &mut Engine,
    kube: Option<&KubeStart>,
) -> Result<(Arc<Desired>, bool), DaemonError> {
    let Some(e) = kube.and_then(|k| k.unreachable.as_ref()) else {
        return Ok((Arc::new(Desired::default()), false));
    };
    match engine.stored_desired() {
        Ok(Some(stored)) => {
            warn!(error = %e, "the Kubernetes API cannot be reached; starting from the last known state and retrying in the background");
            let leader = stored.leader;
            Ok((engine.start_from_last_known(stored, unix_now()), leader))
        }
        Ok(None) => Err(DaemonError::NoLastKnownState(e.to_string())),
        Err(store) => {
            error!(error = %store, "the stored plan cannot be read");
            Err(DaemonError::NoLastKnownState(e.to_string()))
        }
    }
}

/// The channels the actuators read.
struct ActuatorInputs {
    bgp: watch::Receiver<Option<EffectiveBgp>>,
    desired: watch::Receiver<Arc<Desired>>,
    leader: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
}

/// The BGP, route and ARP tasks (ARP needs no handle: it ends with the
/// engine's `Desired` channel).
struct Actuators {
    bgp: bgp::BgpHandle,
    routes: route::task::RouteTask,
    datapath: Arc<std::sync::Mutex<route::DatapathStatus>>,
}

impl Actuators {
    async fn spawn(
        cfg: &Config,
        crds: bool,
        inputs: ActuatorInputs,
        metrics: &Metrics,
    ) -> Result<Actuators, DaemonError> {
        let keep_on_stop = cfg.gateway.shutdown == Shutdown::Keep;
        let bgp = bgp::spawn(bgp::BgpSpawn {
            config: inputs.bgp,
            desired: inputs.desired.clone(),
            metrics: metrics.clone(),
            state_dir: cfg.gateway.state_dir.clone(),
            keep_on_stop,
        })
        .await?;
        let l2_interfaces: Vec<String> = cfg
            .pools
            .iter()
            .filter(|p| p.mode == PoolMode::L2)
            .filter_map(|p| p.interface.clone())
            .collect();
        // Eip objects may bring `layer2` pools at any time; the responder
        // opens nothing until a plan names an l2 VIP.
        if !l2_interfaces.is_empty() || crds {
            crate::arp::task::spawn(
                Default::default(),
                inputs.desired.clone(),
                inputs.leader,
                metrics.clone(),
            );
        }
        let config = route::RouteConfig {
            lan_interfaces: l2_interfaces,
            sysctl: cfg.gateway.sysctl,
            forwarding: cfg.gateway.forwarding,
            ..Default::default()
        };
        let datapath = config.status.clone();
        let routes = route::task::spawn(route::task::RouteSpawn {
            config,
            eager: cfg
                .pools
                .iter()
                .any(|p| p.mode == PoolMode::L2 || p.next_hop == NextHopMode::Gateway),
            may_forward_later: cfg.bgp.is_some() || crds,
            keep_on_stop,
            desired: inputs.desired,
            fallback: bgp.board().fallback(),
            stop: inputs.stop,
        })
        .await?;
        Ok(Actuators {
            bgp,
            routes,
            datapath,
        })
    }

    /// BGP first (graceful or Cease), then the data path (after the stop
    /// signal, which the route task watches).
    async fn stop(self) {
        self.bgp.stop().await;
        self.routes.finished().await;
    }
}

/// The local API (unix socket) and the metrics listener.
async fn serve_api(
    cfg: &Config,
    actuators: &Actuators,
    engine: mpsc::Sender<engine::Query>,
    metrics: &Metrics,
) -> Result<(), DaemonError> {
    let ctx = ApiContext {
        engine,
        metrics: metrics.clone(),
        started: Instant::now(),
        peers: actuators.bgp.board(),
        routes: actuators.routes.view.clone(),
        datapath: Some(actuators.datapath.clone()),
    };
    let socket = api::bind_socket(&cfg.gateway.api_socket, &socket_options(cfg)?)?;
    let metrics_listener = api::bind_metrics(cfg.gateway.metrics_listen).await?;
    tokio::spawn(api::serve_socket(socket, ctx.clone()));
    tokio::spawn(api::serve_metrics(metrics_listener, ctx));
    Ok(())
}

/// Node probes, their verdicts forwarded to the engine as inputs.
struct Health {
    prober: crate::health::Prober,
    forward: tokio::task::JoinHandle<()>,
}

impl Health {
    fn spawn(
        cfg: &Config,
        targets: watch::Receiver<BTreeSet<crate::model::ProbeTarget>>,
        input: mpsc::Sender<Input>,
    ) -> Health {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let prober = crate::health::Prober::spawn(cfg.health.clone(), targets, tx);
        let forward = tokio::spawn(async move {
            while let Some(view) = rx.recv().await {
                if input.send(Input::Health(view)).await.is_err() {
                    break;
                }
            }
        });
        Health { prober, forward }
    }

    fn stop(self) {
        drop(self.prober);
        self.forward.abort();
    }
}

/// Serve signals until SIGTERM or SIGINT; returns the config in force then.
async fn until_stopped(
    path: &Path,
    mut cfg: Config,
    kubernetes: &mut Option<KubernetesSource>,
    bgp_tx: &watch::Sender<Option<EffectiveBgp>>,
    input_tx: &mpsc::Sender<Input>,
    mut desired_rx: watch::Receiver<Arc<Desired>>,
) -> Result<Config, DaemonError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
            () = KubernetesSource::reached(kubernetes) => {}
            _ = sighup.recv() => {
                let Some(new) = reload(path, &cfg) else { continue };
                let merged = kubernetes.as_ref().and_then(KubernetesSource::openelb);
                match merged {
                    // The merge task sends the pools and publishes BGP.
                    Some(openelb) => openelb.reload(new.clone()),
                    None => {
                        bgp_tx.send_if_modified(|b| {
                            let wanted = effective_bgp(&new);
                            let changed = *b != wanted;
                            *b = wanted;
                            changed
                        });
                    }
                }
                for input in reload_inputs(&cfg, &new)
                    .into_iter()
                    .filter(|i| merged.is_none() || !matches!(i, Input::Pools(_)))
                {
                    input_tx.send(input).await.map_err(|_| DaemonError::EngineStopped)?;
                }
                cfg = new;
            }
            changed = desired_rx.changed() => {
                if changed.is_err() { break; }
                let d = desired_rx.borrow_and_update().clone();
                info!(generation = d.generation, vips = d.announcements.len(), "desired state published");
            }
        }
    }
    Ok(cfg)
}

/// The Kubernetes source: running, or (the API server could not be reached
/// at start) a task retrying it that starts the tasks once it answers.
enum KubernetesSource {
    Running(Kubernetes),
    Reaching(tokio::task::JoinHandle<Kubernetes>),
}

impl KubernetesSource {
    fn start(k: KubeStart, cfg: &Config, channels: KubernetesChannels) -> KubernetesSource {
        match k.unreachable {
            None => {
                KubernetesSource::Running(Kubernetes::spawn(k.client, &k.config, cfg, channels))
            }
            Some(_) => {
                let cfg = cfg.clone();
                KubernetesSource::Reaching(tokio::spawn(async move {
                    reach_api(&k.client, &k.config).await;
                    Kubernetes::spawn(k.client, &k.config, &cfg, channels)
                }))
            }
        }
    }

    /// Resolves when a retrying source reached the API server (and is then
    /// running); never otherwise.
    async fn reached(source: &mut Option<KubernetesSource>) {
        let Some(KubernetesSource::Reaching(task)) = source else {
            return std::future::pending().await;
        };
        match task.await {
            Ok(k) => {
                info!("the Kubernetes API answers again; watches started, reconciling at the first full sync");
                *source = Some(KubernetesSource::Running(k));
            }
            Err(e) => {
                error!(error = %e, "the task reaching the Kubernetes API failed");
                *source = None;
            }
        }
    }

    fn openelb(&self) -> Option<&openelb::OpenElbTask> {
        match self {
            KubernetesSource::Running(k) => k.openelb.as_ref(),
            KubernetesSource::Reaching(_) => None,
        }
    }

    async fn stop(self) {
        match self {
            KubernetesSource::Running(k) => k.stop().await,
            KubernetesSource::Reaching(task) => task.abort(),
        }
    }
}

/// The engine with the allocations of the store in `gateway.state_dir`.
fn open_engine(cfg: &Config, kubernetes: bool) -> Result<Engine, DaemonError> {
    let store = SledStore::open(&cfg.gateway.state_dir)?;
    let mut sources: BTreeSet<Origin> = [Origin::Static].into();
    if kubernetes {
        sources.insert(Origin::Kubernetes);
    }
    let settings = EngineSettings {
        sources,
        kube_proxy_port: cfg.health.kube_proxy_port,
        // With Kubernetes, the lease decides; static services need none.
        leader: !kubernetes,
    };
    Ok(Engine::new(Box::new(store), cfg.pools.clone(), settings)?)
}

/// Retry the preflight with backoff until the API server answers it. A
/// permanent error (RBAC, certificate) is logged and retried too: pier
/// already serves the last known state, and an operator may fix it.
async fn reach_api(client: &Client, k: &KubernetesConfig) {
    let mut backoff = Duration::from_secs(1);
    loop {
        tokio::time::sleep(backoff).await;
        match kubewatch::preflight(client, k).await {
            Ok(()) => return,
            Err(e) if e.is_transient() => {
                info!(error = %e, retry_in_s = backoff.as_secs(), "the Kubernetes API still cannot be reached; serving the last known state");
            }
            Err(e) => {
                error!(error = %e, "the Kubernetes API refuses pier; serving the last known state until this is fixed");
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// The file's BGP settings, as the BGP task takes them.
fn effective_bgp(cfg: &Config) -> Option<EffectiveBgp> {
    cfg.bgp.clone().map(|bgp| EffectiveBgp {
        bgp,
        router_id: cfg.gateway.router_id,
    })
}

/// What the Kubernetes tasks read and write.
struct KubernetesChannels {
    input: mpsc::Sender<Input>,
    events: mpsc::UnboundedReceiver<engine::ServiceEvent>,
    states: watch::Receiver<Arc<Vec<engine::ServiceState>>>,
    leader: watch::Receiver<bool>,
    leader_tx: watch::Sender<bool>,
    stop: watch::Receiver<bool>,
    bgp: watch::Sender<Option<EffectiveBgp>>,
    board: bgp::StatusBoard,
}

/// The Kubernetes source's tasks: watches, the status writer, the lease,
/// and (with `kubernetes.crds`) the OpenELB merge.
struct Kubernetes {
    watches: Vec<tokio::task::JoinHandle<()>>,
    lease: tokio::task::JoinHandle<()>,
    openelb: Option<openelb::OpenElbTask>,
}

impl Kubernetes {
    fn spawn(client: Client, k: &KubernetesConfig, cfg: &Config, ch: KubernetesChannels) -> Self {
        let id = kubewatch::lease::identity();
        // Pools and peers from Eip/BgpConf/BgpPeer objects, merged with the
        // file's; Services wait for the first merged pools (`gate`).
        let mut gate = None;
        let openelb = k.crds.then(|| {
            let (tx, rx) = oneshot::channel();
            gate = Some(rx);
            openelb::spawn(openelb::OpenElbSpawn {
                client: client.clone(),
                file: cfg.clone(),
                engine: ch.input.clone(),
                states: ch.states.clone(),
                leader: ch.leader.clone(),
                bgp: ch.bgp,
                board: ch.board,
                pools_sent: tx,
                gateway: openelb::gateway_name(),
                instance: id.clone(),
            })
        });
        let mut watches = vec![kubewatch::status::spawn(
            client.clone(),
            ch.events,
            ch.leader,
            id.clone(),
        )];
        let lease = tokio::spawn(kubewatch::lease::run(
            client.clone(),
            k.lease_namespace.clone(),
            k.lease_name.clone(),
            kubewatch::lease::Elector::new(
                id,
                Duration::from_secs(k.lease_duration_s.into()),
                Duration::from_secs(k.lease_renew_s.into()),
            ),
            ch.input.clone(),
            ch.leader_tx,
            ch.stop,
        ));
        watches.extend(kubewatch::spawn(
            client,
            kubewatch::ClaimRule {
                load_balancer_class: k.load_balancer_class.clone(),
                claim_unclassed: k.claim_unclassed,
                claim_openelb_annotation: k.claim_openelb_annotation,
            },
            ch.input,
            gate,
        ));
        Kubernetes {
            watches,
            lease,
            openelb,
        }
    }

    /// Give the lease up (the stop signal is sent), then stop the rest.
    async fn stop(mut self) {
        // A lease call hanging in an API outage must not keep the engine's
        // input open (the engine ends when every sender is gone).
        if tokio::time::timeout(Duration::from_secs(3), &mut self.lease)
            .await
            .is_err()
        {
            self.lease.abort();
        }
        for t in &self.watches {
            t.abort();
        }
        if let Some(o) = self.openelb {
            o.stop().await;
        }
    }
}

fn socket_options(cfg: &Config) -> Result<SocketOptions, DaemonError> {
    Ok(SocketOptions {
        mode: cfg.gateway.api_socket_mode,
        owner: match &cfg.gateway.api_socket_owner {
            Some(name) => Some(user_id(name)?),
            None => None,
        },
        group: match &cfg.gateway.api_socket_group {
            Some(name) => Some(group_id(name)?),
            None => None,
        },
    })
}

/// The numeric id of a group, by name.
fn group_id(name: &str) -> Result<u32, DaemonError> {
    let err = |message: String| DaemonError::Config {
        key: "gateway.api_socket_group",
        message,
    };
    let c = std::ffi::CString::new(name).map_err(|_| err("contains a NUL byte".into()))?;
    // SAFETY: getgrnam reads a NUL-terminated string and returns a pointer to
    // static storage (or NULL); we read one field before any other call.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        return Err(err(format!("no group named {name:?}")));
    }
    // SAFETY: non-null pointer from getgrnam, see above.
    Ok(unsafe { (*gr).gr_gid })
}

/// The numeric id of a user, by name.
fn user_id(name: &str) -> Result<u32, DaemonError> {
    let err = |message: String| DaemonError::Config {
        key: "gateway.api_socket_owner",
        message,
    };
    let c = std::ffi::CString::new(name).map_err(|_| err("contains a NUL byte".into()))?;
    // SAFETY: getpwnam reads a NUL-terminated string and returns a pointer to
    // static storage (or NULL); we read one field before any other call.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return Err(err(format!("no user named {name:?}")));
    }
    // SAFETY: non-null pointer from getpwnam, see above.
    Ok(unsafe { (*pw).pw_uid })
}

/// Re-read the config; on errors keep the running one and log every error.
fn reload(path: &Path, running: &Config) -> Option<Config> {
    match Config::load(path) {
        Ok(mut new) => {
            // What the running tasks were started with stays as it is, so
            // that shutdown and the data path agree with what runs.
            for (section, changed) in [
                ("[gateway]", new.gateway != running.gateway),
                ("[kubernetes]", new.kubernetes != running.kubernetes),
                ("[health]", new.health != running.health),
            ] {
                if changed {
                    warn!(config = %path.display(), "SIGHUP: {section} changes need a restart; not applied");
                }
            }
            new.gateway = running.gateway.clone();
            new.kubernetes = running.kubernetes.clone();
            new.health = running.health.clone();
            if new.bgp.is_some() != running.bgp.is_some() {
                warn!(config = %path.display(), "SIGHUP: adding or removing [bgp] needs a restart; BGP not changed");
                new.bgp = running.bgp.clone();
            }
            info!(
                config = %path.display(),
                pools = new.pools.len(),
                peers = new.bgp.as_ref().map_or(0, |b| b.peers.len()),
                static_services = new.static_services.len(),
                "SIGHUP: configuration reloaded"
            );
            Some(new)
        }
        Err(errors) => {
            for e in &errors.0 {
                error!("{e}");
            }
            error!(
                errors = errors.0.len(),
                "SIGHUP: configuration has errors; keeping the running one"
            );
            None
        }
    }
}

fn reload_inputs(old: &Config, new: &Config) -> Vec<Input> {
    let mut inputs = Vec::new();
    if old.pools != new.pools {
        inputs.push(Input::Pools(new.pools.clone()));
    }
    if old.static_services != new.static_services {
        inputs.push(Input::Resync(Origin::Static));
        inputs.extend(source::static_inputs(new));
    }
    inputs
}
