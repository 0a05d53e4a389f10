//! Switching from OpenELB / PorterLB (issue 16), the real `pier` binary
//! against the test API server, started for the first time (empty store)
//! with `claim_unclassed = false`:
//! - Services written as the OpenELB and PorterLB manuals show them
//!   (`lb.kubesphere.io/v1alpha1`, `protocol.*`, `eip.*`) are claimed;
//! - the IPs OpenELB wrote into their status are kept exactly, with no
//!   status write; one outside every pool keeps its status and gets a
//!   Warning saying why pier cannot announce it;
//! - a new manual-style Service gets an IP from the Eip it names;
//! - `protocol: vip` and a protocol that does not match the named Eip's
//!   mode leave the Service pending with a Warning saying so;
//! - a Service without a class and without the claim is left alone.
//!
//! Only `bgp` pools here: an `l2` pool makes `pier run` start its data path
//! on the host (sysctls, nftables); the `layer2` choice is tested in
//! src/ipam/tests.rs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pier_testapi::{ServerOptions, TestApiServer};
use serde_json::{json, Value};

#[path = "common/daemon.rs"]
mod daemon;
use daemon::Pier;

fn config(dir: &Path, kubeconfig: &Path) -> PathBuf {
    let text = format!(
        r#"[gateway]
router_id = "10.66.0.2"
state_dir = "{dir}/state"
api_socket = "{dir}/pier.sock"
metrics_listen = "127.0.0.1:0"

[kubernetes]
kubeconfig = "{kc}"
claim_unclassed = false
lease_namespace = "pier-system"

[[pools]]
name = "eip-pool"
addresses = ["10.77.0.0/24"]
mode = "bgp"
auto_assign = false

[[pools]]
name = "other"
addresses = ["10.78.0.0/24"]
mode = "bgp"
"#,
        dir = dir.display(),
        kc = kubeconfig.display(),
    );
    let path = dir.join("pier.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The manuals' annotations of one product (`openelb` or `porter`).
fn manual(product: &str, protocol: &str, eip: &str) -> Value {
    json!({
        "lb.kubesphere.io/v1alpha1": product,
        format!("protocol.{product}.kubesphere.io/v1alpha1"): protocol,
        format!("eip.{product}.kubesphere.io/v1alpha2"): eip,
    })
}

fn lb(name: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop", "annotations": annotations},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    })
}

/// The status OpenELB wrote before the switch.
fn with_status(api: &TestApiServer, name: &str, ip: &str) {
    let mut s = api.get("v1", "Service", Some("shop"), name).unwrap();
    s["status"]["loadBalancer"]["ingress"] = json!([{"ip": ip}]);
    api.update_status(s).unwrap();
}

fn ips(api: &TestApiServer, name: &str) -> Vec<String> {
    api.get("v1", "Service", Some("shop"), name)
        .and_then(|s| s["status"]["loadBalancer"]["ingress"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i["ip"].as_str().map(String::from))
        .collect()
}

fn warning(api: &TestApiServer, name: &str) -> Option<String> {
    api.list("events.k8s.io/v1", "Event", Some("shop"))
        .into_iter()
        .find(|e| e["type"] == "Warning" && e["regarding"]["name"] == name)
        .and_then(|e| e["note"].as_str().map(String::from))
}

fn status_writes_to(api: &TestApiServer, name: &str) -> usize {
    let path = format!("/api/v1/namespaces/shop/services/{name}/status");
    api.count_requests(|r| r.path == path && r.method != "GET")
}

/// Wait for a condition the daemon must bring about (a generous bound:
/// this checks behaviour, not speed).
async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn openelb_services_are_claimed_and_keep_their_ips() {
    let api = TestApiServer::start_with(ServerOptions::default())
        .await
        .unwrap();
    for ns in ["pier-system", "shop"] {
        api.create(json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":ns}}))
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    api.kubeconfig(&kc).unwrap();

    // What OpenELB and PorterLB left behind.
    api.create(lb("openelb-kept", manual("openelb", "bgp", "eip-pool")))
        .unwrap();
    with_status(&api, "openelb-kept", "10.77.0.33");
    api.create(lb("porter-kept", manual("porter", "bgp", "eip-pool")))
        .unwrap();
    with_status(&api, "porter-kept", "10.77.0.44");
    // OpenELB's IP from an Eip pier was not given: kept, reported.
    api.create(lb("outside", manual("openelb", "bgp", "gone-eip")))
        .unwrap();
    with_status(&api, "outside", "203.0.113.9");
    // New Services as the manuals write them.
    api.create(lb("openelb-new", manual("openelb", "bgp", "eip-pool")))
        .unwrap();
    api.create(lb(
        "porter-ip",
        json!({
            "lb.kubesphere.io/v1alpha1": "porter",
            "eip.porter.kubesphere.io/v1alpha1": "10.77.0.99",
        }),
    ))
    .unwrap();
    api.create(lb("keepalived", manual("openelb", "vip", "eip-pool")))
        .unwrap();
    api.create(lb("wrong-mode", manual("porter", "layer2", "eip-pool")))
        .unwrap();
    api.create(lb("not-ours", json!({}))).unwrap();
    api.clear_requests();

    let _pier = Pier::start(&config(dir.path(), &kc));

    let new = until("openelb-new allocated", || {
        let v = ips(&api, "openelb-new");
        (!v.is_empty()).then_some(v)
    })
    .await;
    assert_eq!(new, ["10.77.0.0"], "the lowest free IP of the named Eip");
    until("porter-ip gets the IP it asks for", || {
        (ips(&api, "porter-ip") == ["10.77.0.99"]).then_some(())
    })
    .await;
    let note = until("the out-of-pool Warning", || warning(&api, "outside")).await;
    assert!(
        note.contains("203.0.113.9") && note.contains("outside every pool"),
        "{note}"
    );
    let note = until("the vip Warning", || warning(&api, "keepalived")).await;
    assert!(note.contains("vip") && note.contains("l2 pool"), "{note}");
    let note = until("the wrong-mode Warning", || warning(&api, "wrong-mode")).await;
    assert!(note.contains("\"eip-pool\" is of mode bgp"), "{note}");

    // Every IP kept exactly; pier wrote none of those statuses.
    assert_eq!(ips(&api, "openelb-kept"), ["10.77.0.33"]);
    assert_eq!(ips(&api, "porter-kept"), ["10.77.0.44"]);
    assert_eq!(ips(&api, "outside"), ["203.0.113.9"]);
    for name in [
        "openelb-kept",
        "porter-kept",
        "outside",
        "keepalived",
        "wrong-mode",
        "not-ours",
    ] {
        assert_eq!(
            status_writes_to(&api, name),
            0,
            "{name}'s status was written"
        );
    }
    assert!(ips(&api, "keepalived").is_empty() && ips(&api, "wrong-mode").is_empty());
    // Unclassed without the claim: never pier's (no Event, no status).
    assert!(ips(&api, "not-ours").is_empty());
    assert!(warning(&api, "not-ours").is_none());
    // The kept IPs are held: the next new Service gets neither.
    api.create(lb("later", manual("openelb", "bgp", "eip-pool")))
        .unwrap();
    let later = until("later allocated", || {
        let v = ips(&api, "later");
        (!v.is_empty()).then_some(v)
    })
    .await;
    assert_eq!(later, ["10.77.0.1"]);
}
