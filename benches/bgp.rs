//! BGP at scale: 100,000 VIPs × 3 node next hops through the Adj-RIB-Out
//! (initial table: paths computed and packed into UPDATEs), one change among
//! them, and decoding the resulting stream (what a peer's parser does).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use pier::bgp::codec::{decode, AfiSafi, Context};
use pier::bgp::rib::{AdjRibOut, PeerView};
use pier::model::*;

const VIPS: u32 = 100_000;

fn view() -> PeerView {
    PeerView {
        local_asn: 65010,
        ebgp: true,
        families: vec![AfiSafi::IPV4_UNICAST],
        add_path: vec![AfiSafi::IPV4_UNICAST],
        max_paths: 16,
        self_v4: Some(Ipv4Addr::new(10, 0, 0, 2)),
        self_v6: None,
        node_selector: None,
        connected: None,
    }
}

fn ctx() -> Context {
    Context {
        four_octet_as: true,
        add_path: vec![AfiSafi::IPV4_UNICAST],
        extended_message: false,
    }
}

fn desired(generation: u64, nodes: &[&str]) -> Desired {
    let hops: Arc<[NextHop]> = nodes
        .iter()
        .map(|n| NextHop {
            node: n.to_string(),
            address: n.parse().unwrap(),
            labels: Default::default(),
        })
        .collect::<Vec<_>>()
        .into();
    let announcements = (0..VIPS)
        .map(|i| {
            Arc::new(Announcement {
                vip: IpAddr::V4(Ipv4Addr::from(0x0a80_0000 + i)),
                pool: "public".into(),
                mode: AnnounceMode::BgpNodes,
                next_hops: hops.clone(),
                bgp: BgpAttributes {
                    communities: vec![Community(0xfdea_0064)],
                    ..BgpAttributes::default()
                },
                services: vec![ServiceKey::new("bench", format!("svc-{i}"))],
                ports: vec![],
            })
        })
        .collect();
    Desired {
        generation,
        announcements,
    }
}

fn bench(c: &mut Criterion) {
    let full = desired(1, &["10.0.0.11", "10.0.0.12", "10.0.0.13"]);
    let mut g = c.benchmark_group("bgp 100k VIPs x 3 nodes");
    g.sample_size(10);
    g.bench_function("initial table: diff + encode", |b| {
        b.iter(|| {
            let mut rib = AdjRibOut::new(view());
            let ch = rib.update(&full);
            black_box(rib.encode(&ch, &ctx()).unwrap())
        })
    });
    let mut rib = AdjRibOut::new(view());
    let ch = rib.update(&full);
    let msgs = rib.encode(&ch, &ctx()).unwrap();
    let bytes: usize = msgs.iter().map(|m| m.len()).sum();
    println!(
        "initial table: {} paths in {} UPDATEs, {} bytes ({:.1} bytes/path)",
        ch.announce.len(),
        msgs.len(),
        bytes,
        bytes as f64 / ch.announce.len() as f64
    );
    // One VIP changes (its Service moved to other nodes).
    let mut changed = full.clone();
    changed.generation = 2;
    let mut one = (*changed.announcements[500]).clone();
    one.next_hops = vec![NextHop {
        node: "n4".into(),
        address: "10.0.0.14".parse().unwrap(),
        labels: Default::default(),
    }]
    .into();
    changed.announcements[500] = Arc::new(one);
    g.bench_function("one change: diff + encode", |b| {
        b.iter_batched(
            || rib.clone(),
            |mut r| {
                let ch = r.update(&changed);
                black_box(r.encode(&ch, &ctx()).unwrap())
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("decode the initial table", |b| {
        b.iter(|| {
            for m in &msgs {
                black_box(decode(m, &ctx()).unwrap());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
