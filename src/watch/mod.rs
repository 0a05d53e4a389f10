//! The Kubernetes source: a remote client from a kubeconfig, watches of
//! Services, EndpointSlices, Nodes and Namespaces feeding the engine, the
//! status and Event writer, and the leader lease.
//!
//! Relists (a 410 Gone, a restarted watch) are absorbed here: objects not
//! seen again by the end of the relist are reported gone, the rest are
//! re-sent unchanged, so a relist by itself changes no allocation.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node as KNode, Service as KService};
use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;
use kube::api::{ListParams, PostParams};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::KubernetesConfig;
use crate::engine::Input;
use crate::model::{Origin, ServiceKey};

pub mod convert;
pub mod events;
pub mod lease;
mod node_events;
pub mod openelb;
pub mod status;

pub use convert::ClaimRule;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    /// A call that failed: refused by the API server (`error` is then
    /// `kube::Error::Api` with the status code and reason) or that did not
    /// reach it (connection, TLS).
    ///
    /// `error` is kept for callers to match on but is not the `source()`:
    /// the message already walks its chain ([`explain`]), and main prints
    /// errors with their chain, which would say it twice.
    #[error("cannot {verb} {resource}: {}{hint}", explain(.error))]
    Api {
        verb: &'static str,
        resource: String,
        error: kube::Error,
        /// What to do, appended to the message (may be empty).
        hint: &'static str,
    },
    /// RBAC does not allow a write pier makes: a SelfSubjectAccessReview
    /// answered `allowed: false`, with the authorizer's `reason` if any.
    #[error("cannot {verb} {resource}: forbidden by RBAC (the API server's answer to a SelfSubjectAccessReview{}); see packaging/rbac.yaml", .reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Denied {
        verb: &'static str,
        resource: String,
        reason: Option<String>,
    },
}

impl WatchError {
    /// Can waiting heal it? True when the API server could not be reached
    /// (connection refused or reset, a timeout, no route) or answered 5xx
    /// or 429; false for what needs an operator: a kubeconfig that does not
    /// parse, a certificate that does not match, credentials rejected, RBAC
    /// refusing a verb, a resource that does not exist (docs/ha.md).
    pub fn is_transient(&self) -> bool {
        match self {
            WatchError::Kubeconfig { .. } | WatchError::Denied { .. } => false,
            WatchError::Api { error, .. } => transient(error),
        }
    }

    /// The API server's answer (HTTP status code, reason, message) when it
    /// refused a call.
    pub fn api_status(&self) -> Option<&kube::core::Status> {
        match self {
            WatchError::Api {
                error: kube::Error::Api(status),
                ..
            } => Some(status),
            _ => None,
        }
    }
}

/// See [`WatchError::is_transient`].
fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429,
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            // Walk the chain: a TLS failure (a CA that does not match) hides
            // under the connection error and is not transient.
            let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
            let mut text = e.to_string();
            while let Some(s) = src {
                if let Some(io) = s.downcast_ref::<std::io::Error>() {
                    use std::io::ErrorKind as K;
                    if matches!(
                        io.kind(),
                        K::ConnectionRefused
                            | K::ConnectionReset
                            | K::ConnectionAborted
                            | K::TimedOut
                            | K::NotConnected
                            | K::BrokenPipe
                            | K::UnexpectedEof
                            | K::HostUnreachable
                            | K::NetworkUnreachable
                            | K::AddrNotAvailable
                    ) {
                        return true;
                    }
                }
                text.push_str(": ");
                text.push_str(&s.to_string());
                src = s.source();
            }
            let text = text.to_ascii_lowercase();
            !(text.contains("certificate") || text.contains("tls") || text.contains("handshake"))
        }
        _ => false,
    }
}

/// Make the client from the configured kubeconfig (and context).
pub async fn connect(cfg: &KubernetesConfig) -> Result<Client, WatchError> {
    let path = cfg.kubeconfig.display().to_string();
    let err = |message: String| WatchError::Kubeconfig {
        path: path.clone(),
        message,
    };
    let kc =
        kube::config::Kubeconfig::read_from(&cfg.kubeconfig).map_err(|e| err(e.to_string()))?;
    let options = kube::config::KubeConfigOptions {
        context: cfg.context.clone(),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kc, &options)
        .await
        .map_err(|e| err(e.to_string()))?;
    info!(server = %config.cluster_url, "Kubernetes API configured");
    Client::try_from(config).map_err(|e| err(e.to_string()))
}

/// Explain a failed call in one line an operator can act on.
pub fn explain(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 403 => format!(
            "forbidden by RBAC ({}); apply packaging/rbac.yaml and bind it to pier's identity",
            s.message
        ),
        kube::Error::Api(s) if s.code == 401 => format!(
            "unauthorized ({}): the kubeconfig's credentials were rejected",
            s.message
        ),
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => {
            // Walk the source chain: TLS and connection errors hide there.
            let mut msg = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            msg
        }
    }
}

/// One list of each resource pier needs, so a wrong URL, a bad certificate
/// or a missing RBAC verb stops pier at start with a message naming the
/// resource and verb, instead of a watch retrying in the background.
pub async fn preflight(client: &Client, cfg: &KubernetesConfig) -> Result<(), WatchError> {
    let lp = ListParams::default().limit(1);
    async fn list<K>(api: Api<K>, lp: &ListParams, resource: &str) -> Result<(), WatchError>
    where
        K: kube::Resource + Clone + DeserializeOwned + Debug,
    {
        api.list(lp)
            .await
            .map(|_| ())
            .map_err(|error| WatchError::Api {
                verb: "list",
                resource: resource.to_string(),
                error,
                hint: "",
            })
    }
    list(Api::<KService>::all(client.clone()), &lp, "services").await?;
    list(
        Api::<KSlice>::all(client.clone()),
        &lp,
        "endpointslices.discovery.k8s.io",
    )
    .await?;
    list(Api::<KNode>::all(client.clone()), &lp, "nodes").await?;
    list(Api::<Namespace>::all(client.clone()), &lp, "namespaces").await?;
    if cfg.crds {
        for (kind, plural) in openelb::KINDS {
            let api: Api<kube::api::DynamicObject> =
                Api::all_with(client.clone(), &openelb::api_resource(kind, plural));
            if let Err(error) = api.list(&lp).await {
                let hint = match &error {
                    kube::Error::Api(s) if s.code == 404 => {
                        " (kubernetes.crds = true needs the CRDs: kubectl apply -f packaging/crds/)"
                    }
                    _ => "",
                };
                return Err(WatchError::Api {
                    verb: "list",
                    resource: format!("{plural}.{}", openelb::GROUP),
                    error,
                    hint,
                });
            }
        }
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), &cfg.lease_namespace);
    let lease_exists = match leases.get_opt(&cfg.lease_name).await {
        Ok(l) => l.is_some(),
        Err(error) => {
            return Err(WatchError::Api {
                verb: "get",
                resource: format!(
                    "leases.coordination.k8s.io {}/{}",
                    cfg.lease_namespace, cfg.lease_name
                ),
                error,
                hint: "",
            })
        }
    };
    can_write(client, cfg, lease_exists).await
}

/// One write pier makes, as RBAC names it.
struct Write {
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    subresource: &'static str,
    namespace: Option<String>,
    name: Option<String>,
}

impl Write {
    /// `services/status`, `events.events.k8s.io`, `leases.coordination.k8s.io pier-system/pier`.
    fn describe(&self) -> String {
        let mut s = match self.group {
            "" => self.resource.to_string(),
            g => format!("{}.{g}", self.resource),
        };
        if !self.subresource.is_empty() {
            s = format!("{s}/{}", self.subresource);
        }
        match (&self.namespace, &self.name) {
            (Some(ns), Some(n)) => format!("{s} {ns}/{n}"),
            (Some(ns), None) => format!("{s} in {ns}"),
            _ => s,
        }
    }
}

/// Ask the API server, as `kubectl auth can-i` does (SelfSubjectAccessReview),
/// whether pier may make each of its writes, so a missing verb stops pier at
/// start instead of showing at the first write. An API server that will not
/// answer (the review API refused or not served) is not a reason to stop:
/// pier says so and goes on.
async fn can_write(
    client: &Client,
    cfg: &KubernetesConfig,
    lease_exists: bool,
) -> Result<(), WatchError> {
    let w = |verb, group, resource, subresource| Write {
        verb,
        group,
        resource,
        subresource,
        namespace: None,
        name: None,
    };
    let mut writes = vec![
        w("patch", "", "services", "status"),
        w("create", "events.k8s.io", "events", ""),
        w("patch", "events.k8s.io", "events", ""),
        Write {
            namespace: Some(cfg.lease_namespace.clone()),
            name: Some(cfg.lease_name.clone()),
            ..w("update", "coordination.k8s.io", "leases", "")
        },
    ];
    if !lease_exists {
        writes.push(Write {
            namespace: Some(cfg.lease_namespace.clone()),
            ..w("create", "coordination.k8s.io", "leases", "")
        });
    }
    if cfg.crds {
        for (_, plural) in openelb::KINDS {
            writes.push(w("patch", openelb::GROUP, plural, "status"));
        }
    }
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    for write in &writes {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(write.verb.into()),
                    group: Some(write.group.into()),
                    resource: Some(write.resource.into()),
                    subresource: Some(write.subresource.into()),
                    namespace: write.namespace.clone(),
                    name: write.name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        match reviews.create(&PostParams::default(), &review).await {
            Ok(r) => {
                let status = r.status.unwrap_or_default();
                if !status.allowed {
                    return Err(WatchError::Denied {
                        verb: write.verb,
                        resource: write.describe(),
                        reason: status.reason.filter(|r| !r.is_empty()),
                    });
                }
            }
            Err(e) => {
                warn!(error = %explain(&e), "cannot ask the API server which writes pier may make (SelfSubjectAccessReview); a missing RBAC verb will show at the first write");
                return Ok(());
            }
        }
    }
    Ok(())
}

/// What the source sends for one object: its key, and the input for the
/// engine, or `None` when the object exists but is not pier's (then it is
/// reported gone if it was pier's before).
type Classified<Key> = Option<(Key, Option<Input>)>;

/// Feed one watch stream into the engine, absorbing relists. `done` fires
/// after the first complete list has been sent.
async fn pump<K, Key, S>(
    resource: &'static str,
    stream: S,
    classify: impl Fn(&K) -> Classified<Key>,
    gone: impl Fn(Key) -> Input,
    tx: mpsc::Sender<Input>,
    mut done: Option<oneshot::Sender<()>>,
) where
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
    Key: Ord + Clone + Debug,
{
    let mut known: BTreeSet<Key> = BTreeSet::new();
    let mut relist: Option<BTreeSet<Key>> = None;
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        let mut out: Vec<Input> = Vec::new();
        let upsert = |obj: &K, known: &mut BTreeSet<Key>, seen: Option<&mut BTreeSet<Key>>| {
            let Some((key, input)) = classify(obj) else {
                return Vec::new();
            };
            match input {
                Some(input) => {
                    if let Some(seen) = seen {
                        seen.insert(key.clone());
                    }
                    known.insert(key);
                    vec![input]
                }
                None if known.remove(&key) => vec![gone(key)],
                None => Vec::new(),
            }
        };
        match ev {
            Ok(Event::Init) => {
                debug!(resource, "listing");
                relist = Some(BTreeSet::new());
            }
            Ok(Event::InitApply(obj)) => {
                out = upsert(&obj, &mut known, relist.as_mut());
            }
            Ok(Event::Apply(obj)) => {
                out = upsert(&obj, &mut known, None);
            }
            Ok(Event::Delete(obj)) => {
                if let Some((key, _)) = classify(&obj) {
                    if known.remove(&key) {
                        out.push(gone(key));
                    }
                }
            }
            Ok(Event::InitDone) => {
                let seen = relist.take().unwrap_or_default();
                let stale: Vec<Key> = known.difference(&seen).cloned().collect();
                for key in stale {
                    known.remove(&key);
                    out.push(gone(key));
                }
                debug!(resource, objects = known.len(), "list complete");
                if let Some(d) = done.take() {
                    let _ = d.send(());
                }
            }
            Err(e) => {
                warn!(resource, error = %e, "watch failed; retrying with backoff (announcements unchanged)");
            }
        }
        for input in out {
            if tx.send(input).await.is_err() {
                return;
            }
        }
    }
}

fn watch_config() -> watcher::Config {
    watcher::Config::default()
}

/// Start the four watches; `Synced(Kubernetes)` is sent once each has
/// delivered its first complete list (and `gate` has fired, if given: the
/// pools of Eip objects must be with the engine before the first allocation).
pub fn spawn(
    client: Client,
    claim: ClaimRule,
    tx: mpsc::Sender<Input>,
    gate: Option<oneshot::Receiver<()>>,
) -> Vec<JoinHandle<()>> {
    let claim = Arc::new(claim);
    let mut handles = Vec::new();
    let mut dones = Vec::new();

    let (d, r) = oneshot::channel();
    dones.push(r);
    let rule = claim.clone();
    let stream = watcher(Api::<KService>::all(client.clone()), watch_config()).default_backoff();
    handles.push(tokio::spawn(pump(
        "services",
        stream,
        move |s: &KService| {
            let key = convert::service_key(s)?;
            let input = rule
                .claims(s)
                .then(|| convert::service(s).map(Input::Service))
                .flatten();
            Some((key, input))
        },
        Input::ServiceGone,
        tx.clone(),
        Some(d),
    )));

    let (d, r) = oneshot::channel();
    dones.push(r);
    let stream = watcher(Api::<KSlice>::all(client.clone()), watch_config()).default_backoff();
    handles.push(tokio::spawn(pump(
        "endpointslices",
        stream,
        |s: &KSlice| {
            let sl = convert::slice(s)?;
            Some((
                (sl.service.clone(), sl.name.clone()),
                Some(Input::Slice(sl)),
            ))
        },
        |(service, name): (ServiceKey, String)| Input::SliceGone { service, name },
        tx.clone(),
        Some(d),
    )));

    let (d, r) = oneshot::channel();
    dones.push(r);
    let stream = watcher(Api::<KNode>::all(client.clone()), watch_config()).default_backoff();
    let (node_problems, rx) = mpsc::unbounded_channel();
    handles.push(tokio::spawn(node_events::run(client.clone(), rx)));
    handles.push(tokio::spawn(pump(
        "nodes",
        stream,
        move |n: &KNode| {
            let (node, problems) = convert::node_with_next_hop(n)?;
            for p in problems {
                let _ = node_problems.send(p);
            }
            Some((node.name.clone(), Some(Input::Node(node))))
        },
        Input::NodeGone,
        tx.clone(),
        Some(d),
    )));

    let (d, r) = oneshot::channel();
    dones.push(r);
    let stream = watcher(Api::<Namespace>::all(client), watch_config()).default_backoff();
    handles.push(tokio::spawn(pump(
        "namespaces",
        stream,
        |ns: &Namespace| {
            let (name, labels) = convert::namespace(ns)?;
            Some((name.clone(), Some(Input::Namespace { name, labels })))
        },
        Input::NamespaceGone,
        tx.clone(),
        Some(d),
    )));

    dones.extend(gate);
    handles.push(tokio::spawn(async move {
        for r in dones {
            if r.await.is_err() {
                return;
            }
        }
        info!("initial list of Services, EndpointSlices, Nodes and Namespaces complete");
        let _ = tx.send(Input::Synced(Origin::Kubernetes)).await;
    }));
    handles
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_call_keeps_the_api_status_and_says_what_to_do() {
        let status =
            kube::core::Status::failure("services is forbidden", "Forbidden").with_code(403);
        let e = WatchError::Api {
            verb: "list",
            resource: "services".into(),
            error: kube::Error::Api(status.boxed()),
            hint: "",
        };
        assert!(matches!(e.api_status(), Some(s) if s.code == 403 && s.reason == "Forbidden"));
        assert_eq!(
            e.to_string(),
            "cannot list services: forbidden by RBAC (services is forbidden); apply packaging/rbac.yaml and bind it to pier's identity"
        );
    }

    #[test]
    fn a_denied_write_names_verb_resource_and_reason() {
        let e = WatchError::Denied {
            verb: "patch",
            resource: "services/status".into(),
            reason: Some("no RBAC policy matched".into()),
        };
        assert_eq!(e.api_status(), None);
        assert_eq!(
            e.to_string(),
            "cannot patch services/status: forbidden by RBAC (the API server's answer to a SelfSubjectAccessReview: no RBAC policy matched); see packaging/rbac.yaml"
        );
        let e = WatchError::Denied {
            verb: "patch",
            resource: "services/status".into(),
            reason: None,
        };
        assert!(
            e.to_string().contains("SelfSubjectAccessReview); see"),
            "{e}"
        );
    }
}
