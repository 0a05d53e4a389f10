//! pier's config schema: the sections and keys of the config file
//! (docs/configuration.md), their defaults and their validation, including
//! the checks across sections (overlapping pools, static services naming a
//! pool). Values and positions are read with `toml_reader.rs`.

mod bgp;
mod gateway;
mod health;
mod kubernetes;
mod pools;
mod static_services;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use super::toml_reader::{document, Diagnostics, Section, Span};
use super::{Config, ConfigErrors, HealthConfig};
use crate::model::Pool;
use pools::RangeOrigin;

const TOP: &[&str] = &[
    "gateway",
    "kubernetes",
    "bgp",
    "pools",
    "health",
    "static_services",
];

pub(super) fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let mut diag = Diagnostics::new(path, text);
    let Some(doc) = document(&mut diag, text) else {
        return Err(diag.into_errors());
    };
    let top = Section::new(&mut diag, doc.get_ref(), "", 0..0, TOP);

    let gateway = match top.table(&mut diag, "gateway") {
        Some((t, span)) => gateway::read(&mut diag, t, span),
        None => {
            diag.err(
                &(0..0),
                "gateway",
                "the [gateway] section is required (router_id at least)",
            );
            None
        }
    };
    let kubernetes = top
        .table(&mut diag, "kubernetes")
        .and_then(|(t, span)| kubernetes::read(&mut diag, t, span));
    let bgp = top
        .table(&mut diag, "bgp")
        .and_then(|(t, span)| bgp::read(&mut diag, t, span));
    let health = match top.table(&mut diag, "health") {
        Some((t, span)) => health::read(&mut diag, t, span),
        None => HealthConfig::default(),
    };

    // Pools, then the checks across them.
    let mut pools: Vec<Pool> = Vec::new();
    let mut pool_spans: Vec<(Span, String)> = Vec::new();
    let mut origins: Vec<RangeOrigin> = Vec::new();
    for (i, (t, span)) in top.tables(&mut diag, "pools").into_iter().enumerate() {
        let key = format!("pools[{i}]");
        if let Some((p, ranges)) = pools::read(&mut diag, t, span.clone(), &key) {
            let idx = pools.len();
            for (range, span, key) in ranges {
                origins.push(RangeOrigin {
                    pool: idx,
                    range,
                    span,
                    key,
                });
            }
            pools.push(p);
            pool_spans.push((span, key));
        }
    }
    pools::check(&mut diag, &pools, &pool_spans, &origins);

    let mut static_services = Vec::new();
    let mut names = BTreeMap::new();
    for (i, (t, span)) in top
        .tables(&mut diag, "static_services")
        .into_iter()
        .enumerate()
    {
        let key = format!("static_services[{i}]");
        if let Some(s) = static_services::read(&mut diag, t, span.clone(), &key, &pools) {
            if let Some(prev) = names.insert(s.key.clone(), key.clone()) {
                diag.err(
                    &span,
                    &format!("{key}.name"),
                    format!("{} is already defined by {prev}", s.key),
                );
            } else {
                static_services.push(s);
            }
        }
    }

    if diag.is_empty() {
        if let Some(gateway) = gateway {
            return Ok(Config {
                path: path.to_path_buf(),
                gateway,
                kubernetes,
                bgp,
                pools,
                health,
                static_services,
            });
        }
    }
    Err(diag.into_errors())
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address"))
}
