//! Adj-RIB-Out: what one peer has been told, and the difference to send
//! when the engine publishes a new [`Desired`]. Pure: no I/O.
//!
//! Paths per VIP depend on what the session negotiated ([`PeerView`]):
//! - `bgp` pools with `next_hop = "nodes"` and ADD-PATH send negotiated for
//!   the family: one path per node, next hop = that node, path id stable per
//!   (VIP, node address) — derived from the address, so a restarted pier
//!   sends the same ids (graceful restart replaces, not duplicates, paths).
//! - the same without ADD-PATH: one path with pier as next hop (the peer could
//!   keep only one of several paths anyway), flagged in `fallback_self`.
//! - `next_hop = "self"`: one path with pier as next hop.
//! - `l2` pools are not announced by BGP.
//!
//! For `next_hop = "nodes"`, a peer with a `node_selector` is sent only the
//! nodes whose labels it selects, and a single-hop eBGP peer only the nodes
//! on a network it shares with pier (`src/bgp/connected.rs`); then
//! `max_paths` picks among what is left. A VIP with no node left is
//! withdrawn from that peer only (docs/bgp.md, "Rack-aware next hops").

use super::codec::{
    pack_announce, pack_withdraw, AfiSafi, AsPath, Attribute, Context, EncodeError, Nlri, Origin,
};
use crate::model::selector::Selector;
use crate::model::{subset, AnnounceMode, Announcement, Desired, NextHop};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// What shapes one peer's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    pub local_asn: u32,
    /// eBGP: pier's AS in AS_PATH, no LOCAL_PREF. iBGP: empty AS_PATH,
    /// LOCAL_PREF (default 100).
    pub ebgp: bool,
    /// Families both sides negotiated.
    pub families: Vec<AfiSafi>,
    /// Families where the peer receives several paths (ADD-PATH).
    pub add_path: Vec<AfiSafi>,
    /// At most this many paths per VIP (`max_paths`); which ones is the
    /// rendezvous rule of `src/model/subset.rs`.
    pub max_paths: usize,
    /// pier's own next hop per family (the session's local address, or the
    /// configured source address).
    pub self_v4: Option<Ipv4Addr>,
    pub self_v6: Option<Ipv6Addr>,
    /// Only the next hops of nodes this selects are sent (`node_selector`);
    /// `None` = every node.
    pub node_selector: Option<Selector>,
    /// Single-hop eBGP: the prefixes pier shares with the peer; node next
    /// hops outside them are not sent. `None` = no such limit (multihop
    /// eBGP, iBGP: the router resolves next hops through its IGP).
    pub connected: Option<Vec<IpNet>>,
}

/// Attributes of one path, shared by the many NLRI packed together.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathAttrs {
    pub next_hop: IpAddr,
    pub communities: Vec<u32>,
    pub large_communities: Vec<(u32, u32, u32)>,
    pub local_pref: Option<u32>,
    /// MULTI_EXIT_DISC (RFC 4271 §5.1.4): the pool's `med`.
    pub med: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Path {
    id: u32,
    attrs: Arc<PathAttrs>,
}

/// What to send: announcements (new or changed paths) and withdrawals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub announce: Vec<(Nlri, Arc<PathAttrs>)>,
    pub withdraw: Vec<Nlri>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.announce.is_empty() && self.withdraw.is_empty()
    }
}

/// Why a VIP could not be sent to this peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skipped {
    /// The family was not negotiated with the peer.
    Family(IpAddr),
    /// pier has no address of the VIP's family to use as next hop.
    NoSelfAddress(IpAddr),
    /// No next hop of the VIP is a node the peer's `node_selector` selects.
    NoSelectedNode(IpAddr),
    /// No selected next hop is on a network pier shares with this
    /// single-hop eBGP peer.
    NoConnectedNextHop(IpAddr),
}

#[derive(Debug, Clone)]
pub struct AdjRibOut {
    view: PeerView,
    routes: BTreeMap<IpAddr, Vec<Path>>,
    last: Desired,
    /// At least one `next_hop = "nodes"` VIP was sent with pier as next
    /// hop because the peer did not negotiate ADD-PATH for its family.
    pub fallback_self: bool,
    /// VIPs left out, with why (for `pier peers`).
    pub skipped: BTreeMap<IpAddr, Skipped>,
    paths: usize,
    /// One shared copy of each distinct set of path attributes: VIPs of a
    /// pool have the same attributes per next hop, so 100,000 paths hold a
    /// handful of these instead of 100,000 (about 140 bytes less per path).
    interned: BTreeSet<Arc<PathAttrs>>,
}

/// A path id derived from the next hop (FNV-1a), never 0, so that it is the
/// same after a restart.
fn path_id_for(next_hop: &IpAddr) -> u32 {
    let bytes: Vec<u8> = match next_hop {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

fn host_prefix(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

impl AdjRibOut {
    pub fn new(view: PeerView) -> AdjRibOut {
        AdjRibOut {
            view,
            routes: BTreeMap::new(),
            last: Desired::default(),
            fallback_self: false,
            skipped: BTreeMap::new(),
            paths: 0,
            interned: BTreeSet::new(),
        }
    }

    pub fn view(&self) -> &PeerView {
        &self.view
    }

    /// Paths currently announced.
    pub fn len(&self) -> usize {
        self.paths
    }

    pub fn is_empty(&self) -> bool {
        self.paths == 0
    }

    fn family_of(ip: &IpAddr) -> AfiSafi {
        if ip.is_ipv4() {
            AfiSafi::IPV4_UNICAST
        } else {
            AfiSafi::IPV6_UNICAST
        }
    }

    /// The shared copy of `attrs`.
    fn intern(&mut self, attrs: PathAttrs) -> Arc<PathAttrs> {
        if let Some(a) = self.interned.get(&attrs) {
            return a.clone();
        }
        let a = Arc::new(attrs);
        self.interned.insert(a.clone());
        a
    }

    /// The paths this peer should have for one announcement.
    fn paths_for(&mut self, a: &Announcement) -> Vec<Path> {
        let family = Self::family_of(&a.vip);
        self.skipped.remove(&a.vip);
        if matches!(a.mode, AnnounceMode::L2 { .. }) {
            return Vec::new();
        }
        if !self.view.families.contains(&family) {
            self.skipped.insert(a.vip, Skipped::Family(a.vip));
            return Vec::new();
        }
        let ebgp = self.view.ebgp;
        let attrs = |next_hop: IpAddr| PathAttrs {
            next_hop,
            communities: a.bgp.communities.iter().map(|c| c.0).collect(),
            large_communities: a
                .bgp
                .large_communities
                .iter()
                .map(|c| (c.0, c.1, c.2))
                .collect(),
            local_pref: if ebgp {
                None
            } else {
                Some(a.bgp.local_pref.unwrap_or(100))
            },
            med: a.bgp.med,
        };
        let add_path = self.view.add_path.contains(&family);
        // The nodes this peer may be sent, whatever it negotiated: a VIP
        // with none is withdrawn from this peer only.
        let selected: Vec<&NextHop> = if a.mode == AnnounceMode::BgpNodes {
            let selected: Vec<&NextHop> = a
                .next_hops
                .iter()
                .filter(|n| n.address.is_ipv4() == a.vip.is_ipv4())
                .filter(|n| {
                    self.view
                        .node_selector
                        .as_ref()
                        .is_none_or(|s| s.matches(&n.labels))
                })
                .collect();
            if selected.is_empty() && self.view.node_selector.is_some() {
                self.skipped.insert(a.vip, Skipped::NoSelectedNode(a.vip));
                return Vec::new();
            }
            selected
        } else {
            Vec::new()
        };
        if a.mode == AnnounceMode::BgpNodes && add_path {
            let family: Vec<&NextHop> = match &self.view.connected {
                Some(nets) => selected
                    .into_iter()
                    .filter(|n| nets.iter().any(|net| net.contains(&n.address)))
                    .collect(),
                None => selected,
            };
            if family.is_empty() {
                if self.view.connected.is_some() {
                    self.skipped
                        .insert(a.vip, Skipped::NoConnectedNextHop(a.vip));
                }
                return Vec::new();
            }
            let chosen = subset::choose(&a.vip, &family, self.view.max_paths, |n| n.address);
            let mut out: Vec<Path> = Vec::with_capacity(chosen.len());
            for nh in chosen {
                let mut id = path_id_for(&nh.address);
                while out.iter().any(|p| p.id == id) {
                    id = id.wrapping_add(1).max(1);
                }
                let attrs = self.intern(attrs(nh.address));
                out.push(Path { id, attrs });
            }
            out.sort_by_key(|p| p.id);
            return out;
        }
        if a.mode == AnnounceMode::BgpNodes {
            self.fallback_self = true;
        }
        let me = match a.vip {
            IpAddr::V4(_) => self.view.self_v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.view.self_v6.map(IpAddr::V6),
        };
        let Some(me) = me else {
            self.skipped.insert(a.vip, Skipped::NoSelfAddress(a.vip));
            return Vec::new();
        };
        let attrs = self.intern(attrs(me));
        vec![Path { id: 1, attrs }]
    }

    fn nlri(&self, vip: IpAddr, id: u32) -> Nlri {
        let family = Self::family_of(&vip);
        Nlri {
            prefix: host_prefix(vip),
            path_id: self.view.add_path.contains(&family).then_some(id),
        }
    }

    /// Sets one VIP's paths, recording the difference.
    fn set(&mut self, vip: IpAddr, new: Vec<Path>, out: &mut Changes) {
        let old = self.routes.remove(&vip).unwrap_or_default();
        let family = Self::family_of(&vip);
        let add_path = self.view.add_path.contains(&family);
        for p in &old {
            let still = new.iter().any(|n| n.id == p.id);
            // Without ADD-PATH an announcement replaces the one path.
            if !still && (add_path || new.is_empty()) {
                out.withdraw.push(self.nlri(vip, p.id));
            }
        }
        for p in &new {
            if !old.iter().any(|o| o == p) {
                out.announce.push((self.nlri(vip, p.id), p.attrs.clone()));
            }
        }
        self.paths = self.paths + new.len() - old.len();
        if !new.is_empty() {
            self.routes.insert(vip, new);
        }
    }

    /// Moves the table to `desired` and returns what the peer must be sent.
    /// Walks both plans by VIP and skips announcements shared with the last
    /// plan, so one change among 100,000 VIPs costs a pointer comparison per
    /// VIP, not a path computation.
    pub fn update(&mut self, desired: &Desired) -> Changes {
        let mut out = Changes::default();
        let old = std::mem::take(&mut self.last.announcements);
        let new = &desired.announcements;
        if old.is_empty() {
            // The initial table: at least one path per VIP. Reserving it
            // spares the copies (and the peak) of growing 100,000 entries.
            out.announce.reserve(new.len());
        }
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < new.len() {
            match (old.get(i), new.get(j)) {
                (Some(o), Some(n)) if o.vip == n.vip => {
                    if !Arc::ptr_eq(o, n) && o != n {
                        let paths = self.paths_for(n);
                        self.set(n.vip, paths, &mut out);
                    }
                    i += 1;
                    j += 1;
                }
                (Some(o), Some(n)) if o.vip < n.vip => {
                    self.skipped.remove(&o.vip);
                    self.set(o.vip, Vec::new(), &mut out);
                    i += 1;
                }
                (Some(o), None) => {
                    self.skipped.remove(&o.vip);
                    self.set(o.vip, Vec::new(), &mut out);
                    i += 1;
                }
                (_, Some(n)) => {
                    let paths = self.paths_for(n);
                    self.set(n.vip, paths, &mut out);
                    j += 1;
                }
                (None, None) => break,
            }
        }
        self.last = desired.clone();
        // Attributes no path uses any more (only `interned` holds them).
        self.interned.retain(|a| Arc::strong_count(a) > 1);
        out
    }

    /// Every path in the table, as announcements (for the initial table and
    /// ROUTE-REFRESH).
    pub fn full(&self) -> Changes {
        let mut out = Changes::default();
        for (vip, paths) in &self.routes {
            for p in paths {
                out.announce.push((self.nlri(*vip, p.id), p.attrs.clone()));
            }
        }
        out
    }

    /// Encodes `changes` as few UPDATE messages as the size limit allows:
    /// withdrawals first, then announcements grouped by attributes.
    pub fn encode(&self, changes: &Changes, ctx: &Context) -> Result<Vec<Vec<u8>>, EncodeError> {
        let mut msgs = Vec::new();
        let (mut w4, mut w6): (Vec<Nlri>, Vec<Nlri>) = (Vec::new(), Vec::new());
        for n in &changes.withdraw {
            if n.prefix.addr().is_ipv4() {
                w4.push(*n)
            } else {
                w6.push(*n)
            }
        }
        if !w4.is_empty() {
            msgs.extend(pack_withdraw(AfiSafi::IPV4_UNICAST, &w4, ctx)?);
        }
        if !w6.is_empty() {
            msgs.extend(pack_withdraw(AfiSafi::IPV6_UNICAST, &w6, ctx)?);
        }
        // Sized before they are filled: the initial table of 100,000 paths
        // would otherwise peak at twice its size while growing.
        let mut sizes: BTreeMap<&PathAttrs, usize> = BTreeMap::new();
        for (_, attrs) in &changes.announce {
            *sizes.entry(attrs).or_default() += 1;
        }
        let mut groups: BTreeMap<&PathAttrs, Vec<Nlri>> = sizes
            .into_iter()
            .map(|(attrs, n)| (attrs, Vec::with_capacity(n)))
            .collect();
        for (n, attrs) in &changes.announce {
            if let Some(g) = groups.get_mut(&**attrs) {
                g.push(*n);
            }
        }
        for (attrs, nlri) in groups {
            let family = if attrs.next_hop.is_ipv4() && nlri[0].prefix.addr().is_ipv4() {
                AfiSafi::IPV4_UNICAST
            } else {
                AfiSafi::IPV6_UNICAST
            };
            let mut list = vec![
                Attribute::Origin(Origin::Igp),
                Attribute::AsPath(if self.view.ebgp {
                    AsPath::sequence(vec![self.view.local_asn])
                } else {
                    AsPath::default()
                }),
            ];
            // Type-code order (RFC 4271 §5: MED is 4, LOCAL_PREF 5).
            if let Some(med) = attrs.med {
                list.push(Attribute::Med(med));
            }
            if let Some(lp) = attrs.local_pref {
                list.push(Attribute::LocalPref(lp));
            }
            if !attrs.communities.is_empty() {
                list.push(Attribute::Communities(attrs.communities.clone()));
            }
            if !attrs.large_communities.is_empty() {
                list.push(Attribute::LargeCommunities(attrs.large_communities.clone()));
            }
            msgs.extend(pack_announce(family, &[attrs.next_hop], &list, &nlri, ctx)?);
        }
        Ok(msgs)
    }

    /// The paths held for one VIP: (path id, next hop), for status.
    pub fn paths_of(&self, vip: &IpAddr) -> Vec<(u32, IpAddr)> {
        self.routes
            .get(vip)
            .map(|ps| ps.iter().map(|p| (p.id, p.attrs.next_hop)).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BgpAttributes, Community, NextHop, ServiceKey};

    fn view(add_path: bool) -> PeerView {
        PeerView {
            local_asn: 65010,
            ebgp: true,
            families: vec![AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST],
            add_path: if add_path {
                vec![AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST]
            } else {
                vec![]
            },
            max_paths: 16,
            self_v4: Some(Ipv4Addr::new(10, 0, 0, 2)),
            self_v6: None,
            node_selector: None,
            connected: None,
        }
    }

    fn ann(vip: &str, mode: AnnounceMode, hops: &[&str]) -> Arc<Announcement> {
        Arc::new(Announcement {
            vip: vip.parse().unwrap(),
            pool: "p".into(),
            mode,
            next_hops: hops
                .iter()
                .map(|h| NextHop {
                    node: h.to_string(),
                    address: h.parse().unwrap(),
                    labels: Default::default(),
                })
                .collect::<Vec<_>>()
                .into(),
            bgp: BgpAttributes {
                communities: vec![Community(0xfdea_0001)],
                ..BgpAttributes::default()
            },
            services: vec![ServiceKey::new("default", "web")],
            ports: vec![],
        })
    }

    fn desired(gen: u64, anns: Vec<Arc<Announcement>>) -> Desired {
        let mut anns = anns;
        anns.sort_by_key(|a| a.vip);
        Desired {
            generation: gen,
            announcements: anns,
        }
    }

    /// At most `max_paths` paths per VIP, the rendezvous subset; a node
    /// leaving withdraws only the paths of the VIPs that used it.
    #[test]
    fn max_paths_bounds_each_vip_to_its_rendezvous_subset() {
        let mut v = view(true);
        v.max_paths = 3;
        let mut rib = AdjRibOut::new(v);
        let nodes: Vec<String> = (1..=10).map(|i| format!("10.0.0.{i}")).collect();
        let hops: Vec<&str> = nodes.iter().map(String::as_str).collect();
        let vips: Vec<String> = (1..=40).map(|i| format!("192.0.2.{i}")).collect();
        let plan = |hops: &[&str]| {
            let anns = vips
                .iter()
                .map(|v| ann(v, AnnounceMode::BgpNodes, hops))
                .collect();
            desired(1, anns)
        };
        let c = rib.update(&plan(&hops));
        assert_eq!(c.announce.len(), 40 * 3);
        assert_eq!(rib.len(), 40 * 3);
        let mut used_10 = 0;
        for v in &vips {
            let vip: IpAddr = v.parse().unwrap();
            let want: Vec<IpAddr> = subset::choose(&vip, &hops, 3, |h| h.parse().unwrap())
                .into_iter()
                .map(|h| h.parse().unwrap())
                .collect();
            let got: Vec<IpAddr> = c
                .announce
                .iter()
                .filter(|(n, _)| n.prefix.addr() == vip)
                .map(|(_, a)| a.next_hop)
                .collect();
            let mut got_sorted = got.clone();
            got_sorted.sort();
            assert_eq!(got_sorted, want, "{v}");
            used_10 += usize::from(want.contains(&"10.0.0.10".parse().unwrap()));
        }
        assert!(used_10 > 0);
        // 10.0.0.10 leaves: one withdrawal and one announcement per VIP
        // that used it, nothing for the others.
        let c = rib.update(&plan(&hops[..9]));
        assert_eq!(c.withdraw.len(), used_10);
        assert_eq!(c.announce.len(), used_10);
        assert_eq!(rib.len(), 40 * 3);
    }

    /// Next hops of nodes in racks leaf1 (.11, .12) and leaf2 (.21, .22).
    fn racked(vip: &str, hops: &[(&str, &str)]) -> Arc<Announcement> {
        let mut a = (*ann(vip, AnnounceMode::BgpNodes, &[])).clone();
        a.next_hops = hops
            .iter()
            .map(|(addr, rack)| NextHop {
                node: format!("node-{addr}"),
                address: addr.parse().unwrap(),
                labels: Arc::new(
                    [("porter.kubesphere.io/rack".to_string(), rack.to_string())].into(),
                ),
            })
            .collect::<Vec<_>>()
            .into();
        Arc::new(a)
    }

    fn rack_view(rack: &str) -> PeerView {
        let mut v = view(true);
        v.node_selector = Some(Selector::labels(
            [("porter.kubesphere.io/rack".to_string(), rack.to_string())].into(),
        ));
        v
    }

    fn next_hops(c: &Changes, vip: &str) -> Vec<IpAddr> {
        let vip: IpAddr = vip.parse().unwrap();
        let mut v: Vec<IpAddr> = c
            .announce
            .iter()
            .filter(|(n, _)| n.prefix.addr() == vip)
            .map(|(_, a)| a.next_hop)
            .collect();
        v.sort();
        v
    }

    /// Each leaf is sent its own rack's nodes; a VIP whose nodes are all in
    /// rack 2 is withdrawn from leaf 1 only.
    #[test]
    fn node_selector_sends_each_peer_its_rack_and_withdraws_from_that_peer_only() {
        let both = [
            ("10.0.0.11", "leaf1"),
            ("10.0.0.12", "leaf1"),
            ("10.0.0.21", "leaf2"),
            ("10.0.0.22", "leaf2"),
        ];
        let plan = |hops: &[(&str, &str)]| {
            desired(
                1,
                vec![racked("192.0.2.1", &both), racked("192.0.2.2", hops)],
            )
        };
        let mut leaf1 = AdjRibOut::new(rack_view("leaf1"));
        let mut leaf2 = AdjRibOut::new(rack_view("leaf2"));
        let mut spine = AdjRibOut::new(view(true));
        let d = plan(&both);
        let (c1, c2, cs) = (leaf1.update(&d), leaf2.update(&d), spine.update(&d));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            next_hops(&c1, "192.0.2.1"),
            [ip("10.0.0.11"), ip("10.0.0.12")]
        );
        assert_eq!(
            next_hops(&c2, "192.0.2.1"),
            [ip("10.0.0.21"), ip("10.0.0.22")]
        );
        assert_eq!(
            next_hops(&cs, "192.0.2.1").len(),
            4,
            "no selector: every node"
        );
        // 192.0.2.2 loses its rack-1 nodes: leaf 1 withdraws both its
        // paths, leaf 2 and the spine keep theirs.
        let d = plan(&both[2..]);
        let (c1, c2) = (leaf1.update(&d), leaf2.update(&d));
        assert_eq!(c1.withdraw.len(), 2, "{c1:?}");
        assert!(c1.announce.is_empty());
        assert!(leaf1.paths_of(&ip("192.0.2.2")).is_empty());
        assert_eq!(
            leaf1.skipped.get(&ip("192.0.2.2")),
            Some(&Skipped::NoSelectedNode(ip("192.0.2.2")))
        );
        assert!(c2.is_empty(), "leaf 2 unchanged: {c2:?}");
        assert_eq!(spine.update(&d).withdraw.len(), 2);
        assert_eq!(leaf2.paths_of(&ip("192.0.2.2")).len(), 2);
        // A node of rack 1 relabelled into rack 2 moves between the leaves.
        let moved = [("10.0.0.11", "leaf2"), ("10.0.0.12", "leaf1")];
        let d = desired(2, vec![racked("192.0.2.1", &moved)]);
        leaf1.update(&d);
        leaf2.update(&d);
        let held = |r: &AdjRibOut| -> Vec<IpAddr> {
            r.paths_of(&ip("192.0.2.1"))
                .into_iter()
                .map(|(_, a)| a)
                .collect()
        };
        assert_eq!(held(&leaf1), [ip("10.0.0.12")]);
        assert_eq!(held(&leaf2), [ip("10.0.0.11")]);
    }

    /// max_paths picks among the selected nodes only.
    #[test]
    fn max_paths_applies_after_the_selector() {
        let hops: Vec<(String, &str)> = (0..20)
            .map(|i| {
                (
                    format!("10.0.0.{}", 10 + i),
                    if i % 2 == 0 { "leaf1" } else { "leaf2" },
                )
            })
            .collect();
        let hops: Vec<(&str, &str)> = hops.iter().map(|(a, r)| (a.as_str(), *r)).collect();
        let mut v = rack_view("leaf1");
        v.max_paths = 4;
        let mut rib = AdjRibOut::new(v);
        let c = rib.update(&desired(1, vec![racked("192.0.2.1", &hops)]));
        let got = next_hops(&c, "192.0.2.1");
        assert_eq!(got.len(), 4);
        let leaf1: Vec<IpAddr> = hops
            .iter()
            .filter(|(_, r)| *r == "leaf1")
            .map(|(a, _)| a.parse().unwrap())
            .collect();
        assert!(got.iter().all(|a| leaf1.contains(a)), "{got:?}");
        let vip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut want: Vec<IpAddr> = subset::choose(&vip, &leaf1, 4, |a| *a)
            .into_iter()
            .copied()
            .collect();
        want.sort();
        assert_eq!(got, want);
    }

    /// A single-hop eBGP peer gets only next hops on its shared networks;
    /// without ADD-PATH (pier as next hop) the rule has nothing to filter.
    #[test]
    fn off_link_next_hops_are_not_sent_to_a_single_hop_peer() {
        let mut v = view(true);
        v.connected = Some(vec!["10.0.0.0/24".parse().unwrap()]);
        let mut rib = AdjRibOut::new(v.clone());
        let c = rib.update(&desired(
            1,
            vec![
                ann(
                    "192.0.2.1",
                    AnnounceMode::BgpNodes,
                    &["10.0.0.11", "10.9.0.11"],
                ),
                ann("192.0.2.2", AnnounceMode::BgpNodes, &["10.9.0.12"]),
            ],
        ));
        assert_eq!(
            next_hops(&c, "192.0.2.1"),
            ["10.0.0.11".parse::<IpAddr>().unwrap()]
        );
        assert!(next_hops(&c, "192.0.2.2").is_empty());
        assert_eq!(
            rib.skipped.get(&"192.0.2.2".parse().unwrap()),
            Some(&Skipped::NoConnectedNextHop("192.0.2.2".parse().unwrap()))
        );
        v.add_path.clear();
        let mut rib = AdjRibOut::new(v);
        let c = rib.update(&desired(
            1,
            vec![ann("192.0.2.2", AnnounceMode::BgpNodes, &["10.9.0.12"])],
        ));
        assert_eq!(
            next_hops(&c, "192.0.2.2"),
            ["10.0.0.2".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn add_path_sends_one_path_per_node_with_stable_ids() {
        let mut rib = AdjRibOut::new(view(true));
        let d1 = desired(
            1,
            vec![ann(
                "192.0.2.10",
                AnnounceMode::BgpNodes,
                &["10.0.0.11", "10.0.0.12", "10.0.0.13"],
            )],
        );
        let c = rib.update(&d1);
        assert_eq!(c.announce.len(), 3);
        assert!(c.withdraw.is_empty());
        let ids: Vec<u32> = c.announce.iter().map(|(n, _)| n.path_id.unwrap()).collect();
        assert_eq!(rib.len(), 3);
        // A node leaves: exactly its path is withdrawn, others untouched.
        let d2 = desired(
            2,
            vec![ann(
                "192.0.2.10",
                AnnounceMode::BgpNodes,
                &["10.0.0.11", "10.0.0.13"],
            )],
        );
        let c = rib.update(&d2);
        assert!(c.announce.is_empty(), "{c:?}");
        assert_eq!(c.withdraw.len(), 1);
        let gone = c.withdraw[0].path_id.unwrap();
        assert_eq!(gone, path_id_for(&"10.0.0.12".parse().unwrap()));
        assert!(ids.contains(&gone));
        // A fresh table (pier restarted) gives the same ids.
        let mut again = AdjRibOut::new(view(true));
        let c2 = again.update(&d1);
        let mut ids2: Vec<u32> = c2
            .announce
            .iter()
            .map(|(n, _)| n.path_id.unwrap())
            .collect();
        let mut ids = ids;
        ids.sort();
        ids2.sort();
        assert_eq!(ids, ids2);
        // Everything withdrawn when the VIP goes.
        let c = rib.update(&desired(3, vec![]));
        assert_eq!(c.withdraw.len(), 2);
        assert!(rib.is_empty());
    }

    #[test]
    fn without_add_path_nodes_fall_back_to_self() {
        let mut rib = AdjRibOut::new(view(false));
        let c = rib.update(&desired(
            1,
            vec![ann(
                "192.0.2.10",
                AnnounceMode::BgpNodes,
                &["10.0.0.11", "10.0.0.12"],
            )],
        ));
        assert_eq!(c.announce.len(), 1);
        assert_eq!(c.announce[0].0.path_id, None);
        assert_eq!(
            c.announce[0].1.next_hop,
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
        assert!(rib.fallback_self);
        // Node change: nothing to send (next hop is pier either way).
        let c = rib.update(&desired(
            2,
            vec![ann("192.0.2.10", AnnounceMode::BgpNodes, &["10.0.0.11"])],
        ));
        assert!(c.is_empty(), "{c:?}");
    }

    #[test]
    fn self_mode_family_gaps_and_l2() {
        let mut rib = AdjRibOut::new(view(true));
        let c = rib.update(&desired(
            1,
            vec![
                ann("192.0.2.20", AnnounceMode::BgpSelf, &["10.0.0.11"]),
                ann("2001:db8::20", AnnounceMode::BgpSelf, &["fd00::11"]),
                ann(
                    "192.0.2.30",
                    AnnounceMode::L2 {
                        interface: "eth0".into(),
                    },
                    &["10.0.0.11"],
                ),
            ],
        ));
        assert_eq!(c.announce.len(), 1);
        assert_eq!(c.announce[0].0.path_id, Some(1));
        assert_eq!(
            rib.skipped.get(&"2001:db8::20".parse().unwrap()),
            Some(&Skipped::NoSelfAddress("2001:db8::20".parse().unwrap()))
        );
    }

    #[test]
    fn encode_packs_and_round_trips() {
        use crate::bgp::codec::{decode, Message};
        let mut rib = AdjRibOut::new(view(true));
        let anns: Vec<_> = (0..2000u32)
            .map(|i| {
                ann(
                    &Ipv4Addr::from(0xc000_0200 + i).to_string(),
                    AnnounceMode::BgpNodes,
                    &["10.0.0.11", "10.0.0.12", "10.0.0.13"],
                )
            })
            .collect();
        let c = rib.update(&desired(1, anns));
        let ctx = Context {
            four_octet_as: true,
            add_path: vec![AfiSafi::IPV4_UNICAST],
            extended_message: false,
        };
        let msgs = rib.encode(&c, &ctx).unwrap();
        // 6000 paths of 9 octets in 4 KiB messages, three attribute groups.
        assert!(msgs.len() <= 18, "{} messages", msgs.len());
        let mut n = 0;
        for m in &msgs {
            let Message::Update(u) = decode(m, &ctx).unwrap().message else {
                panic!()
            };
            n += u.announced().len();
            let Some(Attribute::AsPath(p)) = u.attribute(2) else {
                panic!()
            };
            assert_eq!(p, &AsPath::sequence(vec![65010]));
        }
        assert_eq!(n, 6000);
        assert_eq!(rib.full().announce.len(), 6000);
    }

    #[test]
    fn unchanged_plans_send_nothing() {
        let mut rib = AdjRibOut::new(view(true));
        let a = ann("192.0.2.10", AnnounceMode::BgpNodes, &["10.0.0.11"]);
        rib.update(&desired(1, vec![a.clone()]));
        // Same content in a new allocation: compared by value.
        let b = ann("192.0.2.10", AnnounceMode::BgpNodes, &["10.0.0.11"]);
        assert!(rib.update(&desired(2, vec![b])).is_empty());
        assert!(rib.update(&desired(3, vec![a])).is_empty());
    }

    #[test]
    fn paths_share_one_copy_of_their_attributes() {
        let mut rib = AdjRibOut::new(view(true));
        let nodes = ["10.0.0.11", "10.0.0.12", "10.0.0.13"];
        let anns: Vec<_> = (0..500)
            .map(|i| {
                ann(
                    &format!("10.77.{}.{}", i / 250, i % 250),
                    AnnounceMode::BgpNodes,
                    &nodes,
                )
            })
            .collect();
        let ch = rib.update(&desired(1, anns.clone()));
        assert_eq!(ch.announce.len(), 1500);
        // One attribute set per node, whatever the number of VIPs.
        assert_eq!(rib.interned.len(), 3);
        let per_node: BTreeSet<*const PathAttrs> =
            ch.announce.iter().map(|(_, a)| Arc::as_ptr(a)).collect();
        assert_eq!(per_node.len(), 3);
        // A node leaves: its attributes go once no path holds them.
        let two: Vec<_> = anns
            .iter()
            .map(|a| ann(&a.vip.to_string(), AnnounceMode::BgpNodes, &nodes[..2]))
            .collect();
        drop(ch);
        let ch = rib.update(&desired(2, two));
        assert_eq!(ch.withdraw.len(), 500);
        assert_eq!(rib.interned.len(), 2);
        rib.update(&desired(3, Vec::new()));
        assert!(rib.interned.is_empty() && rib.is_empty());
    }
    #[test]
    fn pool_med_is_sent_as_multi_exit_disc() {
        use crate::bgp::codec::{decode, Message};
        let ctx = Context {
            four_octet_as: true,
            add_path: vec![AfiSafi::IPV4_UNICAST],
            extended_message: false,
        };
        let with_med = |med: Option<u32>| {
            let mut a = (*ann("192.0.2.10", AnnounceMode::BgpSelf, &["10.0.0.11"])).clone();
            a.bgp.med = med;
            Arc::new(a)
        };
        let mut rib = AdjRibOut::new(view(true));
        let c = rib.update(&desired(1, vec![with_med(Some(250))]));
        let msgs = rib.encode(&c, &ctx).unwrap();
        let Message::Update(u) = decode(&msgs[0], &ctx).unwrap().message else {
            panic!("not an UPDATE")
        };
        // Type code 4 (RFC 4271 §5.1.4).
        assert_eq!(u.attribute(4), Some(&Attribute::Med(250)));
        // A changed MED re-announces the path; no MED sends no attribute.
        let c = rib.update(&desired(2, vec![with_med(None)]));
        assert_eq!(c.announce.len(), 1);
        let msgs = rib.encode(&c, &ctx).unwrap();
        let Message::Update(u) = decode(&msgs[0], &ctx).unwrap().message else {
            panic!("not an UPDATE")
        };
        assert_eq!(u.attribute(4), None);
    }
}
