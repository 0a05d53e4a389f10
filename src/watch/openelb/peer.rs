//! `BgpConf` (the object named `default`) and `BgpPeer` → pier's BGP
//! configuration, the fields pier cannot honour, and the BgpPeer status.
//! Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::bgp::PeerStatus;
use crate::config::{BgpConfig, PeerConfig};
use crate::model::Family;

/// BgpConf fields pier reads.
const CONF_FIELDS: &[&str] = &[
    "as",
    "routerId",
    "listenPort",
    "listenAddresses[]",
    "gracefulRestart.enabled",
    "gracefulRestart.restartTime",
];

/// BgpPeer fields pier reads (`[]` stands for any list index).
const PEER_FIELDS: &[&str] = &[
    "conf.peerAs",
    "conf.neighborAddress",
    "conf.authPassword",
    "conf.localAs",
    "conf.description",
    "ebgpMultihop.enabled",
    "ebgpMultihop.multihopTtl",
    "timers.config.holdTime",
    "timers.config.keepaliveInterval",
    "timers.config.connectRetry",
    "transport.passiveMode",
    "transport.remotePort",
    "afiSafis[].config.family.afi",
    "afiSafis[].config.family.safi",
    "afiSafis[].config.enabled",
    "afiSafis[].addPaths.config.sendMax",
];

/// Paths of the leaves of `v` set to something other than a zero value
/// (GoBGP's zero values mean "unset"), list indices written `[]`.
fn set_leaves(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                set_leaves(v, &p, out);
            }
        }
        Value::Array(a) => {
            for v in a {
                set_leaves(v, &format!("{prefix}[]"), out);
            }
        }
        Value::Null | Value::Bool(false) => {}
        Value::String(s) if s.is_empty() => {}
        Value::Number(n) if n.as_f64() == Some(0.0) => {}
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

/// BgpPeer subtrees pier reads whole (a `metav1.LabelSelector` has map keys
/// of any name).
const PEER_SUBTREES: &[&str] = &["nodeSelector."];

/// The fields of `spec` pier does not honour, sorted.
pub fn unsupported(spec: &Value, known: &[&str]) -> Vec<String> {
    let mut leaves = BTreeSet::new();
    set_leaves(spec, "", &mut leaves);
    leaves
        .into_iter()
        .filter(|p| !known.contains(&p.as_str()))
        .collect()
}

pub fn unsupported_conf(spec: &Value) -> Vec<String> {
    unsupported(spec, CONF_FIELDS)
}

pub fn unsupported_peer(spec: &Value) -> Vec<String> {
    let mut out = unsupported(spec, PEER_FIELDS);
    out.retain(|p| !PEER_SUBTREES.iter().any(|t| p.starts_with(t)));
    out
}

/// An integer that OpenELB versions write as a number or a string.
fn int(v: &Value, path: &str, min: u64, max: u64) -> Result<Option<u64>, String> {
    let mut cur = v;
    for k in path.split('.') {
        match cur.get(k) {
            Some(x) => cur = x,
            None => return Ok(None),
        }
    }
    let n = match cur {
        Value::Null => return Ok(None),
        Value::Number(n) => n.as_f64(),
        Value::String(s) if s.trim().is_empty() => return Ok(None),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n.fract() == 0.0 && n >= min as f64 && n <= max as f64 => Ok(Some(n as u64)),
        _ => Err(format!("{path}: {cur} is not an integer in {min}..={max}")),
    }
}

fn str_at<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    let mut cur = v;
    for k in path.split('.') {
        cur = cur.get(k)?;
    }
    cur.as_str().filter(|s| !s.is_empty())
}

fn bool_at(v: &Value, path: &str) -> bool {
    let mut cur = v;
    for k in path.split('.') {
        match cur.get(k) {
            Some(x) => cur = x,
            None => return false,
        }
    }
    cur.as_bool().unwrap_or(false)
}

/// The global BGP settings of a BgpConf: (config without peers, router id).
pub fn conf(spec: &Value) -> Result<(BgpConfig, Option<Ipv4Addr>), String> {
    let asn = int(spec, "as", 1, u32::MAX.into())?
        .ok_or("spec.as (pier's AS number) is required")? as u32;
    let router_id = match str_at(spec, "routerId") {
        Some(s) => Some(
            s.parse::<Ipv4Addr>()
                .map_err(|_| format!("routerId {s:?} is not an IPv4 address"))?,
        ),
        None => None,
    };
    // GoBGP: a negative port disables listening.
    let (listen, listen_port) = match spec.get("listenPort").and_then(Value::as_i64) {
        Some(p) if p < 0 => (false, 179),
        _ => (
            true,
            int(spec, "listenPort", 1, 65535)?.map_or(179, |p| p as u16),
        ),
    };
    let mut listen_addresses = Vec::new();
    for a in spec
        .get("listenAddresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let s = a.as_str().unwrap_or_default();
        listen_addresses.push(
            s.parse::<IpAddr>()
                .map_err(|_| format!("listenAddresses: {a} is not an IP address"))?,
        );
    }
    Ok((
        BgpConfig {
            asn,
            listen,
            listen_port,
            listen_addresses,
            graceful_restart: bool_at(spec, "gracefulRestart.enabled"),
            restart_time_s: int(spec, "gracefulRestart.restartTime", 1, 4095)?
                .map_or(120, |n| n as u16),
            peers: Vec::new(),
        },
        router_id,
    ))
}

/// A BgpPeer as a peer of pier, and its TCP-MD5 password if it has one
/// (pier keeps it in a file only it reads, under `password_dir`).
pub fn peer(spec: &Value, password_dir: &Path) -> Result<(PeerConfig, Option<String>), String> {
    let address: IpAddr = str_at(spec, "conf.neighborAddress")
        .ok_or("conf.neighborAddress is required")?
        .parse()
        .map_err(|_| "conf.neighborAddress is not an IP address".to_string())?;
    let asn =
        int(spec, "conf.peerAs", 1, u32::MAX.into())?.ok_or("conf.peerAs is required")? as u32;
    let local_asn = int(spec, "conf.localAs", 1, u32::MAX.into())?.map(|n| n as u32);
    let hold_time = int(spec, "timers.config.holdTime", 0, 65535)?.map_or(90, |n| n as u16);
    if hold_time == 1 || hold_time == 2 {
        return Err(format!(
            "timers.config.holdTime {hold_time}: a hold time is 0 or at least 3 seconds (RFC 4271 §4.2)"
        ));
    }
    let keepalive_s = int(spec, "timers.config.keepaliveInterval", 1, 21845)?.map(|n| n as u16);
    if let Some(k) = keepalive_s {
        if hold_time > 0 && k >= hold_time {
            return Err(format!(
                "timers.config.keepaliveInterval {k} must be less than holdTime ({hold_time})"
            ));
        }
    }
    let connect_retry_s = int(spec, "timers.config.connectRetry", 1, 3600)?.map_or(5, |n| n as u16);
    let multihop_ttl = if bool_at(spec, "ebgpMultihop.enabled") {
        Some(int(spec, "ebgpMultihop.multihopTtl", 1, 255)?.map_or(255, |n| n as u8))
    } else {
        None
    };
    let port = int(spec, "transport.remotePort", 1, 65535)?.map_or(179, |n| n as u16);
    let mut families = Vec::new();
    let mut send_max: Option<u64> = None;
    let afi_safis = spec.get("afiSafis").and_then(Value::as_array);
    for (i, a) in afi_safis.into_iter().flatten().enumerate() {
        let afi = str_at(a, "config.family.afi").unwrap_or_default();
        let safi = str_at(a, "config.family.safi").unwrap_or("unicast");
        let family = match (afi, safi) {
            ("ipv4" | "AFI_IP", "unicast" | "SAFI_UNICAST") => Family::V4,
            ("ipv6" | "AFI_IP6", "unicast" | "SAFI_UNICAST") => Family::V6,
            _ => {
                return Err(format!(
                "afiSafis[{i}]: family {afi:?}/{safi:?}: pier speaks ipv4/unicast and ipv6/unicast"
            ))
            }
        };
        // `enabled: false` written explicitly turns the family off.
        if a.pointer("/config/enabled") != Some(&Value::Bool(false)) {
            families.push(family);
        }
        if let Some(n) = int(a, "addPaths.config.sendMax", 0, 255)? {
            send_max = Some(send_max.map_or(n, |m| m.max(n)));
        }
    }
    if afi_safis.is_none_or(|a| a.is_empty()) {
        families = vec![Family::V4, Family::V6];
    }
    families.sort();
    families.dedup();
    if families.is_empty() {
        return Err("afiSafis enables no family".into());
    }
    // OpenELB's rack selector (`porter.kubesphere.io/rack: leaf1`): this
    // peer is sent only the matching nodes (docs/bgp.md, "Rack-aware next
    // hops"). An empty selector selects every node, as in Kubernetes.
    let node_selector = match spec.get("nodeSelector") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            crate::model::selector::Selector::from_json(v)
                .map_err(|e| format!("nodeSelector: {e}"))?,
        )
        .filter(|s| !s.is_empty()),
    };
    let password = str_at(spec, "conf.authPassword").map(String::from);
    Ok((
        PeerConfig {
            address,
            asn,
            hold_time,
            password_file: password
                .as_ref()
                .map(|_| password_dir.join(format!("{address}.password"))),
            passive: bool_at(spec, "transport.passiveMode"),
            multihop_ttl,
            keepalive_s,
            connect_retry_s,
            gtsm: false,
            port,
            local_asn,
            source_address: None,
            families,
            // Unset: pier's default (ADD-PATH offered; pier falls back to
            // next hop self for a peer that does not take it).
            add_path: send_max.is_none_or(|n| n > 1),
            // OpenELB's sendMax bounds the paths per prefix, as max_paths.
            max_paths: send_max
                .filter(|n| *n > 1)
                .map_or(crate::config::DEFAULT_MAX_PATHS, |n| n as u16),

            // OpenELB's BgpPeer has no BFD field (spec: conf, ebgpMultihop,
            // timers, transport, gracefulRestart, afiSafis, nodeSelector).
            bfd: None,
            node_selector,
        },
        password,
    ))
}

/// One gateway's entry in `status.nodesPeerStatus` (OpenELB's shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodePeerStatus {
    pub peer_state: PeerState,
    pub timers_state: TimersState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerState {
    pub neighbor_address: String,
    pub peer_as: u32,
    pub local_as: u32,
    pub session_state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimersState {
    /// When the session came up (RFC 3339), empty while it is down. A time
    /// point, not a duration, so the status does not change every second.
    pub uptime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negotiated_hold_time: Option<String>,
}

/// GoBGP's session state names, which OpenELB shows.
fn session_state(fsm: &str) -> String {
    match fsm.to_ascii_lowercase().as_str() {
        "idle" => "BGP_FSM_IDLE",
        "connect" => "BGP_FSM_CONNECT",
        "active" => "BGP_FSM_ACTIVE",
        "opensent" => "BGP_FSM_OPENSENT",
        "openconfirm" => "BGP_FSM_OPENCONFIRM",
        "established" => "BGP_FSM_ESTABLISHED",
        other => return other.to_string(),
    }
    .into()
}

pub fn node_status(s: &PeerStatus) -> NodePeerStatus {
    NodePeerStatus {
        peer_state: PeerState {
            neighbor_address: s.peer.to_string(),
            peer_as: s.asn,
            local_as: s.local_asn,
            session_state: session_state(&s.state),
            router_id: s.router_id.map(|r| r.to_string()),
        },
        timers_state: TimersState {
            uptime: s
                .established_at
                .and_then(|t| k8s_openapi::jiff::Timestamp::from_second(t as i64).ok())
                .map(|t| t.to_string())
                .unwrap_or_default(),
            negotiated_hold_time: s.hold_time.map(|h| h.to_string()),
        },
    }
}

/// The peers' entries keyed by neighbor address.
pub fn by_address(board: &[PeerStatus]) -> BTreeMap<IpAddr, NodePeerStatus> {
    board.iter().map(|s| (s.peer, node_status(s))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conf_fields_map() {
        let (c, rid) = conf(&json!({"as": 65001, "routerId": "10.0.0.2", "listenPort": 17900,
            "listenAddresses": ["10.0.0.2"], "gracefulRestart": {"enabled": true, "restartTime": 30}}))
        .unwrap();
        assert_eq!(c.asn, 65001);
        assert_eq!(rid, Some("10.0.0.2".parse().unwrap()));
        assert_eq!((c.listen, c.listen_port), (true, 17900));
        assert_eq!(
            c.listen_addresses,
            vec!["10.0.0.2".parse::<IpAddr>().unwrap()]
        );
        assert!(c.graceful_restart);
        assert_eq!(c.restart_time_s, 30);
        let (c, rid) = conf(&json!({"as": 65001, "listenPort": -1})).unwrap();
        assert!(!c.listen && !c.graceful_restart && rid.is_none());
        assert!(conf(&json!({})).unwrap_err().contains("spec.as"));
        assert!(conf(&json!({"as": 1, "routerId": "x"})).is_err());
        assert_eq!(
            unsupported_conf(&json!({"as": 1, "useMultiplePaths": true, "families": ["ipv4"]})),
            vec!["families[]".to_string(), "useMultiplePaths".to_string()]
        );
    }

    #[test]
    fn peer_fields_map() {
        let spec = json!({
            "conf": {"peerAs": 65000, "neighborAddress": "10.0.0.1", "authPassword": "s3cret"},
            "ebgpMultihop": {"enabled": true, "multihopTtl": 3},
            "timers": {"config": {"holdTime": "30", "keepaliveInterval": 10, "connectRetry": 2}},
            "transport": {"passiveMode": true, "remotePort": 1790},
            "afiSafis": [{"config": {"family": {"afi": "ipv4", "safi": "unicast"}, "enabled": true},
                          "addPaths": {"config": {"sendMax": 8}}}],
        });
        let (p, pw) = peer(&spec, Path::new("/var/lib/pier/peers")).unwrap();
        assert_eq!(p.address, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(p.asn, 65000);
        assert_eq!(pw.as_deref(), Some("s3cret"));
        assert_eq!(
            p.password_file.as_deref(),
            Some(Path::new("/var/lib/pier/peers/10.0.0.1.password"))
        );
        assert_eq!(p.multihop_ttl, Some(3));
        assert_eq!(
            (p.hold_time, p.keepalive_s, p.connect_retry_s),
            (30, Some(10), 2)
        );
        assert!(p.passive);
        assert_eq!(p.port, 1790);
        assert_eq!(p.families, vec![Family::V4]);
        assert!(p.add_path);
        assert_eq!(p.max_paths, 8, "sendMax bounds the paths per VIP");
        assert!(unsupported_peer(&spec).is_empty());

        let (p, pw) = peer(
            &json!({"conf": {"peerAs": 65000, "neighborAddress": "fd00::1"},
                    "afiSafis": [{"config": {"family": {"afi": "ipv6", "safi": "unicast"}},
                                  "addPaths": {"config": {"sendMax": 1}}}]}),
            Path::new("/x"),
        )
        .unwrap();
        assert!(pw.is_none() && p.password_file.is_none());
        assert_eq!(p.families, vec![Family::V6]);
        assert!(!p.add_path);
        assert_eq!((p.hold_time, p.port, p.multihop_ttl), (90, 179, None));
    }

    #[test]
    fn peer_refusals_and_unsupported_fields() {
        let e = |spec: Value| peer(&spec, Path::new("/x")).unwrap_err();
        assert!(e(json!({"conf": {"peerAs": 1}})).contains("neighborAddress"));
        assert!(e(json!({"conf": {"neighborAddress": "10.0.0.1"}})).contains("peerAs"));
        assert!(
            e(json!({"conf": {"peerAs": 1, "neighborAddress": "10.0.0.1"},
            "timers": {"config": {"holdTime": 2}}}))
            .contains("holdTime")
        );
        assert!(
            e(json!({"conf": {"peerAs": 1, "neighborAddress": "10.0.0.1"},
            "timers": {"config": {"holdTime": 9, "keepaliveInterval": 9}}}))
            .contains("keepaliveInterval")
        );
        assert!(
            e(json!({"conf": {"peerAs": 1, "neighborAddress": "10.0.0.1"},
            "afiSafis": [{"config": {"family": {"afi": "l2vpn", "safi": "evpn"}}}]}))
            .contains("l2vpn")
        );
        assert_eq!(
            unsupported_peer(&json!({"conf": {"peerAs": 1, "neighborAddress": "10.0.0.1",
                "vrf": "red", "adminDown": false},
                "nodeSelector": {"matchLabels": {"a": "b"}},
                "transport": {"mtuDiscovery": true}})),
            vec!["conf.vrf".to_string(), "transport.mtuDiscovery".to_string()],
            "nodeSelector is honoured"
        );
        assert!(
            e(json!({"conf": {"peerAs": 1, "neighborAddress": "10.0.0.1"},
            "nodeSelector": {"matchExpressions": [{"key": "rack", "operator": "In"}]}}))
            .contains("nodeSelector: matchExpressions[0]")
        );
    }

    /// The manuals' rack selector, and matchExpressions, reach the peer.
    #[test]
    fn node_selector_maps_to_the_peer() {
        let (p, _) = peer(
            &json!({"conf": {"peerAs": 65000, "neighborAddress": "10.0.0.1"},
                    "nodeSelector": {"matchLabels": {"porter.kubesphere.io/rack": "leaf1"},
                        "matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}}),
            Path::new("/x"),
        )
        .unwrap();
        let sel = p.node_selector.expect("selector");
        assert_eq!(sel.to_string(), "porter.kubesphere.io/rack=leaf1,!gpu");
        let (p, _) = peer(
            &json!({"conf": {"peerAs": 65000, "neighborAddress": "10.0.0.1"},
                    "nodeSelector": {}}),
            Path::new("/x"),
        )
        .unwrap();
        assert_eq!(
            p.node_selector, None,
            "an empty selector selects every node"
        );
    }

    #[test]
    fn node_status_shape() {
        let s = PeerStatus {
            peer: "10.0.0.1".parse().unwrap(),
            asn: 65000,
            local_asn: 65001,
            state: "Established".into(),
            established_at: Some(1_700_000_000),
            uptime_s: Some(5),
            hold_time: Some(9),
            keepalive: Some(3),
            router_id: Some("10.0.0.1".parse().unwrap()),
            capabilities: vec![],
            prefixes_sent: 0,
            updates_sent: 0,
            updates_received: 0,
            next_hop_self_fallback: false,
            last_error: None,
            attempted: true,
            bfd: None,
        };
        let v = serde_json::to_value(node_status(&s)).unwrap();
        assert_eq!(v["peerState"]["sessionState"], "BGP_FSM_ESTABLISHED");
        assert_eq!(v["timersState"]["uptime"], "2023-11-14T22:13:20Z");
    }
}
