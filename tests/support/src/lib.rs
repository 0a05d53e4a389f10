//! # pier-testapi: an in-process stand-in for kube-apiserver
//!
//! An HTTP (or HTTPS) server on 127.0.0.1 speaking the Kubernetes REST and watch
//! protocol for the resources pier touches, close enough that `kube` clients and
//! `kube-runtime` watchers cannot tell it from kube-apiserver for these calls.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use pier_testapi::{CustomResource, TestApiServer};
//! use serde_json::json;
//!
//! let api = TestApiServer::start().await?;
//! api.kubeconfig("/tmp/kubeconfig")?;            // or use api.url()
//! api.create(json!({"apiVersion": "v1", "kind": "Service",
//!     "metadata": {"name": "web", "namespace": "default"},
//!     "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}))?;
//! api.register_crd(CustomResource::new("network.kubesphere.io", &["v1alpha2", "v1alpha1"], "Eip", "eips").cluster_scoped());
//! // ... run pier against it ...
//! let status_writes = api.count_requests(|r| r.method == "PATCH" && r.path.ends_with("/web/status"));
//! assert_eq!(status_writes, 1);
//! # Ok(()) }
//! ```
//!
//! ## Resources
//! core/v1 `namespaces` (+status), `nodes` (+status), `services` (+status), `events`,
//! `configmaps`; `events.k8s.io/v1` `events` (the same objects as core Events, with
//! kube-apiserver's field mapping);
//! `discovery.k8s.io/v1` `endpointslices`; `coordination.k8s.io/v1` `leases`; and custom
//! resources registered at run time with [`TestApiServer::register_crd`] (namespaced or
//! cluster-scoped, optional status subresource, several served versions sharing one storage
//! with conversion strategy `None`; [`CustomResource::openelb`] gives OpenELB's Eip,
//! BgpConf and BgpPeer). Discovery: `/version`, `/api`, `/api/v1`, `/apis`,
//! `/apis/{group}`, `/apis/{group}/{version}`; `/healthz`, `/livez`, `/readyz`.
//!
//! ## Protocol behaviour
//! - One global resourceVersion (decimal strings), +1 per committed change; writes that
//!   change nothing keep the resourceVersion and emit no event, as kube-apiserver does.
//! - `uid`, `creationTimestamp`, `generation` (custom resources: bumped on any change
//!   outside metadata and status; built-in kinds have none, as in kube-apiserver),
//!   `managedFields` (Update entries for every write, Apply entries for server-side apply).
//! - list: `labelSelector` (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`, `>`, `<`),
//!   `fieldSelector` (`metadata.name`, `metadata.namespace` and the kind's own field
//!   labels, e.g. Event `involvedObject.name`), `limit`/`continue` (pages are consistent
//!   snapshots; an expired token gets 410 Expired), `resourceVersion` with
//!   `resourceVersionMatch=Exact|NotOlderThan`.
//! - watch: `resourceVersion` (unset/`0`: synthetic ADDED for current objects first),
//!   `allowWatchBookmarks` (BOOKMARK every [`ServerOptions::bookmark_interval`]),
//!   `sendInitialEvents=true` (ADDED events, then a BOOKMARK annotated
//!   `k8s.io/initial-events-end`), `timeoutSeconds`, selectors (objects entering or leaving
//!   the selection are ADDED/DELETED). A resourceVersion older than the event history
//!   gets one `ERROR` event with a 410 `Expired` Status.
//! - create 201 (409 AlreadyExists, 404 if the namespace is missing, `generateName`);
//!   update 409 Conflict on a stale `metadata.resourceVersion`, unconditional without one;
//!   `/status` writes change only `.status`, main-resource writes keep the stored status.
//! - PATCH: `application/merge-patch+json` (RFC 7386), `application/json-patch+json`
//!   (RFC 6902 including `test`; a failed op is 422), `application/strategic-merge-patch+json`
//!   (served as a merge patch: lists are replaced, not merged by key), and
//!   `application/apply-patch+yaml` (server-side apply; JSON body, `fieldManager` required,
//!   `force=true`, creates when absent; lists are atomic and conflicts are reported per
//!   leaf field against other managers' differing values).
//! - DELETE with `preconditions` (uid, resourceVersion → 409); finalizers hold the object
//!   with a `deletionTimestamp` until an update clears them; built-in kinds answer with a
//!   success Status, custom resources with the object; `deletecollection`.
//! - Errors are `Status` objects shaped as kube-apiserver's (see [`ApiError`]).
//! - Services get kube-apiserver's defaults: clusterIP(s) from 10.96.0.0/12 (or
//!   fd00:10:96::/112), ipFamilies/ipFamilyPolicy, port protocol/targetPort, nodePorts
//!   for NodePort/LoadBalancer, traffic policies, `status.loadBalancer: {}`.
//!
//! ## Test control (no HTTP)
//! [`TestApiServer::create`], [`update`](TestApiServer::update),
//! [`update_status`](TestApiServer::update_status), [`merge_patch`](TestApiServer::merge_patch),
//! [`delete`](TestApiServer::delete), [`get`](TestApiServer::get),
//! [`list`](TestApiServer::list) take and return `serde_json::Value` and go through the same
//! code as HTTP requests (events, resourceVersions, defaults).
//!
//! Faults: [`restart`](TestApiServer::restart) (drop every connection and watch, keep store
//! and port), [`drop_watches`](TestApiServer::drop_watches),
//! [`set_available`](TestApiServer::set_available) (outage),
//! [`compact`](TestApiServer::compact) (old resourceVersions → 410),
//! [`set_history_window`](TestApiServer::set_history_window),
//! [`deny`](TestApiServer::deny) (403 with RBAC wording),
//! [`fail_next`](TestApiServer::fail_next) (429/500/503/504 for the next n requests),
//! [`set_latency`](TestApiServer::set_latency).
//! Costs: [`set_costs`](TestApiServer::set_costs) charges reads through etcd and writes a
//! [`CostModel`] (one serial pipe, as etcd commits one entry after another).
//! Request log: [`requests`](TestApiServer::requests), [`count_requests`](TestApiServer::count_requests);
//! each record's [`ReadKind`] says whether kube-apiserver would have served the read from
//! etcd (quorum, exact) or from its watch cache (`resourceVersion=0`, not older than N).
//!
//! TLS and authentication: [`ServerOptions`] `tls` (generated CA, server certificate with
//! IP SAN 127.0.0.1), `bearer_token`, `client_cert_auth`; [`TestApiServer::kubeconfig`]
//! writes a matching kubeconfig. The server uses rustls with the `ring` provider
//! explicitly, so it needs no process-wide default provider.

mod error;
mod patch;
mod resource;
mod selector;
mod server;
mod store;
mod text;

pub use error::ApiError;
pub use resource::{CustomResource, ResourceDef};
pub use server::{CostModel, ReadKind, RequestRecord, ServerError, ServerOptions, TestApiServer};
pub use store::EventType;
