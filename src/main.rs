//! The `pier` command line. `anyhow` stops here; the library has typed errors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use pier::api::{self, client, metrics::Metrics, table, ApiContext, SocketOptions};
use pier::bgp::speaker::Speaker;
use pier::config::Config;
use pier::engine::{self, source, Engine, EngineOutputs, EngineSettings, Input};
use pier::model::{Desired, Origin};
use pier::store::SledStore;

/// EX_USAGE from sysexits.h: bad configuration, nothing was started.
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "pier",
    about = "Load-balancer gateway for bare-metal Kubernetes",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway daemon.
    Run {
        #[arg(long, short, default_value = "/etc/pier/pier.toml")]
        config: PathBuf,
        /// Log format (overrides `gateway.log_format`).
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Validate a configuration file: exit 0 when valid, 64 listing every error.
    Check {
        #[arg(long, short, default_value = "/etc/pier/pier.toml")]
        config: PathBuf,
    },
    /// Print the version.
    Version,
    /// Summary of the running daemon.
    Status(ClientArgs),
    /// Services with their IPs, or why they are pending.
    Services(ClientArgs),
    /// Pools with their usage.
    Pools(ClientArgs),
    /// BGP peers and their sessions.
    Peers(ClientArgs),
    /// Kernel routes and forwarding counters pier installed.
    Routes(ClientArgs),
    /// Nodes, whether they are next hops, and failing probes.
    Nodes(ClientArgs),
}

#[derive(clap::Args)]
struct ClientArgs {
    /// Print the raw JSON.
    #[arg(long)]
    json: bool,
    /// The daemon's API socket.
    #[arg(long, default_value = "/run/pier/pier.sock")]
    socket: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("pier {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Status(a) => query(a, "/v1/status", table::status),
        Command::Services(a) => query(a, "/v1/services", table::services),
        Command::Pools(a) => query(a, "/v1/pools", table::pools),
        Command::Peers(a) => query(a, "/v1/peers", table::peers),
        Command::Routes(a) => query(a, "/v1/routes", table::routes),
        Command::Nodes(a) => query(a, "/v1/nodes", table::nodes),
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: valid ({} pools, {} peers, {} static services)",
                    config.display(),
                    c.pools.len(),
                    c.bgp.as_ref().map_or(0, |b| b.peers.len()),
                    c.static_services.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!("{}: {} error(s)", config.display(), errors.0.len());
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Run { config, log_format } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    eprintln!(
                        "{}: {} error(s); not starting",
                        config.display(),
                        errors.0.len()
                    );
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            init_tracing(log_format.or(match cfg.gateway.log_format {
                pier::config::LogFormat::Json => Some(LogFormat::Json),
                pier::config::LogFormat::Text => None,
            }));
            // One TLS crypto provider for the whole process, chosen here:
            // kube's and plain rustls's defaults differ.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    error!(error = %e, "cannot start the runtime");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(run(config, cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!("{e:#}");
                    eprintln!("pier: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn query(args: ClientArgs, path: &str, render: fn(&serde_json::Value) -> String) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pier: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(client::get(&args.socket, path)) {
        Ok(v) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", render(&v));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pier: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: Option<LogFormat>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PIER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        Some(LogFormat::Json) => builder.json().init(),
        _ => builder.init(),
    }
}

async fn run(path: PathBuf, cfg: Config) -> anyhow::Result<()> {
    // The Kubernetes API first: an unreachable server, a bad certificate or
    // a missing RBAC verb stops pier here, with one clear message.
    let kube = match &cfg.kubernetes {
        Some(k) => {
            let client = pier::watch::connect(k).await?;
            pier::watch::preflight(&client, k).await?;
            Some((client, k.clone()))
        }
        None => None,
    };
    let store = SledStore::open(&cfg.gateway.state_dir)?;
    let mut sources: std::collections::BTreeSet<Origin> = [Origin::Static].into();
    if kube.is_some() {
        sources.insert(Origin::Kubernetes);
    }
    let settings = EngineSettings {
        sources,
        kube_proxy_port: cfg.health.kube_proxy_port,
        // With Kubernetes, the lease decides; static services need none.
        leader: kube.is_none(),
    };
    let engine = Engine::new(Box::new(store), cfg.pools.clone(), settings)
        .context("cannot load allocations")?;
    let metrics = Metrics::new();
    // A restart within the graceful-restart time after a graceful stop sets
    // the Restart State bit, so routers keep forwarding meanwhile.
    let gr_marker = cfg.gateway.state_dir.join("bgp-graceful-stop");
    let gr_marker_age = std::fs::metadata(&gr_marker)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    let restarting = cfg.bgp.as_ref().is_some_and(|b| {
        b.graceful_restart
            && gr_marker_age.is_some_and(|age| age.as_secs() < b.restart_time_s.into())
    });
    let _ = std::fs::remove_file(&gr_marker);
    let (input_tx, input_rx) = mpsc::channel::<Input>(4096);
    let (query_tx, query_rx) = mpsc::channel(64);
    let (desired_tx, mut desired_rx) = watch::channel(Arc::new(Desired::default()));
    let (targets_tx, targets_rx) = watch::channel(Default::default());
    let (states_tx, states_rx) = watch::channel(Arc::new(Vec::new()));
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut speaker = match &cfg.bgp {
        Some(b) => Some(
            Speaker::start(
                b,
                cfg.gateway.router_id,
                restarting,
                desired_rx.clone(),
                Some(metrics.clone()),
            )
            .await?,
        ),
        None => None,
    };
    // The speaker's status board; a speaker started later from a BgpConf
    // (kubernetes.crds) puts its own here.
    let board = pier::watch::openelb::BoardSlot::new(speaker.as_ref().map(|s| s.board()));
    // Leadership of the lease; without Kubernetes this box always leads.
    let (leader_tx, leader_rx) = watch::channel(kube.is_none());
    let datapath = start_datapath(
        &cfg,
        desired_rx.clone(),
        stop_rx.clone(),
        leader_rx.clone(),
        metrics.clone(),
        board.clone(),
    )
    .await?;
    let routes_view = datapath.routes_view.clone();
    let api_ctx = ApiContext {
        engine: query_tx,
        metrics: metrics.clone(),
        started: std::time::Instant::now(),
        peers: Some({
            let b = board.clone();
            Arc::new(move || serde_json::to_value(b.snapshot()).unwrap_or_default())
                as api::Reporter
        }),
        routes: Some(
            Arc::new(move || routes_view.lock().map(|v| v.clone()).unwrap_or_default())
                as api::Reporter,
        ),
        ready_extra: Some({
            let b = board.clone();
            Arc::new(move || b.all_attempted()) as Arc<dyn Fn() -> bool + Send + Sync>
        }),
        datapath: Some(datapath.status.clone()),
    };
    let socket = api::bind_socket(
        &cfg.gateway.api_socket,
        &SocketOptions {
            mode: cfg.gateway.api_socket_mode,
            owner: match &cfg.gateway.api_socket_owner {
                Some(name) => Some(user_id(name)?),
                None => None,
            },
            group: match &cfg.gateway.api_socket_group {
                Some(name) => Some(group_id(name)?),
                None => None,
            },
        },
    )?;
    let metrics_listener = api::bind_metrics(cfg.gateway.metrics_listen).await?;
    tokio::spawn(api::serve_socket(socket, api_ctx.clone()));
    tokio::spawn(api::serve_metrics(metrics_listener, api_ctx));
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
    // Node health: verdicts go to the engine as inputs.
    let (health_tx, mut health_rx) = mpsc::unbounded_channel();
    let prober = pier::health::Prober::spawn(cfg.health.clone(), targets_rx, health_tx);
    let health_forward = {
        let input_tx = input_tx.clone();
        tokio::spawn(async move {
            while let Some(view) = health_rx.recv().await {
                if input_tx.send(Input::Health(view)).await.is_err() {
                    break;
                }
            }
        })
    };
    info!(config = %path.display(), pools = cfg.pools.len(), static_services = cfg.static_services.len(), "pier started");
    for input in source::static_inputs(&cfg) {
        input_tx.send(input).await.context("engine stopped")?;
    }
    let mut kube_tasks = Vec::new();
    let mut lease_task = None;
    let mut crds = None;
    if let Some((client, k)) = kube {
        let id = pier::watch::lease::identity();
        // Pools and peers from Eip/BgpConf/BgpPeer objects, merged with the
        // file's; the task owns the speaker while it runs.
        let mut gate = None;
        if k.crds {
            let (tx, rx) = tokio::sync::oneshot::channel();
            gate = Some(rx);
            crds = Some(pier::watch::openelb::spawn(pier::watch::openelb::Context {
                client: client.clone(),
                file: cfg.clone(),
                speaker: speaker.take(),
                engine: input_tx.clone(),
                states: states_rx.clone(),
                leader: leader_rx.clone(),
                desired: desired_rx.clone(),
                metrics: metrics.clone(),
                pools_sent: tx,
                gateway: pier::watch::openelb::gateway_name(),
                instance: id.clone(),
                board: board.clone(),
                gr_marker_age,
            }));
        }
        kube_tasks.push(pier::watch::status::spawn(
            client.clone(),
            events_rx,
            leader_rx,
            id.clone(),
        ));
        lease_task = Some(tokio::spawn(pier::watch::lease::run(
            client.clone(),
            k.lease_namespace.clone(),
            k.lease_name.clone(),
            pier::watch::lease::Elector::new(
                id,
                std::time::Duration::from_secs(k.lease_duration_s.into()),
                std::time::Duration::from_secs(k.lease_renew_s.into()),
            ),
            input_tx.clone(),
            leader_tx,
            stop_rx,
        )));
        kube_tasks.extend(pier::watch::spawn(
            client,
            pier::watch::ClaimRule {
                load_balancer_class: k.load_balancer_class.clone(),
                claim_unclassed: k.claim_unclassed,
            },
            input_tx.clone(),
            gate,
        ));
    }

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut cfg = cfg;
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
            _ = sighup.recv() => {
                if let Some(new) = reload(&path, &cfg) {
                    if let Some(c) = &crds {
                        // The merge task sends the pools and reconfigures BGP.
                        c.reload(new.clone());
                    }
                    for input in reload_inputs(&cfg, &new)
                        .into_iter()
                        .filter(|i| crds.is_none() || !matches!(i, Input::Pools(_)))
                    {
                        input_tx.send(input).await.context("engine stopped")?;
                    }
                    if let (Some(sp), Some(b)) = (speaker.as_mut(), new.bgp.as_ref()) {
                        if cfg.bgp.as_ref() != Some(b) {
                            if let Err(e) = sp.reconfigure(b, new.gateway.router_id).await {
                                error!("SIGHUP: BGP peers not changed: {e}");
                            }
                        }
                    }
                    cfg = new;
                }
            }
            changed = desired_rx.changed() => {
                if changed.is_err() { break; }
                let d = desired_rx.borrow_and_update().clone();
                info!(generation = d.generation, vips = d.announcements.len(), "desired state published");
            }
        }
    }
    // Give the lease up (another gateway takes over at once), then stop
    // the watches and the engine.
    stop_tx.send_replace(true);
    if let Some(mut t) = lease_task {
        // A lease call hanging in an API outage must not keep the engine's
        // input open (the engine ends when every sender is gone).
        if tokio::time::timeout(std::time::Duration::from_secs(3), &mut t)
            .await
            .is_err()
        {
            t.abort();
        }
    }
    for t in &kube_tasks {
        t.abort();
    }
    if let Some(c) = crds {
        let (sp, bgp) = c.stop().await;
        speaker = sp;
        // BGP from a BgpConf: its graceful-restart setting decides below.
        cfg.bgp = cfg.bgp.take().or(bgp);
    }
    if let Some(sp) = speaker {
        let graceful = cfg.gateway.shutdown == pier::config::Shutdown::Keep
            && cfg.bgp.as_ref().is_some_and(|b| b.graceful_restart);
        if graceful {
            let _ = std::fs::write(&gr_marker, b"");
        }
        info!(graceful, "stopping BGP sessions");
        sp.shutdown(graceful).await;
    }
    if let Some(t) = datapath.routes {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), t).await;
    }
    // Every sender of engine inputs must go for the engine to finish.
    drop(prober);
    health_forward.abort();
    drop(input_tx);
    engine_task.await.context("engine task failed")?;
    let _ = std::fs::remove_file(&cfg.gateway.api_socket);
    info!("stopped");
    Ok(())
}

struct Datapath {
    /// The route actuator's task: ends after shutting down (stop signal).
    routes: Option<tokio::task::JoinHandle<()>>,
    /// Installed routes and firewall counters for `pier routes`.
    routes_view: Arc<std::sync::Mutex<serde_json::Value>>,
    /// The route actuator's data path status (`pier status`, `/readyz`).
    status: Arc<std::sync::Mutex<pier::route::DatapathStatus>>,
}

/// Kernel routes and nftables (when some pool forwards through pier) and
/// the ARP/NDP responder (when some pool is `l2`), fed with every Desired.
async fn start_datapath(
    cfg: &Config,
    desired: watch::Receiver<Arc<Desired>>,
    mut stop: watch::Receiver<bool>,
    leader: watch::Receiver<bool>,
    metrics: Metrics,
    board: pier::watch::openelb::BoardSlot,
) -> anyhow::Result<Datapath> {
    use pier::model::{NextHopMode, PoolMode};
    let view = Arc::new(std::sync::Mutex::new(serde_json::json!([])));
    let forwards = cfg
        .pools
        .iter()
        .any(|p| p.mode == PoolMode::L2 || p.next_hop == NextHopMode::Gateway);
    let l2_interfaces: Vec<String> = cfg
        .pools
        .iter()
        .filter(|p| p.mode == PoolMode::L2)
        .filter_map(|p| p.interface.clone())
        .collect();
    // Eip objects may bring `layer2` pools at any time; the responder opens
    // nothing until a plan names an l2 VIP.
    if !l2_interfaces.is_empty() || cfg.kubernetes.as_ref().is_some_and(|k| k.crds) {
        let responder = Arc::new(pier::arp::ArpResponder::spawn(
            pier::arp::ArpConfig::default(),
        ));
        tokio::spawn(feed_arp(responder.clone(), desired.clone(), leader));
        tokio::spawn(arp_metrics(Arc::downgrade(&responder), metrics));
    }
    let mut routes = None;
    let rc = pier::route::RouteConfig {
        lan_interfaces: l2_interfaces,
        sysctl: cfg.gateway.sysctl,
        forwarding: cfg.gateway.forwarding,
        ..Default::default()
    };
    let status = rc.status.clone();
    // When the file's pools forward, a wrong sysctl or an unusable nftables
    // refuses the start. Otherwise the actuator starts on the first plan
    // that needs it (pools from Eip objects, or a peer without ADD-PATH
    // that was sent pier as next hop for `next_hop = "nodes"` VIPs) and
    // touches neither sysctls nor nftables before.
    let eager = if forwards {
        Some(
            pier::route::RouteActuator::start(rc.clone())
                .await
                .context("cannot start the kernel route and nftables actuator")?,
        )
    } else {
        None
    };
    let may_forward_later = cfg.bgp.is_some() || cfg.kubernetes.as_ref().is_some_and(|k| k.crds);
    if eager.is_some() || may_forward_later {
        let keep = cfg.gateway.shutdown == pier::config::Shutdown::Keep;
        let view = view.clone();
        routes = Some(tokio::spawn(async move {
            // Apply nothing before the engine's first plan: an empty plan
            // at start would remove the routes a restart should keep.
            let mut first = desired.clone();
            let mut s2 = stop.clone();
            let planned = async { first.wait_for(|d| d.generation > 0).await.is_ok() };
            let stopping = async { s2.wait_for(|s| *s).await.is_ok() };
            let go = tokio::select! {
                ok = planned => ok,
                _ = stopping => false,
            };
            if !go {
                if let Some(actuator) = eager {
                    let _ = actuator.shutdown(keep).await;
                }
                return;
            }
            let mut actuator = match eager {
                Some(a) => a,
                None => {
                    match start_routes_when_needed(rc, desired.clone(), stop.clone(), board).await {
                        Some(a) => a,
                        None => return,
                    }
                }
            };
            let refresher = tokio::spawn(async move {
                loop {
                    let rows = pier::route::routes_view().await;
                    if let Ok(mut v) = view.lock() {
                        *v = rows;
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                }
            });
            actuator
                .run(desired, async move {
                    let _ = stop.wait_for(|s| *s).await.is_ok();
                })
                .await;
            refresher.abort();
            if let Err(e) = actuator.shutdown(keep).await {
                warn!(error = %e, "removing routes at shutdown failed");
            }
        }));
    }
    Ok(Datapath {
        routes,
        routes_view: view,
        status,
    })
}

/// Wait until a plan needs pier to forward ([`pier::route::needed`]), then
/// start the route actuator; `None` when pier stops first. A start that
/// fails (sysctls, nftables) is logged and tried again.
async fn start_routes_when_needed(
    rc: pier::route::RouteConfig,
    mut desired: watch::Receiver<Arc<Desired>>,
    mut stop: watch::Receiver<bool>,
    board: pier::watch::openelb::BoardSlot,
) -> Option<pier::route::RouteActuator> {
    let mut logged = false;
    loop {
        let d = desired.borrow_and_update().clone();
        let fallback = board.snapshot().iter().any(|p| p.next_hop_self_fallback);
        if pier::route::needed(&d, fallback) {
            match pier::route::RouteActuator::start(rc.clone()).await {
                Ok(a) => {
                    info!(
                        next_hop_self_fallback = fallback,
                        "routes: VIP traffic now comes through this gateway; kernel routes and nftables started"
                    );
                    return Some(a);
                }
                Err(e) if !logged => {
                    error!("cannot start the kernel route and nftables actuator: {e}; VIP traffic sent to this gateway is not forwarded");
                    logged = true;
                }
                Err(_) => {}
            }
        }
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return None },
            // Peers' fallback shows on the status board, not in the plan.
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return None,
        }
    }
}

/// Feed the ARP/NDP responder every plan, once this gateway has led.
///
/// Two gateways with `l2` pools must not both answer for a VIP, so a
/// standby (lease held by another gateway) stays silent, and starts
/// answering, with gratuitous ARP, when it takes the lease. A gateway that
/// loses the lease keeps answering: with the API server down nobody can
/// hold the lease, and the data path must not depend on the API server; at
/// worst (a gateway cut off from the API only) both answer, and both
/// forward to the same nodes.
async fn feed_arp(
    responder: Arc<pier::arp::ArpResponder>,
    mut desired: watch::Receiver<Arc<Desired>>,
    mut leader: watch::Receiver<bool>,
) {
    let mut answering = false;
    let mut leader_open = true;
    loop {
        if !answering && *leader.borrow_and_update() {
            info!("l2: this gateway answers ARP/NDP for its VIPs from now on");
            answering = true;
        }
        let d = desired.borrow_and_update().clone();
        if d.generation > 0 && answering {
            responder.update(&d);
        }
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { break },
            // The lease task ended: keep the current state.
            changed = leader.changed(), if !answering && leader_open => leader_open = changed.is_ok(),
        }
    }
}

/// Copy the responder's counters into `pier_arp_replies_sent_total` and
/// `pier_garp_sent_total` once a second.
///
/// It holds the responder weakly: the desired-state task owns it, and the
/// responder stops answering when that task ends.
async fn arp_metrics(responder: std::sync::Weak<pier::arp::ArpResponder>, metrics: Metrics) {
    let mut seen: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let Some(responder) = responder.upgrade() else {
            break;
        };
        for (interface, c) in responder.counters() {
            let last = seen.entry(interface.clone()).or_default();
            let labels = metrics.interface(&interface);
            metrics
                .arp_replies_sent
                .get_or_create(&labels)
                .inc_by(c.replies.saturating_sub(last.0));
            metrics
                .garp_sent
                .get_or_create(&labels)
                .inc_by(c.gratuitous.saturating_sub(last.1));
            *last = (c.replies, c.gratuitous);
        }
    }
}

/// The numeric id of a group, by name.
fn group_id(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name).context("group name contains a NUL byte")?;
    // SAFETY: getgrnam reads a NUL-terminated string and returns a pointer to
    // static storage (or NULL); we read one field before any other call.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        anyhow::bail!("gateway.api_socket_group: no group named {name:?}");
    }
    // SAFETY: non-null pointer from getgrnam, see above.
    Ok(unsafe { (*gr).gr_gid })
}

/// The numeric id of a user, by name.
fn user_id(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name).context("user name contains a NUL byte")?;
    // SAFETY: getpwnam reads a NUL-terminated string and returns a pointer to
    // static storage (or NULL); we read one field before any other call.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        anyhow::bail!("gateway.api_socket_owner: no user named {name:?}");
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
