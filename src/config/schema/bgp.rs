//! `[bgp]` and `[[bgp.peers]]`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use toml::de::DeTable;

use super::parse_ip;
use crate::config::toml_reader::{Diagnostics, Section, Span};
use crate::config::{BgpConfig, PeerBfd, PeerConfig};
use crate::model::Family;

const BGP: &[&str] = &[
    "asn",
    "listen",
    "listen_port",
    "listen_addresses",
    "graceful_restart",
    "restart_time_s",
    "hold_time",
    "peers",
];
const PEER: &[&str] = &[
    "address",
    "asn",
    "hold_time",
    "keepalive_s",
    "connect_retry_s",
    "password_file",
    "passive",
    "multihop_ttl",
    "gtsm",
    "port",
    "local_asn",
    "source_address",
    "families",
    "add_path",
    "max_paths",
    "bfd",
    "bfd_min_rx_ms",
    "bfd_min_tx_ms",
    "bfd_multiplier",
    "node_selector",
];

/// RFC 4271 §4.2: zero, or at least three seconds.
fn hold_time(diag: &mut Diagnostics<'_>, s: &Section<'_, '_>, default: u16) -> u16 {
    match s.int(diag, "hold_time", 0, 65535) {
        Some((n, span)) if n == 1 || n == 2 => {
            diag.err(
                &span,
                &s.key("hold_time"),
                format!(
                    "{n}: a hold time is 0 (no keepalives) or at least 3 seconds (RFC 4271 §4.2)"
                ),
            );
            default
        }
        Some((n, _)) => n as u16,
        None => default,
    }
}

pub(super) fn read(diag: &mut Diagnostics<'_>, t: &DeTable<'_>, span: Span) -> Option<BgpConfig> {
    let s = Section::new(diag, t, "bgp", span, BGP);
    let asn = s
        .int(diag, "asn", 1, u32::MAX as i64)
        .map(|(n, _)| n as u32);
    if asn.is_none() && s.raw("asn").is_none() {
        s.missing(diag, "asn");
    }
    let listen = s.bool(diag, "listen", true);
    let listen_port = s
        .int(diag, "listen_port", 1, 65535)
        .map_or(179, |(n, _)| n as u16);
    let listen_addresses = s
        .list(diag, "listen_addresses", parse_ip)
        .into_iter()
        .map(|(a, _, _)| a)
        .collect();
    let graceful_restart = s.bool(diag, "graceful_restart", true);
    let restart_time_s = s
        .int(diag, "restart_time_s", 1, 4095)
        .map_or(120, |(n, _)| n as u16);
    let default_hold = hold_time(diag, &s, 90);
    let mut peers: Vec<PeerConfig> = Vec::new();
    let mut seen: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (i, (pt, pspan)) in s.tables(diag, "peers").into_iter().enumerate() {
        let key = format!("bgp.peers[{i}]");
        if let Some(p) = peer(diag, pt, pspan.clone(), &key, default_hold) {
            if let Some(prev) = seen.insert(p.address, key.clone()) {
                diag.err(
                    &pspan,
                    &format!("{key}.address"),
                    format!("peer {} is already defined by {prev}", p.address),
                );
            } else {
                peers.push(p);
            }
        }
    }
    Some(BgpConfig {
        asn: asn?,
        listen,
        listen_port,
        listen_addresses,
        graceful_restart,
        restart_time_s,
        peers,
    })
}

fn peer(
    diag: &mut Diagnostics<'_>,
    t: &DeTable<'_>,
    span: Span,
    key: &str,
    default_hold: u16,
) -> Option<PeerConfig> {
    let s = Section::new(diag, t, key, span, PEER);
    let address = s.parsed(diag, "address", parse_ip).map(|(a, _)| a);
    if s.raw("address").is_none() {
        s.missing(diag, "address");
    }
    let asn = s
        .int(diag, "asn", 1, u32::MAX as i64)
        .map(|(n, _)| n as u32);
    if s.raw("asn").is_none() {
        s.missing(diag, "asn");
    }
    let hold = hold_time(diag, &s, default_hold);
    let keepalive_s = s.int(diag, "keepalive_s", 1, 21845).and_then(|(n, sp)| {
        if hold > 0 && n as u16 >= hold {
            diag.err(
                &sp,
                &s.key("keepalive_s"),
                format!("{n} must be less than hold_time ({hold})"),
            );
            None
        } else {
            Some(n as u16)
        }
    });
    let connect_retry_s = s
        .int(diag, "connect_retry_s", 1, 3600)
        .map_or(5, |(n, _)| n as u16);
    let password_file = s.parsed(diag, "password_file", |v| {
        if v.starts_with('/') {
            Ok(PathBuf::from(v))
        } else {
            Err(format!("{v:?} must be an absolute path"))
        }
    });
    let passive = s.bool(diag, "passive", false);
    let multihop = s.int(diag, "multihop_ttl", 1, 255);
    let gtsm = s.bool(diag, "gtsm", false);
    if let (true, Some((_, sp))) = (gtsm, &multihop) {
        diag.err(
            sp,
            &s.key("multihop_ttl"),
            "cannot be combined with gtsm = true (GTSM sends with TTL 255, RFC 5082)",
        );
    }
    let port = s.int(diag, "port", 1, 65535).map_or(179, |(n, _)| n as u16);
    let local_asn = s
        .int(diag, "local_asn", 1, u32::MAX as i64)
        .map(|(n, _)| n as u32);
    let source_address =
        s.parsed(diag, "source_address", parse_ip)
            .and_then(|(a, sp)| match address {
                Some(peer) if Family::of(&peer) != Family::of(&a) => {
                    diag.err(
                        &sp,
                        &s.key("source_address"),
                        format!("{a} is not of the family of the peer address {peer}"),
                    );
                    None
                }
                _ => Some(a),
            });
    let mut families: Vec<Family> = s
        .list(diag, "families", |v| match v {
            "ipv4" => Ok(Family::V4),
            "ipv6" => Ok(Family::V6),
            _ => Err(format!("{v:?}: expected \"ipv4\" or \"ipv6\"")),
        })
        .into_iter()
        .map(|(f, _, _)| f)
        .collect();
    if s.raw("families").is_none() {
        families = vec![Family::V4, Family::V6];
    }
    families.sort();
    families.dedup();
    let add_path = s.bool(diag, "add_path", true);
    let max_paths = s
        .int(diag, "max_paths", 1, 1024)
        .map_or(crate::config::DEFAULT_MAX_PATHS, |(n, _)| n as u16);

    let bfd = peer_bfd(diag, &s);
    // The same form as a pool's node_selector: a table of label = "value".
    let node_selector = s
        .raw("node_selector")
        .is_some()
        .then(|| crate::model::selector::Selector::labels(s.labels(diag, "node_selector")));
    Some(PeerConfig {
        address: address?,
        asn: asn?,
        hold_time: hold,
        password_file: password_file.map(|(p, _)| p),
        passive,
        multihop_ttl: multihop.map(|(n, _)| n as u8),
        keepalive_s,
        connect_retry_s,
        gtsm,
        port,
        local_asn,
        source_address,
        families,
        add_path,
        max_paths,
        node_selector,

        bfd,
    })
}

/// `bfd = true` and its timers; timers without `bfd = true` are an error
/// (they would silently do nothing).
fn peer_bfd(diag: &mut Diagnostics<'_>, s: &Section<'_, '_>) -> Option<PeerBfd> {
    let on = s.bool(diag, "bfd", false);
    let d = PeerBfd::default();
    let ms = |diag: &mut Diagnostics<'_>, name: &str, default: u32| {
        s.int(diag, name, 10, 60_000)
            .map(|(n, sp)| (n as u32, Some(sp)))
            .unwrap_or((default, None))
    };
    let (min_rx_ms, rx_span) = ms(diag, "bfd_min_rx_ms", d.min_rx_ms);
    let (min_tx_ms, tx_span) = ms(diag, "bfd_min_tx_ms", d.min_tx_ms);
    let (multiplier, mult_span) = s
        .int(diag, "bfd_multiplier", 1, 255)
        .map(|(n, sp)| (n as u8, Some(sp)))
        .unwrap_or((d.multiplier, None));
    if !on {
        let given = [
            ("bfd_min_rx_ms", rx_span),
            ("bfd_min_tx_ms", tx_span),
            ("bfd_multiplier", mult_span),
        ];
        for (name, span) in given {
            if let Some(sp) = span {
                diag.err(&sp, &s.key(name), "has no effect without bfd = true");
            }
        }
        return None;
    }
    Some(PeerBfd {
        min_rx_ms,
        min_tx_ms,
        multiplier,
    })
}
