use super::*;
use crate::ipam::annotations;
use crate::model::{
    BgpAttributes, Family, IpRange, NextHopMode, PoolMode, PortSpec, Protocol, TrafficPolicy,
};
use crate::store::MemoryStore;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pool(name: &str, ranges: &[&str]) -> Pool {
    Pool {
        name: name.into(),
        ranges: ranges
            .iter()
            .map(|r| r.parse::<IpRange>().unwrap())
            .collect(),
        mode: PoolMode::Bgp,
        next_hop: NextHopMode::Nodes,
        interface: None,
        namespaces: vec![],
        namespace_selector: Default::default(),
        priority: 0,
        auto_assign: true,
        disabled: false,
        node_selector: Default::default(),
        bgp: BgpAttributes::default(),
    }
}

fn pools() -> Vec<Pool> {
    vec![pool("public", &["10.77.0.0/29", "fd77::/64"])]
}

fn settings(leader: bool) -> EngineSettings {
    EngineSettings {
        sources: [Origin::Kubernetes].into(),
        kube_proxy_port: 10256,
        leader,
    }
}

fn engine(store: &MemoryStore) -> Engine {
    Engine::new(Box::new(store.clone()), pools(), settings(true)).unwrap()
}

fn svc(name: &str) -> Service {
    let mut s = Service::new(ServiceKey::new("default", name));
    s.ports = vec![PortSpec {
        port: 80,
        protocol: Protocol::Tcp,
    }];
    s
}

fn node(name: &str, addr: &str) -> Node {
    Node {
        name: name.into(),
        ready: true,
        labels: Default::default(),
        internal_ips: vec![ip(addr)],
        external_ips: vec![],
    }
}

fn ips_of(e: &Engine, name: &str) -> Vec<IpAddr> {
    e.ipam()
        .allocations_of(&ServiceKey::new("default", name))
        .iter()
        .map(|a| a.ip)
        .collect()
}

fn vips(d: &Desired) -> Vec<IpAddr> {
    d.announcements.iter().map(|a| a.vip).collect()
}

#[test]
fn nothing_is_allocated_before_the_initial_list() {
    let store = MemoryStore::new();
    let mut e = engine(&store);
    let step = e.step(vec![
        Input::Node(node("n1", "10.0.0.1")),
        Input::Service(svc("web")),
    ]);
    assert!(step.desired.is_none() && step.events.is_empty());
    assert!(ips_of(&e, "web").is_empty());
    assert_eq!(store.batches(), 0);

    let step = e.step(vec![Input::Synced(Origin::Kubernetes)]);
    assert_eq!(ips_of(&e, "web"), [ip("10.77.0.0")]);
    let d = step.desired.expect("plan published");
    assert_eq!(vips(&d), [ip("10.77.0.0")]);
    assert_eq!(d.generation, 1);
    assert!(matches!(step.events[0], ServiceEvent::Allocated { .. }));
    assert_eq!(store.load().unwrap().len(), 1);
}

#[test]
fn restart_keeps_every_ip_whatever_the_order() {
    let store = MemoryStore::new();
    let mut e = engine(&store);
    let mut inputs: Vec<Input> = (0..5)
        .map(|i| Input::Service(svc(&format!("s{i}"))))
        .collect();
    inputs.push(Input::Synced(Origin::Kubernetes));
    e.step(inputs);
    let before: Vec<Vec<IpAddr>> = (0..5).map(|i| ips_of(&e, &format!("s{i}"))).collect();
    drop(e);

    let mut e = engine(&store);
    let mut inputs: Vec<Input> = (0..5)
        .rev()
        .map(|i| Input::Service(svc(&format!("s{i}"))))
        .collect();
    inputs.push(Input::Synced(Origin::Kubernetes));
    let step = e.step(inputs);
    let after: Vec<Vec<IpAddr>> = (0..5).map(|i| ips_of(&e, &format!("s{i}"))).collect();
    assert_eq!(before, after);
    assert!(
        !step
            .events
            .iter()
            .any(|e| matches!(e, ServiceEvent::Allocated { .. })),
        "restart must not allocate: {:?}",
        step.events
    );
}

#[test]
fn status_ips_are_adopted_before_allocating() {
    // The store was lost; the Services' status still has their IPs.
    let store = MemoryStore::new();
    let mut e = engine(&store);
    let mut a = svc("a");
    a.status_ips = vec![ip("10.77.0.5")];
    let mut b = svc("b");
    // Not in a pool (another controller's, e.g. OpenELB's): kept in the
    // status, not renumbered, reported (issue 16).
    b.status_ips = vec![ip("192.0.2.1")];
    let step = e.step(vec![
        Input::Service(svc("new")),
        Input::Service(a),
        Input::Service(b),
        Input::Synced(Origin::Kubernetes),
    ]);
    assert_eq!(ips_of(&e, "a"), [ip("10.77.0.5")]);
    assert!(ips_of(&e, "b").is_empty());
    assert!(step.events.iter().any(|ev| matches!(ev,
        ServiceEvent::Refused { service, reason: Refusal::StatusOutsidePools { .. } } if service.name == "b")));
    assert_eq!(ips_of(&e, "new"), [ip("10.77.0.0")]);
}

#[test]
fn conflicting_status_ip_is_reported_and_left_alone() {
    let store = MemoryStore::new();
    let mut e = engine(&store);
    let mut a = svc("a");
    a.status_ips = vec![ip("10.77.0.3")];
    let mut b = svc("b");
    b.status_ips = vec![ip("10.77.0.3")];
    let step = e.step(vec![
        Input::Service(a),
        Input::Service(b),
        Input::Synced(Origin::Kubernetes),
    ]);
    assert_eq!(ips_of(&e, "a"), [ip("10.77.0.3")]);
    assert!(step.events.iter().any(
        |ev| matches!(ev, ServiceEvent::AdoptConflict { service, .. } if service.name == "b")
    ));
    assert_ne!(ips_of(&e, "b"), [ip("10.77.0.3")]);
}

#[test]
fn deleted_service_is_released_and_withdrawn() {
    let store = MemoryStore::new();
    let mut e = engine(&store);
    e.step(vec![
        Input::Node(node("n1", "10.0.0.1")),
        Input::Service(svc("web")),
        Input::Synced(Origin::Kubernetes),
    ]);
    assert_eq!(vips(e.desired()), [ip("10.77.0.0")]);
    let step = e.step(vec![Input::ServiceGone(ServiceKey::new("default", "web"))]);
    assert!(
        matches!(&step.events[0], ServiceEvent::Released { ips, .. } if ips == &[ip("10.77.0.0")])
    );
    assert!(step.desired.unwrap().announcements.is_empty());
    assert!(store.load().unwrap().is_empty());
    // the IP is reusable
    e.step(vec![Input::Service(svc("other"))]);
    assert_eq!(ips_of(&e, "other"), [ip("10.77.0.0")]);
}

#[test]
fn refusal_is_reported_once() {
    let store = MemoryStore::new();
    let mut e = engine(&store);
    let mut s = svc("web");
    s.annotations
        .insert(annotations::IP.into(), "10.99.0.1".into());
    let step = e.step(vec![
        Input::Service(s.clone()),
        Input::Synced(Origin::Kubernetes),
    ]);
    assert_eq!(
        step.events
            .iter()
            .filter(|e| matches!(e, ServiceEvent::Refused { .. }))
            .count(),
        1
    );
    s.ports[0].port = 81; // another change, same reason
    let step = e.step(vec![Input::Service(s)]);
    assert!(step.events.is_empty(), "{:?}", step.events);
    let st = e.service_states();
    assert!(
        st[0].pending.as_deref().unwrap_or("").contains("10.99.0.1"),
        "{st:?}"
    );
}

#[test]
fn store_failure_publishes_nothing_and_retries() {
    let store = MemoryStore::new();
    let mut e = engine(&store);
    store.set_fail_writes(true);
    let step = e.step(vec![
        Input::Node(node("n1", "10.0.0.1")),
        Input::Service(svc("web")),
        Input::Synced(Origin::Kubernetes),
    ]);
    assert!(ips_of(&e, "web").is_empty(), "undone in memory");
    assert!(step
        .events
        .iter()
        .any(|e| matches!(e, ServiceEvent::StoreFailed { .. })));
    assert!(step
        .desired
        .map(|d| d.announcements.is_empty())
        .unwrap_or(true));
    store.set_fail_writes(false);
    let step = e.step(vec![]);
    assert_eq!(ips_of(&e, "web"), [ip("10.77.0.0")]);
    assert_eq!(vips(&step.desired.unwrap()), [ip("10.77.0.0")]);
}

#[test]
fn follower_mirrors_status_and_allocates_only_as_leader() {
    let store = MemoryStore::new();
    let mut e = Engine::new(Box::new(store.clone()), pools(), settings(false)).unwrap();
    let mut a = svc("a");
    a.status_ips = vec![ip("10.77.0.4")];
    e.step(vec![
        Input::Service(a.clone()),
        Input::Service(svc("b")),
        Input::Synced(Origin::Kubernetes),
    ]);
    assert_eq!(ips_of(&e, "a"), [ip("10.77.0.4")]);
    assert!(ips_of(&e, "b").is_empty(), "followers do not allocate");
    // the leader moved a's IP (e.g. the user changed its request)
    a.status_ips = vec![ip("10.77.0.6")];
    e.step(vec![Input::Service(a)]);
    assert_eq!(ips_of(&e, "a"), [ip("10.77.0.6")]);
    e.step(vec![Input::Leader(true)]);
    assert_eq!(ips_of(&e, "a"), [ip("10.77.0.6")]);
    assert_eq!(ips_of(&e, "b"), [ip("10.77.0.0")]);
}

#[test]
fn relist_changes_nothing_by_itself_and_drops_what_is_gone() {
    let store = MemoryStore::new();
    let mut e = engine(&store);
    e.step(vec![
        Input::Service(svc("a")),
        Input::Service(svc("b")),
        Input::Synced(Origin::Kubernetes),
    ]);
    let batches = store.batches();
    let step = e.step(vec![
        Input::Resync(Origin::Kubernetes),
        Input::Service(svc("a")),
        Input::Service(svc("b")),
        Input::Synced(Origin::Kubernetes),
    ]);
    assert!(step.events.is_empty() && step.desired.is_none());
    assert_eq!(store.batches(), batches);
    let step = e.step(vec![
        Input::Resync(Origin::Kubernetes),
        Input::Service(svc("a")),
        Input::Synced(Origin::Kubernetes),
    ]);
    assert!(
        matches!(&step.events[0], ServiceEvent::Released { service, .. } if service.name == "b")
    );
}

#[test]
fn node_and_health_changes_move_next_hops() {
    let store = MemoryStore::new();
    let mut e = engine(&store);
    let step = e.step(vec![
        Input::Node(node("n1", "10.0.0.1")),
        Input::Node(node("n2", "10.0.0.2")),
        Input::Service(svc("web")),
        Input::Synced(Origin::Kubernetes),
    ]);
    let targets = step.probe_targets.unwrap();
    assert_eq!(targets.len(), 2);
    let d = step.desired.unwrap();
    assert_eq!(d.announcements[0].next_hops.len(), 2);
    let mut h = HealthView::default();
    h.down.insert(targets.iter().next().unwrap().clone());
    let d = e.step(vec![Input::Health(h)]).desired.unwrap();
    assert_eq!(d.announcements[0].next_hops[0].node, "n2");
    let d = e.step(vec![Input::NodeGone("n2".into())]).desired.unwrap();
    assert!(d.announcements.is_empty());
    let st = e.service_states();
    assert!(
        st[0].pending.as_deref().unwrap().contains("no eligible"),
        "{st:?}"
    );
}

#[test]
fn endpoint_change_replans_only_that_service() {
    let store = MemoryStore::new();
    let mut e = engine(&store);
    let mut local = svc("local");
    local.traffic_policy = TrafficPolicy::Local;
    e.step(vec![
        Input::Node(node("n1", "10.0.0.1")),
        Input::Node(node("n2", "10.0.0.2")),
        Input::Service(svc("web")),
        Input::Service(local),
        Input::Synced(Origin::Kubernetes),
    ]);
    assert_eq!(e.desired().announcements.len(), 1);
    let before = e.desired().clone();
    let d = e
        .step(vec![Input::Slice(EndpointSlice {
            name: "local-x".into(),
            service: ServiceKey::new("default", "local"),
            endpoints: vec![crate::model::Endpoint {
                ready: true,
                node_name: Some("n2".into()),
            }],
        })])
        .desired
        .unwrap();
    assert_eq!(d.announcements.len(), 2);
    // web's announcement is the very same object: only local was re-planned.
    let web_ip = ips_of(&e, "web")[0];
    let web = d.get(&web_ip).unwrap();
    assert!(std::ptr::eq(web, before.get(&web_ip).unwrap()));
    let local = d.get(&ips_of(&e, "local")[0]).unwrap();
    assert_eq!(local.next_hops[0].node, "n2");
}

#[test]
fn pool_edit_keeps_ips_and_pending_services_retry() {
    let store = MemoryStore::new();
    let mut e = Engine::new(
        Box::new(store.clone()),
        vec![pool("public", &["10.77.0.0/31"])],
        settings(true),
    )
    .unwrap();
    e.step(vec![
        Input::Service(svc("a")),
        Input::Service(svc("b")),
        Input::Service(svc("c")),
        Input::Synced(Origin::Kubernetes),
    ]);
    assert!(ips_of(&e, "c").is_empty());
    e.step(vec![Input::Pools(vec![pool("public", &["10.77.0.0/30"])])]);
    assert_eq!(ips_of(&e, "a"), [ip("10.77.0.0")]);
    assert_eq!(ips_of(&e, "c"), [ip("10.77.0.2")]);
    // shrink: a and b keep their IPs even though b's is gone from the pool
    e.step(vec![Input::Pools(vec![pool(
        "public",
        &["10.77.0.0/32", "10.77.0.2/32"],
    )])]);
    assert_eq!(ips_of(&e, "b"), [ip("10.77.0.1")]);
}

#[test]
fn dual_stack_static_like_service_gets_both_families() {
    let store = MemoryStore::new();
    let mut e = engine(&store);
    let mut s = svc("dual");
    s.ip_families = vec![Family::V4, Family::V6];
    s.ip_family_policy = crate::model::IpFamilyPolicy::RequireDualStack;
    e.step(vec![Input::Service(s), Input::Synced(Origin::Kubernetes)]);
    assert_eq!(ips_of(&e, "dual"), [ip("10.77.0.0"), ip("fd77::")]);
}

#[test]
fn node_health_names_nodes_and_static_addresses() {
    let store = MemoryStore::new();
    let mut e = Engine::new(
        Box::new(store.clone()),
        pools(),
        EngineSettings {
            sources: [Origin::Kubernetes, Origin::Static].into(),
            ..settings(true)
        },
    )
    .unwrap();
    let mut stat = svc("static");
    stat.origin = Origin::Static;
    stat.static_next_hops = Some(vec![ip("10.0.9.9")]);
    stat.static_probe_port = Some(8080);
    let step = e.step(vec![
        Input::Node(node("n1", "10.0.0.1")),
        Input::Node(node("n2", "10.0.0.2")),
        Input::Service(svc("web")),
        Input::Service(stat),
        Input::Synced(Origin::Kubernetes),
        Input::Synced(Origin::Static),
    ]);
    let targets = step.probe_targets.unwrap();
    let all_up: BTreeMap<String, bool> = [("10.0.9.9", true), ("n1", true), ("n2", true)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(e.node_health(), all_up);
    let mut h = HealthView::default();
    h.down.extend(
        targets
            .iter()
            .filter(|t| t.address == ip("10.0.0.2") || t.address == ip("10.0.9.9"))
            .cloned(),
    );
    assert_eq!(h.down.len(), 2, "{targets:?}");
    e.step(vec![Input::Health(h)]);
    let health = e.node_health();
    assert!(health["n1"]);
    assert!(!health["n2"]);
    assert!(!health["10.0.9.9"]);
}

#[test]
fn a_failing_store_is_reported_once_per_service_and_heals_on_retry() {
    let store = MemoryStore::new();
    let mut e = engine(&store);
    store.set_fail_writes(true);
    let step = e.step(vec![
        Input::Node(node("n1", "10.0.0.1")),
        Input::Service(svc("web")),
        Input::Synced(Origin::Kubernetes),
    ]);
    let failed = |s: &Step| {
        s.events
            .iter()
            .filter(|e| matches!(e, ServiceEvent::StoreFailed { .. }))
            .count()
    };
    assert_eq!(failed(&step), 1);
    assert!(e.store_failure().is_some());
    e.stamp(100);
    assert_eq!(e.store_failure().unwrap().since_unix, Some(100));
    let st = e.service_states();
    assert!(
        st[0]
            .pending
            .as_deref()
            .unwrap_or("")
            .contains("store failing"),
        "{st:?}"
    );
    assert_eq!(e.status().pending, 1);
    // Retries while the store fails: no new event, the failure stays.
    let step = e.retry_store();
    assert_eq!(failed(&step), 0);
    e.stamp(200);
    let f = e.store_failure().unwrap();
    assert_eq!((f.since_unix, f.attempts), (Some(100), 2));
    // Space is back: the retry alone (no input) allocates and publishes.
    store.set_fail_writes(false);
    let step = e.retry_store();
    assert!(e.store_failure().is_none());
    assert_eq!(ips_of(&e, "web"), [ip("10.77.0.0")]);
    assert_eq!(vips(&step.desired.unwrap()), [ip("10.77.0.0")]);
    assert!(step
        .events
        .iter()
        .any(|e| matches!(e, ServiceEvent::Allocated { .. })));
    assert_eq!(e.status().pending, 0);
}

#[test]
fn the_published_plan_is_saved_and_a_restart_starts_from_it_unchanged() {
    let store = MemoryStore::new();
    let mut e = engine(&store);
    let inputs = vec![
        Input::Node(node("n1", "10.0.0.1")),
        Input::Node(node("n2", "10.0.0.2")),
        Input::Service(svc("web")),
        Input::Service(svc("api")),
        Input::Synced(Origin::Kubernetes),
    ];
    e.step(inputs.clone());
    assert!(e.desired_save_pending());
    assert!(e.save_desired());
    assert!(!e.desired_save_pending());
    let published = e.desired().clone();
    drop(e);

    // A restart without the API server: the stored plan is published as is.
    let mut e = engine(&store);
    let stored = e.stored_desired().unwrap().expect("a stored plan");
    assert_eq!(stored.desired, *published);
    assert!(stored.leader, "saved by the leader");
    let first = e.start_from_last_known(stored, 1_000);
    assert_eq!(*first, *published);
    assert_eq!(e.last_known().unwrap().since_unix, 1_000);
    assert!(e.status().last_known_state.is_some());
    // Nothing overwrites the snapshot before the first full sync.
    assert!(!e.desired_save_pending());
    e.step(vec![Input::Node(node("n1", "10.0.0.1"))]);
    assert_eq!(*e.desired(), first);

    // The same world, synced: the plan equals the snapshot, nothing is
    // published (so nothing withdrawn and re-announced).
    let step = e.step(inputs);
    assert!(step.desired.is_none(), "{:?}", step.desired);
    assert!(e.last_known().is_none());
}

#[test]
fn a_node_gone_while_down_leaves_the_plan_at_the_first_sync() {
    let store = MemoryStore::new();
    let mut e = engine(&store);
    e.step(vec![
        Input::Node(node("n1", "10.0.0.1")),
        Input::Node(node("n2", "10.0.0.2")),
        Input::Service(svc("web")),
        Input::Synced(Origin::Kubernetes),
    ]);
    e.save_desired();
    drop(e);
    let mut e = engine(&store);
    let stored = e.stored_desired().unwrap().unwrap();
    let first = e.start_from_last_known(stored, 1);
    assert_eq!(first.announcements[0].next_hops.len(), 2);
    let step = e.step(vec![
        Input::Node(node("n1", "10.0.0.1")),
        Input::Service(svc("web")),
        Input::Synced(Origin::Kubernetes),
    ]);
    let d = step.desired.expect("n2 is gone: a new plan");
    let hops: Vec<IpAddr> = d.announcements[0]
        .next_hops
        .iter()
        .map(|h| h.address)
        .collect();
    assert_eq!(hops, [ip("10.0.0.1")]);
    assert_eq!(d.generation, first.generation + 1);
}
