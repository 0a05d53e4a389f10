//! TOML → [`Config`], collecting every error with file, line and key.
//!
//! The file is parsed with spans (toml's `DeTable`) and walked by hand, so
//! that one pass reports every problem — unknown keys, wrong types, bad
//! addresses, cross-checks between pools, peers and static services — each
//! at its own line, instead of stopping at the first like serde would.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::*;
use crate::model::{
    BgpAttributes, Community, Family, IpRange, LargeCommunity, NextHopMode, Pool, PoolMode,
    PortSpec, ServiceKey,
};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the error is about the whole file.
    pub line: usize,
    /// Key path, e.g. `pools[1].addresses[0]`.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn io(path: &Path, e: &std::io::Error) -> Self {
        ConfigError {
            file: path.to_path_buf(),
            line: 0,
            key: String::new(),
            message: format!("cannot read: {e}"),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn single(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

type Span = Range<usize>;

/// A parsed value with where it came from: span and key path.
type Located<T> = (T, Span, String);

/// Error collection and byte offset → line.
struct Ctx<'a> {
    file: &'a Path,
    line_starts: Vec<usize>,
    errors: Vec<ConfigError>,
}

impl Ctx<'_> {
    fn line(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= offset)
    }
    fn err(&mut self, span: &Span, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line: self.line(span.start),
            key: key.to_string(),
            message: message.into(),
        });
    }
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// A table being read: checks types, remembers which keys were read, and
/// reports the unknown ones at the end.
struct Section<'t, 'i> {
    table: &'t DeTable<'i>,
    /// Key path prefix (`gateway`, `pools[2]`).
    path: String,
    /// Where the table starts (for "missing key").
    span: Span,
    known: &'static [&'static str],
}

impl<'t, 'i> Section<'t, 'i> {
    fn new(
        ctx: &mut Ctx<'_>,
        table: &'t DeTable<'i>,
        path: &str,
        span: Span,
        known: &'static [&'static str],
    ) -> Self {
        let s = Section {
            table,
            path: path.to_string(),
            span,
            known,
        };
        for (k, _) in table.iter() {
            let name: &str = k.get_ref();
            if !known.contains(&name) {
                let hint = closest(name, known)
                    .map(|c| format!(" (did you mean {c:?}?)"))
                    .unwrap_or_default();
                ctx.err(
                    &k.span(),
                    &s.key(name),
                    format!("unknown key{hint}; known keys here: {}", known.join(", ")),
                );
            }
        }
        s
    }

    fn key(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    fn raw(&self, name: &str) -> Option<&'t Spanned<DeValue<'i>>> {
        debug_assert!(
            self.known.contains(&name),
            "{name} read but not listed as known"
        );
        self.table
            .iter()
            .find(|(k, _)| {
                let s: &str = k.get_ref();
                s == name
            })
            .map(|(_, v)| v)
    }

    fn missing(&self, ctx: &mut Ctx<'_>, name: &str) {
        ctx.err(&self.span, &self.key(name), "required key is missing");
    }

    fn str(&self, ctx: &mut Ctx<'_>, name: &str) -> Option<(String, Span)> {
        let v = self.raw(name)?;
        match v.get_ref() {
            DeValue::String(s) => Some((s.to_string(), v.span())),
            other => {
                ctx.err(
                    &v.span(),
                    &self.key(name),
                    format!("expected a string, found {}", type_name(other)),
                );
                None
            }
        }
    }

    fn bool(&self, ctx: &mut Ctx<'_>, name: &str, default: bool) -> bool {
        let Some(v) = self.raw(name) else {
            return default;
        };
        match v.get_ref() {
            DeValue::Boolean(b) => *b,
            other => {
                ctx.err(
                    &v.span(),
                    &self.key(name),
                    format!("expected true or false, found {}", type_name(other)),
                );
                default
            }
        }
    }

    /// An integer within `min..=max`.
    fn int(&self, ctx: &mut Ctx<'_>, name: &str, min: i64, max: i64) -> Option<(i64, Span)> {
        let v = self.raw(name)?;
        let n = match v.get_ref() {
            DeValue::Integer(i) => {
                let digits = i.as_str().replace('_', "");
                let digits = digits
                    .trim_start_matches('+')
                    .trim_start_matches("0x")
                    .trim_start_matches("0o")
                    .trim_start_matches("0b");
                i64::from_str_radix(digits, i.radix()).ok()
            }
            _ => None,
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Some((n, v.span())),
            Some(n) => {
                ctx.err(
                    &v.span(),
                    &self.key(name),
                    format!("{n} is out of range {min}..={max}"),
                );
                None
            }
            None => {
                ctx.err(
                    &v.span(),
                    &self.key(name),
                    format!("expected an integer, found {}", type_name(v.get_ref())),
                );
                None
            }
        }
    }

    /// A string parsed with `parse`, whose error becomes the message.
    fn parsed<T>(
        &self,
        ctx: &mut Ctx<'_>,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<(T, Span)> {
        let (s, span) = self.str(ctx, name)?;
        match parse(&s) {
            Ok(v) => Some((v, span)),
            Err(e) => {
                ctx.err(&span, &self.key(name), e);
                None
            }
        }
    }

    /// An array of strings, each parsed; bad elements are reported at
    /// their own position and skipped.
    fn list<T>(
        &self,
        ctx: &mut Ctx<'_>,
        name: &str,
        mut parse: impl FnMut(&str) -> Result<T, String>,
    ) -> Vec<(T, Span, String)> {
        let Some(v) = self.raw(name) else {
            return Vec::new();
        };
        let DeValue::Array(items) = v.get_ref() else {
            ctx.err(
                &v.span(),
                &self.key(name),
                format!(
                    "expected an array of strings, found {}",
                    type_name(v.get_ref())
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let key = format!("{}[{i}]", self.key(name));
            match item.get_ref() {
                DeValue::String(s) => match parse(s) {
                    Ok(t) => out.push((t, item.span(), key)),
                    Err(e) => ctx.err(&item.span(), &key, e),
                },
                other => ctx.err(
                    &item.span(),
                    &key,
                    format!("expected a string, found {}", type_name(other)),
                ),
            }
        }
        out
    }

    /// An inline table of string → string (label selectors).
    fn labels(&self, ctx: &mut Ctx<'_>, name: &str) -> BTreeMap<String, String> {
        let Some(v) = self.raw(name) else {
            return BTreeMap::new();
        };
        let DeValue::Table(t) = v.get_ref() else {
            ctx.err(
                &v.span(),
                &self.key(name),
                format!(
                    "expected a table of label = \"value\", found {}",
                    type_name(v.get_ref())
                ),
            );
            return BTreeMap::new();
        };
        let mut out = BTreeMap::new();
        for (k, val) in t.iter() {
            match val.get_ref() {
                DeValue::String(s) => {
                    out.insert(k.get_ref().to_string(), s.to_string());
                }
                other => ctx.err(
                    &val.span(),
                    &format!("{}.{}", self.key(name), k.get_ref()),
                    format!("expected a string, found {}", type_name(other)),
                ),
            }
        }
        out
    }

    /// A sub-table.
    fn table(&self, ctx: &mut Ctx<'_>, name: &str) -> Option<(&'t DeTable<'i>, Span)> {
        let v = self.raw(name)?;
        match v.get_ref() {
            DeValue::Table(t) => Some((t, v.span())),
            other => {
                ctx.err(
                    &v.span(),
                    &self.key(name),
                    format!("expected a table ([{name}]), found {}", type_name(other)),
                );
                None
            }
        }
    }

    /// An array of tables (`[[name]]`).
    fn tables(&self, ctx: &mut Ctx<'_>, name: &str) -> Vec<(&'t DeTable<'i>, Span)> {
        let Some(v) = self.raw(name) else {
            return Vec::new();
        };
        let DeValue::Array(items) = v.get_ref() else {
            ctx.err(
                &v.span(),
                &self.key(name),
                format!(
                    "expected an array of tables ([[{name}]]), found {}",
                    type_name(v.get_ref())
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::Table(t) => out.push((t, item.span())),
                other => ctx.err(
                    &item.span(),
                    &format!("{}[{i}]", self.key(name)),
                    format!("expected a table, found {}", type_name(other)),
                ),
            }
        }
        out
    }
}

/// The known key nearest to `name`, if it is a plausible typo.
fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                let sub = prev[j] + usize::from(ca != *cb);
                cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
            }
            prev = cur;
        }
        prev[b.len()]
    }
    known
        .iter()
        .map(|k| (distance(name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min()
        .map(|(_, k)| k)
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address"))
}

const TOP: &[&str] = &[
    "gateway",
    "kubernetes",
    "bgp",
    "pools",
    "health",
    "static_services",
];
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
];
const KUBERNETES: &[&str] = &[
    "kubeconfig",
    "context",
    "load_balancer_class",
    "claim_unclassed",
    "lease_namespace",
    "lease_name",
    "lease_duration_s",
    "lease_renew_s",
    "crds",
];
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
];
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
];
const HEALTH: &[&str] = &[
    "interval_ms",
    "timeout_ms",
    "fall",
    "rise",
    "kube_proxy_port",
];
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

/// Where each range of each pool came from, for overlap messages.
struct RangeOrigin {
    pool: usize,
    range: IpRange,
    span: Span,
    key: String,
}

pub(super) fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let mut ctx = Ctx {
        file: path,
        line_starts: std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect(),
        errors: Vec::new(),
    };
    let doc = match DeTable::parse(text) {
        Ok(d) => d,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let msg = e.message().trim().to_string();
            ctx.err(&span, "", format!("TOML syntax error: {msg}"));
            return Err(ConfigErrors(ctx.errors));
        }
    };
    let top = Section::new(&mut ctx, doc.get_ref(), "", 0..0, TOP);

    let gateway = match top.table(&mut ctx, "gateway") {
        Some((t, span)) => gateway(&mut ctx, t, span),
        None => {
            ctx.err(
                &(0..0),
                "gateway",
                "the [gateway] section is required (router_id at least)",
            );
            None
        }
    };
    let kubernetes = top
        .table(&mut ctx, "kubernetes")
        .and_then(|(t, span)| kubernetes(&mut ctx, t, span));
    let bgp = top
        .table(&mut ctx, "bgp")
        .and_then(|(t, span)| bgp(&mut ctx, t, span));
    let health = match top.table(&mut ctx, "health") {
        Some((t, span)) => health(&mut ctx, t, span),
        None => HealthConfig::default(),
    };

    // Pools, then the checks across them.
    let mut pools: Vec<Pool> = Vec::new();
    let mut pool_spans: Vec<(Span, String)> = Vec::new();
    let mut origins: Vec<RangeOrigin> = Vec::new();
    for (i, (t, span)) in top.tables(&mut ctx, "pools").into_iter().enumerate() {
        let key = format!("pools[{i}]");
        if let Some((p, ranges)) = pool(&mut ctx, t, span.clone(), &key) {
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
    check_pools(&mut ctx, &pools, &pool_spans, &origins);

    let mut static_services = Vec::new();
    let mut names = BTreeMap::new();
    for (i, (t, span)) in top
        .tables(&mut ctx, "static_services")
        .into_iter()
        .enumerate()
    {
        let key = format!("static_services[{i}]");
        if let Some(s) = static_service(&mut ctx, t, span.clone(), &key, &pools) {
            if let Some(prev) = names.insert(s.key.clone(), key.clone()) {
                ctx.err(
                    &span,
                    &format!("{key}.name"),
                    format!("{} is already defined by {prev}", s.key),
                );
            } else {
                static_services.push(s);
            }
        }
    }

    if ctx.errors.is_empty() {
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
    ctx.errors.sort_by_key(|e| e.line);
    Err(ConfigErrors(ctx.errors))
}

fn gateway(ctx: &mut Ctx<'_>, t: &DeTable<'_>, span: Span) -> Option<GatewayConfig> {
    let s = Section::new(ctx, t, "gateway", span, GATEWAY);
    let router_id = s.parsed(ctx, "router_id", |v| {
        v.parse::<Ipv4Addr>()
            .map_err(|_| format!("{v:?} is not an IPv4 address (the BGP identifier is 32 bits)"))
    });
    if router_id.is_none() && s.raw("router_id").is_none() {
        s.missing(ctx, "router_id");
    }
    let path_of = |ctx: &mut Ctx<'_>, name: &str, default: &str| -> PathBuf {
        s.parsed(ctx, name, |v| {
            if v.starts_with('/') {
                Ok(PathBuf::from(v))
            } else {
                Err(format!("{v:?} must be an absolute path"))
            }
        })
        .map_or_else(|| PathBuf::from(default), |(p, _)| p)
    };
    let state_dir = path_of(ctx, "state_dir", "/var/lib/pier");
    let api_socket = path_of(ctx, "api_socket", "/run/pier/pier.sock");
    let metrics_listen = s
        .parsed(ctx, "metrics_listen", |v| {
            v.parse::<SocketAddr>().map_err(|_| {
                format!("{v:?} is not an address:port (e.g. \"127.0.0.1:9469\" or \"[::1]:9469\")")
            })
        })
        .map_or(SocketAddr::from(([127, 0, 0, 1], 9469)), |(a, _)| a);
    let api_socket_mode = s
        .parsed(ctx, "api_socket_mode", |v| {
            u32::from_str_radix(v.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| format!("{v:?} is not an octal file mode (e.g. \"0660\")"))
        })
        .map_or(0o660, |(m, _)| m);
    let api_socket_group = s.str(ctx, "api_socket_group").map(|(g, _)| g);
    let api_socket_owner = s.str(ctx, "api_socket_owner").map(|(u, _)| u);
    let shutdown = s
        .parsed(ctx, "shutdown", |v| match v {
            "withdraw" => Ok(Shutdown::Withdraw),
            "keep" => Ok(Shutdown::Keep),
            _ => Err(format!("{v:?}: expected \"withdraw\" or \"keep\"")),
        })
        .map_or(Shutdown::Withdraw, |(v, _)| v);
    let sysctl = s
        .parsed(ctx, "sysctl", |v| match v {
            "set" => Ok(SysctlMode::Set),
            "check" => Ok(SysctlMode::Check),
            _ => Err(format!("{v:?}: expected \"set\" or \"check\"")),
        })
        .map_or(SysctlMode::Set, |(v, _)| v);
    let log_format = s
        .parsed(ctx, "log_format", |v| match v {
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
        forwarding: forwarding(ctx, &s),
    })
}

/// The forwarding keys of `[gateway]` (`docs/configuration.md`).
fn forwarding(ctx: &mut Ctx<'_>, s: &Section<'_, '_>) -> Forwarding {
    let d = Forwarding::default();
    Forwarding {
        next_hop_groups: s
            .parsed(ctx, "next_hop_groups", |v| match v {
                "resilient" => Ok(NextHopGroups::Resilient),
                "multipath" => Ok(NextHopGroups::Multipath),
                _ => Err(format!("{v:?}: expected \"resilient\" or \"multipath\"")),
            })
            .map_or(d.next_hop_groups, |(v, _)| v),
        // The kernel takes up to 2^16 - 1 buckets; fewer than 8 balance badly.
        resilient_buckets: s
            .int(ctx, "resilient_buckets", 8, 65535)
            .map_or(d.resilient_buckets, |(n, _)| n as u16),
        // The kernel keeps the timers in 1/100 s in 32 bits.
        resilient_idle_timer_s: s
            .int(ctx, "resilient_idle_timer_s", 1, 3600)
            .map_or(d.resilient_idle_timer_s, |(n, _)| n as u32),
        resilient_unbalanced_timer_s: s
            .int(ctx, "resilient_unbalanced_timer_s", 0, 86400)
            .map_or(d.resilient_unbalanced_timer_s, |(n, _)| n as u32),
        host_firewall: s
            .parsed(ctx, "host_firewall", |v| match v {
                "open" => Ok(HostFirewall::Open),
                "check" => Ok(HostFirewall::Check),
                _ => Err(format!("{v:?}: expected \"open\" or \"check\"")),
            })
            .map_or(d.host_firewall, |(v, _)| v),
    }
}

fn kubernetes(ctx: &mut Ctx<'_>, t: &DeTable<'_>, span: Span) -> Option<KubernetesConfig> {
    let s = Section::new(ctx, t, "kubernetes", span, KUBERNETES);
    let kubeconfig = s.str(ctx, "kubeconfig").map(|(p, _)| PathBuf::from(p));
    if kubeconfig.is_none() && s.raw("kubeconfig").is_none() {
        s.missing(ctx, "kubeconfig");
    }
    let context = s.str(ctx, "context").map(|(c, _)| c);
    let load_balancer_class = s
        .str(ctx, "load_balancer_class")
        .map_or_else(|| "pier.io/gateway".to_string(), |(c, _)| c);
    let claim_unclassed = s.bool(ctx, "claim_unclassed", false);
    let lease_namespace = s
        .str(ctx, "lease_namespace")
        .map_or_else(|| "pier-system".to_string(), |(c, _)| c);
    let lease_name = s
        .str(ctx, "lease_name")
        .map_or_else(|| "pier".to_string(), |(c, _)| c);
    let lease_duration_s = s
        .int(ctx, "lease_duration_s", 2, 3600)
        // Short: an l2 standby takes over a crashed leader's VIPs after
        // about this long (docs/benchmarks.md, "End to end").
        .map_or(2, |(n, _)| n as u32);
    let renew = s.int(ctx, "lease_renew_s", 1, 3600);
    let lease_renew_s = renew.as_ref().map_or(1, |(n, _)| *n as u32);
    if lease_renew_s >= lease_duration_s {
        let span = renew.map_or(s.span.clone(), |(_, sp)| sp);
        ctx.err(&span, "kubernetes.lease_renew_s", format!("{lease_renew_s} must be less than lease_duration_s ({lease_duration_s}): the leader renews before the lease expires"));
    }
    let crds = s.bool(ctx, "crds", false);
    Some(KubernetesConfig {
        kubeconfig: kubeconfig?,
        context,
        load_balancer_class,
        claim_unclassed,
        lease_namespace,
        lease_name,
        lease_duration_s,
        lease_renew_s,
        crds,
    })
}

/// RFC 4271 §4.2: zero, or at least three seconds.
fn hold_time(ctx: &mut Ctx<'_>, s: &Section<'_, '_>, default: u16) -> u16 {
    match s.int(ctx, "hold_time", 0, 65535) {
        Some((n, span)) if n == 1 || n == 2 => {
            ctx.err(
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

fn bgp(ctx: &mut Ctx<'_>, t: &DeTable<'_>, span: Span) -> Option<BgpConfig> {
    let s = Section::new(ctx, t, "bgp", span, BGP);
    let asn = s.int(ctx, "asn", 1, u32::MAX as i64).map(|(n, _)| n as u32);
    if asn.is_none() && s.raw("asn").is_none() {
        s.missing(ctx, "asn");
    }
    let listen = s.bool(ctx, "listen", true);
    let listen_port = s
        .int(ctx, "listen_port", 1, 65535)
        .map_or(179, |(n, _)| n as u16);
    let listen_addresses = s
        .list(ctx, "listen_addresses", parse_ip)
        .into_iter()
        .map(|(a, _, _)| a)
        .collect();
    let graceful_restart = s.bool(ctx, "graceful_restart", true);
    let restart_time_s = s
        .int(ctx, "restart_time_s", 1, 4095)
        .map_or(120, |(n, _)| n as u16);
    let default_hold = hold_time(ctx, &s, 90);
    let mut peers: Vec<PeerConfig> = Vec::new();
    let mut seen: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (i, (pt, pspan)) in s.tables(ctx, "peers").into_iter().enumerate() {
        let key = format!("bgp.peers[{i}]");
        if let Some(p) = peer(ctx, pt, pspan.clone(), &key, default_hold) {
            if let Some(prev) = seen.insert(p.address, key.clone()) {
                ctx.err(
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
    ctx: &mut Ctx<'_>,
    t: &DeTable<'_>,
    span: Span,
    key: &str,
    default_hold: u16,
) -> Option<PeerConfig> {
    let s = Section::new(ctx, t, key, span, PEER);
    let address = s.parsed(ctx, "address", parse_ip).map(|(a, _)| a);
    if s.raw("address").is_none() {
        s.missing(ctx, "address");
    }
    let asn = s.int(ctx, "asn", 1, u32::MAX as i64).map(|(n, _)| n as u32);
    if s.raw("asn").is_none() {
        s.missing(ctx, "asn");
    }
    let hold = hold_time(ctx, &s, default_hold);
    let keepalive_s = s.int(ctx, "keepalive_s", 1, 21845).and_then(|(n, sp)| {
        if hold > 0 && n as u16 >= hold {
            ctx.err(
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
        .int(ctx, "connect_retry_s", 1, 3600)
        .map_or(5, |(n, _)| n as u16);
    let password_file = s.parsed(ctx, "password_file", |v| {
        if v.starts_with('/') {
            Ok(PathBuf::from(v))
        } else {
            Err(format!("{v:?} must be an absolute path"))
        }
    });
    let passive = s.bool(ctx, "passive", false);
    let multihop = s.int(ctx, "multihop_ttl", 1, 255);
    let gtsm = s.bool(ctx, "gtsm", false);
    if let (true, Some((_, sp))) = (gtsm, &multihop) {
        ctx.err(
            sp,
            &s.key("multihop_ttl"),
            "cannot be combined with gtsm = true (GTSM sends with TTL 255, RFC 5082)",
        );
    }
    let port = s.int(ctx, "port", 1, 65535).map_or(179, |(n, _)| n as u16);
    let local_asn = s
        .int(ctx, "local_asn", 1, u32::MAX as i64)
        .map(|(n, _)| n as u32);
    let source_address =
        s.parsed(ctx, "source_address", parse_ip)
            .and_then(|(a, sp)| match address {
                Some(peer) if Family::of(&peer) != Family::of(&a) => {
                    ctx.err(
                        &sp,
                        &s.key("source_address"),
                        format!("{a} is not of the family of the peer address {peer}"),
                    );
                    None
                }
                _ => Some(a),
            });
    let mut families: Vec<Family> = s
        .list(ctx, "families", |v| match v {
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
    let add_path = s.bool(ctx, "add_path", true);
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
    })
}

fn health(ctx: &mut Ctx<'_>, t: &DeTable<'_>, span: Span) -> HealthConfig {
    let s = Section::new(ctx, t, "health", span, HEALTH);
    let d = HealthConfig::default();
    let interval_ms = s
        .int(ctx, "interval_ms", 50, 600_000)
        .map_or(d.interval_ms, |(n, _)| n as u64);
    let timeout = s.int(ctx, "timeout_ms", 10, 600_000);
    let timeout_ms = timeout
        .as_ref()
        .map_or(interval_ms.min(1000), |(n, _)| *n as u64);
    if let Some((n, sp)) = &timeout {
        if *n as u64 > interval_ms {
            ctx.err(sp, "health.timeout_ms", format!("{n} must not exceed interval_ms ({interval_ms}): one probe per node per interval"));
        }
    }
    HealthConfig {
        interval_ms,
        timeout_ms,
        fall: s.int(ctx, "fall", 1, 100).map_or(d.fall, |(n, _)| n as u32),
        rise: s.int(ctx, "rise", 1, 100).map_or(d.rise, |(n, _)| n as u32),
        kube_proxy_port: s
            .int(ctx, "kube_proxy_port", 1, 65535)
            .map_or(d.kube_proxy_port, |(n, _)| n as u16),
    }
}

fn pool(
    ctx: &mut Ctx<'_>,
    t: &DeTable<'_>,
    span: Span,
    key: &str,
) -> Option<(Pool, Vec<Located<IpRange>>)> {
    let s = Section::new(ctx, t, key, span, POOL);
    let name = s.parsed(ctx, "name", |v| {
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
        s.missing(ctx, "name");
    }
    let ranges = s.list(ctx, "addresses", |v| v.parse::<IpRange>());
    match s.raw("addresses") {
        None => s.missing(ctx, "addresses"),
        Some(v) if matches!(v.get_ref(), DeValue::Array(a) if a.is_empty()) => ctx.err(
            &v.span(),
            &s.key("addresses"),
            "a pool needs at least one address, range or CIDR",
        ),
        _ => {}
    }
    let mode = s
        .parsed(ctx, "mode", |v| match v {
            "bgp" => Ok(PoolMode::Bgp),
            "l2" => Ok(PoolMode::L2),
            _ => Err(format!("{v:?}: expected \"bgp\" or \"l2\"")),
        })
        .map_or(PoolMode::Bgp, |(m, _)| m);
    let next_hop = s.parsed(ctx, "next_hop", |v| match v {
        "nodes" => Ok(NextHopMode::Nodes),
        "self" => Ok(NextHopMode::Gateway),
        _ => Err(format!("{v:?}: expected \"nodes\" or \"self\"")),
    });
    if let (PoolMode::L2, Some((_, sp))) = (mode, &next_hop) {
        ctx.err(
            sp,
            &s.key("next_hop"),
            "an l2 pool has no BGP next hop (pier answers ARP/NDP and forwards itself)",
        );
    }
    let interface = s.str(ctx, "interface");
    match (mode, &interface) {
        (PoolMode::L2, None) if s.raw("interface").is_none() => ctx.err(
            &s.span,
            &s.key("interface"),
            "an l2 pool needs the LAN interface pier answers ARP/NDP on",
        ),
        (PoolMode::Bgp, Some((_, sp))) => {
            ctx.err(sp, &s.key("interface"), "only l2 pools take an interface")
        }
        _ => {}
    }
    let namespaces = s
        .list(ctx, "namespaces", |v| Ok(v.to_string()))
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    let namespace_selector = s.labels(ctx, "namespace_selector");
    let node_selector = s.labels(ctx, "node_selector");
    let priority = s
        .int(ctx, "priority", i32::MIN as i64, i32::MAX as i64)
        .map_or(0, |(n, _)| n as i32);
    let auto_assign = s.bool(ctx, "auto_assign", true);
    let disabled = s.bool(ctx, "disabled", false);
    let communities = s
        .list(ctx, "communities", |v| v.parse::<Community>())
        .into_iter()
        .map(|(c, _, _)| c)
        .collect();
    let large_communities = s
        .list(ctx, "large_communities", |v| v.parse::<LargeCommunity>())
        .into_iter()
        .map(|(c, _, _)| c)
        .collect();
    let local_pref = s
        .int(ctx, "local_pref", 0, u32::MAX as i64)
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
            },
        },
        ranges,
    ))
}

fn check_pools(
    ctx: &mut Ctx<'_>,
    pools: &[Pool],
    spans: &[(Span, String)],
    origins: &[RangeOrigin],
) {
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    for (p, (span, key)) in pools.iter().zip(spans) {
        if let Some(prev) = names.insert(&p.name, key) {
            ctx.err(
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
            ctx.err(&second.span, &second.key, msg);
        }
    }
}

fn static_service(
    ctx: &mut Ctx<'_>,
    t: &DeTable<'_>,
    span: Span,
    key: &str,
    pools: &[Pool],
) -> Option<StaticService> {
    let s = Section::new(ctx, t, key, span, STATIC);
    let name = s.parsed(ctx, "name", |v| v.parse::<ServiceKey>());
    if s.raw("name").is_none() {
        s.missing(ctx, "name");
    }
    let pool = s.str(ctx, "pool");
    if s.raw("pool").is_none() {
        s.missing(ctx, "pool");
    }
    let pool_def = pool.as_ref().and_then(|(p, sp)| {
        let found = pools.iter().find(|x| &x.name == p);
        if found.is_none() {
            let known: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
            ctx.err(
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
        .parsed(ctx, "ip", |v| {
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
                        ctx.err(
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
    let fam_list = s.list(ctx, "families", |v| match v {
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
                ctx.err(sp, k, format!("pool {:?} has no {f} addresses", p.name));
            }
        }
    }
    let ports: Vec<PortSpec> = s
        .list(ctx, "ports", |v| v.parse::<PortSpec>())
        .into_iter()
        .map(|(p, _, _)| p)
        .collect();
    match s.raw("ports") {
        None => s.missing(ctx, "ports"),
        Some(v) if matches!(v.get_ref(), DeValue::Array(a) if a.is_empty()) => ctx.err(
            &v.span(),
            &s.key("ports"),
            "at least one port (e.g. \"80/tcp\")",
        ),
        _ => {}
    }
    let nodes: Vec<IpAddr> = s
        .list(ctx, "nodes", parse_ip)
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    match s.raw("nodes") {
        None => s.missing(ctx, "nodes"),
        Some(v) => {
            for f in &families {
                if !nodes.iter().any(|n| Family::of(n) == *f) && !nodes.is_empty() {
                    ctx.err(
                        &v.span(),
                        &s.key("nodes"),
                        format!("no {f} node address for the {f} VIP"),
                    );
                }
            }
            if matches!(v.get_ref(), DeValue::Array(a) if a.is_empty()) {
                ctx.err(
                    &v.span(),
                    &s.key("nodes"),
                    "at least one node address (the next hops)",
                );
            }
        }
    }
    let sharing_key = s.str(ctx, "sharing_key").map(|(k, _)| k);
    let source_ranges: Vec<IpNet> = s
        .list(ctx, "source_ranges", |v| {
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
                .int(ctx, "health", 1, 65535)
                .map_or(StaticHealth::KubeProxy, |(n, _)| {
                    StaticHealth::Port(n as u16)
                }),
            _ => {
                ctx.err(
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

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
