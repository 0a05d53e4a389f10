//! A gateway that restarts while the API server is unreachable keeps the
//! traffic (docs/ha.md): pier starts from the plan it stored, announces it,
//! retries the API server in the background and reconciles at the first
//! full sync; what waiting cannot heal still stops the start.
//!
//! - `*_stops_the_start_*`, `*_serves_the_last_known_state_*`: the real
//!   `pier` binary against the test API server (no root needed);
//! - `bgp_restart_without_the_api_server_*`: in network namespaces with
//!   BIRD, a client and three nodes (lab in `tests/e2e/lab.rs`; root).

#[path = "common/netlab.rs"]
mod netlab;

#[path = "e2e/lab.rs"]
mod lab;

#[path = "common/daemon.rs"]
mod daemon;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use daemon::Pier;
use lab::{same_bird_text, E2eLab, Gateway, PATIENCE};
use netlab::wait_for;
use pier_testapi::TestApiServer;
use serde_json::{json, Value};

const PIER: &str = env!("CARGO_BIN_EXE_pier");
const ALL: [&str; 3] = ["10.0.0.11", "10.0.0.12", "10.0.0.13"];

fn config(dir: &Path, kubeconfig: &Path, kube_proxy_port: u16) -> PathBuf {
    let text = format!(
        r#"[gateway]
router_id = "10.66.0.2"
state_dir = "{dir}/state"
api_socket = "{dir}/pier.sock"
metrics_listen = "127.0.0.1:0"

[kubernetes]
kubeconfig = "{kc}"
claim_unclassed = true
lease_namespace = "pier-system"

[[pools]]
name = "public"
addresses = ["10.77.0.0/24"]

[health]
kube_proxy_port = {kube_proxy_port}
"#,
        dir = dir.display(),
        kc = kubeconfig.display(),
    );
    let path = dir.join("pier.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn pier_status(socket: &Path) -> Value {
    let out = Command::new(PIER)
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn pier_status_text(socket: &Path) -> String {
    let out = Command::new(PIER)
        .args(["status", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn until<T>(what: &str, pier: &Pier, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last: {last}\n{}",
                pier.log_text()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn run_to_exit(cfg: &Path) -> (i32, String) {
    let out = Command::new(PIER)
        .args(["run", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// kube-proxy's health endpoint on 127.0.0.1 (the node's address): 200
/// to anything. Its port.
async fn kube_proxy_health() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    port
}

/// An API server with one allocated Service, and a pier that saved its
/// plan and stopped: (server, dir, config, socket, the Service's IP).
async fn with_stored_plan() -> (TestApiServer, tempfile::TempDir, PathBuf, PathBuf, String) {
    let api = TestApiServer::start().await.unwrap();
    for ns in ["pier-system", "shop"] {
        api.create(json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name": ns}}))
            .unwrap();
    }
    api.create(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "n1"},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]
        }
    }))
    .unwrap();
    api.create(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}
    }))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    api.kubeconfig(&kc).unwrap();
    let cfg = config(dir.path(), &kc, kube_proxy_health().await);
    let socket = dir.path().join("pier.sock");
    let pier = Pier::start(&cfg);
    let ip = until("the plan announced and saved", &pier, || {
        let s = pier_status(&socket);
        let e = &s["engine"];
        let ip = api.get("v1", "Service", Some("shop"), "web").and_then(|s| {
            s["status"]["loadBalancer"]["ingress"][0]["ip"]
                .as_str()
                .map(String::from)
        });
        match ip {
            Some(ip)
                if e["vips_announced"] == 1 && e["plan_saved_generation"] == e["generation"] =>
            {
                Ok(ip)
            }
            _ => Err(s.to_string()),
        }
    })
    .await;
    // A crash: nothing saved at stop.
    pier.kill();
    (api, dir, cfg, socket, ip)
}

#[tokio::test(flavor = "multi_thread")]
async fn rbac_refusal_or_a_broken_kubeconfig_stops_the_start_even_with_a_stored_plan() {
    let (api, dir, cfg, _socket, _ip) = with_stored_plan().await;
    api.deny("list", "services");
    let c = cfg.clone();
    let (code, err) = tokio::task::spawn_blocking(move || run_to_exit(&c))
        .await
        .unwrap();
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("cannot list services"), "{err}");
    assert!(err.contains("forbidden"), "{err}");
    assert!(!err.contains("last known state"), "{err}");
    api.allow_all();

    std::fs::write(dir.path().join("kubeconfig"), "this: [is not a kubeconfig").unwrap();
    let (code, err) = tokio::task::spawn_blocking(move || run_to_exit(&cfg))
        .await
        .unwrap();
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("kubeconfig"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_api_server_at_start_serves_the_last_known_state_until_it_answers() {
    let (api, _dir, cfg, socket, ip) = with_stored_plan().await;
    // An outage: connections closed at once.
    api.set_available(false);
    let pier = Pier::start(&cfg);
    let s = until("pier up from the last known state", &pier, || {
        let s = pier_status(&socket);
        if s["engine"]["last_known_state"].is_object() {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    })
    .await;
    assert_eq!(s["engine"]["vips_announced"], 1, "{s}");
    assert_eq!(s["ready"], true, "{s}");
    let text = pier_status_text(&socket);
    assert!(text.contains("the last known state since"), "{text}");
    // No write while the API server is away; back → a full sync, the
    // Service's IP unchanged, the live view.
    api.set_available(true);
    until("the first full sync", &pier, || {
        let s = pier_status(&socket);
        let e = &s["engine"];
        if e["synced"] == true && e["last_known_state"].is_null() {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;
    let now = api.get("v1", "Service", Some("shop"), "web").and_then(|s| {
        s["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()
            .map(String::from)
    });
    assert_eq!(now.as_deref(), Some(ip.as_str()));
    let log = pier.log_text();
    assert!(log.contains("starting from the last known state"), "{log}");
    pier.stop();
}

/// The API server's port refused (TCP reset) on the api host, or open.
fn block_api(e: &E2eLab, blocked: bool) {
    let port = e.api.addr().port();
    if blocked {
        e.lab.sh(
            "api",
            &format!(
                "nft -f - <<'EOF'
table inet blockapi {{
    chain input {{
        type filter hook input priority 0; policy accept;
        tcp dport {port} reject with tcp reset
    }}
}}
EOF"
            ),
        );
    } else {
        e.lab.sh("api", "nft delete table inet blockapi");
    }
}

#[test]
fn bgp_restart_without_the_api_server_keeps_every_request_and_reconciles_after() {
    if !lab::prerequisites("restart_offline") {
        return;
    }
    let mut e = E2eLab::new("ro", PIER, true, &["gw"]);
    let cfg = e.gateway_config(&Gateway::default());
    let pier = e.start_pier("gw", &cfg);
    e.create_service("web", false, json!({}));
    e.create_service("local", true, json!({}));
    e.endpoints("local", &["n1", "n2"]);
    let vip = e.wait_status_ip("web", &pier);
    let lvip = e.wait_status_ip("local", &pier);
    e.wait_router_hops(&vip, &ALL, "web over the three nodes", &pier);
    e.wait_router_hops(
        &lvip,
        &["10.0.0.11", "10.0.0.12"],
        "local over n1, n2",
        &pier,
    );
    wait_for("the plan saved", PATIENCE, || {
        let (_, out) = e.cli("gw", "status --json");
        let s: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        let en = &s["engine"];
        if en["vips_announced"] == 2 && en["plan_saved_generation"] == en["generation"] {
            Ok(())
        } else {
            Err(out)
        }
    });

    // Continuous load through the router from here on.
    let stop = e.lab.dir.join("stop-load");
    let load = format!(
        "while [ ! -e {stop} ]; do curl -s -m 1 http://{vip}/ || echo FAIL; sleep 0.02; done",
        stop = stop.display()
    );
    e.lab.spawn("c", "load", &["sh", "-c", &load]);
    std::thread::sleep(Duration::from_millis(500));

    // A crash, the API server unreachable (connection refused), a restart.
    e.lab.signal(&pier, libc::SIGKILL);
    e.lab.stop(&pier);
    block_api(&e, true);
    let again = e.start_pier("gw", &cfg);
    wait_for(
        "the session re-established from the stored plan, nothing stale",
        PATIENCE,
        || {
            let p = e.birdc("show protocols all pier");
            let log = e.lab.log(&again);
            if p.contains("Established")
                && !p.to_lowercase().contains("stale")
                && log.contains("BGP session established")
            {
                Ok(())
            } else {
                Err(format!("{p}\n{log}"))
            }
        },
    );
    let log = e.lab.log(&again);
    assert!(log.contains("starting from the last known state"), "{log}");
    assert_eq!(e.router_hops(&vip), ALL);
    assert_eq!(e.router_hops(&lvip), ["10.0.0.11", "10.0.0.12"]);
    let (_, status) = e.cli("gw", "status");
    assert!(status.contains("the last known state since"), "{status}");
    let (code, ready) = e.http_get("gw", "/readyz");
    assert_eq!(code, 200, "{ready}");
    assert!(ready.contains("last known state"), "{ready}");
    let (_, metrics) = e.http_get("gw", "/metrics");
    assert!(
        metrics.contains("pier_running_from_last_known_state 1"),
        "{metrics}"
    );
    let local_route = e.birdc(&format!("show route all {lvip}/32"));

    // Meanwhile n3 left the cluster. The API server comes back: pier
    // syncs and withdraws n3, and changes nothing else.
    e.api
        .delete("v1", "Node", None, "n3")
        .expect("delete node n3");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(e.router_hops(&vip), ALL, "changed before the API came back");
    block_api(&e, false);
    e.wait_router_hops(
        &vip,
        &["10.0.0.11", "10.0.0.12"],
        "n3 withdrawn after the first sync",
        &again,
    );
    wait_for("the live view", PATIENCE, || {
        let (_, metrics) = e.http_get("gw", "/metrics");
        if metrics.contains("pier_running_from_last_known_state 0") {
            Ok(())
        } else {
            Err(metrics)
        }
    });
    let local_after = e.birdc(&format!("show route all {lvip}/32"));
    assert!(
        same_bird_text(&local_route, &local_after),
        "the unchanged VIP was re-sent:\n{local_route}\n{local_after}"
    );

    std::fs::write(&stop, "").expect("stop file");
    std::thread::sleep(Duration::from_millis(1500));
    let out = e.lab.log("load");
    let answers: Vec<&str> = out.lines().collect();
    assert!(answers.len() > 10, "too few requests: {out}");
    let failed = answers.iter().filter(|a| **a == "FAIL").count();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed across the restart without the API server",
        answers.len()
    );
    let served: BTreeSet<&str> = answers.iter().copied().collect();
    assert!(
        served.is_subset(&BTreeSet::from(["n1", "n2", "n3"])),
        "{served:?}"
    );
    e.lab.stop(&again);
}
