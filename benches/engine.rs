//! Planner, engine and store benchmarks at production scale:
//! 10,000 Services × 500 nodes × 50,000 endpoints.
//!
//! Before criterion runs, a pass with a counting allocator prints the peak
//! heap each scenario needs (criterion measures time only).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{criterion_group, BatchSize, Criterion};

use pier::engine::{Engine, EngineSettings, Input, Planner, World};
use pier::ipam::{request_for, Ipam, Request};
use pier::model::*;
use pier::store::{AllocationStore, LastPlan, MemoryStore, SledStore, StoreBatch, StoredDesired};

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            let now = CURRENT.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
        System.dealloc(p, l)
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Peak heap growth while running `f`, in MiB.
fn peak_mib<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    let peak = PEAK.load(Ordering::Relaxed) - base;
    (out, peak as f64 / (1024.0 * 1024.0))
}

const SERVICES: usize = 10_000;
const NODES: usize = 500;
const ENDPOINTS_PER_SERVICE: usize = 5;

fn pool() -> Pool {
    Pool {
        name: "public".into(),
        ranges: vec!["10.0.0.0/16".parse().unwrap()],
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

fn node(i: usize) -> Node {
    Node {
        name: format!("node-{i:04}"),
        ready: true,
        labels: [("kubernetes.io/hostname".to_string(), format!("node-{i:04}"))].into(),
        internal_ips: vec![IpAddr::V4(Ipv4Addr::new(
            10,
            100,
            (i / 250) as u8,
            (i % 250) as u8,
        ))],
        external_ips: vec![],
    }
}

fn service(i: usize) -> Service {
    let mut s = Service::new(ServiceKey::new(
        format!("ns-{}", i % 100),
        format!("svc-{i}"),
    ));
    s.ports = vec![PortSpec {
        port: 80,
        protocol: Protocol::Tcp,
    }];
    if i % 5 == 0 {
        s.traffic_policy = TrafficPolicy::Local;
        s.health_check_node_port = Some(30000 + (i % 2000) as u16);
    }
    s
}

fn slice(i: usize, s: &Service) -> EndpointSlice {
    EndpointSlice {
        name: format!("svc-{i}-x"),
        service: s.key.clone(),
        endpoints: (0..ENDPOINTS_PER_SERVICE)
            .map(|e| Endpoint {
                ready: e != 0,
                node_name: Some(format!("node-{:04}", (i * 7 + e * 13) % NODES)),
            })
            .collect(),
    }
}

struct Cluster {
    services: BTreeMap<ServiceKey, Service>,
    nodes: BTreeMap<String, Node>,
    endpoints: BTreeMap<ServiceKey, Vec<EndpointSlice>>,
    pools: BTreeMap<String, Pool>,
    holders: BTreeMap<IpAddr, Vec<Allocation>>,
    health: HealthView,
}

fn cluster() -> Cluster {
    let mut c = Cluster {
        services: BTreeMap::new(),
        nodes: (0..NODES)
            .map(|i| (node(i).name.clone(), node(i)))
            .collect(),
        endpoints: BTreeMap::new(),
        pools: [("public".to_string(), pool())].into(),
        holders: BTreeMap::new(),
        health: HealthView::default(),
    };
    for i in 0..SERVICES {
        let s = service(i);
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, (i / 256) as u8, (i % 256) as u8));
        c.holders.insert(
            ip,
            vec![Allocation {
                service: s.key.clone(),
                ip,
                pool: "public".into(),
                sharing_key: None,
                ports: s.ports.clone(),
            }],
        );
        c.endpoints
            .entry(s.key.clone())
            .or_default()
            .push(slice(i, &s));
        c.services.insert(s.key.clone(), s);
    }
    c
}

fn inputs() -> Vec<Input> {
    let mut v: Vec<Input> = (0..NODES).map(|i| Input::Node(node(i))).collect();
    for i in 0..SERVICES {
        let s = service(i);
        v.push(Input::Slice(slice(i, &s)));
        v.push(Input::Service(s));
    }
    v.push(Input::Synced(Origin::Kubernetes));
    v
}

fn synced_engine() -> Engine {
    let settings = EngineSettings {
        sources: [Origin::Kubernetes].into(),
        kube_proxy_port: 10256,
        leader: true,
    };
    let mut e = Engine::new(Box::new(MemoryStore::new()), vec![pool()], settings).unwrap();
    e.step(inputs());
    e
}

fn allocations(n: usize) -> Vec<Allocation> {
    (0..n)
        .map(|i| Allocation {
            service: ServiceKey::new("bench", format!("svc-{i}")),
            ip: IpAddr::V4(Ipv4Addr::new(10, 0, (i / 256) as u8, (i % 256) as u8)),
            pool: "public".into(),
            sharing_key: None,
            ports: vec![PortSpec {
                port: 80,
                protocol: Protocol::Tcp,
            }],
        })
        .collect()
}

/// An ipam over one IPv6 /64 with `taken` addresses allocated.
fn v6_ipam(taken: usize) -> (Ipam, Request) {
    let mut p = pool();
    p.name = "v6".into();
    p.ranges = vec!["fd00::/64".parse().unwrap()];
    let mut ipam = Ipam::new(vec![p]);
    let mut s = Service::new(ServiceKey::new("bench", "x"));
    s.ip_families = vec![Family::V6];
    let mut req = request_for(&s, &BTreeMap::new()).unwrap();
    for i in 0..taken {
        req.service = ServiceKey::new("bench", format!("svc-{i}"));
        ipam.assign(&req).unwrap();
    }
    req.service = ServiceKey::new("bench", "probe");
    (ipam, req)
}

fn memory_report() {
    let ((_, _), ipam_mib) = peak_mib(|| v6_ipam(100_000));
    let (c, world_mib) = peak_mib(cluster);
    let world = World {
        services: &c.services,
        nodes: &c.nodes,
        endpoints: &c.endpoints,
        pools: &c.pools,
        health: &c.health,
        kube_proxy_port: 10256,
    };
    let (plan, plan_mib) = peak_mib(|| Planner::new().plan_all(&world, &c.holders));
    let hops: usize = plan.0.iter().map(|a| a.next_hops.len()).sum();
    let (mut e, engine_mib) = peak_mib(synced_engine);
    let mut changed = service(42);
    changed.ports[0].port = 8080;
    let (_, change_mib) = peak_mib(|| e.step(vec![Input::Service(changed)]));
    let dir = tempfile::tempdir().unwrap();
    let (_, sled_mib) = peak_mib(|| {
        let mut s = SledStore::open(dir.path()).unwrap();
        s.apply(&StoreBatch {
            put: allocations(10_000),
            remove: vec![],
        })
        .unwrap();
    });
    println!(
        "peak heap (counting allocator), {SERVICES} services x {NODES} nodes x {} endpoints:",
        SERVICES * ENDPOINTS_PER_SERVICE
    );
    println!(
        "  {:<44} {:>8.1} MiB",
        "inputs (services, nodes, slices)", world_mib
    );
    println!(
        "  {:<44} {:>8.1} MiB  ({} announcements, {} next-hop refs)",
        "full plan",
        plan_mib,
        plan.0.len(),
        hops
    );
    println!(
        "  {:<44} {:>8.1} MiB",
        "engine: full sync from nothing (ipam+plan)", engine_mib
    );
    println!(
        "  {:<44} {:>8.1} MiB",
        "engine: one Service change", change_mib
    );
    println!(
        "  {:<44} {:>8.1} MiB",
        "sled: persist 10,000 allocations", sled_mib
    );
    println!(
        "  {:<44} {:>8.1} MiB",
        "ipam: /64 pool with 100,000 IPs taken", ipam_mib
    );
    let desired = LastPlan {
        desired: Desired {
            generation: 1,
            announcements: plan.0.clone(),
        },
        leader: true,
    };
    let (bytes, encode_mib) = peak_mib(|| StoredDesired::encode(&desired));
    println!(
        "  {:<44} {:>8.1} MiB  ({} bytes stored)",
        "sled: save the 10,000-VIP plan (encode)",
        encode_mib,
        bytes.len()
    );
}

fn benches(c: &mut Criterion) {
    let cl = cluster();
    let world = World {
        services: &cl.services,
        nodes: &cl.nodes,
        endpoints: &cl.endpoints,
        pools: &cl.pools,
        health: &cl.health,
        kube_proxy_port: 10256,
    };
    let mut g = c.benchmark_group("plan");
    g.sample_size(20);
    g.bench_function("full_plan_10k_services_500_nodes_50k_endpoints", |b| {
        b.iter(|| black_box(Planner::new().plan_all(&world, &cl.holders)))
    });
    g.finish();

    let mut g = c.benchmark_group("engine");
    g.sample_size(10);
    g.bench_function("full_sync_10k_services", |b| {
        b.iter_batched(
            || {
                let settings = EngineSettings {
                    sources: [Origin::Kubernetes].into(),
                    kube_proxy_port: 10256,
                    leader: true,
                };
                (
                    Engine::new(Box::new(MemoryStore::new()), vec![pool()], settings).unwrap(),
                    inputs(),
                )
            },
            |(mut e, inputs)| black_box(e.step(inputs)),
            BatchSize::LargeInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("engine_change");
    let mut e = synced_engine();
    let mut flip = false;
    g.bench_function("one_service_change_at_10k", |b| {
        b.iter(|| {
            flip = !flip;
            let mut s = service(42);
            s.ports[0].port = if flip { 8080 } else { 80 };
            black_box(e.step(vec![Input::Service(s)]))
        })
    });
    let mut n = 0usize;
    g.bench_function("one_service_create_and_delete_at_10k", |b| {
        b.iter(|| {
            n += 1;
            let s = service(SERVICES + n);
            let key = s.key.clone();
            black_box(e.step(vec![Input::Service(s)]));
            black_box(e.step(vec![Input::ServiceGone(key)]))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("ipam");
    let (mut ipam, req) = v6_ipam(100_000);
    g.bench_function("allocate_and_release_in_a_slash_64_with_100k_taken", |b| {
        b.iter(|| {
            let a = ipam.assign(&req).unwrap();
            black_box(&a);
            ipam.release(&req.service)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("store");
    g.sample_size(10);
    g.bench_function("sled_persist_10k_allocations_one_batch", |b| {
        b.iter_batched(
            || (tempfile::tempdir().unwrap(), allocations(10_000)),
            |(dir, put)| {
                let mut s = SledStore::open(dir.path()).unwrap();
                s.apply(&StoreBatch {
                    put,
                    remove: vec![],
                })
                .unwrap();
                dir
            },
            BatchSize::PerIteration,
        )
    });
    let desired = LastPlan {
        desired: Desired {
            generation: 1,
            announcements: Planner::new().plan_all(&world, &cl.holders).0,
        },
        leader: true,
    };
    g.bench_function("sled_save_plan_10k_vips_500_nodes_flushed", |b| {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SledStore::open(dir.path()).unwrap();
        b.iter(|| s.save_desired(&desired).unwrap())
    });
    g.bench_function("sled_persist_1_allocation_flushed", |b| {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SledStore::open(dir.path()).unwrap();
        let all = allocations(10_000);
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % all.len();
            s.apply(&StoreBatch {
                put: vec![all[i].clone()],
                remove: vec![],
            })
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(group, benches);

fn main() {
    memory_report();
    group();
    Criterion::default().configure_from_args().final_summary();
}
