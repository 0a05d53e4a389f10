//! Kernel routes: what pier wants (pure), the difference to what is
//! installed (pure) and the netlink I/O that applies it.
//!
//! pier owns exactly the routes in the main table whose protocol is
//! [`ROUTE_PROTOCOL`]; it reads only those back, and it adds a route for a
//! VIP with `NLM_F_EXCL` so a route somebody else installed for the same
//! destination is reported as a conflict, never overwritten.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteVia,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder, RouteNextHopBuilder};

use crate::model::{Desired, Family};

use super::{RouteError, ROUTE_PROTOCOL};

/// Destination → next-hop addresses, for pier's routes only.
pub type RouteTable = BTreeMap<IpNet, BTreeSet<IpAddr>>;

/// One change to the kernel's routes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteOp {
    /// No pier route for `dst` yet.
    Add {
        dst: IpNet,
        next_hops: BTreeSet<IpAddr>,
    },
    /// pier's route for `dst` has other next hops.
    Replace {
        dst: IpNet,
        next_hops: BTreeSet<IpAddr>,
    },
    /// pier's route for `dst` is no longer wanted.
    Delete { dst: IpNet },
}

impl RouteOp {
    pub fn dst(&self) -> IpNet {
        match self {
            RouteOp::Add { dst, .. } | RouteOp::Replace { dst, .. } | RouteOp::Delete { dst } => {
                *dst
            }
        }
    }
}

/// The host route of a VIP: /32 or /128.
/// Next hops of one kernel multipath route at most. RTA_MULTIPATH is one
/// netlink attribute, whose length is 16 bits: about 2,300 IPv6 next hops
/// fill it. pier stays far below; the kernel's hash spreads flows over 256
/// next hops as well as over more.
pub const MULTIPATH_LIMIT: usize = 256;

pub fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// The routes pier wants: one per VIP, over the next hops of the VIP's
/// family. A VIP left with no next hop of its family gets no route.
///
/// `next_hop = "nodes"` VIPs are included: a peer that did not negotiate
/// ADD-PATH receive is sent pier as their next hop (the speaker's fallback),
/// and their traffic must not be blackholed when it arrives here.
///
/// A VIP with more next hops than [`MULTIPATH_LIMIT`] gets that many, chosen
/// by the same rendezvous rule as BGP's `max_paths` (`src/model/subset.rs`).
pub fn desired_routes(desired: &Desired) -> RouteTable {
    desired
        .announcements
        .iter()
        .filter_map(|a| {
            let family = Family::of(&a.vip);
            let all: Vec<IpAddr> = a
                .next_hops
                .iter()
                .map(|h| h.address)
                .filter(|ip| Family::of(ip) == family)
                .collect();
            let hops: BTreeSet<IpAddr> =
                crate::model::subset::choose(&a.vip, &all, MULTIPATH_LIMIT, |ip| *ip)
                    .into_iter()
                    .copied()
                    .collect();
            (!hops.is_empty()).then(|| (host_net(a.vip), hops))
        })
        .collect()
}

/// What to do so that `current` (pier's routes in the kernel) becomes
/// `desired`. Only differences produce operations; the result is sorted by
/// destination, deletes included.
pub fn diff(current: &RouteTable, desired: &RouteTable) -> Vec<RouteOp> {
    let mut ops = Vec::new();
    for (dst, hops) in desired {
        match current.get(dst) {
            None => ops.push(RouteOp::Add {
                dst: *dst,
                next_hops: hops.clone(),
            }),
            Some(have) if have != hops => ops.push(RouteOp::Replace {
                dst: *dst,
                next_hops: hops.clone(),
            }),
            Some(_) => {}
        }
    }
    for dst in current.keys() {
        if !desired.contains_key(dst) {
            ops.push(RouteOp::Delete { dst: *dst });
        }
    }
    ops.sort_by_key(|op| op.dst());
    ops
}

/// Apply `ops` to a table as the kernel would (for property tests).
pub fn apply_ops(table: &mut RouteTable, ops: &[RouteOp]) {
    for op in ops {
        match op {
            RouteOp::Add { dst, next_hops } | RouteOp::Replace { dst, next_hops } => {
                table.insert(*dst, next_hops.clone());
            }
            RouteOp::Delete { dst } => {
                table.remove(dst);
            }
        }
    }
}

fn route_address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn gateway_of(attrs: &[RouteAttribute]) -> Option<IpAddr> {
    attrs.iter().find_map(|a| match a {
        RouteAttribute::Gateway(g) => route_address(g),
        RouteAttribute::Via(RouteVia::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Via(RouteVia::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })
}

/// pier's view of one dumped route: `None` unless it is in the main table
/// with pier's protocol.
pub fn parse_route(msg: &RouteMessage) -> Option<(IpNet, BTreeSet<IpAddr>)> {
    if msg.header.protocol != RouteProtocol::from(ROUTE_PROTOCOL) {
        return None;
    }
    let table = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let len = msg.header.destination_prefix_length;
    let dst = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => route_address(d),
        _ => None,
    });
    let dst = match (dst, msg.header.address_family) {
        (Some(ip), _) => ip,
        (None, AddressFamily::Inet) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        (None, _) => return None,
    };
    let dst = IpNet::new(dst, len).ok()?;
    let mut hops = BTreeSet::new();
    if let Some(g) = gateway_of(&msg.attributes) {
        hops.insert(g);
    }
    for a in &msg.attributes {
        if let RouteAttribute::MultiPath(nhs) = a {
            hops.extend(nhs.iter().filter_map(|nh| gateway_of(&nh.attributes)));
        }
    }
    Some((dst, hops))
}

/// rtnetlink's builder error type is not exported; keep its text.
fn invalid<E: std::fmt::Display>(dst: IpNet) -> impl Fn(E) -> RouteError {
    move |e| RouteError::InvalidRoute {
        dst,
        detail: e.to_string(),
    }
}

fn message(dst: IpNet, next_hops: &BTreeSet<IpAddr>) -> Result<RouteMessage, RouteError> {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .map_err(invalid(dst))?
        .protocol(RouteProtocol::from(ROUTE_PROTOCOL));
    match next_hops.len() {
        0 => {}
        1 => {
            if let Some(g) = next_hops.iter().next() {
                b = b.gateway(*g).map_err(invalid(dst))?;
            }
        }
        _ => {
            let af = match dst {
                IpNet::V4(_) => AddressFamily::Inet,
                IpNet::V6(_) => AddressFamily::Inet6,
            };
            let hops = next_hops
                .iter()
                .map(|g| RouteNextHopBuilder::new(af).via(*g).map(|h| h.build()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(invalid(dst))?;
            b = b.multipath(hops);
        }
    }
    Ok(b.build())
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// The interfaces (indexes) a dumped route of pier's leaves by (pure):
/// `RTA_OIF` of a plain route, each next hop's interface of a multipath one.
pub fn egress_interfaces(msg: &RouteMessage) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for a in &msg.attributes {
        match a {
            RouteAttribute::Oif(i) => {
                out.insert(*i);
            }
            RouteAttribute::MultiPath(nhs) => {
                out.extend(nhs.iter().map(|nh| nh.interface_index));
            }
            _ => {}
        }
    }
    out.remove(&0);
    out
}

/// Dump pier's routes (both families, main table).
pub async fn dump(handle: &Handle) -> Result<RouteTable, RouteError> {
    Ok(dump_with_interfaces(handle).await?.0)
}

/// Dump pier's routes, and the interfaces (indexes) they leave by.
pub async fn dump_with_interfaces(
    handle: &Handle,
) -> Result<(RouteTable, BTreeSet<u32>), RouteError> {
    let (table, _, interfaces) = dump_full(handle).await?;
    Ok((table, interfaces))
}

/// pier's routes → the nexthop object each goes through (`RTA_NH_ID`), for
/// the routes that use one.
pub type RouteGroups = BTreeMap<IpNet, u32>;

/// The nexthop object a route uses (pure).
pub fn nexthop_id(msg: &RouteMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::NhId(id) => Some(*id),
        _ => None,
    })
}

/// Dump pier's routes, the nexthop object of those that use one, and the
/// interfaces they leave by.
pub async fn dump_full(
    handle: &Handle,
) -> Result<(RouteTable, RouteGroups, BTreeSet<u32>), RouteError> {
    let mut table = RouteTable::new();
    let mut groups = RouteGroups::new();
    let mut interfaces = BTreeSet::new();
    for req in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let mut stream = handle.route().get(req).execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|source| RouteError::Netlink {
                op: "dump routes",
                dst: None,
                source,
            })?
        {
            if let Some((dst, hops)) = parse_route(&msg) {
                // IPv6 may report the siblings of one multipath route apart.
                table.entry(dst).or_default().extend(hops);
                interfaces.extend(egress_interfaces(&msg));
                if let Some(id) = nexthop_id(&msg) {
                    groups.insert(dst, id);
                }
            }
        }
    }
    Ok((table, groups, interfaces))
}

/// The name of interface `index`, `None` when there is none.
pub async fn interface_name(handle: &Handle, index: u32) -> Result<Option<String>, RouteError> {
    use netlink_packet_route::link::LinkAttribute;
    let mut links = handle.link().get().match_index(index).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(link.attributes.into_iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n),
            _ => None,
        })),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(source) => Err(RouteError::Netlink {
            op: "get link",
            dst: None,
            source,
        }),
    }
}

/// Outcome of one operation that the kernel refused without it being
/// pier's fault (a foreign route on the same destination).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub dst: IpNet,
    pub detail: String,
}

/// Execute one operation. `Ok(Some(conflict))` when a foreign route for the
/// same destination blocks an add.
pub async fn execute(handle: &Handle, op: &RouteOp) -> Result<Option<Conflict>, RouteError> {
    let dst = op.dst();
    let fail = |op: &'static str| {
        move |source| RouteError::Netlink {
            op,
            dst: Some(dst),
            source,
        }
    };
    match op {
        RouteOp::Add { next_hops, .. } => {
            match handle.route().add(message(dst, next_hops)?).execute().await {
                Ok(()) => Ok(None),
                Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(Some(Conflict {
                    dst,
                    detail: "a route for this destination exists with another protocol; \
                             pier does not replace routes it does not own"
                        .into(),
                })),
                Err(e) => Err(fail("add route")(e)),
            }
        }
        RouteOp::Replace { next_hops, .. } => handle
            .route()
            .add(message(dst, next_hops)?)
            .replace()
            .execute()
            .await
            .map(|()| None)
            .map_err(fail("replace route")),
        RouteOp::Delete { .. } => {
            match handle
                .route()
                .del(message(dst, &BTreeSet::new())?)
                .execute()
                .await
            {
                // Already gone (deleted by hand between dump and delete).
                Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(None),
                r => r.map(|()| None).map_err(fail("delete route")),
            }
        }
    }
}

/// Point pier's route for `dst` at nexthop object `id` (`exists`: pier
/// has a route for `dst`, replace it). `Ok(Some(conflict))` when a foreign
/// route for the same destination blocks an add.
pub async fn route_via_group(
    handle: &Handle,
    dst: IpNet,
    id: u32,
    exists: bool,
) -> Result<Option<Conflict>, RouteError> {
    let mut msg = message(dst, &BTreeSet::new())?;
    msg.attributes.push(RouteAttribute::NhId(id));
    let req = handle.route().add(msg);
    let result = if exists {
        req.replace().execute().await
    } else {
        req.execute().await
    };
    match result {
        Ok(()) => Ok(None),
        Err(e) if !exists && errno(&e) == Some(libc::EEXIST) => Ok(Some(Conflict {
            dst,
            detail: "a route for this destination exists with another protocol; \
                     pier does not replace routes it does not own"
                .into(),
        })),
        Err(source) => Err(RouteError::Netlink {
            op: if exists { "replace route" } else { "add route" },
            dst: Some(dst),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AnnounceMode, Announcement, BgpAttributes, NextHop};
    use proptest::prelude::*;
    use std::sync::Arc;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ann(vip: &str, mode: AnnounceMode, hops: &[&str]) -> Arc<Announcement> {
        Arc::new(Announcement {
            vip: ip(vip),
            pool: "p".into(),
            mode,
            next_hops: hops
                .iter()
                .map(|h| NextHop {
                    node: h.to_string(),
                    address: ip(h),
                    labels: Default::default(),
                })
                .collect::<Vec<_>>()
                .into(),
            bgp: BgpAttributes::default(),
            services: vec![],
            ports: vec![],
        })
    }

    fn set(ips: &[&str]) -> BTreeSet<IpAddr> {
        ips.iter().map(|s| ip(s)).collect()
    }

    #[test]
    fn nodes_vips_need_pier_only_once_a_peer_falls_back_to_next_hop_self() {
        let nodes = Desired {
            generation: 1,
            announcements: vec![ann("10.77.0.2", AnnounceMode::BgpNodes, &["10.0.0.1"])],
        };
        assert!(
            !crate::route::needed(&nodes, false),
            "routers reach the nodes directly"
        );
        assert!(
            crate::route::needed(&nodes, true),
            "a peer without ADD-PATH sends the traffic to pier"
        );
        let selfd = Desired {
            generation: 1,
            announcements: vec![ann("10.77.0.1", AnnounceMode::BgpSelf, &["10.0.0.1"])],
        };
        assert!(crate::route::needed(&selfd, false));
        assert!(
            !crate::route::needed(&Desired::default(), true),
            "nothing to forward"
        );
    }

    #[test]
    fn desired_keeps_every_vip_with_hops_of_their_family() {
        let d = Desired {
            generation: 1,
            announcements: vec![
                ann(
                    "10.77.0.1",
                    AnnounceMode::BgpSelf,
                    &["10.0.0.1", "10.0.0.2"],
                ),
                ann("10.77.0.2", AnnounceMode::BgpNodes, &["10.0.0.1"]),
                ann(
                    "10.77.0.3",
                    AnnounceMode::L2 {
                        interface: "eth0".into(),
                    },
                    &["10.0.0.3", "fd00::3"],
                ),
                ann("10.77.0.4", AnnounceMode::BgpSelf, &["fd00::4"]),
                ann("fd66::1", AnnounceMode::BgpSelf, &["fd00::1"]),
            ],
        };
        let t = desired_routes(&d);
        let want: RouteTable = [
            ("10.77.0.1/32", set(&["10.0.0.1", "10.0.0.2"])),
            // next_hop = "nodes": ready for a peer without ADD-PATH.
            ("10.77.0.2/32", set(&["10.0.0.1"])),
            ("10.77.0.3/32", set(&["10.0.0.3"])),
            ("fd66::1/128", set(&["fd00::1"])),
        ]
        .into_iter()
        .map(|(n, h)| (n.parse().unwrap(), h))
        .collect();
        assert_eq!(t, want);
    }

    #[test]
    fn diff_adds_replaces_deletes_only_differences() {
        let cur: RouteTable = [
            ("10.77.0.1/32", set(&["10.0.0.1", "10.0.0.2", "10.0.0.3"])),
            ("10.77.0.2/32", set(&["10.0.0.1"])),
            ("10.77.0.9/32", set(&["10.0.0.1"])),
        ]
        .into_iter()
        .map(|(n, h)| (n.parse().unwrap(), h))
        .collect();
        let want: RouteTable = [
            ("10.77.0.1/32", set(&["10.0.0.1", "10.0.0.2"])),
            ("10.77.0.2/32", set(&["10.0.0.1"])),
            ("10.77.0.3/32", set(&["10.0.0.1"])),
        ]
        .into_iter()
        .map(|(n, h)| (n.parse().unwrap(), h))
        .collect();
        let ops = diff(&cur, &want);
        assert_eq!(
            ops,
            vec![
                RouteOp::Replace {
                    dst: "10.77.0.1/32".parse().unwrap(),
                    next_hops: set(&["10.0.0.1", "10.0.0.2"])
                },
                RouteOp::Add {
                    dst: "10.77.0.3/32".parse().unwrap(),
                    next_hops: set(&["10.0.0.1"])
                },
                RouteOp::Delete {
                    dst: "10.77.0.9/32".parse().unwrap()
                },
            ]
        );
        assert!(diff(&want, &want).is_empty());
    }

    #[test]
    fn parse_ignores_foreign_protocols_and_tables() {
        let mine = message(
            "10.77.0.1/32".parse().unwrap(),
            &set(&["10.0.0.1", "10.0.0.2"]),
        )
        .unwrap();
        assert_eq!(
            parse_route(&mine),
            Some((
                "10.77.0.1/32".parse().unwrap(),
                set(&["10.0.0.1", "10.0.0.2"])
            ))
        );
        let single = message("fd66::1/128".parse().unwrap(), &set(&["fd00::1"])).unwrap();
        assert_eq!(
            parse_route(&single),
            Some(("fd66::1/128".parse().unwrap(), set(&["fd00::1"])))
        );
        let mut foreign = mine.clone();
        foreign.header.protocol = RouteProtocol::Static;
        assert_eq!(parse_route(&foreign), None);
        let mut other_table = mine;
        other_table.attributes.push(RouteAttribute::Table(100));
        assert_eq!(parse_route(&other_table), None);
    }

    #[test]
    fn egress_interfaces_of_plain_and_multipath_routes() {
        use netlink_packet_route::route::RouteNextHop;
        let mut plain = message("10.77.0.1/32".parse().unwrap(), &set(&["10.0.0.1"])).unwrap();
        plain.attributes.push(RouteAttribute::Oif(4));
        assert_eq!(egress_interfaces(&plain), BTreeSet::from([4]));
        let mut multi = message(
            "10.77.0.2/32".parse().unwrap(),
            &set(&["10.0.0.1", "10.0.0.2"]),
        )
        .unwrap();
        for a in multi.attributes.iter_mut() {
            if let RouteAttribute::MultiPath(nhs) = a {
                for (nh, i) in nhs.iter_mut().zip([7, 9]) {
                    nh.interface_index = i;
                }
                nhs.push(RouteNextHop::default());
            }
        }
        assert_eq!(
            egress_interfaces(&multi),
            BTreeSet::from([7, 9]),
            "index 0 is no interface"
        );
    }

    fn table_strategy() -> impl Strategy<Value = RouteTable> {
        proptest::collection::btree_map(
            (0u8..16).prop_map(|i| IpNet::from(IpAddr::V4(Ipv4Addr::new(10, 77, 0, i)))),
            proptest::collection::btree_set(
                (1u8..6).prop_map(|i| IpAddr::V4(Ipv4Addr::new(10, 0, 0, i))),
                1..4,
            ),
            0..10,
        )
    }

    proptest! {
        #[test]
        fn diff_converges_and_is_minimal(cur in table_strategy(), want in table_strategy()) {
            let ops = diff(&cur, &want);
            let mut t = cur.clone();
            apply_ops(&mut t, &ops);
            prop_assert_eq!(&t, &want);
            // Minimal: one op per destination that differs, none otherwise.
            let differing = cur.keys().chain(want.keys()).collect::<BTreeSet<_>>()
                .into_iter().filter(|d| cur.get(d) != want.get(d)).count();
            prop_assert_eq!(ops.len(), differing);
            prop_assert!(diff(&want, &want).is_empty());
            // Adds only for new destinations, deletes only for unwanted ones.
            for op in &ops {
                match op {
                    RouteOp::Add { dst, .. } => prop_assert!(!cur.contains_key(dst)),
                    RouteOp::Replace { dst, .. } => prop_assert!(cur.contains_key(dst) && want.contains_key(dst)),
                    RouteOp::Delete { dst } => prop_assert!(!want.contains_key(dst)),
                }
            }
        }
    }
}
