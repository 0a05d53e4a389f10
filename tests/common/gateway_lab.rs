//! The forwarding lab several kernel tests share, and the one-VIP plan pier
//! forwards through it: a client, the gateway, and nodes that hold the VIP
//! on `lo` (what kube-proxy makes them do). Include next to `netlab.rs`:
//! `#[path = "common/gateway_lab.rs"] mod gateway_lab;`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::netlab::{self, line_request, Lab};
use pier::model::{AnnounceMode, Announcement, BgpAttributes, Desired, NextHop, PortRule};

/// Three nodes (name, address) on the gateway's LAN.
pub const NODES: [(&str, &str); 3] = [
    ("n1", "10.0.2.11"),
    ("n2", "10.0.2.12"),
    ("n3", "10.0.2.13"),
];

/// The same three nodes in IPv6 (fd00:2::/64), for an IPv6 VIP.
pub const NODES6: [(&str, &str); 3] = [
    ("n1", "fd00:2::11"),
    ("n2", "fd00:2::12"),
    ("n3", "fd00:2::13"),
];

/// Those of [`NODES`] named in `names`, as next hops for [`forwarded_vip`].
pub fn nodes_named(names: &[&str]) -> Vec<(&'static str, &'static str)> {
    named(&NODES, names)
}

/// Those of [`NODES6`] named in `names`.
pub fn nodes6_named(names: &[&str]) -> Vec<(&'static str, &'static str)> {
    named(&NODES6, names)
}

fn named(
    nodes: &[(&'static str, &'static str)],
    names: &[&str],
) -> Vec<(&'static str, &'static str)> {
    nodes
        .iter()
        .copied()
        .filter(|(n, _)| names.contains(n))
        .collect()
}

/// client `cl` (10.0.1.2) — `gw` (10.0.1.1 | 10.0.2.1 on the LAN) — each
/// of `nodes` (name, address in 10.0.2.0/24) with `vip` on `lo` and its
/// default route through the gateway. For an IPv6 `vip` the same in IPv6:
/// fd00:1::2 — fd00:1::1 | fd00:2::1 — nodes in fd00:2::/64 ([`NODES6`]).
/// Servers are the caller's.
pub fn client_gateway_nodes(tag: &str, vip: &str, nodes: &[(&str, &str)]) -> Lab {
    let (client, up, lan, len, host) = if vip.contains(':') {
        ("fd00:1::2", "fd00:1::1", "fd00:2::1", 64, 128)
    } else {
        ("10.0.1.2", "10.0.1.1", "10.0.2.1", 24, 32)
    };
    let mut lab = Lab::new(tag);
    lab.host("gw", &[&format!("{lan}/{len}")]);
    lab.bare_host("cl");
    lab.link(
        "cl",
        "c0",
        &[&format!("{client}/{len}")],
        "gw",
        "g0",
        &[&format!("{up}/{len}")],
    );
    lab.sh("cl", &format!("ip route add default via {up}"));
    for (n, a) in nodes {
        lab.host(n, &[&format!("{a}/{len}")]);
        lab.sh(
            n,
            &format!("ip addr add {vip}/{host} dev lo && ip route add default via {lan}"),
        );
    }
    lab
}

/// A port rule: `spec` as in a Service (`"8080/tcp"`), allowed `sources`
/// (none: every source).
pub fn port(spec: &str, sources: &[&str]) -> PortRule {
    PortRule {
        port: spec.parse().unwrap(),
        sources: sources.iter().map(|s| s.parse().unwrap()).collect(),
    }
}

/// One VIP that the gateway forwards itself (`bgp-self`) to `hops` (node
/// name, address), with `ports`.
pub fn forwarded_vip(
    generation: u64,
    vip: &str,
    hops: &[(&str, &str)],
    ports: Vec<PortRule>,
) -> Desired {
    Desired {
        generation,
        announcements: vec![Arc::new(Announcement {
            vip: vip.parse().unwrap(),
            pool: "lab".into(),
            mode: AnnounceMode::BgpSelf,
            next_hops: hops
                .iter()
                .map(|(n, a)| NextHop {
                    node: n.to_string(),
                    address: a.parse().unwrap(),
                    labels: Default::default(),
                })
                .collect::<Vec<_>>()
                .into(),
            bgp: BgpAttributes::default(),
            services: vec![],
            ports,
        })],
    }
}

/// One request on every kept connection: index → the node that answered,
/// or why it failed. A failed connection is dropped from `conns`.
pub fn round(
    conns: &mut BTreeMap<usize, TcpStream>,
    timeout: Duration,
) -> BTreeMap<usize, Result<String, String>> {
    let out: BTreeMap<_, _> = conns
        .iter_mut()
        .map(|(i, c)| (*i, line_request(c, timeout)))
        .collect();
    conns.retain(|i, _| out[i].is_ok());
    out
}

/// `n` kept connections from the namespace `ns` to `addr`, numbered from
/// `first` (what [`round`] asks on).
pub fn connect_kept(
    ns: &str,
    addr: SocketAddr,
    first: usize,
    n: usize,
    timeout: Duration,
) -> BTreeMap<usize, TcpStream> {
    netlab::in_ns(ns, || {
        (first..first + n)
            .map(|i| {
                let c = TcpStream::connect_timeout(&addr, timeout)
                    .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
                (i, c)
            })
            .collect()
    })
}
