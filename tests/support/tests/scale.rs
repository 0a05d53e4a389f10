//! 10,000 Services: the server must list and watch them through kube-runtime's watcher
//! without per-event O(n) work. Prints timings (never asserts on them).

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use kube::runtime::watcher;
use kube::{Client, Config};
use pier_testapi::TestApiServer;
use serde_json::json;
use std::time::{Duration, Instant};

const N: usize = 10_000;
const CHANGES: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_services_list_and_watch() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let api = TestApiServer::start().await.unwrap();
    let t0 = Instant::now();
    for i in 0..N {
        api.create(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{i:05}"), "namespace": "default", "labels": {"app": format!("a{}", i % 10)}},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "name": "http"}]}}))
        .unwrap();
    }
    let create = t0.elapsed();

    let client = Client::try_from(Config::new(api.url().parse().unwrap())).unwrap();
    let services: Api<Service> = Api::all(client);
    let t1 = Instant::now();
    let mut stream = watcher(services, watcher::Config::default()).boxed();
    let mut listed = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::InitApply(_) => listed += 1,
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    let list = t1.elapsed();
    assert_eq!(listed, N);
    assert_eq!(api.count_requests(|r| r.verb == "list"), N / 500);

    let t2 = Instant::now();
    for i in 0..CHANGES {
        api.merge_patch(
            "v1",
            "Service",
            Some("default"),
            &format!("svc-{i:05}"),
            json!({"metadata": {"annotations": {"touched": "yes"}}}),
        )
        .unwrap();
    }
    let mut seen = 0;
    while seen < CHANGES {
        if let watcher::Event::Apply(s) =
            tokio::time::timeout(Duration::from_secs(60), stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
        {
            assert!(s.metadata.annotations.is_some());
            seen += 1;
        }
    }
    let watch = t2.elapsed();
    println!("| step | count | time |");
    println!("|---|---|---|");
    println!("| create (direct) | {N} | {create:?} |");
    println!("| watcher initial list (limit 500) | {N} | {list:?} |");
    println!("| patch + watch event delivered | {CHANGES} | {watch:?} |");
}
