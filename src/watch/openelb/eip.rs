//! `Eip` → [`Pool`], and the Eip status pier writes back. Pure: the
//! interface of `can_reach:<IP>` is looked up beforehand and passed in.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{BgpAttributes, Family, IpRange, NextHopMode, Pool, PoolMode, ServiceKey};

use super::OpenElbObject;

/// The annotation that makes an Eip the pool of Services that match no other.
pub const DEFAULT_EIP: &str = "eip.openelb.kubesphere.io/is-default-eip";

/// `spec` of an Eip (OpenELB `v1alpha2`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EipSpec {
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default)]
    pub disable: bool,
    #[serde(default, rename = "usingKnownIPs")]
    pub using_known_ips: bool,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub namespace_selector: BTreeMap<String, String>,
}

/// Parse `spec.address`: one IP, a CIDR (host bits are dropped, as OpenELB
/// does) or `a-b`, IPv4 or IPv6.
pub fn parse_address(s: &str) -> Result<IpRange, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("spec.address is empty".into());
    }
    if !s.contains('-') && s.contains('/') {
        let net: IpNet = s
            .parse()
            .map_err(|_| format!("spec.address {s:?} is not a CIDR (expected e.g. 10.0.0.0/24)"))?;
        let net = net.trunc();
        return Ok(IpRange {
            start: net.network(),
            end: net.broadcast(),
        });
    }
    s.parse::<IpRange>()
        .map_err(|e| format!("spec.address: {e}"))
}

/// The interface of `can_reach:<IP>`, if the Eip names one that way.
pub fn can_reach(spec: &EipSpec) -> Option<Result<IpAddr, String>> {
    let iface = spec.interface.as_deref()?.trim();
    let ip = iface.strip_prefix("can_reach:")?;
    Some(
        ip.trim()
            .parse()
            .map_err(|_| format!("spec.interface {iface:?}: {ip:?} is not an IP address")),
    )
}

/// The device in `ip -o route get <IP>` output (`... dev eth0 src ...`).
pub fn route_get_device(output: &str) -> Option<String> {
    let mut words = output.split_whitespace();
    while let Some(w) = words.next() {
        if w == "dev" {
            return words.next().map(String::from);
        }
    }
    None
}

/// The pool an Eip defines, with notes about fields pier reads differently
/// (shown in the Eip's status), or why it cannot be used.
pub fn pool(
    obj: &OpenElbObject,
    routes: &BTreeMap<IpAddr, Result<String, String>>,
) -> Result<(Pool, Vec<String>), String> {
    let spec: EipSpec = serde_json::from_value(obj.spec.clone())
        .map_err(|e| format!("spec cannot be read: {e}"))?;
    let range = parse_address(&spec.address)?;
    let mut notes = Vec::new();
    let mode =
        match spec.protocol.as_deref().unwrap_or("bgp") {
            "bgp" | "" => PoolMode::Bgp,
            "layer2" => PoolMode::L2,
            "vip" => return Err(
                "protocol \"vip\" (keepalived on the nodes) is not something a gateway outside \
                 the cluster can do: use \"bgp\" or \"layer2\""
                    .into(),
            ),
            other => {
                return Err(format!(
                    "protocol {other:?}: expected \"bgp\" or \"layer2\""
                ))
            }
        };
    let interface = match (mode, spec.interface.as_deref().map(str::trim)) {
        (PoolMode::L2, None | Some("")) => {
            return Err(
                "a layer2 Eip needs spec.interface: the gateway's LAN interface pier answers \
                 ARP/NDP on (a name, or can_reach:<IP>)"
                    .into(),
            )
        }
        (PoolMode::L2, Some(i)) => match can_reach(&spec) {
            Some(Ok(ip)) => match routes.get(&ip) {
                Some(Ok(dev)) => Some(dev.clone()),
                Some(Err(e)) => return Err(format!("spec.interface {i:?}: {e}")),
                None => return Err(format!("spec.interface {i:?}: route not looked up yet")),
            },
            Some(Err(e)) => return Err(e),
            None => Some(i.to_string()),
        },
        (PoolMode::Bgp, Some(i)) if !i.is_empty() => {
            notes.push(format!(
                "spec.interface {i:?} is ignored: only layer2 Eips use one"
            ));
            None
        }
        (PoolMode::Bgp, _) => None,
    };
    if spec.using_known_ips {
        notes.push(
            "spec.usingKnownIPs is ignored: pier adopts IPs already in Services' status".into(),
        );
    }
    let is_default = obj
        .annotations
        .get(DEFAULT_EIP)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    Ok((
        Pool {
            name: obj.name.clone(),
            ranges: vec![range],
            mode,
            next_hop: NextHopMode::Nodes,
            interface,
            namespaces: spec.namespaces,
            namespace_selector: spec.namespace_selector,
            priority: spec.priority,
            // As OpenELB: Services that name no Eip and are not in an Eip's
            // namespaces get the default Eip only.
            auto_assign: is_default,
            disabled: spec.disable,
            node_selector: BTreeMap::new(),
            bgp: BgpAttributes::default(),
        },
        notes,
    ))
}

/// A condition in a status (type Accepted / Unsupported).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

impl Condition {
    pub fn new(type_: &str, ok: bool, reason: &str, message: impl Into<String>) -> Self {
        Condition {
            type_: type_.into(),
            status: if ok { "True" } else { "False" }.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// `status` of an Eip as OpenELB writes it, plus conditions saying why an
/// Eip is not used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EipStatus {
    pub occupied: bool,
    pub usage: u64,
    pub pool_size: u64,
    /// IP → `namespace/name` (several Services sharing one IP: `;`-separated).
    pub used: BTreeMap<String, String>,
    #[serde(rename = "firstIP")]
    pub first_ip: String,
    #[serde(rename = "lastIP")]
    pub last_ip: String,
    pub ready: bool,
    pub v4: bool,
    pub conditions: Vec<Condition>,
}

/// The status of an Eip: its range (if its address parses), the IPs in
/// use with their Services, and whether pier uses it.
pub fn status(
    spec: &Value,
    used: Option<&BTreeMap<IpAddr, Vec<ServiceKey>>>,
    accepted: Result<&[String], &str>,
    reason: &str,
) -> EipStatus {
    let range = spec
        .get("address")
        .and_then(Value::as_str)
        .and_then(|a| parse_address(a).ok());
    let mut used_map = BTreeMap::new();
    for (ip, services) in used.into_iter().flatten() {
        let names: Vec<String> = services.iter().map(|s| s.to_string()).collect();
        used_map.insert(ip.to_string(), names.join(";"));
    }
    // Kubernetes integers are int64: a /64 saturates.
    let pool_size = range.map_or(0, |r| r.size().min(i64::MAX as u128) as u64);
    let usage = used_map.len() as u64;
    let conditions = match accepted {
        Ok(notes) => {
            let mut c = vec![Condition::new(
                "Accepted",
                true,
                "Accepted",
                "in use as a pier pool",
            )];
            if !notes.is_empty() {
                c.push(Condition::new(
                    "Unsupported",
                    true,
                    "FieldsIgnored",
                    notes.join("; "),
                ));
            }
            c
        }
        Err(why) => vec![Condition::new("Accepted", false, reason, why)],
    };
    EipStatus {
        occupied: pool_size > 0 && usage >= pool_size,
        usage,
        pool_size,
        used: used_map,
        first_ip: range.map(|r| r.start.to_string()).unwrap_or_default(),
        last_ip: range.map(|r| r.end.to_string()).unwrap_or_default(),
        ready: accepted.is_ok(),
        v4: range.is_none_or(|r| r.family() == Family::V4),
        conditions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(name: &str, spec: Value, default: bool) -> OpenElbObject {
        let mut o = OpenElbObject::new(name, spec);
        if default {
            o.annotations.insert(DEFAULT_EIP.into(), "true".into());
        }
        o
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn address_forms() {
        let r = |s| parse_address(s).map(|r| r.to_string());
        assert_eq!(r("10.0.0.7"), Ok("10.0.0.7".into()));
        assert_eq!(r("10.0.0.0/30"), Ok("10.0.0.0/30".into()));
        assert_eq!(r("10.0.0.5/30"), Ok("10.0.0.4/30".into()));
        assert_eq!(r("10.0.0.1-10.0.0.9"), Ok("10.0.0.1-10.0.0.9".into()));
        assert_eq!(r("fd00::1"), Ok("fd00::1".into()));
        assert_eq!(r("fd00::/126"), Ok("fd00::/126".into()));
        assert_eq!(r("fd00::1-fd00::9"), Ok("fd00::1-fd00::9".into()));
        assert!(r("").is_err());
        assert!(r("10.0.0.9-10.0.0.1").is_err());
        assert!(r("10.0.0.1-fd00::1").is_err());
        assert!(r("nonsense").is_err());
    }

    #[test]
    fn every_field_maps() {
        let o = obj(
            "eip-a",
            json!({"address": "10.1.0.0/24", "protocol": "layer2", "interface": "eth-lan",
                   "disable": true, "priority": 7, "namespaces": ["shop"],
                   "namespaceSelector": {"team": "a"}}),
            true,
        );
        let (p, notes) = pool(&o, &BTreeMap::new()).unwrap();
        assert!(notes.is_empty());
        assert_eq!(p.name, "eip-a");
        assert_eq!(p.ranges, vec![parse_address("10.1.0.0/24").unwrap()]);
        assert_eq!(p.mode, PoolMode::L2);
        assert_eq!(p.interface.as_deref(), Some("eth-lan"));
        assert!(p.disabled);
        assert_eq!(p.priority, 7);
        assert_eq!(p.namespaces, vec!["shop".to_string()]);
        assert_eq!(
            p.namespace_selector.get("team").map(String::as_str),
            Some("a")
        );
        assert!(p.auto_assign);
        let (p, _) = pool(
            &obj("b", json!({"address": "10.2.0.1"}), false),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(p.mode, PoolMode::Bgp);
        assert!(!p.auto_assign && !p.disabled);
    }

    #[test]
    fn can_reach_uses_the_route_lookup() {
        let o = obj(
            "l2",
            json!({"address": "10.1.0.1-10.1.0.9", "protocol": "layer2", "interface": "can_reach:10.1.0.254"}),
            false,
        );
        let routes = [(ip("10.1.0.254"), Ok("veth7".to_string()))].into();
        assert_eq!(
            pool(&o, &routes).unwrap().0.interface.as_deref(),
            Some("veth7")
        );
        let routes = [(ip("10.1.0.254"), Err("no route".to_string()))].into();
        assert!(pool(&o, &routes).unwrap_err().contains("no route"));
        assert_eq!(
            route_get_device("10.1.0.254 via 10.0.0.1 dev eth0 src 10.0.0.2 uid 0 \\    cache"),
            Some("eth0".into())
        );
        assert_eq!(
            route_get_device("local 10.0.0.2 dev lo table local"),
            Some("lo".into())
        );
        assert_eq!(route_get_device("garbage"), None);
    }

    #[test]
    fn refusals_say_why() {
        let e = |spec: Value| pool(&obj("x", spec, false), &BTreeMap::new()).unwrap_err();
        assert!(e(json!({"address": "10.0.0.1", "protocol": "vip"})).contains("vip"));
        assert!(e(json!({"address": "10.0.0.1", "protocol": "ospf"})).contains("ospf"));
        assert!(e(json!({"address": "10.0.0.1", "protocol": "layer2"})).contains("interface"));
        assert!(e(json!({"address": "10.0.0.300"})).contains("10.0.0.300"));
        assert!(e(json!({"address": 5})).contains("spec cannot be read"));
        let (_, notes) = pool(
            &obj(
                "x",
                json!({"address": "10.0.0.1", "interface": "eth0", "usingKnownIPs": true}),
                false,
            ),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(notes.len(), 2);
    }

    #[test]
    fn status_counts_and_joins_shared_ips() {
        let used: BTreeMap<IpAddr, Vec<ServiceKey>> = [
            (
                ip("10.0.0.1"),
                vec![ServiceKey::new("a", "x"), ServiceKey::new("b", "y")],
            ),
            (ip("10.0.0.2"), vec![ServiceKey::new("a", "z")]),
        ]
        .into();
        let s = status(&json!({"address": "10.0.0.0/30"}), Some(&used), Ok(&[]), "");
        assert_eq!(s.pool_size, 4);
        assert_eq!(s.usage, 2);
        assert_eq!(s.used.get("10.0.0.1").map(String::as_str), Some("a/x;b/y"));
        assert_eq!(
            (s.first_ip.as_str(), s.last_ip.as_str()),
            ("10.0.0.0", "10.0.0.3")
        );
        assert!(s.ready && s.v4 && !s.occupied);
        let s = status(
            &json!({"address": "10.0.0.1-10.0.0.2"}),
            Some(&used),
            Ok(&[]),
            "",
        );
        assert!(s.occupied);
        let s = status(
            &json!({"address": "fd00::/64"}),
            None,
            Err("overlaps"),
            "Overlap",
        );
        assert!(!s.ready && !s.v4);
        assert_eq!(s.pool_size, i64::MAX as u64);
        assert_eq!(s.conditions[0].reason, "Overlap");
    }
}
