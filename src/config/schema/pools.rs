//! `[[pools]]`, and the checks across pools (names, overlapping ranges).

use std::collections::BTreeMap;

use toml::de::{DeTable, DeValue};

use crate::config::toml_reader::{Diagnostics, Located, Section, Span};
use crate::model::{
    BgpAttributes, Community, IpRange, LargeCommunity, NextHopMode, Pool, PoolMode,
};

const POOL: &[&str] = &[
    "name",
    "addresses",
    "mode",
    "next_hop",
    "interface",
    "namespaces",
    "namespace_selector",
    "node_selector",
    "priority",
    "auto_assign",
    "disabled",
    "communities",
    "large_communities",
    "local_pref",
    "med",
];

/// Where each range of each pool came from, for overlap messages.
pub(super) struct RangeOrigin {
    pub pool: usize,
    pub range: IpRange,
    pub span: Span,
    pub key: String,
}

pub(super) fn read(
    diag: &mut Diagnostics<'_>,
    t: &DeTable<'_>,
    span: Span,
    key: &str,
) -> Option<(Pool, Vec<Located<IpRange>>)> {
    let s = Section::new(diag, t, key, span, POOL);
    let name = s.parsed(diag, "name", |v| {
        if v.is_empty() {
            Err("a pool name cannot be empty".into())
        } else if !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            Err(format!("{v:?}: use letters, digits, '-', '.' and '_' only"))
        } else {
            Ok(v.to_string())
        }
    });
    if s.raw("name").is_none() {
        s.missing(diag, "name");
    }
    let ranges = s.list(diag, "addresses", |v| v.parse::<IpRange>());
    match s.raw("addresses") {
        None => s.missing(diag, "addresses"),
        Some(v) if matches!(v.get_ref(), DeValue::Array(a) if a.is_empty()) => diag.err(
            &v.span(),
            &s.key("addresses"),
            "a pool needs at least one address, range or CIDR",
        ),
        _ => {}
    }
    let mode = s
        .parsed(diag, "mode", |v| match v {
            "bgp" => Ok(PoolMode::Bgp),
            "l2" => Ok(PoolMode::L2),
            _ => Err(format!("{v:?}: expected \"bgp\" or \"l2\"")),
        })
        .map_or(PoolMode::Bgp, |(m, _)| m);
    let next_hop = s.parsed(diag, "next_hop", |v| match v {
        "nodes" => Ok(NextHopMode::Nodes),
        "self" => Ok(NextHopMode::Gateway),
        _ => Err(format!("{v:?}: expected \"nodes\" or \"self\"")),
    });
    if let (PoolMode::L2, Some((_, sp))) = (mode, &next_hop) {
        diag.err(
            sp,
            &s.key("next_hop"),
            "an l2 pool has no BGP next hop (pier answers ARP/NDP and forwards itself)",
        );
    }
    let interface = s.str(diag, "interface");
    match (mode, &interface) {
        (PoolMode::L2, None) if s.raw("interface").is_none() => diag.err(
            &s.span,
            &s.key("interface"),
            "an l2 pool needs the LAN interface pier answers ARP/NDP on",
        ),
        (PoolMode::Bgp, Some((_, sp))) => {
            diag.err(sp, &s.key("interface"), "only l2 pools take an interface")
        }
        _ => {}
    }
    let namespaces = s
        .list(diag, "namespaces", |v| Ok(v.to_string()))
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    let namespace_selector = s.labels(diag, "namespace_selector");
    let node_selector = s.labels(diag, "node_selector");
    let priority = s
        .int(diag, "priority", i32::MIN as i64, i32::MAX as i64)
        .map_or(0, |(n, _)| n as i32);
    let auto_assign = s.bool(diag, "auto_assign", true);
    let disabled = s.bool(diag, "disabled", false);
    let communities = s
        .list(diag, "communities", |v| v.parse::<Community>())
        .into_iter()
        .map(|(c, _, _)| c)
        .collect();
    let large_communities = s
        .list(diag, "large_communities", |v| v.parse::<LargeCommunity>())
        .into_iter()
        .map(|(c, _, _)| c)
        .collect();
    let local_pref = s
        .int(diag, "local_pref", 0, u32::MAX as i64)
        .map(|(n, _)| n as u32);
    let med = s
        .int(diag, "med", 0, u32::MAX as i64)
        .map(|(n, _)| n as u32);
    let mut sorted: Vec<IpRange> = ranges.iter().map(|(r, _, _)| *r).collect();
    sorted.sort();
    Some((
        Pool {
            name: name?.0,
            ranges: sorted,
            mode,
            next_hop: next_hop.map_or(NextHopMode::Nodes, |(n, _)| n),
            interface: interface.map(|(i, _)| i),
            namespaces,
            namespace_selector,
            priority,
            auto_assign,
            disabled,
            node_selector,
            bgp: BgpAttributes {
                communities,
                large_communities,
                local_pref,
                med,
            },
        },
        ranges,
    ))
}

/// Pool names are unique and no address is in two ranges.
pub(super) fn check(
    diag: &mut Diagnostics<'_>,
    pools: &[Pool],
    spans: &[(Span, String)],
    origins: &[RangeOrigin],
) {
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    for (p, (span, key)) in pools.iter().zip(spans) {
        if let Some(prev) = names.insert(&p.name, key) {
            diag.err(
                span,
                &format!("{key}.name"),
                format!("pool {:?} is already defined by {prev}", p.name),
            );
        }
    }
    // Overlaps, within a pool and across pools: sort by start, compare
    // each range with the ones it can reach.
    let mut sorted: Vec<&RangeOrigin> = origins.iter().collect();
    sorted.sort_by_key(|o| (o.range.family(), o.range.start));
    for (i, a) in sorted.iter().enumerate() {
        for b in &sorted[i + 1..] {
            if b.range.family() != a.range.family() || b.range.start > a.range.end {
                break;
            }
            let Some(common) = a.range.intersection(&b.range) else {
                continue;
            };
            let (first, second) = if (a.span.start, &a.key) <= (b.span.start, &b.key) {
                (a, b)
            } else {
                (b, a)
            };
            let msg = if first.pool == second.pool {
                format!(
                    "{} overlaps {} ({}) in the same pool: {common}",
                    second.range, first.key, first.range
                )
            } else {
                format!(
                    "{} overlaps pool {:?} ({} {}): {common} would belong to both",
                    second.range, pools[first.pool].name, first.key, first.range
                )
            };
            diag.err(&second.span, &second.key, msg);
        }
    }
}
