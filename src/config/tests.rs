use super::*;
use crate::model::{NextHopMode, PoolMode, Protocol};

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(Path::new("pier.toml"), text)
}

/// Errors as `line: key: message` without the file name.
fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected errors"),
        Err(e) => {
            e.0.iter()
                .map(|e| format!("{}: {}: {}", e.line, e.key, e.message))
                .collect()
        }
    }
}

fn has(errs: &[String], needle: &str) {
    assert!(
        errs.iter().any(|e| e.contains(needle)),
        "no error containing {needle:?} in:\n{}",
        errs.join("\n")
    );
}

const GATEWAY: &str = "[gateway]\nrouter_id = \"10.0.0.1\"\n";

#[test]
fn design_example_parses_as_written() {
    let text = include_str!("../../tests/fixtures/design.toml");
    let c = parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.gateway.router_id.to_string(), "10.66.0.2");
    assert_eq!(c.gateway.state_dir, PathBuf::from("/var/lib/pier"));
    assert_eq!(c.gateway.metrics_listen.to_string(), "127.0.0.1:9469");
    let k = c.kubernetes.as_ref().unwrap();
    assert_eq!(k.load_balancer_class, "pier.io/gateway");
    assert!(k.claim_unclassed);
    assert_eq!(k.lease_namespace, "pier-system");
    assert_eq!(
        (k.lease_duration_s, k.lease_renew_s),
        (2, 1),
        "l2 failover < 3 s by default"
    );
    let b = c.bgp.as_ref().unwrap();
    assert_eq!(b.asn, 65001);
    assert_eq!(b.peers[0].address.to_string(), "10.66.0.1");
    assert_eq!((b.peers[0].asn, b.peers[0].hold_time), (65000, 9));
    let public = c.pool("public").unwrap();
    assert_eq!(public.ranges.len(), 3);
    assert_eq!(public.size(Family::V4), 256 + 11);
    assert_eq!(public.bgp.communities[0].to_string(), "65001:100");
    assert_eq!(public.next_hop, NextHopMode::Nodes);
    let lan = c.pool("lan").unwrap();
    assert_eq!(
        (lan.mode, lan.interface.as_deref()),
        (PoolMode::L2, Some("eth-lan"))
    );
    assert_eq!(lan.namespaces, vec!["default".to_string()]);
    assert_eq!(c.health.interval_ms, 500);
    assert_eq!((c.health.fall, c.health.rise), (3, 2));
    let s = &c.static_services[0];
    assert_eq!(s.key.to_string(), "demo/web");
    assert_eq!(s.ips[0].to_string(), "10.77.0.10");
    assert_eq!(s.ports[0].protocol, Protocol::Tcp);
    assert_eq!(s.nodes.len(), 3);
    assert_eq!(s.health, StaticHealth::KubeProxy);
}

#[test]
fn example_config_in_etc_is_valid() {
    let text = include_str!("../../etc/pier.toml");
    if let Err(e) = parse(text) {
        panic!("etc/pier.toml:\n{e}");
    }
}

#[test]
fn defaults() {
    let c = parse(GATEWAY).unwrap();
    assert!(c.kubernetes.is_none() && c.bgp.is_none());
    assert_eq!(c.gateway.api_socket, PathBuf::from("/run/pier/pier.sock"));
    assert_eq!(c.gateway.api_socket_mode, 0o660);
    assert_eq!(c.gateway.api_socket_owner, None);
    assert_eq!(c.gateway.shutdown, Shutdown::Withdraw);
    assert_eq!(c.health, HealthConfig::default());
    let c = parse(&format!(
        "{GATEWAY}[bgp]\nasn = 4200000000\n[[bgp.peers]]\naddress = \"fd00::1\"\nasn = 1\n"
    ))
    .unwrap();
    let p = &c.bgp.unwrap().peers[0];
    assert_eq!((p.hold_time, p.port, p.connect_retry_s), (90, 179, 5));
    assert_eq!(p.families, vec![Family::V4, Family::V6]);
    assert!(p.add_path && !p.passive);
    assert_eq!(p.max_paths, crate::config::DEFAULT_MAX_PATHS);
    let c = parse(&format!(
        "{GATEWAY}[bgp]\nasn = 1\n[[bgp.peers]]\naddress = \"fd00::1\"\nasn = 2\nmax_paths = 8\n"
    ))
    .unwrap();
    assert_eq!(c.bgp.unwrap().peers[0].max_paths, 8);
    assert!(parse(&format!(
        "{GATEWAY}[bgp]\nasn = 1\n[[bgp.peers]]\naddress = \"fd00::1\"\nasn = 2\nmax_paths = 0\n"
    ))
    .is_err());
}

#[test]
fn api_socket_owner_and_group() {
    let text = GATEWAY.replace(
        "[gateway]\n",
        "[gateway]\napi_socket_owner = \"pier\"\napi_socket_group = \"pier-admins\"\napi_socket_mode = \"0640\"\n",
    );
    assert_ne!(text, GATEWAY);
    let c = parse(&text).unwrap();
    assert_eq!(c.gateway.api_socket_owner.as_deref(), Some("pier"));
    assert_eq!(c.gateway.api_socket_group.as_deref(), Some("pier-admins"));
    assert_eq!(c.gateway.api_socket_mode, 0o640);
}

#[test]
fn syntax_error_has_a_line() {
    let e = errors("[gateway]\nrouter_id = \"10.0.0.1\"\nbroken = = 1\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("3: : TOML syntax error"), "{e:?}");
}

#[test]
fn missing_gateway_and_required_keys() {
    has(&errors(""), "the [gateway] section is required");
    has(
        &errors("[gateway]\n"),
        "1: gateway.router_id: required key is missing",
    );
    let e = errors(&format!("{GATEWAY}[[pools]]\nmode = \"l2\"\n"));
    has(&e, "3: pools[0].name: required key is missing");
    has(&e, "3: pools[0].addresses: required key is missing");
    has(
        &e,
        "3: pools[0].interface: an l2 pool needs the LAN interface",
    );
}

#[test]
fn unknown_keys_everywhere_with_suggestions() {
    let e = errors(&format!(
        "{GATEWAY}routerid = \"x\"\n[health]\nintervall_ms = 3\n[[pools]]\nname = \"p\"\naddresses = [\"10.0.0.0/24\"]\nnexthop = \"self\"\n[extra]\n"
    ));
    has(
        &e,
        "3: gateway.routerid: unknown key (did you mean \"router_id\"?)",
    );
    has(
        &e,
        "5: health.intervall_ms: unknown key (did you mean \"interval_ms\"?)",
    );
    has(
        &e,
        "9: pools[0].nexthop: unknown key (did you mean \"next_hop\"?)",
    );
    has(&e, "10: extra: unknown key");
}

#[test]
fn wrong_types() {
    let e = errors(&format!("{GATEWAY}[health]\nfall = \"three\"\n[bgp]\nasn = \"65000\"\n[[pools]]\nname = 1\naddresses = \"10.0.0.0/24\"\n"));
    has(&e, "4: health.fall: expected an integer, found a string");
    has(&e, "6: bgp.asn: expected an integer, found a string");
    has(&e, "8: pools[0].name: expected a string, found an integer");
    has(
        &e,
        "9: pools[0].addresses: expected an array of strings, found a string",
    );
}

#[test]
fn address_errors() {
    let e = errors(&format!(
        "{GATEWAY}[[pools]]\nname = \"p\"\naddresses = [\n  \"10.0.0.0/24\",\n  \"10.0.1.9-10.0.1.1\",\n  \"10.0.2.1/24\",\n  \"300.1.1.1\",\n  \"10.0.3.1-fd00::1\",\n]\n"
    ));
    has(
        &e,
        "7: pools[0].addresses[1]: range \"10.0.1.9-10.0.1.1\" ends before it starts",
    );
    has(
        &e,
        "8: pools[0].addresses[2]: \"10.0.2.1/24\" has host bits set: did you mean 10.0.2.0/24?",
    );
    has(
        &e,
        "9: pools[0].addresses[3]: \"300.1.1.1\" is not an IP address",
    );
    has(
        &e,
        "10: pools[0].addresses[4]: range \"10.0.3.1-fd00::1\" mixes IPv4 and IPv6",
    );
}

#[test]
fn overlapping_pools_name_both_and_the_addresses() {
    let e = errors(&format!(
        "{GATEWAY}[[pools]]\nname = \"a\"\naddresses = [\"10.0.0.0/24\", \"fd00::/64\"]\n[[pools]]\nname = \"b\"\naddresses = [\"10.0.0.200-10.0.1.5\", \"fd00::8000:0:0:0/65\"]\n[[pools]]\nname = \"c\"\naddresses = [\"10.9.0.1\", \"10.9.0.0/30\"]\n"
    ));
    has(&e, "8: pools[1].addresses[0]: 10.0.0.200-10.0.1.5 overlaps pool \"a\" (pools[0].addresses[0] 10.0.0.0/24): 10.0.0.200-10.0.0.255 would belong to both");
    has(&e, "8: pools[1].addresses[1]: fd00::8000:0:0:0/65 overlaps pool \"a\" (pools[0].addresses[1] fd00::/64)");
    has(&e, "11: pools[2].addresses[1]: 10.9.0.0/30 overlaps pools[2].addresses[0] (10.9.0.1) in the same pool: 10.9.0.1");
}

#[test]
fn duplicates() {
    let e = errors(&format!(
        "{GATEWAY}[bgp]\nasn = 1\n[[bgp.peers]]\naddress = \"10.0.0.9\"\nasn = 2\n[[bgp.peers]]\naddress = \"10.0.0.9\"\nasn = 3\n[[pools]]\nname = \"p\"\naddresses = [\"10.1.0.0/24\"]\n[[pools]]\nname = \"p\"\naddresses = [\"10.2.0.0/24\"]\n"
    ));
    has(
        &e,
        "bgp.peers[1].address: peer 10.0.0.9 is already defined by bgp.peers[0]",
    );
    has(
        &e,
        "pools[1].name: pool \"p\" is already defined by pools[0]",
    );
}

#[test]
fn pool_mode_consistency() {
    let e = errors(&format!(
        "{GATEWAY}[[pools]]\nname = \"a\"\naddresses = [\"10.0.0.0/24\"]\nmode = \"l2\"\ninterface = \"eth0\"\nnext_hop = \"self\"\n[[pools]]\nname = \"b\"\naddresses = [\"10.1.0.0/24\"]\ninterface = \"eth0\"\nmode = \"bpg\"\n"
    ));
    has(&e, "pools[0].next_hop: an l2 pool has no BGP next hop");
    has(&e, "pools[1].interface: only l2 pools take an interface");
    has(&e, "pools[1].mode: \"bpg\": expected \"bgp\" or \"l2\"");
}

#[test]
fn static_service_errors() {
    let pools = "[[pools]]\nname = \"v4\"\naddresses = [\"10.0.0.0/24\"]\n";
    let e = errors(&format!(
        "{GATEWAY}{pools}[[static_services]]\nname = \"a/b\"\npool = \"nope\"\nports = [\"80/tcp\"]\nnodes = [\"10.1.1.1\"]\n[[static_services]]\nname = \"a/c\"\npool = \"v4\"\nip = \"10.9.9.9\"\nports = [\"80/tcp\", \"http\", \"0/udp\"]\nnodes = [\"10.1.1.1\"]\n[[static_services]]\nname = \"a/d\"\npool = \"v4\"\nfamilies = [\"ipv6\"]\nports = []\nnodes = [\"fd00::1\", \"x\"]\nhealth = \"maybe\"\n[[static_services]]\nname = \"a/b\"\npool = \"v4\"\nports = [\"80\"]\nnodes = [\"10.1.1.1\"]\n"
    ));
    has(
        &e,
        "8: static_services[0].pool: no pool named \"nope\" (pools: v4)",
    );
    has(
        &e,
        "14: static_services[1].ip: 10.9.9.9 is not in pool \"v4\"",
    );
    has(
        &e,
        "15: static_services[1].ports[1]: \"http\" is not a port",
    );
    has(
        &e,
        "15: static_services[1].ports[2]: \"0/udp\": port 0 is not a port",
    );
    has(
        &e,
        "20: static_services[2].families[0]: pool \"v4\" has no ipv6 addresses",
    );
    has(&e, "21: static_services[2].ports: at least one port");
    has(
        &e,
        "22: static_services[2].nodes[1]: \"x\" is not an IP address",
    );
    has(
        &e,
        "23: static_services[2].health: expected \"kube-proxy\", \"none\" or a port number",
    );
    has(
        &e,
        "static_services[3].name: a/b is already defined by static_services[0]",
    );
}

#[test]
fn every_error_at_once_in_file_order() {
    let text = "[gateway]\nrouter_id = \"nope\"\n[bgp]\nasn = 0\n[health]\nrise = 0\n[[pools]]\nname = \"p\"\naddresses = [\"bad\"]\n";
    let e = parse(text).unwrap_err();
    let lines: Vec<usize> = e.0.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![2, 4, 6, 9]);
    assert!(
        e.to_string().starts_with("pier.toml:2: gateway.router_id:"),
        "{e}"
    );
}

#[test]
fn static_health_forms() {
    let base = format!("{GATEWAY}[[pools]]\nname = \"p\"\naddresses = [\"10.0.0.0/24\"]\n[[static_services]]\nname = \"a/b\"\npool = \"p\"\nports = [\"80\"]\nnodes = [\"10.1.1.1\"]\n");
    for (h, want) in [
        ("", StaticHealth::KubeProxy),
        ("health = \"none\"\n", StaticHealth::None),
        ("health = \"kube-proxy\"\n", StaticHealth::KubeProxy),
        ("health = 8080\n", StaticHealth::Port(8080)),
    ] {
        let c = parse(&format!("{base}{h}")).unwrap();
        assert_eq!(c.static_services[0].health, want, "{h}");
    }
}

#[test]
fn lease_and_timing_relations() {
    let e = errors(&format!(
        "{GATEWAY}[kubernetes]\nkubeconfig = \"/k\"\nlease_duration_s = 10\nlease_renew_s = 10\n[health]\ninterval_ms = 200\ntimeout_ms = 300\n[bgp]\nasn = 1\n[[bgp.peers]]\naddress = \"10.0.0.1\"\nasn = 2\nhold_time = 9\nkeepalive_s = 9\nsource_address = \"fd00::1\"\n"
    ));
    has(
        &e,
        "kubernetes.lease_renew_s: 10 must be less than lease_duration_s (10)",
    );
    has(
        &e,
        "health.timeout_ms: 300 must not exceed interval_ms (200)",
    );
    has(
        &e,
        "bgp.peers[0].keepalive_s: 9 must be less than hold_time (9)",
    );
    has(
        &e,
        "bgp.peers[0].source_address: fd00::1 is not of the family of the peer address 10.0.0.1",
    );
}

#[test]
fn no_input_panics() {
    // Mutations of a valid file and random bytes: errors, never a panic.
    let base = include_str!("../../tests/fixtures/design.toml")
        .as_bytes()
        .to_vec();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..2000 {
        let mut b = base.clone();
        for _ in 0..(next() % 8 + 1) {
            let i = (next() as usize) % b.len();
            match next() % 3 {
                0 => b[i] = (next() % 256) as u8,
                1 => {
                    b.remove(i);
                }
                _ => {
                    let glyphs = b"=[]\"'\n,.-/:#{}";
                    b.insert(i, glyphs[(next() as usize) % glyphs.len()])
                }
            }
        }
        let text = String::from_utf8_lossy(&b);
        let _ = parse(&text);
    }
}

#[test]
fn forwarding_keys_default_parse_and_are_checked() {
    let c = parse(GATEWAY).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.gateway.forwarding, Forwarding::default());
    assert_eq!(
        c.gateway.forwarding.next_hop_groups,
        NextHopGroups::Resilient
    );
    assert_eq!(c.gateway.forwarding.host_firewall, HostFirewall::Open);
    // Per-VIP accept counters cost per packet: asked for, not given.
    assert!(!c.gateway.forwarding.vip_counters);
    let text = format!(
        "{GATEWAY}next_hop_groups = \"multipath\"\nresilient_buckets = 64\n\
         resilient_idle_timer_s = 30\nresilient_unbalanced_timer_s = 0\nhost_firewall = \"check\"\n\
         vip_counters = true\nflowtable = \"hardware\"\n"
    );
    let f = parse(&text)
        .unwrap_or_else(|e| panic!("{e}"))
        .gateway
        .forwarding;
    assert_eq!(
        f,
        Forwarding {
            next_hop_groups: NextHopGroups::Multipath,
            resilient_buckets: 64,
            resilient_idle_timer_s: 30,
            resilient_unbalanced_timer_s: 0,
            host_firewall: HostFirewall::Check,
            vip_counters: true,
            flowtable: Flowtable::Hardware,
        }
    );
    let errs = errors(&format!(
        "{GATEWAY}next_hop_groups = \"ecmp\"\nresilient_buckets = 70000\nhost_firewall = \"drop\"\n\
         flowtable = \"on\"\n"
    ));
    has(
        &errs,
        "gateway.next_hop_groups: \"ecmp\": expected \"resilient\" or \"multipath\"",
    );
    has(&errs, "gateway.resilient_buckets: 70000 is out of range");
    has(
        &errs,
        "gateway.host_firewall: \"drop\": expected \"open\" or \"check\"",
    );
    has(
        &errs,
        "gateway.flowtable: \"on\": expected \"software\", \"hardware\" or \"off\"",
    );
}

#[test]
fn peer_bfd_keys_and_pool_med() {
    let c = parse(&format!(
        "{GATEWAY}[bgp]\nasn = 1\n[[bgp.peers]]\naddress = \"10.0.0.9\"\nasn = 2\nbfd = true\n\
         [[bgp.peers]]\naddress = \"10.0.0.8\"\nasn = 2\nbfd = true\nbfd_min_rx_ms = 100\n\
         bfd_min_tx_ms = 50\nbfd_multiplier = 5\n\
         [[bgp.peers]]\naddress = \"10.0.0.7\"\nasn = 2\n\
         [[pools]]\nname = \"p\"\naddresses = [\"10.1.0.0/24\"]\nmed = 250\n"
    ))
    .unwrap();
    let peers = &c.bgp.as_ref().unwrap().peers;
    assert_eq!(peers[0].bfd, Some(PeerBfd::default()));
    assert_eq!(
        peers[1].bfd,
        Some(PeerBfd {
            min_rx_ms: 100,
            min_tx_ms: 50,
            multiplier: 5
        })
    );
    assert_eq!(peers[2].bfd, None);
    assert_eq!(c.pools[0].bgp.med, Some(250));
    let e = errors(&format!(
        "{GATEWAY}[bgp]\nasn = 1\n[[bgp.peers]]\naddress = \"10.0.0.9\"\nasn = 2\n\
         bfd_min_rx_ms = 100\nbfd_multiplier = 0\n[[pools]]\nname = \"p\"\naddresses = [\"10.1.0.0/24\"]\nmed = -1\n"
    ));
    has(
        &e,
        "bgp.peers[0].bfd_min_rx_ms: has no effect without bfd = true",
    );
    has(&e, "bgp.peers[0].bfd_multiplier: 0 is out of range 1..=255");
    has(&e, "pools[0].med: -1 is out of range 0..=4294967295");
}
