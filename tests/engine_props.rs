//! Property tests of the engine with the ipam and a store under random
//! sequences of Service changes, deletions, pool edits, store failures and
//! restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use proptest::prelude::*;

use pier::engine::{Engine, EngineSettings, Input};
use pier::ipam::annotations;
use pier::model::*;
use pier::store::{AllocationStore, MemoryStore};

#[derive(Debug, Clone)]
enum Op {
    /// Create or change Service `i`.
    Upsert {
        i: u8,
        pool: Option<u8>,
        ip: Option<u8>,
        dual: bool,
        sharing: Option<u8>,
        port: u8,
    },
    Delete(u8),
    /// Service `i`'s endpoints: ready on the nodes of bitmask `mask`.
    Endpoints(u8, u8),
    /// Node `n` becomes ready or not.
    NodeReady(u8, bool),
    /// Switch to pool layout `0..3`.
    Pools(u8),
    StoreFails(bool),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..12, proptest::option::of(0u8..2), proptest::option::weighted(0.3, 0u8..12), any::<bool>(), proptest::option::weighted(0.3, 0u8..2), 0u8..3)
            .prop_map(|(i, pool, ip, dual, sharing, port)| Op::Upsert { i, pool, ip, dual, sharing, port }),
        2 => (0u8..12).prop_map(Op::Delete),
        2 => (0u8..12, 0u8..8).prop_map(|(i, m)| Op::Endpoints(i, m)),
        1 => (0u8..3, any::<bool>()).prop_map(|(n, r)| Op::NodeReady(n, r)),
        1 => (0u8..3).prop_map(Op::Pools),
        1 => any::<bool>().prop_map(Op::StoreFails),
        1 => Just(Op::Restart),
    ]
}

fn pool(name: &str, ranges: &[&str]) -> Pool {
    Pool {
        name: name.into(),
        ranges: ranges.iter().map(|r| r.parse().unwrap()).collect(),
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

fn layout(n: u8) -> Vec<Pool> {
    match n {
        0 => vec![
            pool("p0", &["10.0.0.0/29", "fd00::/125"]),
            pool("p1", &["10.1.0.0-10.1.0.3"]),
        ],
        // p0 grows, p1 shrinks (its IPs outside stay with their Services)
        1 => vec![
            pool("p0", &["10.0.0.0/28", "fd00::/124"]),
            pool("p1", &["10.1.0.0"]),
        ],
        _ => {
            let mut p1 = pool("p1", &["10.1.0.0-10.1.0.3"]);
            p1.disabled = true;
            vec![pool("p0", &["10.0.0.0/29", "fd00::/125"]), p1]
        }
    }
}

fn service(
    i: u8,
    pool: Option<u8>,
    ip: Option<u8>,
    dual: bool,
    sharing: Option<u8>,
    port: u8,
) -> Service {
    let mut s = Service::new(ServiceKey::new("ns", format!("s{i}")));
    s.ports = vec![PortSpec {
        port: 80 + port as u16,
        protocol: Protocol::Tcp,
    }];
    if let Some(p) = pool {
        s.annotations
            .insert(annotations::POOL.into(), format!("p{p}"));
    }
    if let Some(ip) = ip {
        let v4 = if ip < 8 {
            format!("10.0.0.{ip}")
        } else {
            format!("10.1.0.{}", ip - 8)
        };
        s.annotations.insert(annotations::IP.into(), v4);
    }
    if let Some(k) = sharing {
        s.annotations
            .insert(annotations::SHARING_KEY.into(), format!("key{k}"));
    }
    if port == 2 {
        s.traffic_policy = TrafficPolicy::Local;
        s.health_check_node_port = Some(30000 + i as u16);
    }
    if dual && ip.is_none() {
        s.ip_families = vec![Family::V4, Family::V6];
        s.ip_family_policy = IpFamilyPolicy::PreferDualStack;
    }
    s
}

fn settings() -> EngineSettings {
    EngineSettings {
        sources: [Origin::Kubernetes].into(),
        kube_proxy_port: 10256,
        leader: true,
    }
}

fn node(n: u8, ready: bool) -> Node {
    Node {
        name: format!("node{n}"),
        ready,
        labels: BTreeMap::new(),
        internal_ips: vec![
            format!("192.168.0.{}", n + 1).parse().unwrap(),
            format!("fd00::{}", n + 1).parse().unwrap(),
        ],
        external_ips: vec![],
    }
}

fn slice(i: u8, mask: u8) -> EndpointSlice {
    EndpointSlice {
        name: format!("s{i}-abc"),
        service: ServiceKey::new("ns", format!("s{i}")),
        endpoints: (0..3u8)
            .filter(|n| mask & (1 << n) != 0)
            .map(|n| Endpoint {
                ready: true,
                node_name: Some(format!("node{n}")),
            })
            .collect(),
    }
}

fn nodes() -> Vec<Input> {
    (0..3).map(|n| Input::Node(node(n, true))).collect()
}

struct World {
    store: MemoryStore,
    engine: Engine,
    services: BTreeMap<ServiceKey, Service>,
    layout: u8,
}

impl World {
    fn new() -> Self {
        let store = MemoryStore::new();
        let mut engine = Engine::new(Box::new(store.clone()), layout(0), settings()).unwrap();
        let mut inputs = nodes();
        inputs.push(Input::Synced(Origin::Kubernetes));
        engine.step(inputs);
        World {
            store,
            engine,
            services: BTreeMap::new(),
            layout: 0,
        }
    }

    fn allocations(&self) -> BTreeSet<Allocation> {
        self.engine.ipam().all().cloned().collect()
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Upsert {
                i,
                pool,
                ip,
                dual,
                sharing,
                port,
            } => {
                let s = service(*i, *pool, *ip, *dual, *sharing, *port);
                self.services.insert(s.key.clone(), s.clone());
                self.engine.step(vec![Input::Service(s)]);
            }
            Op::Delete(i) => {
                let key = ServiceKey::new("ns", format!("s{i}"));
                self.services.remove(&key);
                self.engine.step(vec![Input::ServiceGone(key)]);
            }
            Op::Endpoints(i, mask) => {
                self.engine.step(vec![Input::Slice(slice(*i, *mask))]);
            }
            Op::NodeReady(n, ready) => {
                self.engine.step(vec![Input::Node(node(*n, *ready))]);
            }
            Op::Pools(n) => {
                self.layout = *n;
                self.engine.step(vec![Input::Pools(layout(*n))]);
            }
            Op::StoreFails(f) => {
                self.store.set_fail_writes(*f);
                self.engine.step(vec![]);
            }
            Op::Restart => {
                self.store.set_fail_writes(false);
                // What the running engine does with a full relist of the
                // same Services...
                let mut inputs = vec![Input::Resync(Origin::Kubernetes)];
                inputs.extend(self.services.values().cloned().map(Input::Service));
                inputs.push(Input::Synced(Origin::Kubernetes));
                self.engine.step(inputs.clone());
                let live = self.allocations();
                // ...a restarted one does too, whatever the order.
                let mut engine = Engine::new(
                    Box::new(self.store.clone()),
                    layout(self.layout),
                    settings(),
                )
                .unwrap();
                let mut fresh: Vec<Input> = nodes();
                fresh.extend(self.services.values().rev().cloned().map(Input::Service));
                fresh.push(Input::Synced(Origin::Kubernetes));
                engine.step(fresh);
                self.engine = engine;
                assert_eq!(self.allocations(), live, "restart changed allocations");
            }
        }
    }

    fn check(&self) {
        // The probe targets kept incrementally are those of the plan.
        assert_eq!(
            self.engine.probe_targets(),
            &self.engine.probe_targets_from_scratch(),
            "incremental probe targets differ from a full computation"
        );
        let allocs = self.allocations();
        // No IP to two Services unless they share a key and no port.
        let mut by_ip: BTreeMap<IpAddr, Vec<&Allocation>> = BTreeMap::new();
        for a in &allocs {
            by_ip.entry(a.ip).or_default().push(a);
        }
        for (ip, holders) in &by_ip {
            for (x, a) in holders.iter().enumerate() {
                for b in &holders[x + 1..] {
                    assert!(
                        a.sharing_key.is_some() && a.sharing_key == b.sharing_key,
                        "{ip} held by {} and {} without a common sharing key",
                        a.service,
                        b.service
                    );
                    assert!(
                        a.ports.iter().all(|p| !b.ports.contains(p)),
                        "{ip} shared by {} and {} with overlapping ports",
                        a.service,
                        b.service
                    );
                }
            }
        }
        // One IP per family per Service; every IP of its pool's family and
        // in the pool, unless the pool was edited (then it is an orphan).
        let orphans: BTreeSet<Allocation> = self.engine.ipam().orphans().into_iter().collect();
        let pools: BTreeMap<String, Pool> = layout(self.layout)
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect();
        for key in self.services.keys() {
            let mine = self.engine.ipam().allocations_of(key);
            let fams: BTreeSet<Family> = mine.iter().map(|a| Family::of(&a.ip)).collect();
            assert_eq!(
                fams.len(),
                mine.len(),
                "{key} holds two IPs of a family: {mine:?}"
            );
            for a in mine {
                let inside = pools.get(&a.pool).is_some_and(|p| p.contains(&a.ip));
                assert!(
                    inside || orphans.contains(a),
                    "{a:?} outside its pool and not reported"
                );
            }
        }
        // What is announced is allocated.
        for ann in &self.engine.desired().announcements {
            assert!(
                by_ip.contains_key(&ann.vip),
                "{} announced but not allocated",
                ann.vip
            );
        }
        // Memory and disk agree once writes succeed.
        let stored: BTreeSet<Allocation> = self.store.load().unwrap().into_iter().collect();
        if stored != allocs {
            // Only allowed while the store is failing: then memory has the
            // old state too (changes are undone), so they still agree.
            panic!(
                "store and memory differ:\n store only {:?}\n memory only {:?}",
                stored.difference(&allocs).collect::<Vec<_>>(),
                allocs.difference(&stored).collect::<Vec<_>>()
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_under_random_sequences(ops in proptest::collection::vec(op(), 1..60)) {
        let mut w = World::new();
        for op in &ops {
            w.apply(op);
            w.check();
        }
    }

    #[test]
    fn replay_gives_the_same_result(ops in proptest::collection::vec(op(), 1..40)) {
        let run = |ops: &[Op]| {
            let mut w = World::new();
            for op in ops {
                w.apply(op);
            }
            (w.allocations(), w.engine.desired().announcements.iter().map(|a| a.vip).collect::<Vec<_>>())
        };
        prop_assert_eq!(run(&ops), run(&ops));
    }
}
