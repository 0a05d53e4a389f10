//! The object store: one global resourceVersion, objects per resource in ordered maps,
//! and a bounded event history that serves watches, continue tokens and exact-RV lists.
//!
//! Every mutation takes the single store lock, bumps the resourceVersion by one, records
//! one history event and publishes the new resourceVersion on a `watch` channel; watch
//! streams then read the history from their own position. History events are contiguous
//! (event `i` has resourceVersion `floor + 1 + i`), so finding a position is O(1).

use crate::error::ApiError;
use crate::patch::{self, FieldPath};
use crate::resource::{Registry, ResourceDef, StatusOnCreate};
use crate::selector::{FieldSelector, LabelSelector};
use crate::text;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// Storage key of a resource: (group, plural). All versions of a resource share it.
pub(crate) type ResKey = (String, String);
/// Object key inside a resource: (namespace or "", name).
type ObjKey = (String, String);

/// Watch event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// `ADDED`
    Added,
    /// `MODIFIED`
    Modified,
    /// `DELETED`
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) rv: u64,
    pub(crate) res: ResKey,
    pub(crate) key: ObjKey,
    pub(crate) kind: EventType,
    /// The object after the change (for a deletion: as deleted, with the deletion's RV).
    pub(crate) object: Arc<Value>,
    /// The object before the change; `None` for a creation.
    pub(crate) prev: Option<Arc<Value>>,
}

/// Which object(s) a request addresses.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) def: Arc<ResourceDef>,
    pub(crate) version: String,
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) subresource: Option<String>,
}

impl Target {
    fn res(&self) -> ResKey {
        self.def.storage.clone()
    }
    fn is_status(&self) -> bool {
        self.subresource.as_deref() == Some("status")
    }
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }
    fn not_found(&self) -> ApiError {
        ApiError::not_found(&self.def.group, &self.def.plural, self.name())
    }
}

/// Options of a write.
#[derive(Clone, Debug, Default)]
pub(crate) struct WriteOpts {
    /// `fieldManager`, or the manager derived from the User-Agent.
    pub(crate) manager: String,
    /// `force=true` on apply.
    pub(crate) force: bool,
    /// `dryRun=All`: validate and answer, store nothing.
    pub(crate) dry_run: bool,
}

/// PATCH body kinds, by Content-Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PatchType {
    Merge,
    /// Served as a merge patch (lists replaced): see the README.
    StrategicMerge,
    Json,
    Apply,
}

/// List request parameters.
#[derive(Clone, Debug, Default)]
pub(crate) struct ListOpts {
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
    pub(crate) limit: Option<usize>,
    pub(crate) continue_token: Option<String>,
    pub(crate) resource_version: Option<String>,
    pub(crate) rv_match: Option<String>,
}

/// Watch request parameters.
#[derive(Clone, Debug, Default)]
pub(crate) struct WatchOpts {
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
    pub(crate) resource_version: Option<String>,
    pub(crate) send_initial_events: bool,
    /// `sendInitialEvents=false` given explicitly: no synthetic ADDED events even
    /// without a resourceVersion (KEP-3157 "start at most recent").
    pub(crate) no_initial_events: bool,
}

/// What a new watch starts from.
pub(crate) struct WatchStart {
    /// Objects to send as synthetic ADDED events first.
    pub(crate) initial: Vec<Arc<Value>>,
    /// Position in the history: events after it are streamed.
    pub(crate) from_rv: u64,
}

/// Outcome of a DELETE.
pub(crate) enum Deleted {
    /// The object (custom resources, or an object kept by finalizers).
    Object(Value),
    /// A `Status` of success (built-in kinds).
    Status(Value),
}

#[derive(Clone, Debug)]
struct ManagedEntry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: Option<String>,
    fields: Vec<FieldPath>,
}

/// Metadata fields the server owns; never tracked in managedFields.
const SYSTEM_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "generateName",
];

pub(crate) struct State {
    pub(crate) registry: Registry,
    rv: u64,
    tables: HashMap<ResKey, BTreeMap<ObjKey, Arc<Value>>>,
    history: VecDeque<Arc<Event>>,
    /// Every event with rv > floor is in `history`.
    floor: u64,
    window: usize,
    uid_seq: u64,
    uid_salt: u64,
    next_ip: u32,
    next_node_port: u16,
}

/// The shared store.
pub(crate) struct Store {
    state: Mutex<State>,
    rv_tx: watch::Sender<u64>,
}

fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

fn meta_str<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    meta(obj).and_then(|m| m.get(key)).and_then(Value::as_str)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let Value::Object(root) = obj else {
        unreachable!("made an object above")
    };
    let md = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !md.is_object() {
        *md = Value::Object(Map::new());
    }
    let Value::Object(m) = md else {
        unreachable!("made an object above")
    };
    m
}

/// Everything except `metadata` (and `status`, when `without_status`): what
/// `metadata.generation` tracks.
fn spec_view(obj: &Value, without_status: bool) -> Map<String, Value> {
    obj.as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| {
                    *k != "metadata"
                        && *k != "apiVersion"
                        && *k != "kind"
                        && !(without_status && *k == "status")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// An object as served at `api_version`, optionally without apiVersion/kind (items of a
/// built-in list): serialized straight from the stored value, without a copy.
pub(crate) struct ObjectView<'a> {
    pub(crate) obj: &'a Value,
    pub(crate) def: &'a ResourceDef,
    pub(crate) api_version: &'a str,
    pub(crate) strip_type: bool,
}

impl Serialize for ObjectView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let Some(converted) = self.def.to_served(self.obj) {
            let m = match &converted {
                Value::Object(m) => m,
                other => return other.serialize(s),
            };
            return serialize_object(m, self.api_version, self.strip_type, s);
        }
        let Value::Object(m) = self.obj else {
            return self.obj.serialize(s);
        };
        serialize_object(m, self.api_version, self.strip_type, s)
    }
}

fn serialize_object<S: Serializer>(
    m: &Map<String, Value>,
    api_version: &str,
    strip_type: bool,
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut out = s.serialize_map(None)?;
    if !strip_type {
        if let Some(k) = m.get("kind") {
            out.serialize_entry("kind", k)?;
        }
        out.serialize_entry("apiVersion", api_version)?;
    }
    for (k, v) in m {
        if k != "apiVersion" && k != "kind" {
            out.serialize_entry(k, v)?;
        }
    }
    out.end()
}

/// A copy of a stored object in the form served at `version` of `def`.
pub(crate) fn render(obj: &Value, def: &ResourceDef, version: &str) -> Value {
    let mut v = def.to_served(obj).unwrap_or_else(|| obj.clone());
    if let Value::Object(m) = &mut v {
        m.insert("apiVersion".into(), Value::from(def.api_version(version)));
    }
    v
}

fn parse_rv(s: &str) -> Result<u64, ApiError> {
    s.parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version {s:?}")))
}

fn too_old(rv: u64, floor: u64) -> ApiError {
    ApiError::expired(format!("too old resource version: {rv} ({})", floor + 1))
}

const CONTINUE_TOO_OLD: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

fn encode_continue(rv: u64, key: &ObjKey) -> String {
    let doc = json!({"v": "meta.k8s.io/v1", "rv": rv, "ns": key.0, "name": key.1});
    text::base64_encode(doc.to_string().as_bytes())
}

fn decode_continue(token: &str) -> Result<(u64, ObjKey), ApiError> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    let raw = text::base64_decode(token).ok_or_else(bad)?;
    let doc: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if doc.get("v").and_then(Value::as_str) != Some("meta.k8s.io/v1") {
        return Err(bad());
    }
    let rv = doc.get("rv").and_then(Value::as_u64).ok_or_else(bad)?;
    let ns = doc.get("ns").and_then(Value::as_str).ok_or_else(bad)?;
    let name = doc.get("name").and_then(Value::as_str).ok_or_else(bad)?;
    Ok((rv, (ns.to_string(), name.to_string())))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .as_bytes()
            .first()
            .is_some_and(u8::is_ascii_alphanumeric)
        && name
            .as_bytes()
            .last()
            .is_some_and(u8::is_ascii_alphanumeric)
}

fn read_managed(obj: &Value) -> Vec<ManagedEntry> {
    let Some(list) = meta(obj)
        .and_then(|m| m.get("managedFields"))
        .and_then(Value::as_array)
    else {
        return vec![];
    };
    list.iter()
        .filter_map(|e| {
            let s = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
            Some(ManagedEntry {
                manager: s("manager")?,
                operation: s("operation").unwrap_or_else(|| "Update".into()),
                api_version: s("apiVersion").unwrap_or_default(),
                time: s("time").unwrap_or_default(),
                subresource: s("subresource"),
                fields: e
                    .get("fieldsV1")
                    .map(patch::from_fields_v1)
                    .unwrap_or_default(),
            })
        })
        .collect()
}

fn write_managed(obj: &mut Value, entries: &[ManagedEntry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": patch::to_fields_v1(&e.fields),
            });
            if let (Some(sub), Value::Object(m)) = (&e.subresource, &mut v) {
                m.insert("subresource".into(), Value::from(sub.as_str()));
            }
            v
        })
        .collect();
    let m = meta_mut(obj);
    if list.is_empty() {
        m.remove("managedFields");
    } else {
        m.insert("managedFields".into(), Value::Array(list));
    }
}

fn related(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Whether a field path is tracked for a write to the main resource or to `/status`.
fn tracked(p: &[String], status_write: bool, has_status_sub: bool) -> bool {
    match p.first().map(String::as_str) {
        None | Some("apiVersion") | Some("kind") => false,
        Some("metadata") => {
            !status_write
                && !p
                    .get(1)
                    .is_some_and(|k| SYSTEM_METADATA.contains(&k.as_str()))
        }
        Some("status") => status_write || !has_status_sub,
        Some(_) => !status_write,
    }
}

impl Store {
    pub(crate) fn new(window: usize) -> Self {
        let salt = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id()).rotate_left(32);
        let state = State {
            registry: Registry::builtin(),
            rv: 0,
            tables: HashMap::new(),
            history: VecDeque::new(),
            floor: 0,
            window: window.max(1),
            uid_seq: 0,
            uid_salt: salt,
            next_ip: 1,
            next_node_port: 30000,
        };
        let (rv_tx, _) = watch::channel(0);
        let store = Store {
            state: Mutex::new(state),
            rv_tx,
        };
        // A fresh cluster has these namespaces.
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let _ = store.create_object(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                "kube-apiserver",
            );
        }
        store
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied change (mutations
        // finish before they touch shared maps), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.rv_tx.subscribe()
    }

    pub(crate) fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    pub(crate) fn compact(&self) {
        let mut st = self.lock();
        st.history.clear();
        st.floor = st.rv;
    }

    pub(crate) fn set_window(&self, window: usize) {
        let mut st = self.lock();
        st.window = window.max(1);
        st.trim();
    }

    fn publish(&self, rv: u64) {
        self.rv_tx.send_replace(rv);
    }

    // ---- reads -------------------------------------------------------------------------

    pub(crate) fn get(&self, t: &Target) -> Result<Value, ApiError> {
        let st = self.lock();
        let key = (
            t.namespace.clone().unwrap_or_default(),
            t.name().to_string(),
        );
        st.tables
            .get(&t.res())
            .and_then(|tab| tab.get(&key))
            .map(|o| render(o, &t.def, &t.version))
            .ok_or_else(|| t.not_found())
    }

    /// Lists into a serialized `XList` body.
    pub(crate) fn list(&self, t: &Target, o: &ListOpts) -> Result<Vec<u8>, ApiError> {
        let st = self.lock();
        let (snapshot_rv, start) = match (&o.continue_token, o.resource_version.as_deref()) {
            (Some(tok), _) => {
                let (rv, key) = decode_continue(tok)?;
                if rv < st.floor {
                    return Err(ApiError::expired(CONTINUE_TOO_OLD));
                }
                (rv, Some(key))
            }
            (None, Some(rv)) if o.rv_match.as_deref() == Some("Exact") => {
                let rv = parse_rv(rv)?;
                if rv < st.floor {
                    return Err(too_old(rv, st.floor));
                }
                if rv > st.rv {
                    return Err(ApiError {
                        code: 504,
                        reason: "Timeout",
                        message: format!("Too large resource version: {rv}, current: {}", st.rv),
                        details: None,
                    });
                }
                (rv, None)
            }
            (None, Some(rv)) => {
                if !rv.is_empty() {
                    parse_rv(rv)?;
                }
                (st.rv, None)
            }
            (None, None) => (st.rv, None),
        };
        let res = t.res();
        // Objects changed since the snapshot: their value at the snapshot (None = absent).
        let mut overlay: BTreeMap<ObjKey, Option<Arc<Value>>> = BTreeMap::new();
        if snapshot_rv < st.rv {
            let first = usize::try_from(snapshot_rv - st.floor).unwrap_or(usize::MAX);
            for ev in st.history.iter().skip(first) {
                if ev.res == res && !overlay.contains_key(&ev.key) {
                    overlay.insert(ev.key.clone(), ev.prev.clone());
                }
            }
        }
        let empty = BTreeMap::new();
        let table = st.tables.get(&res).unwrap_or(&empty);
        let ns = t.namespace.clone();
        let lower: Bound<ObjKey> = match (&start, &ns) {
            (Some(k), _) => Bound::Excluded(k.clone()),
            (None, Some(ns)) => Bound::Included((ns.clone(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        let in_ns = |k: &ObjKey| ns.as_ref().is_none_or(|ns| &k.0 == ns);
        let mut cur = table.range((lower.clone(), Bound::Unbounded)).peekable();
        let mut ovl = overlay.range((lower, Bound::Unbounded)).peekable();
        let api_version = t.def.api_version(&t.version);
        let mut items: Vec<&Value> = Vec::new();
        let mut last_key: Option<ObjKey> = None;
        let mut more = false;
        let name_only = o.fields.only_name().map(str::to_string);
        // kube-apiserver reports remainingItemCount only for lists without selectors.
        let unfiltered = o.labels.is_empty() && o.fields.is_empty();
        let mut remaining: u64 = 0;
        loop {
            // Merge the two ordered sequences; the overlay wins on equal keys.
            let next: Option<(&ObjKey, Option<&Arc<Value>>)> = match (cur.peek(), ovl.peek()) {
                (None, None) => None,
                (Some((ck, _)), Some((ok, _))) if ck == ok => {
                    cur.next();
                    ovl.next().map(|(k, v)| (k, v.as_ref()))
                }
                (Some((ck, _)), Some((ok, _))) if ok < ck => {
                    ovl.next().map(|(k, v)| (k, v.as_ref()))
                }
                (Some(_), _) => cur.next().map(|(k, v)| (k, Some(v))),
                (None, Some(_)) => ovl.next().map(|(k, v)| (k, v.as_ref())),
            };
            let Some((key, obj)) = next else { break };
            if !in_ns(key) {
                if ns.is_some() {
                    break;
                }
                continue;
            }
            let Some(obj) = obj else { continue };
            if name_only.as_deref().is_some_and(|n| n != key.1) {
                continue;
            }
            if !o.labels.matches(obj) || !o.fields.matches(obj) {
                continue;
            }
            if o.limit.is_some_and(|l| l > 0 && items.len() >= l) {
                more = true;
                if !unfiltered {
                    break;
                }
                remaining += 1;
                continue;
            }
            last_key = Some(key.clone());
            items.push(obj);
        }
        let mut metadata = json!({"resourceVersion": snapshot_rv.to_string()});
        if more {
            if let (Some(k), Value::Object(m)) = (&last_key, &mut metadata) {
                m.insert(
                    "continue".into(),
                    Value::from(encode_continue(snapshot_rv, k)),
                );
                if unfiltered {
                    m.insert("remainingItemCount".into(), Value::from(remaining));
                }
            }
        }
        let views: Vec<ObjectView<'_>> = items
            .into_iter()
            .map(|obj| ObjectView {
                obj,
                def: &t.def,
                api_version: &api_version,
                strip_type: t.def.builtin,
            })
            .collect();
        let body = ListBody {
            kind: format!("{}List", t.def.kind),
            api_version: &api_version,
            metadata,
            items: views,
        };
        serde_json::to_vec(&body).map_err(|e| ApiError::internal(e.to_string()))
    }

    /// Objects of a resource (direct access for tests), in key order.
    pub(crate) fn list_values(&self, t: &Target) -> Vec<Value> {
        let st = self.lock();
        st.tables
            .get(&t.res())
            .map(|tab| {
                tab.iter()
                    .filter(|(k, _)| t.namespace.as_ref().is_none_or(|ns| &k.0 == ns))
                    .map(|(_, v)| render(v, &t.def, &t.version))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn watch_start(&self, t: &Target, o: &WatchOpts) -> Result<WatchStart, ApiError> {
        let st = self.lock();
        let rv = match o.resource_version.as_deref() {
            None | Some("") | Some("0") => None,
            Some(s) => Some(parse_rv(s)?),
        };
        if rv.is_none() && o.no_initial_events {
            return Ok(WatchStart {
                initial: vec![],
                from_rv: st.rv,
            });
        }
        match rv {
            Some(rv) if !o.send_initial_events => {
                if rv < st.floor {
                    return Err(too_old(rv, st.floor));
                }
                Ok(WatchStart {
                    initial: vec![],
                    from_rv: rv,
                })
            }
            _ => {
                let ns = t.namespace.clone();
                let initial = st
                    .tables
                    .get(&t.res())
                    .map(|tab| {
                        let lower = match &ns {
                            Some(ns) => Bound::Included((ns.clone(), String::new())),
                            None => Bound::Unbounded,
                        };
                        tab.range((lower, Bound::Unbounded))
                            .take_while(|(k, _)| ns.as_ref().is_none_or(|ns| &k.0 == ns))
                            .filter(|(_, v)| o.labels.matches(v) && o.fields.matches(v))
                            .map(|(_, v)| v.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(WatchStart {
                    initial,
                    from_rv: st.rv,
                })
            }
        }
    }

    /// Events after `rv` (at most `max`), or 410 if the history no longer reaches back.
    pub(crate) fn events_since(&self, rv: u64, max: usize) -> Result<Vec<Arc<Event>>, ApiError> {
        let st = self.lock();
        if rv < st.floor {
            return Err(too_old(rv, st.floor));
        }
        let first = usize::try_from(rv - st.floor).unwrap_or(usize::MAX);
        Ok(st.history.iter().skip(first).take(max).cloned().collect())
    }

    // ---- writes ------------------------------------------------------------------------

    /// Creates from an object's own apiVersion/kind/namespace (direct access).
    pub(crate) fn create_object(&self, obj: Value, manager: &str) -> Result<Value, ApiError> {
        let t = self.target_of(&obj, false)?;
        self.create(
            &t,
            obj,
            &WriteOpts {
                manager: manager.into(),
                ..Default::default()
            },
        )
    }

    /// The target an object names by apiVersion, kind, namespace and name.
    pub(crate) fn target_of(&self, obj: &Value, with_name: bool) -> Result<Target, ApiError> {
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        let (def, version) = self
            .lock()
            .registry
            .by_kind(api_version, kind)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "no kind {kind:?} is registered for version {api_version:?}"
                ))
            })?;
        let namespace = if def.namespaced {
            Some(meta_str(obj, "namespace").unwrap_or("default").to_string())
        } else {
            None
        };
        Ok(Target {
            def,
            version,
            namespace,
            name: if with_name {
                meta_str(obj, "name").map(str::to_string)
            } else {
                None
            },
            subresource: None,
        })
    }

    /// Checks apiVersion/kind against the target and converts the object to its stored
    /// form (storage apiVersion; field renames for converted kinds).
    fn check_type(t: &Target, obj: &mut Value) -> Result<(), ApiError> {
        let want = t.def.api_version(&t.version);
        let storage = t.def.storage_api_version();
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        let given = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(v) = given.as_deref() {
            // The storage form is accepted too: internal writes carry it.
            if v != want && v != storage {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({want})"
                )));
            }
        }
        if let Some(k) = obj.get("kind").and_then(Value::as_str) {
            if k != t.def.kind {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    t.def.kind
                )));
            }
        }
        let already_stored = storage != want && given.as_deref() == Some(storage.as_str());
        if !already_stored {
            t.def.to_stored(obj);
        }
        if let Value::Object(m) = obj {
            m.insert("apiVersion".into(), Value::from(storage));
            m.insert("kind".into(), Value::from(t.def.kind.as_str()));
        }
        Ok(())
    }

    fn check_namespace(t: &Target, obj: &mut Value) -> Result<(), ApiError> {
        let body_ns = meta_str(obj, "namespace").map(str::to_string);
        match (&t.namespace, body_ns) {
            (Some(ns), Some(b)) if !b.is_empty() && &b != ns => Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            )),
            (Some(ns), _) => {
                meta_mut(obj).insert("namespace".into(), Value::from(ns.as_str()));
                Ok(())
            }
            (None, _) => {
                meta_mut(obj).remove("namespace");
                Ok(())
            }
        }
    }

    pub(crate) fn create(
        &self,
        t: &Target,
        mut obj: Value,
        o: &WriteOpts,
    ) -> Result<Value, ApiError> {
        Self::check_type(t, &mut obj)?;
        Self::check_namespace(t, &mut obj)?;
        validate_event_v1(t, None, &obj)?;
        let mut st = self.lock();
        let mut name = meta_str(&obj, "name").unwrap_or("").to_string();
        if name.is_empty() {
            if let Some(prefix) = meta_str(&obj, "generateName").filter(|p| !p.is_empty()) {
                name = format!("{prefix}{}", st.random_suffix());
            }
        }
        if !valid_name(&name) {
            let detail = if name.is_empty() {
                "Required value: name or generateName is required".to_string()
            } else {
                format!("Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character")
            };
            return Err(ApiError::invalid(
                &t.def.group,
                &t.def.kind,
                &name,
                "metadata.name",
                &detail,
            ));
        }
        if let Some(ns) = &t.namespace {
            let ns_key = (String::new(), ns.clone());
            let exists = st
                .tables
                .get(&(String::new(), "namespaces".to_string()))
                .is_some_and(|tab| tab.contains_key(&ns_key));
            if !exists {
                return Err(ApiError::not_found("", "namespaces", ns));
            }
        }
        let key = (t.namespace.clone().unwrap_or_default(), name.clone());
        if st
            .tables
            .get(&t.res())
            .is_some_and(|tab| tab.contains_key(&key))
        {
            return Err(ApiError::already_exists(&t.def.group, &t.def.plural, &name));
        }
        {
            let uid = st.new_uid();
            let m = meta_mut(&mut obj);
            m.insert("name".into(), Value::from(name.as_str()));
            m.insert("uid".into(), Value::from(uid));
            m.insert("creationTimestamp".into(), Value::from(text::rfc3339_now()));
            for k in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
            ] {
                m.remove(k);
            }
            if t.def.generation {
                m.insert("generation".into(), Value::from(1));
            } else {
                m.remove("generation");
            }
        }
        if t.def.status_on_create == StatusOnCreate::Reset {
            if let Value::Object(m) = &mut obj {
                m.remove("status");
            }
        }
        st.apply_defaults(t, &mut obj, None)?;
        if !o.manager.is_empty() && !meta(&obj).is_some_and(|m| m.contains_key("managedFields")) {
            let mut entries = Vec::new();
            record_update(&mut entries, None, &obj, t, o, &st.registry);
            write_managed(&mut obj, &entries);
        }
        if o.dry_run {
            return Ok(render(&obj, &t.def, &t.version));
        }
        let out = st.commit(t, key, Some(obj), EventType::Added);
        drop(st);
        self.publish_latest();
        Ok(out)
    }

    fn publish_latest(&self) {
        let rv = self.lock().rv;
        self.publish(rv);
    }

    /// PUT (main resource or `/status`). Returns the object as stored.
    pub(crate) fn update(
        &self,
        t: &Target,
        mut obj: Value,
        o: &WriteOpts,
    ) -> Result<Value, ApiError> {
        Self::check_type(t, &mut obj)?;
        let body_name = meta_str(&obj, "name").unwrap_or("");
        if body_name != t.name() {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({})",
                t.name()
            )));
        }
        Self::check_namespace(t, &mut obj)?;
        let mut st = self.lock();
        let key = (
            t.namespace.clone().unwrap_or_default(),
            t.name().to_string(),
        );
        let old = st
            .tables
            .get(&t.res())
            .and_then(|tab| tab.get(&key))
            .cloned()
            .ok_or_else(|| t.not_found())?;
        let out = st.write(t, key, old, obj, o, None)?;
        drop(st);
        self.publish_latest();
        Ok(out)
    }

    pub(crate) fn patch(
        &self,
        t: &Target,
        kind: PatchType,
        body: &[u8],
        o: &WriteOpts,
    ) -> Result<(Value, bool), ApiError> {
        let patch: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(match kind {
                PatchType::Apply => {
                    format!("error decoding YAML: {e} (only the JSON form of YAML is accepted)")
                }
                _ => format!("error decoding patch: {e}"),
            })
        })?;
        let key = (
            t.namespace.clone().unwrap_or_default(),
            t.name().to_string(),
        );
        let mut st = self.lock();
        let old = st
            .tables
            .get(&t.res())
            .and_then(|tab| tab.get(&key))
            .cloned();
        let (out, created) = match (kind, old) {
            (PatchType::Apply, old) => {
                if o.manager.is_empty() {
                    return Err(ApiError::invalid(
                        "meta.k8s.io",
                        "PatchOptions",
                        "",
                        "fieldManager",
                        "Required value: is required for apply patch",
                    ));
                }
                let mut cfg = patch;
                Self::check_type(t, &mut cfg)?;
                let cfg_name = meta_str(&cfg, "name").unwrap_or("");
                if cfg_name != t.name() {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({cfg_name}) does not match the name on the URL ({})",
                        t.name()
                    )));
                }
                Self::check_namespace(t, &mut cfg)?;
                let applied = apply(t, old.as_deref(), &cfg, o)?;
                match old {
                    Some(old) => (st.write(t, key, old, applied.0, o, Some(applied.1))?, false),
                    None => {
                        if t.is_status() {
                            return Err(t.not_found());
                        }
                        drop(st);
                        let created = self.create(
                            t,
                            applied.0,
                            &WriteOpts {
                                manager: String::new(),
                                ..o.clone()
                            },
                        )?;
                        return Ok((created, true));
                    }
                }
            }
            (_, None) => return Err(t.not_found()),
            (PatchType::Json, Some(old)) => {
                let mut doc = render(&old, &t.def, &t.version);
                patch::json_patch(&mut doc, &patch).map_err(|e| ApiError {
                    code: 422,
                    reason: "Invalid",
                    message: e,
                    details: None,
                })?;
                Self::check_type(t, &mut doc)?;
                Self::check_namespace(t, &mut doc)?;
                (st.write(t, key, old, doc, o, None)?, false)
            }
            (PatchType::Merge | PatchType::StrategicMerge, Some(old)) => {
                if !patch.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                let mut doc = render(&old, &t.def, &t.version);
                patch::merge_patch(&mut doc, &patch);
                Self::check_type(t, &mut doc)?;
                Self::check_namespace(t, &mut doc)?;
                (st.write(t, key, old, doc, o, None)?, false)
            }
        };
        drop(st);
        self.publish_latest();
        Ok((out, created))
    }

    pub(crate) fn delete(
        &self,
        t: &Target,
        uid: Option<&str>,
        rv: Option<&str>,
        dry_run: bool,
    ) -> Result<Deleted, ApiError> {
        let mut st = self.lock();
        let key = (
            t.namespace.clone().unwrap_or_default(),
            t.name().to_string(),
        );
        let old = st
            .tables
            .get(&t.res())
            .and_then(|tab| tab.get(&key))
            .cloned()
            .ok_or_else(|| t.not_found())?;
        let have_uid = meta_str(&old, "uid").unwrap_or("");
        let have_rv = meta_str(&old, "resourceVersion").unwrap_or("");
        if let Some(u) = uid.filter(|u| *u != have_uid) {
            return Err(ApiError::conflict(
                &t.def.group,
                &t.def.plural,
                t.name(),
                &format!(
                    "Precondition failed: UID in precondition: {u}, UID in object meta: {have_uid}"
                ),
            ));
        }
        if let Some(r) = rv.filter(|r| *r != have_rv) {
            return Err(ApiError::conflict(
                &t.def.group,
                &t.def.plural,
                t.name(),
                &format!("Precondition failed: ResourceVersion in precondition: {r}, ResourceVersion in object meta: {have_rv}"),
            ));
        }
        let has_finalizers = meta(&old)
            .and_then(|m| m.get("finalizers"))
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            // Finalizers hold the object: mark it and let the update that clears them delete it.
            if meta(&old).is_some_and(|m| m.contains_key("deletionTimestamp")) || dry_run {
                return Ok(Deleted::Object(render(&old, &t.def, &t.version)));
            }
            let mut new = (*old).clone();
            let m = meta_mut(&mut new);
            m.insert("deletionTimestamp".into(), Value::from(text::rfc3339_now()));
            m.insert("deletionGracePeriodSeconds".into(), Value::from(0));
            let out = st.commit(t, key, Some(new), EventType::Modified);
            drop(st);
            self.publish_latest();
            return Ok(Deleted::Object(out));
        }
        if dry_run {
            return Ok(Deleted::Object(render(&old, &t.def, &t.version)));
        }
        let out = st.commit(t, key, None, EventType::Deleted);
        drop(st);
        self.publish_latest();
        if t.def.builtin {
            let mut details = json!({"name": t.name(), "kind": t.def.plural, "uid": have_uid});
            if !t.def.group.is_empty() {
                if let Value::Object(m) = &mut details {
                    m.insert("group".into(), Value::from(t.def.group.as_str()));
                }
            }
            Ok(Deleted::Status(json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Success", "details": details,
            })))
        } else {
            Ok(Deleted::Object(out))
        }
    }

    /// DELETE on a collection: deletes the matching objects and returns them as a list.
    pub(crate) fn delete_collection(&self, t: &Target, o: &ListOpts) -> Result<Value, ApiError> {
        let names: Vec<ObjKey> = {
            let st = self.lock();
            st.tables
                .get(&t.res())
                .map(|tab| {
                    tab.iter()
                        .filter(|(k, v)| {
                            t.namespace.as_ref().is_none_or(|ns| &k.0 == ns)
                                && o.labels.matches(v)
                                && o.fields.matches(v)
                        })
                        .map(|(k, _)| k.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut items = Vec::new();
        for (ns, name) in names {
            let one = Target {
                namespace: if ns.is_empty() { None } else { Some(ns) },
                name: Some(name),
                ..t.clone()
            };
            let before = self.get(&one);
            match (self.delete(&one, None, None, false), before) {
                (Ok(Deleted::Object(v)), _) => items.push(v),
                // Built-in kinds answer a single delete with a Status; the collection
                // response lists the objects.
                (Ok(Deleted::Status(_)), Ok(v)) => items.push(v),
                _ => {}
            }
        }
        let rv = self.resource_version();
        Ok(json!({
            "kind": format!("{}List", t.def.kind),
            "apiVersion": t.def.api_version(&t.version),
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        }))
    }
}

/// The body of a list response, serialized without copying the items.
struct ListBody<'a> {
    kind: String,
    api_version: &'a str,
    metadata: Value,
    items: Vec<ObjectView<'a>>,
}

impl Serialize for ListBody<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("kind", &self.kind)?;
        m.serialize_entry("apiVersion", self.api_version)?;
        m.serialize_entry("metadata", &self.metadata)?;
        m.serialize_entry("items", &self.items)?;
        m.end()
    }
}

/// Records a non-apply write in managedFields: the writer takes ownership of every leaf
/// it changed (as an `Update` operation), other managers lose those leaves.
fn record_update(
    entries: &mut Vec<ManagedEntry>,
    old: Option<&Value>,
    new: &Value,
    t: &Target,
    o: &WriteOpts,
    _registry: &Registry,
) {
    let status_write = t.is_status();
    let mut changed = Vec::new();
    patch::changed_leaves(old, new, &mut Vec::new(), &mut changed);
    changed.retain(|p| tracked(p, status_write, t.def.status_subresource));
    if changed.is_empty() || o.manager.is_empty() {
        return;
    }
    for e in entries.iter_mut() {
        e.fields.retain(|q| !changed.iter().any(|p| related(p, q)));
    }
    let sub = status_write.then(|| "status".to_string());
    let idx = entries
        .iter()
        .position(|e| e.manager == o.manager && e.operation == "Update" && e.subresource == sub);
    let entry = match idx {
        Some(i) => &mut entries[i],
        None => {
            entries.push(ManagedEntry {
                manager: o.manager.clone(),
                operation: "Update".into(),
                api_version: t.def.api_version(&t.version),
                time: String::new(),
                subresource: sub,
                fields: vec![],
            });
            let last = entries.len() - 1;
            &mut entries[last]
        }
    };
    entry.time = text::rfc3339_now();
    entry.api_version = t.def.api_version(&t.version);
    for p in changed {
        if !entry.fields.contains(&p) {
            entry.fields.push(p);
        }
    }
}

/// Server-side apply (simplified, see the README): merges the applied leaves into the live
/// object, removes leaves this manager applied before and no longer does (unless another
/// manager owns them), and detects conflicts with other managers' differing values.
/// Returns the new object and the applied leaf set.
fn apply(
    t: &Target,
    old: Option<&Value>,
    cfg: &Value,
    o: &WriteOpts,
) -> Result<(Value, Vec<FieldPath>), ApiError> {
    let status_write = t.is_status();
    let sub = status_write.then(|| "status".to_string());
    let mut applied = Vec::new();
    patch::leaves(cfg, &mut Vec::new(), &mut applied);
    applied.retain(|p| tracked(p, status_write, t.def.status_subresource));
    let mut entries = old.map(read_managed).unwrap_or_default();
    let mine =
        |e: &ManagedEntry| e.manager == o.manager && e.operation == "Apply" && e.subresource == sub;
    if let Some(old) = old {
        let mut conflicts = Vec::new();
        for e in entries.iter().filter(|e| !mine(e)) {
            for q in &e.fields {
                for p in applied.iter().filter(|p| related(p, q)) {
                    if patch::get_path(old, p) != patch::get_path(cfg, p) {
                        let c = (e.manager.clone(), patch::display_path(p));
                        if !conflicts.contains(&c) {
                            conflicts.push(c);
                        }
                    }
                }
            }
        }
        if !conflicts.is_empty() {
            if !o.force {
                return Err(ApiError::apply_conflict(
                    &t.def.group,
                    &t.def.plural,
                    t.name(),
                    &conflicts,
                ));
            }
            for e in entries.iter_mut().filter(|e| !mine(e)) {
                e.fields.retain(|q| {
                    !applied.iter().any(|p| {
                        related(p, q) && patch::get_path(old, p) != patch::get_path(cfg, p)
                    })
                });
            }
        }
    }
    let mut new = match old {
        Some(old) => old.clone(),
        None => {
            let mut base = json!({"metadata": {"name": t.name()}});
            if let (Some(ns), Value::Object(m)) = (&t.namespace, &mut base) {
                if let Some(Value::Object(md)) = m.get_mut("metadata") {
                    md.insert("namespace".into(), Value::from(ns.as_str()));
                }
            }
            base
        }
    };
    if let (Value::Object(n), Value::Object(c)) = (&mut new, cfg) {
        for k in ["apiVersion", "kind"] {
            if let Some(v) = c.get(k) {
                n.insert(k.into(), v.clone());
            }
        }
    }
    // Fields this manager applied before and has now dropped are removed, unless another
    // manager still owns them.
    let previous: Vec<FieldPath> = entries
        .iter()
        .filter(|e| mine(e))
        .flat_map(|e| e.fields.clone())
        .collect();
    for q in previous {
        let still_applied = applied.iter().any(|p| related(p, &q));
        let owned_by_other = entries
            .iter()
            .filter(|e| !mine(e))
            .any(|e| e.fields.iter().any(|f| related(f, &q)));
        if !still_applied && !owned_by_other {
            patch::remove_path(&mut new, &q);
        }
    }
    for p in &applied {
        if let Some(v) = patch::get_path(cfg, p) {
            patch::set_path(&mut new, p, v.clone());
        }
    }
    // An apply may carry resourceVersion as a precondition.
    if let Some(rv) = meta_str(cfg, "resourceVersion") {
        meta_mut(&mut new).insert("resourceVersion".into(), Value::from(rv));
    }
    entries.retain(|e| !mine(e));
    entries.push(ManagedEntry {
        manager: o.manager.clone(),
        operation: "Apply".into(),
        api_version: t.def.api_version(&t.version),
        time: text::rfc3339_now(),
        subresource: sub,
        fields: applied.clone(),
    });
    write_managed(&mut new, &entries);
    Ok((new, applied))
}

impl State {
    fn new_uid(&mut self) -> String {
        self.uid_seq += 1;
        let a = self.uid_salt ^ self.uid_seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let b = self.uid_seq;
        // Shaped like a version-4 UUID (RFC 9562 §5.4): unique within this server.
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (a >> 32) as u32,
            (a >> 16) as u16,
            (a as u16) & 0xfff,
            (b >> 48) as u16 & 0xfff,
            b & 0xffff_ffff_ffff
        )
    }

    fn random_suffix(&mut self) -> String {
        self.uid_seq += 1;
        let mut n = (self.uid_salt ^ self.uid_seq.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 7;
        // The apiserver's alphabet for generateName suffixes (no vowels, no 0/1/3).
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut s = String::new();
        for _ in 0..5 {
            s.push(char::from(ALPHABET[(n % ALPHABET.len() as u64) as usize]));
            n /= ALPHABET.len() as u64;
        }
        s
    }

    fn trim(&mut self) {
        while self.history.len() > self.window {
            self.history.pop_front();
            self.floor += 1;
        }
    }

    /// Stores (or removes, with `None`) an object under a new resourceVersion and records
    /// the event. Returns the object as served at the target's version.
    fn commit(&mut self, t: &Target, key: ObjKey, obj: Option<Value>, kind: EventType) -> Value {
        self.rv += 1;
        let rv = self.rv;
        let res = t.res();
        let table = self.tables.entry(res.clone()).or_default();
        let prev = table.get(&key).cloned();
        let stored = match obj {
            Some(mut o) => {
                meta_mut(&mut o).insert("resourceVersion".into(), Value::from(rv.to_string()));
                let o = Arc::new(o);
                table.insert(key.clone(), o.clone());
                o
            }
            None => {
                table.remove(&key);
                let mut o = prev.as_deref().cloned().unwrap_or(Value::Null);
                meta_mut(&mut o).insert("resourceVersion".into(), Value::from(rv.to_string()));
                Arc::new(o)
            }
        };
        let out = render(&stored, &t.def, &t.version);
        self.history.push_back(Arc::new(Event {
            rv,
            res,
            key,
            kind,
            object: stored,
            prev,
        }));
        self.trim();
        out
    }

    /// The shared part of PUT and PATCH: status-subresource rules, preconditions,
    /// generation, managedFields, no-op detection, finalizer completion.
    fn write(
        &mut self,
        t: &Target,
        key: ObjKey,
        old: Arc<Value>,
        mut obj: Value,
        o: &WriteOpts,
        applied: Option<Vec<FieldPath>>,
    ) -> Result<Value, ApiError> {
        let old_rv = meta_str(&old, "resourceVersion").unwrap_or("");
        if let Some(rv) = meta_str(&obj, "resourceVersion").filter(|r| !r.is_empty()) {
            if rv != old_rv {
                return Err(ApiError::stale(&t.def.group, &t.def.plural, t.name()));
            }
        }
        validate_event_v1(t, Some(&old), &obj)?;
        if t.is_status() {
            // Only status changes through /status.
            let status = obj.get("status").cloned();
            let managed = meta(&obj).and_then(|m| m.get("managedFields")).cloned();
            obj = (*old).clone();
            if let Value::Object(m) = &mut obj {
                match status {
                    Some(s) => m.insert("status".into(), s),
                    None => m.remove("status"),
                };
            }
            if let (Some(mf), true) = (managed, applied.is_some()) {
                meta_mut(&mut obj).insert("managedFields".into(), mf);
            }
        } else {
            if t.def.status_subresource {
                if let Value::Object(m) = &mut obj {
                    match old.get("status") {
                        Some(s) => m.insert("status".into(), s.clone()),
                        None => m.remove("status"),
                    };
                }
            }
            let old_meta = meta(&old).cloned().unwrap_or_default();
            let m = meta_mut(&mut obj);
            for k in [
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                match old_meta.get(k) {
                    Some(v) => m.insert(k.into(), v.clone()),
                    None => m.remove(k),
                };
            }
            if !m.contains_key("managedFields") {
                if let Some(mf) = old_meta.get("managedFields") {
                    m.insert("managedFields".into(), mf.clone());
                }
            }
            self.apply_defaults(t, &mut obj, Some(&old))?;
        }
        meta_mut(&mut obj).insert("resourceVersion".into(), Value::from(old_rv));
        if t.def.generation
            && spec_view(&obj, t.def.status_subresource)
                != spec_view(&old, t.def.status_subresource)
        {
            let g = meta(&old)
                .and_then(|m| m.get("generation"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut obj).insert("generation".into(), Value::from(g + 1));
        }
        if applied.is_none() {
            let mut entries = read_managed(&old);
            record_update(&mut entries, Some(&old), &obj, t, o, &self.registry);
            // Drop ownership of fields that no longer exist.
            for e in entries.iter_mut() {
                e.fields.retain(|p| patch::get_path(&obj, p).is_some());
            }
            write_managed(&mut obj, &entries);
        }
        if obj == *old {
            // kube-apiserver skips writes that change nothing: same resourceVersion, no event.
            return Ok(render(&old, &t.def, &t.version));
        }
        if o.dry_run {
            return Ok(render(&obj, &t.def, &t.version));
        }
        let terminating = meta(&obj).is_some_and(|m| m.contains_key("deletionTimestamp"));
        let no_finalizers = meta(&obj)
            .and_then(|m| m.get("finalizers"))
            .and_then(Value::as_array)
            .is_none_or(|f| f.is_empty());
        if terminating && no_finalizers {
            self.commit(t, key.clone(), Some(obj), EventType::Modified);
            return Ok(self.commit(t, key, None, EventType::Deleted));
        }
        Ok(self.commit(t, key, Some(obj), EventType::Modified))
    }

    /// Per-kind defaulting the apiserver does on create and update.
    fn apply_defaults(
        &mut self,
        t: &Target,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        if !t.def.builtin {
            return Ok(());
        }
        match (t.def.group.as_str(), t.def.kind.as_str()) {
            ("", "Service") => self.default_service(t, obj, old),
            ("", "Namespace") => {
                let name = meta_str(obj, "name").unwrap_or("").to_string();
                let m = meta_mut(obj);
                let labels = m.entry("labels").or_insert_with(|| json!({}));
                if let Value::Object(l) = labels {
                    l.insert("kubernetes.io/metadata.name".into(), Value::from(name));
                }
                if old.is_none() {
                    patch::set_path(
                        obj,
                        &["spec".into(), "finalizers".into()],
                        json!(["kubernetes"]),
                    );
                    patch::set_path(obj, &["status".into(), "phase".into()], json!("Active"));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn default_service(
        &mut self,
        t: &Target,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        let name = t
            .name
            .clone()
            .or_else(|| meta_str(obj, "name").map(str::to_string))
            .unwrap_or_default();
        let Some(Value::Object(spec)) = obj.get_mut("spec") else {
            return Err(ApiError::invalid(
                "",
                "Service",
                &name,
                "spec.ports",
                "Required value",
            ));
        };
        let ty = spec
            .entry("type")
            .or_insert_with(|| Value::from("ClusterIP"))
            .as_str()
            .unwrap_or("ClusterIP")
            .to_string();
        spec.entry("sessionAffinity")
            .or_insert_with(|| Value::from("None"));
        if ty == "ExternalName" {
            return Ok(());
        }
        spec.entry("internalTrafficPolicy")
            .or_insert_with(|| Value::from("Cluster"));
        if ty == "LoadBalancer" || ty == "NodePort" {
            spec.entry("externalTrafficPolicy")
                .or_insert_with(|| Value::from("Cluster"));
        }
        if ty == "LoadBalancer" {
            spec.entry("allocateLoadBalancerNodePorts")
                .or_insert_with(|| Value::from(true));
        }
        // Allocated values survive updates that omit them (the apiserver's
        // patchAllocatedValues).
        let old_spec = old.and_then(|o| o.get("spec"));
        for k in [
            "clusterIP",
            "clusterIPs",
            "ipFamilies",
            "ipFamilyPolicy",
            "healthCheckNodePort",
        ] {
            if !spec.contains_key(k) {
                if let Some(v) = old_spec.and_then(|s| s.get(k)) {
                    spec.insert(k.into(), v.clone());
                }
            }
        }
        let families: Vec<String> = spec
            .get("ipFamilies")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .filter(|v: &Vec<String>| !v.is_empty())
            .unwrap_or_else(|| vec!["IPv4".into()]);
        let policy = spec
            .entry("ipFamilyPolicy")
            .or_insert_with(|| {
                Value::from(if families.len() > 1 {
                    "RequireDualStack"
                } else {
                    "SingleStack"
                })
            })
            .as_str()
            .unwrap_or("SingleStack")
            .to_string();
        let mut families = families;
        if policy != "SingleStack" && families.len() == 1 {
            families.push(if families.first().is_some_and(|f| f == "IPv6") {
                "IPv4".into()
            } else {
                "IPv6".into()
            });
        }
        spec.insert("ipFamilies".into(), json!(families));
        let cip = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if cip == "None" {
            spec.insert("clusterIPs".into(), json!(["None"]));
        } else if cip.is_empty() {
            let n = self.next_ip;
            self.next_ip += 1;
            let ips: Vec<String> = families
                .iter()
                .map(|f| {
                    if f == "IPv6" {
                        format!("fd00:10:96::{:x}", n)
                    } else {
                        let base: u32 = (10 << 24) | (96 << 16);
                        std::net::Ipv4Addr::from(base + (n & 0xf_ffff)).to_string()
                    }
                })
                .collect();
            spec.insert(
                "clusterIP".into(),
                json!(ips.first().cloned().unwrap_or_default()),
            );
            spec.insert("clusterIPs".into(), json!(ips));
        } else if !spec.contains_key("clusterIPs") {
            spec.insert("clusterIPs".into(), json!([cip]));
        }
        let needs_node_ports = ty == "NodePort"
            || (ty == "LoadBalancer"
                && spec.get("allocateLoadBalancerNodePorts") != Some(&Value::Bool(false)));
        let old_ports: Vec<Value> = old_spec
            .and_then(|s| s.get("ports"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(Value::Array(ports)) = spec.get_mut("ports") {
            for p in ports.iter_mut() {
                let Value::Object(p) = p else { continue };
                p.entry("protocol").or_insert_with(|| Value::from("TCP"));
                if let Some(port) = p.get("port").cloned() {
                    p.entry("targetPort").or_insert(port);
                }
                if needs_node_ports && !p.contains_key("nodePort") {
                    let same = old_ports.iter().find(|o| {
                        o.get("port") == p.get("port") && o.get("protocol") == p.get("protocol")
                    });
                    let np = match same.and_then(|o| o.get("nodePort")) {
                        Some(v) => v.clone(),
                        None => {
                            let v = self.next_node_port;
                            self.next_node_port = if v >= 32767 { 30000 } else { v + 1 };
                            Value::from(v)
                        }
                    };
                    p.insert("nodePort".into(), np);
                }
            }
        }
        if let Value::Object(m) = obj {
            let status = m.entry("status").or_insert_with(|| json!({}));
            if let Value::Object(s) = status {
                s.entry("loadBalancer").or_insert_with(|| json!({}));
            }
        }
        Ok(())
    }
}

/// kube-apiserver's strict validation of Events written through
/// `events.k8s.io/v1` (`pkg/apis/core/validation/events.go`:
/// `ValidateEventCreate`, `ValidateEventUpdate`), on the stored core form
/// (field names as core/v1 has them, reported as events.k8s.io/v1 names them).
fn validate_event_v1(t: &Target, old: Option<&Value>, new: &Value) -> Result<(), ApiError> {
    if t.def.conversion != crate::resource::Conversion::EventsV1 {
        return Ok(());
    }
    let name = meta_str(new, "name").unwrap_or("");
    let invalid = |field: &str, detail: String| {
        Err(ApiError::invalid(
            "events.k8s.io",
            "Event",
            name,
            field,
            &detail,
        ))
    };
    let text = |k: &str| new.get(k).and_then(Value::as_str).unwrap_or("");
    let set = |k: &str| new.get(k).is_some_and(|v| !v.is_null());
    let series_ok = |v: &Value| -> Result<(), ApiError> {
        let Some(series) = v.get("series").filter(|s| !s.is_null()) else {
            return Ok(());
        };
        if series.get("count").and_then(Value::as_i64).unwrap_or(0) < 2 {
            return invalid(
                "series.count",
                "Invalid value: \"\": should be at least 2".into(),
            );
        }
        if series
            .get("lastObservedTime")
            .is_none_or(|t| t.as_str().unwrap_or("").is_empty())
        {
            return invalid("series.lastObservedTime", "Required value".into());
        }
        Ok(())
    };
    match old {
        None => {
            if !set("eventTime") {
                return invalid("eventTime", "Required value".into());
            }
            if !matches!(text("type"), "Normal" | "Warning") {
                return invalid(
                    "type",
                    format!("Invalid value: \"\": has invalid value: {}", text("type")),
                );
            }
            for (stored, served) in [
                ("firstTimestamp", "deprecatedFirstTimestamp"),
                ("lastTimestamp", "deprecatedLastTimestamp"),
            ] {
                if set(stored) {
                    return invalid(served, "Invalid value: \"\": needs to be unset".into());
                }
            }
            if new.get("count").and_then(Value::as_i64).unwrap_or(0) != 0 {
                return invalid(
                    "deprecatedCount",
                    "Invalid value: \"\": needs to be unset".into(),
                );
            }
            let source = new.get("source");
            let source_set = ["component", "host"].iter().any(|k| {
                source
                    .and_then(|s| s.get(*k))
                    .and_then(Value::as_str)
                    .is_some_and(|v| !v.is_empty())
            });
            if source_set {
                return invalid(
                    "deprecatedSource",
                    "Invalid value: \"\": needs to be unset".into(),
                );
            }
            let involved_ns = new
                .get("involvedObject")
                .and_then(|o| o.get("namespace"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let ns = meta_str(new, "namespace").unwrap_or("");
            if involved_ns.is_empty() && ns != "default" && ns != "kube-system" {
                return invalid(
                    "involvedObject.namespace",
                    "Invalid value: \"\": does not match event.namespace".into(),
                );
            }
            let controller = text("reportingComponent");
            if controller.is_empty() {
                return invalid("reportingController", "Required value".into());
            }
            if !crate::text::is_qualified_name(controller) {
                return invalid(
                    "reportingController",
                    format!("Invalid value: {controller:?}: must be a qualified name"),
                );
            }
            for (field, served, limit) in [
                ("reportingInstance", "reportingInstance", 128),
                ("action", "action", 128),
                ("reason", "reason", 128),
            ] {
                let v = text(field);
                if v.is_empty() {
                    return invalid(served, "Required value".into());
                }
                if v.len() > limit {
                    return invalid(
                        served,
                        format!("Invalid value: \"\": can have at most {limit} characters"),
                    );
                }
            }
            if text("message").len() > 1024 {
                return invalid(
                    "note",
                    "Invalid value: \"\": can have at most 1024 characters".into(),
                );
            }
            series_ok(new)
        }
        Some(old) => {
            if old.get("series") != new.get("series") {
                series_ok(new)?;
            }
            for (stored, served) in [
                ("involvedObject", "regarding"),
                ("reason", "reason"),
                ("message", "note"),
                ("related", "related"),
                ("reportingComponent", "reportingController"),
                ("action", "action"),
                ("reportingInstance", "reportingInstance"),
                ("type", "type"),
                ("eventTime", "eventTime"),
            ] {
                if old.get(stored) != new.get(stored) {
                    return invalid(served, "Invalid value: field is immutable".into());
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        Store::new(1000)
    }

    fn target(
        s: &Store,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: Option<&str>,
    ) -> Target {
        let (def, version) = s.lock().registry.by_kind(api_version, kind).unwrap();
        Target {
            def,
            version,
            namespace: ns.map(str::to_string),
            name: name.map(str::to_string),
            subresource: None,
        }
    }

    fn opts(manager: &str) -> WriteOpts {
        WriteOpts {
            manager: manager.into(),
            ..Default::default()
        }
    }

    fn cm(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}, "data": {"k": "v"}})
    }

    fn list_json(s: &Store, t: &Target, o: &ListOpts) -> Value {
        serde_json::from_slice(&s.list(t, o).unwrap()).unwrap()
    }

    #[test]
    fn noop_update_keeps_resource_version_and_emits_nothing() {
        let s = store();
        let created = s.create_object(cm("a"), "t").unwrap();
        let rv = s.resource_version();
        let t = target(&s, "v1", "ConfigMap", Some("default"), Some("a"));
        let same = s.update(&t, created.clone(), &opts("t")).unwrap();
        assert_eq!(
            same["metadata"]["resourceVersion"],
            created["metadata"]["resourceVersion"]
        );
        assert_eq!(s.resource_version(), rv);
        assert!(s.events_since(rv, 10).unwrap().is_empty());
        let mut changed = created.clone();
        changed["data"]["k"] = json!("w");
        s.update(&t, changed, &opts("t")).unwrap();
        let evs = s.events_since(rv, 10).unwrap();
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].kind, EventType::Modified);
        assert_eq!(evs[0].prev.as_ref().unwrap()["data"]["k"], "v");
    }

    #[test]
    fn exact_list_and_continue_reconstruct_snapshots() {
        let s = store();
        for n in ["a", "b", "c", "d"] {
            s.create_object(cm(n), "t").unwrap();
        }
        let snap = s.resource_version();
        let t = target(&s, "v1", "ConfigMap", Some("default"), None);
        let first = list_json(
            &s,
            &t,
            &ListOpts {
                limit: Some(2),
                ..Default::default()
            },
        );
        assert_eq!(first["items"].as_array().unwrap().len(), 2);
        assert!(
            first["items"][0].get("kind").is_none(),
            "built-in list items carry no kind"
        );
        let token = first["metadata"]["continue"].as_str().unwrap().to_string();
        // Changes after the snapshot: delete c, add bb, modify d.
        let one = |n: &str| target(&s, "v1", "ConfigMap", Some("default"), Some(n));
        s.delete(&one("c"), None, None, false).unwrap();
        s.create_object(cm("bb"), "t").unwrap();
        let mut d = s.get(&one("d")).unwrap();
        d["data"]["k"] = json!("new");
        s.update(&one("d"), d, &opts("t")).unwrap();
        let rest = list_json(
            &s,
            &t,
            &ListOpts {
                continue_token: Some(token.clone()),
                ..Default::default()
            },
        );
        let names: Vec<&str> = rest["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["c", "d"]);
        assert_eq!(rest["items"][1]["data"]["k"], "v");
        assert!(rest["metadata"].get("continue").is_none());
        let exact = list_json(
            &s,
            &t,
            &ListOpts {
                resource_version: Some(snap.to_string()),
                rv_match: Some("Exact".into()),
                ..Default::default()
            },
        );
        assert_eq!(exact["items"].as_array().unwrap().len(), 4);
        assert_eq!(exact["metadata"]["resourceVersion"], snap.to_string());
        let now = list_json(&s, &t, &ListOpts::default());
        assert_eq!(now["items"].as_array().unwrap().len(), 4);
        s.compact();
        let err = s
            .list(
                &t,
                &ListOpts {
                    continue_token: Some(token),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert_eq!((err.code, err.reason), (410, "Expired"));
        let err = s
            .list(
                &t,
                &ListOpts {
                    resource_version: Some(snap.to_string()),
                    rv_match: Some("Exact".into()),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert_eq!(err.code, 410);
        assert!(s
            .list(
                &t,
                &ListOpts {
                    continue_token: Some("garbage!".into()),
                    ..Default::default()
                }
            )
            .is_err());
    }

    #[test]
    fn history_window_bounds_watches() {
        let s = Store::new(3);
        let start = s.resource_version();
        for n in ["a", "b", "c", "d", "e"] {
            s.create_object(cm(n), "t").unwrap();
        }
        let t = target(&s, "v1", "ConfigMap", Some("default"), None);
        let w = |rv: u64| WatchOpts {
            resource_version: Some(rv.to_string()),
            ..Default::default()
        };
        assert_eq!(
            s.watch_start(&t, &w(start)).err().map(|e| e.code),
            Some(410)
        );
        let recent = s.resource_version() - 3;
        assert!(s.watch_start(&t, &w(recent)).is_ok());
        assert_eq!(s.events_since(recent, 100).unwrap().len(), 3);
        assert!(s.events_since(recent - 1, 100).is_err());
        let init = s.watch_start(&t, &WatchOpts::default()).unwrap();
        assert_eq!(init.initial.len(), 5);
        assert_eq!(init.from_rv, s.resource_version());
        let none = s
            .watch_start(
                &t,
                &WatchOpts {
                    no_initial_events: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(none.initial.is_empty());
    }

    #[test]
    fn apply_shares_equal_values_conflicts_on_different_ones() {
        let s = store();
        let t = target(&s, "v1", "ConfigMap", Some("default"), Some("a"));
        let cfg = |v: &str| {
            serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": v}})).unwrap()
        };
        let (_, created) = s
            .patch(&t, PatchType::Apply, &cfg("1"), &opts("one"))
            .unwrap();
        assert!(created);
        // Same value from another manager: shared ownership, no conflict.
        s.patch(&t, PatchType::Apply, &cfg("1"), &opts("two"))
            .unwrap();
        let err = s
            .patch(&t, PatchType::Apply, &cfg("2"), &opts("two"))
            .unwrap_err();
        assert_eq!(err.code, 409);
        assert!(
            err.message.contains("conflict with \"one\": .data.k"),
            "{}",
            err.message
        );
        let forced = WriteOpts {
            force: true,
            ..opts("two")
        };
        let (v, _) = s.patch(&t, PatchType::Apply, &cfg("2"), &forced).unwrap();
        assert_eq!(v["data"]["k"], "2");
        let managers: Vec<&str> = v["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(
            managers,
            vec!["two"],
            "the forced field left manager one with nothing"
        );
    }

    #[test]
    fn service_defaults_and_status_rules() {
        let s = store();
        let created = s
            .create_object(
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                       "spec": {"type": "LoadBalancer", "ipFamilyPolicy": "PreferDualStack", "ports": [{"port": 80}]},
                       "status": {"loadBalancer": {"ingress": [{"ip": "1.1.1.1"}]}}}),
                "t",
            )
            .unwrap();
        assert_eq!(
            created["status"],
            json!({"loadBalancer": {}}),
            "status dropped on create"
        );
        assert_eq!(created["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
        assert_eq!(created["spec"]["clusterIPs"].as_array().unwrap().len(), 2);
        assert_eq!(created["spec"]["ports"][0]["targetPort"], 80);
        assert!(created.get("metadata").unwrap().get("generation").is_none());
        let node_port = created["spec"]["ports"][0]["nodePort"].clone();
        // A PUT that omits the allocations keeps them.
        let t = target(&s, "v1", "Service", Some("default"), Some("web"));
        let mut put = created.clone();
        put["spec"] = json!({"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]});
        put["status"] = json!({"loadBalancer": {"ingress": [{"ip": "2.2.2.2"}]}});
        let updated = s.update(&t, put, &opts("t")).unwrap();
        assert_eq!(updated["spec"]["clusterIP"], created["spec"]["clusterIP"]);
        assert_eq!(updated["spec"]["ports"][0]["nodePort"], node_port);
        assert_eq!(
            updated["status"],
            json!({"loadBalancer": {}}),
            "main PUT keeps status"
        );
        let mut st = updated.clone();
        st["status"] = json!({"loadBalancer": {"ingress": [{"ip": "3.3.3.3"}]}});
        st["spec"]["type"] = json!("ClusterIP");
        let ts = Target {
            subresource: Some("status".into()),
            ..t.clone()
        };
        let w = s.update(&ts, st, &opts("t")).unwrap();
        assert_eq!(w["spec"]["type"], "LoadBalancer", "status PUT keeps spec");
        assert_eq!(w["status"]["loadBalancer"]["ingress"][0]["ip"], "3.3.3.3");
        // Stale update.
        let err = s.update(&t, updated, &opts("t")).unwrap_err();
        assert_eq!((err.code, err.reason), (409, "Conflict"));
    }

    #[test]
    fn generate_name_dry_run_and_namespace_checks() {
        let s = store();
        let t = target(&s, "v1", "ConfigMap", Some("default"), None);
        let v = s
            .create(&t, json!({"metadata": {"generateName": "x-"}}), &opts("t"))
            .unwrap();
        let name = v["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("x-") && name.len() == 7, "{name}");
        let rv = s.resource_version();
        let dry = WriteOpts {
            dry_run: true,
            ..opts("t")
        };
        s.create(&t, cm("dry"), &dry).unwrap();
        assert_eq!(s.resource_version(), rv);
        let other = Target {
            namespace: Some("elsewhere".into()),
            ..t.clone()
        };
        assert_eq!(
            s.create(&other, cm("a"), &opts("t")).unwrap_err().code,
            400,
            "namespace mismatch"
        );
        let mut body = cm("a");
        body["metadata"]["namespace"] = json!("elsewhere");
        assert_eq!(
            s.create(&other, body, &opts("t")).unwrap_err().code,
            404,
            "no such namespace"
        );
        let mut wrong = cm("b");
        wrong["apiVersion"] = json!("v2");
        assert_eq!(s.create(&t, wrong, &opts("t")).unwrap_err().code, 400);
        assert_eq!(s.create(&t, json!([1]), &opts("t")).unwrap_err().code, 400);
    }
}
