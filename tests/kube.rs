//! The real `pier` binary against the wire-compatible test API server:
//! allocation into status, Events, release when a Service stops being
//! pier's, pending with a reason, stability across restarts and a lost
//! store, relists that change nothing, leader failover between two
//! gateways, and clear start-up errors (RBAC, unreachable server).

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/kube.rs"]
mod kube;
#[path = "common/rbac.rs"]
mod rbac;
#[path = "common/wait.rs"]
mod wait;
use daemon::Pier;
use kube::{events, holder, ingress, ips, lb, pool, setup, status_writes, PierConfig, POOL_DUAL};
use wait::until;

use pier_testapi::{ServerOptions, TestApiServer};
use serde_json::json;

fn config(dir: &Path, name: &str, kubeconfig: &Path, lease: (u32, u32)) -> PathBuf {
    PierConfig {
        name,
        lease,
        pools: pool("public", POOL_DUAL, ""),
        ..Default::default()
    }
    .write(dir, kubeconfig)
}

#[tokio::test(flavor = "multi_thread")]
async fn allocate_status_events_release_and_pending_reason() {
    let (api, dir, kc) = setup(ServerOptions {
        tls: true,
        bearer_token: Some("s3cret".into()),
        ..Default::default()
    })
    .await;
    let cfg = config(dir.path(), "a", &kc, (4, 1));
    let _pier = Pier::start(&cfg);

    api.create(lb("web", json!({}))).unwrap();
    let ing = until("web's status", || {
        let i = ingress(&api, "web");
        (!i.is_empty()).then_some(i)
    })
    .await;
    assert_eq!(ing.len(), 1);
    assert_eq!(ing[0]["ipMode"], "VIP");
    let web_ip = ing[0]["ip"].as_str().unwrap().to_string();
    assert!(web_ip.starts_with("10.77.0."), "{web_ip}");
    until("IPAllocated event", || {
        (!events(&api, "IPAllocated", "web").is_empty()).then_some(())
    })
    .await;

    // Another Service asks for the same IP without a sharing key: pending,
    // with the reason as a Warning Event, and no status.
    api.create(lb("thief", json!({"pier.io/ip": web_ip})))
        .unwrap();
    let ev = until("AllocationFailed event", || {
        events(&api, "AllocationFailed", "thief").pop()
    })
    .await;
    assert_eq!(ev["type"], "Warning");
    let note = ev["note"].as_str().unwrap();
    assert!(note.contains("taken by shop/web"), "{note}");
    assert!(ips(&api, "thief").is_empty());
    // kubectl describe finds a Service's Events by its uid.
    let thief_uid =
        api.get("v1", "Service", Some("shop"), "thief").unwrap()["metadata"]["uid"].clone();
    assert_eq!(ev["regarding"]["uid"], thief_uid, "{ev}");
    assert_eq!(ev["reportingController"], "pier");
    assert!(
        ev["eventTime"].is_string() && ev["action"].is_string(),
        "{ev}"
    );

    // Another reason, then the first again: the repeat is counted in the
    // first Event's series, not a new Event.
    let set_ip = |ip: &str| {
        api.merge_patch(
            "v1",
            "Service",
            Some("shop"),
            "thief",
            json!({"metadata": {"annotations": {"pier.io/ip": ip}}}),
        )
        .unwrap();
    };
    set_ip("10.77.0.999");
    until("thief's InvalidAnnotation event", || {
        events(&api, "InvalidAnnotation", "thief").pop()
    })
    .await;
    set_ip(&web_ip);
    let ev = until("the repeat counted", || {
        events(&api, "AllocationFailed", "thief")
            .into_iter()
            .find(|e| e["series"]["count"] == 2)
    })
    .await;
    assert_eq!(ev["note"].as_str(), Some(note));
    assert_eq!(events(&api, "AllocationFailed", "thief").len(), 1);

    // An invalid annotation is its own reason.
    api.create(lb("typo", json!({"pier.io/ip": "10.77.0.300"})))
        .unwrap();
    until("InvalidAnnotation event", || {
        events(&api, "InvalidAnnotation", "typo").pop()
    })
    .await;

    // web stops being pier's: its IP is released, the status pier wrote is
    // cleared (another controller's entry stays), and thief gets the IP.
    let mut web = api.get("v1", "Service", Some("shop"), "web").unwrap();
    web["status"]["loadBalancer"]["ingress"]
        .as_array_mut()
        .unwrap()
        .push(json!({"hostname": "other.example"}));
    api.update_status(web).unwrap();
    let mut web = api.get("v1", "Service", Some("shop"), "web").unwrap();
    web["spec"]["loadBalancerClass"] = json!("someone-else");
    api.update(web).unwrap();
    until("web's IP cleared", || {
        let i = ingress(&api, "web");
        (i.len() == 1 && i[0]["hostname"] == "other.example").then_some(())
    })
    .await;
    until("IPReleased event", || {
        events(&api, "IPReleased", "web").pop()
    })
    .await;
    until("thief gets the freed IP", || {
        (ips(&api, "thief") == vec![web_ip.clone()]).then_some(())
    })
    .await;

    // Deleting a Service gives its IP back.
    api.delete("v1", "Service", Some("shop"), "thief").unwrap();
    api.create(lb("next", json!({}))).unwrap();
    until("next takes the lowest free IP", || {
        (ips(&api, "next") == vec![web_ip.clone()]).then_some(())
    })
    .await;

    // packaging/rbac.yaml grants exactly what pier used (once the leader
    // has renewed its lease: an update of the lease).
    until("a lease renewal", || {
        (api.count_requests(|r| r.verb == "update" && r.path.ends_with("/leases/pier")) >= 1)
            .then_some(())
    })
    .await;
    // The OpenELB objects' verbs are checked by tests/crds.rs (crds = true).
    let granted: std::collections::BTreeSet<_> = rbac::grants()
        .into_iter()
        .filter(|(r, _)| !rbac::is_openelb(r))
        .collect();
    let used = rbac::used_verbs(&api);
    let missing: Vec<_> = used.difference(&granted).collect();
    assert!(
        missing.is_empty(),
        "pier used verbs rbac.yaml does not grant: {missing:?}"
    );
    let unused: Vec<_> = granted.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "rbac.yaml grants verbs pier did not use: {unused:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_lost_store_and_relist_keep_every_ip() {
    let (api, dir, kc) = setup(ServerOptions::default()).await;
    let cfg = config(dir.path(), "a", &kc, (4, 1));
    let pier = Pier::start(&cfg);
    // Create in an order that is not the IPs' order.
    for i in (0..20).rev() {
        api.create(lb(&format!("s{i:02}"), json!({}))).unwrap();
    }
    let before: Vec<Vec<String>> = until("20 Services allocated", || {
        let all: Vec<Vec<String>> = (0..20).map(|i| ips(&api, &format!("s{i:02}"))).collect();
        all.iter().all(|v| v.len() == 1).then_some(all)
    })
    .await;

    // A relist after 410 Gone changes nothing: no status write. Counted
    // from when every IPAllocated Event is there (they follow the status
    // writes), up to when a Service created after the relist has its IP
    // (pier handles the relist before it).
    until("20 IPAllocated events", || {
        (0..20)
            .all(|i| !events(&api, "IPAllocated", &format!("s{i:02}")).is_empty())
            .then_some(())
    })
    .await;
    let writes = status_writes(&api);
    let lists = api.count_requests(|r| r.verb == "list" && r.path.ends_with("/services"));
    api.compact();
    api.drop_watches();
    until("the relist", || {
        (api.count_requests(|r| r.verb == "list" && r.path.ends_with("/services")) > lists)
            .then_some(())
    })
    .await;
    api.create(lb("marker", json!({}))).unwrap();
    until("a Service created after the relist allocated", || {
        (!ips(&api, "marker").is_empty()).then_some(())
    })
    .await;
    let relists = api.count_requests(|r| r.verb == "list" && r.path.ends_with("/services"));
    assert!(relists >= 2, "the watch should have listed again");
    let marker =
        api.count_requests(|r| r.path == kube::status_path("marker") && r.method == "PATCH");
    assert_eq!(
        status_writes(&api) - marker,
        writes,
        "a relist wrote status"
    );

    // SIGKILL, lose the store entirely, restart: the IPs come back from
    // the Services' status, none moves.
    pier.kill();
    std::fs::remove_dir_all(dir.path().join("state-a")).unwrap();
    let _pier = Pier::start(&cfg);
    api.create(lb("later", json!({}))).unwrap();
    until("the new Service allocated", || {
        (!ips(&api, "later").is_empty()).then_some(())
    })
    .await;
    let after: Vec<Vec<String>> = (0..20).map(|i| ips(&api, &format!("s{i:02}"))).collect();
    assert_eq!(before, after);
    let later = ips(&api, "later");
    assert!(
        !before.iter().any(|v| v == &later),
        "the new Service got an IP already held: {later:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn second_gateway_takes_over_when_the_leader_dies() {
    let (api, dir, kc) = setup(ServerOptions::default()).await;
    let a = Pier::start(&config(dir.path(), "a", &kc, (2, 1)));
    api.create(lb("one", json!({}))).unwrap();
    let one = until("one allocated", || {
        let v = ips(&api, "one");
        (!v.is_empty()).then_some(v)
    })
    .await;
    let b = Pier::start(&config(dir.path(), "b", &kc, (2, 1)));
    let first = until("a lease holder", || holder(&api)).await;
    assert!(
        first.ends_with(&format!("_{}", a.child.id())),
        "a started first and should lead: {first}"
    );
    a.kill();
    let second = until("b takes the lease", || {
        holder(&api).filter(|h| h.ends_with(&format!("_{}", b.child.id())))
    })
    .await;
    assert_ne!(first, second);
    api.create(lb("two", json!({}))).unwrap();
    let two = until("two allocated by the new leader", || {
        let v = ips(&api, "two");
        (!v.is_empty()).then_some(v)
    })
    .await;
    assert_ne!(one, two, "the new leader reused a held IP");
    assert_eq!(ips(&api, "one"), one, "the leader change moved an IP");
    b.stop();
    // A clean stop gives the lease up.
    until("lease released", || (holder(&api).is_none()).then_some(())).await;
}

fn run_to_exit(cfg: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pier"))
        .args(["run", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_rbac_verb_stops_pier_with_one_clear_message() {
    let (api, dir, kc) = setup(ServerOptions::default()).await;
    api.deny("list", "services");
    let cfg = config(dir.path(), "a", &kc, (4, 1));
    let (code, err) = tokio::task::spawn_blocking(move || run_to_exit(&cfg))
        .await
        .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("cannot list services"), "{err}");
    assert!(err.contains("forbidden"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_server_and_wrong_ca_stop_pier() {
    let (api, dir, kc) = setup(ServerOptions {
        tls: true,
        ..Default::default()
    })
    .await;
    // A kubeconfig whose CA is not the server's.
    let text = std::fs::read_to_string(&kc).unwrap();
    let other = TestApiServer::start_with(ServerOptions {
        tls: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let other_ca = other.kubeconfig_yaml();
    let ca_line = |t: &str| {
        t.lines()
            .find(|l| l.contains("certificate-authority-data"))
            .unwrap()
            .to_string()
    };
    let wrong = text.replace(&ca_line(&text), &ca_line(&other_ca));
    let bad_kc = dir.path().join("wrong-ca");
    std::fs::write(&bad_kc, wrong).unwrap();
    let cfg = config(dir.path(), "a", &bad_kc, (4, 1));
    let (code, err) = tokio::task::spawn_blocking(move || run_to_exit(&cfg))
        .await
        .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("cannot list services"), "{err}");
    assert!(
        err.to_lowercase().contains("certificate"),
        "the message should say the certificate is the problem: {err}"
    );

    // Nothing listening.
    let port = api.addr().port();
    drop(api);
    let closed = text.replace(&format!("127.0.0.1:{port}"), "127.0.0.1:9");
    let closed_kc = dir.path().join("closed");
    std::fs::write(&closed_kc, closed).unwrap();
    let cfg = config(dir.path(), "b", &closed_kc, (4, 1));
    let (code, err) = tokio::task::spawn_blocking(move || run_to_exit(&cfg))
        .await
        .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("cannot list services"), "{err}");
}
