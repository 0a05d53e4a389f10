use super::*;
use crate::model::{
    BgpAttributes, Community, Endpoint, IpRange, LargeCommunity, PortSpec, Protocol,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pool(name: &str, mode: PoolMode, next_hop: NextHopMode) -> Pool {
    Pool {
        name: name.into(),
        ranges: vec![
            "10.77.0.0/24".parse::<IpRange>().unwrap(),
            "fd77::/64".parse().unwrap(),
        ],
        mode,
        next_hop,
        interface: (mode == PoolMode::L2).then(|| "eth-lan".to_string()),
        namespaces: vec![],
        namespace_selector: Default::default(),
        priority: 0,
        auto_assign: true,
        disabled: false,
        node_selector: Default::default(),
        bgp: BgpAttributes {
            communities: vec![Community(65001 << 16 | 100)],
            large_communities: vec![LargeCommunity(65001, 1, 2)],
            local_pref: Some(200),
            med: None,
        },
    }
}

fn node(name: &str, v4: &str, v6: Option<&str>) -> Node {
    let mut internal_ips = vec![ip(v4)];
    internal_ips.extend(v6.map(ip));
    Node {
        name: name.into(),
        ready: true,
        labels: Default::default(),
        internal_ips,
        external_ips: vec![],
    }
}

fn svc(name: &str, port: u16) -> Service {
    let mut s = Service::new(ServiceKey::new("default", name));
    s.ports = vec![PortSpec {
        port,
        protocol: Protocol::Tcp,
    }];
    s
}

fn alloc(s: &Service, vip: &str, pool: &str) -> Allocation {
    Allocation {
        service: s.key.clone(),
        ip: ip(vip),
        pool: pool.into(),
        sharing_key: None,
        ports: s.ports.clone(),
    }
}

struct Fixture {
    services: BTreeMap<ServiceKey, Service>,
    nodes: BTreeMap<String, Node>,
    endpoints: BTreeMap<ServiceKey, Vec<EndpointSlice>>,
    pools: BTreeMap<String, Pool>,
    health: HealthView,
    holders: BTreeMap<IpAddr, Vec<Allocation>>,
}

impl Fixture {
    fn new() -> Self {
        let mut f = Fixture {
            services: BTreeMap::new(),
            nodes: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            pools: BTreeMap::new(),
            health: HealthView::default(),
            holders: BTreeMap::new(),
        };
        for p in [
            pool("nodes", PoolMode::Bgp, NextHopMode::Nodes),
            pool("self", PoolMode::Bgp, NextHopMode::Gateway),
            pool("lan", PoolMode::L2, NextHopMode::Nodes),
        ] {
            f.pools.insert(p.name.clone(), p);
        }
        for (n, a, b) in [
            ("n1", "10.66.2.11", Some("fd66::11")),
            ("n2", "10.66.2.12", Some("fd66::12")),
            ("n3", "10.66.2.13", None),
        ] {
            f.nodes.insert(n.into(), node(n, a, b));
        }
        f
    }
    fn add(&mut self, s: Service, vip: &str, pool: &str) {
        self.holders
            .entry(ip(vip))
            .or_default()
            .push(alloc(&s, vip, pool));
        self.services.insert(s.key.clone(), s);
    }
    fn world(&self) -> World<'_> {
        World {
            services: &self.services,
            nodes: &self.nodes,
            endpoints: &self.endpoints,
            pools: &self.pools,
            health: &self.health,
            kube_proxy_port: 10256,
        }
    }
    fn plan(&self) -> (Vec<Arc<Announcement>>, BTreeMap<IpAddr, Unannounced>) {
        Planner::new().plan_all(&self.world(), &self.holders)
    }
    fn hops(&self, vip: &str) -> Vec<String> {
        let (a, _) = self.plan();
        a.iter()
            .find(|a| a.vip == ip(vip))
            .map(|a| a.next_hops.iter().map(|h| h.node.clone()).collect())
            .unwrap_or_default()
    }
    fn slice(&mut self, s: &str, eps: &[(&str, bool)]) {
        let key = ServiceKey::new("default", s);
        self.endpoints
            .entry(key.clone())
            .or_default()
            .push(EndpointSlice {
                name: format!("{s}-abc"),
                service: key,
                endpoints: eps
                    .iter()
                    .map(|(n, ready)| Endpoint {
                        ready: *ready,
                        node_name: Some(n.to_string()),
                    })
                    .collect(),
            });
    }
}

#[test]
fn cluster_goes_to_every_eligible_node() {
    let mut f = Fixture::new();
    f.add(svc("web", 80), "10.77.0.1", "nodes");
    assert_eq!(f.hops("10.77.0.1"), ["n1", "n2", "n3"]);

    f.nodes.get_mut("n1").unwrap().ready = false;
    f.nodes
        .get_mut("n2")
        .unwrap()
        .labels
        .insert(EXCLUDE_FROM_LB_LABEL.into(), "".into());
    assert_eq!(f.hops("10.77.0.1"), ["n3"]);
}

#[test]
fn node_selector_and_health_limit_next_hops() {
    let mut f = Fixture::new();
    f.add(svc("web", 80), "10.77.0.1", "nodes");
    f.pools
        .get_mut("nodes")
        .unwrap()
        .node_selector
        .insert("edge".into(), "true".into());
    f.nodes
        .get_mut("n1")
        .unwrap()
        .labels
        .insert("edge".into(), "true".into());
    f.nodes
        .get_mut("n2")
        .unwrap()
        .labels
        .insert("edge".into(), "true".into());
    assert_eq!(f.hops("10.77.0.1"), ["n1", "n2"]);
    f.health
        .down
        .insert(kube_proxy_target(ip("10.66.2.12"), 10256));
    assert_eq!(f.hops("10.77.0.1"), ["n1"]);
    // A probe on another port says nothing about kube-proxy.
    f.health
        .down
        .insert(kube_proxy_target(ip("10.66.2.11"), 9999));
    assert_eq!(f.hops("10.77.0.1"), ["n1"]);
}

#[test]
fn next_hop_is_the_node_address_of_the_vip_family() {
    let mut f = Fixture::new();
    f.nodes.get_mut("n1").unwrap().external_ips = vec![ip("192.0.2.1"), ip("2001:db8::1")];
    f.nodes.get_mut("n3").unwrap().external_ips = vec![ip("2001:db8::3")];
    f.add(svc("web", 80), "fd77::1", "nodes");
    let (a, _) = f.plan();
    let hops: Vec<(String, IpAddr)> = a[0]
        .next_hops
        .iter()
        .map(|h| (h.node.clone(), h.address))
        .collect();
    // InternalIP first; ExternalIP only where no InternalIP of the family.
    assert_eq!(
        hops,
        vec![
            ("n1".into(), ip("fd66::11")),
            ("n2".into(), ip("fd66::12")),
            ("n3".into(), ip("2001:db8::3")),
        ]
    );
}

#[test]
fn local_goes_to_nodes_with_ready_endpoints_only() {
    let mut f = Fixture::new();
    let mut s = svc("web", 80);
    s.traffic_policy = TrafficPolicy::Local;
    s.health_check_node_port = Some(30000);
    f.add(s, "10.77.0.1", "nodes");
    f.slice("web", &[("n1", true), ("n2", false), ("n3", true)]);
    assert_eq!(f.hops("10.77.0.1"), ["n1", "n3"]);
    f.health.down.insert(ProbeTarget {
        address: ip("10.66.2.13"),
        port: 30000,
        path: "/".into(),
    });
    assert_eq!(f.hops("10.77.0.1"), ["n1"]);
    f.nodes.get_mut("n1").unwrap().ready = false;
    let (a, out) = f.plan();
    assert!(a.is_empty());
    let why = out[&ip("10.77.0.1")].to_string();
    assert!(why.contains("ready endpoint"), "{why}");
}

#[test]
fn no_eligible_node_withdraws_with_a_reason() {
    let mut f = Fixture::new();
    f.add(svc("web", 80), "10.77.0.1", "nodes");
    for n in f.nodes.values_mut() {
        n.ready = false;
    }
    let (a, out) = f.plan();
    assert!(a.is_empty());
    let why = out[&ip("10.77.0.1")].to_string();
    assert!(why.contains("3 nodes, 0 eligible (3 not Ready"), "{why}");
}

#[test]
fn modes_and_attributes_come_from_the_pool() {
    let mut f = Fixture::new();
    f.add(svc("a", 80), "10.77.0.1", "nodes");
    f.add(svc("b", 80), "10.77.0.2", "self");
    f.add(svc("c", 80), "10.77.0.3", "lan");
    let (a, _) = f.plan();
    assert_eq!(a[0].mode, AnnounceMode::BgpNodes);
    assert_eq!(a[1].mode, AnnounceMode::BgpSelf);
    assert_eq!(
        a[2].mode,
        AnnounceMode::L2 {
            interface: "eth-lan".into()
        }
    );
    assert_eq!(a[0].bgp.local_pref, Some(200));
    assert_eq!(a[0].bgp.communities[0].to_string(), "65001:100");
    assert!(!a[0].mode.gateway_forwards());
    assert!(a[1].mode.gateway_forwards() && a[2].mode.gateway_forwards());
}

#[test]
fn cluster_vips_share_one_next_hop_set() {
    let mut f = Fixture::new();
    f.add(svc("a", 80), "10.77.0.1", "nodes");
    f.add(svc("b", 80), "10.77.0.2", "nodes");
    let (a, _) = f.plan();
    assert!(Arc::ptr_eq(&a[0].next_hops, &a[1].next_hops));
}

#[test]
fn shared_vip_unions_ports_and_intersects_next_hops() {
    let mut f = Fixture::new();
    let mut a = svc("a", 80);
    a.source_ranges = vec!["192.0.2.0/24".parse().unwrap()];
    let mut b = svc("b", 53);
    b.ports[0].protocol = Protocol::Udp;
    b.traffic_policy = TrafficPolicy::Local;
    f.add(a, "10.77.0.1", "nodes");
    f.add(b, "10.77.0.1", "nodes");
    f.slice("b", &[("n2", true)]);
    let (ann, _) = f.plan();
    assert_eq!(ann.len(), 1);
    let v = &ann[0];
    assert_eq!(v.services.len(), 2);
    assert_eq!(
        v.next_hops
            .iter()
            .map(|h| h.node.as_str())
            .collect::<Vec<_>>(),
        ["n2"]
    );
    assert_eq!(
        v.ports
            .iter()
            .map(|p| (p.port.to_string(), p.sources.len()))
            .collect::<Vec<_>>(),
        [("53/udp".to_string(), 0), ("80/tcp".to_string(), 1)]
    );
}

#[test]
fn static_services_use_their_own_next_hops_and_probe() {
    let mut f = Fixture::new();
    let mut s = svc("static", 80);
    s.static_next_hops = Some(vec![ip("10.9.0.2"), ip("10.9.0.1"), ip("fd09::1")]);
    s.static_probe_port = Some(10256);
    f.add(s, "10.77.0.5", "self");
    assert_eq!(f.hops("10.77.0.5"), ["10.9.0.1", "10.9.0.2"]);
    f.health
        .down
        .insert(kube_proxy_target(ip("10.9.0.1"), 10256));
    assert_eq!(f.hops("10.77.0.5"), ["10.9.0.2"]);
    let t = probe_targets(&f.world(), &f.holders);
    assert_eq!(t.len(), 2, "a down target is still probed: {t:?}");
}

#[test]
fn pool_gone_is_reported() {
    let mut f = Fixture::new();
    f.add(svc("a", 80), "10.77.0.1", "vanished");
    let (a, out) = f.plan();
    assert!(a.is_empty());
    assert!(matches!(
        out[&ip("10.77.0.1")],
        Unannounced::PoolGone { .. }
    ));
}

#[test]
fn probe_targets_one_per_node_not_per_service() {
    let mut f = Fixture::new();
    for i in 0..50 {
        f.add(
            svc(&format!("s{i}"), 80),
            &format!("10.77.0.{}", i + 1),
            "nodes",
        );
    }
    let mut local = svc("local", 80);
    local.traffic_policy = TrafficPolicy::Local;
    local.health_check_node_port = Some(31000);
    f.add(local, "10.77.0.100", "nodes");
    f.slice("local", &[("n1", true), ("n2", false)]);
    f.nodes.get_mut("n3").unwrap().ready = false;
    let t = probe_targets(&f.world(), &f.holders);
    let got: Vec<String> = t.iter().map(|t| t.to_string()).collect();
    assert_eq!(
        got,
        [
            "http://10.66.2.11:10256/healthz",
            "http://10.66.2.11:31000/",
            "http://10.66.2.12:10256/healthz",
        ]
    );
}

/// Next hops carry their node's labels (peers with a node_selector filter
/// by them, src/bgp/rib.rs), so relabelling a node changes the plan even
/// when the set of nodes stays the same; static next hops have none.
#[test]
fn next_hops_carry_node_labels() {
    let mut f = Fixture::new();
    f.add(svc("web", 80), "10.77.0.1", "nodes");
    let rack = "porter.kubesphere.io/rack";
    f.nodes
        .get_mut("n1")
        .unwrap()
        .labels
        .insert(rack.into(), "leaf1".into());
    let (before, _) = f.plan();
    let n1 = before[0].next_hops.iter().find(|h| h.node == "n1").unwrap();
    assert_eq!(n1.labels.get(rack).map(String::as_str), Some("leaf1"));
    f.nodes
        .get_mut("n1")
        .unwrap()
        .labels
        .insert(rack.into(), "leaf2".into());
    let (after, _) = f.plan();
    assert_ne!(before[0], after[0], "a relabelled node changes the plan");

    let mut s = svc("static", 81);
    s.static_next_hops = Some(vec![ip("10.66.2.50")]);
    f.add(s, "10.77.0.2", "nodes");
    let (a, _) = f.plan();
    assert!(a[1].next_hops.iter().all(|h| h.labels.is_empty()));
}
