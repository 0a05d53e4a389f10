//! `[[static_services]]`: Services defined in the file instead of Kubernetes.

use std::net::IpAddr;

use ipnet::IpNet;
use toml::de::{DeTable, DeValue};

use super::parse_ip;
use crate::config::toml_reader::{Diagnostics, Section, Span};
use crate::config::{StaticHealth, StaticService};
use crate::model::{Family, Pool, PortSpec, ServiceKey};

const STATIC: &[&str] = &[
    "name",
    "pool",
    "ip",
    "families",
    "ports",
    "nodes",
    "sharing_key",
    "source_ranges",
    "health",
];

pub(super) fn read(
    diag: &mut Diagnostics<'_>,
    t: &DeTable<'_>,
    span: Span,
    key: &str,
    pools: &[Pool],
) -> Option<StaticService> {
    let s = Section::new(diag, t, key, span, STATIC);
    let name = s.parsed(diag, "name", |v| v.parse::<ServiceKey>());
    if s.raw("name").is_none() {
        s.missing(diag, "name");
    }
    let pool = s.str(diag, "pool");
    if s.raw("pool").is_none() {
        s.missing(diag, "pool");
    }
    let pool_def = pool.as_ref().and_then(|(p, sp)| {
        let found = pools.iter().find(|x| &x.name == p);
        if found.is_none() {
            let known: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
            diag.err(
                sp,
                &s.key("pool"),
                format!(
                    "no pool named {p:?} (pools: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
        found
    });
    let ips: Vec<IpAddr> = s
        .parsed(diag, "ip", |v| {
            let mut ips: Vec<IpAddr> = Vec::new();
            for part in v.split(',').map(str::trim) {
                let ip = parse_ip(part)?;
                if ips.iter().any(|p| Family::of(p) == Family::of(&ip)) {
                    return Err(format!("{v:?}: at most one address per family"));
                }
                ips.push(ip);
            }
            Ok(ips)
        })
        .map(|(ips, sp)| {
            if let Some(p) = pool_def {
                for ip in &ips {
                    if !p.contains(ip) {
                        diag.err(
                            &sp,
                            &s.key("ip"),
                            format!("{ip} is not in pool {:?}", p.name),
                        );
                    }
                }
            }
            ips
        })
        .unwrap_or_default();
    let fam_list = s.list(diag, "families", |v| match v {
        "ipv4" => Ok(Family::V4),
        "ipv6" => Ok(Family::V6),
        _ => Err(format!("{v:?}: expected \"ipv4\" or \"ipv6\"")),
    });
    let mut families: Vec<Family> = if ips.is_empty() {
        fam_list.iter().map(|(f, _, _)| *f).collect()
    } else {
        ips.iter().map(Family::of).collect()
    };
    families.dedup();
    if let Some(p) = pool_def {
        if families.is_empty() {
            families = p.families().into_iter().take(1).collect();
        }
        for (f, sp, k) in &fam_list {
            if !p.families().contains(f) {
                diag.err(sp, k, format!("pool {:?} has no {f} addresses", p.name));
            }
        }
    }
    let ports: Vec<PortSpec> = s
        .list(diag, "ports", |v| v.parse::<PortSpec>())
        .into_iter()
        .map(|(p, _, _)| p)
        .collect();
    match s.raw("ports") {
        None => s.missing(diag, "ports"),
        Some(v) if matches!(v.get_ref(), DeValue::Array(a) if a.is_empty()) => diag.err(
            &v.span(),
            &s.key("ports"),
            "at least one port (e.g. \"80/tcp\")",
        ),
        _ => {}
    }
    let nodes: Vec<IpAddr> = s
        .list(diag, "nodes", parse_ip)
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    match s.raw("nodes") {
        None => s.missing(diag, "nodes"),
        Some(v) => {
            for f in &families {
                if !nodes.iter().any(|n| Family::of(n) == *f) && !nodes.is_empty() {
                    diag.err(
                        &v.span(),
                        &s.key("nodes"),
                        format!("no {f} node address for the {f} VIP"),
                    );
                }
            }
            if matches!(v.get_ref(), DeValue::Array(a) if a.is_empty()) {
                diag.err(
                    &v.span(),
                    &s.key("nodes"),
                    "at least one node address (the next hops)",
                );
            }
        }
    }
    let sharing_key = s.str(diag, "sharing_key").map(|(k, _)| k);
    let source_ranges: Vec<IpNet> = s
        .list(diag, "source_ranges", |v| {
            v.trim()
                .parse::<IpNet>()
                .map_err(|_| format!("{v:?} is not a CIDR"))
        })
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    let health = match s.raw("health") {
        None => StaticHealth::KubeProxy,
        Some(v) => match v.get_ref() {
            DeValue::String(h) if h == "kube-proxy" => StaticHealth::KubeProxy,
            DeValue::String(h) if h == "none" => StaticHealth::None,
            DeValue::Integer(_) => s
                .int(diag, "health", 1, 65535)
                .map_or(StaticHealth::KubeProxy, |(n, _)| {
                    StaticHealth::Port(n as u16)
                }),
            _ => {
                diag.err(
                    &v.span(),
                    &s.key("health"),
                    "expected \"kube-proxy\", \"none\" or a port number",
                );
                StaticHealth::KubeProxy
            }
        },
    };
    Some(StaticService {
        key: name?.0,
        pool: pool?.0,
        ips,
        families,
        ports,
        nodes,
        sharing_key,
        source_ranges,
        health,
    })
}
