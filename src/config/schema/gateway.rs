//! `[gateway]`: the gateway process itself.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use toml::de::DeTable;

use crate::config::toml_reader::{Diagnostics, Section, Span};
use crate::config::{
    Flowtable, Forwarding, GatewayConfig, HostFirewall, LogFormat, NextHopGroups, Shutdown,
    SysctlMode,
};

const GATEWAY: &[&str] = &[
    "router_id",
    "state_dir",
    "api_socket",
    "metrics_listen",
    "api_socket_mode",
    "api_socket_group",
    "api_socket_owner",
    "shutdown",
    "sysctl",
    "log_format",
    "next_hop_groups",
    "resilient_buckets",
    "resilient_idle_timer_s",
    "resilient_unbalanced_timer_s",
    "host_firewall",
    "vip_counters",
    "flowtable",
];

pub(super) fn read(
    diag: &mut Diagnostics<'_>,
    t: &DeTable<'_>,
    span: Span,
) -> Option<GatewayConfig> {
    let s = Section::new(diag, t, "gateway", span, GATEWAY);
    let router_id = s.parsed(diag, "router_id", |v| {
        v.parse::<Ipv4Addr>()
            .map_err(|_| format!("{v:?} is not an IPv4 address (the BGP identifier is 32 bits)"))
    });
    if router_id.is_none() && s.raw("router_id").is_none() {
        s.missing(diag, "router_id");
    }
    let path_of = |diag: &mut Diagnostics<'_>, name: &str, default: &str| -> PathBuf {
        s.parsed(diag, name, |v| {
            if v.starts_with('/') {
                Ok(PathBuf::from(v))
            } else {
                Err(format!("{v:?} must be an absolute path"))
            }
        })
        .map_or_else(|| PathBuf::from(default), |(p, _)| p)
    };
    let state_dir = path_of(diag, "state_dir", "/var/lib/pier");
    let api_socket = path_of(diag, "api_socket", "/run/pier/pier.sock");
    let metrics_listen = s
        .parsed(diag, "metrics_listen", |v| {
            v.parse::<SocketAddr>().map_err(|_| {
                format!("{v:?} is not an address:port (e.g. \"127.0.0.1:9469\" or \"[::1]:9469\")")
            })
        })
        .map_or(SocketAddr::from(([127, 0, 0, 1], 9469)), |(a, _)| a);
    let api_socket_mode = s
        .parsed(diag, "api_socket_mode", |v| {
            u32::from_str_radix(v.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| format!("{v:?} is not an octal file mode (e.g. \"0660\")"))
        })
        .map_or(0o660, |(m, _)| m);
    let api_socket_group = s.str(diag, "api_socket_group").map(|(g, _)| g);
    let api_socket_owner = s.str(diag, "api_socket_owner").map(|(u, _)| u);
    let shutdown = s
        .parsed(diag, "shutdown", |v| match v {
            "withdraw" => Ok(Shutdown::Withdraw),
            "keep" => Ok(Shutdown::Keep),
            _ => Err(format!("{v:?}: expected \"withdraw\" or \"keep\"")),
        })
        .map_or(Shutdown::Withdraw, |(v, _)| v);
    let sysctl = s
        .parsed(diag, "sysctl", |v| match v {
            "set" => Ok(SysctlMode::Set),
            "check" => Ok(SysctlMode::Check),
            _ => Err(format!("{v:?}: expected \"set\" or \"check\"")),
        })
        .map_or(SysctlMode::Set, |(v, _)| v);
    let log_format = s
        .parsed(diag, "log_format", |v| match v {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{v:?}: expected \"text\" or \"json\"")),
        })
        .map_or(LogFormat::Text, |(v, _)| v);
    Some(GatewayConfig {
        router_id: router_id?.0,
        state_dir,
        api_socket,
        metrics_listen,
        api_socket_mode,
        api_socket_group,
        api_socket_owner,
        shutdown,
        sysctl,
        log_format,
        forwarding: forwarding(diag, &s),
    })
}

/// The forwarding keys of `[gateway]` (`docs/configuration.md`).
fn forwarding(diag: &mut Diagnostics<'_>, s: &Section<'_, '_>) -> Forwarding {
    let d = Forwarding::default();
    Forwarding {
        next_hop_groups: s
            .parsed(diag, "next_hop_groups", |v| match v {
                "resilient" => Ok(NextHopGroups::Resilient),
                "multipath" => Ok(NextHopGroups::Multipath),
                _ => Err(format!("{v:?}: expected \"resilient\" or \"multipath\"")),
            })
            .map_or(d.next_hop_groups, |(v, _)| v),
        // The kernel takes up to 2^16 - 1 buckets; fewer than 8 balance badly.
        resilient_buckets: s
            .int(diag, "resilient_buckets", 8, 65535)
            .map_or(d.resilient_buckets, |(n, _)| n as u16),
        // The kernel keeps the timers in 1/100 s in 32 bits.
        resilient_idle_timer_s: s
            .int(diag, "resilient_idle_timer_s", 1, 3600)
            .map_or(d.resilient_idle_timer_s, |(n, _)| n as u32),
        resilient_unbalanced_timer_s: s
            .int(diag, "resilient_unbalanced_timer_s", 0, 86400)
            .map_or(d.resilient_unbalanced_timer_s, |(n, _)| n as u32),
        host_firewall: s
            .parsed(diag, "host_firewall", |v| match v {
                "open" => Ok(HostFirewall::Open),
                "check" => Ok(HostFirewall::Check),
                _ => Err(format!("{v:?}: expected \"open\" or \"check\"")),
            })
            .map_or(d.host_firewall, |(v, _)| v),
        vip_counters: s.bool(diag, "vip_counters", d.vip_counters),
        flowtable: s
            .parsed(diag, "flowtable", |v| match v {
                "software" => Ok(Flowtable::Software),
                "hardware" => Ok(Flowtable::Hardware),
                "off" => Ok(Flowtable::Off),
                _ => Err(format!(
                    "{v:?}: expected \"software\", \"hardware\" or \"off\""
                )),
            })
            .map_or(d.flowtable, |(v, _)| v),
    }
}
