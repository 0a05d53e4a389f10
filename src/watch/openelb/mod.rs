//! OpenELB-compatible configuration objects: `Eip`, `BgpConf` and
//! `BgpPeer` (`network.kubesphere.io`, cluster-scoped, read as `v1alpha2`;
//! objects written as `v1alpha1` come through the CRD's served versions).
//!
//! ```text
//!  watch eips ─┐
//!  watch bgpconfs ─┼─► this task ── merge(file, objects) ──► Input::Pools ─► engine
//!  watch bgppeers ─┘      ▲   │                         └─► watch<EffectiveBgp> ─► BGP owner task
//!  SIGHUP (file) ─────────┘   └─► status (Eips: lease holder only; BgpPeers: each
//!  engine Service states ─────────►   gateway its own nodesPeerStatus entry), Events
//! ```
//!
//! The merge result is the BGP configuration: this task publishes it into
//! the channel the BGP owner task (`src/bgp/task.rs`) reads, and reads the
//! peers' status back from its [`StatusBoard`]. The merge, the Eip → pool
//! conversion and the status contents are pure ([`merge`], [`eip`],
//! [`peer`]); this file does the I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event as KEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::bgp::{EffectiveBgp, StatusBoard};
use crate::config::{BgpConfig, Config};
use crate::engine::{Input, ServiceState};
use crate::model::Pool;

pub mod eip;
pub mod merge;
pub mod peer;

use merge::{Merged, Verdict};

pub const GROUP: &str = "network.kubesphere.io";
/// The version pier reads (OpenELB's storage version).
pub const VERSION: &str = "v1alpha2";

/// The three kinds: (kind, plural).
pub const KINDS: [(&str, &str); 3] = [
    ("Eip", "eips"),
    ("BgpConf", "bgpconfs"),
    ("BgpPeer", "bgppeers"),
];

pub fn api_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// One object as pier keeps it (no managedFields).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OpenElbObject {
    pub name: String,
    pub uid: Option<String>,
    /// creationTimestamp (RFC 3339 sorts as time).
    pub created: String,
    pub annotations: BTreeMap<String, String>,
    pub spec: Value,
    pub status: Value,
}

impl OpenElbObject {
    pub fn new(name: &str, spec: Value) -> OpenElbObject {
        OpenElbObject {
            name: name.into(),
            spec,
            ..Default::default()
        }
    }

    fn from_dynamic(o: &DynamicObject) -> Option<OpenElbObject> {
        Some(OpenElbObject {
            name: o.metadata.name.clone()?,
            uid: o.metadata.uid.clone(),
            created: o
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
            annotations: o.metadata.annotations.clone().unwrap_or_default(),
            spec: o.data.get("spec").cloned().unwrap_or(Value::Null),
            status: o.data.get("status").cloned().unwrap_or(Value::Null),
        })
    }
}

/// A JSON merge patch (RFC 7386) turning `old` into `new`: keys `old` has
/// and `new` lacks become `null`.
pub fn merge_diff(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut out = serde_json::Map::new();
            for (k, nv) in n {
                match o.get(k) {
                    Some(ov) if ov == nv => {}
                    Some(ov) => {
                        out.insert(k.clone(), merge_diff(ov, nv));
                    }
                    None => {
                        out.insert(k.clone(), nv.clone());
                    }
                }
            }
            for k in o.keys() {
                if !n.contains_key(k) {
                    out.insert(k.clone(), Value::Null);
                }
            }
            Value::Object(out)
        }
        _ => new.clone(),
    }
}

/// What the merge task is given (by `src/daemon.rs`).
pub struct OpenElbSpawn {
    pub client: Client,
    pub file: Config,
    pub engine: mpsc::Sender<Input>,
    pub states: watch::Receiver<Arc<Vec<ServiceState>>>,
    pub leader: watch::Receiver<bool>,
    /// Where the merged BGP settings go (the BGP owner task reads them).
    pub bgp: watch::Sender<Option<EffectiveBgp>>,
    /// The speaker's peers, for BgpPeer `status.nodesPeerStatus`.
    pub board: StatusBoard,
    /// Fired once the first merged pools are with the engine: Services
    /// are not allocated before (an IP of an Eip must not look foreign).
    pub pools_sent: oneshot::Sender<()>,
    /// This gateway's name in BgpPeer `status.nodesPeerStatus`.
    pub gateway: String,
    /// Event reporter instance (the lease identity).
    pub instance: String,
}

/// The running merge task.
pub struct OpenElbTask {
    reload: mpsc::UnboundedSender<Config>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl OpenElbTask {
    /// A reloaded config file (SIGHUP): merged again with the objects.
    pub fn reload(&self, cfg: Config) {
        let _ = self.reload.send(cfg);
    }

    /// Stop, and wait for the task.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// The gateway name: the host name.
pub fn gateway_name() -> String {
    let id = super::lease::identity();
    match id.rsplit_once('_') {
        Some((host, _pid)) => host.to_string(),
        None => id,
    }
}

pub fn spawn(ctx: OpenElbSpawn) -> OpenElbTask {
    let (reload, reload_rx) = mpsc::unbounded_channel();
    let (stop, stop_rx) = oneshot::channel();
    let task = tokio::spawn(run(ctx, reload_rx, stop_rx));
    OpenElbTask { reload, stop, task }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Eip,
    Conf,
    Peer,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Eip => "Eip",
            Kind::Conf => "BgpConf",
            Kind::Peer => "BgpPeer",
        }
    }
    fn resource(self) -> ApiResource {
        let (k, p) = KINDS[self as usize];
        api_resource(k, p)
    }
}

/// The objects of one kind as the watch last listed them, absorbing relists.
#[derive(Default)]
struct ObjectCache {
    objects: BTreeMap<String, OpenElbObject>,
    relist: Option<BTreeMap<String, OpenElbObject>>,
    synced: bool,
}

impl ObjectCache {
    /// Apply one watch event; true when the objects changed.
    fn apply(&mut self, ev: Event<DynamicObject>) -> bool {
        match ev {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(o) => {
                if let (Some(r), Some(o)) = (self.relist.as_mut(), OpenElbObject::from_dynamic(&o))
                {
                    r.insert(o.name.clone(), o);
                }
                false
            }
            Event::InitDone => {
                let next = self.relist.take().unwrap_or_default();
                let changed = next != self.objects || !self.synced;
                self.objects = next;
                self.synced = true;
                changed
            }
            Event::Apply(o) => match OpenElbObject::from_dynamic(&o) {
                Some(o) => self.objects.insert(o.name.clone(), o.clone()) != Some(o),
                None => false,
            },
            Event::Delete(o) => o
                .metadata
                .name
                .as_ref()
                .is_some_and(|n| self.objects.remove(n).is_some()),
        }
    }
}

type Tagged = (Kind, Result<Event<DynamicObject>, watcher::Error>);

fn stream(client: &Client, kind: Kind) -> impl Stream<Item = Tagged> + Send + 'static {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.resource());
    watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |ev| (kind, ev))
}

type AppliedBgp = (
    Option<BgpConfig>,
    Option<Ipv4Addr>,
    BTreeMap<PathBuf, String>,
);

/// The merge task's state: the objects, what was merged, sent and written.
struct Reconciler {
    client: Client,
    file: Config,
    /// The merged BGP settings go here; the BGP owner task applies them.
    bgp: watch::Sender<Option<EffectiveBgp>>,
    engine: mpsc::Sender<Input>,
    caches: [ObjectCache; 3],
    merged: Merged,
    /// Pools last sent to the engine, and BGP config last applied.
    sent_pools: Option<Vec<Pool>>,
    /// With the passwords: a new password (same file) restarts the session.
    applied_bgp: Option<AppliedBgp>,
    /// Accepted Eips' pools as last merged, and deleted ones still in use.
    eip_pools: BTreeMap<String, Pool>,
    draining: BTreeMap<String, Pool>,
    routes: BTreeMap<IpAddr, Result<String, String>>,
    /// Conflicts already reported (reported again only after going away).
    reported: BTreeSet<merge::Conflict>,
    /// Status last written per (kind, name) with the status seen then: not
    /// written again until the watch shows a different status.
    written: BTreeMap<(Kind, String), (Value, Value)>,
    board: StatusBoard,
    recorder: Recorder,
    gateway: String,
    password_dir: PathBuf,
}

async fn run(
    ctx: OpenElbSpawn,
    mut reload: mpsc::UnboundedReceiver<Config>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut streams = futures::stream::select_all([
        stream(&ctx.client, Kind::Eip).boxed(),
        stream(&ctx.client, Kind::Conf).boxed(),
        stream(&ctx.client, Kind::Peer).boxed(),
    ]);
    let mut t = Reconciler {
        recorder: Recorder::new(
            ctx.client.clone(),
            Reporter {
                controller: "pier".into(),
                instance: Some(ctx.instance.clone()),
            },
        ),
        password_dir: ctx.file.gateway.state_dir.join("openelb-peers"),
        client: ctx.client,
        file: ctx.file,
        bgp: ctx.bgp,
        engine: ctx.engine,
        caches: Default::default(),
        merged: Merged::default(),
        sent_pools: None,
        applied_bgp: None,
        eip_pools: BTreeMap::new(),
        draining: BTreeMap::new(),
        routes: BTreeMap::new(),
        reported: BTreeSet::new(),
        written: BTreeMap::new(),
        board: ctx.board,
        gateway: ctx.gateway,
    };
    let mut states = ctx.states;
    let mut leader = ctx.leader;
    let mut pools_sent = Some(ctx.pools_sent);
    let (mut states_open, mut leader_open) = (true, true);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut dirty = false;
        tokio::select! {
            ev = streams.next() => {
                let Some((kind, ev)) = ev else { break };
                match ev {
                    Ok(ev) => dirty = t.caches[kind as usize].apply(ev),
                    Err(e) => warn!(
                        kind = kind.name(),
                        error = %e,
                        "cannot watch {}.{GROUP} (are packaging/crds/ applied and RBAC granted?); retrying",
                        KINDS[kind as usize].1
                    ),
                }
            }
            cfg = reload.recv() => {
                let Some(cfg) = cfg else { break };
                t.file = cfg;
                dirty = true;
            }
            r = states.changed(), if states_open => states_open = r.is_ok(),
            r = leader.changed(), if leader_open => leader_open = r.is_ok(),
            _ = tick.tick() => {}
            _ = &mut stop => break,
        }
        if !t.caches.iter().all(|s| s.synced) {
            continue;
        }
        let states_now = states.borrow_and_update().clone();
        // Eips deleted (or broken) while Services hold their IPs stay
        // until those let go; newer definitions win over draining ones.
        let used = merge::used_by_pool(&t.merged.pools, &states_now);
        let previous: BTreeMap<String, Pool> = t
            .draining
            .clone()
            .into_iter()
            .chain(t.eip_pools.clone())
            .collect();
        let draining = merge::still_draining(&previous, &used);
        // Only pools the merge would use (their Eip is not accepted) matter.
        let in_effect = |d: &BTreeMap<String, Pool>| -> Vec<String> {
            d.keys()
                .filter(|n| !t.eip_pools.contains_key(*n))
                .cloned()
                .collect()
        };
        if in_effect(&draining) != in_effect(&t.draining) {
            dirty = true;
        }
        t.draining = draining;
        if dirty || pools_sent.is_some() {
            // A stop must not wait for an API call hanging in an outage.
            tokio::select! {
                _ = t.apply() => {}
                _ = &mut stop => break,
            }
            if let Some(tx) = pools_sent.take() {
                info!(
                    pools = t.merged.pools.len(),
                    eips = t.caches[Kind::Eip as usize].objects.len(),
                    "pools from the config file and Eips sent"
                );
                let _ = tx.send(());
            }
        }
        let used = merge::used_by_pool(&t.merged.pools, &states_now);
        let is_leader = *leader.borrow_and_update();
        tokio::select! {
            _ = t.write_statuses(&used, is_leader) => {}
            _ = &mut stop => break,
        }
    }
}

/// `ip -o route get <IP>`: the interface the gateway reaches `ip` through.
async fn route_device(ip: IpAddr) -> Result<String, String> {
    let out = tokio::process::Command::new("ip")
        .args(["-o", "route", "get", &ip.to_string()])
        .output()
        .await
        .map_err(|e| format!("cannot run `ip route get {ip}`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "no route to {ip}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    eip::route_get_device(&text)
        .ok_or_else(|| format!("`ip route get {ip}` names no device: {text}"))
}

fn write_password(path: &Path, password: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if std::fs::read_to_string(path).is_ok_and(|t| t == password) {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(password.as_bytes())
}

impl Reconciler {
    /// Merge again and hand what changed to the engine and the speaker.
    async fn apply(&mut self) {
        // Look up every `can_reach:` interface (the route may have moved).
        let mut routes = BTreeMap::new();
        for o in self.caches[Kind::Eip as usize].objects.values() {
            let Ok(spec) = serde_json::from_value::<eip::EipSpec>(o.spec.clone()) else {
                continue;
            };
            if let Some(Ok(ip)) = eip::can_reach(&spec) {
                if let std::collections::btree_map::Entry::Vacant(e) = routes.entry(ip) {
                    e.insert(route_device(ip).await);
                }
            }
        }
        self.routes = routes;
        let merged = merge::merge(
            merge::File {
                pools: &self.file.pools,
                bgp: self.file.bgp.as_ref(),
                router_id: self.file.gateway.router_id,
            },
            merge::Cluster {
                eips: &self.caches[Kind::Eip as usize].objects,
                confs: &self.caches[Kind::Conf as usize].objects,
                peers: &self.caches[Kind::Peer as usize].objects,
                draining: &self.draining,
                routes: &self.routes,
                password_dir: &self.password_dir,
            },
        );
        for (name, v) in &merged.eips {
            if let Verdict::Refused { reason, message } = v {
                if self.merged.eips.get(name) != Some(v) {
                    warn!(eip = %name, reason, "Eip not used: {message}");
                }
            }
        }
        // Conflicts: once each (log + Event), again only after going away.
        let now: BTreeSet<merge::Conflict> = merged.conflicts.iter().cloned().collect();
        for c in now.difference(&self.reported) {
            warn!(kind = c.kind, name = %c.name, "conflict with the config file: {}", c.message);
            let kind = match c.kind {
                "Eip" => Kind::Eip,
                "BgpConf" => Kind::Conf,
                _ => Kind::Peer,
            };
            self.event(
                kind,
                &c.name,
                EventType::Warning,
                "ConfigConflict",
                &c.message,
            )
            .await;
        }
        self.reported = now;
        for (path, pw) in &merged.passwords {
            if let Err(e) = write_password(path, pw) {
                warn!(path = %path.display(), error = %e, "cannot write a BgpPeer's password file");
            }
        }
        if self.sent_pools.as_ref() != Some(&merged.pools) {
            info!(
                pools = merged.pools.len(),
                "pools changed (config file + Eips): applying"
            );
            if self
                .engine
                .send(Input::Pools(merged.pools.clone()))
                .await
                .is_err()
            {
                return;
            }
            self.sent_pools = Some(merged.pools.clone());
        }
        let bgp = (
            merged.bgp.clone(),
            merged.router_id,
            merged.passwords.clone(),
        );
        if self.applied_bgp.as_ref() != Some(&bgp) {
            // A new password (same file) must reach the speaker too: publish
            // even when the settings compare equal.
            let router_id = bgp.1.unwrap_or(self.file.gateway.router_id);
            self.bgp
                .send_replace(bgp.0.clone().map(|bgp| EffectiveBgp { bgp, router_id }));
            self.applied_bgp = Some(bgp);
        }
        self.eip_pools = merge::eip_pools(&merged);
        self.merged = merged;
    }

    async fn event(&self, kind: Kind, name: &str, type_: EventType, reason: &str, note: &str) {
        let obj = self.caches[kind as usize].objects.get(name);
        let reference = ObjectReference {
            api_version: Some(format!("{GROUP}/{VERSION}")),
            kind: Some(kind.name().into()),
            name: Some(name.into()),
            uid: obj.and_then(|o| o.uid.clone()),
            ..Default::default()
        };
        let ev = KEvent {
            type_,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Configure".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            warn!(kind = kind.name(), name, error = %super::explain(&e), "cannot record Event");
        }
    }

    /// Write the status of every object whose status differs from what
    /// pier wants (Eips and the BgpConf: the lease holder only; BgpPeers:
    /// each gateway its own `nodesPeerStatus` entry).
    async fn write_statuses(
        &mut self,
        used: &BTreeMap<String, BTreeMap<IpAddr, Vec<crate::model::ServiceKey>>>,
        leader: bool,
    ) {
        let mut wanted: Vec<(Kind, String, Value, Value)> = Vec::new();
        if leader {
            for (name, o) in &self.caches[Kind::Eip as usize].objects {
                let verdict = self.merged.eips.get(name);
                let st = match verdict {
                    Some(Verdict::Accepted { notes }) => {
                        eip::status(&o.spec, used.get(name), Ok(notes), "")
                    }
                    Some(Verdict::Refused { reason, message }) => {
                        // An invalid Eip may still serve its Services with
                        // its last good definition (draining): show them.
                        let used = (*reason == "Invalid").then(|| used.get(name)).flatten();
                        eip::status(&o.spec, used, Err(message), reason)
                    }
                    None => continue,
                };
                let new = serde_json::to_value(st).unwrap_or_default();
                wanted.push((Kind::Eip, name.clone(), o.status.clone(), new));
            }
            for (name, o) in &self.caches[Kind::Conf as usize].objects {
                let mut conds = conditions(self.merged.confs.get(name));
                if let (Some(note), true) = (self.board.note(), name == "default") {
                    conds.push(eip::Condition::new("Speaker", false, "NotApplied", note));
                }
                let new = json!({"conditions": conds});
                let cur =
                    json!({"conditions": o.status.get("conditions").cloned().unwrap_or(json!([]))});
                wanted.push((Kind::Conf, name.clone(), cur, new));
            }
        }
        let board: BTreeMap<IpAddr, peer::NodePeerStatus> =
            peer::by_address(&self.board.snapshot());
        for (name, o) in &self.caches[Kind::Peer as usize].objects {
            let mine = self
                .merged
                .peer_addresses
                .get(name)
                .and_then(|a| board.get(a))
                .map(|s| serde_json::to_value(s).unwrap_or_default())
                .unwrap_or(Value::Null);
            let conds = conditions(self.merged.peers.get(name));
            let cur_mine = o
                .status
                .get("nodesPeerStatus")
                .and_then(|m| m.get(&self.gateway))
                .cloned()
                .unwrap_or(Value::Null);
            let cur = json!({
                "nodesPeerStatus": {&self.gateway: cur_mine},
                "conditions": o.status.get("conditions").cloned().unwrap_or(json!([])),
            });
            let new = json!({"nodesPeerStatus": {&self.gateway: mine}, "conditions": conds});
            wanted.push((Kind::Peer, name.clone(), cur, new));
        }
        for (kind, name, cur, new) in wanted {
            let key = (kind, name.clone());
            if nulls_equal(&cur, &new) {
                self.written.remove(&key);
                continue;
            }
            if self.written.get(&key) == Some(&(new.clone(), cur.clone())) {
                continue; // written; the watch has not shown it yet
            }
            let diff = if kind == Kind::Eip {
                merge_diff(&cur, &new)
            } else {
                new.clone()
            };
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &kind.resource());
            match api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": diff})),
                )
                .await
            {
                Ok(_) => {
                    debug!(kind = kind.name(), name = %name, "status written");
                    self.written.insert(key, (new, cur));
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    warn!(kind = kind.name(), name = %name, error = %super::explain(&e), "cannot write status; retrying");
                }
            }
        }
    }
}

/// `a` equals `b` once `null` entries are dropped (a merge patch's `null`
/// removes the key).
fn nulls_equal(a: &Value, b: &Value) -> bool {
    fn strip(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), strip(v)))
                    .filter(|(_, v)| !matches!(v, Value::Object(m) if m.is_empty()))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    strip(a) == strip(b)
}

fn conditions(v: Option<&Verdict>) -> Vec<eip::Condition> {
    match v {
        Some(Verdict::Accepted { notes }) => {
            let mut c = vec![eip::Condition::new(
                "Accepted",
                true,
                "Accepted",
                "used by pier",
            )];
            if !notes.is_empty() {
                c.push(eip::Condition::new(
                    "Unsupported",
                    true,
                    "FieldsIgnored",
                    format!("pier does not honour: {}", notes.join(", ")),
                ));
            }
            c
        }
        Some(Verdict::Refused { reason, message }) => {
            vec![eip::Condition::new(
                "Accepted",
                false,
                reason,
                message.clone(),
            )]
        }
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_diff_nulls_removed_keys() {
        let old =
            json!({"used": {"10.0.0.1": "a/x", "10.0.0.2": "a/y"}, "usage": 2, "ready": true});
        let new = json!({"used": {"10.0.0.1": "a/x"}, "usage": 1, "ready": true});
        assert_eq!(
            merge_diff(&old, &new),
            json!({"used": {"10.0.0.2": null}, "usage": 1})
        );
        assert_eq!(merge_diff(&Value::Null, &new), new);
    }

    #[test]
    fn relists_replace_the_store() {
        let obj = |name: &str| {
            let mut o = DynamicObject::new(name, &api_resource("Eip", "eips"));
            o.data = json!({"spec": {"address": "10.0.0.1"}});
            o
        };
        let mut s = ObjectCache::default();
        assert!(!s.apply(Event::Init));
        assert!(!s.apply(Event::InitApply(obj("a"))));
        assert!(s.apply(Event::InitDone));
        assert!(!s.apply(Event::Apply(obj("a"))));
        assert!(s.apply(Event::Apply(obj("b"))));
        s.apply(Event::Init);
        s.apply(Event::InitApply(obj("b")));
        assert!(s.apply(Event::InitDone));
        assert_eq!(s.objects.keys().collect::<Vec<_>>(), vec!["b"]);
        assert!(s.apply(Event::Delete(obj("b"))));
        assert!(s.objects.is_empty());
    }

    #[test]
    fn restart_bit_within_the_restart_time_only() {
        use crate::bgp::task::restarting;
        let spec = json!({"as": 1, "gracefulRestart": {"enabled": true, "restartTime": 60}});
        let (mut b, _) = peer::conf(&spec).unwrap();
        assert!(restarting(&b, Some(Duration::from_secs(5))));
        assert!(!restarting(&b, Some(Duration::from_secs(61))));
        assert!(!restarting(&b, None));
        b.graceful_restart = false;
        assert!(!restarting(&b, Some(Duration::from_secs(5))));
    }

    #[test]
    fn nulls_do_not_count() {
        assert!(nulls_equal(
            &json!({"nodesPeerStatus": {"gw": null}, "conditions": []}),
            &json!({"nodesPeerStatus": {}, "conditions": []})
        ));
    }
}
