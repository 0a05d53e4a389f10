//! HTTP(S) front end: routing of kube-apiserver paths, verbs, watch streams, auth,
//! fault injection and the request log.

use crate::error::ApiError;
use crate::resource::{CustomResource, ResourceDef};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{
    Deleted, EventType, ListOpts, ObjectView, PatchType, Store, Target, WatchOpts, WriteOpts,
};
use crate::text;
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

/// Largest request body accepted (kube-apiserver's limit is 3 MiB for most writes).
const MAX_BODY: usize = 3 * 1024 * 1024;
/// kube-apiserver's default watch duration when `timeoutSeconds` is absent (min-request-timeout).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// Errors starting the server or writing its files.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding or reading the listening socket failed.
    #[error("test API server: binding 127.0.0.1: {0}")]
    Bind(#[source] std::io::Error),
    /// Generating the CA or certificates failed.
    #[error("test API server: generating certificates: {0}")]
    Certificates(#[from] rcgen::Error),
    /// Building the TLS configuration failed.
    #[error("test API server: TLS configuration: {0}")]
    Tls(String),
    /// Writing the kubeconfig failed.
    #[error("test API server: writing kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// How the server is started. `Default` is plain HTTP, no authentication.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Serve HTTPS with a generated CA and a server certificate for 127.0.0.1/localhost.
    pub tls: bool,
    /// Require `Authorization: Bearer <token>` (or a client certificate, if enabled).
    pub bearer_token: Option<String>,
    /// Accept client certificates signed by the generated CA (needs `tls`); when set,
    /// requests without a valid certificate or token get 401.
    pub client_cert_auth: bool,
    /// The user name RBAC-style 403 messages name (and the client certificate's CN).
    pub user: String,
    /// How many events the history keeps; watches or continue tokens from before it get 410.
    pub history_window: usize,
    /// Interval of BOOKMARK events on watches that asked for them.
    pub bookmark_interval: Duration,
    /// Subject alternative names of the server certificate (IP addresses or DNS
    /// names); `None`: `127.0.0.1`, `localhost`, `::1`.
    pub server_names: Option<Vec<String>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            tls: false,
            bearer_token: None,
            client_cert_auth: false,
            user: "pier".into(),
            history_window: 100_000,
            bookmark_interval: Duration::from_secs(1),
            server_names: None,
        }
    }
}

/// One request as received, for assertions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// `GET`, `PATCH`...
    pub method: String,
    /// Path without the query, e.g. `/api/v1/namespaces/default/services/web/status`.
    pub path: String,
    /// Raw query string (empty if none).
    pub query: String,
    /// `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// Kubernetes verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`), or empty for discovery and other paths.
    pub verb: String,
    /// HTTP status of the response (200 for a watch that started).
    pub status: u16,
    /// For `get`, `list` and `watch`: how kube-apiserver would serve the read
    /// (see [`ReadKind::of`]); `None` for every other request.
    pub read: Option<ReadKind>,
}

/// How kube-apiserver serves a read, decided from `resourceVersion` and
/// `resourceVersionMatch` as its storage layer does
/// (<https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions>):
/// only [`Quorum`](ReadKind::Quorum) and [`Exact`](ReadKind::Exact) go to etcd; the
/// others are answered from the watch cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadKind {
    /// No `resourceVersion` (or `""`): the most recent state, a quorum read through etcd.
    Quorum,
    /// `resourceVersion=0`: any state the cache holds.
    Any,
    /// `resourceVersion=N`, `resourceVersionMatch` unset or `NotOlderThan`: the cache,
    /// once it has caught up with N.
    NotOlderThan,
    /// `resourceVersionMatch=Exact`, or a list continued from a `continue` token:
    /// the state at exactly that version, read from etcd.
    Exact,
}

impl ReadKind {
    /// The kind of a `get`, `list` or `watch`; `None` for any other verb.
    pub fn of(
        verb: &str,
        resource_version: Option<&str>,
        resource_version_match: Option<&str>,
        continued: bool,
    ) -> Option<ReadKind> {
        if !matches!(verb, "get" | "list" | "watch") {
            return None;
        }
        if verb == "list" && continued {
            return Some(ReadKind::Exact);
        }
        Some(match resource_version.unwrap_or("") {
            "" => ReadKind::Quorum,
            "0" => ReadKind::Any,
            _ if verb == "list" && resource_version_match == Some("Exact") => ReadKind::Exact,
            _ => ReadKind::NotOlderThan,
        })
    }

    /// Whether the read goes through etcd (and pays [`CostModel::quorum_read`]).
    pub fn reaches_etcd(self) -> bool {
        matches!(self, ReadKind::Quorum | ReadKind::Exact)
    }
}

/// What reads through etcd and writes cost, charged by one serial pipe: each such
/// request takes the next free slot of its cost, so N of them take at least N × cost
/// however many run at once (etcd commits one raft entry after another; the order
/// of one round on local disk is a fraction of a millisecond). Cache reads and
/// discovery cost nothing. Zero (the default) charges nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CostModel {
    /// A read that reaches etcd ([`ReadKind::reaches_etcd`]).
    pub quorum_read: Duration,
    /// A create, update, patch, delete or deletecollection (accepted or not: a
    /// refused precondition is found inside etcd's transaction).
    pub write: Duration,
}

#[derive(Clone, Debug)]
struct Denial {
    verb: String,
    resource: String,
}

#[derive(Clone, Debug)]
struct Fault {
    verb: String,
    resource: String,
    code: u16,
    remaining: usize,
}

struct Runtime {
    latency: Duration,
    costs: CostModel,
    denials: Vec<Denial>,
    faults: Vec<Fault>,
    bookmark_interval: Duration,
    available: bool,
}

struct TlsMaterial {
    ca_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
    config: Arc<rustls::ServerConfig>,
}

pub(crate) struct Shared {
    pub(crate) store: Store,
    runtime: Mutex<Runtime>,
    log: Mutex<Vec<RequestRecord>>,
    /// When the etcd pipe of [`CostModel`] is next free.
    etcd_free: Mutex<Option<tokio::time::Instant>>,
    conn_gen: watch::Sender<u64>,
    watch_gen: watch::Sender<u64>,
    token: Mutex<Option<String>>,
    client_certs: bool,
    user: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running test API server; dropping it stops it. See the crate documentation.
pub struct TestApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: Option<Arc<TlsMaterial>>,
    accept: JoinHandle<()>,
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.conn_gen.send_modify(|g| *g += 1);
        self.shared.watch_gen.send_modify(|g| *g += 1);
    }
}

impl TestApiServer {
    /// Starts a plain-HTTP server on 127.0.0.1 with default options.
    /// Must be called inside a Tokio runtime.
    pub async fn start() -> Result<TestApiServer, ServerError> {
        Self::start_with(ServerOptions::default()).await
    }

    /// Starts a server with the given options.
    pub async fn start_with(opts: ServerOptions) -> Result<TestApiServer, ServerError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(ServerError::Bind)?;
        let addr = listener.local_addr().map_err(ServerError::Bind)?;
        let tls = if opts.tls {
            Some(Arc::new(make_tls(
                &opts.user,
                opts.client_cert_auth,
                opts.server_names.clone(),
            )?))
        } else {
            None
        };
        let (conn_gen, _) = watch::channel(0);
        let (watch_gen, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            store: Store::new(opts.history_window),
            runtime: Mutex::new(Runtime {
                latency: Duration::ZERO,
                costs: CostModel::default(),
                denials: vec![],
                faults: vec![],
                bookmark_interval: opts.bookmark_interval,
                available: true,
            }),
            log: Mutex::new(vec![]),
            etcd_free: Mutex::new(None),
            conn_gen,
            watch_gen,
            token: Mutex::new(opts.bearer_token.clone()),
            client_certs: opts.client_cert_auth && opts.tls,
            user: opts.user.clone(),
        });
        let accept = tokio::spawn(accept_loop(
            listener,
            shared.clone(),
            tls.as_ref().map(|t| t.config.clone()),
        ));
        Ok(TestApiServer {
            shared,
            addr,
            tls,
            accept,
        })
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA certificate (PEM) that signed the server and client certificates (TLS only).
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.ca_pem.as_str())
    }

    /// A client certificate and key (PEM) signed by the CA, CN = the configured user.
    pub fn client_identity_pem(&self) -> Option<(&str, &str)> {
        self.tls
            .as_ref()
            .map(|t| (t.client_cert_pem.as_str(), t.client_key_pem.as_str()))
    }

    /// The kubeconfig text for this server: the CA, and the bearer token and/or client
    /// certificate the server was configured to require. Namespace `default`.
    pub fn kubeconfig_yaml(&self) -> String {
        let mut cluster = format!("    server: {}\n", self.url());
        let mut user = String::new();
        if let Some(t) = &self.tls {
            cluster.push_str(&format!(
                "    certificate-authority-data: {}\n",
                text::base64_encode(t.ca_pem.as_bytes())
            ));
            if self.shared.client_certs {
                user.push_str(&format!(
                    "    client-certificate-data: {}\n    client-key-data: {}\n",
                    text::base64_encode(t.client_cert_pem.as_bytes()),
                    text::base64_encode(t.client_key_pem.as_bytes())
                ));
            }
        }
        if let Some(tok) = lock(&self.shared.token).as_ref() {
            // A JSON string is valid YAML and quotes any character safely.
            let quoted = serde_json::to_string(tok).unwrap_or_default();
            user.push_str(&format!("    token: {quoted}\n"));
        }
        let user_block = if user.is_empty() {
            "  user: {}\n".to_string()
        } else {
            format!("  user:\n{user}")
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: pier-testapi\n  cluster:\n{cluster}contexts:\n- name: pier-testapi\n  context:\n    cluster: pier-testapi\n    user: pier-testapi\n    namespace: default\ncurrent-context: pier-testapi\nusers:\n- name: pier-testapi\n{user_block}"
        )
    }

    /// Writes [`Self::kubeconfig_yaml`] to `path`.
    pub fn kubeconfig(&self, path: impl AsRef<Path>) -> Result<(), ServerError> {
        let path = path.as_ref();
        std::fs::write(path, self.kubeconfig_yaml()).map_err(|source| ServerError::Kubeconfig {
            path: path.display().to_string(),
            source,
        })
    }

    // ---- direct store access -------------------------------------------------------------

    /// Registers (or replaces) a custom resource; discovery shows it at once.
    pub fn register_crd(&self, crd: CustomResource) -> Arc<ResourceDef> {
        self.shared.store.lock().registry.register(crd)
    }

    /// Creates an object (its apiVersion, kind, metadata.namespace say where), exactly as
    /// a POST would (defaults, uid, resourceVersion, watch event). Namespaced objects
    /// without a namespace go to `default`.
    pub fn create(&self, obj: Value) -> Result<Value, ApiError> {
        self.shared.store.create_object(obj, "pier-testapi")
    }

    /// Changes the bearer token the server requires (`None`: no token; a client
    /// certificate may still be required), as when a credential is rotated.
    pub fn set_bearer_token(&self, token: Option<String>) {
        *lock(&self.shared.token) = token;
    }

    /// Replaces an object as a PUT would (status ignored for kinds with a status subresource).
    pub fn update(&self, obj: Value) -> Result<Value, ApiError> {
        let t = self.shared.store.target_of(&obj, true)?;
        self.shared.store.update(&t, obj, &Self::direct_opts())
    }

    /// Replaces an object's status as a PUT to `/status` would.
    pub fn update_status(&self, obj: Value) -> Result<Value, ApiError> {
        let mut t = self.shared.store.target_of(&obj, true)?;
        t.subresource = Some("status".into());
        self.shared.store.update(&t, obj, &Self::direct_opts())
    }

    /// JSON-merge-patches an object (main resource).
    pub fn merge_patch(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        patch: Value,
    ) -> Result<Value, ApiError> {
        let t = self.target(api_version, kind, namespace, Some(name))?;
        let body = serde_json::to_vec(&patch).map_err(|e| ApiError::internal(e.to_string()))?;
        self.shared
            .store
            .patch(&t, PatchType::Merge, &body, &Self::direct_opts())
            .map(|(v, _)| v)
    }

    /// Deletes an object (finalizers are honoured as for a DELETE).
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(), ApiError> {
        let t = self.target(api_version, kind, namespace, Some(name))?;
        self.shared.store.delete(&t, None, None, false).map(|_| ())
    }

    /// Reads an object, `None` if absent.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let t = self.target(api_version, kind, namespace, Some(name)).ok()?;
        self.shared.store.get(&t).ok()
    }

    /// All objects of a kind (in one namespace, or all with `None`), in name order.
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        match self.target(api_version, kind, namespace, None) {
            Ok(t) => self.shared.store.list_values(&t),
            Err(_) => vec![],
        }
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.resource_version()
    }

    fn direct_opts() -> WriteOpts {
        WriteOpts {
            manager: "pier-testapi".into(),
            ..Default::default()
        }
    }

    fn target(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<Target, ApiError> {
        let (def, version) = self
            .shared
            .store
            .lock()
            .registry
            .by_kind(api_version, kind)
            .ok_or_else(|| ApiError::bad_request(format!("no kind {kind:?} in {api_version:?}")))?;
        Ok(Target {
            namespace: if def.namespaced {
                Some(namespace.unwrap_or("default").to_string())
            } else {
                None
            },
            def,
            version,
            name: name.map(str::to_string),
            subresource: None,
        })
    }

    // ---- fault injection ------------------------------------------------------------------

    /// Drops every connection and watch (clients see resets), keeps the store and the port.
    pub fn restart(&self) {
        self.shared.conn_gen.send_modify(|g| *g += 1);
        self.shared.watch_gen.send_modify(|g| *g += 1);
    }

    /// Ends every watch stream cleanly (as the apiserver does at a watch timeout).
    pub fn drop_watches(&self) {
        self.shared.watch_gen.send_modify(|g| *g += 1);
    }

    /// While unavailable, new connections are closed at once and existing ones are
    /// dropped: an API outage. `set_available(true)` ends it.
    pub fn set_available(&self, available: bool) {
        lock(&self.shared.runtime).available = available;
        if !available {
            self.restart();
        }
    }

    /// Forgets the event history: watches and continue tokens from any earlier
    /// resourceVersion get 410 Gone, and running watches that lag behind end with 410.
    pub fn compact(&self) {
        self.shared.store.compact();
    }

    /// Sets how many events the history keeps.
    pub fn set_history_window(&self, events: usize) {
        self.shared.store.set_window(events);
    }

    /// Answers 403 Forbidden (RBAC wording) to `verb` (`get`, `list`, `watch`, `create`,
    /// `update`, `patch`, `delete`, `deletecollection` or `*`) on `resource`, written as
    /// RBAC names it: `services`, `services/status`, `leases.coordination.k8s.io`, `*`.
    pub fn deny(&self, verb: &str, resource: &str) {
        lock(&self.shared.runtime).denials.push(Denial {
            verb: verb.into(),
            resource: resource.into(),
        });
    }

    /// Removes every denial and pending injected failure.
    pub fn allow_all(&self) {
        let mut rt = lock(&self.shared.runtime);
        rt.denials.clear();
        rt.faults.clear();
    }

    /// Answers the next `times` requests of `verb` on `resource` (same syntax as
    /// [`Self::deny`]) with an error of HTTP status `code`: 429 TooManyRequests (with
    /// `Retry-After: 1`), 500 InternalError, 503 ServiceUnavailable, 504 Timeout, or any
    /// other code as InternalError. For retry and backoff tests.
    pub fn fail_next(&self, verb: &str, resource: &str, code: u16, times: usize) {
        lock(&self.shared.runtime).faults.push(Fault {
            verb: verb.into(),
            resource: resource.into(),
            code,
            remaining: times,
        });
    }

    /// Delays every response (and the start of every watch) by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.shared.runtime).latency = latency;
    }

    /// Charges reads through etcd and writes their cost from now on (see [`CostModel`]).
    pub fn set_costs(&self, costs: CostModel) {
        lock(&self.shared.runtime).costs = costs;
    }

    /// Counts the reads of `kind` so far among the requests satisfying `pred`.
    pub fn count_reads(&self, pred: impl Fn(&RequestRecord) -> bool, kind: ReadKind) -> usize {
        lock(&self.shared.log)
            .iter()
            .filter(|r| r.read == Some(kind) && pred(r))
            .count()
    }

    /// Changes the bookmark interval for watches started from now on.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        lock(&self.shared.runtime).bookmark_interval = interval;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.log).clone()
    }

    /// Counts requests satisfying `pred`.
    pub fn count_requests(&self, pred: impl Fn(&RequestRecord) -> bool) -> usize {
        lock(&self.shared.log).iter().filter(|r| pred(r)).count()
    }

    /// Empties the request log.
    pub fn clear_requests(&self) {
        lock(&self.shared.log).clear();
    }
}

fn make_tls(
    user: &str,
    client_auth: bool,
    names: Option<Vec<String>>,
) -> Result<TlsMaterial, ServerError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pier-testapi-ca");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let mut sp = CertificateParams::new(names.unwrap_or_else(|| {
        vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            "::1".to_string(),
        ]
    }))?;
    sp.distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = sp.signed_by(&server_key, &issuer)?;

    let client_key = KeyPair::generate()?;
    let mut cp = CertificateParams::new(Vec::<String>::new())?;
    cp.distinguished_name.push(DnType::CommonName, user);
    cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = cp.signed_by(&client_key, &issuer)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_err = |e: rustls::Error| ServerError::Tls(e.to_string());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?;
    let builder = if client_auth {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).map_err(tls_err)?;
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| ServerError::Tls(e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
    let mut config = builder
        .with_single_cert(vec![server_cert.der().clone()], key_der)
        .map_err(tls_err)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsMaterial {
        ca_pem: ca_cert.pem(),
        client_cert_pem: client_cert.pem(),
        client_key_pem: client_key.serialize_pem(),
        config: Arc::new(config),
    })
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            // Transient accept errors (EMFILE...): back off briefly rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if !lock(&shared.runtime).available {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let mut kill = shared.conn_gen.subscribe();
            kill.borrow_and_update();
            let serve = async {
                match acceptor {
                    Some(acc) => {
                        let Ok(Ok(tls)) =
                            tokio::time::timeout(Duration::from_secs(10), acc.accept(stream)).await
                        else {
                            return;
                        };
                        let has_cert = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .is_some_and(|c| !c.is_empty());
                        serve_conn(hyper_util::rt::TokioIo::new(tls), shared.clone(), has_cert)
                            .await;
                    }
                    None => {
                        serve_conn(hyper_util::rt::TokioIo::new(stream), shared.clone(), false)
                            .await
                    }
                }
            };
            tokio::select! {
                _ = serve => {}
                _ = kill.changed() => {}
            }
        });
    }
}

async fn serve_conn<I>(io: I, shared: Arc<Shared>, client_cert: bool)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, req, client_cert).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, svc)
        .await;
}

/// Response body: a whole JSON document, or a watch stream fed by a channel.
pub(crate) enum ApiBody {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl Body for ApiBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ApiBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ApiBody::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ApiBody::Full(None))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            ApiBody::Full(Some(b)) => hyper::body::SizeHint::with_exact(b.len() as u64),
            ApiBody::Full(None) => hyper::body::SizeHint::with_exact(0),
            ApiBody::Stream(_) => hyper::body::SizeHint::default(),
        }
    }
}

fn json_response(code: u16, body: Vec<u8>) -> Response<ApiBody> {
    let mut r = Response::new(ApiBody::Full(Some(Bytes::from(body))));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn value_response(code: u16, v: &Value) -> Response<ApiBody> {
    json_response(code, serde_json::to_vec(v).unwrap_or_default())
}

fn error_response(e: &ApiError) -> Response<ApiBody> {
    value_response(e.code, &e.to_status())
}

/// What a path addresses.
enum Route {
    Version,
    Health,
    Api,
    Apis,
    Group(String),
    ResourceList(String, String),
    Resource(Target, bool),
    /// `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`: may
    /// the caller do this? Answered from the denials ([`TestApiServer::deny`]).
    AccessReview,
}

fn route(shared: &Shared, path: &str) -> Result<Route, ApiError> {
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(text::percent_decode)
        .collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (group, version, rest) = match s.as_slice() {
        ["version"] => return Ok(Route::Version),
        ["healthz"] | ["livez"] | ["readyz"] => return Ok(Route::Health),
        ["api"] => return Ok(Route::Api),
        ["apis"] => return Ok(Route::Apis),
        ["apis", g] => return Ok(Route::Group(g.to_string())),
        ["api", v] => return Ok(Route::ResourceList(String::new(), v.to_string())),
        ["apis", g, v] => return Ok(Route::ResourceList(g.to_string(), v.to_string())),
        ["apis", "authorization.k8s.io", "v1", "selfsubjectaccessreviews"] => {
            return Ok(Route::AccessReview)
        }
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route()),
    };
    let (watch_path, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    let (namespace, plural, name, sub) = match rest {
        // `/api/v1/namespaces/{name}/status` is the Namespace's own subresource.
        ["namespaces", n, sub @ ("status" | "finalize")] => {
            (None, "namespaces", Some(*n), Some(*sub))
        }
        ["namespaces", ns, plural, tail @ ..] => match tail {
            [] => (Some(*ns), *plural, None, None),
            [n] => (Some(*ns), *plural, Some(*n), None),
            [n, sub] => (Some(*ns), *plural, Some(*n), Some(*sub)),
            _ => return Err(ApiError::no_route()),
        },
        [plural] => (None, *plural, None, None),
        [plural, n] => (None, *plural, Some(*n), None),
        [plural, n, sub] => (None, *plural, Some(*n), Some(*sub)),
        _ => return Err(ApiError::no_route()),
    };
    let def = shared
        .store
        .lock()
        .registry
        .by_path(group, version, plural)
        .ok_or_else(ApiError::no_route)?;
    if (def.namespaced && namespace.is_none() && name.is_some())
        || (!def.namespaced && namespace.is_some())
    {
        return Err(ApiError::no_route());
    }
    if let Some(sub) = sub {
        if !(sub == "status" && def.status_subresource) {
            return Err(ApiError::no_route());
        }
    }
    Ok(Route::Resource(
        Target {
            def,
            version: version.to_string(),
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            subresource: sub.map(str::to_string),
        },
        watch_path,
    ))
}

struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1" | "True"))
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    client_cert: bool,
) -> Response<ApiBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (resp, verb) = handle_inner(&shared, req, client_cert).await;
    let q = Query(text::parse_query(&query));
    let read = ReadKind::of(
        &verb,
        q.get("resourceVersion"),
        q.get("resourceVersionMatch").filter(|m| !m.is_empty()),
        q.get("continue").is_some_and(|c| !c.is_empty()),
    );
    lock(&shared.log).push(RequestRecord {
        method: method.to_string(),
        path,
        query,
        content_type,
        verb,
        status: resp.status().as_u16(),
        read,
    });
    resp
}

fn authorized(shared: &Shared, req: &Request<Incoming>, client_cert: bool) -> bool {
    let token = lock(&shared.token).clone();
    if token.is_none() && !shared.client_certs {
        return true;
    }
    if shared.client_certs && client_cert {
        return true;
    }
    let bearer = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    matches!((bearer, &token), (Some(b), Some(t)) if b.trim() == t)
}

/// RBAC-style rule match: verb or `*`; resource `plural[.group][/sub]` or `*`. A rule
/// without a subresource does not cover subresources.
fn rule_matches(rule_verb: &str, rule_resource: &str, verb: &str, t: &Target) -> bool {
    attrs_match(
        rule_verb,
        rule_resource,
        verb,
        &t.def.plural,
        &t.def.group,
        t.subresource.as_deref(),
    )
}

/// A SelfSubjectAccessReview (authorization.k8s.io/v1) answered from the
/// denials: `status.allowed` unless one matches its `resourceAttributes`.
/// As kube-apiserver: the object comes back with `status` filled in;
/// `nonResourceAttributes` are always allowed here.
fn access_review(denials: &[Denial], mut body: Value) -> Result<Value, ApiError> {
    if body["kind"] != "SelfSubjectAccessReview" {
        return Err(ApiError::bad_request(
            "expected kind SelfSubjectAccessReview",
        ));
    }
    let spec = &body["spec"];
    let allowed = match spec.get("resourceAttributes") {
        Some(a) => {
            let f = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or("");
            let sub = Some(f("subresource")).filter(|s| !s.is_empty());
            !denials
                .iter()
                .any(|d| attrs_match(&d.verb, &d.resource, f("verb"), f("resource"), f("group"), sub))
        }
        None if spec.get("nonResourceAttributes").is_some() => true,
        None => {
            return Err(ApiError::invalid(
                "authorization.k8s.io",
                "SelfSubjectAccessReview",
                "",
                "spec.resourceAttributes",
                "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
            ))
        }
    };
    body["status"] = if allowed {
        json!({"allowed": true, "reason": "allowed by the test API server"})
    } else {
        json!({"allowed": false, "reason": "denied by the test API server's rules"})
    };
    Ok(body)
}

fn attrs_match(
    rule_verb: &str,
    rule_resource: &str,
    verb: &str,
    plural: &str,
    group: &str,
    sub: Option<&str>,
) -> bool {
    if rule_verb != "*" && rule_verb != verb {
        return false;
    }
    if rule_resource == "*" {
        return true;
    }
    let (res, rule_sub) = match rule_resource.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (rule_resource, None),
    };
    let (res_plural, res_group) = match res.split_once('.') {
        Some((p, g)) => (p, Some(g)),
        None => (res, None),
    };
    let (rule_plural, rule_group) = (res_plural, res_group);
    rule_plural == plural && rule_group.is_none_or(|g| g == group) && rule_sub == sub
}

fn denied(rules: &[Denial], verb: &str, t: &Target) -> bool {
    rules
        .iter()
        .any(|d| rule_matches(&d.verb, &d.resource, verb, t))
}

/// Takes one pending injected failure for this request, if any.
fn injected_failure(faults: &mut Vec<Fault>, verb: &str, t: &Target) -> Option<ApiError> {
    let f = faults
        .iter_mut()
        .find(|f| f.remaining > 0 && rule_matches(&f.verb, &f.resource, verb, t))?;
    f.remaining -= 1;
    let code = f.code;
    faults.retain(|f| f.remaining > 0);
    let (reason, message) = match code {
        429 => (
            "TooManyRequests",
            "Too many requests, please try again later.",
        ),
        503 => (
            "ServiceUnavailable",
            "The server is currently unable to handle the request",
        ),
        504 => (
            "Timeout",
            "The server was unable to return a response in the time allotted",
        ),
        _ => ("InternalError", "Internal error occurred: injected failure"),
    };
    let details = (code == 429).then(|| json!({"retryAfterSeconds": 1}));
    Some(ApiError {
        code,
        reason,
        message: message.into(),
        details,
    })
}

async fn handle_inner(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    client_cert: bool,
) -> (Response<ApiBody>, String) {
    if !authorized(shared, &req, client_cert) {
        return (error_response(&ApiError::unauthorized()), String::new());
    }
    let (latency, bookmark_interval) = {
        let rt = lock(&shared.runtime);
        (rt.latency, rt.bookmark_interval)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let q = Query(text::parse_query(req.uri().query().unwrap_or("")));
    let route = match route(shared, req.uri().path()) {
        Ok(r) => r,
        Err(e) => return (error_response(&e), String::new()),
    };
    let registry = || shared.store.lock().registry.clone();
    let (t, watch_path) = match route {
        Route::Version => return (value_response(200, &version_doc()), String::new()),
        Route::Health => {
            let mut r = Response::new(ApiBody::Full(Some(Bytes::from_static(b"ok"))));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return (r, String::new());
        }
        Route::Api => {
            return (
                value_response(200, &registry().api_versions()),
                String::new(),
            )
        }
        Route::Apis => {
            return (
                value_response(200, &registry().api_group_list()),
                String::new(),
            )
        }
        Route::Group(g) => {
            return match registry().api_group(&g) {
                Some(doc) => (value_response(200, &doc), String::new()),
                None => (error_response(&ApiError::no_route()), String::new()),
            }
        }
        Route::ResourceList(g, v) => {
            return match registry().resource_list(&g, &v) {
                Some(doc) => (value_response(200, &doc), String::new()),
                None => (error_response(&ApiError::no_route()), String::new()),
            }
        }
        Route::Resource(t, w) => (t, w),
        Route::AccessReview => {
            if req.method() != Method::POST {
                return (
                    error_response(&ApiError::method_not_allowed(req.method().as_str())),
                    String::new(),
                );
            }
            let denials = lock(&shared.runtime).denials.clone();
            let (group, plural) = ("authorization.k8s.io", "selfsubjectaccessreviews");
            if denials
                .iter()
                .any(|d| attrs_match(&d.verb, &d.resource, "create", plural, group, None))
            {
                let e = ApiError::forbidden(group, plural, None, "", "create", None, &shared.user);
                return (error_response(&e), "create".into());
            }
            let resp = match read_body(req).await.and_then(|b| parse_json(&b)) {
                Ok(body) => match access_review(&denials, body) {
                    Ok(v) => value_response(201, &v),
                    Err(e) => error_response(&e),
                },
                Err(e) => error_response(&e),
            };
            return (resp, "create".into());
        }
    };
    let watch = watch_path || q.flag("watch");
    let verb = match (req.method(), t.name.is_some()) {
        (&Method::GET, _) if watch => "watch",
        (&Method::GET, true) => "get",
        (&Method::GET, false) => "list",
        (&Method::POST, false)
            if t.subresource.is_none() && (t.namespace.is_some() || !t.def.namespaced) =>
        {
            "create"
        }
        (&Method::PUT, true) => "update",
        (&Method::PATCH, true) => "patch",
        (&Method::DELETE, true) if t.subresource.is_none() => "delete",
        (&Method::DELETE, false) => "deletecollection",
        (m, _) => {
            return (
                error_response(&ApiError::method_not_allowed(m.as_str())),
                String::new(),
            )
        }
    };
    if denied(&lock(&shared.runtime).denials, verb, &t) {
        let e = ApiError::forbidden(
            &t.def.group,
            &t.def.plural,
            t.subresource.as_deref(),
            t.name.as_deref().unwrap_or(""),
            verb,
            t.namespace.as_deref(),
            &shared.user,
        );
        return (error_response(&e), verb.into());
    }
    let failure = injected_failure(&mut lock(&shared.runtime).faults, verb, &t);
    if let Some(e) = failure {
        let mut r = error_response(&e);
        if e.code == 429 {
            r.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from_static("1"),
            );
        }
        return (r, verb.into());
    }
    charge(shared, verb, &q).await;
    let resp = match serve_verb(shared, req, &q, t, verb, bookmark_interval).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    (resp, verb.into())
}

/// Waits for this request's slot in the etcd pipe, if [`CostModel`] charges it.
async fn charge(shared: &Shared, verb: &str, q: &Query) {
    let costs = lock(&shared.runtime).costs;
    let cost = match ReadKind::of(
        verb,
        q.get("resourceVersion"),
        q.get("resourceVersionMatch").filter(|m| !m.is_empty()),
        q.get("continue").is_some_and(|c| !c.is_empty()),
    ) {
        Some(kind) if kind.reaches_etcd() => costs.quorum_read,
        Some(_) => Duration::ZERO,
        None => costs.write,
    };
    if cost.is_zero() {
        return;
    }
    let done = {
        let mut free = lock(&shared.etcd_free);
        let now = tokio::time::Instant::now();
        let start = free.map_or(now, |f| f.max(now));
        let done = start + cost;
        *free = Some(done);
        done
    };
    tokio::time::sleep_until(done).await;
}

fn version_doc() -> Value {
    json!({
        "major": "1", "minor": "34", "gitVersion": "v1.34.0-pier-testapi",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn write_opts(q: &Query, req: &Request<Incoming>) -> WriteOpts {
    // Without fieldManager, kube-apiserver names the manager after the User-Agent's
    // first component.
    let manager = q
        .get("fieldManager")
        .map(str::to_string)
        .unwrap_or_else(|| {
            req.headers()
                .get(hyper::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .and_then(|ua| ua.split('/').next())
                .filter(|s| !s.is_empty())
                .unwrap_or("unknown")
                .to_string()
        });
    WriteOpts {
        manager,
        force: q.flag("force"),
        dry_run: q.get("dryRun") == Some("All"),
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::too_large())
        }
        Err(e) => Err(ApiError::bad_request(format!("reading request body: {e}"))),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))
}

fn list_opts(q: &Query, t: &Target) -> Result<ListOpts, ApiError> {
    Ok(ListOpts {
        labels: LabelSelector::parse(q.get("labelSelector").unwrap_or(""))?,
        fields: FieldSelector::parse(q.get("fieldSelector").unwrap_or(""), t.def.field_labels)?,
        limit: match q.get("limit") {
            Some(l) if !l.is_empty() => Some(
                l.parse::<i64>()
                    .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?
                    .max(0) as usize,
            ),
            _ => None,
        },
        continue_token: q
            .get("continue")
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        resource_version: q.get("resourceVersion").map(str::to_string),
        rv_match: q
            .get("resourceVersionMatch")
            .filter(|m| !m.is_empty())
            .map(str::to_string),
    })
}

async fn serve_verb(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    q: &Query,
    t: Target,
    verb: &str,
    bookmark_interval: Duration,
) -> Result<Response<ApiBody>, ApiError> {
    let store = &shared.store;
    match verb {
        "get" => Ok(value_response(200, &store.get(&t)?)),
        "list" => {
            let o = list_opts(q, &t)?;
            if let Some(m) = &o.rv_match {
                if !matches!(m.as_str(), "Exact" | "NotOlderThan") {
                    return Err(ApiError::bad_request(format!(
                        "resourceVersionMatch: unsupported value {m:?}"
                    )));
                }
                if o.resource_version.as_deref().is_none_or(str::is_empty) {
                    return Err(ApiError::bad_request(
                        "resourceVersionMatch is forbidden unless resourceVersion is provided",
                    ));
                }
                if o.continue_token.is_some() {
                    return Err(ApiError::bad_request(
                        "resourceVersionMatch is forbidden when continue is provided",
                    ));
                }
            }
            Ok(json_response(200, store.list(&t, &o)?))
        }
        "watch" => start_watch(shared, q, t, bookmark_interval),
        "create" => {
            let o = write_opts(q, &req);
            let body = parse_json(&read_body(req).await?)?;
            let out = store.create(&t, body, &o)?;
            Ok(value_response(201, &out))
        }
        "update" => {
            let o = write_opts(q, &req);
            let body = parse_json(&read_body(req).await?)?;
            Ok(value_response(200, &store.update(&t, body, &o)?))
        }
        "patch" => {
            let ct = req
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let kind = match ct.as_str() {
                "application/merge-patch+json" => PatchType::Merge,
                "application/strategic-merge-patch+json" if t.def.builtin => {
                    PatchType::StrategicMerge
                }
                "application/json-patch+json" => PatchType::Json,
                "application/apply-patch+yaml" | "application/apply-patch+cbor" => PatchType::Apply,
                other => return Err(ApiError::unsupported_media_type(other)),
            };
            let mut o = write_opts(q, &req);
            if kind == PatchType::Apply {
                o.manager = q.get("fieldManager").unwrap_or("").to_string();
            } else if q.get("force").is_some() {
                return Err(ApiError::bad_request(
                    "force: Forbidden: may not be specified for non-apply patch",
                ));
            }
            let body = read_body(req).await?;
            let (out, created) = store.patch(&t, kind, &body, &o)?;
            Ok(value_response(if created { 201 } else { 200 }, &out))
        }
        "delete" => {
            let dry_run = q.get("dryRun") == Some("All");
            let body = read_body(req).await?;
            let opts: Value = if body.is_empty() {
                json!({})
            } else {
                parse_json(&body)?
            };
            let pre = opts.get("preconditions");
            let uid = pre.and_then(|p| p.get("uid")).and_then(Value::as_str);
            let rv = pre
                .and_then(|p| p.get("resourceVersion"))
                .and_then(Value::as_str);
            match store.delete(&t, uid, rv, dry_run)? {
                Deleted::Object(v) => Ok(value_response(200, &v)),
                Deleted::Status(s) => Ok(value_response(200, &s)),
            }
        }
        "deletecollection" => {
            let o = list_opts(q, &t)?;
            Ok(value_response(200, &store.delete_collection(&t, &o)?))
        }
        _ => Err(ApiError::method_not_allowed(verb)),
    }
}

fn watch_line(kind: &str, obj: &impl serde::Serialize) -> Bytes {
    let mut v = format!("{{\"type\":\"{kind}\",\"object\":").into_bytes();
    if serde_json::to_writer(&mut v, obj).is_err() {
        v.extend_from_slice(b"{}");
    }
    v.extend_from_slice(b"}\n");
    Bytes::from(v)
}

fn view<'a>(obj: &'a Value, def: &'a ResourceDef, api_version: &'a str) -> ObjectView<'a> {
    ObjectView {
        obj,
        def,
        api_version,
        strip_type: false,
    }
}

fn start_watch(
    shared: &Arc<Shared>,
    q: &Query,
    t: Target,
    bookmark_interval: Duration,
) -> Result<Response<ApiBody>, ApiError> {
    let mut fields =
        FieldSelector::parse(q.get("fieldSelector").unwrap_or(""), t.def.field_labels)?;
    if let Some(n) = &t.name {
        // The deprecated `GET .../services/web?watch=1` form watches one object.
        fields = FieldSelector::parse(&format!("metadata.name={n}"), &[])?;
    }
    let send_initial_events = q.flag("sendInitialEvents");
    let bookmarks = q.flag("allowWatchBookmarks");
    if send_initial_events {
        if q.get("resourceVersionMatch") != Some("NotOlderThan") {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "ListOptions",
                "",
                "resourceVersionMatch",
                "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if !bookmarks {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "ListOptions",
                "",
                "allowWatchBookmarks",
                "Required value: allowWatchBookmarks must be set to true when sendInitialEvents is set",
            ));
        }
    }
    let opts = WatchOpts {
        labels: LabelSelector::parse(q.get("labelSelector").unwrap_or(""))?,
        fields,
        resource_version: q.get("resourceVersion").map(str::to_string),
        send_initial_events,
        no_initial_events: q.get("sendInitialEvents") == Some("false"),
    };
    let timeout = match q.get("timeoutSeconds") {
        Some(s) => Duration::from_secs(
            s.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {s:?}")))?,
        ),
        None => DEFAULT_WATCH_TIMEOUT,
    };
    // Subscribe before reading the start position so that no commit is missed.
    let rv_rx = shared.store.subscribe();
    let start = shared.store.watch_start(&t, &opts);
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let stream = WatchStream {
        shared: shared.clone(),
        t,
        opts,
        bookmarks,
        bookmark_interval,
        timeout,
        tx,
    };
    tokio::spawn(stream.run(start, rv_rx));
    let mut r = Response::new(ApiBody::Stream(rx));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

struct WatchStream {
    shared: Arc<Shared>,
    t: Target,
    opts: WatchOpts,
    bookmarks: bool,
    bookmark_interval: Duration,
    timeout: Duration,
    tx: mpsc::Sender<Bytes>,
}

impl WatchStream {
    fn bookmark(&self, rv: u64, initial_end: bool) -> Value {
        let mut md = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({"kind": self.t.def.kind, "apiVersion": self.t.def.api_version(&self.t.version), "metadata": md})
    }

    /// The event a watcher with this target and selectors sees for a change, if any:
    /// objects entering or leaving the selection appear as ADDED or DELETED.
    fn translate<'e>(&self, ev: &'e crate::store::Event) -> Option<(EventType, &'e Value)> {
        if ev.res != self.t.def.storage {
            return None;
        }
        if self.t.namespace.as_ref().is_some_and(|ns| *ns != ev.key.0) {
            return None;
        }
        let m = |v: &Value| self.opts.labels.matches(v) && self.opts.fields.matches(v);
        let now = m(&ev.object);
        match ev.kind {
            EventType::Added | EventType::Deleted => now.then_some((ev.kind, &*ev.object)),
            EventType::Modified => {
                let before = ev.prev.as_deref().is_some_and(m);
                match (before, now) {
                    (true, true) => Some((EventType::Modified, &ev.object)),
                    (false, true) => Some((EventType::Added, &ev.object)),
                    (true, false) => Some((EventType::Deleted, &ev.object)),
                    (false, false) => None,
                }
            }
        }
    }

    async fn send(&self, line: Bytes) -> bool {
        self.tx.send(line).await.is_ok()
    }

    async fn run(
        self,
        start: Result<crate::store::WatchStart, ApiError>,
        mut rv_rx: watch::Receiver<u64>,
    ) {
        let mut drop_rx = self.shared.watch_gen.subscribe();
        drop_rx.borrow_and_update();
        let api_version = self.t.def.api_version(&self.t.version);
        let start = match start {
            Ok(s) => s,
            Err(e) => {
                // kube-apiserver answers a watch from a compacted resourceVersion with
                // 200 and a single ERROR event carrying the 410 Status.
                self.send(watch_line("ERROR", &e.to_status())).await;
                return;
            }
        };
        for obj in &start.initial {
            if !self
                .send(watch_line("ADDED", &view(obj, &self.t.def, &api_version)))
                .await
            {
                return;
            }
        }
        let mut last_rv = start.from_rv;
        if self.opts.send_initial_events {
            let bm = self.bookmark(last_rv, true);
            if !self.send(watch_line("BOOKMARK", &bm)).await {
                return;
            }
        }
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        let mut ticker =
            tokio::time::interval(self.bookmark_interval.max(Duration::from_millis(10)));
        ticker.tick().await;
        loop {
            rv_rx.borrow_and_update();
            loop {
                let batch = match self.shared.store.events_since(last_rv, 1024) {
                    Ok(b) => b,
                    Err(e) => {
                        // Fell behind the history window (or it was compacted).
                        self.send(watch_line("ERROR", &e.to_status())).await;
                        return;
                    }
                };
                if batch.is_empty() {
                    break;
                }
                for ev in &batch {
                    last_rv = ev.rv;
                    if let Some((kind, obj)) = self.translate(ev) {
                        if !self
                            .send(watch_line(
                                kind.as_str(),
                                &view(obj, &self.t.def, &api_version),
                            ))
                            .await
                        {
                            return;
                        }
                    }
                }
            }
            tokio::select! {
                r = rv_rx.changed() => { if r.is_err() { return; } }
                _ = ticker.tick() => {
                    if self.bookmarks {
                        let bm = self.bookmark(last_rv, false);
                        if !self.send(watch_line("BOOKMARK", &bm)).await {
                            return;
                        }
                    }
                }
                _ = &mut deadline => return,
                _ = drop_rx.changed() => return,
                _ = self.tx.closed() => return,
            }
        }
    }
}
