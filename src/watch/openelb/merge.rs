//! The pure merge of the config file's pools and peers with those the
//! cluster's Eip / BgpConf / BgpPeer objects define.
//!
//! Rules: the file wins on a name (pool name, peer address) both define,
//! and the object is reported as a conflict; an Eip overlapping a pool
//! already taken (the file's, an older Eip's, or a deleted Eip's that still
//! has Services on it) is not used; objects are taken oldest first (then
//! by name) so the outcome does not depend on arrival order; at most one
//! Eip is the default.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use crate::config::{BgpConfig, PeerConfig};
use crate::engine::ServiceState;
use crate::model::{Pool, ServiceKey};

use super::{eip, peer, OpenElbObject};

/// What pier made of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Used; `notes` name the fields pier ignores.
    Accepted { notes: Vec<String> },
    /// Not used: `reason` (CamelCase) and why.
    Refused {
        reason: &'static str,
        message: String,
    },
}

impl Verdict {
    fn refused(reason: &'static str, message: impl Into<String>) -> Self {
        Verdict::Refused {
            reason,
            message: message.into(),
        }
    }
    pub fn accepted(&self) -> bool {
        matches!(self, Verdict::Accepted { .. })
    }
}

/// A name both the file and an object define (logged and recorded as an
/// Event on the object once).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    pub kind: &'static str,
    pub name: String,
    pub message: String,
}

/// The file's part of the merge.
#[derive(Debug, Clone, Copy)]
pub struct File<'a> {
    pub pools: &'a [Pool],
    pub bgp: Option<&'a BgpConfig>,
    pub router_id: Ipv4Addr,
}

/// The cluster's part: objects by name.
#[derive(Debug, Clone, Copy)]
pub struct Cluster<'a> {
    pub eips: &'a BTreeMap<String, OpenElbObject>,
    pub confs: &'a BTreeMap<String, OpenElbObject>,
    pub peers: &'a BTreeMap<String, OpenElbObject>,
    /// Pools of deleted Eips whose Services still hold IPs: kept, disabled.
    pub draining: &'a BTreeMap<String, Pool>,
    /// `can_reach:<IP>` lookups: IP → interface of the route to it.
    pub routes: &'a BTreeMap<IpAddr, Result<String, String>>,
    /// Where TCP-MD5 passwords of BgpPeers are kept.
    pub password_dir: &'a Path,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Merged {
    pub pools: Vec<Pool>,
    pub bgp: Option<BgpConfig>,
    pub router_id: Option<Ipv4Addr>,
    /// Password files to write (path → password).
    pub passwords: BTreeMap<PathBuf, String>,
    pub eips: BTreeMap<String, Verdict>,
    pub confs: BTreeMap<String, Verdict>,
    pub peers: BTreeMap<String, Verdict>,
    /// Neighbor address of each accepted BgpPeer.
    pub peer_addresses: BTreeMap<String, IpAddr>,
    pub conflicts: Vec<Conflict>,
}

/// Objects oldest first, then by name.
fn ordered(objs: &BTreeMap<String, OpenElbObject>) -> Vec<&OpenElbObject> {
    let mut v: Vec<&OpenElbObject> = objs.values().collect();
    v.sort_by(|a, b| (&a.created, &a.name).cmp(&(&b.created, &b.name)));
    v
}

pub fn merge(file: File<'_>, cluster: Cluster<'_>) -> Merged {
    let mut m = Merged {
        pools: file.pools.to_vec(),
        ..Default::default()
    };
    // Pools.
    let mut default_eip: Option<String> = None;
    for d in cluster.draining.values() {
        if !cluster.eips.contains_key(&d.name) && !file.pools.iter().any(|p| p.name == d.name) {
            m.pools.push(Pool {
                disabled: true,
                auto_assign: false,
                ..d.clone()
            });
        }
    }
    for obj in ordered(cluster.eips) {
        let verdict = if file.pools.iter().any(|p| p.name == obj.name) {
            let message = format!(
                "pool {:?} is also defined in the config file; the file's definition is used",
                obj.name
            );
            m.conflicts.push(Conflict {
                kind: "Eip",
                name: obj.name.clone(),
                message: message.clone(),
            });
            Verdict::refused("Conflict", message)
        } else {
            match eip::pool(obj, cluster.routes) {
                // An edit that breaks an Eip in use must not withdraw its
                // Services' IPs: the last good definition stays, disabled.
                Err(e) => match cluster.draining.get(&obj.name) {
                    Some(d) if overlap(d, &m.pools).is_none() => {
                        m.pools.push(Pool {
                            disabled: true,
                            auto_assign: false,
                            ..d.clone()
                        });
                        Verdict::refused(
                            "Invalid",
                            format!("{e}; the previous definition stays (disabled) while Services hold its IPs"),
                        )
                    }
                    _ => Verdict::refused("Invalid", e),
                },
                Ok((mut pool, mut notes)) => match overlap(&pool, &m.pools) {
                    Some(why) => Verdict::refused("Overlap", why),
                    None => {
                        if pool.auto_assign {
                            match &default_eip {
                                Some(d) => {
                                    pool.auto_assign = false;
                                    notes.push(format!(
                                        "Eip {d:?} is already the default (at most one): this one is not"
                                    ));
                                }
                                None => default_eip = Some(pool.name.clone()),
                            }
                        }
                        m.pools.push(pool);
                        Verdict::Accepted { notes }
                    }
                },
            }
        };
        m.eips.insert(obj.name.clone(), verdict);
    }

    // Global BGP settings.
    let mut global: Option<BgpConfig> = file.bgp.cloned();
    m.router_id = Some(file.router_id);
    for obj in ordered(cluster.confs) {
        let verdict = if obj.name != "default" {
            Verdict::refused("Ignored", "pier reads only the BgpConf named \"default\"")
        } else if file.bgp.is_some() {
            let message = "the config file has a [bgp] section; its settings are used".to_string();
            m.conflicts.push(Conflict {
                kind: "BgpConf",
                name: obj.name.clone(),
                message: message.clone(),
            });
            Verdict::refused("Conflict", message)
        } else {
            match peer::conf(&obj.spec) {
                Err(e) => Verdict::refused("Invalid", e),
                Ok((conf, rid)) => {
                    if let Some(r) = rid {
                        m.router_id = Some(r);
                    }
                    global = Some(conf);
                    Verdict::Accepted {
                        notes: peer::unsupported_conf(&obj.spec),
                    }
                }
            }
        };
        m.confs.insert(obj.name.clone(), verdict);
    }

    // Peers.
    let mut taken: BTreeMap<IpAddr, String> = file
        .bgp
        .iter()
        .flat_map(|b| b.peers.iter())
        .map(|p| (p.address, "the config file".to_string()))
        .collect();
    let mut crd_peers: Vec<PeerConfig> = Vec::new();
    for obj in ordered(cluster.peers) {
        let verdict = match peer::peer(&obj.spec, cluster.password_dir) {
            Err(e) => Verdict::refused("Invalid", e),
            Ok(_) if global.is_none() => Verdict::refused(
                "NoBgpConf",
                "no BgpConf named \"default\" and no [bgp] in the config file: pier has no AS to peer with",
            ),
            Ok((p, password)) => match taken.get(&p.address) {
                Some(by) if by == "the config file" => {
                    let message = format!(
                        "peer {} is also defined in the config file; the file's definition is used",
                        p.address
                    );
                    m.conflicts.push(Conflict {
                        kind: "BgpPeer",
                        name: obj.name.clone(),
                        message: message.clone(),
                    });
                    Verdict::refused("Conflict", message)
                }
                Some(by) => Verdict::refused(
                    "Duplicate",
                    format!("peer {} is already defined by BgpPeer {by:?}", p.address),
                ),
                None => {
                    taken.insert(p.address, obj.name.clone());
                    m.peer_addresses.insert(obj.name.clone(), p.address);
                    if let (Some(path), Some(pw)) = (&p.password_file, password) {
                        m.passwords.insert(path.clone(), pw);
                    }
                    crd_peers.push(p);
                    Verdict::Accepted {
                        notes: peer::unsupported_peer(&obj.spec),
                    }
                }
            },
        };
        m.peers.insert(obj.name.clone(), verdict);
    }
    m.bgp = global.map(|mut g| {
        g.peers.extend(crd_peers);
        g
    });
    m
}

/// Why `pool` cannot be used next to `pools`, if it overlaps one.
fn overlap(pool: &Pool, pools: &[Pool]) -> Option<String> {
    for other in pools {
        for r in &pool.ranges {
            for o in &other.ranges {
                if let Some(common) = r.intersection(o) {
                    return Some(format!(
                        "{r} overlaps pool {:?} ({o}): {common} would belong to both; this Eip is not used",
                        other.name
                    ));
                }
            }
        }
    }
    None
}

/// Per pool, the IPs in use and their Services, from the engine's
/// published Service states (pools do not overlap: each IP is in at most
/// one; IPs outside every pool are left out).
pub fn used_by_pool(
    pools: &[Pool],
    states: &[ServiceState],
) -> BTreeMap<String, BTreeMap<IpAddr, Vec<ServiceKey>>> {
    let mut out: BTreeMap<String, BTreeMap<IpAddr, Vec<ServiceKey>>> = BTreeMap::new();
    for s in states {
        for ip in &s.ips {
            if let Some(p) = pools.iter().find(|p| p.contains(ip)) {
                out.entry(p.name.clone())
                    .or_default()
                    .entry(*ip)
                    .or_default()
                    .push(s.service.clone());
            }
        }
    }
    for ips in out.values_mut() {
        for keys in ips.values_mut() {
            keys.sort();
            keys.dedup();
        }
    }
    out
}

/// The last good pools of Eips that still have Services on them. [`merge`]
/// keeps one (disabled) when its Eip is deleted or turns invalid, until the
/// last of those Services lets go of its IP.
pub fn still_draining(
    previous: &BTreeMap<String, Pool>,
    used: &BTreeMap<String, BTreeMap<IpAddr, Vec<ServiceKey>>>,
) -> BTreeMap<String, Pool> {
    previous
        .iter()
        .filter(|(name, _)| used.get(*name).is_some_and(|u| !u.is_empty()))
        .map(|(n, p)| (n.clone(), p.clone()))
        .collect()
}

/// Names of the accepted Eips' pools, with the pool.
pub fn eip_pools(m: &Merged) -> BTreeMap<String, Pool> {
    let accepted: BTreeSet<&String> = m
        .eips
        .iter()
        .filter(|(_, v)| v.accepted())
        .map(|(n, _)| n)
        .collect();
    m.pools
        .iter()
        .filter(|p| accepted.contains(&p.name))
        .map(|p| (p.name.clone(), p.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Origin, PoolMode};
    use serde_json::{json, Value};

    fn eip(name: &str, created: &str, spec: Value) -> (String, OpenElbObject) {
        let mut o = OpenElbObject::new(name, spec);
        o.created = created.into();
        (name.into(), o)
    }

    fn file_pool(name: &str, range: &str) -> Pool {
        let (p, _) = eip::pool(
            &OpenElbObject::new(name, json!({"address": range})),
            &BTreeMap::new(),
        )
        .unwrap();
        Pool {
            auto_assign: true,
            ..p
        }
    }

    struct World {
        pools: Vec<Pool>,
        bgp: Option<BgpConfig>,
        eips: BTreeMap<String, OpenElbObject>,
        confs: BTreeMap<String, OpenElbObject>,
        peers: BTreeMap<String, OpenElbObject>,
        draining: BTreeMap<String, Pool>,
    }

    impl World {
        fn new() -> Self {
            World {
                pools: vec![file_pool("public", "10.77.0.0/24")],
                bgp: None,
                eips: BTreeMap::new(),
                confs: BTreeMap::new(),
                peers: BTreeMap::new(),
                draining: BTreeMap::new(),
            }
        }
        fn merge(&self) -> Merged {
            merge(
                File {
                    pools: &self.pools,
                    bgp: self.bgp.as_ref(),
                    router_id: "10.66.0.2".parse().unwrap(),
                },
                Cluster {
                    eips: &self.eips,
                    confs: &self.confs,
                    peers: &self.peers,
                    draining: &self.draining,
                    routes: &BTreeMap::new(),
                    password_dir: Path::new("/state/peers"),
                },
            )
        }
    }

    fn names(m: &Merged) -> Vec<&str> {
        m.pools.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn eips_join_file_pools_and_the_file_wins_a_name() {
        let mut w = World::new();
        w.eips.extend([
            eip("a", "1", json!({"address": "10.1.0.0/24"})),
            eip("public", "2", json!({"address": "10.2.0.0/24"})),
        ]);
        let m = w.merge();
        assert_eq!(names(&m), vec!["public", "a"]);
        assert_eq!(m.pools[0].ranges, w.pools[0].ranges);
        assert!(matches!(
            m.eips["public"],
            Verdict::Refused {
                reason: "Conflict",
                ..
            }
        ));
        assert_eq!(m.conflicts.len(), 1);
        assert_eq!(
            (m.conflicts[0].kind, m.conflicts[0].name.as_str()),
            ("Eip", "public")
        );
    }

    #[test]
    fn overlaps_refuse_the_younger_eip() {
        let mut w = World::new();
        w.eips.extend([
            eip("young", "2", json!({"address": "10.1.0.128/25"})),
            eip("old", "1", json!({"address": "10.1.0.0/24"})),
            eip("onfile", "3", json!({"address": "10.77.0.9"})),
        ]);
        let m = w.merge();
        assert_eq!(names(&m), vec!["public", "old"]);
        match &m.eips["young"] {
            Verdict::Refused { reason, message } => {
                assert_eq!(*reason, "Overlap");
                assert!(message.contains("\"old\""), "{message}");
            }
            v => panic!("{v:?}"),
        }
        assert!(
            matches!(&m.eips["onfile"], Verdict::Refused { reason: "Overlap", message } if message.contains("public"))
        );
        assert!(m.conflicts.is_empty());
    }

    #[test]
    fn at_most_one_default() {
        let mut w = World::new();
        let d = |name: &str, created: &str, range: &str| {
            let (n, mut o) = eip(name, created, json!({"address": range}));
            o.annotations.insert(eip::DEFAULT_EIP.into(), "true".into());
            (n, o)
        };
        w.eips
            .extend([d("d2", "2", "10.2.0.0/24"), d("d1", "1", "10.1.0.0/24")]);
        let m = w.merge();
        let p = |n: &str| m.pools.iter().find(|p| p.name == n).unwrap();
        assert!(p("d1").auto_assign);
        assert!(!p("d2").auto_assign);
        assert!(matches!(&m.eips["d2"], Verdict::Accepted { notes } if notes[0].contains("d1")));
    }

    #[test]
    fn deleted_eip_in_use_drains() {
        let mut w = World::new();
        w.eips.extend([eip(
            "a",
            "1",
            json!({"address": "10.1.0.0/24", "protocol": "layer2", "interface": "eth1"}),
        )]);
        let m = w.merge();
        let pools = eip_pools(&m);
        let states = vec![ServiceState {
            service: ServiceKey::new("shop", "web"),
            origin: Origin::Kubernetes,
            ips: vec!["10.1.0.0".parse().unwrap()],
            pending: None,
        }];
        let used = used_by_pool(&m.pools, &states);
        assert_eq!(used["a"].len(), 1);
        // An edit that makes it invalid keeps the last good pool, disabled.
        w.draining = still_draining(&pools, &used);
        w.eips.get_mut("a").unwrap().spec = json!({"address": "10.1.0.0/24", "protocol": "layer2"});
        let m = w.merge();
        let a = m.pools.iter().find(|p| p.name == "a").unwrap();
        assert!(a.disabled && a.interface.as_deref() == Some("eth1"));
        assert!(
            matches!(&m.eips["a"], Verdict::Refused { reason: "Invalid", message } if message.contains("previous"))
        );
        w.eips.clear();
        let m = w.merge();
        let a = m.pools.iter().find(|p| p.name == "a").unwrap();
        assert!(a.disabled && a.mode == PoolMode::L2);
        // A new Eip over the draining range is refused while it drains.
        w.eips
            .extend([eip("b", "5", json!({"address": "10.1.0.0/30"}))]);
        assert!(matches!(
            w.merge().eips["b"],
            Verdict::Refused {
                reason: "Overlap",
                ..
            }
        ));
        // The Services let go: the pool goes.
        w.draining = still_draining(&w.draining, &BTreeMap::new());
        assert!(w.draining.is_empty());
        assert_eq!(names(&w.merge()), vec!["public", "b"]);
    }

    #[test]
    fn bgp_from_objects_or_file() {
        let mut w = World::new();
        let p = |name: &str, created: &str, addr: &str| {
            let mut o = OpenElbObject::new(
                name,
                json!({"conf": {"peerAs": 65000, "neighborAddress": addr, "authPassword": "pw"}}),
            );
            o.created = created.into();
            (name.to_string(), o)
        };
        w.peers
            .extend([p("r1", "1", "10.0.0.1"), p("r1-again", "2", "10.0.0.1")]);
        let m = w.merge();
        assert!(m.bgp.is_none());
        assert!(matches!(
            m.peers["r1"],
            Verdict::Refused {
                reason: "NoBgpConf",
                ..
            }
        ));
        w.confs.insert(
            "default".into(),
            OpenElbObject::new("default", json!({"as": 65001, "routerId": "10.9.9.9"})),
        );
        w.confs.insert(
            "other".into(),
            OpenElbObject::new("other", json!({"as": 65002})),
        );
        let m = w.merge();
        let bgp = m.bgp.clone().unwrap();
        assert_eq!(bgp.asn, 65001);
        assert_eq!(m.router_id, Some("10.9.9.9".parse().unwrap()));
        assert_eq!(bgp.peers.len(), 1);
        assert!(m.peers["r1"].accepted());
        assert!(matches!(
            m.peers["r1-again"],
            Verdict::Refused {
                reason: "Duplicate",
                ..
            }
        ));
        assert!(matches!(
            m.confs["other"],
            Verdict::Refused {
                reason: "Ignored",
                ..
            }
        ));
        assert_eq!(
            m.passwords
                .get(Path::new("/state/peers/10.0.0.1.password"))
                .map(String::as_str),
            Some("pw")
        );
        // With [bgp] in the file: the file's global settings and peer win.
        let (mut file_bgp, _) = peer::conf(&json!({"as": 64999})).unwrap();
        let (fp, _) = peer::peer(
            &json!({"conf": {"peerAs": 65000, "neighborAddress": "10.0.0.1"}}),
            Path::new("/x"),
        )
        .unwrap();
        file_bgp.peers.push(fp.clone());
        w.bgp = Some(file_bgp);
        let m = w.merge();
        let bgp = m.bgp.clone().unwrap();
        assert_eq!(bgp.asn, 64999);
        assert_eq!(bgp.peers, vec![fp]);
        assert_eq!(m.router_id, Some("10.66.0.2".parse().unwrap()));
        let kinds: Vec<(&str, &str)> = m
            .conflicts
            .iter()
            .map(|c| (c.kind, c.name.as_str()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("BgpConf", "default"),
                ("BgpPeer", "r1"),
                ("BgpPeer", "r1-again")
            ]
        );
    }
}
