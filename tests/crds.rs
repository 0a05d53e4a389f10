//! The real `pier` binary with `kubernetes.crds = true` against the test
//! API server serving OpenELB's Eip, BgpConf and BgpPeer kinds: every field
//! mapped into pier's pools and peers (read back through `pier pools` and
//! from the BGP OPEN pier sends), refusals and overlaps reported in status,
//! conflicts with the config file reported once, Eip status after
//! allocations and releases (written only when it changes), live changes
//! without resetting an unchanged session, v1alpha1 objects, and an Eip
//! deleted while in use.

#[path = "common/rbac.rs"]
mod rbac;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pier_testapi::{CustomResource, ServerOptions, TestApiServer};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const V2: &str = "network.kubesphere.io/v1alpha2";
const V1: &str = "network.kubesphere.io/v1alpha1";

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/kube.rs"]
mod kube;
#[path = "common/wait.rs"]
mod wait;
use daemon::Pier;
use kube::{pool, PierConfig, POOL_V4};
use wait::until;

struct Env {
    api: TestApiServer,
    dir: tempfile::TempDir,
    kc: PathBuf,
}

impl Env {
    async fn new() -> Env {
        let api =
            kube::api_server(ServerOptions::default(), &["pier-system", "shop", "other"]).await;
        for crd in CustomResource::openelb() {
            api.register_crd(crd);
        }
        let (dir, kc) = kube::workdir(&api);
        Env { api, dir, kc }
    }

    /// `pier.toml`, its state in `state`, its socket `pier.sock`.
    fn config(&self, extra: &str) -> PathBuf {
        PierConfig {
            name: "pier",
            state: Some("state"),
            kubernetes: "crds = true\n",
            pools: pool("public", &[POOL_V4], "auto_assign = false\n"),
            extra,
            ..Default::default()
        }
        .write(self.dir.path(), &self.kc)
    }

    fn socket(&self) -> PathBuf {
        kube::socket(&self.dir.path().join("pier.toml"))
    }

    fn create(&self, api_version: &str, kind: &str, name: &str, spec: Value) {
        self.api
            .create(json!({"apiVersion": api_version, "kind": kind,
                "metadata": {"name": name}, "spec": spec}))
            .unwrap();
    }

    fn patch(&self, kind: &str, name: &str, patch: Value) {
        self.api.merge_patch(V2, kind, None, name, patch).unwrap();
    }

    fn status(&self, kind: &str, name: &str) -> Value {
        self.api
            .get(V2, kind, None, name)
            .map(|o| o["status"].clone())
            .unwrap_or(Value::Null)
    }

    /// `pier pools --json`, by pool name.
    fn pools(&self) -> std::collections::BTreeMap<String, Value> {
        kube::cli_json(&self.socket(), "pools")
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["pool"]["name"].as_str()?.to_string(), p["pool"].clone())))
            .collect()
    }

    fn service(&self, ns: &str, name: &str, annotations: Value, port: u16) {
        self.api
            .create(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": ns, "annotations": annotations},
                "spec": {"type": "LoadBalancer", "ports": [{"port": port, "protocol": "TCP"}]}
            }))
            .unwrap();
    }

    fn ips(&self, ns: &str, name: &str) -> Vec<String> {
        kube::ips_in(&self.api, ns, name)
    }

    /// Events about one of the OpenELB objects.
    fn events(&self, kind: &str, name: &str, reason: &str) -> Vec<Value> {
        self.api
            .list("events.k8s.io/v1", "Event", None)
            .into_iter()
            .filter(|e| {
                e["reason"] == reason
                    && e["regarding"]["kind"] == kind
                    && e["regarding"]["name"] == name
            })
            .collect()
    }

    fn status_patches(&self, plural: &str, name: &str) -> usize {
        let path = format!("/apis/{V2}/{plural}/{name}/status");
        self.api
            .count_requests(|r| r.method == "PATCH" && r.path == path)
    }
}

/// The first condition of a status: (status, reason, message).
fn accepted(status: &Value) -> Option<(String, String, String)> {
    let c = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Accepted")?;
    Some((
        c["status"].as_str()?.into(),
        c["reason"].as_str()?.into(),
        c["message"].as_str()?.into(),
    ))
}

fn refused_with(env: &Env, name: &str, reason: &str) -> Option<String> {
    let (st, r, msg) = accepted(&env.status("Eip", name))?;
    (st == "False" && r == reason).then_some(msg)
}

#[tokio::test(flavor = "multi_thread")]
async fn eips_become_pools_and_report_usage_conflicts_and_overlaps() {
    let env = Env::new().await;
    env.create(
        V2,
        "Eip",
        "eip-shop",
        json!({"address": "10.80.0.0/30", "protocol": "bgp",
        "priority": 5, "namespaces": ["shop"]}),
    );
    env.api
        .create(json!({"apiVersion": V2, "kind": "Eip",
            "metadata": {"name": "eip-l2",
                "annotations": {"eip.openelb.kubesphere.io/is-default-eip": "true"}},
            "spec": {"address": "10.81.0.1-10.81.0.3", "protocol": "layer2",
                "interface": "can_reach:127.0.0.1"}}))
        .unwrap();
    env.create(
        V2,
        "Eip",
        "eip-v6",
        json!({"address": "fd80::/126",
        "namespaceSelector": {"team": "a"}, "disable": true}),
    );
    env.create(
        V2,
        "Eip",
        "eip-vip",
        json!({"address": "10.82.0.1", "protocol": "vip"}),
    );
    env.create(V2, "Eip", "overlap", json!({"address": "10.80.0.2"}));
    env.create(V2, "Eip", "public", json!({"address": "10.90.0.0/24"}));
    env.create(V2, "Eip", "eip-bad", json!({"address": "10.0.0.300"}));
    let cfg = env.config("");
    let _pier = Pier::start_logging(&cfg, "pier=debug");

    // Each field, as pier's pools show it.
    let pools = until("the Eips' pools", || {
        let p = env.pools();
        (p.len() == 4).then_some(p)
    })
    .await;
    assert_eq!(
        pools.keys().collect::<Vec<_>>(),
        vec!["eip-l2", "eip-shop", "eip-v6", "public"]
    );
    let shop = &pools["eip-shop"];
    assert_eq!(shop["ranges"], json!(["10.80.0.0/30"]));
    assert_eq!(shop["mode"], "bgp");
    assert_eq!(shop["priority"], 5);
    assert_eq!(shop["namespaces"], json!(["shop"]));
    assert_eq!(
        (shop["auto_assign"].as_bool(), shop["disabled"].as_bool()),
        (Some(false), Some(false))
    );
    let l2 = &pools["eip-l2"];
    assert_eq!(l2["ranges"], json!(["10.81.0.1-10.81.0.3"]));
    assert_eq!(l2["mode"], "l2");
    assert_eq!(
        l2["interface"], "lo",
        "can_reach:127.0.0.1 is reached through lo"
    );
    assert_eq!(l2["auto_assign"], true);
    let v6 = &pools["eip-v6"];
    assert_eq!(v6["ranges"], json!(["fd80::/126"]));
    assert_eq!(v6["namespace_selector"], json!({"team": "a"}));
    assert_eq!(v6["disabled"], true);
    assert_eq!(
        pools["public"]["ranges"],
        json!(["10.77.0.0/24"]),
        "the file wins"
    );

    // Refusals say why, in the status.
    let msg = until("vip refused", || refused_with(&env, "eip-vip", "Invalid")).await;
    assert!(msg.contains("vip"), "{msg}");
    let msg = until("overlap refused", || {
        refused_with(&env, "overlap", "Overlap")
    })
    .await;
    assert!(msg.contains("eip-shop"), "{msg}");
    let msg = until("bad address refused", || {
        refused_with(&env, "eip-bad", "Invalid")
    })
    .await;
    assert!(msg.contains("10.0.0.300"), "{msg}");
    let msg = until("conflict reported", || {
        refused_with(&env, "public", "Conflict")
    })
    .await;
    assert!(msg.contains("config file"), "{msg}");
    until("ConfigConflict Event", || {
        env.events("Eip", "public", "ConfigConflict").pop()
    })
    .await;
    let v6s = until("eip-v6 status", || {
        let s = env.status("Eip", "eip-v6");
        (s["ready"] == true).then_some(s)
    })
    .await;
    assert_eq!(
        (v6s["v4"].as_bool(), v6s["poolSize"].as_u64()),
        (Some(false), Some(4))
    );

    // Allocations: the namespace's Eip, the default Eip, a shared IP.
    env.service("shop", "web", json!({}), 80);
    env.service("other", "api", json!({}), 80);
    let share =
        json!({"pier.io/sharing-key": "k", "eip.openelb.kubesphere.io/v1alpha2": "eip-shop"});
    env.service("shop", "a", share.clone(), 80);
    until("web", || {
        (env.ips("shop", "web") == ["10.80.0.0"]).then_some(())
    })
    .await;
    until("api", || {
        (env.ips("other", "api") == ["10.81.0.1"]).then_some(())
    })
    .await;
    until("a", || {
        (env.ips("shop", "a") == ["10.80.0.1"]).then_some(())
    })
    .await;
    env.service("shop", "b", share, 443);
    until("b shares a's IP", || {
        (env.ips("shop", "b") == ["10.80.0.1"]).then_some(())
    })
    .await;
    let s = until("eip-shop status with usage", || {
        let s = env.status("Eip", "eip-shop");
        (s["usage"] == 2).then_some(s)
    })
    .await;
    assert_eq!(
        s["used"],
        json!({"10.80.0.0": "shop/web", "10.80.0.1": "shop/a;shop/b"})
    );
    assert_eq!(s["poolSize"], 4);
    assert_eq!(
        (s["firstIP"].as_str(), s["lastIP"].as_str()),
        (Some("10.80.0.0"), Some("10.80.0.3"))
    );
    assert_eq!(
        (
            s["v4"].as_bool(),
            s["ready"].as_bool(),
            s["occupied"].as_bool()
        ),
        (Some(true), Some(true), Some(false))
    );
    let l2s = until("eip-l2 usage", || {
        let s = env.status("Eip", "eip-l2");
        (s["usage"] == 1).then_some(s)
    })
    .await;
    assert_eq!(l2s["used"], json!({"10.81.0.1": "other/api"}));

    // A release shows in the status.
    env.api
        .delete("v1", "Service", Some("shop"), "web")
        .unwrap();
    until("web's IP released in eip-shop's status", || {
        let s = env.status("Eip", "eip-shop");
        (s["usage"] == 1 && s["used"] == json!({"10.80.0.1": "shop/a;shop/b"})).then_some(())
    })
    .await;

    // Status is written only when it changes: passes that write other
    // Eips' status (a Service comes and goes in eip-l2, the default Eip)
    // write nothing to eip-shop.
    let before = env.status_patches("eips", "eip-shop");
    env.service("other", "passing", json!({}), 80);
    until("eip-l2 status with the passing Service", || {
        (env.status("Eip", "eip-l2")["usage"] == 2).then_some(())
    })
    .await;
    env.api
        .delete("v1", "Service", Some("other"), "passing")
        .unwrap();
    until("eip-l2 status without it", || {
        (env.status("Eip", "eip-l2")["usage"] == 1).then_some(())
    })
    .await;
    assert_eq!(
        env.status_patches("eips", "eip-shop"),
        before,
        "status rewritten unchanged"
    );

    // Live changes: a wider range, enabled, an overlap moved away.
    env.patch(
        "Eip",
        "eip-shop",
        json!({"spec": {"address": "10.80.0.0/29"}}),
    );
    env.patch("Eip", "eip-v6", json!({"spec": {"disable": false}}));
    env.patch("Eip", "overlap", json!({"spec": {"address": "10.83.0.1"}}));
    until("live changes in the pools", || {
        let p = env.pools();
        (p.get("eip-shop")
            .is_some_and(|s| s["ranges"] == json!(["10.80.0.0/29"]))
            && p.get("eip-v6").is_some_and(|s| s["disabled"] == false)
            && p.contains_key("overlap"))
        .then_some(())
    })
    .await;
    until("wider pool in the status", || {
        (env.status("Eip", "eip-shop")["poolSize"] == 8).then_some(())
    })
    .await;
    until("overlap now used", || {
        (env.status("Eip", "overlap")["ready"] == true).then_some(())
    })
    .await;
    // The IPs held did not move.
    assert_eq!(env.ips("shop", "a"), ["10.80.0.1"]);
    assert_eq!(env.ips("other", "api"), ["10.81.0.1"]);
    // The conflict was reported once, not at every change.
    let ev = env.events("Eip", "public", "ConfigConflict");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(ev[0]["series"].is_null(), "conflict Event repeated: {ev:?}");
}

/// A minimal BGP peer: reads pier's OPEN, answers OPEN + KEEPALIVE, sends
/// keepalives; `closed` is set when pier closes the connection.
struct FakePeer {
    open: Vec<u8>,
    closed: Arc<AtomicBool>,
}

async fn read_message(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 19];
    s.read_exact(&mut head).await?;
    let len = u16::from_be_bytes([head[16], head[17]]) as usize;
    let mut body = vec![0u8; len.saturating_sub(19)];
    s.read_exact(&mut body).await?;
    Ok((head[18], body))
}

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xffu8; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(kind);
    m.extend_from_slice(body);
    m
}

async fn accept_peer(listener: &TcpListener) -> FakePeer {
    let (mut s, _) = tokio::time::timeout(Duration::from_secs(30), listener.accept())
        .await
        .expect("pier connects to the BgpPeer's address and remotePort")
        .unwrap();
    let (kind, open) = read_message(&mut s).await.unwrap();
    assert_eq!(kind, 1, "OPEN first");
    // AS 65000 (also as 4-octet), hold 9, id 10.0.0.1, IPv4 unicast.
    let caps = [1u8, 4, 0, 1, 0, 1, 65, 4, 0, 0, 0xfd, 0xe8];
    let mut body = vec![
        4u8,
        0xfd,
        0xe8,
        0,
        9,
        10,
        0,
        0,
        1,
        (caps.len() + 2) as u8,
        2,
        caps.len() as u8,
    ];
    body.extend_from_slice(&caps);
    s.write_all(&message(1, &body)).await.unwrap();
    s.write_all(&message(4, &[])).await.unwrap();
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    tokio::spawn(async move {
        let (mut r, mut w) = s.into_split();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        });
        let ka = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if w.write_all(&message(4, &[])).await.is_err() {
                    break;
                }
            }
        });
        let _ = reader.await;
        ka.abort();
        flag.store(true, Ordering::SeqCst);
    });
    FakePeer { open, closed }
}

/// Capabilities of an OPEN: (code, value).
type Capabilities = Vec<(u8, Vec<u8>)>;

/// (my AS, hold time, BGP id, capabilities) of an OPEN body.
fn parse_open(b: &[u8]) -> (u16, u16, [u8; 4], Capabilities) {
    let asn = u16::from_be_bytes([b[1], b[2]]);
    let hold = u16::from_be_bytes([b[3], b[4]]);
    let id = [b[5], b[6], b[7], b[8]];
    let mut caps = Vec::new();
    let params = &b[10..10 + b[9] as usize];
    let mut i = 0;
    while i + 2 <= params.len() {
        let (t, l) = (params[i], params[i + 1] as usize);
        let v = &params[i + 2..i + 2 + l];
        if t == 2 {
            let mut j = 0;
            while j + 2 <= v.len() {
                let (c, cl) = (v[j], v[j + 1] as usize);
                caps.push((c, v[j + 2..j + 2 + cl].to_vec()));
                j += 2 + cl;
            }
        }
        i += 2 + l;
    }
    (asn, hold, id, caps)
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes.
    unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn bgp_objects_become_peers_with_status_and_live_changes() {
    let env = Env::new().await;
    let router = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router_port = router.local_addr().unwrap().port();
    let listen_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.create(
        V2,
        "BgpConf",
        "default",
        json!({"as": 65001, "routerId": "10.9.9.9",
        "listenPort": listen_port, "listenAddresses": ["127.0.0.1"],
        "gracefulRestart": {"enabled": true, "restartTime": 77}, "useMultiplePaths": true}),
    );
    env.create(
        V2,
        "BgpPeer",
        "r1",
        json!({
            "conf": {"peerAs": 65000, "neighborAddress": "127.0.0.1", "vrf": "red"},
            "timers": {"config": {"holdTime": 9, "keepaliveInterval": 3, "connectRetry": 1}},
            "transport": {"remotePort": router_port},
            "afiSafis": [{"config": {"family": {"afi": "ipv4", "safi": "unicast"}, "enabled": true},
                          "addPaths": {"config": {"sendMax": 8}}}],
            "nodeSelector": {"matchLabels": {"rack": "a"}},
        }),
    );
    env.create(
        V2,
        "BgpPeer",
        "r2",
        json!({
            "conf": {"peerAs": 65002, "neighborAddress": "127.0.0.2", "authPassword": "s3cret"},
            "ebgpMultihop": {"enabled": true, "multihopTtl": 2},
            "transport": {"passiveMode": true},
        }),
    );
    env.create(V2, "BgpPeer", "r3", json!({"conf": {"peerAs": 65003}}));
    env.create(V2, "Eip", "pool", json!({"address": "10.85.0.0/30"}));
    // No [bgp] in the file: the BgpConf defines pier's AS.
    let cfg = env.config("");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("[kubernetes]", "shutdown = \"keep\"\n\n[kubernetes]"),
    )
    .unwrap();
    let pier = Pier::start_logging(&cfg, "pier=debug");

    // What pier sends tells the BgpConf and r1 were honoured.
    let first = accept_peer(&router).await;
    let (asn, hold, id, caps) = parse_open(&first.open);
    assert_eq!((asn, hold, id), (65001, 9, [10, 9, 9, 9]));
    let codes: BTreeSet<u8> = caps.iter().map(|(c, _)| *c).collect();
    assert!(
        codes.contains(&69),
        "ADD-PATH offered (sendMax 8): {caps:?}"
    );
    let mp: Vec<&Vec<u8>> = caps
        .iter()
        .filter(|(c, _)| *c == 1)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(mp, vec![&vec![0u8, 1, 0, 1]], "IPv4 unicast only");
    let gr = caps
        .iter()
        .find(|(c, _)| *c == 64)
        .expect("graceful restart");
    let first_gr = u16::from_be_bytes([gr.1[0], gr.1[1]]);
    assert_eq!(first_gr & 0x0fff, 77);
    // listenPort / listenAddresses.
    until("pier listens on the BgpConf's port", || {
        std::net::TcpStream::connect(("127.0.0.1", listen_port))
            .ok()
            .map(|_| ())
    })
    .await;
    // r2's password is kept where only pier reads it.
    let pw = env
        .dir
        .path()
        .join("state/openelb-peers/127.0.0.2.password");
    until("r2's password file", || {
        std::fs::read_to_string(&pw).ok().filter(|t| t == "s3cret")
    })
    .await;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&pw).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // BgpPeer status: this gateway's session, and what pier cannot honour.
    let gw = hostname();
    let s = until("r1 established in its status", || {
        let s = env.status("BgpPeer", "r1");
        (s["nodesPeerStatus"][&gw]["peerState"]["sessionState"] == "BGP_FSM_ESTABLISHED")
            .then_some(s)
    })
    .await;
    // `pier peers` shows the speaker started from the BgpConf.
    let out = Command::new(env!("CARGO_BIN_EXE_pier"))
        .args(["peers", "--json", "--socket"])
        .arg(env.socket())
        .output()
        .unwrap();
    let peers: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let r1 = peers
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["peer"] == "127.0.0.1")
        .unwrap_or_else(|| panic!("pier peers: {peers}"));
    assert_eq!(
        (r1["state"].as_str(), r1["local_asn"].as_u64()),
        (Some("Established"), Some(65001))
    );
    let mine = &s["nodesPeerStatus"][&gw];
    assert_eq!(mine["peerState"]["peerAs"], 65000);
    assert!(
        mine["timersState"]["uptime"]
            .as_str()
            .is_some_and(|u| u.ends_with('Z')),
        "{mine}"
    );
    let unsupported = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Unsupported")
        .expect("unsupported fields named")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        unsupported.contains("conf.vrf") && !unsupported.contains("nodeSelector"),
        "nodeSelector is honoured (rack-aware next hops): {unsupported}"
    );
    until("r3 refused", || {
        let (st, r, msg) = accepted(&env.status("BgpPeer", "r3"))?;
        (st == "False" && r == "Invalid" && msg.contains("neighborAddress")).then_some(())
    })
    .await;
    until("r2 waiting (passive)", || {
        let s = env.status("BgpPeer", "r2");
        s["nodesPeerStatus"][&gw]["peerState"]["sessionState"]
            .as_str()
            .map(|_| ())
    })
    .await;
    let conf = until("BgpConf status", || {
        accepted(&env.status("BgpConf", "default"))
    })
    .await;
    assert_eq!(conf.0, "True");
    let conds = env.status("BgpConf", "default")["conditions"].to_string();
    assert!(conds.contains("useMultiplePaths"), "{conds}");

    // Changes elsewhere (a pool, another peer) leave r1's session alone.
    env.patch("Eip", "pool", json!({"spec": {"address": "10.85.0.0/29"}}));
    env.patch(
        "BgpPeer",
        "r2",
        json!({"spec": {"conf": {"peerAs": 65012}}}),
    );
    until("r2 changed", || {
        let s = env.status("BgpPeer", "r2");
        (s["nodesPeerStatus"][&gw]["peerState"]["peerAs"] == 65012).then_some(())
    })
    .await;
    until("pool changed", || {
        env.pools()
            .get("pool")
            .is_some_and(|p| p["ranges"] == json!(["10.85.0.0/29"]))
            .then_some(())
    })
    .await;
    env.patch(
        "BgpPeer",
        "r2",
        json!({"spec": {"conf": {"authPassword": "n3w"}}}),
    );
    until("r2's new password", || {
        std::fs::read_to_string(&pw).ok().filter(|t| t == "n3w")
    })
    .await;
    assert!(
        !first.closed.load(Ordering::SeqCst),
        "r1's session was reset by an unrelated change"
    );
    // r1's own change restarts its session with the new hold time.
    env.patch(
        "BgpPeer",
        "r1",
        json!({"spec": {"timers": {"config": {"holdTime": 30, "keepaliveInterval": 10}}}}),
    );
    let second = accept_peer(&router).await;
    assert!(first.closed.load(Ordering::SeqCst));
    assert_eq!(parse_open(&second.open).1, 30);

    // packaging/rbac.yaml grants exactly the verbs pier used on these kinds.
    let granted: BTreeSet<_> = rbac::grants()
        .into_iter()
        .filter(|(r, _)| rbac::is_openelb(r))
        .collect();
    let all_used = rbac::used_verbs(&env.api);
    let used: BTreeSet<_> = all_used
        .iter()
        .filter(|(r, _)| rbac::is_openelb(r))
        .cloned()
        .collect();
    assert_eq!(
        used, granted,
        "rbac.yaml vs verbs used on eips/bgpconfs/bgppeers"
    );
    let missing: Vec<_> = all_used.difference(&rbac::grants()).cloned().collect();
    assert!(missing.is_empty(), "used but not granted: {missing:?}");

    // shutdown = "keep" with the BgpConf's graceful restart: a graceful
    // stop, and the restarted pier sets the Restart State bit.
    pier.stop();
    assert!(
        env.dir.path().join("state/bgp-graceful-stop").exists(),
        "no graceful stop"
    );
    let _pier = Pier::start_logging(&cfg, "pier=debug");
    let third = accept_peer(&router).await;
    let caps = parse_open(&third.open).3;
    let gr = caps
        .iter()
        .find(|(c, _)| *c == 64)
        .expect("graceful restart");
    assert_eq!(
        gr.1[0] & 0x80,
        0x80,
        "Restart State bit after a graceful stop"
    );
    assert_eq!(first_gr & 0x8000, 0, "no R bit on the first start");
}

#[tokio::test(flavor = "multi_thread")]
async fn file_bgp_wins_and_conflicts_are_reported_once() {
    let env = Env::new().await;
    env.create(V2, "BgpConf", "default", json!({"as": 65001}));
    env.create(
        V2,
        "BgpPeer",
        "same",
        json!({"conf": {"peerAs": 65000, "neighborAddress": "127.0.0.1"}}),
    );
    env.create(
        V2,
        "BgpPeer",
        "extra",
        json!({"conf": {"peerAs": 65005, "neighborAddress": "127.0.0.5"},
        "transport": {"passiveMode": true}}),
    );
    let bgp = r#"
[bgp]
asn = 64999
listen = false

[[bgp.peers]]
address = "127.0.0.1"
asn = 65000
passive = true
"#;
    let cfg = env.config(bgp);
    let pier = Pier::start_logging(&cfg, "pier=debug");
    for (kind, name) in [("BgpConf", "default"), ("BgpPeer", "same")] {
        until("ConfigConflict Event", || {
            env.events(kind, name, "ConfigConflict").pop()
        })
        .await;
        until("Conflict in the status", || {
            let (st, r, _) = accepted(&env.status(kind, name))?;
            (st == "False" && r == "Conflict").then_some(())
        })
        .await;
    }
    // The extra peer runs with the file's AS.
    let gw = hostname();
    until("extra peer with the file's AS", || {
        let s = env.status("BgpPeer", "extra");
        (s["nodesPeerStatus"][&gw]["peerState"]["localAs"] == 64999).then_some(())
    })
    .await;
    // A reload and object changes do not report the conflicts again.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("passive = true", "passive = true\nhold_time = 30"),
    )
    .unwrap();
    let reloads = || {
        pier.log_text()
            .matches("SIGHUP: configuration reloaded")
            .count()
    };
    pier.signal(libc::SIGHUP);
    until("the reload", || (reloads() == 1).then_some(())).await;
    env.patch(
        "BgpPeer",
        "extra",
        json!({"spec": {"conf": {"description": "x"}}}),
    );
    env.patch(
        "BgpConf",
        "default",
        json!({"spec": {"routerId": "10.9.9.9"}}),
    );
    // A peer added after all that shows in its status once pier has
    // handled everything before it.
    env.create(
        V2,
        "BgpPeer",
        "later",
        json!({"conf": {"peerAs": 65006, "neighborAddress": "127.0.0.6"},
        "transport": {"passiveMode": true}}),
    );
    until("the later peer's status", || {
        let s = env.status("BgpPeer", "later");
        (s["nodesPeerStatus"][&gw]["peerState"]["localAs"] == 64999).then_some(())
    })
    .await;
    for (kind, name) in [("BgpConf", "default"), ("BgpPeer", "same")] {
        let ev = env.events(kind, name, "ConfigConflict");
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert!(ev[0]["series"].is_null(), "reported again: {ev:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn v1alpha1_objects_and_an_eip_deleted_while_in_use() {
    let env = Env::new().await;
    // Written as v1alpha1; pier reads v1alpha2 from the same storage.
    env.create(V1, "Eip", "old", json!({"address": "10.86.0.0/30"}));
    let cfg = env.config("");
    let _pier = Pier::start_logging(&cfg, "pier=debug");
    until("the v1alpha1 Eip as a pool", || {
        env.pools()
            .get("old")
            .is_some_and(|p| p["ranges"] == json!(["10.86.0.0/30"]))
            .then_some(())
    })
    .await;
    let pool = json!({"eip.openelb.kubesphere.io/v1alpha2": "old"});
    env.service("shop", "keep", pool.clone(), 80);
    until("keep gets an IP", || {
        (env.ips("shop", "keep") == ["10.86.0.0"]).then_some(())
    })
    .await;
    until("status readable as v1alpha1", || {
        let s = env.api.get(V1, "Eip", None, "old")?["status"].clone();
        (s["usage"] == 1 && s["used"] == json!({"10.86.0.0": "shop/keep"})).then_some(())
    })
    .await;

    // An edit that breaks it while in use keeps the last good pool, disabled.
    env.patch("Eip", "old", json!({"spec": {"address": "10.86.0.0/33"}}));
    let msg = until("broken edit reported", || {
        refused_with(&env, "old", "Invalid")
    })
    .await;
    assert!(msg.contains("previous definition"), "{msg}");
    until("its Services still shown", || {
        (env.status("Eip", "old")["used"] == json!({"10.86.0.0": "shop/keep"})).then_some(())
    })
    .await;
    until("the last good pool, disabled", || {
        env.pools()
            .get("old")
            .is_some_and(|p| p["disabled"] == true && p["ranges"] == json!(["10.86.0.0/30"]))
            .then_some(())
    })
    .await;
    assert_eq!(env.ips("shop", "keep"), ["10.86.0.0"]);
    env.patch("Eip", "old", json!({"spec": {"address": "10.86.0.0/30"}}));
    until("fixed", || {
        env.pools()
            .get("old")
            .is_some_and(|p| p["disabled"] == false)
            .then_some(())
    })
    .await;

    // Deleted while in use: the Service keeps its IP; the pool gives no new ones.
    env.api.delete(V1, "Eip", None, "old").unwrap();
    until("the deleted Eip's pool drains (disabled)", || {
        env.pools()
            .get("old")
            .is_some_and(|p| p["disabled"] == true)
            .then_some(())
    })
    .await;
    env.service("shop", "late", pool, 81);
    // pier has seen it, and says why it has no IP.
    let late = until("late pending in pier's view", || {
        kube::pier_service(&env.socket(), "shop", "late").filter(|s| s["pending"].is_string())
    })
    .await;
    assert!(
        late["ips"].as_array().is_some_and(|a| a.is_empty()),
        "{late}"
    );
    assert!(
        env.ips("shop", "late").is_empty(),
        "a deleted Eip gave a new IP"
    );
    assert_eq!(env.ips("shop", "keep"), ["10.86.0.0"]);
    // The last Service goes: so does the pool.
    env.api
        .delete("v1", "Service", Some("shop"), "keep")
        .unwrap();
    until("the drained pool is gone", || {
        (!env.pools().contains_key("old")).then_some(())
    })
    .await;
    assert!(env.ips("shop", "late").is_empty());
}

fn manifest(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/packaging/crds/network.kubesphere.io_{name}.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn crd_manifests_serve_both_versions_and_cel_checks_addresses() {
    for (kind, plural) in [
        ("Eip", "eips"),
        ("BgpConf", "bgpconfs"),
        ("BgpPeer", "bgppeers"),
    ] {
        let text = manifest(plural);
        for line in [
            format!("  name: {plural}.network.kubesphere.io"),
            "  group: network.kubesphere.io".into(),
            format!("    kind: {kind}"),
            "  scope: Cluster".into(),
            "  - name: v1alpha2".into(),
            "  - name: v1alpha1".into(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{plural}: no line {line:?}"
            );
        }
        // v1alpha2 is the storage version, v1alpha1 only served.
        let v2 = text.find("- name: v1alpha2").unwrap();
        let v1 = text.find("- name: v1alpha1").unwrap();
        assert!(text[v2..v1].contains("storage: true"), "{plural}");
        assert!(
            text[v1..].contains("storage: false") && text[v1..].contains("served: true"),
            "{plural}"
        );
        assert_eq!(
            text.matches("subresources:").count(),
            2,
            "{plural}: status subresource in both"
        );
    }
    let eips = manifest("eips");
    for col in [".spec.address", ".status.usage", ".status.poolSize"] {
        assert!(
            eips.contains(&format!("jsonPath: {col}")),
            "printer column {col}"
        );
    }
    assert!(eips.contains(
        "enum:\n                - bgp\n                - layer2\n                - vip\n"
    ));
    assert!(eips.contains("rule: self in ['bgp', 'layer2', 'vip']"));
    // Addresses are checked with Kubernetes' CEL IP/CIDR library (the test
    // API server cannot evaluate CEL; tests/crd_bounds.rs checks that every
    // value a rule reads is bounded, so the API server's cost budget holds).
    let address = "rule: isIP(self) || isCIDR(self) || (self.split('-').size() == 2 \
                   && isIP(self.split('-')[0]) && isIP(self.split('-')[1]) \
                   && ip(self.split('-')[0]).family() == ip(self.split('-')[1]).family())";
    assert_eq!(eips.matches(address).count(), 2, "both versions");
    let peers = manifest("bgppeers");
    assert_eq!(peers.matches("rule: isIP(self)\n").count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_crds_stop_pier_with_a_clear_message() {
    let api = kube::api_server(ServerOptions::default(), &["pier-system"]).await;
    let (dir, kc) = kube::workdir(&api);
    let env = Env { api, dir, kc };
    let cfg = env.config("");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_pier"))
            .args(["run", "--config"])
            .arg(&cfg)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot list eips.network.kubesphere.io"),
        "{err}"
    );
    assert!(err.contains("packaging/crds/"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn relists_and_api_restarts_change_nothing() {
    let env = Env::new().await;
    env.create(
        V2,
        "Eip",
        "e",
        json!({"address": "10.87.0.0/30", "namespaces": ["shop"]}),
    );
    let cfg = env.config("");
    let pier = Pier::start_logging(&cfg, "pier=debug");
    env.service("shop", "web", json!({}), 80);
    until("web", || {
        (env.ips("shop", "web") == ["10.87.0.0"]).then_some(())
    })
    .await;
    until("status", || {
        (env.status("Eip", "e")["usage"] == 1).then_some(())
    })
    .await;
    // web's IPAllocated Event follows its status write.
    until("web's IPAllocated Event", || {
        kube::events(&env.api, "IPAllocated", "web").pop()
    })
    .await;
    let writes = env.status_patches("eips", "e");
    let pools = env.pools();
    let log_mark = std::fs::read_to_string(&pier.log)
        .unwrap()
        .matches("pools changed")
        .count();
    // Watches end, the server restarts, history is lost (410 → relist);
    // each fault once pier watches the Eips again.
    let eip_watches = || {
        env.api
            .count_requests(|r| r.verb == "watch" && r.path.ends_with("/eips") && r.status == 200)
    };
    let watches = eip_watches();
    env.api.drop_watches();
    until("the Eips watched again", || {
        (eip_watches() > watches).then_some(())
    })
    .await;
    let watches = eip_watches();
    env.api.restart();
    until("the Eips watched again after the restart", || {
        (eip_watches() > watches).then_some(())
    })
    .await;
    env.api.compact();
    env.api.drop_watches();
    // Something new must come through after the relists.
    env.create(V2, "Eip", "after", json!({"address": "10.88.0.0/30"}));
    until("the new Eip after the relists", || {
        env.pools().contains_key("after").then_some(())
    })
    .await;
    let mut now = env.pools();
    now.remove("after");
    assert_eq!(now, pools, "a relist changed a pool");
    assert_eq!(env.ips("shop", "web"), ["10.87.0.0"]);
    assert_eq!(
        env.status_patches("eips", "e"),
        writes,
        "a relist rewrote an unchanged status"
    );
    let changes = std::fs::read_to_string(&pier.log)
        .unwrap()
        .matches("pools changed")
        .count();
    assert_eq!(changes, log_mark + 1, "only the new Eip changed the pools");
}

#[tokio::test(flavor = "multi_thread")]
async fn stops_promptly_while_the_api_server_hangs() {
    let env = Env::new().await;
    env.create(V2, "Eip", "e", json!({"address": "10.89.0.0/30"}));
    let cfg = env.config("");
    let mut pier = Pier::start_logging(&cfg, "pier=debug");
    until("the Eip's status", || {
        (env.status("Eip", "e")["ready"] == true).then_some(())
    })
    .await;
    // Every request now hangs (far longer than the test waits); a change
    // makes pier write the Eip's status.
    let changes = || pier.log_text().matches("pools changed").count();
    let before = changes();
    env.api.set_latency(Duration::from_secs(3600));
    env.patch("Eip", "e", json!({"spec": {"address": "10.89.0.0/29"}}));
    // pier applies the change, and is then stuck in its API calls.
    until("pier applies the change", || {
        (changes() > before).then_some(())
    })
    .await;
    pier.signal(libc::SIGTERM);
    let exited = until("pier to exit after SIGTERM", || {
        pier.child.try_wait().ok().flatten()
    })
    .await;
    assert!(exited.success(), "{exited:?}");
}
