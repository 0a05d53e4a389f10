//! The test API server driven by the real `kube` client and `kube-runtime` watcher.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher;
use kube::{Client, Config};
use pier_testapi::{CustomResource, ServerOptions, TestApiServer};
use serde_json::json;
use std::time::Duration;

fn install_crypto() {
    // kube pulls rustls with ring; a process-wide default avoids ambiguity if another
    // dependency enables aws-lc-rs too.
    let _ = rustls_provider();
}

fn rustls_provider() -> bool {
    tokio_rustls::rustls::crypto::ring::default_provider()
        .install_default()
        .is_ok()
}

async fn start() -> (TestApiServer, Client) {
    install_crypto();
    let api = TestApiServer::start_with(ServerOptions {
        bookmark_interval: Duration::from_millis(100),
        ..Default::default()
    })
    .await
    .expect("start server");
    let config = Config::new(api.url().parse().expect("url"));
    let client = Client::try_from(config).expect("client");
    (api, client)
}

fn svc(name: &str, labels: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "name": "http"}]},
    }))
    .expect("service")
}

fn api_error(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn next_event<S, K>(stream: &mut S) -> watcher::Event<K>
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("watch event within 10s")
        .expect("stream open")
        .expect("watch event ok")
}

#[tokio::test]
async fn service_crud_conflict_and_defaults() {
    let (_api, client) = start().await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let created = services
        .create(&PostParams::default(), &svc("web", json!({"app": "web"})))
        .await
        .unwrap();
    let md = &created.metadata;
    assert!(md.uid.is_some() && md.creation_timestamp.is_some());
    let spec = created.spec.clone().unwrap();
    assert!(spec.cluster_ip.unwrap().starts_with("10.96."));
    assert!(
        spec.ports.unwrap()[0].node_port.is_some(),
        "LoadBalancer gets a nodePort"
    );
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));

    let (code, reason) = api_error(
        services
            .create(&PostParams::default(), &svc("web", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));

    // Update with the current resourceVersion works; the old one then conflicts.
    let mut newer = created.clone();
    newer.metadata.labels = Some([("app".to_string(), "web2".to_string())].into());
    let replaced = services
        .replace("web", &PostParams::default(), &newer)
        .await
        .unwrap();
    assert_ne!(
        replaced.metadata.resource_version,
        created.metadata.resource_version
    );
    let (code, reason) = api_error(
        services
            .replace("web", &PostParams::default(), &newer)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));

    // Unconditional update (no resourceVersion) is allowed.
    let mut uncond = replaced.clone();
    uncond.metadata.resource_version = None;
    uncond.metadata.annotations = Some([("a".to_string(), "b".to_string())].into());
    services
        .replace("web", &PostParams::default(), &uncond)
        .await
        .unwrap();

    let (code, reason) = api_error(services.get("nope").await.unwrap_err());
    assert_eq!((code, reason.as_str()), (404, "NotFound"));

    // Missing namespace.
    let other: Api<Service> = Api::namespaced(client.clone(), "missing");
    let mut s = svc("x", json!({}));
    s.metadata.namespace = Some("missing".into());
    let (code, _) = api_error(other.create(&PostParams::default(), &s).await.unwrap_err());
    assert_eq!(code, 404);

    // Delete with a failing precondition, then for real.
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("wrong".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    let (code, _) = api_error(services.delete("web", &dp).await.unwrap_err());
    assert_eq!(code, 409);
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    assert!(services.get_opt("web").await.unwrap().is_none());
}

#[tokio::test]
async fn status_subresource_writes() {
    let (api, client) = start().await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services
        .create(&PostParams::default(), &svc("web", json!({})))
        .await
        .unwrap();

    // Main-resource writes ignore status.
    let mut s = services.get("web").await.unwrap();
    s.status =
        serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}})).unwrap();
    let r = services
        .replace("web", &PostParams::default(), &s)
        .await
        .unwrap();
    assert_eq!(r.status.unwrap().load_balancer.unwrap().ingress, None);

    // replace_status changes only status.
    let mut s = services.get("web").await.unwrap();
    s.status = serde_json::from_value(
        json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4", "ipMode": "VIP"}]}}),
    )
    .unwrap();
    s.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
    let r = services
        .replace_status("web", &PostParams::default(), &s)
        .await
        .unwrap();
    assert_eq!(r.spec.unwrap().type_.as_deref(), Some("LoadBalancer"));
    let ing = r.status.unwrap().load_balancer.unwrap().ingress.unwrap();
    assert_eq!(ing[0].ip.as_deref(), Some("1.2.3.4"));

    // Merge patch.
    let patch = json!({"status": {"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}]}}});
    let r = services
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(
        r.status.unwrap().load_balancer.unwrap().ingress.unwrap()[0]
            .ip
            .as_deref(),
        Some("5.6.7.8")
    );

    // JSON patch with a passing and a failing test op.
    let ok: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/status/loadBalancer/ingress/0/ip", "value": "5.6.7.8"},
        {"op": "replace", "path": "/status/loadBalancer/ingress/0/ip", "value": "9.9.9.9"},
    ]))
    .unwrap();
    let r = services
        .patch_status("web", &PatchParams::default(), &Patch::<()>::Json(ok))
        .await
        .unwrap();
    assert_eq!(
        r.status.unwrap().load_balancer.unwrap().ingress.unwrap()[0]
            .ip
            .as_deref(),
        Some("9.9.9.9")
    );
    let bad: json_patch::Patch = serde_json::from_value(
        json!([{"op": "test", "path": "/status/loadBalancer/ingress/0/ip", "value": "0.0.0.0"}]),
    )
    .unwrap();
    let (code, _) = api_error(
        services
            .patch_status("web", &PatchParams::default(), &Patch::<()>::Json(bad))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);

    // Server-side apply of status by a field manager, then a conflicting manager.
    let apply = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                       "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}});
    // The earlier merge/json patches own the field (manager derived from the User-Agent),
    // so a non-forced apply conflicts, as with kube-apiserver.
    let (code, _) = api_error(
        services
            .patch_status("web", &PatchParams::apply("pier"), &Patch::Apply(&apply))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 409);
    let pp = PatchParams::apply("pier").force();
    let r = services
        .patch_status("web", &pp, &Patch::Apply(&apply))
        .await
        .unwrap();
    assert_eq!(
        r.status.unwrap().load_balancer.unwrap().ingress.unwrap()[0]
            .ip
            .as_deref(),
        Some("10.0.0.1")
    );
    let mf = r.metadata.managed_fields.unwrap();
    assert!(mf.iter().any(|e| e.manager.as_deref() == Some("pier")
        && e.operation.as_deref() == Some("Apply")
        && e.subresource.as_deref() == Some("status")));
    let other = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                       "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.2"}]}}});
    let (code, reason) = api_error(
        services
            .patch_status(
                "web",
                &PatchParams::apply("intruder"),
                &Patch::Apply(&other),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    let r = services
        .patch_status(
            "web",
            &PatchParams::apply("intruder").force(),
            &Patch::Apply(&other),
        )
        .await
        .unwrap();
    assert_eq!(
        r.status.unwrap().load_balancer.unwrap().ingress.unwrap()[0]
            .ip
            .as_deref(),
        Some("10.0.0.2")
    );

    // Apply that changes nothing writes nothing: same resourceVersion.
    let before = services.get("web").await.unwrap().metadata.resource_version;
    let r = services
        .patch_status(
            "web",
            &PatchParams::apply("intruder"),
            &Patch::Apply(&other),
        )
        .await
        .unwrap();
    assert_eq!(r.metadata.resource_version, before);

    // Apply without a field manager is rejected.
    let (code, _) = api_error(
        services
            .patch_status("web", &PatchParams::default(), &Patch::Apply(&other))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);

    let status_writes = api.count_requests(|r| {
        r.path == "/api/v1/namespaces/default/services/web/status" && r.status == 200
    });
    assert_eq!(status_writes, 6);
}

#[tokio::test]
async fn server_side_apply_creates_and_removes_fields() {
    let (_api, client) = start().await;
    let services: Api<Service> = Api::namespaced(client, "default");
    let cfg = json!({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": "applied", "labels": {"a": "1", "b": "2"}},
                     "spec": {"ports": [{"port": 53, "protocol": "UDP"}]}});
    let r = services
        .patch("applied", &PatchParams::apply("mgr"), &Patch::Apply(&cfg))
        .await
        .unwrap();
    assert_eq!(r.metadata.labels.unwrap().len(), 2);
    let cfg = json!({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": "applied", "labels": {"a": "1"}},
                     "spec": {"ports": [{"port": 53, "protocol": "UDP"}]}});
    let r = services
        .patch("applied", &PatchParams::apply("mgr"), &Patch::Apply(&cfg))
        .await
        .unwrap();
    let labels = r.metadata.labels.unwrap();
    assert_eq!(
        labels.len(),
        1,
        "a label no longer applied is removed: {labels:?}"
    );
}

#[tokio::test]
async fn watcher_lists_watches_and_relists_after_410() {
    let (api, client) = start().await;
    for i in 0..5 {
        api.create(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("s{i}"), "namespace": "default", "labels": {"team": if i % 2 == 0 { "a" } else { "b" }}},
            "spec": {"ports": [{"port": 80}]}}))
        .unwrap();
    }
    let services: Api<Service> = Api::all(client.clone());
    let cfg = watcher::Config::default().labels("team=a").page_size(2);
    let mut stream = watcher(services.clone(), cfg).boxed();
    assert!(matches!(
        next_event(&mut stream).await,
        watcher::Event::Init
    ));
    let mut names = vec![];
    loop {
        match next_event(&mut stream).await {
            watcher::Event::InitApply(s) => names.push(s.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            e => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(names, vec!["s0", "s2", "s4"]);
    // Paging with limit 2 took two list requests.
    assert_eq!(api.count_requests(|r| r.verb == "list"), 2);

    // A live change that leaves the selection is a deletion for this watcher.
    api.merge_patch(
        "v1",
        "Service",
        Some("default"),
        "s2",
        json!({"metadata": {"labels": {"team": "b"}}}),
    )
    .unwrap();
    match next_event(&mut stream).await {
        watcher::Event::Delete(s) => assert_eq!(s.metadata.name.as_deref(), Some("s2")),
        e => panic!("unexpected {e:?}"),
    }
    api.create(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "s9", "namespace": "default", "labels": {"team": "a"}},
        "spec": {"ports": [{"port": 80}]}}))
        .unwrap();
    match next_event(&mut stream).await {
        watcher::Event::Apply(s) => assert_eq!(s.metadata.name.as_deref(), Some("s9")),
        e => panic!("unexpected {e:?}"),
    }

    // Cut the watch first (so the client cannot have seen anything newer), then commit a
    // change and compact past the watcher's position: its re-watch gets 410 and it relists.
    api.set_available(false);
    api.create(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "s10", "namespace": "default", "labels": {"team": "a"}},
        "spec": {"ports": [{"port": 80}]}}))
        .unwrap();
    api.compact();
    api.set_available(true);
    let mut saw_init = false;
    let mut saw_410 = false;
    let mut relisted = vec![];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("event")
            .expect("open")
        {
            Ok(watcher::Event::Init) => saw_init = true,
            Ok(watcher::Event::InitApply(s)) => relisted.push(s.metadata.name.unwrap()),
            Ok(watcher::Event::InitDone) => break,
            Ok(_) => {}
            Err(watcher::Error::WatchError(s)) if s.code == 410 => saw_410 = true,
            Err(_) => {} // the dropped connection
        }
    }
    assert!(
        saw_410,
        "the re-watch from a compacted resourceVersion got 410"
    );
    assert!(saw_init);
    relisted.sort();
    assert_eq!(relisted, vec!["s0", "s10", "s4", "s9"]);
    assert!(api.count_requests(|r| r.verb == "list") >= 4);
}

#[tokio::test]
async fn raw_watch_bookmarks_and_too_old_rv() {
    let (api, client) = start().await;
    let services: Api<Service> = Api::namespaced(client, "default");
    let rv = api.resource_version();
    let wp = WatchParams::default().timeout(5);
    let mut w = services.watch(&wp, &rv.to_string()).await.unwrap().boxed();
    api.create(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}, "spec": {"ports": [{"port": 1}]}}))
        .unwrap();
    let mut saw_added = false;
    let mut saw_bookmark = false;
    while !(saw_added && saw_bookmark) {
        match tokio::time::timeout(Duration::from_secs(5), w.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(WatchEvent::Added(s)) => saw_added = s.metadata.name.as_deref() == Some("a"),
            Some(WatchEvent::Bookmark(b)) => {
                saw_bookmark = saw_added;
                assert!(b.metadata.resource_version.parse::<u64>().unwrap() >= rv);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    api.compact();
    let mut w = services.watch(&wp, &rv.to_string()).await.unwrap().boxed();
    match w.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn streaming_list_watcher() {
    let (api, client) = start().await;
    api.create(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}, "spec": {"ports": [{"port": 1}]}}))
        .unwrap();
    let services: Api<Service> = Api::namespaced(client, "default");
    let mut stream = watcher(services, watcher::Config::default().streaming_lists()).boxed();
    let mut got = vec![];
    loop {
        match next_event(&mut stream).await {
            watcher::Event::Init => {}
            watcher::Event::InitApply(s) => got.push(s.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            e => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(got, vec!["a"]);
    assert_eq!(api.count_requests(|r| r.verb == "list"), 0);
    assert!(api.count_requests(|r| r.query.contains("sendInitialEvents=true")) >= 1);
}

#[tokio::test]
async fn pagination_and_expired_continue() {
    let (api, client) = start().await;
    for i in 0..7 {
        api.create(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("p{i}")}, "spec": {"ports": [{"port": 1}]}}))
            .unwrap();
    }
    let services: Api<Service> = Api::namespaced(client, "default");
    let first = services
        .list(&ListParams::default().limit(3))
        .await
        .unwrap();
    assert_eq!(first.items.len(), 3);
    assert_eq!(first.metadata.remaining_item_count, Some(4));
    let token = first.metadata.continue_.clone().unwrap();
    // A change after the first page does not show in later pages (consistent snapshot).
    api.delete("v1", "Service", Some("default"), "p5").unwrap();
    let second = services
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .unwrap();
    let names: Vec<_> = second
        .items
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, vec!["p3", "p4", "p5"]);
    assert_eq!(
        second.metadata.resource_version,
        first.metadata.resource_version
    );
    api.compact();
    let (code, reason) = api_error(
        services
            .list(&ListParams::default().limit(3).continue_token(&token))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (410, "Expired"));
    // Label and field selectors.
    let l = services
        .list(&ListParams::default().fields("metadata.name=p1"))
        .await
        .unwrap();
    assert_eq!(l.items.len(), 1);
}

#[tokio::test]
async fn leases_events_endpointslices() {
    let (api, client) = start().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "pier", "namespace": "kube-system"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
    }))
    .unwrap();
    let mut l = leases.create(&PostParams::default(), &lease).await.unwrap();
    let stale = l.clone();
    l.spec.as_mut().unwrap().holder_identity = Some("b".into());
    leases
        .replace("pier", &PostParams::default(), &l)
        .await
        .unwrap();
    let (code, _) = api_error(
        leases
            .replace("pier", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 409, "a second candidate with a stale lease loses");

    // events.k8s.io/v1 through kube's Recorder, twice (the second is a series patch).
    let recorder = kube::runtime::events::Recorder::new(client.clone(), "pier".into());
    let svc_ref = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: Some("web".into()),
        namespace: Some("default".into()),
        ..Default::default()
    };
    let ev = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Normal,
        reason: "IPAllocated".into(),
        note: Some("10.0.0.1".into()),
        action: "Allocate".into(),
        secondary: None,
    };
    recorder.publish(&ev, &svc_ref).await.unwrap();
    recorder.publish(&ev, &svc_ref).await.unwrap();
    let events = api.list("events.k8s.io/v1", "Event", Some("default"));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["reason"], "IPAllocated");
    assert_eq!(events[0]["regarding"]["name"], "web");
    assert_eq!(
        events[0]["series"]["count"], 2,
        "the repeat became a series"
    );
    // One storage: the same Event through core/v1, with kube-apiserver's field mapping.
    let as_core = api.list("v1", "Event", Some("default"));
    assert_eq!(as_core.len(), 1);
    assert_eq!(as_core[0]["involvedObject"]["name"], "web");
    assert_eq!(as_core[0]["message"], "10.0.0.1");
    assert_eq!(as_core[0]["reportingComponent"], "pier");
    let ev_api: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), "default");
    let by_regarding = ev_api
        .list(&ListParams::default().fields("regarding.name=web,reportingController=pier"))
        .await
        .unwrap();
    assert_eq!(by_regarding.items.len(), 1);

    // core/v1 Events with a field selector.
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
    let e: k8s_openapi::api::core::v1::Event = serde_json::from_value(json!({
        "metadata": {"generateName": "web."},
        "involvedObject": {"kind": "Service", "name": "web", "namespace": "default"},
        "reason": "IPAllocated", "message": "m", "type": "Normal",
    }))
    .unwrap();
    let created = core.create(&PostParams::default(), &e).await.unwrap();
    assert!(created.metadata.name.unwrap().starts_with("web."));
    let found = core
        .list(&ListParams::default().fields("involvedObject.name=web,reason=IPAllocated"))
        .await
        .unwrap();
    assert_eq!(found.items.len(), 2, "the Recorder's event and this one");

    // EndpointSlices by service-name label.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let s: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.1.0.5"], "nodeName": "n1", "conditions": {"ready": true}}],
        "ports": [{"port": 8080, "protocol": "TCP"}],
    }))
    .unwrap();
    let created = slices.create(&PostParams::default(), &s).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let bumped = slices
        .patch(
            "web-abc",
            &PatchParams::default(),
            &Patch::Merge(json!({"endpoints": [{"addresses": ["10.1.0.6"], "nodeName": "n1"}]})),
        )
        .await
        .unwrap();
    assert_eq!(bumped.metadata.generation, Some(2));
    let got = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name in (web)"))
        .await
        .unwrap();
    assert_eq!(got.items.len(), 1);
    assert_eq!(
        got.items[0].endpoints.as_ref().unwrap()[0]
            .node_name
            .as_deref(),
        Some("n1")
    );

    let nss: Api<Namespace> = Api::all(client);
    assert!(nss.get("default").await.is_ok());
}

#[tokio::test]
async fn custom_resources_share_storage_across_versions() {
    let (api, client) = start().await;
    api.register_crd(
        CustomResource::new(
            "network.kubesphere.io",
            &["v1alpha2", "v1alpha1"],
            "Eip",
            "eips",
        )
        .cluster_scoped(),
    );
    let v2 = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("network.kubesphere.io", "v1alpha2", "Eip"),
        "eips",
    );
    let v1 = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("network.kubesphere.io", "v1alpha1", "Eip"),
        "eips",
    );
    let eips2: Api<DynamicObject> = Api::all_with(client.clone(), &v2);
    let eips1: Api<DynamicObject> = Api::all_with(client.clone(), &v1);
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "network.kubesphere.io/v1alpha2", "kind": "Eip",
        "metadata": {"name": "pool"}, "spec": {"address": "10.77.0.0/24"},
        "status": {"usage": 3},
    }))
    .unwrap();
    let c = eips2.create(&PostParams::default(), &obj).await.unwrap();
    assert_eq!(c.metadata.generation, Some(1));
    assert!(
        c.data.get("status").is_none(),
        "status is dropped on create"
    );
    let through_v1 = eips1.get("pool").await.unwrap();
    assert_eq!(
        through_v1.types.unwrap().api_version,
        "network.kubesphere.io/v1alpha1"
    );
    assert_eq!(through_v1.data["spec"]["address"], "10.77.0.0/24");

    let r = eips1
        .patch_status(
            "pool",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"usage": 1}})),
        )
        .await
        .unwrap();
    assert_eq!(
        r.metadata.generation,
        Some(1),
        "status does not bump generation"
    );
    let r = eips1
        .patch(
            "pool",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"disable": true}})),
        )
        .await
        .unwrap();
    assert_eq!(r.metadata.generation, Some(2));
    let list = eips2.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].data["status"]["usage"], 1);

    // Discovery finds the group and both versions.
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let group = discovery
        .groups()
        .find(|g| g.name() == "network.kubesphere.io")
        .expect("group");
    assert_eq!(group.versions().count(), 2);
    assert!(discovery
        .groups()
        .any(|g| g.name() == "coordination.k8s.io"));

    // Deleting a custom resource returns the object.
    let d = eips2
        .delete("pool", &DeleteParams::default())
        .await
        .unwrap();
    assert!(d.is_left());
}

#[tokio::test]
async fn forbidden_latency_restart_and_outage() {
    let (api, client) = start().await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    services
        .create(&PostParams::default(), &svc("web", json!({})))
        .await
        .unwrap();
    api.deny("patch", "services/status");
    let (code, reason) = api_error(
        services
            .patch_status(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {}})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    // `kubectl auth can-i` agrees: a SelfSubjectAccessReview says the same.
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let ask = |verb: &str, resource: &str, sub: &str| SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                resource: Some(resource.into()),
                subresource: Some(sub.into()),
                namespace: Some("default".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    for (verb, resource, sub, allowed) in [
        ("patch", "services", "status", false),
        ("patch", "services", "", true),
        ("get", "services", "status", true),
    ] {
        let r = reviews
            .create(&PostParams::default(), &ask(verb, resource, sub))
            .await
            .unwrap();
        assert_eq!(
            r.status.map(|s| s.allowed),
            Some(allowed),
            "{verb} {resource}/{sub}"
        );
    }
    // The main resource is not covered by a subresource rule (RBAC semantics).
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    api.allow_all();

    api.set_latency(Duration::from_millis(50));
    services.get("web").await.unwrap();
    api.set_latency(Duration::ZERO);

    // A watch is cut by restart(); the store survives.
    let mut w = services
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    assert!(matches!(
        w.try_next().await.unwrap(),
        Some(WatchEvent::Added(_))
    ));
    api.restart();
    let end = tokio::time::timeout(Duration::from_secs(5), w.try_next())
        .await
        .expect("watch ends");
    assert!(!matches!(end, Ok(Some(_))));
    // A pooled connection the restart closed may fail once, as with a real apiserver.
    let mut ok = false;
    for _ in 0..3 {
        if services.get("web").await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "the store survives a restart");

    api.set_available(false);
    assert!(services.get("web").await.is_err());
    api.set_available(true);
    let mut ok = false;
    for _ in 0..3 {
        if services.get("web").await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "available again");
}

#[tokio::test]
async fn https_with_token_and_client_certificate() {
    install_crypto();
    for (token, certs) in [(Some("s3cret".to_string()), false), (None, true)] {
        let api = TestApiServer::start_with(ServerOptions {
            tls: true,
            bearer_token: token.clone(),
            client_cert_auth: certs,
            ..Default::default()
        })
        .await
        .unwrap();
        let dir =
            std::env::temp_dir().join(format!("pier-testapi-{}-{}", std::process::id(), certs));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kubeconfig");
        api.kubeconfig(&path).unwrap();
        let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
        let config = Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        let client = Client::try_from(config).unwrap();
        let nss: Api<Namespace> = Api::all(client);
        assert!(
            nss.get("default").await.is_ok(),
            "authenticated (token {token:?}, certs {certs})"
        );

        // Without credentials: 401.
        let mut config = Config::new(api.url().parse().unwrap());
        config.root_cert = Some(vec![pem_to_der(api.ca_pem().unwrap())]);
        let anon: Api<Namespace> = Api::all(Client::try_from(config).unwrap());
        let (code, _) = api_error(anon.get("default").await.unwrap_err());
        assert_eq!(code, 401);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test]
async fn plain_http_kubeconfig() {
    install_crypto();
    let api = TestApiServer::start().await.unwrap();
    let path = std::env::temp_dir().join(format!(
        "pier-testapi-plain-{}.kubeconfig",
        std::process::id()
    ));
    api.kubeconfig(&path).unwrap();
    let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let config = Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "default");
    let client = Client::try_from(config).unwrap();
    let nss: Api<Namespace> = Api::all(client);
    assert_eq!(
        nss.list(&ListParams::default()).await.unwrap().items.len(),
        4
    );
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64_decode(&b64)
}

fn base64_decode(s: &str) -> Vec<u8> {
    let mut out = vec![];
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
