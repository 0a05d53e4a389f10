//! nftables: pier's one table `inet pier`, rendered whole from the desired
//! state (pure) and loaded as one atomic `nft -f -` transaction.
//!
//! Layout (per family; `4` shown, `6` is the same with `ip6`):
//!
//! ```text
//! set vips4      ipv4_addr                                  every VIP pier forwards
//!                (no rule looks it up: the list `nft list set` shows)
//! map open4      ipv4_addr . inet_proto . inet_service : counter
//!                a port open to any source → the VIP's "a_<hex vip>" counter
//! map ranged4    ipv4_addr . inet_proto . inet_service : verdict
//!                a port with loadBalancerSourceRanges → goto src4_<k>
//! map accepted4  ipv4_addr : counter    per-VIP counter "a_<hex vip>"
//! map dropped4   ipv4_addr : counter    per-VIP counter "d_<hex vip>"
//! counter dropped_source, dropped_port  totals by reason
//!
//! chain forward (hook forward, priority filter, policy accept)
//!   ip daddr <cover> goto vip4          one rule per cover (≤ 4): prefixes
//!                                       that hold every VIP; traffic
//!                                       outside them meets no lookup
//! chain vip4
//!   open port (vip . proto . port in open4)    → count accepted, accept
//!                                                (vip_counters only)
//!   vip . proto . port in ranged4              → accept (open port) or
//!                                                goto its source chain
//!   ICMP errors (PMTU, unreachable)            → count accepted, accept
//!   non-first fragments                        → count accepted, accept
//!   anything else to a VIP                     → count dropped, drop
//!   (an address in a cover that is no VIP has no drop counter: accepted)
//! chain src4_<k>  one per distinct set of allowed sources (shared by every
//!                 VIP port with that set)
//!   ip saddr { <the set> }                     → count accepted, accept
//!   anything else                              → count dropped, drop
//! ```
//!
//! An accepted packet to an open port costs a compare and one hash lookup;
//! the nodes' replies and other traffic outside the covers, a compare per
//! cover (docs/datapath.md, "What a packet costs"). Every lookup on the
//! packet path is a hash lookup (or a lookup in one source set, whose size
//! is the operator's list): the cost of a packet does not grow with the
//! number of VIPs. An earlier layout matched
//! `vip . proto . port . source` in one interval set; the kernel's lookup in
//! such a set (pipapo) walks bitmaps as wide as the set, so at 10,000 VIPs it
//! cost about a tenth of the forwarding throughput.
//!
//! The rule count is fixed but for two rules per distinct source set; VIPs
//! only add set elements and counters. Every apply flushes the chains,
//! recreates the sets and maps and refills them in the same transaction, so
//! a failure leaves the previous table in place. Per-VIP counter objects
//! survive an apply (re-adding an existing counter keeps its value);
//! counters of VIPs that are gone, and source chains no longer used, are
//! deleted.
//!
//! Text, not the `nftables` crate's JSON schema: that schema cannot express
//! the counter and verdict maps above nor `counter name … map @…`, and reads
//! counters as `u32` (docs/architecture.md, "The nftables and pnet crates").

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::Stdio;

use ipnet::IpNet;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::model::{Desired, Family, Protocol};

use super::RouteError;

/// The table pier owns (family `inet`). pier never names another table.
pub const TABLE: &str = "pier";

/// Which ports of a VIP are open, and to whom.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VipRules {
    /// `(protocol, port)` → allowed source prefixes (already truncated and
    /// of the VIP's family). `0.0.0.0/0` / `::/0` means any source; an empty
    /// set means the port is declared but no source of this family may use it.
    pub ports: BTreeMap<(Protocol, u16), BTreeSet<IpNet>>,
}

/// The firewall pier wants: VIP → rules, for VIPs pier forwards itself.
pub type Firewall = BTreeMap<IpAddr, VipRules>;

/// How the table is built beyond what it lets through: the `[gateway]`
/// keys `vip_counters` and `flowtable` (docs/datapath.md, "nftables").
/// The default: no per-VIP accept counters, no flowtable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// Count accepted packets per VIP on the hot path (`a_<hex vip>`).
    /// Off (the default): an accepted packet costs one lookup after the
    /// VIP check and nothing else; dropped packets are counted either way.
    pub vip_counters: bool,
    /// Offload established, accepted VIP flows to a flowtable (only where
    /// the kernel has one: [`probe_flowtable`]).
    pub flowtable: Option<FlowtableSpec>,
}

impl Layout {
    /// The flowtable this layout renders, if any: one with no device is
    /// left out of the table.
    fn written_flowtable(&self) -> Option<&FlowtableSpec> {
        self.flowtable.as_ref().filter(|ft| !ft.devices.is_empty())
    }

    /// `software` or `hardware` when the table this layout renders
    /// offloads accepted flows (for `pier status`).
    pub fn offload_mode(&self) -> Option<&'static str> {
        self.written_flowtable()
            .map(|ft| if ft.hardware { "hardware" } else { "software" })
    }
}

/// pier's flowtable `ft`: on which devices, and whether the NICs are asked
/// to offload too (`flags offload`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowtableSpec {
    /// Every interface VIP traffic and its replies cross (a flowtable
    /// catches a flow only on the devices it hooks).
    pub devices: BTreeSet<String>,
    pub hardware: bool,
}

/// Name of pier's flowtable.
pub const FLOWTABLE: &str = "ft";

fn any_source(family: Family) -> IpNet {
    match family {
        Family::V4 => "0.0.0.0/0".parse().unwrap_or_default(),
        Family::V6 => "::/0"
            .parse()
            .unwrap_or(IpNet::V6(ipnet::Ipv6Net::default())),
    }
}

/// Reduce the desired state to the firewall (pure). Every VIP, as for the
/// routes: `next_hop = "nodes"` VIPs reach pier from a peer that fell back
/// to next hop self (no ADD-PATH).
pub fn firewall(desired: &Desired) -> Firewall {
    desired
        .announcements
        .iter()
        .map(|a| {
            let family = Family::of(&a.vip);
            let mut rules = VipRules::default();
            for p in &a.ports {
                let entry = rules
                    .ports
                    .entry((p.port.protocol, p.port.port))
                    .or_default();
                if p.sources.is_empty() {
                    entry.insert(any_source(family));
                } else {
                    entry.extend(
                        p.sources
                            .iter()
                            .filter(|s| Family::of(&s.addr()) == family)
                            .map(|s| s.trunc()),
                    );
                }
            }
            // Two Services sharing a VIP may both declare a port (only with
            // different protocols in practice); a port open to everyone
            // absorbs narrower prefixes.
            for sources in rules.ports.values_mut() {
                if sources.contains(&any_source(family)) {
                    *sources = BTreeSet::from([any_source(family)]);
                }
            }
            (a.vip, rules)
        })
        .collect()
}

/// Name of the per-VIP counter object: `a_` (accepted) or `d_` (dropped)
/// and the address in hex (8 digits for IPv4, 32 for IPv6).
pub fn counter_name(prefix: char, vip: &IpAddr) -> String {
    match vip {
        IpAddr::V4(v4) => format!("{prefix}_{:08x}", u32::from(*v4)),
        IpAddr::V6(v6) => format!("{prefix}_{:032x}", u128::from(*v6)),
    }
}

/// Inverse of [`counter_name`]: `Some(('a', vip))`.
pub fn parse_counter_name(name: &str) -> Option<(char, IpAddr)> {
    let (prefix, hex) = name.split_once('_')?;
    let prefix = match prefix {
        "a" => 'a',
        "d" => 'd',
        _ => return None,
    };
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let ip = match hex.len() {
        8 => IpAddr::V4(u32::from_str_radix(hex, 16).ok()?.into()),
        32 => IpAddr::V6(u128::from_str_radix(hex, 16).ok()?.into()),
        _ => return None,
    };
    Some((prefix, ip))
}

struct FamilyNames {
    suffix: char,
    nfproto: &'static str,
    addr_type: &'static str,
    match_daddr: &'static str,
    match_saddr: &'static str,
    icmp: &'static str,
    /// A non-first fragment: it carries no port (pier loads no conntrack,
    /// so nothing reassembles it here); the node reassembles it with the
    /// first fragment, which the port rules decided on.
    fragment: &'static str,
}

const V4: FamilyNames = FamilyNames {
    suffix: '4',
    nfproto: "ipv4",
    addr_type: "ipv4_addr",
    match_daddr: "ip daddr",
    match_saddr: "ip saddr",
    icmp: "icmp type { destination-unreachable, time-exceeded, parameter-problem }",
    fragment: "ip frag-off & 0x1fff != 0",
};

const V6: FamilyNames = FamilyNames {
    suffix: '6',
    nfproto: "ipv6",
    addr_type: "ipv6_addr",
    match_daddr: "ip6 daddr",
    match_saddr: "ip6 saddr",
    icmp:
        "icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem }",
    fragment: "frag frag-off != 0",
};

fn push_elements(out: &mut String, set: &str, elements: &[String]) {
    if elements.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "add element inet {TABLE} {set} {{ {} }}",
        elements.join(", ")
    );
}

/// At most this many prefixes stand for a family's VIPs in the forward
/// chain: each is one rule of a compare and no lookup.
pub const MAX_COVERS: usize = 4;

/// At most [`MAX_COVERS`] prefixes that together hold every address of
/// `vips` (all of one family, pure). Sorted, the addresses are cut where
/// neighbours share the shortest prefix (the widest gaps), and only where
/// they share less than half their bits (another /16 for IPv4, another
/// /64 for IPv6); each run is then covered by the prefix its first and
/// last address share. A cover may hold addresses that are not VIPs: the
/// VIP chain lets those through once its lookups miss; they are rare, as
/// covers lie within the address pools. Fewer, wider covers keep the
/// compares every other packet pays few.
pub fn covers(vips: &[&IpAddr]) -> Vec<IpNet> {
    let mut bits: Vec<(u128, u8)> = vips
        .iter()
        .map(|ip| match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(*v4)), 32),
            IpAddr::V6(v6) => (u128::from(*v6), 128),
        })
        .collect();
    bits.sort_unstable();
    bits.dedup();
    let Some(&(_, width)) = bits.first() else {
        return Vec::new();
    };
    // Length of the prefix two addresses of `width` bits share.
    let shared = |a: u128, b: u128| ((a ^ b).leading_zeros() - (128 - u32::from(width))) as u8;
    // The widest gaps (shortest shared prefix; the first of equals).
    let mut gaps: Vec<(u8, usize)> = bits
        .windows(2)
        .enumerate()
        .map(|(i, w)| (shared(w[0].0, w[1].0), i + 1))
        .filter(|&(len, _)| len < width / 2)
        .collect();
    gaps.sort_unstable();
    let mut cuts: Vec<usize> = gaps.iter().take(MAX_COVERS - 1).map(|&(_, i)| i).collect();
    cuts.sort_unstable();
    cuts.push(bits.len());
    let mut out: Vec<IpNet> = Vec::new();
    let mut start = 0;
    for end in cuts {
        let (first, last) = (bits[start].0, bits[end - 1].0);
        let len = shared(first, last);
        let net = match width {
            32 => IpNet::V4(
                ipnet::Ipv4Net::new((first as u32).into(), len)
                    .map(|n| n.trunc())
                    .unwrap_or_default(),
            ),
            _ => IpNet::V6(
                ipnet::Ipv6Net::new(first.into(), len)
                    .map(|n| n.trunc())
                    .unwrap_or_default(),
            ),
        };
        start = end;
        // Runs cut at equal gaps can share a cover.
        if !out.iter().any(|o| o.contains(&net)) {
            out.retain(|o| !net.contains(o));
            out.push(net);
        }
    }
    out
}

/// The match for traffic to `net`, a family's VIP cover: a prefix of
/// length 0 is the family itself.
fn cover_match(f: &FamilyNames, net: &IpNet) -> String {
    if net.prefix_len() == 0 {
        format!("meta nfproto {}", f.nfproto)
    } else {
        format!("{} {net}", f.match_daddr)
    }
}

/// Name of the chain for the `k`-th distinct source set of a family.
fn source_chain(suffix: char, k: usize) -> String {
    format!("src{suffix}_{k}")
}

/// Is `name` one of pier's source chains (`src4_<k>` / `src6_<k>`)?
pub fn is_source_chain(name: &str) -> bool {
    ["src4_", "src6_"].iter().any(|p| {
        name.strip_prefix(p)
            .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// One family's share of the firewall, as set elements.
#[derive(Default)]
struct FamilyElements<'a> {
    vips: Vec<&'a IpAddr>,
    /// `vip . proto . port : "a_<vip>"` (open to any source; with per-VIP
    /// counters).
    open: Vec<String>,
    /// `vip . proto . port : goto src<f>_<k>` (with per-VIP counters);
    /// without them, the open ports too (`: accept`, or `: goto fwd<f>`
    /// with a flowtable): one verdict map decides.
    ranged: Vec<String>,
    /// Distinct source sets, in the order of their chain numbers.
    sources: Vec<&'a BTreeSet<IpNet>>,
}

fn family_elements<'a>(
    fw: &'a Firewall,
    f: &FamilyNames,
    family: Family,
    layout: &Layout,
) -> FamilyElements<'a> {
    let mut e = FamilyElements::default();
    let mut chain_of: BTreeMap<&BTreeSet<IpNet>, usize> = BTreeMap::new();
    // Number the source sets in a stable order (sorted), so the same
    // firewall renders the same text.
    for rules in fw
        .iter()
        .filter(|(v, _)| Family::of(v) == family)
        .map(|(_, r)| r)
    {
        for sources in rules.ports.values() {
            if !sources.contains(&any_source(family)) {
                chain_of.entry(sources).or_insert(0);
            }
        }
    }
    for (k, (sources, n)) in chain_of.iter_mut().enumerate() {
        *n = k;
        e.sources.push(sources);
    }
    for (vip, rules) in fw.iter().filter(|(v, _)| Family::of(v) == family) {
        e.vips.push(vip);
        let counter = counter_name('a', vip);
        for ((proto, port), sources) in &rules.ports {
            let key = format!("{vip} . {} . {port}", proto.as_str());
            match chain_of.get(sources) {
                None if layout.vip_counters => e.open.push(format!("{key} : \"{counter}\"")),
                None if layout.flowtable.is_some() => {
                    e.ranged.push(format!("{key} : goto fwd{}", f.suffix))
                }
                None => e.ranged.push(format!("{key} : accept")),
                Some(k) => e
                    .ranged
                    .push(format!("{key} : goto {}", source_chain(f.suffix, *k))),
            }
        }
    }
    e
}

/// The whole nft transaction that makes `inet pier` equal to `fw`, with
/// the default [`Layout`] (pure).
///
/// `existing` names the counter objects, source chains and flowtable now
/// in the table; those no longer wanted are deleted. With `fresh`, the
/// table is deleted and created anew first (for a table an older pier left
/// with another layout); counters then restart at zero.
pub fn render(fw: &Firewall, existing: &BTreeSet<String>, fresh: bool) -> String {
    render_with_objects(fw, &Layout::default(), existing, fresh).0
}

/// [`render`] with a given [`Layout`].
pub fn render_layout(
    fw: &Firewall,
    layout: &Layout,
    existing: &BTreeSet<String>,
    fresh: bool,
) -> String {
    render_with_objects(fw, layout, existing, fresh).0
}

/// `size` of a set or map holding `n` elements: the kernel then picks its
/// fixed-size hash (`nft_hash`, and for 4-byte keys `nft_hash_fast`)
/// instead of the resizable rhashtable, a cheaper lookup. The sets are
/// recreated by every apply, so the size follows the element count; room
/// to spare keeps the chains of the hash short.
fn set_size(n: usize) -> usize {
    (n.max(1) * 2).next_power_of_two().max(1024)
}

/// [`render`], and the objects (counters, source chains, flowtable) the
/// table holds once the transaction is committed, from the same element
/// lists.
fn render_with_objects(
    fw: &Firewall,
    layout: &Layout,
    existing: &BTreeSet<String>,
    fresh: bool,
) -> (String, BTreeSet<String>) {
    let mut out = String::new();
    let _ = writeln!(out, "# generated by pier; this table is pier's alone");
    if fresh {
        let _ = writeln!(out, "table inet {TABLE} {{}}");
        let _ = writeln!(out, "delete table inet {TABLE}");
    }
    let counters = layout.vip_counters;
    let flowtable = layout.written_flowtable();
    let elements = [
        (&V4, family_elements(fw, &V4, Family::V4, layout)),
        (&V6, family_elements(fw, &V6, Family::V6, layout)),
    ];
    // (kind, name, declaration) of every set and map.
    let mut sets: Vec<(&str, String, String)> = Vec::new();
    for (f, e) in &elements {
        let (s, t) = (f.suffix, f.addr_type);
        let size = |n: usize| format!(" size {};", set_size(n));
        sets.push((
            "set",
            format!("vips{s}"),
            format!("type {t};{}", size(e.vips.len())),
        ));
        sets.push((
            "map",
            format!("open{s}"),
            format!(
                "type {t} . inet_proto . inet_service : counter;{}",
                size(e.open.len())
            ),
        ));
        sets.push((
            "map",
            format!("ranged{s}"),
            format!(
                "type {t} . inet_proto . inet_service : verdict;{}",
                size(e.ranged.len())
            ),
        ));
        sets.push((
            "map",
            format!("accepted{s}"),
            format!("type {t} : counter;{}", size(e.vips.len())),
        ));
        sets.push((
            "map",
            format!("dropped{s}"),
            format!("type {t} : counter;{}", size(e.vips.len())),
        ));
    }
    let wanted_chains: BTreeSet<String> = elements
        .iter()
        .flat_map(|(f, e)| (0..e.sources.len()).map(|k| source_chain(f.suffix, k)))
        .collect();
    let _ = writeln!(out, "table inet {TABLE} {{");
    for (kind, name, decl) in &sets {
        let _ = writeln!(out, "\t{kind} {name} {{ {decl} }}");
    }
    let _ = writeln!(out, "\tcounter dropped_source {{}}");
    let _ = writeln!(out, "\tcounter dropped_port {{}}");
    let _ = writeln!(
        out,
        "\tchain forward {{ type filter hook forward priority filter; policy accept; }}"
    );
    let fixed = ["forward", "vip4", "vip6", "fwd4", "fwd6"];
    for chain in &fixed[1..] {
        let _ = writeln!(out, "\tchain {chain} {{}}");
    }
    for chain in &wanted_chains {
        let _ = writeln!(out, "\tchain {chain} {{}}");
    }
    let _ = writeln!(out, "}}");
    let stale_chains: Vec<&String> = if fresh {
        Vec::new()
    } else {
        existing
            .iter()
            .filter(|n| is_source_chain(n) && !wanted_chains.contains(*n))
            .collect()
    };
    for chain in fixed
        .into_iter()
        .chain(wanted_chains.iter().map(|c| c.as_str()))
        .chain(stale_chains.iter().map(|c| c.as_str()))
    {
        let _ = writeln!(out, "flush chain inet {TABLE} {chain}");
    }
    // Sets are recreated rather than flushed: refilling a flushed set in one
    // transaction can cost the kernel seconds at 20,000 elements, a new one
    // a fraction of that. Nothing refers to them once the chains are flushed.
    for (kind, name, decl) in &sets {
        let _ = writeln!(out, "delete {kind} inet {TABLE} {name}");
        let _ = writeln!(out, "add {kind} inet {TABLE} {name} {{ {decl} }}");
    }
    // The flowtable is recreated too: deleting it sends every offloaded
    // flow back to the forward path, where the new rules decide on its
    // next packet (a source range removed must stop flows already
    // offloaded); the ones still accepted are offloaded again.
    if existing.contains(FLOWTABLE) && !fresh {
        let _ = writeln!(out, "delete flowtable inet {TABLE} {FLOWTABLE}");
    }
    if let Some(ft) = flowtable {
        let devices: Vec<&str> = ft.devices.iter().map(|d| d.as_str()).collect();
        let _ = writeln!(
            out,
            "add flowtable inet {TABLE} {FLOWTABLE} {{ hook ingress priority 0; devices = {{ {} }};{} }}",
            devices.join(", "),
            if ft.hardware { " flags offload;" } else { "" }
        );
    }
    // The sets of the layout before source chains (pier 0.1), if present:
    // declaring then deleting works whether or not they exist.
    if !fresh {
        for f in [&V4, &V6] {
            let (s, t) = (f.suffix, f.addr_type);
            for (name, decl) in [
                (
                    format!("ports{s}"),
                    format!("type {t} . inet_proto . inet_service;"),
                ),
                (
                    format!("allow{s}"),
                    format!("type {t} . inet_proto . inet_service . {t}; flags interval;"),
                ),
            ] {
                let _ = writeln!(out, "add set inet {TABLE} {name} {{ {decl} }}");
                let _ = writeln!(out, "delete set inet {TABLE} {name}");
            }
        }
    }
    // Unreferenced now: the ranged maps were recreated empty.
    for chain in &stale_chains {
        let _ = writeln!(out, "delete chain inet {TABLE} {chain}");
    }
    let wanted = counter_names_layout(fw, counters);
    for stale in existing.difference(&wanted) {
        if parse_counter_name(stale).is_some() && !fresh {
            let _ = writeln!(out, "delete counter inet {TABLE} {stale}");
        }
    }
    for name in &wanted {
        let _ = writeln!(out, "add counter inet {TABLE} {name}");
    }
    for (f, e) in &elements {
        let s = f.suffix;
        let names = |prefix: char| -> Vec<String> {
            e.vips
                .iter()
                .map(|v| format!("{v} : \"{}\"", counter_name(prefix, v)))
                .collect()
        };
        let plain: Vec<String> = e.vips.iter().map(|v| v.to_string()).collect();
        push_elements(&mut out, &format!("vips{s}"), &plain);
        push_elements(&mut out, &format!("open{s}"), &e.open);
        push_elements(&mut out, &format!("ranged{s}"), &e.ranged);
        if counters {
            push_elements(&mut out, &format!("accepted{s}"), &names('a'));
        }
        push_elements(&mut out, &format!("dropped{s}"), &names('d'));
    }
    // What an accepted packet gets: counted on its VIP (optional), then
    // accepted, or, where there is a flowtable, sent to `fwd<f>`, which
    // hands it to the flowtable and accepts it in two rules: `flow add`
    // ends its rule (NFT_BREAK, `net/netfilter/nft_flow_offload.c`) for
    // every packet it does not offload, the first packets of each
    // connection among them (only established connections are offloaded),
    // so an accept in the same rule would never be reached by a SYN
    // (found on a kernel with flowtables: docs/datapath.md, "Flowtable
    // offload, tested in a VM").
    for (f, e) in &elements {
        let (s, d, src) = (f.suffix, f.match_daddr, f.match_saddr);
        let rule = |chain: &str, body: String| format!("add rule inet {TABLE} {chain} {body}\n");
        let accept = match flowtable {
            Some(_) => format!("goto fwd{s}"),
            None => "accept".to_string(),
        };
        let count_accepted = if counters {
            format!("counter name {d} map @accepted{s} ")
        } else {
            String::new()
        };
        // Traffic outside the covers of the VIPs (the nodes' replies to
        // clients, other routed traffic) leaves pier's table after a
        // compare or few, with no lookup; traffic inside goes on without a
        // return frame.
        for net in covers(&e.vips) {
            out.push_str(&rule(
                "forward",
                format!("{} goto vip{s}", cover_match(f, &net)),
            ));
        }
        let vip = format!("vip{s}");
        if counters {
            // One lookup both matches the open port and names its counter
            // (a key not in the map ends the rule).
            out.push_str(&rule(
                &vip,
                format!("counter name {d} . meta l4proto . th dport map @open{s} {accept}"),
            ));
        }
        // Without per-VIP counters this is the only lookup a VIP packet
        // meets: open port → accept, ranged → its source chain.
        out.push_str(&rule(
            &vip,
            format!("{d} . meta l4proto . th dport vmap @ranged{s}"),
        ));
        out.push_str(&rule(&vip, format!("{} {count_accepted}accept", f.icmp)));
        out.push_str(&rule(
            &vip,
            format!("{} {count_accepted}accept", f.fragment),
        ));
        // Only a VIP is dropped: an address inside a cover that is no VIP
        // has no counter in `dropped`, and a key not in the map ends the
        // rule before its drop; the policy accepts it (tests/route_netns.rs
        // sends to one). The accepts above let it through as well.
        out.push_str(&rule(
            &vip,
            format!("counter name {d} map @dropped{s} counter name dropped_port drop"),
        ));
        if flowtable.is_some() {
            let fwd = format!("fwd{s}");
            out.push_str(&rule(&fwd, format!("flow add @{FLOWTABLE}")));
            out.push_str(&rule(&fwd, "accept".to_string()));
        }
        for (k, sources) in e.sources.iter().enumerate() {
            let chain = source_chain(s, k);
            if !sources.is_empty() {
                let list: Vec<String> = sources.iter().map(|p| p.to_string()).collect();
                out.push_str(&rule(
                    &chain,
                    format!("{src} {{ {} }} {count_accepted}{accept}", list.join(", ")),
                ));
            }
            out.push_str(&rule(
                &chain,
                format!("counter name {d} map @dropped{s} counter name dropped_source drop"),
            ));
        }
    }
    let mut objects = wanted;
    objects.extend(wanted_chains);
    if flowtable.is_some() {
        objects.insert(FLOWTABLE.to_string());
    }
    (out, objects)
}

/// The text that removes pier's table (and nothing else).
pub fn render_delete() -> String {
    format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n")
}

/// Packets and bytes of one counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Per-VIP firewall counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct VipCounters {
    /// Forwarded: an allowed port from an allowed source (or an ICMP error).
    /// `None`: the table does not count them (`vip_counters = false`).
    pub accepted: Option<Counter>,
    /// Dropped: a port the VIP does not declare, or a source outside
    /// `loadBalancerSourceRanges`.
    pub dropped: Counter,
}

/// Counter objects of `inet pier` in `nft -j list counters inet` output
/// (pure): every counter name with its values; other tables' are skipped.
pub fn parse_counters_json(json: &str) -> Result<BTreeMap<String, Counter>, RouteError> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| RouteError::Nft {
        action: "parse nft -j output",
        detail: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    let items = v
        .get("nftables")
        .and_then(|n| n.as_array())
        .map(|a| a.as_slice())
        .unwrap_or(&[]);
    for item in items {
        let Some(c) = item.get("counter") else {
            continue;
        };
        if c.get("table").and_then(|t| t.as_str()) != Some(TABLE)
            || c.get("family").and_then(|t| t.as_str()) != Some("inet")
        {
            continue;
        }
        let Some(name) = c.get("name").and_then(|n| n.as_str()) else {
            continue;
        };
        let num = |k: &str| c.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
        out.insert(
            name.to_string(),
            Counter {
                packets: num("packets"),
                bytes: num("bytes"),
            },
        );
    }
    Ok(out)
}

/// Per-VIP view of the counter objects (pure).
pub fn vip_counters(objects: &BTreeMap<String, Counter>) -> BTreeMap<IpAddr, VipCounters> {
    let mut out: BTreeMap<IpAddr, VipCounters> = BTreeMap::new();
    for (name, c) in objects {
        if let Some((prefix, vip)) = parse_counter_name(name) {
            let e = out.entry(vip).or_default();
            if prefix == 'a' {
                e.accepted = Some(*c);
            } else {
                e.dropped = *c;
            }
        }
    }
    out
}

/// Run `nft` with `args`, feeding `stdin`; stdout on success.
pub async fn run_nft(args: &[&str], stdin: Option<&str>) -> Result<String, RouteError> {
    let mut cmd = tokio::process::Command::new("nft");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| RouteError::NftUnavailable {
        detail: format!("cannot run `nft`: {e} (install the nftables package)"),
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .await
            .map_err(|e| RouteError::Nft {
                action: "write nft transaction",
                detail: e.to_string(),
            })?;
        drop(pipe);
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| RouteError::Nft {
            action: "wait for nft",
            detail: e.to_string(),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(RouteError::Nft {
            action: "run nft",
            detail: format!(
                "`nft {}` exited with {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// Is nftables usable here (binary present, kernel nf_tables, permission)?
pub async fn probe() -> Result<(), RouteError> {
    run_nft(&["list", "tables"], None)
        .await
        .map(|_| ())
        .map_err(|e| match e {
            RouteError::Nft { detail, .. } => RouteError::NftUnavailable {
                detail: format!("{detail} (pier needs nf_tables in the kernel and CAP_NET_ADMIN)"),
            },
            other => other,
        })
}

/// Can this kernel offload flows to a flowtable (`CONFIG_NF_FLOW_TABLE`)?
/// Declares one in a scratch table and deletes the table in the same
/// transaction, so nothing is left either way. `Err`: why not (nft's
/// message).
pub async fn probe_flowtable() -> Result<(), String> {
    let text = "table inet pier_flowtable_probe {\n\tflowtable ft {\n\t\thook ingress priority 0\n\t\tdevices = { lo }\n\t}\n}\ndelete table inet pier_flowtable_probe\n";
    match run_nft(&["-f", "-"], Some(text)).await {
        Ok(_) => Ok(()),
        Err(RouteError::Nft { detail, .. }) | Err(RouteError::NftUnavailable { detail }) => {
            Err(detail.lines().next().unwrap_or_default().to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Counter objects now in pier's table; empty when the table does not exist.
///
/// The listing is of every `inet` table's counters, filtered to pier's by
/// [`parse_counters_json`]: `list counters table inet pier` fails when the
/// table is absent, and nft says so only in the text of its message (its exit
/// status is 1 for every error), so an absent table would have to be told
/// from a real failure by matching that text. Listing the family answers
/// "no table" with an empty list and leaves every error an error.
pub async fn read_counters() -> Result<BTreeMap<String, Counter>, RouteError> {
    parse_counters_json(&run_nft(&["-j", "list", "counters", "inet"], None).await?)
}

/// Per-VIP counter names wanted for `fw` with `vip_counters` on (`a_` and
/// `d_`).
pub fn counter_names(fw: &Firewall) -> BTreeSet<String> {
    counter_names_layout(fw, true)
}

/// Per-VIP counter names wanted for `fw`: `d_` always, `a_` with
/// `vip_counters`.
fn counter_names_layout(fw: &Firewall, accepted: bool) -> BTreeSet<String> {
    fw.keys()
        .flat_map(|vip| {
            let d = counter_name('d', vip);
            if accepted {
                vec![counter_name('a', vip), d]
            } else {
                vec![d]
            }
        })
        .collect()
}

/// Names of pier's source chains in `nft -j list chains` output (pure).
pub fn parse_source_chains_json(json: &str) -> Result<BTreeSet<String>, RouteError> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| RouteError::Nft {
        action: "parse nft -j output",
        detail: e.to_string(),
    })?;
    let items = v
        .get("nftables")
        .and_then(|n| n.as_array())
        .map(|a| a.as_slice())
        .unwrap_or(&[]);
    Ok(items
        .iter()
        .filter_map(|item| item.get("chain"))
        .filter(|c| {
            c.get("table").and_then(|t| t.as_str()) == Some(TABLE)
                && c.get("family").and_then(|t| t.as_str()) == Some("inet")
        })
        .filter_map(|c| c.get("name").and_then(|n| n.as_str()))
        .filter(|n| is_source_chain(n))
        .map(String::from)
        .collect())
}

/// Is pier's flowtable in `nft -j list flowtables` output (pure)?
pub fn has_flowtable_json(json: &str) -> Result<bool, RouteError> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| RouteError::Nft {
        action: "parse nft -j output",
        detail: e.to_string(),
    })?;
    let items = v
        .get("nftables")
        .and_then(|n| n.as_array())
        .map(|a| a.as_slice())
        .unwrap_or(&[]);
    Ok(items.iter().filter_map(|i| i.get("flowtable")).any(|f| {
        f.get("table").and_then(|t| t.as_str()) == Some(TABLE)
            && f.get("family").and_then(|t| t.as_str()) == Some("inet")
            && f.get("name").and_then(|t| t.as_str()) == Some(FLOWTABLE)
    }))
}

/// Counter objects and source chains now in pier's table (what [`render`]
/// calls `existing`); empty when the table does not exist.
pub async fn read_objects() -> Result<BTreeSet<String>, RouteError> {
    let mut names: BTreeSet<String> = read_counters().await?.into_keys().collect();
    if names.is_empty() {
        // No counters: no table, or an empty one; chains do not matter.
        return Ok(names);
    }
    let json = run_nft(&["-j", "list", "chains", "inet"], None).await?;
    names.extend(parse_source_chains_json(&json)?);
    let json = run_nft(&["-j", "list", "flowtables", "inet"], None).await?;
    if has_flowtable_json(&json)? {
        names.insert(FLOWTABLE.to_string());
    }
    Ok(names)
}

/// Make pier's table equal to `fw` laid out as `layout`, in one
/// transaction. `known` is the set of counter objects, source chains and
/// flowtable in the table if the caller knows it (what the last successful
/// apply left); otherwise it is read. When the incremental transaction
/// fails (a table with another layout, a counter deleted by hand), retry
/// once with the table recreated. Returns the objects the table now holds,
/// for the next call.
pub async fn apply(
    fw: &Firewall,
    layout: &Layout,
    known: Option<&BTreeSet<String>>,
) -> Result<BTreeSet<String>, RouteError> {
    let existing: BTreeSet<String> = match known {
        Some(k) => k.clone(),
        None => read_objects().await?,
    };
    let (text, objects) = render_with_objects(fw, layout, &existing, false);
    if let Err(first) = run_nft(&["-f", "-"], Some(&text)).await {
        tracing::warn!(error = %first, "nft transaction failed; recreating table inet pier");
        run_nft(
            &["-f", "-"],
            Some(&render_layout(fw, layout, &BTreeSet::new(), true)),
        )
        .await?;
    }
    Ok(objects)
}

/// Remove pier's table.
pub async fn delete_table() -> Result<(), RouteError> {
    run_nft(&["-f", "-"], Some(&render_delete()))
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AnnounceMode, Announcement, BgpAttributes, NextHop, PortRule, PortSpec};
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    fn ann(vip: &str, mode: AnnounceMode, ports: &[(&str, &[&str])]) -> Arc<Announcement> {
        Arc::new(Announcement {
            vip: vip.parse().unwrap(),
            pool: "p".into(),
            mode,
            next_hops: vec![NextHop {
                node: "n".into(),
                address: "10.0.0.1".parse().unwrap(),
                labels: Default::default(),
            }]
            .into(),
            bgp: BgpAttributes::default(),
            services: vec![],
            ports: ports
                .iter()
                .map(|(p, srcs)| PortRule {
                    port: p.parse::<PortSpec>().unwrap(),
                    sources: srcs.iter().map(|s| s.parse().unwrap()).collect(),
                })
                .collect(),
        })
    }

    fn sample() -> Desired {
        Desired {
            generation: 3,
            announcements: vec![
                ann(
                    "10.77.0.10",
                    AnnounceMode::BgpSelf,
                    &[("80/tcp", &[]), ("443/tcp", &["192.0.2.7/24", "fd00::/8"])],
                ),
                ann("10.77.0.11", AnnounceMode::BgpNodes, &[("80/tcp", &[])]),
                ann(
                    "fd66::10",
                    AnnounceMode::L2 {
                        interface: "lan".into(),
                    },
                    &[("53/udp", &["2001:db8::/32"])],
                ),
            ],
        }
    }

    #[test]
    fn firewall_takes_forwarded_vips_truncates_and_filters_sources() {
        let fw = firewall(&sample());
        assert_eq!(
            fw.len(),
            3,
            "BgpNodes VIPs too: a peer without ADD-PATH sends their traffic to pier"
        );
        let v4 = &fw[&"10.77.0.10".parse::<IpAddr>().unwrap()];
        assert_eq!(
            v4.ports[&(Protocol::Tcp, 443)],
            BTreeSet::from(["192.0.2.0/24".parse().unwrap()]),
            "host bits cleared, IPv6 source dropped for an IPv4 VIP"
        );
        assert_eq!(
            v4.ports[&(Protocol::Tcp, 80)],
            BTreeSet::from(["0.0.0.0/0".parse().unwrap()])
        );
    }

    /// `vip_counters = true`: per-VIP accept counters asked for.
    fn counted() -> Layout {
        Layout {
            vip_counters: true,
            flowtable: None,
        }
    }

    /// The table with `vip_counters = true`.
    const GOLDEN: &str = r#"# generated by pier; this table is pier's alone
table inet pier {
	set vips4 { type ipv4_addr; size 1024; }
	map open4 { type ipv4_addr . inet_proto . inet_service : counter; size 1024; }
	map ranged4 { type ipv4_addr . inet_proto . inet_service : verdict; size 1024; }
	map accepted4 { type ipv4_addr : counter; size 1024; }
	map dropped4 { type ipv4_addr : counter; size 1024; }
	set vips6 { type ipv6_addr; size 1024; }
	map open6 { type ipv6_addr . inet_proto . inet_service : counter; size 1024; }
	map ranged6 { type ipv6_addr . inet_proto . inet_service : verdict; size 1024; }
	map accepted6 { type ipv6_addr : counter; size 1024; }
	map dropped6 { type ipv6_addr : counter; size 1024; }
	counter dropped_source {}
	counter dropped_port {}
	chain forward { type filter hook forward priority filter; policy accept; }
	chain vip4 {}
	chain vip6 {}
	chain fwd4 {}
	chain fwd6 {}
	chain src4_0 {}
	chain src6_0 {}
}
flush chain inet pier forward
flush chain inet pier vip4
flush chain inet pier vip6
flush chain inet pier fwd4
flush chain inet pier fwd6
flush chain inet pier src4_0
flush chain inet pier src6_0
flush chain inet pier src4_1
delete set inet pier vips4
add set inet pier vips4 { type ipv4_addr; size 1024; }
delete map inet pier open4
add map inet pier open4 { type ipv4_addr . inet_proto . inet_service : counter; size 1024; }
delete map inet pier ranged4
add map inet pier ranged4 { type ipv4_addr . inet_proto . inet_service : verdict; size 1024; }
delete map inet pier accepted4
add map inet pier accepted4 { type ipv4_addr : counter; size 1024; }
delete map inet pier dropped4
add map inet pier dropped4 { type ipv4_addr : counter; size 1024; }
delete set inet pier vips6
add set inet pier vips6 { type ipv6_addr; size 1024; }
delete map inet pier open6
add map inet pier open6 { type ipv6_addr . inet_proto . inet_service : counter; size 1024; }
delete map inet pier ranged6
add map inet pier ranged6 { type ipv6_addr . inet_proto . inet_service : verdict; size 1024; }
delete map inet pier accepted6
add map inet pier accepted6 { type ipv6_addr : counter; size 1024; }
delete map inet pier dropped6
add map inet pier dropped6 { type ipv6_addr : counter; size 1024; }
add set inet pier ports4 { type ipv4_addr . inet_proto . inet_service; }
delete set inet pier ports4
add set inet pier allow4 { type ipv4_addr . inet_proto . inet_service . ipv4_addr; flags interval; }
delete set inet pier allow4
add set inet pier ports6 { type ipv6_addr . inet_proto . inet_service; }
delete set inet pier ports6
add set inet pier allow6 { type ipv6_addr . inet_proto . inet_service . ipv6_addr; flags interval; }
delete set inet pier allow6
delete chain inet pier src4_1
delete counter inet pier a_0a4d0063
delete counter inet pier d_0a4d0063
add counter inet pier a_0a4d000a
add counter inet pier a_0a4d000b
add counter inet pier a_fd660000000000000000000000000010
add counter inet pier d_0a4d000a
add counter inet pier d_0a4d000b
add counter inet pier d_fd660000000000000000000000000010
add element inet pier vips4 { 10.77.0.10, 10.77.0.11 }
add element inet pier open4 { 10.77.0.10 . tcp . 80 : "a_0a4d000a", 10.77.0.11 . tcp . 80 : "a_0a4d000b" }
add element inet pier ranged4 { 10.77.0.10 . tcp . 443 : goto src4_0 }
add element inet pier accepted4 { 10.77.0.10 : "a_0a4d000a", 10.77.0.11 : "a_0a4d000b" }
add element inet pier dropped4 { 10.77.0.10 : "d_0a4d000a", 10.77.0.11 : "d_0a4d000b" }
add element inet pier vips6 { fd66::10 }
add element inet pier ranged6 { fd66::10 . udp . 53 : goto src6_0 }
add element inet pier accepted6 { fd66::10 : "a_fd660000000000000000000000000010" }
add element inet pier dropped6 { fd66::10 : "d_fd660000000000000000000000000010" }
add rule inet pier forward ip daddr 10.77.0.10/31 goto vip4
add rule inet pier vip4 counter name ip daddr . meta l4proto . th dport map @open4 accept
add rule inet pier vip4 ip daddr . meta l4proto . th dport vmap @ranged4
add rule inet pier vip4 icmp type { destination-unreachable, time-exceeded, parameter-problem } counter name ip daddr map @accepted4 accept
add rule inet pier vip4 ip frag-off & 0x1fff != 0 counter name ip daddr map @accepted4 accept
add rule inet pier vip4 counter name ip daddr map @dropped4 counter name dropped_port drop
add rule inet pier src4_0 ip saddr { 192.0.2.0/24 } counter name ip daddr map @accepted4 accept
add rule inet pier src4_0 counter name ip daddr map @dropped4 counter name dropped_source drop
add rule inet pier forward ip6 daddr fd66::10/128 goto vip6
add rule inet pier vip6 counter name ip6 daddr . meta l4proto . th dport map @open6 accept
add rule inet pier vip6 ip6 daddr . meta l4proto . th dport vmap @ranged6
add rule inet pier vip6 icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem } counter name ip6 daddr map @accepted6 accept
add rule inet pier vip6 frag frag-off != 0 counter name ip6 daddr map @accepted6 accept
add rule inet pier vip6 counter name ip6 daddr map @dropped6 counter name dropped_port drop
add rule inet pier src6_0 ip6 saddr { 2001:db8::/32 } counter name ip6 daddr map @accepted6 accept
add rule inet pier src6_0 counter name ip6 daddr map @dropped6 counter name dropped_source drop
"#;

    #[test]
    fn render_golden_with_vip_counters() {
        let existing: BTreeSet<String> = [
            "a_0a4d000a",
            "a_0a4d0063",
            "d_0a4d0063",
            "dropped_port",
            "dropped_source",
            "src4_0",
            "src4_1",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let text = render_layout(&firewall(&sample()), &counted(), &existing, false);
        assert_eq!(text, GOLDEN, "got:\n{text}");
    }

    #[test]
    fn render_names_no_other_table() {
        for fresh in [false, true] {
            let text = render(&firewall(&sample()), &BTreeSet::new(), fresh);
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let words: Vec<&str> = line.split_whitespace().collect();
                for (i, w) in words.iter().enumerate() {
                    if *w == "table" {
                        assert_eq!(
                            words.get(i + 1..i + 3),
                            Some(&["inet", "pier"][..]),
                            "{line}"
                        );
                    }
                    if *w == "inet" && i + 1 < words.len() && words[i - 1] != "table" {
                        assert_eq!(words[i + 1], "pier", "{line}");
                    }
                }
            }
        }
        let fresh = render(&firewall(&sample()), &BTreeSet::new(), true);
        assert!(fresh.contains("delete table inet pier\n"));
        assert!(!fresh.contains("delete counter"));
    }

    #[test]
    fn empty_firewall_renders_no_elements() {
        let text = render(&Firewall::new(), &BTreeSet::new(), false);
        assert!(!text.contains("add element"));
        assert!(!text.contains("add counter"));
        // No VIP, no cover: nothing in the forward chain, and the four
        // rules of each VIP chain, never reached.
        assert!(!text.contains("add rule inet pier forward"));
        assert_eq!(text.matches("add rule").count(), 8, "the fixed rules");
        // With vip_counters, one more per family: the `open` map's.
        let text = render_layout(&Firewall::new(), &counted(), &BTreeSet::new(), false);
        assert_eq!(text.matches("add rule").count(), 10, "the fixed rules");
    }

    #[test]
    fn rules_grow_with_distinct_source_sets_not_with_vips() {
        // 1,000 VIPs, each with port 80 open and 443 limited to one of two
        // source lists: two source chains of two rules each.
        let lists: [&[&str]; 2] = [&["192.0.2.0/24"], &["198.51.100.0/24", "203.0.113.9/32"]];
        let big: Desired = Desired {
            generation: 1,
            announcements: (0..1000u32)
                .map(|i| {
                    ann(
                        &Ipv4Addr::from(0x0a4d_0000 + i).to_string(),
                        AnnounceMode::BgpSelf,
                        &[("80/tcp", &[]), ("443/tcp", lists[i as usize % 2])],
                    )
                })
                .collect(),
        };
        let fw = firewall(&big);
        let text = render(&fw, &BTreeSet::new(), false);
        // One cover (10.77.0.0/22) for the IPv4 VIPs, none for IPv6.
        assert!(text.contains("add rule inet pier forward ip daddr 10.77.0.0/22 goto vip4\n"));
        assert!(!text.contains("add rule inet pier forward ip6"));
        assert_eq!(text.matches("add rule").count(), 9 + 2 * 2);
        assert!(text.contains("src4_0 ip saddr { 192.0.2.0/24 } accept"));
        assert!(text.contains("src4_1 ip saddr { 198.51.100.0/24, 203.0.113.9/32 } accept"));
        assert_eq!(text.matches(": goto src4_").count(), 1000);
        assert_eq!(text.matches(" . tcp . 80 : accept").count(), 1000);
        let (_, objects) = render_with_objects(&fw, &Layout::default(), &BTreeSet::new(), false);
        // A drop counter per VIP (no accept counters by default), and the
        // two source chains.
        assert_eq!(objects.len(), 1000 + 2);
        assert!(objects.contains("src4_1"));
        // Applied again with those objects: nothing stale to delete.
        let again = render(&fw, &objects, false);
        assert!(!again.contains("delete chain"));
        assert!(!again.contains("delete counter"));
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn cover_of(list: &[&str]) -> Vec<String> {
        let vips = ips(list);
        covers(&vips.iter().collect::<Vec<_>>())
            .iter()
            .map(|n| n.to_string())
            .collect()
    }

    #[test]
    fn covers_follow_the_pools() {
        assert!(cover_of(&[]).is_empty());
        assert_eq!(cover_of(&["10.77.0.9"]), ["10.77.0.9/32"]);
        // One pool: one cover, however many VIPs.
        assert_eq!(
            cover_of(&["10.77.0.10", "10.77.3.200", "10.77.1.1"]),
            ["10.77.0.0/22"]
        );
        // Two pools far apart: two covers, not one as wide as both.
        assert_eq!(
            cover_of(&["192.168.5.1", "10.77.0.1", "10.77.0.77", "192.168.5.20"]),
            ["10.77.0.0/25", "192.168.5.0/27"]
        );
        // Within a /16 nothing is cut: fewer rules for every other packet.
        assert_eq!(cover_of(&["10.77.0.1", "10.77.200.1"]), ["10.77.0.0/16"]);
        // More far-apart groups than covers: the closest share one.
        assert_eq!(
            cover_of(&["1.0.0.1", "2.0.0.1", "60.0.0.1", "120.0.0.1", "240.0.0.1"]),
            ["0.0.0.0/6", "60.0.0.1/32", "120.0.0.1/32", "240.0.0.1/32"]
        );
        assert_eq!(
            cover_of(&["fd66::10", "fd66::1:2", "2001:db8:7::1"]),
            ["2001:db8:7::1/128", "fd66::/111"]
        );
        // A cover as wide as the family matches on the family.
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert_eq!(cover_match(&V4, &all), "meta nfproto ipv4");
        let net: IpNet = "fd66::/64".parse().unwrap();
        assert_eq!(cover_match(&V6, &net), "ip6 daddr fd66::/64");
    }

    proptest::proptest! {
        #[test]
        fn covers_hold_every_vip(
            v4 in proptest::collection::vec(proptest::prelude::any::<u32>(), 0..40),
            v6 in proptest::collection::vec(proptest::prelude::any::<u128>(), 0..40),
        ) {
            let families: [Vec<IpAddr>; 2] = [
                v4.into_iter().map(|b| IpAddr::V4(b.into())).collect(),
                v6.into_iter().map(|b| IpAddr::V6(b.into())).collect(),
            ];
            for vips in families {
                let refs: Vec<&IpAddr> = vips.iter().collect();
                let nets = covers(&refs);
                proptest::prop_assert!(nets.len() <= MAX_COVERS);
                proptest::prop_assert_eq!(nets.is_empty(), vips.is_empty());
                for vip in &vips {
                    proptest::prop_assert!(nets.iter().any(|n| n.contains(vip)), "{} not in {:?}", vip, nets);
                }
                for (i, a) in nets.iter().enumerate() {
                    proptest::prop_assert_eq!(*a, a.trunc());
                    for b in &nets[i + 1..] {
                        proptest::prop_assert!(!a.contains(b) && !b.contains(a), "{} / {}", a, b);
                    }
                }
            }
        }
    }

    fn rules(text: &str) -> Vec<&str> {
        text.lines().filter(|l| l.starts_with("add rule")).collect()
    }

    #[test]
    fn by_default_one_verdict_map_decides_without_vip_counters() {
        let layout = Layout::default();
        assert!(!layout.vip_counters);
        let fw = firewall(&sample());
        let existing = BTreeSet::from(["a_0a4d000a".to_string(), "d_0a4d000a".to_string()]);
        let (text, objects) = render_with_objects(&fw, &layout, &existing, false);
        assert_eq!(
            rules(&text)[..5],
            [
                "add rule inet pier forward ip daddr 10.77.0.10/31 goto vip4",
                "add rule inet pier vip4 ip daddr . meta l4proto . th dport vmap @ranged4",
                "add rule inet pier vip4 icmp type { destination-unreachable, time-exceeded, parameter-problem } accept",
                "add rule inet pier vip4 ip frag-off & 0x1fff != 0 accept",
                "add rule inet pier vip4 counter name ip daddr map @dropped4 counter name dropped_port drop",
            ],
            "{text}"
        );
        assert!(text.contains(
            "add element inet pier ranged4 { 10.77.0.10 . tcp . 80 : accept, 10.77.0.10 . tcp . 443 : goto src4_0, 10.77.0.11 . tcp . 80 : accept }"
        ));
        assert!(text.contains("add rule inet pier src4_0 ip saddr { 192.0.2.0/24 } accept\n"));
        assert!(!text.contains("add element inet pier open4"));
        assert!(!text.contains("add element inet pier accepted4"));
        assert!(
            !text.contains("map @accepted"),
            "no per-VIP accepted counter anywhere"
        );
        assert!(!text.contains("flow add"));
        // The accepted counters go; the dropped ones stay (and keep counting).
        assert!(text.contains("delete counter inet pier a_0a4d000a\n"));
        assert!(!text.contains("delete counter inet pier d_0a4d000a"));
        assert!(objects.contains("d_0a4d000a") && !objects.contains("a_0a4d000a"));
        // Per family: the cover, four in the VIP chain; two per source chain.
        assert_eq!(text.matches("add rule").count(), 2 * 5 + 2 * 2);
        assert_eq!(text, render(&fw, &existing, false), "render: the default");
        // Asked for, the counters come back: one lookup in `open4` both
        // matches an open port and names its counter.
        let counted = render_layout(&fw, &counted(), &existing, false);
        assert!(counted.contains(
            "add rule inet pier vip4 counter name ip daddr . meta l4proto . th dport map @open4 accept\n"
        ));
        assert!(counted.contains(
            "add rule inet pier vip6 counter name ip6 daddr . meta l4proto . th dport map @open6 accept\n"
        ));
        assert!(counted
            .contains("add element inet pier open4 { 10.77.0.10 . tcp . 80 : \"a_0a4d000a\""));
        assert!(counted.contains("add counter inet pier a_0a4d000a\n"));
    }

    #[test]
    fn sets_are_sized_for_the_fixed_hash() {
        assert_eq!(set_size(0), 1024);
        assert_eq!(set_size(3), 1024);
        assert_eq!(set_size(10_001), 32_768);
        let text = render(&firewall(&sample()), &BTreeSet::new(), false);
        assert!(text.contains("add set inet pier vips4 { type ipv4_addr; size 1024; }"));
    }

    #[test]
    fn status_offload_is_what_the_table_holds() {
        let spec = |devices: &[&str], hardware| {
            Some(FlowtableSpec {
                devices: devices.iter().map(|d| d.to_string()).collect(),
                hardware,
            })
        };
        let layout = |flowtable| Layout {
            vip_counters: false,
            flowtable,
        };
        assert_eq!(layout(None).offload_mode(), None);
        assert_eq!(
            layout(spec(&["g0"], false)).offload_mode(),
            Some("software")
        );
        assert_eq!(layout(spec(&["g0"], true)).offload_mode(), Some("hardware"));
        // No interface to hook: no flowtable in the table, none in status.
        let none = layout(spec(&[], false));
        assert_eq!(none.offload_mode(), None);
        let text = render_layout(&firewall(&sample()), &none, &BTreeSet::new(), false);
        assert!(!text.contains("flowtable"), "{text}");
    }

    #[test]
    fn flowtable_offloads_only_what_the_rules_accept() {
        let spec = FlowtableSpec {
            devices: BTreeSet::from(["eth-lan".to_string(), "eth-up".to_string()]),
            hardware: false,
        };
        let fw = firewall(&sample());
        for counters in [true, false] {
            let layout = Layout {
                vip_counters: counters,
                flowtable: Some(spec.clone()),
            };
            let (text, objects) = render_with_objects(&fw, &layout, &BTreeSet::new(), false);
            assert!(
                text.contains(
                    "add flowtable inet pier ft { hook ingress priority 0; devices = { eth-lan, eth-up }; }\n"
                ),
                "{text}"
            );
            assert!(!text.contains("delete flowtable"), "none to delete");
            assert!(objects.contains(FLOWTABLE));
            // `flow add` ends its rule for every packet it does not offload
            // (the first ones of every connection), so it is a rule of its
            // own in fwd4/fwd6, followed by the accept; every accept of VIP
            // traffic to an open port or an allowed source goes there, and
            // nothing else does (drops, ICMP, the VIP check).
            let all = rules(&text);
            for f in ["4", "6"] {
                let fwd: Vec<String> = all
                    .iter()
                    .filter(|r| r.starts_with(&format!("add rule inet pier fwd{f} ")))
                    .map(|r| r.to_string())
                    .collect();
                assert_eq!(
                    fwd,
                    [
                        format!("add rule inet pier fwd{f} flow add @ft"),
                        format!("add rule inet pier fwd{f} accept"),
                    ],
                    "{text}"
                );
            }
            for r in &all {
                if r.contains("flow add") {
                    assert!(
                        r.ends_with(" fwd4 flow add @ft") || r.ends_with(" fwd6 flow add @ft"),
                        "{r}"
                    );
                }
                if r.contains(" vip4 ") || r.contains(" vip6 ") || r.contains(" src") {
                    // A VIP chain's or a source chain's accept is the
                    // flowtable's (ICMP errors and fragments aside).
                    assert!(
                        !r.ends_with(" accept") || r.contains("icmp") || r.contains("frag"),
                        "an accept that skips the flowtable: {r}"
                    );
                }
                if r.contains("drop")
                    || r.contains("icmp")
                    || r.contains("frag")
                    || r.contains(" forward ")
                {
                    assert!(!r.contains("fwd"), "{r}");
                }
            }
            if counters {
                assert!(text.contains("map @open4 goto fwd4\n"), "{text}");
                assert!(text.contains(
                    "src4_0 ip saddr { 192.0.2.0/24 } counter name ip daddr map @accepted4 goto fwd4\n"
                ));
            } else {
                assert!(text.contains("10.77.0.10 . tcp . 80 : goto fwd4"));
                assert!(text.contains("src4_0 ip saddr { 192.0.2.0/24 } goto fwd4\n"));
            }
            // Rewritten: the flowtable is recreated, so offloaded flows meet
            // the new rules on their next packet.
            let again = render_layout(&fw, &layout, &objects, false);
            let del = again
                .find("delete flowtable inet pier ft\n")
                .expect("deleted");
            let flush = again.find("flush chain inet pier src4_0").expect("flushed");
            let add = again.find("add flowtable inet pier ft").expect("added");
            assert!(flush < del && del < add, "{again}");
        }
        let hw = Layout {
            vip_counters: true,
            flowtable: Some(FlowtableSpec {
                hardware: true,
                ..spec.clone()
            }),
        };
        assert!(render_layout(&fw, &hw, &BTreeSet::new(), false)
            .contains("devices = { eth-lan, eth-up }; flags offload; }"));
        // No device to hook: no flowtable; one that goes away is deleted.
        let none = Layout {
            vip_counters: true,
            flowtable: Some(FlowtableSpec {
                devices: BTreeSet::new(),
                hardware: false,
            }),
        };
        let text = render_layout(&fw, &none, &BTreeSet::from([FLOWTABLE.to_string()]), false);
        assert!(!text.contains("add flowtable") && !text.contains("flow add"));
        assert!(text.contains("delete flowtable inet pier ft\n"));
        // The default layout never mentions one.
        assert!(!render(&fw, &BTreeSet::new(), false).contains("flow"));
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"flowtable": {"family": "inet", "name": "ft", "table": "other", "handle": 3}},
          {"flowtable": {"family": "inet", "name": "ft", "table": "pier", "handle": 4}}]}"#;
        assert!(has_flowtable_json(json).unwrap());
        assert!(!has_flowtable_json(r#"{"nftables": []}"#).unwrap());
    }

    #[test]
    fn a_port_no_source_may_use_gets_a_chain_that_only_drops() {
        // An IPv4 VIP whose only allowed source is IPv6.
        let d = Desired {
            generation: 1,
            announcements: vec![ann(
                "10.77.0.10",
                AnnounceMode::BgpSelf,
                &[("443/tcp", &["fd00::/8"])],
            )],
        };
        let text = render(&firewall(&d), &BTreeSet::new(), false);
        assert!(text.contains("10.77.0.10 . tcp . 443 : goto src4_0"));
        assert!(text.contains(
            "add rule inet pier src4_0 counter name ip daddr map @dropped4 counter name dropped_source drop"
        ));
        assert!(!text.contains("src4_0 ip saddr"));
    }

    #[test]
    fn source_chain_names() {
        for good in ["src4_0", "src6_12"] {
            assert!(is_source_chain(good), "{good}");
        }
        for bad in ["src4_", "src4_x", "src5_1", "vip4", "forward", "src4_1a"] {
            assert!(!is_source_chain(bad), "{bad}");
        }
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"chain": {"family": "inet", "table": "pier", "name": "vip4", "handle": 1}},
          {"chain": {"family": "inet", "table": "pier", "name": "src4_3", "handle": 2}},
          {"chain": {"family": "inet", "table": "other", "name": "src4_4", "handle": 3}},
          {"chain": {"family": "inet", "table": "pier", "name": "src6_0", "handle": 4}}]}"#;
        assert_eq!(
            parse_source_chains_json(json).unwrap(),
            BTreeSet::from(["src4_3".to_string(), "src6_0".to_string()])
        );
        assert!(parse_source_chains_json("[").is_err());
    }

    #[test]
    fn counter_names_round_trip() {
        for ip in ["10.77.0.10", "0.0.0.0", "fd66::10", "::"] {
            let ip: IpAddr = ip.parse().unwrap();
            for p in ['a', 'd'] {
                assert_eq!(parse_counter_name(&counter_name(p, &ip)), Some((p, ip)));
            }
        }
        for bad in [
            "dropped_port",
            "a_",
            "a_xyz",
            "x_0a4d000a",
            "a_0a4d000",
            "a_+a4d000a",
        ] {
            assert_eq!(parse_counter_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn counters_parse_from_nft_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"counter": {"family": "inet", "name": "dropped_port", "table": "pier", "handle": 4, "packets": 2, "bytes": 120}},
          {"counter": {"family": "inet", "name": "a_0a4d000a", "table": "pier", "handle": 5, "packets": 7, "bytes": 700}},
          {"counter": {"family": "inet", "name": "d_0a4d000a", "table": "pier", "handle": 6, "packets": 1, "bytes": 60}},
          {"counter": {"family": "inet", "name": "a_0a4d000b", "table": "other", "handle": 6, "packets": 1, "bytes": 60}},
          {"counter": {"family": "ip", "name": "a_0a4d000c", "table": "pier", "handle": 2, "packets": 1, "bytes": 60}},
          {"counter": {"family": "inet", "name": "d_0a4d000d", "table": "pier", "handle": 8, "packets": 4000000, "bytes": 6000000000}}]}"#;
        let objs = parse_counters_json(json).unwrap();
        assert_eq!(objs.len(), 4, "inet pier's only");
        assert_eq!(
            objs["d_0a4d000d"].bytes, 6_000_000_000,
            "byte counters pass 2^32 in minutes"
        );
        let per_vip = vip_counters(&objs);
        assert_eq!(
            per_vip[&"10.77.0.10".parse::<IpAddr>().unwrap()],
            VipCounters {
                accepted: Some(Counter {
                    packets: 7,
                    bytes: 700
                }),
                dropped: Counter {
                    packets: 1,
                    bytes: 60
                },
            }
        );
        assert_eq!(per_vip.len(), 2);
        // No `a_` counter (vip_counters = false): accepts are not counted,
        // which is not the same as none accepted.
        let other = per_vip[&"10.77.0.13".parse::<IpAddr>().unwrap()];
        assert_eq!(other.accepted, None);
        assert_eq!(other.dropped.packets, 4_000_000);
        assert!(parse_counters_json("not json").is_err());
        assert!(parse_counters_json("{}").unwrap().is_empty());
    }
}
