//! The local API (JSON over a unix socket, for `pier status` and friends)
//! and the HTTP listener for Prometheus metrics and health endpoints.
//!
//! Local API, all `GET`, answers `application/json`:
//!
//! | path | body |
//! |---|---|
//! | `/v1/status` | version, uptime, engine summary, readiness |
//! | `/v1/services` | every Service: IPs, pending reason |
//! | `/v1/pools` | pools with usage and orphaned IPs |
//! | `/v1/nodes` | nodes, eligibility, failing probes |
//! | `/v1/peers` | BGP peers (from the speaker) |
//! | `/v1/routes` | kernel routes and nft counters (from the route actuator) |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use thiserror::Error;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::bgp::StatusBoard;
use crate::engine::Query;
use crate::route::task::RoutesView;

pub mod client;

pub mod table;

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("cannot create the API socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen for metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the API reads. Cheap to clone.
#[derive(Clone)]
pub struct ApiContext {
    pub engine: mpsc::Sender<Query>,
    pub metrics: crate::metrics::Metrics,
    pub started: Instant,
    /// The BGP peers; ready once every one has been attempted.
    pub peers: StatusBoard,
    /// The routes the route actuator read back.
    pub routes: RoutesView,
    /// The route actuator's view of the data path (next-hop groups,
    /// flowtable, host firewalls); `None` before pier forwards.
    pub datapath: Option<std::sync::Arc<std::sync::Mutex<crate::route::DatapathStatus>>>,
}

impl ApiContext {
    fn datapath(&self) -> Option<crate::route::DatapathStatus> {
        self.datapath
            .as_ref()
            .and_then(|d| d.lock().ok().map(|s| s.clone()))
    }

    /// Why forwarding is blocked: one entry per host firewall chain that
    /// drops VIP traffic.
    fn forwarding_blocked(&self) -> Vec<String> {
        self.datapath()
            .map(|d| {
                d.blocked()
                    .into_iter()
                    .map(|(t, c)| format!("host firewall {t} chain {c} drops VIP traffic"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Socket file permissions and ownership.
#[derive(Debug, Clone)]
pub struct SocketOptions {
    pub mode: u32,
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

/// Bind the unix socket (replacing a stale file) with `opts`.
pub fn bind_socket(path: &Path, opts: &SocketOptions) -> Result<UnixListener, ApiError> {
    let err = |source| ApiError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(opts.mode)).map_err(err)?;
    if opts.owner.is_some() || opts.group.is_some() {
        std::os::unix::fs::chown(path, opts.owner, opts.group).map_err(err)?;
    }
    Ok(listener)
}

/// Serve the local API until the listener fails.
pub async fn serve_socket(listener: UnixListener, ctx: ApiContext) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "API socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(local_api(req, &ctx).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(error = %e, "API connection ended");
            }
        });
    }
}

/// Bind the metrics listener.
pub async fn bind_metrics(addr: SocketAddr) -> Result<TcpListener, ApiError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Metrics { addr, source })
}

/// Serve `/metrics`, `/healthz` and `/readyz`.
pub async fn serve_metrics(listener: TcpListener, ctx: ApiContext) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics listening");
    }
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(metrics_http(req, &ctx).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    respond(status, "application/json", v.to_string())
}

async fn ask<T>(ctx: &ApiContext, q: impl FnOnce(oneshot::Sender<T>) -> Query) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    ctx.engine.send(q(tx)).await.ok()?;
    rx.await.ok()
}

async fn ready(ctx: &ApiContext) -> bool {
    readiness(ctx).await.0
}

/// Ready, and what `/readyz` says. Ready once the initial sync is done, or
/// while pier serves the last known state (docs/ha.md: the API server was
/// unreachable at start), every peer was attempted, and no host firewall
/// drops VIP traffic.
async fn readiness(ctx: &ApiContext) -> (bool, String) {
    let Some(status) = ask(ctx, Query::Status).await else {
        return (false, "not ready: the engine is not running\n".into());
    };
    let peers = ctx.peers.all_attempted();
    let blocked = ctx.forwarding_blocked();
    if !blocked.is_empty() {
        return (
            false,
            format!("not ready: {} (see pier status)\n", blocked.join("; ")),
        );
    }
    match (&status.last_known_state, status.synced, peers) {
        (_, _, false) => (false, "not ready: first peer attempts pending\n".into()),
        (Some(lk), _, true) => (
            true,
            format!(
                "ready: running from the last known state since {} (the Kubernetes API cannot be reached)\n",
                table::unix_time(lk.since_unix)
            ),
        ),
        (None, true, true) => (true, "ready\n".into()),
        (None, false, true) => (false, "not ready: initial sync pending\n".into()),
    }
}

async fn local_api(req: Request<Incoming>, ctx: &ApiContext) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "only GET is served"}),
        );
    }
    let unavailable = || {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "the engine is not running"}),
        )
    };
    let body = match req.uri().path() {
        "/v1/status" => {
            let Some(engine) = ask(ctx, Query::Status).await else {
                return unavailable();
            };
            json!({
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_seconds": ctx.started.elapsed().as_secs(),
                "ready": ready(ctx).await,
                "engine": engine,
                "datapath": ctx.datapath().map(|d| json!({
                    "lines": d.lines(),
                    "blocked": d.blocked(),
                })),
            })
        }
        "/v1/services" => match ask(ctx, Query::Services).await {
            Some(v) => json!(v),
            None => return unavailable(),
        },
        "/v1/pools" => match ask(ctx, Query::Pools).await {
            Some(v) => json!(v),
            None => return unavailable(),
        },
        "/v1/nodes" => match ask(ctx, Query::Nodes).await {
            Some(v) => json!(v),
            None => return unavailable(),
        },
        "/v1/peers" => json!(ctx.peers.snapshot()),
        "/v1/routes" => json!(*ctx.routes.borrow().clone()),
        other => {
            return json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": format!("no such path {other:?}")}),
            )
        }
    };
    json_response(StatusCode::OK, &body)
}

async fn metrics_http(req: Request<Incoming>, ctx: &ApiContext) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => {
            if let Some(d) = ctx.datapath() {
                ctx.metrics
                    .set_datapath(&d.blocked(), d.next_hop_groups_fallback.is_some());
            }
            respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ctx.metrics.render(),
            )
        }
        "/healthz" => {
            // Alive: the engine answers.
            if ask(ctx, Query::Status).await.is_some() {
                respond(StatusCode::OK, "text/plain", "ok\n")
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "engine not running\n",
                )
            }
        }
        "/readyz" => {
            let (ready, text) = readiness(ctx).await;
            let code = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            respond(code, "text/plain", text)
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;

    /// An engine stand-in answering `Status` with `synced`.
    fn context(synced: bool, peers_attempted: bool) -> ApiContext {
        context_with(synced, peers_attempted, None)
    }

    fn context_with(
        synced: bool,
        peers_attempted: bool,
        last_known_state: Option<crate::engine::LastKnownState>,
    ) -> ApiContext {
        let board = StatusBoard::default();
        let peer = "192.0.2.1".parse().unwrap();
        let status = crate::bgp::PeerStatus::idle(peer, 65000, 65001);
        board.insert(
            peer,
            Arc::new(std::sync::Mutex::new(crate::bgp::PeerStatus {
                attempted: peers_attempted,
                ..status
            })),
        );
        let (tx, mut rx) = mpsc::channel(8);
        tokio::spawn(async move {
            while let Some(q) = rx.recv().await {
                if let Query::Status(reply) = q {
                    let _ = reply.send(crate::engine::EngineStatus {
                        synced,
                        leader: true,
                        generation: 1,
                        services: 0,
                        allocated: 0,
                        pending: 0,
                        vips_announced: 0,
                        vips_unannounced: 0,
                        nodes: 0,
                        pools: 0,
                        plan_saved_generation: 0,
                        store_failing: None,
                        last_known_state: last_known_state.clone(),
                    });
                }
            }
        });
        ApiContext {
            engine: tx,
            metrics: crate::metrics::Metrics::new(),
            started: Instant::now(),
            peers: board,
            routes: tokio::sync::watch::channel(Arc::new(Vec::new())).1,
            datapath: None,
        }
    }

    #[tokio::test]
    async fn ready_needs_the_initial_sync_and_every_peer_attempted() {
        assert!(ready(&context(true, true)).await);
        assert!(!ready(&context(false, true)).await);
        assert!(!ready(&context(true, false)).await);
        // An engine that is gone is not ready either.
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let ctx = ApiContext {
            engine: tx,
            ..context(true, true)
        };
        assert!(!ready(&ctx).await);
        // A host firewall that drops VIP traffic: not ready, and why.
        let status = crate::route::DatapathStatus {
            host_firewall: vec![crate::route::hostfw::Finding {
                table: "ip filter".into(),
                chain: "FORWARD".into(),
                opened: false,
                blocked_vips: vec!["10.77.0.10".parse().unwrap()],
                fix: "set host_firewall = \"open\"".into(),
            }],
            ..Default::default()
        };
        let ctx = ApiContext {
            datapath: Some(Arc::new(std::sync::Mutex::new(status))),
            ..context(true, true)
        };
        assert!(!ready(&ctx).await);
        assert_eq!(
            ctx.forwarding_blocked(),
            vec!["host firewall ip filter chain FORWARD drops VIP traffic"]
        );
    }

    #[tokio::test]
    async fn the_last_known_state_is_ready_and_says_so() {
        let lk = crate::engine::LastKnownState {
            since_unix: 1_700_000_000,
            generation: 7,
            vips: 3,
        };
        let (ready, text) = readiness(&context_with(false, true, Some(lk.clone()))).await;
        assert!(ready);
        assert!(
            text.contains("last known state since 2023-11-14T22:13:20Z"),
            "{text}"
        );
        assert!(!readiness(&context_with(false, false, Some(lk))).await.0);
    }

    #[tokio::test]
    async fn socket_gets_mode_owner_and_group_and_replaces_a_stale_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/pier.sock");
        // A stale file from a daemon that died.
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"stale").unwrap();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let opts = SocketOptions {
            mode: 0o640,
            // Only root may give the socket away (nobody/nogroup).
            owner: root.then_some(65534),
            group: root.then_some(65534),
        };
        let _listener = bind_socket(&path, &opts).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
        assert_eq!(m.mode() & 0o777, 0o640);
        if root {
            assert_eq!((m.uid(), m.gid()), (65534, 65534));
        }
    }
}
