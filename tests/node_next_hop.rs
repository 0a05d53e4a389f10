//! A node's next-hop annotation (issue 16), the real `pier` binary against
//! the test API server: a node with two InternalIPs and PorterLB's
//! `layer2.porter.kubesphere.io/v1alpha1` is used with the annotated
//! address; a node whose annotation names an address it does not have
//! keeps its default address and gets one Warning Event saying why.

use std::path::Path;
use std::time::{Duration, Instant};

use pier_testapi::{ServerOptions, TestApiServer};
use serde_json::{json, Value};

#[path = "common/daemon.rs"]
mod daemon;
use daemon::Pier;

fn node(name: &str, addrs: &[&str], annotations: Value) -> Value {
    let addresses: Vec<Value> = addrs
        .iter()
        .map(|a| json!({"type": "InternalIP", "address": a}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": annotations},
        "status": {"conditions": [{"type": "Ready", "status": "True"}], "addresses": addresses}
    })
}

/// `pier nodes --json`: node name → its addresses, next hop first.
fn pier_nodes(dir: &Path) -> Vec<(String, Vec<String>)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pier"))
        .args(["nodes", "--json", "--socket"])
        .arg(dir.join("pier.sock"))
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let n = if n["node"].is_object() { &n["node"] } else { n };
            let ips = n["internal_ips"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(String::from))
                .collect();
            (n["name"].as_str().unwrap_or_default().to_string(), ips)
        })
        .collect()
}

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
async fn annotated_next_hop_is_used_and_a_bad_one_reported() {
    let api = TestApiServer::start_with(ServerOptions::default())
        .await
        .unwrap();
    api.create(json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"pier-system"}}))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    api.kubeconfig(&kc).unwrap();
    api.create(node(
        "master1",
        &["10.1.0.1", "192.168.0.2"],
        json!({"layer2.porter.kubesphere.io/v1alpha1": "192.168.0.2"}),
    ))
    .unwrap();
    api.create(node(
        "worker1",
        &["10.1.0.2", "192.168.0.3"],
        json!({"pier.io/next-hop": "192.168.0.99"}),
    ))
    .unwrap();
    let cfg = dir.path().join("pier.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[gateway]
router_id = "10.66.0.2"
state_dir = "{d}/state"
api_socket = "{d}/pier.sock"
metrics_listen = "127.0.0.1:0"

[kubernetes]
kubeconfig = "{kc}"
lease_namespace = "pier-system"

[[pools]]
name = "public"
addresses = ["10.77.0.0/24"]
"#,
            d = dir.path().display(),
            kc = kc.display()
        ),
    )
    .unwrap();
    let _pier = Pier::start(&cfg);

    let nodes = until("pier lists both nodes", || {
        let n = pier_nodes(dir.path());
        (n.len() == 2).then_some(n)
    })
    .await;
    assert_eq!(nodes[0].0, "master1");
    assert_eq!(
        nodes[0].1[0], "192.168.0.2",
        "the annotated address first: {nodes:?}"
    );
    assert_eq!(nodes[1].1[0], "10.1.0.2", "the default address: {nodes:?}");

    let ev = until("the Event on worker1", || {
        api.list("events.k8s.io/v1", "Event", Some("default"))
            .into_iter()
            .find(|e| e["regarding"]["kind"] == "Node" && e["regarding"]["name"] == "worker1")
    })
    .await;
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["reason"], "InvalidNextHopAnnotation");
    let note = ev["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("192.168.0.99") && note.contains("not one of the node's addresses"),
        "{note}"
    );
    // A status update of the node does not repeat the Event.
    let mut n = api.get("v1", "Node", None, "worker1").unwrap();
    n["status"]["conditions"][0]["reason"] = json!("KubeletReady");
    api.update_status(n).unwrap();
    api.create(node("worker2", &["10.1.0.3"], json!({})))
        .unwrap();
    until("pier lists worker2", || {
        (pier_nodes(dir.path()).len() == 3).then_some(())
    })
    .await;
    let again: Vec<Value> = api
        .list("events.k8s.io/v1", "Event", Some("default"))
        .into_iter()
        .filter(|e| e["regarding"]["name"] == "worker1")
        .collect();
    assert_eq!(again.len(), 1);
    // kube's recorder would count a repeat in `series`.
    assert!(again[0]["series"].is_null(), "{:?}", again[0]);
    assert!(api
        .list("events.k8s.io/v1", "Event", Some("default"))
        .iter()
        .all(|e| e["regarding"]["name"] != "master1"));
}
