//! `[health]`: how node next hops are probed.

use toml::de::DeTable;

use crate::config::toml_reader::{Diagnostics, Section, Span};
use crate::config::HealthConfig;

const HEALTH: &[&str] = &[
    "interval_ms",
    "timeout_ms",
    "fall",
    "rise",
    "kube_proxy_port",
];

pub(super) fn read(diag: &mut Diagnostics<'_>, t: &DeTable<'_>, span: Span) -> HealthConfig {
    let s = Section::new(diag, t, "health", span, HEALTH);
    let d = HealthConfig::default();
    let interval_ms = s
        .int(diag, "interval_ms", 50, 600_000)
        .map_or(d.interval_ms, |(n, _)| n as u64);
    let timeout = s.int(diag, "timeout_ms", 10, 600_000);
    let timeout_ms = timeout
        .as_ref()
        .map_or(interval_ms.min(1000), |(n, _)| *n as u64);
    if let Some((n, sp)) = &timeout {
        if *n as u64 > interval_ms {
            diag.err(sp, "health.timeout_ms", format!("{n} must not exceed interval_ms ({interval_ms}): one probe per node per interval"));
        }
    }
    HealthConfig {
        interval_ms,
        timeout_ms,
        fall: s
            .int(diag, "fall", 1, 100)
            .map_or(d.fall, |(n, _)| n as u32),
        rise: s
            .int(diag, "rise", 1, 100)
            .map_or(d.rise, |(n, _)| n as u32),
        kube_proxy_port: s
            .int(diag, "kube_proxy_port", 1, 65535)
            .map_or(d.kube_proxy_port, |(n, _)| n as u16),
    }
}
