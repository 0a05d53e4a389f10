//! The resources the server knows: built-in kinds pier touches plus custom resources
//! registered at run time, and the discovery documents (`/api`, `/apis`, APIResourceList)
//! that describe them.

use serde_json::{json, Value};
use std::sync::Arc;

/// What the apiserver does with `status` in a create request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatusOnCreate {
    /// Dropped (Services, custom resources with a status subresource).
    Reset,
    /// Kept (Nodes register with their status; kinds without a status subresource).
    Keep,
}

/// One resource (all served versions of it share one storage).
#[derive(Clone, Debug)]
pub struct ResourceDef {
    /// API group, `""` for the core group.
    pub group: String,
    /// Served versions; the first is the storage and preferred version.
    pub versions: Vec<String>,
    /// Kind, e.g. `Service`.
    pub kind: String,
    /// Plural resource name, e.g. `services`.
    pub plural: String,
    /// Singular name, e.g. `service`.
    pub singular: String,
    /// Short names in discovery.
    pub short_names: Vec<String>,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Whether `/status` is a subresource (status then changes only through it).
    pub status_subresource: bool,
    /// Built-in kinds are served from typed storage: list items carry no
    /// apiVersion/kind and DELETE answers with a `Status`; custom resources keep
    /// apiVersion/kind in lists and DELETE returns the object.
    pub(crate) builtin: bool,
    /// `metadata.generation` maintained (custom resources; built-ins pier touches do not).
    pub(crate) generation: bool,
    pub(crate) status_on_create: StatusOnCreate,
    /// Field-selector keys supported besides metadata.name/metadata.namespace.
    pub(crate) field_labels: &'static [&'static str],
    /// Where objects are stored: (group, plural). events.k8s.io Events share core Events'.
    pub(crate) storage: (String, String),
    /// How stored objects map to this resource's served form.
    pub(crate) conversion: Conversion,
}

/// Field renames between the stored form and a served form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Conversion {
    /// Served as stored (apart from apiVersion).
    None,
    /// events.k8s.io/v1 Event over core/v1 Event storage (kube-apiserver's conversion,
    /// `pkg/apis/events/v1/conversion.go`).
    EventsV1,
}

/// (core/v1 field, events.k8s.io/v1 field).
const EVENT_RENAMES: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

fn rename(obj: &mut Value, pairs: &[(&str, &str)], forward: bool) {
    if let Value::Object(m) = obj {
        for (a, b) in pairs {
            let (from, to) = if forward { (a, b) } else { (b, a) };
            if let Some(v) = m.remove(*from) {
                m.insert(to.to_string(), v);
            }
        }
    }
}

/// A custom resource to register with [`crate::TestApiServer::register_crd`]; all of
/// `versions` share one storage (conversion strategy `None`: only `apiVersion` changes).
#[derive(Clone, Debug)]
pub struct CustomResource {
    /// API group, e.g. `network.kubesphere.io`.
    pub group: String,
    /// Served versions; the first is the storage version.
    pub versions: Vec<String>,
    /// Kind, e.g. `Eip`.
    pub kind: String,
    /// Plural, e.g. `eips`.
    pub plural: String,
    /// Namespaced (true) or cluster-scoped (false).
    pub namespaced: bool,
    /// Serve a `/status` subresource.
    pub status_subresource: bool,
}

impl CustomResource {
    /// A namespaced resource with a status subresource; adjust the fields for others.
    pub fn new(group: &str, versions: &[&str], kind: &str, plural: &str) -> Self {
        CustomResource {
            group: group.into(),
            versions: versions.iter().map(|v| v.to_string()).collect(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced: true,
            status_subresource: true,
        }
    }

    /// OpenELB's CRDs as pier's annotation compatibility needs them:
    /// `network.kubesphere.io` `Eip`, `BgpConf`, `BgpPeer`, cluster-scoped, served at
    /// v1alpha2 (storage) and v1alpha1, with a status subresource.
    pub fn openelb() -> Vec<CustomResource> {
        [
            ("Eip", "eips"),
            ("BgpConf", "bgpconfs"),
            ("BgpPeer", "bgppeers"),
        ]
        .into_iter()
        .map(|(kind, plural)| {
            CustomResource::new(
                "network.kubesphere.io",
                &["v1alpha2", "v1alpha1"],
                kind,
                plural,
            )
            .cluster_scoped()
        })
        .collect()
    }

    /// Make it cluster-scoped.
    pub fn cluster_scoped(mut self) -> Self {
        self.namespaced = false;
        self
    }

    /// Serve no status subresource.
    pub fn without_status(mut self) -> Self {
        self.status_subresource = false;
        self
    }
}

impl ResourceDef {
    /// `group/version`, or `version` for the core group.
    pub(crate) fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    /// apiVersion of the stored form.
    pub(crate) fn storage_api_version(&self) -> String {
        match self.conversion {
            Conversion::EventsV1 => "v1".into(),
            Conversion::None => self.api_version(self.storage_version()),
        }
    }

    /// The served form of a stored object, when it differs by more than apiVersion.
    pub(crate) fn to_served(&self, stored: &Value) -> Option<Value> {
        match self.conversion {
            Conversion::None => None,
            Conversion::EventsV1 => {
                let mut v = stored.clone();
                rename(&mut v, EVENT_RENAMES, true);
                Some(v)
            }
        }
    }

    /// Converts a served-form object to the stored form in place.
    pub(crate) fn to_stored(&self, obj: &mut Value) {
        if self.conversion == Conversion::EventsV1 {
            rename(obj, EVENT_RENAMES, false);
        }
    }

    pub(crate) fn storage_version(&self) -> &str {
        self.versions.first().map(String::as_str).unwrap_or("v1")
    }

    fn from_custom(c: CustomResource) -> Self {
        ResourceDef {
            storage: (c.group.clone(), c.plural.clone()),
            singular: c.kind.to_lowercase(),
            group: c.group,
            versions: c.versions,
            kind: c.kind,
            plural: c.plural,
            short_names: vec![],
            namespaced: c.namespaced,
            status_subresource: c.status_subresource,
            builtin: false,
            generation: true,
            status_on_create: if c.status_subresource {
                StatusOnCreate::Reset
            } else {
                StatusOnCreate::Keep
            },
            field_labels: &[],
            conversion: Conversion::None,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    short: &[&str],
    namespaced: bool,
    status: StatusOnCreate,
    has_status: bool,
    field_labels: &'static [&'static str],
) -> ResourceDef {
    ResourceDef {
        group: group.into(),
        versions: vec![version.into()],
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        short_names: short.iter().map(|s| s.to_string()).collect(),
        namespaced,
        status_subresource: has_status,
        builtin: true,
        generation: false,
        status_on_create: status,
        field_labels,
        storage: (group.into(), plural.into()),
        conversion: Conversion::None,
    }
}

/// Field labels kube-apiserver registers for core Events (`pkg/registry/core/event`).
const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];
/// events.k8s.io/v1 field labels (mapped onto the stored core form by the selector).
const EVENTS_V1_FIELDS: &[&str] = &[
    "regarding.kind",
    "regarding.namespace",
    "regarding.name",
    "regarding.uid",
    "regarding.apiVersion",
    "regarding.resourceVersion",
    "regarding.fieldPath",
    "reason",
    "reportingController",
    "type",
];
const SERVICE_FIELDS: &[&str] = &["spec.clusterIP", "spec.type"];
const NODE_FIELDS: &[&str] = &["spec.unschedulable"];
const NAMESPACE_FIELDS: &[&str] = &["status.phase"];

/// The set of served resources.
#[derive(Clone, Debug)]
pub(crate) struct Registry {
    pub(crate) defs: Vec<Arc<ResourceDef>>,
}

impl Registry {
    pub(crate) fn builtin() -> Self {
        use StatusOnCreate::*;
        let defs = vec![
            builtin(
                "",
                "v1",
                "Namespace",
                "namespaces",
                &["ns"],
                false,
                Keep,
                true,
                NAMESPACE_FIELDS,
            ),
            builtin(
                "",
                "v1",
                "Node",
                "nodes",
                &["no"],
                false,
                Keep,
                true,
                NODE_FIELDS,
            ),
            builtin(
                "",
                "v1",
                "Service",
                "services",
                &["svc"],
                true,
                Reset,
                true,
                SERVICE_FIELDS,
            ),
            builtin(
                "",
                "v1",
                "Event",
                "events",
                &["ev"],
                true,
                Keep,
                false,
                EVENT_FIELDS,
            ),
            builtin(
                "",
                "v1",
                "ConfigMap",
                "configmaps",
                &["cm"],
                true,
                Keep,
                false,
                &[],
            ),
            builtin(
                "events.k8s.io",
                "v1",
                "Event",
                "events",
                &["ev"],
                true,
                Keep,
                false,
                &[],
            ),
            builtin(
                "discovery.k8s.io",
                "v1",
                "EndpointSlice",
                "endpointslices",
                &[],
                true,
                Keep,
                false,
                &[],
            ),
            builtin(
                "coordination.k8s.io",
                "v1",
                "Lease",
                "leases",
                &[],
                true,
                Keep,
                false,
                &[],
            ),
        ];
        let defs = defs.into_iter().map(|mut d| {
            match (d.group.as_str(), d.plural.as_str()) {
                ("events.k8s.io", "events") => {
                    d.storage = (String::new(), "events".into());
                    d.conversion = Conversion::EventsV1;
                    d.field_labels = EVENTS_V1_FIELDS;
                }
                ("discovery.k8s.io", "endpointslices") => d.generation = true,
                _ => {}
            }
            Arc::new(d)
        });
        Registry {
            defs: defs.collect(),
        }
    }

    /// Adds or replaces (same group and plural) a custom resource.
    pub(crate) fn register(&mut self, c: CustomResource) -> Arc<ResourceDef> {
        let def = Arc::new(ResourceDef::from_custom(c));
        self.defs
            .retain(|d| !(d.group == def.group && d.plural == def.plural));
        self.defs.push(def.clone());
        def
    }

    pub(crate) fn by_path(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<Arc<ResourceDef>> {
        self.defs
            .iter()
            .find(|d| {
                d.group == group && d.plural == plural && d.versions.iter().any(|v| v == version)
            })
            .cloned()
    }

    /// Finds the resource for an object's `apiVersion` and `kind`.
    pub(crate) fn by_kind(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Option<(Arc<ResourceDef>, String)> {
        let (group, version) = match api_version.rsplit_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        self.defs
            .iter()
            .find(|d| d.group == group && d.kind == kind && d.versions.iter().any(|v| v == version))
            .map(|d| (d.clone(), version.to_string()))
    }

    fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for d in self.defs.iter().filter(|d| !d.group.is_empty()) {
            match out.iter_mut().find(|(g, _)| *g == d.group) {
                Some((_, vs)) => {
                    for v in &d.versions {
                        if !vs.contains(v) {
                            vs.push(v.clone());
                        }
                    }
                }
                None => out.push((d.group.clone(), d.versions.clone())),
            }
        }
        out
    }

    /// `GET /api`.
    pub(crate) fn api_versions(&self) -> Value {
        json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}],
        })
    }

    fn group_doc(group: &str, versions: &[String]) -> Value {
        let vs: Vec<Value> = versions
            .iter()
            .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
            .collect();
        let preferred = vs.first().cloned().unwrap_or(Value::Null);
        json!({"name": group, "versions": vs, "preferredVersion": preferred})
    }

    /// `GET /apis`.
    pub(crate) fn api_group_list(&self) -> Value {
        let groups: Vec<Value> = self
            .groups()
            .iter()
            .map(|(g, vs)| Self::group_doc(g, vs))
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// `GET /apis/{group}`.
    pub(crate) fn api_group(&self, group: &str) -> Option<Value> {
        let (g, vs) = self.groups().into_iter().find(|(g, _)| g == group)?;
        let mut doc = Self::group_doc(&g, &vs);
        if let Some(m) = doc.as_object_mut() {
            m.insert("kind".into(), "APIGroup".into());
            m.insert("apiVersion".into(), "v1".into());
        }
        Some(doc)
    }

    /// `GET /api/v1` or `GET /apis/{group}/{version}`.
    pub(crate) fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let mut resources = Vec::new();
        for d in self
            .defs
            .iter()
            .filter(|d| d.group == group && d.versions.iter().any(|v| v == version))
        {
            let mut verbs = vec![
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ];
            if d.plural == "namespaces" {
                verbs.retain(|v| *v != "deletecollection");
            }
            resources.push(json!({
                "name": d.plural,
                "singularName": d.singular,
                "namespaced": d.namespaced,
                "kind": d.kind,
                "verbs": verbs,
                "shortNames": d.short_names,
                "storageVersionHash": "",
            }));
            if d.status_subresource {
                resources.push(json!({
                    "name": format!("{}/status", d.plural),
                    "singularName": "",
                    "namespaced": d.namespaced,
                    "kind": d.kind,
                    "verbs": ["get", "patch", "update"],
                }));
            }
        }
        if resources.is_empty() {
            return None;
        }
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
        )
    }
}
