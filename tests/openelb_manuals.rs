//! Issue 16, "How it is checked": the Services of the OpenELB and PorterLB
//! manuals, exactly as they are written there, served end to end. The real
//! `pier` binary in network namespaces (lab in `tests/e2e/lab.rs`) with
//! `claim_unclassed = false`, `crds = true` and no pools in its file: the
//! pools are two Eip objects, `protocol: bgp` and `protocol: layer2`
//! (`interface: eth0`, the gateway's LAN), as OpenELB users have them.
//!
//! - four Services, OpenELB's and PorterLB's annotation sets
//!   (`lb.kubesphere.io/v1alpha1`, `protocol.*`, `eip.*`) for `bgp` and
//!   `layer2`: each is claimed and gets an IP from the Eip it names;
//! - the `bgp` ones reach the client through BIRD (an ECMP route over the
//!   three nodes), the `layer2` ones are answered by the gateway's ARP on
//!   the LAN; every request is served;
//! - a Service whose protocol does not match the Eip it names stays
//!   pending, with a Warning saying why;
//! - the Eips' status lists the Services using them.

#[path = "common/netlab.rs"]
mod netlab;

#[path = "e2e/lab.rs"]
mod lab;

use lab::{E2eLab, Gateway, PATIENCE};
use netlab::wait_for;
use pier_testapi::CustomResource;
use serde_json::{json, Value};

const PIER: &str = env!("CARGO_BIN_EXE_pier");
const V2: &str = "network.kubesphere.io/v1alpha2";
const ALL: [&str; 3] = ["10.0.0.11", "10.0.0.12", "10.0.0.13"];

/// The annotations of the manuals of one product (`openelb` or `porter`).
fn manual(product: &str, protocol: &str, eip: &str) -> Value {
    json!({
        "lb.kubesphere.io/v1alpha1": product,
        format!("protocol.{product}.kubesphere.io/v1alpha1"): protocol,
        format!("eip.{product}.kubesphere.io/v1alpha2"): eip,
    })
}

/// The note of the first Warning Event about Service `name`.
fn warning(e: &E2eLab, name: &str) -> Option<String> {
    e.api
        .list("events.k8s.io/v1", "Event", Some("shop"))
        .into_iter()
        .find(|ev| ev["type"] == "Warning" && ev["regarding"]["name"] == name)
        .and_then(|ev| ev["note"].as_str().map(String::from))
}

/// Is `ip` (IPv4) inside `first..=last`?
fn within(ip: &str, first: &str, last: &str) -> bool {
    let p = |s: &str| s.parse::<std::net::Ipv4Addr>().map(u32::from);
    matches!((p(ip), p(first), p(last)), (Ok(i), Ok(a), Ok(b)) if a <= i && i <= b)
}

#[test]
fn manual_services_of_both_products_are_served_over_bgp_and_layer2() {
    if !lab::prerequisites("openelb_manuals") {
        return;
    }
    let mut e = E2eLab::new("om", PIER, true, &["gw"]);
    for crd in CustomResource::openelb() {
        e.api.register_crd(crd);
    }
    e.api
        .create(json!({"apiVersion": V2, "kind": "Eip",
            "metadata": {"name": "eip-bgp"},
            "spec": {"address": lab::BGP_POOL, "protocol": "bgp"}}))
        .expect("Eip eip-bgp");
    e.api
        .create(json!({"apiVersion": V2, "kind": "Eip",
            "metadata": {"name": "eip-layer2"},
            "spec": {"address": lab::L2_POOL, "protocol": "layer2", "interface": "eth0"}}))
        .expect("Eip eip-layer2");
    // The `[bgp]` section peers with BIRD; the pools are the Eips only.
    let cfg = e.gateway_config(&Gateway {
        claim_unclassed: false,
        crds: true,
        lease: (4, 1),
        ..Gateway::default()
    });
    let pier = e.start_pier("gw", &cfg);

    let services = [
        ("openelb-bgp", "openelb", "bgp", "eip-bgp"),
        ("porter-bgp", "porter", "bgp", "eip-bgp"),
        ("openelb-layer2", "openelb", "layer2", "eip-layer2"),
        ("porter-layer2", "porter", "layer2", "eip-layer2"),
    ];
    for (name, product, protocol, eip) in services {
        e.create_service(name, false, manual(product, protocol, eip));
    }
    // The protocol says layer2, the Eip it names is bgp: refused.
    e.create_service("wrong-mode", false, manual("porter", "layer2", "eip-bgp"));
    // Neither a class nor the manuals' annotation: not pier's.
    e.create_service("not-ours", false, json!({}));

    let mut vips = Vec::new();
    for (name, _, protocol, _) in services {
        let vip = e.wait_status_ip(name, &pier);
        let (first, last) = match protocol {
            "bgp" => ("192.0.2.0", "192.0.2.15"),
            _ => ("10.0.0.240", "10.0.0.255"),
        };
        assert!(
            within(&vip, first, last),
            "{name} got {vip}, not from its Eip ({first}-{last})"
        );
        assert!(!vips.contains(&vip), "{vip} given twice");
        vips.push(vip);
    }

    // bgp: BIRD's kernel route over the three nodes; every request served.
    for vip in &vips[..2] {
        e.wait_router_hops(vip, &ALL, &format!("BIRD's route to {vip}"), &pier);
        let answers = e.requests(vip, 6);
        assert!(!answers.iter().any(|a| a == "FAIL"), "{vip}: {answers:?}");
        assert!(
            answers
                .iter()
                .all(|a| ["n1", "n2", "n3"].contains(&a.as_str())),
            "{vip}: {answers:?}"
        );
    }
    // layer2: the gateway answers ARP for the VIP on the LAN; the client
    // reaches the nodes through it.
    let gw_mac = e.mac("gw");
    for vip in &vips[2..] {
        wait_for(&format!("{vip} served on the LAN"), PATIENCE, || {
            e.request(vip, 1000)
                .map_err(|err| format!("{err}\npier log:\n{}", e.lab.log(&pier)))
        });
        e.lab.sh("c", "ip neigh flush dev eth0");
        let answers = e.requests(vip, 6);
        assert!(!answers.iter().any(|a| a == "FAIL"), "{vip}: {answers:?}");
        assert_eq!(
            e.client_neighbour(vip),
            Some(gw_mac.clone()),
            "{vip} not resolved to the gateway"
        );
        // Nothing announces it to the router.
        assert!(e.router_hops(vip).is_empty(), "{vip} routed by BIRD");
    }

    // The mismatched one: a Warning naming the Eip's mode, no IP.
    let note = wait_for("the wrong-mode Warning", PATIENCE, || {
        warning(&e, "wrong-mode").ok_or_else(|| e.lab.log(&pier))
    });
    assert!(note.contains("\"eip-bgp\" is of mode bgp"), "{note}");
    assert!(e.status_ips("wrong-mode").is_empty());
    assert!(e.status_ips("not-ours").is_empty());
    assert!(warning(&e, "not-ours").is_none());

    // Each Eip's status lists its two Services.
    for (eip, names, ips) in [
        ("eip-bgp", ["openelb-bgp", "porter-bgp"], &vips[..2]),
        (
            "eip-layer2",
            ["openelb-layer2", "porter-layer2"],
            &vips[2..],
        ),
    ] {
        let want: serde_json::Map<String, Value> = ips
            .iter()
            .zip(names)
            .map(|(ip, n)| (ip.clone(), json!(format!("shop/{n}"))))
            .collect();
        wait_for(&format!("{eip}'s status"), PATIENCE, || {
            let s = e
                .api
                .get(V2, "Eip", None, eip)
                .map(|o| o["status"].clone())
                .unwrap_or_default();
            if s["used"] == Value::Object(want.clone()) {
                Ok(())
            } else {
                Err(s.to_string())
            }
        });
    }
    e.lab.stop(&pier);
}
