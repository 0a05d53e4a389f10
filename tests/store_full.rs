//! A full disk heals by itself (docs/ha.md): the real `pier` binary with
//! its `state_dir` on a small tmpfs, against the test API server. The disk
//! fills while 200 Services are created; those that cannot be persisted
//! stay pending (`AllocationFailed`), `pier status` and `pier_store_failing`
//! say the store fails; once space is freed, every pending Service gets
//! its IP without a restart and without any IP moving or being given twice.
//!
//! Needs root (mount); under CI=true a missing prerequisite fails.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/netlab.rs"]
mod netlab;
use daemon::Pier;

use pier_testapi::TestApiServer;
use serde_json::{json, Value};

const SERVICES: usize = 200;

/// A tmpfs of `size` mounted on a new directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs on {}", dir.path().display());
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write a filler file until the disk is full.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xA5u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn config(dir: &Path, state: &Path, kubeconfig: &Path) -> PathBuf {
    let text = format!(
        r#"[gateway]
router_id = "10.66.0.2"
state_dir = "{state}"
api_socket = "{dir}/pier.sock"
metrics_listen = "127.0.0.1:0"

[kubernetes]
kubeconfig = "{kc}"
claim_unclassed = true
lease_namespace = "pier-system"

[[pools]]
name = "public"
addresses = ["10.77.0.0/23"]
"#,
        state = state.display(),
        dir = dir.display(),
        kc = kubeconfig.display(),
    );
    let path = dir.join("pier.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn lb(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}
    })
}

/// Every Service's IPs from its status, by name.
fn status_ips(api: &TestApiServer) -> BTreeMap<String, Vec<String>> {
    api.list("v1", "Service", Some("shop"))
        .iter()
        .map(|s| {
            let ips = s["status"]["loadBalancer"]["ingress"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i["ip"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            (
                s["metadata"]["name"].as_str().unwrap_or("").to_string(),
                ips,
            )
        })
        .collect()
}

fn pier_status(socket: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_pier"))
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Wait for what the daemon must bring about (generous: this checks
/// behaviour, not speed).
async fn until<T>(what: &str, pier: &Pier, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) => {
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {what}; last: {last}\n{}",
                    pier.log_text()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_heals_without_a_restart_and_moves_no_ip() {
    if !netlab::prerequisites("store_full", &["mount", "umount"]) {
        return;
    }
    let api = TestApiServer::start().await.unwrap();
    for ns in ["pier-system", "shop"] {
        api.create(json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name": ns}}))
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    api.kubeconfig(&kc).unwrap();
    let disk = SmallDisk::mount("8m");
    let state = disk.path().join("state");
    let cfg = config(dir.path(), &state, &kc);
    let socket = dir.path().join("pier.sock");
    let mut pier = Pier::start(&cfg);

    // Some Services while there is space.
    for i in 0..20 {
        api.create(lb(&format!("s{i:03}"))).unwrap();
    }
    let early = until("the first 20 Services allocated", &pier, || {
        let all = status_ips(&api);
        if all.values().filter(|v| !v.is_empty()).count() == 20 {
            Ok(all)
        } else {
            Err(format!("{all:?}"))
        }
    })
    .await;

    // The disk fills; the rest are created.
    let filler = disk.fill();
    for i in 20..SERVICES {
        api.create(lb(&format!("s{i:03}"))).unwrap();
    }
    until(
        "Services pending with AllocationFailed, the store failing",
        &pier,
        || {
            let failed = api
                .list("events.k8s.io/v1", "Event", Some("shop"))
                .iter()
                .filter(|e| e["reason"] == "AllocationFailed")
                .count();
            let status = pier_status(&socket);
            let failing = status["engine"]["store_failing"].is_object();
            if failed > 0 && failing {
                Ok(())
            } else {
                Err(format!("{failed} AllocationFailed events; status {status}"))
            }
        },
    )
    .await;
    let during = status_ips(&api);
    let pending = during.values().filter(|v| v.is_empty()).count();
    assert!(pending > 0, "nothing pending on a full disk: {during:?}");
    eprintln!("full disk: {pending} of {SERVICES} Services pending");

    // Space comes back: every Service is served, no restart.
    std::fs::remove_file(&filler).unwrap();
    let after = until("every Service allocated", &pier, || {
        let all = status_ips(&api);
        let with = all.values().filter(|v| !v.is_empty()).count();
        if with == SERVICES {
            Ok(all)
        } else {
            Err(format!("{with} of {SERVICES} have IPs"))
        }
    })
    .await;
    assert!(
        pier.child.try_wait().unwrap().is_none(),
        "pier must heal without a restart:\n{}",
        pier.log_text()
    );
    // Nothing that had an IP moved; no IP given twice.
    for (name, ips) in &early {
        assert_eq!(after.get(name), Some(ips), "{name} moved");
    }
    for (name, ips) in &during {
        if !ips.is_empty() {
            assert_eq!(after.get(name), Some(ips), "{name} moved");
        }
    }
    let mut seen = BTreeMap::new();
    for (name, ips) in &after {
        assert_eq!(ips.len(), 1, "{name}: {ips:?}");
        if let Some(other) = seen.insert(ips[0].clone(), name.clone()) {
            panic!("{} given to {other} and {name}", ips[0]);
        }
    }
    until("the store reported working again", &pier, || {
        let status = pier_status(&socket);
        if status["engine"]["store_failing"].is_null() && status["engine"]["pending"] == 0 {
            Ok(())
        } else {
            Err(status.to_string())
        }
    })
    .await;

    let log = pier.log_text();
    eprintln!(
        "log: {} failed writes, {} 'cannot undo', {} store works again",
        log.matches("store write failed").count(),
        log.matches("cannot undo").count(),
        log.matches("store writes succeed again").count()
    );

    // What the store holds is what the Services' status says.
    pier.stop();
    let _disk_alive = &disk;
    let again = Pier::start(&cfg);
    api.create(lb("later")).unwrap();
    let last = until("a new Service allocated after the restart", &again, || {
        let all = status_ips(&api);
        match all.get("later") {
            Some(v) if !v.is_empty() => Ok(all),
            _ => Err(format!("{:?}", all.get("later"))),
        }
    })
    .await;
    for (name, ips) in &after {
        assert_eq!(last.get(name), Some(ips), "{name} moved across a restart");
    }
    assert!(
        !after.values().any(|v| v == &last["later"]),
        "the store lost an allocation: {:?} given again",
        last["later"]
    );
    again.stop();
}
