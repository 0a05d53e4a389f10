//! Rack-aware next hops (issue 16, docs/bgp.md "Rack-aware next hops"):
//! two leaf routers (BIRD 2), nodes labelled by rack
//! (`porter.kubesphere.io/rack: leaf1|leaf2`) in the test API server, one
//! pier peering with both. Leaf 1 is a `[[bgp.peers]]` entry with
//! `node_selector`, leaf 2 a BgpPeer object with `spec.nodeSelector`, as
//! the OpenELB manuals write it. Each leaf's kernel route must list only
//! its rack's nodes; a rack-1 node going NotReady must change leaf 1's route
//! and send leaf 2 nothing. A rack-1 node whose address is off the leaves'
//! LAN (reached by pier through a route) is never sent to the single-hop
//! leaf 1.
//!
//! The test API server listens on 127.0.0.1 inside the gateway's namespace
//! (as in tests/crds_netns.rs); the four LAN nodes are addresses of one
//! namespace whose kube-proxy health port answers for all of them.

#[path = "common/netlab.rs"]
mod netlab;
#[path = "common/ns_kube.rs"]
mod ns_kube;

use std::time::Duration;

use netlab::{path_str, route_gateways, wait_for, Lab};
use ns_kube::{HealthPort, NsApi};
use pier_testapi::CustomResource;
use serde_json::{json, Value};

const PIER: &str = env!("CARGO_BIN_EXE_pier");
const V2: &str = "network.kubesphere.io/v1alpha2";
const RACK: &str = "porter.kubesphere.io/rack";
const VIP: &str = "192.0.2.10";

fn bird_config(lab: &Lab, leaf: &str, address: &str, asn: u32) -> std::path::PathBuf {
    lab.write(
        &format!("{leaf}.conf"),
        &format!(
            r#"log "{dir}/{leaf}-log" all;
router id {address};
protocol device {{ scan time 1; }}
protocol kernel k4 {{ ipv4 {{ export all; import none; }}; merge paths on; }}
protocol bgp pier {{
  local {address} as {asn};
  neighbor 10.0.0.2 as 65010;
  passive on;
  hold time 9;
  ipv4 {{ import all; export none; add paths rx; }};
}}
"#,
            dir = path_str(&lab.dir)
        ),
    )
}

fn birdc(lab: &Lab, leaf: &str, cmd: &str) -> String {
    let sock = path_str(&lab.dir.join(format!("{leaf}.ctl")));
    lab.try_sh(leaf, &format!("birdc -s {sock} {cmd}")).1
}

/// BIRD's count of updates and withdrawals the session received.
fn imports(lab: &Lab, leaf: &str) -> Vec<String> {
    birdc(lab, leaf, "show protocols all pier")
        .lines()
        .filter(|l| l.contains("Import updates:") || l.contains("Import withdraws:"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn node(name: &str, address: &str, rack: &str, ready: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {RACK: rack}},
        "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                   "addresses": [{"type": "InternalIP", "address": address}]}})
}

#[test]
fn each_leaf_gets_only_its_racks_nodes() {
    if !netlab::prerequisites("bgp_racks_netns", &["ip", "bird", "birdc"]) {
        return;
    }
    let mut lab = Lab::new("rack");
    lab.host("leaf1", &["10.0.0.1/24"]);
    lab.host("leaf2", &["10.0.0.3/24"]);
    lab.host("gw", &["10.0.0.2/24"]);
    // Rack 1: .11, .12 and 10.9.0.31 (off the LAN: pier reaches it through
    // .11, the leaves could not); rack 2: .21, .22.
    lab.host(
        "nodes",
        &[
            "10.0.0.11/24",
            "10.0.0.12/24",
            "10.0.0.21/24",
            "10.0.0.22/24",
            "10.9.0.31/24",
        ],
    );
    lab.sh("gw", "ip route add 10.9.0.0/24 via 10.0.0.11");
    let _health = HealthPort::start(&lab.ns("nodes"), "0.0.0.0:10256");

    for (leaf, address, asn) in [("leaf1", "10.0.0.1", 65001), ("leaf2", "10.0.0.3", 65002)] {
        let conf = bird_config(&lab, leaf, address, asn);
        let sock = path_str(&lab.dir.join(format!("{leaf}.ctl")));
        lab.spawn(
            leaf,
            &format!("bird-{leaf}"),
            &["bird", "-f", "-c", &path_str(&conf), "-s", &sock],
        );
    }

    let ns_api = NsApi::start(&lab.ns("gw"));
    let api = &ns_api.api;
    for crd in CustomResource::openelb() {
        api.register_crd(crd);
    }
    for ns in ["pier-system", "shop"] {
        api.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .unwrap();
    }
    let nodes = [
        ("n11", "10.0.0.11", "leaf1"),
        ("n12", "10.0.0.12", "leaf1"),
        ("n31", "10.9.0.31", "leaf1"),
        ("n21", "10.0.0.21", "leaf2"),
        ("n22", "10.0.0.22", "leaf2"),
    ];
    for (name, address, rack) in nodes {
        let n = node(name, address, rack, true);
        api.create(n.clone()).unwrap();
        api.update_status(n).unwrap();
    }
    // Leaf 2 as the OpenELB manuals configure it.
    api.create(json!({"apiVersion": V2, "kind": "BgpPeer", "metadata": {"name": "leaf2"},
        "spec": {"conf": {"peerAs": 65002, "neighborAddress": "10.0.0.3"},
                 "timers": {"config": {"holdTime": 9, "connectRetry": 1}},
                 "afiSafis": [{"config": {"family": {"afi": "ipv4", "safi": "unicast"}, "enabled": true}}],
                 "nodeSelector": {"matchLabels": {RACK: "leaf2"}}}}))
        .unwrap();

    let kc = lab.dir.join("kubeconfig");
    api.kubeconfig(&kc).unwrap();
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

[health]
interval_ms = 200
fall = 1
rise = 1

[bgp]
asn = 65010

[[bgp.peers]]
address = "10.0.0.1"
asn = 65001
hold_time = 9
connect_retry_s = 1
families = ["ipv4"]
node_selector = {{ "{RACK}" = "leaf1" }}

[[pools]]
name = "public"
addresses = ["192.0.2.10-192.0.2.20"]
mode = "bgp"
next_hop = "nodes"
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

    let leaf_route = |leaf: &str, want: &[&str], what: &str| {
        wait_for(what, Duration::from_secs(40), || {
            let g = route_gateways(&lab, leaf, "-4", VIP);
            if g == want {
                Ok(())
            } else {
                Err(format!(
                    "{leaf}: {g:?}\nbird: {}\npier log:\n{}",
                    birdc(&lab, leaf, "show route all"),
                    lab.log("pier")
                ))
            }
        })
    };
    leaf_route(
        "leaf1",
        &["10.0.0.11", "10.0.0.12"],
        "leaf 1's route over rack 1's LAN nodes",
    );
    leaf_route(
        "leaf2",
        &["10.0.0.21", "10.0.0.22"],
        "leaf 2's route over rack 2's nodes",
    );
    // The off-LAN rack-1 node is eligible (pier's health probe reaches it)
    // but never sent to the single-hop leaf 1.
    let nodes_view = netlab_nodes(&lab);
    assert!(
        nodes_view.contains("10.9.0.31"),
        "pier knows the off-LAN node: {nodes_view}"
    );
    let held = birdc(&lab, "leaf1", &format!("show route for {VIP} all"));
    // Sent anyway, BIRD (eBGP, `gateway direct`) would refuse it:
    // "Invalid NEXT_HOP attribute - address 10.9.0.31 not directly
    // reachable".
    let log = std::fs::read_to_string(lab.dir.join("leaf1-log")).unwrap_or_default();
    assert!(!log.contains("Invalid NEXT_HOP"), "leaf 1's log:\n{log}");
    assert!(!held.contains("10.9.0.31"), "leaf 1 holds {held}");
    assert!(!held.contains("10.0.0.21"), "leaf 1 holds {held}");

    // A rack-1 node goes NotReady: leaf 1's route changes, leaf 2 is sent
    // nothing at all.
    let before = imports(&lab, "leaf2");
    assert_eq!(before.len(), 2, "BIRD's import counters: {before:?}");
    api.update_status(node("n11", "10.0.0.11", "leaf1", false))
        .unwrap();
    leaf_route(
        "leaf1",
        &["10.0.0.12"],
        "leaf 1's route without the NotReady node",
    );
    assert_eq!(
        route_gateways(&lab, "leaf2", "-4", VIP),
        ["10.0.0.21", "10.0.0.22"]
    );
    assert_eq!(imports(&lab, "leaf2"), before, "leaf 2 was sent an update");

    // Rack 1 empty: the VIP is withdrawn from leaf 1 only.
    api.update_status(node("n12", "10.0.0.12", "leaf1", false))
        .unwrap();
    api.update_status(node("n31", "10.9.0.31", "leaf1", false))
        .unwrap();
    leaf_route("leaf1", &[], "the VIP withdrawn from leaf 1");
    assert_eq!(
        route_gateways(&lab, "leaf2", "-4", VIP),
        ["10.0.0.21", "10.0.0.22"]
    );
    assert_eq!(imports(&lab, "leaf2"), before, "leaf 2 was sent an update");
    lab.stop("pier");
}

/// `pier nodes --json` from the daemon in the gateway's namespace.
fn netlab_nodes(lab: &Lab) -> String {
    let sock = path_str(&lab.dir.join("pier.sock"));
    lab.try_sh("gw", &format!("{PIER} nodes --json --socket {sock}"))
        .1
}
