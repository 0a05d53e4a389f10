//! End to end in network namespaces with pools and peers coming ONLY from
//! OpenELB-compatible objects: the config file has no `[bgp]` and no
//! `[[pools]]`; an Eip, the BgpConf `default` and a BgpPeer in the (test)
//! API server define them. The real `pier` binary peers with BIRD 2, gives
//! a LoadBalancer Service an IP from the Eip, and BIRD's kernel table gets
//! the VIP via the node.
//!
//! The test API server listens on 127.0.0.1 *inside the gateway's
//! namespace* (pier there cannot reach the root namespace's loopback): it
//! runs on a thread that entered that namespace.

#[path = "common/netlab.rs"]
mod netlab;
#[path = "common/ns_kube.rs"]
mod ns_kube;

use std::time::Duration;

use netlab::{path_str, wait_for, Lab};
use ns_kube::{HealthPort, NsApi};
use pier_testapi::CustomResource;
use serde_json::{json, Value};

const PIER: &str = env!("CARGO_BIN_EXE_pier");
const V2: &str = "network.kubesphere.io/v1alpha2";

fn birdc(lab: &Lab, cmd: &str) -> String {
    let sock = path_str(&lab.dir.join("bird.ctl"));
    lab.try_sh("r", &format!("birdc -s {sock} {cmd}")).1
}

/// The gateways of the router's kernel route to `prefix`, sorted.
fn kernel_gateways(lab: &Lab, prefix: &str) -> Vec<String> {
    let (_, out) = lab.try_sh("r", &format!("ip -j route show {prefix}"));
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_default();
    let mut gws = Vec::new();
    for r in v.as_array().into_iter().flatten() {
        if let Some(g) = r["gateway"].as_str() {
            gws.push(g.to_string());
        }
        for nh in r["nexthops"].as_array().into_iter().flatten() {
            if let Some(g) = nh["gateway"].as_str() {
                gws.push(g.to_string());
            }
        }
    }
    gws.sort();
    gws
}

#[test]
fn pools_and_peers_only_from_openelb_objects_reach_bird() {
    if !netlab::prerequisites("crds_netns", &["ip", "bird", "birdc"]) {
        return;
    }
    let mut lab = Lab::new("crd");
    lab.host("r", &["10.0.0.1/24"]);
    lab.host("gw", &["10.0.0.2/24"]);
    lab.host("n1", &["10.0.0.11/24"]);
    let _health = HealthPort::start(&lab.ns("n1"), "10.0.0.11:10256");

    let bird = lab.write(
        "bird.conf",
        &format!(
            r#"log "{dir}/bird-log" all;
router id 10.0.0.1;
protocol device {{ scan time 1; }}
protocol kernel k4 {{ ipv4 {{ export all; import none; }}; merge paths on; }}
protocol bgp pier {{
  local 10.0.0.1 as 65000;
  neighbor 10.0.0.2 as 65010;
  passive on;
  hold time 9;
  ipv4 {{ import all; export none; add paths rx; }};
}}
"#,
            dir = path_str(&lab.dir)
        ),
    );
    let sock = path_str(&lab.dir.join("bird.ctl"));
    lab.spawn(
        "r",
        "bird",
        &["bird", "-f", "-c", &path_str(&bird), "-s", &sock],
    );

    let ns_api = NsApi::start(&lab.ns("gw"));
    let api = &ns_api.api;
    for crd in CustomResource::openelb() {
        api.register_crd(crd);
    }
    for ns in ["pier-system", "shop"] {
        api.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .unwrap();
    }
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}],
                   "addresses": [{"type": "InternalIP", "address": "10.0.0.11"}]}});
    api.create(node.clone()).unwrap();
    api.update_status(node).unwrap();
    api.create(json!({"apiVersion": V2, "kind": "Eip",
        "metadata": {"name": "vips", "annotations": {"eip.openelb.kubesphere.io/is-default-eip": "true"}},
        "spec": {"address": "192.0.2.10-192.0.2.20", "protocol": "bgp"}}))
        .unwrap();
    api.create(
        json!({"apiVersion": V2, "kind": "BgpConf", "metadata": {"name": "default"},
        "spec": {"as": 65010, "routerId": "10.0.0.2", "listenPort": 17900}}),
    )
    .unwrap();
    api.create(json!({"apiVersion": V2, "kind": "BgpPeer", "metadata": {"name": "router"},
        "spec": {"conf": {"peerAs": 65000, "neighborAddress": "10.0.0.1"},
                 "timers": {"config": {"holdTime": 9, "connectRetry": 1}},
                 "afiSafis": [{"config": {"family": {"afi": "ipv4", "safi": "unicast"}, "enabled": true},
                               "addPaths": {"config": {"sendMax": 8}}}]}}))
        .unwrap();

    let kc = lab.dir.join("kubeconfig");
    api.kubeconfig(&kc).unwrap();
    // Neither [bgp] nor [[pools]]: everything comes from the objects.
    let cfg = lab.write(
        "pier.toml",
        &format!(
            r#"[gateway]
router_id = "10.0.0.2"
state_dir = "{dir}/state"
api_socket = "{dir}/pier.sock"
metrics_listen = "127.0.0.1:0"

[kubernetes]
kubeconfig = "{kc}"
claim_unclassed = true
lease_namespace = "pier-system"
lease_duration_s = 4
lease_renew_s = 1
crds = true
"#,
            dir = path_str(&lab.dir),
            kc = path_str(&kc),
        ),
    );
    lab.spawn("gw", "pier", &[PIER, "run", "--config", &path_str(&cfg)]);

    api.create(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}}))
        .unwrap();
    wait_for(
        "the Service's IP from the Eip",
        Duration::from_secs(30),
        || {
            let ips = api
                .get("v1", "Service", Some("shop"), "web")
                .map(|s| s["status"]["loadBalancer"]["ingress"].clone())
                .unwrap_or_default();
            if ips == json!([{"ip": "192.0.2.10", "ipMode": "VIP"}]) {
                Ok(())
            } else {
                Err(format!("{ips}\npier log:\n{}", lab.log("pier")))
            }
        },
    );
    wait_for(
        "BIRD's kernel route to the VIP via the node",
        Duration::from_secs(30),
        || {
            let g = kernel_gateways(&lab, "192.0.2.10");
            if g == ["10.0.0.11"] {
                Ok(())
            } else {
                Err(format!(
                    "{g:?}\nbird: {}\npier log:\n{}",
                    birdc(&lab, "show route all"),
                    lab.log("pier")
                ))
            }
        },
    );
    // The Eip and BgpPeer report it.
    wait_for("Eip status", Duration::from_secs(30), || {
        let s = api
            .get(V2, "Eip", None, "vips")
            .map(|e| e["status"].clone())
            .unwrap_or_default();
        if s["used"] == json!({"192.0.2.10": "shop/web"}) && s["poolSize"] == 11 {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    wait_for("BgpPeer status", Duration::from_secs(30), || {
        let s = api
            .get(V2, "BgpPeer", None, "router")
            .map(|e| e["status"].clone())
            .unwrap_or_default();
        let states: Vec<&Value> = s["nodesPeerStatus"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(_, v)| &v["peerState"]["sessionState"])
            .collect();
        if states == [&json!("BGP_FSM_ESTABLISHED")] {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    lab.stop("pier");
}
