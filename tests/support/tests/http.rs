//! Raw HTTP behaviour: discovery documents, error bodies, routing corner cases.

use http_body_util::BodyExt;
use hyper::Request;
use kube::client::Body;
use kube::{Client, Config};
use pier_testapi::{CustomResource, TestApiServer};
use serde_json::{json, Value};

async fn start() -> (TestApiServer, Client) {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let api = TestApiServer::start().await.unwrap();
    let client = Client::try_from(Config::new(api.url().parse().unwrap())).unwrap();
    (api, client)
}

async fn call(
    client: &Client,
    method: &str,
    path: &str,
    ct: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(ct) = ct {
        req = req.header("content-type", ct);
    }
    let resp = client
        .send(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    (code, v)
}

async fn get(client: &Client, path: &str) -> (u16, Value) {
    call(client, "GET", path, None, vec![]).await
}

#[tokio::test]
async fn discovery_documents() {
    let (api, client) = start().await;
    api.register_crd(
        CustomResource::new(
            "network.kubesphere.io",
            &["v1alpha2", "v1alpha1"],
            "BgpPeer",
            "bgppeers",
        )
        .cluster_scoped(),
    );
    let (code, v) = get(&client, "/version").await;
    assert_eq!(code, 200);
    assert_eq!(v["major"], "1");
    let (_, v) = get(&client, "/api").await;
    assert_eq!(v["kind"], "APIVersions");
    assert_eq!(v["versions"], json!(["v1"]));
    let (_, v) = get(&client, "/api/v1").await;
    assert_eq!(v["kind"], "APIResourceList");
    let names: Vec<&str> = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for n in [
        "services",
        "services/status",
        "nodes",
        "nodes/status",
        "namespaces",
        "events",
    ] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    let (_, v) = get(&client, "/apis").await;
    let groups: Vec<&str> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    for g in [
        "events.k8s.io",
        "discovery.k8s.io",
        "coordination.k8s.io",
        "network.kubesphere.io",
    ] {
        assert!(groups.contains(&g), "{g} in {groups:?}");
    }
    let (_, v) = get(&client, "/apis/network.kubesphere.io").await;
    assert_eq!(v["kind"], "APIGroup");
    assert_eq!(v["preferredVersion"]["version"], "v1alpha2");
    let (_, v) = get(&client, "/apis/network.kubesphere.io/v1alpha1").await;
    assert_eq!(v["resources"][0]["name"], "bgppeers");
    assert_eq!(v["resources"][0]["namespaced"], false);
    assert_eq!(v["resources"][1]["name"], "bgppeers/status");
    let (code, _) = get(&client, "/healthz").await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn error_bodies_match_apiserver() {
    let (_api, client) = start().await;
    let (code, v) = get(&client, "/api/v1/namespaces/default/services/nope").await;
    assert_eq!(code, 404);
    assert_eq!(
        v,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "services \"nope\" not found", "reason": "NotFound",
               "details": {"name": "nope", "kind": "services"}, "code": 404})
    );
    let (code, v) = get(&client, "/apis/nothing.example/v1/things").await;
    assert_eq!((code, v["reason"].as_str()), (404, Some("NotFound")));
    assert_eq!(
        v["message"],
        "the server could not find the requested resource"
    );
    // A namespaced resource addressed by name without a namespace is not a route.
    let (code, _) = get(&client, "/api/v1/services/x").await;
    assert_eq!(code, 404);
    // Cluster-scoped resource under a namespace: not a route.
    let (code, _) = get(&client, "/api/v1/namespaces/default/nodes").await;
    assert_eq!(code, 404);
    let (code, v) = call(
        &client,
        "POST",
        "/api/v1/namespaces/default/services/x",
        Some("application/json"),
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(
        (code, v["reason"].as_str()),
        (405, Some("MethodNotAllowed"))
    );
    let (code, v) = get(&client, "/api/v1/services?labelSelector=app%20in%20(").await;
    assert_eq!((code, v["reason"].as_str()), (400, Some("BadRequest")));
    let (code, _) = get(&client, "/api/v1/services?fieldSelector=spec.nothing%3D1").await;
    assert_eq!(code, 400);
    let (code, _) = call(
        &client,
        "POST",
        "/api/v1/namespaces/default/services",
        Some("application/json"),
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(code, 400);
    let (code, v) = call(
        &client,
        "POST",
        "/api/v1/namespaces/default/services",
        Some("application/json"),
        serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "Bad_Name"}, "spec": {}})).unwrap(),
    )
    .await;
    assert_eq!((code, v["reason"].as_str()), (422, Some("Invalid")));
    let (code, _) = call(
        &client,
        "POST",
        "/api/v1/namespaces/default/services",
        Some("application/json"),
        vec![b' '; 4 * 1024 * 1024],
    )
    .await;
    assert_eq!(code, 413);
}

#[tokio::test]
async fn patch_content_types() {
    let (api, client) = start().await;
    api.register_crd(
        CustomResource::new("network.kubesphere.io", &["v1alpha2"], "Eip", "eips").cluster_scoped(),
    );
    api.create(json!({"apiVersion": "network.kubesphere.io/v1alpha2", "kind": "Eip", "metadata": {"name": "e"}, "spec": {"a": 1}}))
        .unwrap();
    let path = "/apis/network.kubesphere.io/v1alpha2/eips/e";
    let (code, _) = call(
        &client,
        "PATCH",
        path,
        Some("application/strategic-merge-patch+json"),
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(
        code, 415,
        "strategic merge is not served for custom resources"
    );
    let (code, _) = call(&client, "PATCH", path, Some("text/plain"), b"{}".to_vec()).await;
    assert_eq!(code, 415);
    let (code, v) = call(
        &client,
        "PATCH",
        path,
        Some("application/merge-patch+json"),
        br#"{"spec":{"b":2}}"#.to_vec(),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(v["spec"], json!({"a": 1, "b": 2}));
    // Optimistic concurrency through a patch.
    let (code, v) = call(
        &client,
        "PATCH",
        path,
        Some("application/merge-patch+json"),
        br#"{"metadata":{"resourceVersion":"1"},"spec":{"c":3}}"#.to_vec(),
    )
    .await;
    assert_eq!((code, v["reason"].as_str()), (409, Some("Conflict")));
    // Strategic merge on a built-in kind.
    api.create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}}))
        .unwrap();
    let (code, v) = call(
        &client,
        "PATCH",
        "/api/v1/nodes/n1",
        Some("application/strategic-merge-patch+json"),
        br#"{"metadata":{"labels":{"zone":"a"}}}"#.to_vec(),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(v["metadata"]["labels"]["zone"], "a");
    assert_eq!(
        v["status"]["addresses"][0]["address"], "192.0.2.1",
        "node status kept on create"
    );
    // Apply creates (201) and needs a field manager.
    let cfg = br#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"l"},"spec":{"holderIdentity":"me"}}"#;
    let lease = "/apis/coordination.k8s.io/v1/namespaces/default/leases/l";
    let (code, _) = call(
        &client,
        "PATCH",
        lease,
        Some("application/apply-patch+yaml"),
        cfg.to_vec(),
    )
    .await;
    assert_eq!(code, 422);
    let (code, v) = call(
        &client,
        "PATCH",
        &format!("{lease}?fieldManager=pier"),
        Some("application/apply-patch+yaml"),
        cfg.to_vec(),
    )
    .await;
    assert_eq!(code, 201);
    assert_eq!(v["metadata"]["managedFields"][0]["manager"], "pier");
    assert_eq!(
        v["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:holderIdentity"],
        json!({})
    );
    let (code, _) = call(
        &client,
        "PATCH",
        &format!("{lease}?fieldManager=pier"),
        Some("application/apply-patch+yaml"),
        cfg.to_vec(),
    )
    .await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn namespace_status_path_deletecollection_dry_run_finalizers() {
    let (api, client) = start().await;
    let (code, v) = get(&client, "/api/v1/namespaces/default/status").await;
    assert_eq!(code, 200);
    assert_eq!(v["status"]["phase"], "Active");
    assert_eq!(
        v["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "default"
    );

    for (i, team) in ["a", "a", "b"].iter().enumerate() {
        api.create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("c{i}"), "labels": {"team": team}}}))
            .unwrap();
    }
    let (code, _) = call(
        &client,
        "POST",
        "/api/v1/namespaces/default/configmaps?dryRun=All",
        Some("application/json"),
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"dry"}}"#.to_vec(),
    )
    .await;
    assert_eq!(code, 201);
    assert!(api.get("v1", "ConfigMap", Some("default"), "dry").is_none());
    let (code, v) = call(
        &client,
        "DELETE",
        "/api/v1/namespaces/default/configmaps?labelSelector=team%3Da",
        None,
        vec![],
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    assert_eq!(api.list("v1", "ConfigMap", None).len(), 1);

    // Finalizers hold a deleted object until they are removed.
    api.create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "held", "finalizers": ["pier.io/x"]}}))
        .unwrap();
    api.delete("v1", "ConfigMap", Some("default"), "held")
        .unwrap();
    let held = api.get("v1", "ConfigMap", Some("default"), "held").unwrap();
    assert!(held["metadata"]["deletionTimestamp"].is_string());
    api.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "held",
        json!({"metadata": {"finalizers": null}}),
    )
    .unwrap();
    assert!(api
        .get("v1", "ConfigMap", Some("default"), "held")
        .is_none());
}

#[tokio::test]
async fn legacy_watch_path_and_single_object_watch() {
    let (api, client) = start().await;
    api.create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}))
        .unwrap();
    api.create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}}))
        .unwrap();
    // timeoutSeconds=1 so that the body ends and can be read whole.
    let (code, v) = get(
        &client,
        "/api/v1/watch/namespaces/default/configmaps?timeoutSeconds=1",
    )
    .await;
    assert_eq!(code, 200);
    let text = v.as_str().unwrap().to_string();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["type"], "ADDED");
    assert_eq!(lines[0]["object"]["kind"], "ConfigMap");
    assert_eq!(lines[0]["object"]["apiVersion"], "v1");
    let (_, v) = get(
        &client,
        "/api/v1/namespaces/default/configmaps/b?watch=1&timeoutSeconds=1",
    )
    .await;
    let text = match v {
        Value::String(s) => s,
        other => other.to_string(),
    };
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["object"]["metadata"]["name"], "b");
}

#[tokio::test]
async fn injected_failures_then_recovery() {
    let (api, client) = start().await;
    api.fail_next("get", "namespaces", 429, 1);
    api.fail_next("*", "namespaces", 503, 1);
    api.fail_next("list", "services", 500, 1);
    // kube retries 429/503/504 by itself (honouring Retry-After): one call, three attempts.
    let (code, _) = get(&client, "/api/v1/namespaces/default").await;
    assert_eq!(code, 200);
    let statuses: Vec<u16> = api
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/namespaces/default")
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![429, 503, 200]);
    // 500 is not retried: the caller sees the Status.
    let (code, v) = get(&client, "/api/v1/namespaces/default/services").await;
    assert_eq!((code, v["reason"].as_str()), (500, Some("InternalError")));
    let (code, _) = get(&client, "/api/v1/namespaces/default/services").await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn openelb_crds_are_served() {
    let (api, client) = start().await;
    for crd in CustomResource::openelb() {
        api.register_crd(crd);
    }
    for v in ["v1alpha1", "v1alpha2"] {
        let (code, doc) = get(&client, &format!("/apis/network.kubesphere.io/{v}")).await;
        assert_eq!(code, 200);
        let names: Vec<&str> = doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        for n in ["eips", "bgpconfs", "bgppeers", "eips/status"] {
            assert!(names.contains(&n), "{n} in {names:?}");
        }
    }
    api.create(json!({"apiVersion": "network.kubesphere.io/v1alpha1", "kind": "BgpPeer", "metadata": {"name": "p"}, "spec": {"conf": {"peerAs": 65001}}}))
        .unwrap();
    let (_, v) = get(&client, "/apis/network.kubesphere.io/v1alpha2/bgppeers/p").await;
    assert_eq!(v["apiVersion"], "network.kubesphere.io/v1alpha2");
    assert_eq!(v["spec"]["conf"]["peerAs"], 65001);
}

/// events.k8s.io/v1 Events are validated as kube-apiserver does for that
/// API: required fields and limits at create, series and immutable fields
/// on update; core/v1 writes keep the legacy (lax) rules.
#[tokio::test]
async fn events_v1_are_validated_strictly() {
    let (_api, client) = start().await;
    let path = "/apis/events.k8s.io/v1/namespaces/default/events";
    let ok = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "web.1"},
        "eventTime": "2026-12-01T10:00:00.000000Z",
        "regarding": {"apiVersion": "v1", "kind": "Service", "namespace": "default", "name": "web"},
        "reason": "IPAllocated", "note": "allocated 10.0.0.1", "type": "Normal",
        "action": "Allocate", "reportingController": "pier", "reportingInstance": "gw1_7",
    });
    let post = |body: Value| {
        let client = client.clone();
        async move {
            call(
                &client,
                "POST",
                path,
                Some("application/json"),
                serde_json::to_vec(&body).unwrap(),
            )
            .await
        }
    };
    for (field, change) in [
        ("eventTime", json!(null)),
        ("type", json!("Info")),
        ("reportingController", json!(null)),
        ("reportingController", json!("not a name!")),
        ("reportingInstance", json!(null)),
        ("action", json!(null)),
        ("reason", json!("R".repeat(129))),
        ("note", json!("n".repeat(1025))),
        ("deprecatedCount", json!(3)),
        (
            "series",
            json!({"count": 1, "lastObservedTime": "2026-12-01T10:00:00.000000Z"}),
        ),
    ] {
        let mut bad = ok.clone();
        bad[field] = change;
        let (code, v) = post(bad).await;
        assert_eq!(code, 422, "{field}: {v}");
        assert_eq!(v["reason"], "Invalid", "{v}");
        assert!(v["message"].as_str().unwrap().contains(field), "{v}");
    }
    let (code, v) = post(ok.clone()).await;
    assert_eq!(code, 201, "{v}");
    let merge = |body: Value| {
        let client = client.clone();
        async move {
            call(
                &client,
                "PATCH",
                &format!("{path}/web.1"),
                Some("application/merge-patch+json"),
                serde_json::to_vec(&body).unwrap(),
            )
            .await
        }
    };
    let (code, v) =
        merge(json!({"series": {"count": 1, "lastObservedTime": "2026-12-01T10:01:00.000000Z"}}))
            .await;
    assert_eq!(code, 422, "{v}");
    let (code, v) = merge(json!({"note": "another note"})).await;
    assert_eq!(code, 422, "{v}");
    assert!(v["message"].as_str().unwrap().contains("immutable"), "{v}");
    let (code, v) =
        merge(json!({"series": {"count": 2, "lastObservedTime": "2026-12-01T10:01:00.000000Z"}}))
            .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["series"]["count"], 2);
    // The legacy API accepts an Event without the new fields.
    let (code, v) = call(
        &client,
        "POST",
        "/api/v1/namespaces/default/events",
        Some("application/json"),
        serde_json::to_vec(&json!({
            "metadata": {"name": "web.2"},
            "involvedObject": {"kind": "Service", "name": "web", "namespace": "default"},
            "reason": "IPAllocated", "message": "m", "type": "Normal",
        }))
        .unwrap(),
    )
    .await;
    assert_eq!(code, 201, "{v}");
}
