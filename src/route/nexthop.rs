//! Kernel nexthop objects (`ip nexthop`): the resilient next-hop groups
//! pier routes its VIPs through, so that a node leaving or joining moves
//! only the flows it must (see `docs/datapath.md`, "Next-hop groups").
//!
//! netlink-packet-route has no nexthop messages, so the few pier needs
//! (`RTM_NEWNEXTHOP`, `RTM_DELNEXTHOP`, `RTM_GETNEXTHOP` and
//! `RTM_GETNEXTHOPBUCKET` dumps) are built and read here: [`encode`] and
//! [`parse`] are pure and total; [`plan_members`] and [`plan_groups`] decide
//! what to change (pure); [`NexthopSocket`] is the I/O.
//!
//! pier owns the nexthop objects with protocol [`ROUTE_PROTOCOL`]: one per
//! gateway (a node address, with the interface the kernel reaches it by) and
//! one resilient group per distinct set of gateways, shared by every VIP
//! with that set. A group keeps its id when its set changes (a node leaves:
//! the group is replaced in place), which is what keeps the surviving
//! nodes' flows where they are.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use ipnet::IpNet;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::ROUTE_PROTOCOL;

pub const RTM_NEWNEXTHOP: u16 = 104;
pub const RTM_DELNEXTHOP: u16 = 105;
pub const RTM_GETNEXTHOP: u16 = 106;
pub const RTM_NEWNEXTHOPBUCKET: u16 = 116;
pub const RTM_GETNEXTHOPBUCKET: u16 = 118;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_HDRLEN: usize = 16;
/// `struct nhmsg`: family, scope, protocol, reserved, flags (u32).
const NHMSG_LEN: usize = 8;
/// `struct rtmsg`.
const RTMSG_LEN: usize = 12;

pub const NHA_ID: u16 = 1;
pub const NHA_GROUP: u16 = 2;
pub const NHA_GROUP_TYPE: u16 = 3;
pub const NHA_BLACKHOLE: u16 = 4;
pub const NHA_OIF: u16 = 5;
pub const NHA_GATEWAY: u16 = 6;
pub const NHA_RES_GROUP: u16 = 12;
pub const NHA_RES_BUCKET: u16 = 13;
pub const NHA_RES_GROUP_BUCKETS: u16 = 1;
pub const NHA_RES_GROUP_IDLE_TIMER: u16 = 2;
pub const NHA_RES_GROUP_UNBALANCED_TIMER: u16 = 3;
pub const NHA_RES_BUCKET_INDEX: u16 = 1;
pub const NHA_RES_BUCKET_NH_ID: u16 = 3;
pub const NEXTHOP_GRP_TYPE_MPATH: u16 = 0;
pub const NEXTHOP_GRP_TYPE_RES: u16 = 1;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;

/// The nexthop timers are `clock_t` in USER_HZ (100 per second), as
/// `ip nexthop` sends them.
const USER_HZ: u32 = 100;

/// pier's nexthop ids start here (ids are per namespace and shared with
/// every other user: FRR, an operator's `ip nexthop`); the lowest free id
/// at or above it is taken.
pub const ID_BASE: u32 = 201_000_000;

/// The parameters of a resilient group (`ip nexthop ... type resilient
/// buckets B idle_timer T unbalanced_timer U`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resilient {
    pub buckets: u16,
    pub idle_timer_s: u32,
    pub unbalanced_timer_s: u32,
}

impl Default for Resilient {
    fn default() -> Self {
        Resilient {
            buckets: 128,
            idle_timer_s: 120,
            unbalanced_timer_s: 0,
        }
    }
}

/// One nexthop object as the kernel reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nexthop {
    pub id: u32,
    pub protocol: u8,
    pub gateway: Option<IpAddr>,
    pub oif: u32,
    /// Member ids of a group (empty for a single next hop).
    pub group: Vec<u32>,
    pub group_type: u16,
    /// Bucket count of a resilient group.
    pub buckets: Option<u16>,
    pub idle_timer_s: Option<u32>,
    pub unbalanced_timer_s: Option<u32>,
}

impl Nexthop {
    fn is_resilient_as(&self, r: &Resilient) -> bool {
        !self.group.is_empty()
            && self.group_type == NEXTHOP_GRP_TYPE_RES
            && self.buckets == Some(r.buckets)
    }
}

/// What a request asks for (the body of one message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A single next hop: `id N via GATEWAY dev OIF`.
    Member {
        id: u32,
        gateway: IpAddr,
        oif: u32,
        replace: bool,
    },
    /// A group over `members` (resilient, or hash-threshold when `None`).
    Group {
        id: u32,
        members: Vec<u32>,
        resilient: Option<Resilient>,
        replace: bool,
    },
    /// `id N blackhole` (the start-up probe).
    Blackhole {
        id: u32,
    },
    Delete {
        id: u32,
    },
    /// Every nexthop object of the namespace.
    Dump,
    /// The buckets of group `id`.
    DumpBuckets {
        id: u32,
    },
    /// The route the kernel would use to reach `to` (its interface).
    RouteTo {
        to: IpAddr,
    },
}

fn push_attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len() + ((4 - len % 4) % 4), 0);
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn family(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

/// The netlink message for `req` with sequence number `seq` (pure).
pub fn encode(req: &Request, seq: u32) -> Vec<u8> {
    let mut body = Vec::new();
    let (kind, flags) = match req {
        Request::Member {
            id,
            gateway,
            oif,
            replace,
        } => {
            body.extend_from_slice(&[family(gateway), 0, ROUTE_PROTOCOL, 0, 0, 0, 0, 0]);
            push_attr(&mut body, NHA_ID, &id.to_ne_bytes());
            push_attr(&mut body, NHA_GATEWAY, &ip_bytes(gateway));
            push_attr(&mut body, NHA_OIF, &oif.to_ne_bytes());
            (RTM_NEWNEXTHOP, new_flags(*replace))
        }
        Request::Group {
            id,
            members,
            resilient,
            replace,
        } => {
            body.extend_from_slice(&[0, 0, ROUTE_PROTOCOL, 0, 0, 0, 0, 0]);
            push_attr(&mut body, NHA_ID, &id.to_ne_bytes());
            // struct nexthop_grp: id, weight - 1, weight_high, reserved.
            let grp: Vec<u8> = members
                .iter()
                .flat_map(|m| {
                    let mut e = m.to_ne_bytes().to_vec();
                    e.extend_from_slice(&[0, 0, 0, 0]);
                    e
                })
                .collect();
            push_attr(&mut body, NHA_GROUP, &grp);
            match resilient {
                Some(r) => {
                    push_attr(
                        &mut body,
                        NHA_GROUP_TYPE,
                        &NEXTHOP_GRP_TYPE_RES.to_ne_bytes(),
                    );
                    let mut nested = Vec::new();
                    push_attr(&mut nested, NHA_RES_GROUP_BUCKETS, &r.buckets.to_ne_bytes());
                    push_attr(
                        &mut nested,
                        NHA_RES_GROUP_IDLE_TIMER,
                        &r.idle_timer_s.saturating_mul(USER_HZ).to_ne_bytes(),
                    );
                    push_attr(
                        &mut nested,
                        NHA_RES_GROUP_UNBALANCED_TIMER,
                        &r.unbalanced_timer_s.saturating_mul(USER_HZ).to_ne_bytes(),
                    );
                    push_attr(&mut body, NHA_RES_GROUP | NLA_F_NESTED, &nested);
                }
                None => push_attr(
                    &mut body,
                    NHA_GROUP_TYPE,
                    &NEXTHOP_GRP_TYPE_MPATH.to_ne_bytes(),
                ),
            }
            (RTM_NEWNEXTHOP, new_flags(*replace))
        }
        Request::Blackhole { id } => {
            body.extend_from_slice(&[libc::AF_INET as u8, 0, ROUTE_PROTOCOL, 0, 0, 0, 0, 0]);
            push_attr(&mut body, NHA_ID, &id.to_ne_bytes());
            push_attr(&mut body, NHA_BLACKHOLE, &[]);
            (RTM_NEWNEXTHOP, new_flags(false))
        }
        Request::Delete { id } => {
            body.extend_from_slice(&[0; NHMSG_LEN]);
            push_attr(&mut body, NHA_ID, &id.to_ne_bytes());
            (RTM_DELNEXTHOP, NLM_F_REQUEST | NLM_F_ACK)
        }
        Request::Dump => {
            body.extend_from_slice(&[0; NHMSG_LEN]);
            (RTM_GETNEXTHOP, NLM_F_REQUEST | NLM_F_DUMP)
        }
        Request::DumpBuckets { id } => {
            body.extend_from_slice(&[0; NHMSG_LEN]);
            push_attr(&mut body, NHA_ID, &id.to_ne_bytes());
            (RTM_GETNEXTHOPBUCKET, NLM_F_REQUEST | NLM_F_DUMP)
        }
        Request::RouteTo { to } => {
            let len = if to.is_ipv4() { 32 } else { 128 };
            // struct rtmsg: family, dst_len, src_len, tos, table, protocol,
            // scope, type, flags (u32).
            body.extend_from_slice(&[family(to), len, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            push_attr(&mut body, RTA_DST, &ip_bytes(to));
            (RTM_GETROUTE, NLM_F_REQUEST)
        }
    };
    let mut out = Vec::with_capacity(NLMSG_HDRLEN + body.len());
    out.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&body);
    out
}

fn new_flags(replace: bool) -> u16 {
    NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | if replace { NLM_F_REPLACE } else { NLM_F_EXCL }
}

fn u16_ne(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_ne(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The attributes in `b` as (type without flags, payload) (pure; stops at
/// the first malformed one).
fn attrs(b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= b.len() {
        let (Some(len), Some(kind)) = (u16_ne(b, at), u16_ne(b, at + 2)) else {
            break;
        };
        let len = len as usize;
        if len < 4 || at + len > b.len() {
            break;
        }
        out.push((kind & 0x3fff, &b[at + 4..at + len]));
        at += (len + 3) & !3;
    }
    out
}

fn ip_of(p: &[u8]) -> Option<IpAddr> {
    match p.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(p).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(p).ok()?)),
        _ => None,
    }
}

/// One message of a reply, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `NLMSG_ERROR` with errno 0: the request was done.
    Ack,
    /// `NLMSG_ERROR`: the kernel refused, with this errno (positive).
    Refused(i32),
    Done,
    Nexthop(Nexthop),
    /// One bucket of a resilient group: (group id, member id).
    Bucket {
        group: u32,
        member: u32,
    },
    /// A route lookup's answer: the output interface.
    Route {
        oif: u32,
    },
    /// Another message (or one too short to read).
    Other,
}

/// The messages in one datagram, with their sequence numbers (pure; never
/// panics).
pub fn parse(buf: &[u8]) -> Vec<(u32, Reply)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let (Some(len), Some(kind), Some(seq)) =
            (u32_ne(buf, at), u16_ne(buf, at + 4), u32_ne(buf, at + 8))
        else {
            break;
        };
        let len = len as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            break;
        }
        let msg = &buf[at + NLMSG_HDRLEN..at + len];
        out.push((seq, parse_one(kind, msg)));
        at += (len + 3) & !3;
    }
    out
}

fn parse_one(kind: u16, msg: &[u8]) -> Reply {
    match kind {
        NLMSG_ERROR => match u32_ne(msg, 0).map(|e| e as i32) {
            Some(0) => Reply::Ack,
            Some(e) => Reply::Refused(e.checked_neg().unwrap_or(i32::MAX)),
            None => Reply::Other,
        },
        NLMSG_DONE => Reply::Done,
        RTM_NEWNEXTHOP if msg.len() >= NHMSG_LEN => {
            let mut nh = Nexthop {
                protocol: msg[2],
                ..Nexthop::default()
            };
            for (t, p) in attrs(&msg[NHMSG_LEN..]) {
                match t {
                    NHA_ID => nh.id = u32_ne(p, 0).unwrap_or(0),
                    NHA_OIF => nh.oif = u32_ne(p, 0).unwrap_or(0),
                    NHA_GATEWAY => nh.gateway = ip_of(p),
                    NHA_GROUP => {
                        nh.group = p.chunks_exact(8).filter_map(|e| u32_ne(e, 0)).collect()
                    }
                    NHA_GROUP_TYPE => nh.group_type = u16_ne(p, 0).unwrap_or(0),
                    NHA_RES_GROUP => {
                        for (t, v) in attrs(p) {
                            match t {
                                NHA_RES_GROUP_BUCKETS => nh.buckets = u16_ne(v, 0),
                                NHA_RES_GROUP_IDLE_TIMER => {
                                    nh.idle_timer_s = u32_ne(v, 0).map(|t| t / USER_HZ)
                                }
                                NHA_RES_GROUP_UNBALANCED_TIMER => {
                                    nh.unbalanced_timer_s = u32_ne(v, 0).map(|t| t / USER_HZ)
                                }
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            Reply::Nexthop(nh)
        }
        RTM_NEWNEXTHOPBUCKET if msg.len() >= NHMSG_LEN => {
            let mut group = 0;
            let mut member = 0;
            for (t, p) in attrs(&msg[NHMSG_LEN..]) {
                match t {
                    NHA_ID => group = u32_ne(p, 0).unwrap_or(0),
                    NHA_RES_BUCKET => {
                        for (t, v) in attrs(p) {
                            if t == NHA_RES_BUCKET_NH_ID {
                                member = u32_ne(v, 0).unwrap_or(0);
                            }
                        }
                    }
                    _ => {}
                }
            }
            Reply::Bucket { group, member }
        }
        RTM_NEWROUTE if msg.len() >= RTMSG_LEN => attrs(&msg[RTMSG_LEN..])
            .into_iter()
            .find_map(|(t, p)| (t == RTA_OIF).then(|| u32_ne(p, 0)).flatten())
            .map_or(Reply::Other, |oif| Reply::Route { oif }),
        _ => Reply::Other,
    }
}

/// pier's nexthop objects now in the kernel, and every id taken.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installed {
    /// pier's single next hops by id.
    pub members: BTreeMap<u32, Nexthop>,
    /// pier's groups by id.
    pub groups: BTreeMap<u32, Nexthop>,
    /// Every id in the namespace (pier's or not).
    pub taken: BTreeSet<u32>,
}

impl Installed {
    /// Sort a dump into pier's members and groups (pure).
    pub fn from_dump(all: Vec<Nexthop>) -> Self {
        let mut out = Installed::default();
        for nh in all {
            out.taken.insert(nh.id);
            if nh.protocol != ROUTE_PROTOCOL {
                continue;
            }
            if nh.group.is_empty() {
                out.members.insert(nh.id, nh);
            } else {
                out.groups.insert(nh.id, nh);
            }
        }
        out
    }

    /// The gateways of group `id`.
    pub fn gateways_of(&self, id: u32) -> BTreeSet<IpAddr> {
        self.groups.get(&id).map_or_else(BTreeSet::new, |g| {
            g.group
                .iter()
                .filter_map(|m| self.members.get(m).and_then(|m| m.gateway))
                .collect()
        })
    }
}

fn allocate(taken: &mut BTreeSet<u32>) -> u32 {
    let mut id = ID_BASE;
    while taken.contains(&id) {
        id = id.saturating_add(1);
    }
    taken.insert(id);
    id
}

/// Member objects to create or fix so every gateway in `oifs` (gateway →
/// the interface the kernel reaches it by) has one; returns the requests
/// and gateway → member id (pure). `taken` gains the new ids.
pub fn plan_members(
    installed: &Installed,
    oifs: &BTreeMap<IpAddr, u32>,
    taken: &mut BTreeSet<u32>,
) -> (Vec<Request>, BTreeMap<IpAddr, u32>) {
    let mut have: BTreeMap<IpAddr, &Nexthop> = BTreeMap::new();
    for m in installed.members.values() {
        if let Some(g) = m.gateway {
            // Two of pier's objects for one gateway: keep the first.
            have.entry(g).or_insert(m);
        }
    }
    let mut reqs = Vec::new();
    let mut ids = BTreeMap::new();
    for (gateway, oif) in oifs {
        match have.get(gateway) {
            Some(m) => {
                if m.oif != *oif {
                    reqs.push(Request::Member {
                        id: m.id,
                        gateway: *gateway,
                        oif: *oif,
                        replace: true,
                    });
                }
                ids.insert(*gateway, m.id);
            }
            None => {
                let id = allocate(taken);
                reqs.push(Request::Member {
                    id,
                    gateway: *gateway,
                    oif: *oif,
                    replace: false,
                });
                ids.insert(*gateway, id);
            }
        }
    }
    (reqs, ids)
}

/// What to do with groups and routes once the members exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupPlan {
    /// Groups to create or replace in place, before the routes move.
    pub groups: Vec<Request>,
    /// VIP → the group its route must use.
    pub routes: BTreeMap<IpNet, u32>,
    /// VIPs none of whose next hops has a member (no interface reaches it).
    pub unreachable: Vec<IpNet>,
    /// pier's groups no route needs any more (delete after the routes).
    pub stale_groups: Vec<u32>,
    /// pier's members no group needs any more (delete after the groups).
    pub stale_members: Vec<u32>,
}

/// Decide the group of every VIP of `want` (pure). `using` is the group
/// each of pier's routes now points at; `members` is gateway → member id
/// (gateways without one are left out of the sets).
///
/// Each group in use goes to the set most of its VIPs want now, replaced
/// in place when that set differs: a node leaving or joining changes the
/// members of the group, and the kernel moves only the buckets it must.
/// A set no group in use went to takes an unused group of pier's with
/// exactly that set, else a new group.
pub fn plan_groups(
    installed: &Installed,
    want: &BTreeMap<IpNet, BTreeSet<IpAddr>>,
    using: &BTreeMap<IpNet, u32>,
    members: &BTreeMap<IpAddr, u32>,
    params: &Resilient,
    taken: &mut BTreeSet<u32>,
) -> GroupPlan {
    let mut plan = GroupPlan::default();
    // Set (member ids) → the VIPs that want it.
    let mut sets: BTreeMap<Vec<u32>, Vec<IpNet>> = BTreeMap::new();
    for (dst, hops) in want {
        let ids: BTreeSet<u32> = hops
            .iter()
            .filter_map(|h| members.get(h).copied())
            .collect();
        if ids.is_empty() {
            plan.unreachable.push(*dst);
            continue;
        }
        sets.entry(ids.into_iter().collect())
            .or_default()
            .push(*dst);
    }
    let usable = |g: &Nexthop| g.is_resilient_as(params);
    let sorted = |g: &Nexthop| {
        let mut m = g.group.clone();
        m.sort_unstable();
        m
    };
    let claimed: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let assigned: BTreeMap<Vec<u32>, u32> = BTreeMap::new();
    type Claims = (BTreeMap<u32, Vec<u32>>, BTreeMap<Vec<u32>, u32>);
    fn claim(plan: &mut GroupPlan, c: &mut Claims, g: &Nexthop, set: &[u32], params: &Resilient) {
        c.0.insert(g.id, set.to_vec());
        c.1.insert(set.to_vec(), g.id);
        let mut members = g.group.clone();
        members.sort_unstable();
        let timers_differ = g.idle_timer_s != Some(params.idle_timer_s)
            || g.unbalanced_timer_s != Some(params.unbalanced_timer_s);
        if members != set || timers_differ {
            plan.groups.push(Request::Group {
                id: g.id,
                members: set.to_vec(),
                resilient: Some(*params),
                replace: true,
            });
        }
    }
    let mut c: Claims = (claimed, assigned);
    // 1. Each group in use goes to the set most of its VIPs want now
    //    (changed in place when that set differs): when a group's VIPs
    //    split (a node leaves some of them), the fewest VIPs move to a new
    //    group, whose flows are all hashed afresh.
    let set_of: BTreeMap<IpNet, &Vec<u32>> = sets
        .iter()
        .flat_map(|(set, vips)| vips.iter().map(move |v| (*v, set)))
        .collect();
    let mut votes: BTreeMap<(u32, &Vec<u32>), usize> = BTreeMap::new();
    for (dst, g) in using {
        if let (Some(set), true) = (set_of.get(dst), installed.groups.get(g).is_some_and(usable)) {
            *votes.entry((*g, set)).or_default() += 1;
        }
    }
    let mut ranked: Vec<(usize, bool, u32, &Vec<u32>)> = votes
        .into_iter()
        .map(|((g, set), n)| {
            let exact = installed.groups.get(&g).is_some_and(|x| sorted(x) == *set);
            (n, exact, g, set)
        })
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    for (_, _, g, set) in ranked {
        if c.0.contains_key(&g) || c.1.contains_key(set) {
            continue;
        }
        if let Some(group) = installed.groups.get(&g) {
            claim(&mut plan, &mut c, group, set, params);
        }
    }
    // 2. A set no group in use went to: a group of pier's that has it.
    for set in sets.keys() {
        if c.1.contains_key(set) {
            continue;
        }
        let exact = installed
            .groups
            .values()
            .find(|g| usable(g) && !c.0.contains_key(&g.id) && sorted(g) == *set);
        if let Some(g) = exact {
            claim(&mut plan, &mut c, g, set, params);
        }
    }
    // 3. A new group.
    for set in sets.keys() {
        if c.1.contains_key(set) {
            continue;
        }
        let id = allocate(taken);
        c.0.insert(id, set.clone());
        c.1.insert(set.clone(), id);
        plan.groups.push(Request::Group {
            id,
            members: set.clone(),
            resilient: Some(*params),
            replace: false,
        });
    }
    let (claimed, assigned) = c;
    for (set, vips) in &sets {
        if let Some(id) = assigned.get(set) {
            for v in vips {
                plan.routes.insert(*v, *id);
            }
        }
    }
    plan.stale_groups = installed
        .groups
        .keys()
        .filter(|g| !claimed.contains_key(g))
        .copied()
        .collect();
    let used: BTreeSet<u32> = claimed.values().flatten().copied().collect();
    plan.stale_members = installed
        .members
        .keys()
        .filter(|m| !used.contains(m))
        .copied()
        .collect();
    plan
}

/// Errors of the nexthop socket.
#[derive(Debug, thiserror::Error)]
pub enum NexthopError {
    #[error("netlink route socket: {0}")]
    Socket(#[source] io::Error),
    #[error("{what}: {source}")]
    Refused {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl NexthopError {
    /// The kernel's errno, when it refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NexthopError::Refused { source, .. } => source.raw_os_error(),
            NexthopError::Socket(_) => None,
        }
    }
}

/// A blocking route netlink socket of the namespace it was opened in; the
/// kernel answers these requests at once.
pub struct NexthopSocket {
    socket: Socket,
    seq: u32,
}

impl NexthopSocket {
    pub fn open() -> Result<Self, NexthopError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NexthopError::Socket)?;
        socket.bind_auto().map_err(NexthopError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NexthopError::Socket)?;
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: setsockopt with a valid fd and a timeval of the right size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(NexthopError::Socket(io::Error::last_os_error()));
        }
        Ok(NexthopSocket { socket, seq: 0 })
    }

    /// Send `req` and collect the replies to it up to its end (an ack, an
    /// error, `NLMSG_DONE`, or the one answer of a route lookup).
    fn exchange(
        &mut self,
        req: &Request,
        what: impl Fn() -> String,
    ) -> Result<Vec<Reply>, NexthopError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.socket
            .send(&encode(req, seq), 0)
            .map_err(NexthopError::Socket)?;
        let mut out = Vec::new();
        loop {
            let mut buf: Vec<u8> = Vec::with_capacity(65536);
            self.socket
                .recv(&mut buf, 0)
                .map_err(NexthopError::Socket)?;
            for (s, r) in parse(&buf) {
                if s != seq {
                    continue;
                }
                match r {
                    Reply::Ack | Reply::Done => return Ok(out),
                    Reply::Refused(e) => {
                        return Err(NexthopError::Refused {
                            what: what(),
                            source: io::Error::from_raw_os_error(e),
                        })
                    }
                    Reply::Route { .. } if matches!(req, Request::RouteTo { .. }) => {
                        out.push(r);
                        return Ok(out);
                    }
                    r => out.push(r),
                }
            }
        }
    }

    /// Create, replace or delete (`req` is not a dump).
    pub fn change(&mut self, req: &Request) -> Result<(), NexthopError> {
        let what = || match req {
            Request::Member {
                id, gateway, oif, ..
            } => {
                format!("nexthop id {id} via {gateway} dev #{oif}")
            }
            Request::Group { id, members, .. } => format!(
                "nexthop id {id} group {}",
                members
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join("/")
            ),
            Request::Blackhole { id } => format!("nexthop id {id} blackhole"),
            Request::Delete { id } => format!("delete nexthop id {id}"),
            _ => "nexthop request".into(),
        };
        self.exchange(req, what).map(|_| ())
    }

    /// Every nexthop object of the namespace.
    pub fn dump(&mut self) -> Result<Vec<Nexthop>, NexthopError> {
        Ok(self
            .exchange(&Request::Dump, || "dump nexthops".into())?
            .into_iter()
            .filter_map(|r| match r {
                Reply::Nexthop(n) => Some(n),
                _ => None,
            })
            .collect())
    }

    /// Member id → its bucket count in group `id`.
    pub fn buckets(&mut self, id: u32) -> Result<BTreeMap<u32, u32>, NexthopError> {
        let mut out = BTreeMap::new();
        for r in self.exchange(&Request::DumpBuckets { id }, || {
            format!("buckets of nexthop id {id}")
        })? {
            if let Reply::Bucket { group, member } = r {
                if group == id {
                    *out.entry(member).or_default() += 1;
                }
            }
        }
        Ok(out)
    }

    /// The interface the kernel reaches `to` by.
    pub fn route_to(&mut self, to: IpAddr) -> Result<Option<u32>, NexthopError> {
        Ok(self
            .exchange(&Request::RouteTo { to }, || format!("route to {to}"))?
            .into_iter()
            .find_map(|r| match r {
                Reply::Route { oif } => Some(oif),
                _ => None,
            }))
    }
}

/// Can this kernel hold resilient nexthop groups? Creates a blackhole
/// next hop and a resilient group over it with pier's ids, then deletes
/// both. `Err` carries what to tell the operator.
pub fn probe(sock: &mut NexthopSocket, params: &Resilient) -> Result<(), String> {
    let installed = Installed::from_dump(sock.dump().map_err(|e| {
        format!("this kernel has no nexthop objects ({e}); VIP routes are multipath routes")
    })?);
    let mut taken = installed.taken;
    let member = allocate(&mut taken);
    let group = allocate(&mut taken);
    sock.change(&Request::Blackhole { id: member })
        .map_err(|e| {
            format!("this kernel has no nexthop objects ({e}); VIP routes are multipath routes")
        })?;
    let r = sock.change(&Request::Group {
        id: group,
        members: vec![member],
        resilient: Some(*params),
        replace: false,
    });
    let _ = sock.change(&Request::Delete { id: group });
    let _ = sock.change(&Request::Delete { id: member });
    r.map_err(|e| {
        format!(
            "this kernel refuses resilient nexthop groups ({e}; Linux >= 5.13 has them); \
             VIP routes are multipath routes, and a next-hop change re-maps flows of the nodes that stay"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn member_message_bytes() {
        let m = encode(
            &Request::Member {
                id: 7,
                gateway: ip("10.0.0.1"),
                oif: 3,
                replace: false,
            },
            9,
        );
        let mut want = Vec::new();
        want.extend_from_slice(&48u32.to_ne_bytes());
        want.extend_from_slice(&RTM_NEWNEXTHOP.to_ne_bytes());
        want.extend_from_slice(&(0x1u16 | 0x4 | 0x400 | 0x200).to_ne_bytes());
        want.extend_from_slice(&9u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[2, 0, 201, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[8, 0, 1, 0, 7, 0, 0, 0]); // NHA_ID
        want.extend_from_slice(&[8, 0, 6, 0, 10, 0, 0, 1]); // NHA_GATEWAY
        want.extend_from_slice(&[8, 0, 5, 0, 3, 0, 0, 0]); // NHA_OIF
        if cfg!(target_endian = "little") {
            assert_eq!(m, want);
        }
        assert_eq!(m.len(), 48);
    }

    #[test]
    fn resilient_group_message_bytes() {
        let m = encode(
            &Request::Group {
                id: 10,
                members: vec![7, 8],
                resilient: Some(Resilient {
                    buckets: 64,
                    idle_timer_s: 120,
                    unbalanced_timer_s: 5,
                }),
                replace: true,
            },
            1,
        );
        let flags = u16_ne(&m, 6).unwrap();
        assert_eq!(flags & NLM_F_REPLACE, NLM_F_REPLACE);
        assert_eq!(flags & NLM_F_EXCL, 0);
        let a = attrs(&m[NLMSG_HDRLEN + NHMSG_LEN..]);
        assert_eq!(m[NLMSG_HDRLEN], 0, "a group is AF_UNSPEC");
        assert_eq!(a[0], (NHA_ID, &10u32.to_ne_bytes()[..]));
        assert_eq!(a[1].0, NHA_GROUP);
        assert_eq!(a[1].1.len(), 16, "two struct nexthop_grp");
        assert_eq!(u32_ne(a[1].1, 8), Some(8));
        assert_eq!(
            a[2],
            (NHA_GROUP_TYPE, &NEXTHOP_GRP_TYPE_RES.to_ne_bytes()[..])
        );
        assert_eq!(a[3].0, NHA_RES_GROUP);
        // The nested flag is set on the wire.
        let raw_type = u16_ne(&m, NLMSG_HDRLEN + NHMSG_LEN + 8 + 20 + 8 + 2).unwrap();
        assert_eq!(raw_type, NHA_RES_GROUP | NLA_F_NESTED);
        let nested = attrs(a[3].1);
        assert_eq!(nested[0], (NHA_RES_GROUP_BUCKETS, &64u16.to_ne_bytes()[..]));
        assert_eq!(
            nested[1],
            (NHA_RES_GROUP_IDLE_TIMER, &12000u32.to_ne_bytes()[..])
        );
        assert_eq!(
            nested[2],
            (NHA_RES_GROUP_UNBALANCED_TIMER, &500u32.to_ne_bytes()[..])
        );
        assert_eq!(u32_ne(&m, 0), Some(m.len() as u32));
    }

    /// A kernel reply carrying `req`'s attributes reads back as the object.
    #[test]
    fn a_group_reads_back() {
        let mut m = encode(
            &Request::Group {
                id: 10,
                members: vec![7, 8],
                resilient: Some(Resilient::default()),
                replace: false,
            },
            5,
        );
        // Turn the request into a reply (flags are not read).
        let r = parse(&m);
        assert_eq!(
            r,
            vec![(
                5,
                Reply::Nexthop(Nexthop {
                    id: 10,
                    protocol: ROUTE_PROTOCOL,
                    group: vec![7, 8],
                    group_type: NEXTHOP_GRP_TYPE_RES,
                    buckets: Some(128),
                    idle_timer_s: Some(120),
                    unbalanced_timer_s: Some(0),
                    ..Nexthop::default()
                })
            )]
        );
        m.truncate(30);
        assert_eq!(parse(&m), vec![]);
    }

    #[test]
    fn errors_and_acks() {
        let mut e = Vec::new();
        e.extend_from_slice(&36u32.to_ne_bytes());
        e.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        e.extend_from_slice(&0u16.to_ne_bytes());
        e.extend_from_slice(&4u32.to_ne_bytes());
        e.extend_from_slice(&0u32.to_ne_bytes());
        e.extend_from_slice(&(-95i32).to_ne_bytes());
        e.extend_from_slice(&[0; 16]);
        assert_eq!(parse(&e), vec![(4, Reply::Refused(95))]);
        e[16..20].copy_from_slice(&0i32.to_ne_bytes());
        assert_eq!(parse(&e), vec![(4, Reply::Ack)]);
    }

    fn member(id: u32, gw: &str, oif: u32) -> Nexthop {
        Nexthop {
            id,
            protocol: ROUTE_PROTOCOL,
            gateway: Some(ip(gw)),
            oif,
            ..Nexthop::default()
        }
    }

    /// Members 1..3 (10.0.0.1..3 on link 2), all in group `g`.
    fn three_members_grouped_in(g: u32) -> Installed {
        Installed::from_dump(vec![
            member(1, "10.0.0.1", 2),
            member(2, "10.0.0.2", 2),
            member(3, "10.0.0.3", 2),
            group(g, &[1, 2, 3]),
        ])
    }

    fn group(id: u32, members: &[u32]) -> Nexthop {
        Nexthop {
            id,
            protocol: ROUTE_PROTOCOL,
            group: members.to_vec(),
            group_type: NEXTHOP_GRP_TYPE_RES,
            buckets: Some(128),
            idle_timer_s: Some(120),
            unbalanced_timer_s: Some(0),
            ..Nexthop::default()
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn members_are_reused_fixed_or_created() {
        let inst = Installed::from_dump(vec![
            member(ID_BASE, "10.0.0.1", 2),
            member(ID_BASE + 1, "10.0.0.2", 2),
            Nexthop {
                id: ID_BASE + 2,
                protocol: 11, // somebody else's
                ..Nexthop::default()
            },
        ]);
        let mut taken = inst.taken.clone();
        let oifs = BTreeMap::from([
            (ip("10.0.0.1"), 2),
            (ip("10.0.0.2"), 3),
            (ip("10.0.0.3"), 2),
        ]);
        let (reqs, ids) = plan_members(&inst, &oifs, &mut taken);
        assert_eq!(
            reqs,
            vec![
                Request::Member {
                    id: ID_BASE + 1,
                    gateway: ip("10.0.0.2"),
                    oif: 3,
                    replace: true
                },
                Request::Member {
                    id: ID_BASE + 3,
                    gateway: ip("10.0.0.3"),
                    oif: 2,
                    replace: false
                },
            ]
        );
        assert_eq!(
            ids[&ip("10.0.0.3")],
            ID_BASE + 3,
            "the foreign id is skipped"
        );
    }

    #[test]
    fn a_node_leaving_changes_the_group_in_place() {
        let g = ID_BASE + 10;
        let inst = three_members_grouped_in(g);
        let mut taken = inst.taken.clone();
        let members = BTreeMap::from([(ip("10.0.0.1"), 1), (ip("10.0.0.2"), 2)]);
        let want = BTreeMap::from([
            (
                net("10.77.0.1/32"),
                BTreeSet::from([ip("10.0.0.1"), ip("10.0.0.2")]),
            ),
            (
                net("10.77.0.2/32"),
                BTreeSet::from([ip("10.0.0.1"), ip("10.0.0.2")]),
            ),
        ]);
        let using = BTreeMap::from([(net("10.77.0.1/32"), g), (net("10.77.0.2/32"), g)]);
        let p = plan_groups(
            &inst,
            &want,
            &using,
            &members,
            &Resilient::default(),
            &mut taken,
        );
        assert_eq!(
            p.groups,
            vec![Request::Group {
                id: g,
                members: vec![1, 2],
                resilient: Some(Resilient::default()),
                replace: true
            }]
        );
        assert_eq!(
            p.routes.values().collect::<BTreeSet<_>>(),
            BTreeSet::from([&g])
        );
        assert!(p.stale_groups.is_empty());
        assert_eq!(p.stale_members, vec![3]);
    }

    #[test]
    fn vips_with_one_set_share_a_group_and_an_exact_group_is_kept() {
        let inst = Installed::from_dump(vec![
            member(1, "10.0.0.1", 2),
            member(2, "10.0.0.2", 2),
            group(ID_BASE + 10, &[2, 1]),
            group(ID_BASE + 11, &[1]),
        ]);
        let mut taken = inst.taken.clone();
        let members = BTreeMap::from([
            (ip("10.0.0.1"), 1),
            (ip("10.0.0.2"), 2),
            (ip("10.0.0.3"), 3),
        ]);
        let both = BTreeSet::from([ip("10.0.0.1"), ip("10.0.0.2")]);
        let want = BTreeMap::from([
            (net("10.77.0.1/32"), both.clone()),
            (net("10.77.0.2/32"), both),
            (net("10.77.0.3/32"), BTreeSet::from([ip("10.0.0.3")])),
            (net("10.77.0.4/32"), BTreeSet::from([ip("10.0.0.9")])),
        ]);
        let p = plan_groups(
            &inst,
            &want,
            &BTreeMap::new(),
            &members,
            &Resilient::default(),
            &mut taken,
        );
        assert_eq!(p.routes[&net("10.77.0.1/32")], ID_BASE + 10);
        assert_eq!(p.routes[&net("10.77.0.2/32")], ID_BASE + 10);
        // {3} is new to everybody: a new group (the first free id).
        assert_eq!(p.routes[&net("10.77.0.3/32")], ID_BASE);
        assert_eq!(p.unreachable, vec![net("10.77.0.4/32")]);
        assert_eq!(p.stale_groups, vec![ID_BASE + 11]);
        // Another bucket count cannot be changed in place: a new group.
        let other = Resilient {
            buckets: 64,
            ..Resilient::default()
        };
        let mut taken = inst.taken.clone();
        let p = plan_groups(&inst, &want, &BTreeMap::new(), &members, &other, &mut taken);
        assert!(!p.routes.values().any(|g| *g == ID_BASE + 10));
        assert!(p.stale_groups.contains(&(ID_BASE + 10)));
    }

    #[test]
    fn when_a_groups_vips_split_the_group_follows_most_of_them() {
        let g = ID_BASE + 10;
        let inst = three_members_grouped_in(g);
        let mut taken = inst.taken.clone();
        let members = BTreeMap::from([
            (ip("10.0.0.1"), 1),
            (ip("10.0.0.2"), 2),
            (ip("10.0.0.3"), 3),
        ]);
        let two = BTreeSet::from([ip("10.0.0.1"), ip("10.0.0.2")]);
        let three = BTreeSet::from([ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")]);
        // Node 3 leaves two VIPs (health-checked) but not the third.
        let want = BTreeMap::from([
            (net("10.77.0.1/32"), two.clone()),
            (net("10.77.0.2/32"), two),
            (net("10.77.0.3/32"), three),
        ]);
        let using: BTreeMap<IpNet, u32> = want.keys().map(|d| (*d, g)).collect();
        let p = plan_groups(
            &inst,
            &want,
            &using,
            &members,
            &Resilient::default(),
            &mut taken,
        );
        assert_eq!(p.routes[&net("10.77.0.1/32")], g, "the two keep the group");
        assert_eq!(p.routes[&net("10.77.0.2/32")], g);
        assert_ne!(
            p.routes[&net("10.77.0.3/32")],
            g,
            "the one gets a new group"
        );
        assert!(p.groups.contains(&Request::Group {
            id: g,
            members: vec![1, 2],
            resilient: Some(Resilient::default()),
            replace: true
        }));
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&bytes);
        }

        /// Every reachable VIP gets a group whose members are exactly its
        /// reachable gateways; no group serves two sets.
        #[test]
        fn plans_are_consistent(
            want in proptest::collection::btree_map(
                (0u8..8).prop_map(|i| net(&format!("10.77.0.{i}/32"))),
                proptest::collection::btree_set((1u8..5).prop_map(|i| ip(&format!("10.0.0.{i}"))), 1..4),
                0..8),
            old in proptest::collection::vec(proptest::collection::btree_set(1u32..5, 1..4), 0..4),
        ) {
            let mut dump: Vec<Nexthop> = (1u32..5).map(|i| member(i, &format!("10.0.0.{i}"), 2)).collect();
            for (n, s) in old.iter().enumerate() {
                dump.push(group(ID_BASE + 100 + n as u32, &s.iter().copied().collect::<Vec<_>>()));
            }
            let inst = Installed::from_dump(dump);
            let mut taken = inst.taken.clone();
            let members: BTreeMap<IpAddr, u32> = (1u32..4).map(|i| (ip(&format!("10.0.0.{i}")), i)).collect();
            let using: BTreeMap<IpNet, u32> = want.keys().enumerate()
                .filter(|(n, _)| !old.is_empty() && n % 2 == 0)
                .map(|(n, d)| (*d, ID_BASE + 100 + (n % old.len()) as u32)).collect();
            let p = plan_groups(&inst, &want, &using, &members, &Resilient::default(), &mut taken);
            let mut sets: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
            for r in &p.groups {
                if let Request::Group { id, members, .. } = r { sets.insert(*id, members.clone()); }
            }
            for (dst, hops) in &want {
                let ids: Vec<u32> = hops.iter().filter_map(|h| members.get(h).copied()).collect::<BTreeSet<_>>().into_iter().collect();
                match p.routes.get(dst) {
                    None => prop_assert!(ids.is_empty() && p.unreachable.contains(dst)),
                    Some(g) => {
                        let have = sets.get(g).cloned().or_else(|| inst.groups.get(g).map(|x| { let mut m = x.group.clone(); m.sort_unstable(); m }));
                        prop_assert_eq!(have, Some(ids));
                        prop_assert!(!p.stale_groups.contains(g));
                    }
                }
            }
        }
    }
}
