//! Read kinds (quorum or cache, decided as kube-apiserver decides them) and the
//! cost model (reads through etcd and writes share one serial pipe).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use kube::api::{GetParams, ListParams, Patch, PatchParams, VersionMatch};
use kube::{Api, Client, Config};
use pier_testapi::{CostModel, ReadKind, TestApiServer};
use serde_json::json;

async fn start() -> (TestApiServer, Client) {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let api = TestApiServer::start().await.expect("start server");
    let client = Client::try_from(Config::new(api.url().parse().expect("url"))).expect("client");
    api.create(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
    }))
    .expect("service");
    (api, client)
}

/// verb, resourceVersion, resourceVersionMatch, continued, the kind.
type Case = (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    bool,
    Option<ReadKind>,
);

#[test]
fn read_kind_follows_resource_version_and_match() {
    use ReadKind::*;
    let cases: &[Case] = &[
        ("get", None, None, false, Some(Quorum)),
        ("get", Some(""), None, false, Some(Quorum)),
        ("get", Some("0"), None, false, Some(Any)),
        ("get", Some("42"), None, false, Some(NotOlderThan)),
        ("list", None, None, false, Some(Quorum)),
        ("list", Some("0"), None, false, Some(Any)),
        ("list", Some("0"), Some("NotOlderThan"), false, Some(Any)),
        ("list", Some("42"), None, false, Some(NotOlderThan)),
        (
            "list",
            Some("42"),
            Some("NotOlderThan"),
            false,
            Some(NotOlderThan),
        ),
        ("list", Some("42"), Some("Exact"), false, Some(Exact)),
        ("list", None, None, true, Some(Exact)),
        ("watch", None, None, false, Some(Quorum)),
        ("watch", Some("0"), None, false, Some(Any)),
        ("watch", Some("42"), None, false, Some(NotOlderThan)),
        ("patch", None, None, false, None),
        ("create", Some("0"), None, false, None),
        ("", None, None, false, None),
    ];
    for (verb, rv, m, cont, want) in cases {
        assert_eq!(
            ReadKind::of(verb, *rv, *m, *cont),
            *want,
            "{verb} rv={rv:?} match={m:?} continue={cont}"
        );
    }
    assert!(Quorum.reaches_etcd() && Exact.reaches_etcd());
    assert!(!Any.reaches_etcd() && !NotOlderThan.reaches_etcd());
}

#[tokio::test]
async fn each_read_is_recorded_with_its_kind() {
    let (api, client) = start().await;
    let svcs: Api<Service> = Api::namespaced(client, "default");
    api.clear_requests();
    svcs.get("web").await.expect("quorum get");
    svcs.get_with("web", &GetParams::any())
        .await
        .expect("cache get");
    let rv = api.resource_version().to_string();
    svcs.get_with("web", &GetParams::at(&rv))
        .await
        .expect("not older than");
    svcs.list(&ListParams::default())
        .await
        .expect("quorum list");
    svcs.list(&ListParams::default().match_any())
        .await
        .expect("cache list");
    svcs.list(&ListParams::default().at(&rv).matching(VersionMatch::Exact))
        .await
        .expect("exact list");
    svcs.patch_status(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}})),
    )
    .await
    .expect("patch");
    let kinds: Vec<(String, Option<ReadKind>)> = api
        .requests()
        .into_iter()
        .map(|r| (r.verb, r.read))
        .collect();
    use ReadKind::*;
    assert_eq!(
        kinds,
        vec![
            ("get".into(), Some(Quorum)),
            ("get".into(), Some(Any)),
            ("get".into(), Some(NotOlderThan)),
            ("list".into(), Some(Quorum)),
            ("list".into(), Some(Any)),
            ("list".into(), Some(Exact)),
            ("patch".into(), None),
        ]
    );
    assert_eq!(api.count_reads(|r| r.verb == "get", Quorum), 1);
    assert_eq!(api.count_reads(|_| true, Any), 2);
}

/// The pipe is serial: N charged requests sent at once take at least N × cost
/// (a lower bound, which a slow machine only makes larger); reads from the
/// cache pay nothing, which the request log shows (the time bound is not
/// asserted for them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_reads_and_writes_share_one_serial_pipe() {
    let (api, client) = start().await;
    let cost = Duration::from_micros(500);
    api.set_costs(CostModel {
        quorum_read: cost,
        write: cost,
    });
    let svcs: Api<Service> = Api::namespaced(client, "default");
    let n = 40u32;
    let t = Instant::now();
    let reads = (0..n).map(|_| svcs.get("web"));
    let svcs2 = &svcs;
    let writes = (0..n).map(|i| async move {
        let patch =
            json!({"status": {"loadBalancer": {"ingress": [{"ip": format!("10.0.0.{i}")}]}}});
        svcs2
            .patch_status("web", &PatchParams::default(), &Patch::Merge(patch))
            .await
    });
    let (r, w) = tokio::join!(
        futures::future::join_all(reads),
        futures::future::join_all(writes)
    );
    assert!(r.iter().chain(w.iter()).all(Result::is_ok));
    let took = t.elapsed();
    assert!(
        took >= cost * (2 * n),
        "{} charged requests at {cost:?} each took only {took:?}",
        2 * n
    );
    let q = api.count_reads(|_| true, ReadKind::Quorum);
    assert_eq!(q, n as usize);
    // Costs off again: nothing is charged.
    api.set_costs(CostModel::default());
    svcs.get("web").await.expect("get");
}
