use super::*;
use crate::model::{
    BgpAttributes, IpFamilyPolicy, IpRange, NextHopMode, PoolMode, PortSpec, Protocol, Service,
};
use proptest::prelude::*;

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

fn svc(ns: &str, name: &str) -> Service {
    let mut s = Service::new(ServiceKey::new(ns, name));
    s.ports = vec![PortSpec {
        port: 80,
        protocol: Protocol::Tcp,
    }];
    s
}

fn with(mut s: Service, key: &str, value: &str) -> Service {
    s.annotations.insert(key.into(), value.into());
    s
}

fn assign(ipam: &mut Ipam, s: &Service) -> Result<Vec<IpAddr>, Refusal> {
    let r = request_for(s, &BTreeMap::new())?;
    ipam.assign(&r)
        .map(|a| a.allocations.iter().map(|a| a.ip).collect())
}

fn assign_ns(
    ipam: &mut Ipam,
    s: &Service,
    labels: &[(&str, &str)],
) -> Result<Vec<IpAddr>, Refusal> {
    let labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let r = request_for(s, &labels)?;
    ipam.assign(&r)
        .map(|a| a.allocations.iter().map(|a| a.ip).collect())
}

#[test]
fn lowest_free_address_in_range_order() {
    let mut m = Ipam::new(vec![pool("p", &["10.0.0.254-10.0.0.255", "10.0.1.0/31"])]);
    let got: Vec<IpAddr> = (0..4)
        .map(|i| assign(&mut m, &svc("a", &format!("s{i}"))).unwrap()[0])
        .collect();
    assert_eq!(
        got,
        [
            ip("10.0.0.254"),
            ip("10.0.0.255"),
            ip("10.0.1.0"),
            ip("10.0.1.1")
        ]
    );
    let e = assign(&mut m, &svc("a", "s4")).unwrap_err();
    assert_eq!(e.to_string(), "pool \"p\" has no free ipv4 address");
    // a released IP is the next one given
    m.release(&ServiceKey::new("a", "s1"));
    assert_eq!(assign(&mut m, &svc("a", "s5")).unwrap(), [ip("10.0.0.255")]);
}

#[test]
fn assign_is_idempotent() {
    let mut m = Ipam::new(vec![pool("p", &["10.0.0.0/24"])]);
    let s = svc("a", "web");
    let r = request_for(&s, &BTreeMap::new()).unwrap();
    assert!(m.assign(&r).unwrap().changed);
    let again = m.assign(&r).unwrap();
    assert!(!again.changed);
    assert_eq!(again.allocations[0].ip, ip("10.0.0.0"));
}

#[test]
fn requested_ips() {
    let mut m = Ipam::new(vec![
        pool("p", &["10.0.0.0/24"]),
        pool("q", &["10.0.1.0/24"]),
    ]);
    let a = with(svc("a", "a"), annotations::IP, "10.0.1.7");
    assert_eq!(assign(&mut m, &a).unwrap(), [ip("10.0.1.7")]);
    assert_eq!(m.allocations_of(&a.key)[0].pool, "q");
    let b = with(svc("b", "b"), annotations::IP, "10.0.1.7");
    let e = assign(&mut m, &b).unwrap_err();
    assert_eq!(e.reason(), "IPTaken");
    assert!(e.to_string().contains("taken by a/a"), "{e}");
    let c = with(svc("c", "c"), annotations::IP, "192.0.2.1");
    assert_eq!(
        assign(&mut m, &c).unwrap_err(),
        Refusal::IpOutsidePools {
            ip: ip("192.0.2.1")
        }
    );
    let d = with(
        with(svc("d", "d"), annotations::IP, "10.0.0.1"),
        annotations::POOL,
        "q",
    );
    assert_eq!(assign(&mut m, &d).unwrap_err().reason(), "PoolMismatch");
}

#[test]
fn sharing_needs_the_same_key_and_disjoint_ports() {
    let mut m = Ipam::new(vec![pool("p", &["10.0.0.0/24"])]);
    let a = with(svc("n", "a"), annotations::SHARING_KEY, "k");
    let mut b = with(svc("n", "b"), annotations::SHARING_KEY, "k");
    b.ports[0].port = 443;
    assert_eq!(assign(&mut m, &a).unwrap(), [ip("10.0.0.0")]);
    // same key, other port: the same IP without asking for it
    assert_eq!(assign(&mut m, &b).unwrap(), [ip("10.0.0.0")]);
    // same key, same port: its own IP
    let c = with(svc("n", "c"), annotations::SHARING_KEY, "k");
    assert_eq!(assign(&mut m, &c).unwrap(), [ip("10.0.0.1")]);
    // asking for a shared IP without the key is refused, not shared
    let mut d = with(svc("n", "d"), annotations::IP, "10.0.0.0");
    d.ports[0].port = 22;
    let e = assign(&mut m, &d).unwrap_err();
    assert!(e.to_string().contains("no common sharing key"), "{e}");
    // with the key but an overlapping port: refused too
    let mut e2 = with(
        with(svc("n", "e"), annotations::IP, "10.0.0.0"),
        annotations::SHARING_KEY,
        "k",
    );
    e2.ports[0].port = 443;
    assert!(assign(&mut m, &e2)
        .unwrap_err()
        .to_string()
        .contains("both use 443/tcp"));
    // another protocol on the same port number is no overlap
    e2.ports[0].protocol = Protocol::Udp;
    assert_eq!(assign(&mut m, &e2).unwrap(), [ip("10.0.0.0")]);
    assert_eq!(m.holders(&ip("10.0.0.0")).len(), 3);
    // releasing one sharer keeps the IP for the others
    m.release(&a.key);
    assert_eq!(m.holders(&ip("10.0.0.0")).len(), 2);
    assert_eq!(assign(&mut m, &svc("n", "f")).unwrap(), [ip("10.0.0.2")]);
}

#[test]
fn pool_choice_order() {
    let mut restricted = pool("team", &["10.1.0.0/30"]);
    restricted.namespaces = vec!["team".into()];
    restricted.priority = 5;
    let mut selected = pool("labelled", &["10.2.0.0/30"]);
    selected.namespace_selector = [("tier".to_string(), "gold".to_string())].into();
    selected.priority = 1;
    let mut manual = pool("manual", &["10.3.0.0/30"]);
    manual.auto_assign = false;
    let mut off = pool("off", &["10.4.0.0/30"]);
    off.disabled = true;
    off.priority = -10;
    let mut late = pool("zz-late", &["10.5.0.0/30"]);
    late.priority = 10;
    let early = pool("early", &["10.6.0.0/32"]);
    let mut m = Ipam::new(vec![restricted, selected, manual, off, late, early]);

    // a namespace selected by two pools: ascending priority
    let got = assign_ns(&mut m, &svc("team", "a"), &[("tier", "gold")]).unwrap();
    assert_eq!(got, [ip("10.2.0.0")]);
    // selected by one pool
    assert_eq!(assign(&mut m, &svc("team", "b")).unwrap(), [ip("10.1.0.0")]);
    // other namespaces: open auto_assign pools by priority, never the
    // restricted, manual or disabled ones
    assert_eq!(assign(&mut m, &svc("x", "c")).unwrap(), [ip("10.6.0.0")]);
    // early is exhausted: fall through to the next
    assert_eq!(assign(&mut m, &svc("x", "d")).unwrap(), [ip("10.5.0.0")]);
    // manual pool only when named
    let e = with(svc("x", "e"), annotations::POOL, "manual");
    assert_eq!(assign(&mut m, &e).unwrap(), [ip("10.3.0.0")]);
    // a named pool must admit the namespace
    let f = with(svc("x", "f"), annotations::POOL, "team");
    assert_eq!(
        assign(&mut m, &f).unwrap_err().reason(),
        "NamespaceNotAllowed"
    );
    let g = with(svc("x", "g"), annotations::POOL, "nope");
    assert_eq!(assign(&mut m, &g).unwrap_err().reason(), "UnknownPool");
    let h = with(svc("x", "h"), annotations::POOL, "off");
    assert_eq!(assign(&mut m, &h).unwrap_err().reason(), "PoolDisabled");
}

#[test]
fn dual_stack() {
    let mut m = Ipam::new(vec![
        pool("a-v4only", &["10.0.0.0/30"]),
        pool("b-dual", &["10.1.0.0/30", "fd00::/64"]),
    ]);
    let mut s = svc("a", "req");
    s.ip_families = vec![Family::V6, Family::V4];
    s.ip_family_policy = IpFamilyPolicy::RequireDualStack;
    // a-v4only is first by name but cannot serve both families
    assert_eq!(assign(&mut m, &s).unwrap(), [ip("10.1.0.0"), ip("fd00::")]);
    let mut p = svc("a", "prefer");
    p.ip_families = vec![Family::V4];
    p.ip_family_policy = IpFamilyPolicy::PreferDualStack;
    // the first pool offering v4 is a-v4only: v6 is optional, so v4 only
    assert_eq!(assign(&mut m, &p).unwrap(), [ip("10.0.0.0")]);
    let p2 = with(p.clone(), annotations::POOL, "b-dual");
    let mut p2 = p2;
    p2.key.name = "prefer2".into();
    assert_eq!(
        assign(&mut m, &p2).unwrap(),
        [ip("10.1.0.1"), ip("fd00::1")]
    );
    let mut r6 = with(svc("a", "v6"), annotations::POOL, "a-v4only");
    r6.ip_families = vec![Family::V6];
    assert_eq!(
        assign(&mut m, &r6).unwrap_err().reason(),
        "FamilyNotOffered"
    );
}

#[test]
fn refusal_changes_nothing() {
    let mut m = Ipam::new(vec![pool("p", &["10.0.0.0/24"])]);
    let a = svc("n", "a");
    assert_eq!(assign(&mut m, &a).unwrap(), [ip("10.0.0.0")]);
    let b = svc("n", "b");
    assert_eq!(assign(&mut m, &b).unwrap(), [ip("10.0.0.1")]);
    // b now asks for a's IP: refused, b keeps its own
    let b2 = with(b.clone(), annotations::IP, "10.0.0.0");
    assert!(assign(&mut m, &b2).is_err());
    assert_eq!(m.allocations_of(&b.key)[0].ip, ip("10.0.0.1"));
    // a request change that can be met moves the IP and reports the old
    let b3 = with(b, annotations::IP, "10.0.0.9");
    let r = request_for(&b3, &BTreeMap::new()).unwrap();
    let done = m.assign(&r).unwrap();
    assert_eq!(done.allocations[0].ip, ip("10.0.0.9"));
    assert_eq!(done.released[0].ip, ip("10.0.0.1"));
}

#[test]
fn pool_edits_keep_ips_and_report_orphans() {
    let mut m = Ipam::new(vec![pool("p", &["10.0.0.0/29"])]);
    for i in 0..4 {
        assign(&mut m, &svc("n", &format!("s{i}"))).unwrap();
    }
    // shrink: s2 and s3 fall outside, keep their IPs, are reported
    let orphans = m.set_pools(vec![
        pool("p", &["10.0.0.0/31"]),
        pool("q", &["10.0.0.2/31"]),
    ]);
    assert_eq!(
        orphans.iter().map(|a| a.ip).collect::<Vec<_>>(),
        [ip("10.0.0.2"), ip("10.0.0.3")]
    );
    assert_eq!(assign(&mut m, &svc("n", "s2")).unwrap(), [ip("10.0.0.2")]);
    // their IPs, now in pool q, are not handed out again
    assert_eq!(
        assign(&mut m, &svc("n", "new")).unwrap_err().reason(),
        "PoolExhausted"
    );
    // disabling keeps existing IPs
    let mut off = pool("p", &["10.0.0.0/29"]);
    off.disabled = true;
    m.set_pools(vec![off]);
    assert_eq!(assign(&mut m, &svc("n", "s0")).unwrap(), [ip("10.0.0.0")]);
    assert_eq!(
        assign(&mut m, &svc("n", "other")).unwrap_err().reason(),
        "NoPool"
    );
    // the pool removed entirely: still kept
    m.set_pools(vec![]);
    assert_eq!(assign(&mut m, &svc("n", "s1")).unwrap(), [ip("10.0.0.1")]);
    assert_eq!(m.orphans().len(), 4);
}

#[test]
fn restore_refuses_conflicts() {
    let mut m = Ipam::new(vec![pool("p", &["10.0.0.0/24"])]);
    let a = Allocation {
        service: ServiceKey::new("n", "a"),
        ip: ip("10.0.0.5"),
        pool: "p".into(),
        sharing_key: None,
        ports: vec![],
    };
    m.restore(a.clone()).unwrap();
    m.restore(a.clone()).unwrap(); // idempotent
    let b = Allocation {
        service: ServiceKey::new("n", "b"),
        ..a.clone()
    };
    assert_eq!(m.restore(b).unwrap_err().reason(), "IPTaken");
    let a2 = Allocation {
        ip: ip("10.0.0.6"),
        ..a.clone()
    };
    assert_eq!(m.restore(a2).unwrap_err().reason(), "FamilyTaken");
    // outside every pool: kept as an orphan
    let far = Allocation {
        service: ServiceKey::new("n", "far"),
        ip: ip("192.0.2.1"),
        ..a
    };
    m.restore(far).unwrap();
    assert_eq!(m.orphans().len(), 1);
}

#[test]
fn usage_counts_without_enumerating() {
    let mut m = Ipam::new(vec![pool("p", &["10.0.0.0/24", "fd00::/64"])]);
    for i in 0..5 {
        let mut s = svc("n", &format!("s{i}"));
        s.ip_families = vec![Family::V4, Family::V6];
        s.ip_family_policy = IpFamilyPolicy::RequireDualStack;
        assign(&mut m, &s).unwrap();
    }
    let u = m.usage("p");
    assert_eq!(
        u,
        vec![
            PoolUsage {
                family: Family::V4,
                total: 256,
                in_use: 5
            },
            PoolUsage {
                family: Family::V6,
                total: 1 << 64,
                in_use: 5
            },
        ]
    );
}

#[test]
fn large_v6_pool_is_not_enumerated() {
    let mut m = Ipam::new(vec![pool("p", &["fd00::/64"])]);
    let mut r = request_for(&svc("n", "x"), &BTreeMap::new()).unwrap();
    r.families = vec![Family::V6];
    for i in 0..100_000u32 {
        r.service = ServiceKey::new("n", format!("s{i}"));
        m.assign(&r).unwrap();
    }
    assert_eq!(m.used[1].runs(), 1);
    r.service = ServiceKey::new("n", "last");
    assert_eq!(m.assign(&r).unwrap().allocations[0].ip, ip("fd00::1:86a0"));
}

// ---- properties -------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Assign {
        svc: u8,
        ip: Option<u8>,
        key: Option<u8>,
        port: u8,
        dual: bool,
        pool: Option<u8>,
    },
    Release(u8),
    Pools(u8),
    Restart,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        6 => (0u8..16, proptest::option::weighted(0.3, 0u8..20), proptest::option::weighted(0.3, 0u8..2), 0u8..3, any::<bool>(), proptest::option::weighted(0.2, 0u8..3))
            .prop_map(|(svc, ip, key, port, dual, pool)| Op::Assign { svc, ip, key, port, dual, pool }),
        2 => (0u8..16).prop_map(Op::Release),
        1 => (0u8..3).prop_map(Op::Pools),
        1 => Just(Op::Restart),
    ];
    proptest::collection::vec(op, 1..80)
}

fn layout(n: u8) -> Vec<Pool> {
    match n {
        0 => vec![
            pool("a", &["10.0.0.0/29", "fd00::/126"]),
            pool("b", &["10.0.1.0/30"]),
        ],
        1 => vec![
            pool("a", &["10.0.0.0/30"]),
            pool("b", &["10.0.1.0/29", "10.0.0.4/30"]),
        ],
        _ => {
            let mut a = pool("a", &["10.0.0.0/29", "fd00::/126"]);
            a.disabled = true;
            vec![a, pool("b", &["10.0.1.0/30"])]
        }
    }
}

fn service_for(op: &Op) -> Service {
    let Op::Assign {
        svc: i,
        ip,
        key,
        port,
        dual,
        pool,
    } = op
    else {
        unreachable!()
    };
    let mut s = svc("n", &format!("s{i}"));
    s.ports[0].port = 80 + *port as u16;
    if let Some(ip) = ip {
        s.annotations.insert(
            annotations::IP.into(),
            if *ip < 10 {
                format!("10.0.0.{ip}")
            } else {
                format!("10.0.1.{}", ip - 10)
            },
        );
    }
    if let Some(k) = key {
        s.annotations
            .insert(annotations::SHARING_KEY.into(), format!("k{k}"));
    }
    if let Some(p) = pool {
        s.annotations.insert(
            annotations::POOL.into(),
            ["a", "b", "c"][*p as usize].into(),
        );
    }
    if *dual && ip.is_none() {
        s.ip_families = vec![Family::V4, Family::V6];
        s.ip_family_policy = IpFamilyPolicy::PreferDualStack;
    }
    s
}

fn run(ops: &[Op]) -> (Vec<Allocation>, Vec<Result<Vec<IpAddr>, String>>) {
    let mut m = Ipam::new(layout(0));
    let mut current = 0u8;
    let mut results = Vec::new();
    for op in ops {
        match op {
            Op::Assign { .. } => {
                let s = service_for(op);
                let before = m.allocations_of(&s.key).to_vec();
                let r = assign(&mut m, &s);
                if r.is_err() {
                    assert_eq!(
                        m.allocations_of(&s.key),
                        before.as_slice(),
                        "refusal changed {}",
                        s.key
                    );
                }
                results.push(r.map_err(|e| e.to_string()));
            }
            Op::Release(i) => {
                m.release(&ServiceKey::new("n", format!("s{i}")));
            }
            Op::Pools(n) => {
                current = *n;
                m.set_pools(layout(*n));
            }
            Op::Restart => {
                let all: Vec<Allocation> = m.all().cloned().collect();
                let mut fresh = Ipam::new(layout(current));
                for a in all.iter().rev() {
                    fresh
                        .restore(a.clone())
                        .expect("restoring a consistent state");
                }
                assert_eq!(
                    fresh.all().cloned().collect::<Vec<_>>(),
                    all,
                    "restart changed allocations"
                );
                m = fresh;
            }
        }
        check(&m, &layout(current));
    }
    (m.all().cloned().collect(), results)
}

fn check(m: &Ipam, pools: &[Pool]) {
    let orphans = m.orphans();
    let mut by_ip: BTreeMap<IpAddr, Vec<&Allocation>> = BTreeMap::new();
    for a in m.all() {
        by_ip.entry(a.ip).or_default().push(a);
        let inside = pools.iter().any(|p| p.name == a.pool && p.contains(&a.ip));
        assert!(
            inside || orphans.contains(a),
            "{a:?} outside its pool, unreported"
        );
    }
    for (ip, hs) in &by_ip {
        for (i, a) in hs.iter().enumerate() {
            for b in &hs[i + 1..] {
                assert!(
                    sharing_conflict(a, b).is_none(),
                    "{ip}: {} and {} may not share",
                    a.service,
                    b.service
                );
            }
        }
        // the index agrees
        assert!(m.used[slot(Family::of(ip))].contains(ip_to_u128(ip)));
    }
    for (key, allocs) in m.by_service.iter().map(|(k, h)| (k, h.as_slice())) {
        let fams: BTreeSet<Family> = allocs.iter().map(|a| Family::of(&a.ip)).collect();
        assert_eq!(fams.len(), allocs.len(), "{key} has two IPs of one family");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold(ops in ops()) {
        run(&ops);
    }

    #[test]
    fn replay_is_deterministic(ops in ops()) {
        prop_assert_eq!(run(&ops), run(&ops));
    }
}

/// OpenELB's protocol annotation: `bgp` / `layer2` restrict the pool
/// choice to pools of that mode; an Eip of the other mode named by the
/// `eip.*` annotation or holding the requested IP is refused.
#[test]
fn protocol_annotation_restricts_the_pool_mode() {
    let mut lan = pool("lan", &["10.1.0.0/30"]);
    lan.mode = PoolMode::L2;
    lan.priority = 10; // the bgp pool is preferred without the annotation
    let mut ipam = Ipam::new(vec![pool("public", &["10.0.0.0/30"]), lan]);
    for (key, eip_key) in [
        (
            "protocol.openelb.kubesphere.io/v1alpha1",
            "eip.openelb.kubesphere.io/v1alpha2",
        ),
        (
            "protocol.porter.kubesphere.io/v1alpha1",
            "eip.porter.kubesphere.io/v1alpha2",
        ),
    ] {
        let name = format!("l2-{}", key.len());
        let s = with(svc("default", &name), key, "layer2");
        assert_eq!(assign(&mut ipam, &s).unwrap()[0].to_string()[..5], *"10.1.");
        let s = with(svc("default", "plain"), key, "bgp");
        assert_eq!(assign(&mut ipam, &s).unwrap(), vec![ip("10.0.0.0")]);
        // The manuals' Service: protocol + eip naming a pool of that mode.
        let s = with(with(svc("default", &name), key, "layer2"), eip_key, "lan");
        assert!(assign(&mut ipam, &s).is_ok());
        // The wrong mode for the named pool, or for the requested IP.
        let s = with(with(svc("default", "bad"), key, "bgp"), eip_key, "lan");
        let e = assign(&mut ipam, &s).unwrap_err();
        assert_eq!(e.reason(), "ProtocolMismatch");
        assert!(e.to_string().contains("\"lan\" is of mode l2"), "{e}");
        let s = with(
            with(svc("default", "bad"), key, "bgp"),
            "pier.io/ip",
            "10.1.0.3",
        );
        assert_eq!(
            assign(&mut ipam, &s).unwrap_err().reason(),
            "ProtocolMismatch"
        );
    }
    // Changing the protocol moves the Service to a pool of the new mode.
    let s = with(
        svc("default", "plain"),
        "protocol.openelb.kubesphere.io/v1alpha1",
        "layer2",
    );
    assert_eq!(assign(&mut ipam, &s).unwrap()[0].to_string()[..5], *"10.1.");
    // No pool of that mode with room: NoPool says which mode was asked.
    let mut ipam = Ipam::new(vec![pool("public", &["10.0.0.0/30"])]);
    let s = with(
        svc("default", "x"),
        "protocol.openelb.kubesphere.io/v1alpha1",
        "layer2",
    );
    let e = assign(&mut ipam, &s).unwrap_err();
    assert!(e.to_string().contains("mode l2"), "{e}");
}

/// A Service switched from OpenELB: an IP in its status that lies in no
/// pool is kept (nothing allocated, a refusal that says why); one inside a
/// pool is adopted by the engine before assign, and assign keeps it.
#[test]
fn status_ip_outside_every_pool_is_not_renumbered() {
    let mut ipam = Ipam::new(vec![pool("public", &["10.0.0.0/30"])]);
    let mut s = svc("default", "old");
    s.status_ips = vec![ip("203.0.113.7")];
    let e = assign(&mut ipam, &s).unwrap_err();
    assert_eq!(e.reason(), "StatusOutsidePools");
    assert!(e.to_string().contains("203.0.113.7"), "{e}");
    assert!(ipam.allocations_of(&s.key).is_empty());
    // Adopted from the status (in a pool): kept exactly.
    let mut s = svc("default", "kept");
    s.status_ips = vec![ip("10.0.0.2")];
    ipam.restore(Allocation {
        service: s.key.clone(),
        ip: ip("10.0.0.2"),
        pool: "public".into(),
        sharing_key: None,
        ports: s.ports.clone(),
    })
    .unwrap();
    assert_eq!(assign(&mut ipam, &s).unwrap(), vec![ip("10.0.0.2")]);
    // A requested IP wins over a foreign status.
    let mut s = with(svc("default", "asks"), "pier.io/ip", "10.0.0.1");
    s.status_ips = vec![ip("203.0.113.8")];
    assert_eq!(assign(&mut ipam, &s).unwrap(), vec![ip("10.0.0.1")]);
}
