//! What the real `pier` binary costs the API server, read from the test API
//! server's request log (each read's kind decided as kube-apiserver decides
//! it, see tests/support/src/server.rs `ReadKind`): a sync of N Services and
//! the steady state after it do no quorum read per Service; and a 409
//! storm (another writer changing the Services' status all along) loses
//! none of pier's writes and overwrites none of the other writer's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/daemon.rs"]
mod daemon;
use daemon::Pier;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Config};
use pier_testapi::{CostModel, ReadKind, TestApiServer};
use serde_json::{json, Value};

fn config(dir: &Path, kubeconfig: &Path) -> PathBuf {
    let text = format!(
        r#"[gateway]
router_id = "10.66.0.2"
state_dir = "{dir}/state"
api_socket = "{dir}/pier.sock"
metrics_listen = "127.0.0.1:0"

[kubernetes]
kubeconfig = "{kc}"
load_balancer_class = "pier.io/gateway"
claim_unclassed = true
lease_namespace = "pier-system"
lease_duration_s = 15
lease_renew_s = 5

[[pools]]
name = "public"
addresses = ["10.78.0.0/20"]
"#,
        dir = dir.display(),
        kc = kubeconfig.display(),
    );
    let path = dir.join("pier.toml");
    std::fs::write(&path, text).expect("write the config");
    path
}

async fn setup() -> (TestApiServer, tempfile::TempDir, PathBuf) {
    let api = TestApiServer::start().await.expect("test API server");
    for ns in ["pier-system", "shop"] {
        api.create(json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name": ns}}))
            .expect("namespace");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = dir.path().join("kubeconfig");
    api.kubeconfig(&kc).expect("kubeconfig");
    let cfg = config(dir.path(), &kc);
    (api, dir, cfg)
}

fn lb(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}
    })
}

fn service(api: &TestApiServer, name: &str) -> Value {
    api.get("v1", "Service", Some("shop"), name)
        .unwrap_or(Value::Null)
}

fn pier_ips(svc: &Value) -> Vec<String> {
    svc["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["ipMode"] == "VIP")
        .filter_map(|i| i["ip"].as_str().map(String::from))
        .collect()
}

/// Wait for a condition the daemon must bring about (generous bound: this
/// checks behaviour, not speed).
async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("s{i:04}")).collect()
}

/// Reads of one Service's object (`GET .../services/NAME`, also `/status`).
fn per_service(r: &pier_testapi::RequestRecord) -> bool {
    r.path.starts_with("/api/v1/namespaces/shop/services/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_and_the_steady_state_do_no_quorum_read_per_service() {
    let (api, _dir, cfg) = setup().await;
    // Writes and quorum reads cost something, as on a real server; the
    // assertions below are on the request log, not on time.
    api.set_costs(CostModel {
        quorum_read: Duration::from_micros(200),
        write: Duration::from_micros(200),
    });
    let n = 300;
    for name in names(n) {
        api.create(lb(&name)).expect("service");
    }
    api.clear_requests();
    let pier = Pier::start(&cfg);
    until("every Service's status", || {
        names(n)
            .iter()
            .all(|s| pier_ips(&service(&api, s)).len() == 1)
            .then_some(())
    })
    .await;
    until("every IPAllocated Event", || {
        let events = api
            .list("events.k8s.io/v1", "Event", Some("shop"))
            .into_iter()
            .filter(|e| e["reason"] == "IPAllocated")
            .count();
        (events >= n).then_some(())
    })
    .await;
    let sync = api.requests();
    let quorum: Vec<_> = sync
        .iter()
        .filter(|r| r.read == Some(ReadKind::Quorum))
        .map(|r| format!("{} {}?{}", r.verb, r.path, r.query))
        .collect();
    let quorum_per_service = sync
        .iter()
        .filter(|r| per_service(r) && r.read.is_some_and(ReadKind::reaches_etcd))
        .count();
    assert_eq!(
        quorum_per_service, 0,
        "quorum reads of single Services during the sync: {quorum:#?}"
    );
    // What remains is a constant: lists and watches at the start, the lease.
    assert!(
        quorum.len() < n / 10,
        "{} quorum reads for {n} Services: {quorum:#?}",
        quorum.len()
    );
    // The reads pier did make of single Services came from the cache, one
    // per status write at most.
    let cached = sync
        .iter()
        .filter(|r| per_service(r) && r.verb == "get" && r.read == Some(ReadKind::Any))
        .count();
    assert!(cached <= n, "{cached} cache reads for {n} Services");
    let status_writes = sync
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/status") && r.status == 200)
        .count();
    assert_eq!(status_writes, n, "one status write per Service");

    // Steady state: nothing changes; pier renews its lease and its watches
    // get bookmarks, and it reads no Service.
    api.clear_requests();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let steady = api.requests();
    let service_reads: Vec<_> = steady
        .iter()
        .filter(|r| per_service(r) || (r.verb == "list" && r.path.ends_with("/services")))
        .filter(|r| r.read.is_some_and(ReadKind::reaches_etcd))
        .map(|r| format!("{} {}?{}", r.verb, r.path, r.query))
        .collect();
    assert!(
        service_reads.is_empty(),
        "quorum reads of Services in the steady state: {service_reads:#?}"
    );
    assert_eq!(
        steady
            .iter()
            .filter(|r| r.method == "PATCH" && per_service(r))
            .count(),
        0,
        "status writes in the steady state"
    );
    drop(pier);
}

/// Another controller writes `status.conditions` of every Service over and
/// over (a merge patch of its own field, no precondition) while pier syncs,
/// and while a third of the Services stop being pier's (type ClusterIP):
/// pier's clears carry the resourceVersion, so they meet 409s and re-read.
/// At the end every Service still pier's has its IP, the others have none,
/// and the other writer's last conditions are all still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_409_storm_loses_no_write_and_overwrites_no_other_writer() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (api, _dir, cfg) = setup().await;
    api.set_costs(CostModel {
        quorum_read: Duration::from_micros(100),
        write: Duration::from_micros(100),
    });
    let n = 120;
    for name in names(n) {
        api.create(lb(&name)).expect("service");
    }
    let client = Client::try_from(Config::new(api.url().parse().expect("url"))).expect("client");
    let svcs: Api<Service> = Api::namespaced(client, "shop");
    let stop = Arc::new(AtomicBool::new(false));
    // The other writer: round after round over every Service, 16 at a time.
    let storm = {
        let stop = stop.clone();
        let svcs = svcs.clone();
        tokio::spawn(async move {
            let mut last: BTreeMap<String, u64> = BTreeMap::new();
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let done: Vec<(String, bool)> = futures::stream::iter(names(n))
                    .map(|name| {
                        let svcs = svcs.clone();
                        async move {
                            let patch = json!({"status": {"conditions": [{
                                "type": "example.com/Probed",
                                "status": "True",
                                "reason": "Storm",
                                "message": format!("round {round}"),
                                "lastTransitionTime": "2026-01-01T00:00:00Z",
                            }]}});
                            let ok = svcs
                                .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                                .await
                                .is_ok();
                            (name, ok)
                        }
                    })
                    .buffer_unordered(16)
                    .collect()
                    .await;
                for (name, ok) in done {
                    if ok {
                        last.insert(name, round);
                    }
                }
            }
            last
        })
    };
    // Let the storm start before pier does.
    until("the storm's first round", || {
        (api.count_requests(|r| r.method == "PATCH" && r.status == 200) >= n).then_some(())
    })
    .await;
    let pier = Pier::start(&cfg);
    until("every Service's status, during the storm", || {
        names(n)
            .iter()
            .all(|s| pier_ips(&service(&api, s)).len() == 1)
            .then_some(())
    })
    .await;
    // A third stop being pier's, under the storm: pier clears its IP.
    let dropped = |name: &str| name.ends_with(['0', '3', '6', '9']);
    for name in names(n).iter().filter(|s| dropped(s)) {
        api.merge_patch(
            "v1",
            "Service",
            Some("shop"),
            name,
            json!({"spec": {"type": "ClusterIP"}}),
        )
        .expect("type ClusterIP");
    }
    until("the IPs of the Services no longer pier's cleared", || {
        names(n)
            .iter()
            .filter(|s| dropped(s))
            .all(|s| pier_ips(&service(&api, s)).is_empty())
            .then_some(())
    })
    .await;
    // A few more rounds of storm after pier is done.
    let after = api.count_requests(|r| r.method == "PATCH" && r.status == 200);
    until("two more storm rounds", || {
        (api.count_requests(|r| r.method == "PATCH" && r.status == 200) >= after + 2 * n)
            .then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let last = storm.await.expect("the storm task");
    let conflicts = api
        .count_requests(|r| r.method == "PATCH" && r.path.ends_with("/status") && r.status == 409);
    eprintln!("pier met {conflicts} conflicts on status writes");
    for name in names(n) {
        let svc = service(&api, &name);
        let want_ips = if dropped(&name) { 0 } else { 1 };
        assert_eq!(pier_ips(&svc).len(), want_ips, "{name}: {svc}");
        let want = format!("round {}", last[&name]);
        assert_eq!(
            svc["status"]["conditions"][0]["message"], want,
            "{name}: the other writer's conditions were overwritten: {svc}"
        );
    }
    // IPs are unique across Services: no write went to the wrong one.
    let mut all: Vec<String> = names(n)
        .iter()
        .flat_map(|s| pier_ips(&service(&api, s)))
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), names(n).iter().filter(|s| !dropped(s)).count());
    drop(pier);
}
