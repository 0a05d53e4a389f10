//! A bounded, balanced set of next hops per VIP against BIRD 2 (issue 16):
//! 100 VIPs × 50 eligible nodes with `max_paths = 8`. The router must get
//! exactly 8 paths per VIP, every node must carry at least one VIP and none
//! more than 1.75× the mean, and a node leaving must change only the VIPs
//! that used it. Static services are enough: the nodes are next-hop
//! addresses on the router's LAN (they need not answer for BIRD to install
//! them).

#[path = "common/netlab.rs"]
mod netlab;

use netlab::{path_str, wait_for, Lab};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

const PIER: &str = env!("CARGO_BIN_EXE_pier");
const VIPS: u32 = 100;
const MAX_PATHS: usize = 8;
/// BIRD's protocol number in the kernel route table.
const PROTO_BIRD: u8 = 12;

fn vip(i: u32) -> String {
    format!("192.0.2.{}", i + 1)
}

fn node(i: u32) -> String {
    format!("10.0.0.{}", 11 + i)
}

fn pier_config(lab: &Lab, nodes: &[String]) -> std::path::PathBuf {
    let list: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
    let mut text = format!(
        r#"[gateway]
router_id = "10.0.0.2"
state_dir = "{dir}/state"
api_socket = "{dir}/pier.sock"
metrics_listen = "127.0.0.1:0"

[bgp]
asn = 65010

[[bgp.peers]]
address = "10.0.0.1"
asn = 65000
hold_time = 9
connect_retry_s = 1
families = ["ipv4"]
max_paths = {MAX_PATHS}

[[pools]]
name = "public"
addresses = ["192.0.2.0/24"]
mode = "bgp"
next_hop = "nodes"
"#,
        dir = path_str(&lab.dir),
    );
    for i in 0..VIPS {
        text.push_str(&format!(
            "\n[[static_services]]\nname = \"demo/web{i}\"\npool = \"public\"\nip = \"{}\"\nports = [\"80/tcp\"]\nnodes = [{}]\nhealth = \"none\"\n",
            vip(i),
            list.join(", ")
        ));
    }
    lab.write("pier.toml", &text)
}

fn bird_config(lab: &Lab) -> std::path::PathBuf {
    let text = format!(
        r#"log "{dir}/bird-log" all;
router id 10.0.0.1;
protocol device {{ scan time 1; }}
protocol kernel k4 {{ ipv4 {{ export all; import none; }}; merge paths on limit 64; }}
protocol bgp pier {{
  local 10.0.0.1 as 65000;
  neighbor 10.0.0.2 as 65010;
  passive on;
  hold time 9;
  ipv4 {{ import all; export none; add paths rx; }};
}}
"#,
        dir = path_str(&lab.dir)
    );
    lab.write("bird.conf", &text)
}

fn birdc(lab: &Lab, cmd: &str) -> String {
    let sock = path_str(&lab.dir.join("bird.ctl"));
    lab.try_sh("r", &format!("birdc -s {sock} {cmd}")).1
}

/// The router's kernel routes of the VIPs, once all 100 have `MAX_PATHS`
/// next hops none of which is in `absent`.
fn wait_routes(lab: &Lab, absent: Option<&str>, what: &str) -> BTreeMap<String, BTreeSet<String>> {
    wait_for(what, Duration::from_secs(60), || {
        let routes: BTreeMap<String, BTreeSet<String>> = lab
            .routes("r", PROTO_BIRD)
            .into_iter()
            .filter(|(dst, _)| dst.starts_with("192.0.2."))
            .collect();
        let done = routes.len() == VIPS as usize
            && routes.values().all(|g| g.len() == MAX_PATHS)
            && absent.is_none_or(|a| routes.values().all(|g| !g.contains(a)));
        if done {
            Ok(routes)
        } else {
            let sizes: BTreeSet<usize> = routes.values().map(BTreeSet::len).collect();
            Err(format!(
                "{} VIP routes, next-hop counts {sizes:?}\nbird: {}\npier log:\n{}",
                routes.len(),
                birdc(lab, "show route count"),
                lab.log("pier")
            ))
        }
    })
}

#[test]
fn hundred_vips_over_fifty_nodes_get_eight_balanced_paths_each() {
    if !netlab::prerequisites("bgp_max_paths", &["ip", "bird", "birdc"]) {
        return;
    }
    let mut lab = Lab::new("mp");
    lab.host("r", &["10.0.0.1/24"]);
    lab.host("gw", &["10.0.0.2/24"]);
    let bird = bird_config(&lab);
    let sock = path_str(&lab.dir.join("bird.ctl"));
    lab.spawn(
        "r",
        "bird",
        &["bird", "-f", "-c", &path_str(&bird), "-s", &sock],
    );
    let nodes: Vec<String> = (0..50).map(node).collect();
    let cfg = pier_config(&lab, &nodes);
    lab.spawn("gw", "pier", &[PIER, "run", "--config", &path_str(&cfg)]);

    let before = wait_routes(&lab, None, "100 VIPs with 8 paths each");
    // BIRD holds exactly the paths pier sent: 8 per VIP, not 50.
    let count = birdc(&lab, "show route count");
    let paths = VIPS as usize * MAX_PATHS;
    assert!(
        count.contains(&format!("{paths} of {paths} routes for {VIPS} networks")),
        "{count}"
    );
    // The subsets are the rendezvous rule's (src/model/subset.rs).
    let all: Vec<IpAddr> = nodes.iter().map(|n| n.parse().unwrap()).collect();
    for i in 0..VIPS {
        let v: IpAddr = vip(i).parse().unwrap();
        let want: BTreeSet<String> = pier::model::subset::choose(&v, &all, MAX_PATHS, |a| *a)
            .into_iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(before[&vip(i)], want, "{}", vip(i));
    }
    // Balance: every node carries a VIP, none more than 1.75× the mean.
    let mut load: BTreeMap<&str, usize> = nodes.iter().map(|n| (n.as_str(), 0)).collect();
    for gws in before.values() {
        for g in gws {
            *load.get_mut(g.as_str()).expect("a configured node") += 1;
        }
    }
    let mean = (VIPS as usize * MAX_PATHS) as f64 / nodes.len() as f64;
    let (min, max) = (
        load.values().min().copied().unwrap_or(0),
        load.values().max().copied().unwrap_or(0),
    );
    eprintln!("VIPs per node: min {min}, max {max}, mean {mean}");
    assert!(min >= 1, "a node without VIPs: {load:?}");
    assert!(max as f64 <= 1.75 * mean, "{max} > 1.75 × {mean}: {load:?}");

    // The most loaded node leaves: only the VIPs that used it change, each
    // by that node out and one other in.
    let (gone, used) = load.iter().max_by_key(|(_, l)| **l).unwrap();
    let (gone, used) = (gone.to_string(), *used);
    let fewer: Vec<String> = nodes.iter().filter(|n| **n != gone).cloned().collect();
    pier_config(&lab, &fewer);
    lab.signal("pier", libc::SIGHUP);
    let after = wait_routes(&lab, Some(&gone), "the departed node's paths replaced");
    let mut changed = 0;
    for (v, old) in &before {
        let new = &after[v];
        if old.contains(&gone) {
            changed += 1;
            let out: Vec<&String> = old.difference(new).collect();
            let inn: Vec<&String> = new.difference(old).collect();
            assert_eq!(out, vec![&gone], "{v}: {old:?} → {new:?}");
            assert_eq!(inn.len(), 1, "{v}: {old:?} → {new:?}");
        } else {
            assert_eq!(old, new, "{v} did not use {gone} but changed");
        }
    }
    assert_eq!(changed, used);
    lab.stop("pier");
}

/// Pier as next hop: a kernel multipath route keeps at most
/// `MULTIPATH_LIMIT` next hops, the same rendezvous subset (no root needed:
/// the pure route planner).
#[test]
fn kernel_routes_keep_the_rendezvous_subset_above_the_multipath_limit() {
    use pier::model::{AnnounceMode, Announcement, BgpAttributes, Desired, NextHop};
    use pier::route::kernel::{desired_routes, MULTIPATH_LIMIT};
    use std::sync::Arc;
    let hops: Vec<NextHop> = (0..300u32)
        .map(|i| NextHop {
            node: format!("n{i}"),
            address: IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0100 + i)),
            labels: Default::default(),
        })
        .collect();
    let vip: IpAddr = "192.0.2.7".parse().unwrap();
    let desired = Desired {
        generation: 1,
        announcements: vec![Arc::new(Announcement {
            vip,
            pool: "p".into(),
            mode: AnnounceMode::BgpSelf,
            next_hops: hops.clone().into(),
            bgp: BgpAttributes::default(),
            services: vec![],
            ports: vec![],
        })],
    };
    let routes = desired_routes(&desired);
    let got = routes.values().next().expect("one route");
    assert_eq!(got.len(), MULTIPATH_LIMIT);
    let want: BTreeSet<IpAddr> =
        pier::model::subset::choose(&vip, &hops, MULTIPATH_LIMIT, |h| h.address)
            .into_iter()
            .map(|h| h.address)
            .collect();
    assert_eq!(*got, want);
}
