//! Host firewalls on the forward hook: whether another firewall of this
//! host drops the VIP traffic pier's table accepts, and, where forwarding
//! policy lives in iptables (either backend), pier's accepts put where they
//! count (see `docs/datapath.md`, "Host firewalls").
//!
//! A packet is forwarded only if every base chain on the forward hook
//! accepts it: an accept in `inet pier` cannot override a `policy drop` in
//! iptables' `filter FORWARD` (what Docker sets), ufw's chains, firewalld's
//! or a distribution's `inet filter`. pier reads every such chain:
//! - from `nft -j list ruleset` (nftables and iptables-nft), and
//! - from `iptables-legacy -S` / `ip6tables-legacy -S` when legacy tables
//!   exist in this namespace (`/proc/net/ip_tables_names`).
//!
//! With `host_firewall = "open"`, an iptables chain that drops gets a jump
//! to pier's own chain [`CHAIN`] inserted at its top (in `DOCKER-USER` when
//! Docker's chain exists, as Docker documents); [`CHAIN`] accepts exactly
//! pier's VIPs, ports and source ranges, and the replies of their
//! connections. Other nftables tables are only reported, with the rule an
//! operator would add. With `"check"` nothing is changed.
//!
//! [`chains_from_nft_json`], [`chains_from_iptables_save`], [`blocked`] and
//! [`pier_chain_rules`] are pure; the rest runs `nft` and `iptables`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::Serialize;

use super::nft::{self, Firewall};

/// pier's chain in iptables' `filter` table (both backends, both families).
pub const CHAIN: &str = "PIER-FORWARD";

/// Where a chain lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// A table of nftables' own (not iptables').
    Nftables,
    /// iptables' `filter` table, nf_tables backend (`iptables-nft`).
    IptablesNft,
    /// iptables' `filter` table, legacy backend (`iptables-legacy`).
    IptablesLegacy,
}

/// IP family of a chain; `inet` chains see both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChainFamily {
    Ip,
    Ip6,
    Inet,
}

impl ChainFamily {
    fn sees(self, ip: &IpAddr) -> bool {
        match self {
            ChainFamily::Ip => ip.is_ipv4(),
            ChainFamily::Ip6 => ip.is_ipv6(),
            ChainFamily::Inet => true,
        }
    }
}

/// A base chain on the forward hook of somebody else's firewall, reduced
/// to what decides pier's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardChain {
    pub backend: Backend,
    pub family: ChainFamily,
    pub table: String,
    pub chain: String,
    /// `policy drop`, or an unconditional drop/reject as its last rule.
    pub drops: bool,
    /// It (or a chain it jumps to) jumps to [`CHAIN`] unconditionally.
    pub reaches_pier: bool,
    /// Destinations an accept rule matches (a VIP inside is let through).
    pub accepts_to: Vec<IpNet>,
    /// An accept of established connections (the replies).
    pub accepts_established: bool,
    /// Docker's `DOCKER-USER` chain exists in the same table.
    pub docker_user: bool,
}

impl ForwardChain {
    /// The name `pier status` uses: `ip filter`, `iptables-legacy ip6 filter`.
    pub fn table_name(&self) -> String {
        let fam = match self.family {
            ChainFamily::Ip => "ip",
            ChainFamily::Ip6 => "ip6",
            ChainFamily::Inet => "inet",
        };
        match self.backend {
            Backend::IptablesLegacy => format!("iptables-legacy {fam} {}", self.table),
            _ => format!("{fam} {}", self.table),
        }
    }
}

/// What pier found about one chain that drops forwarded traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `ip filter`, `inet filter`, `iptables-legacy ip filter`...
    pub table: String,
    pub chain: String,
    /// pier put its jump there (`host_firewall = "open"`): VIP traffic
    /// passes.
    pub opened: bool,
    /// VIPs the chain would drop (empty once opened).
    pub blocked_vips: Vec<IpAddr>,
    /// What an operator would run to let pier's traffic through.
    pub fix: String,
}

fn contains(nets: &[IpNet], ip: &IpAddr) -> bool {
    nets.iter().any(|n| n.contains(ip))
}

/// The VIPs of `fw` that `c` would drop (pure): none unless it drops;
/// every VIP of its family unless it reaches pier's chain, or accepts the
/// VIP and established connections.
pub fn blocked(c: &ForwardChain, fw: &Firewall) -> Vec<IpAddr> {
    if !c.drops || c.reaches_pier {
        return Vec::new();
    }
    fw.keys()
        .filter(|vip| c.family.sees(vip))
        .filter(|vip| !(c.accepts_established && contains(&c.accepts_to, vip)))
        .copied()
        .collect()
}

/// The command an operator would run so that `c` lets `vips` through.
pub fn fix_for(c: &ForwardChain, vips: &[IpAddr]) -> String {
    let list = |v6: bool| {
        vips.iter()
            .filter(|v| v.is_ipv6() == v6)
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match c.backend {
        Backend::Nftables => {
            let fam = c.family_word();
            let mut out = format!(
                "nft insert rule {fam} {} {} ct state established,related accept",
                c.table, c.chain
            );
            for (v6, proto) in [(false, "ip"), (true, "ip6")] {
                let l = list(v6);
                if !l.is_empty()
                    && (c.family == ChainFamily::Inet || (c.family == ChainFamily::Ip6) == v6)
                {
                    out.push_str(&format!(
                        "; nft insert rule {fam} {} {} {proto} daddr {{ {l} }} accept",
                        c.table, c.chain
                    ));
                }
            }
            out
        }
        Backend::IptablesNft | Backend::IptablesLegacy => {
            let program = program(c.backend, c.family == ChainFamily::Ip6);
            format!(
                "set host_firewall = \"open\" (pier inserts `-j {CHAIN}` at the top of {}), or: {program} -I {} 1 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT; {program} -I {} 1 -d <VIP> -j ACCEPT for {}",
                target_chain(c),
                c.chain,
                c.chain,
                if c.family == ChainFamily::Ip6 { list(true) } else { list(false) }
            )
        }
    }
}

impl ForwardChain {
    fn family_word(&self) -> &'static str {
        match self.family {
            ChainFamily::Ip => "ip",
            ChainFamily::Ip6 => "ip6",
            ChainFamily::Inet => "inet",
        }
    }
}

/// Where pier's jump goes in an iptables table: Docker's `DOCKER-USER`
/// when it exists, else the base chain.
fn target_chain(c: &ForwardChain) -> &str {
    if c.docker_user {
        "DOCKER-USER"
    } else {
        &c.chain
    }
}

fn program(backend: Backend, v6: bool) -> &'static str {
    match (backend, v6) {
        (Backend::IptablesLegacy, false) => "iptables-legacy",
        (Backend::IptablesLegacy, true) => "ip6tables-legacy",
        (_, false) => "iptables-nft",
        (_, true) => "ip6tables-nft",
    }
}

// ---- nft JSON ------------------------------------------------------------

use serde_json::Value;

fn ip_net(v: &Value) -> Vec<IpNet> {
    match v {
        Value::String(s) => s
            .parse::<IpAddr>()
            .map(IpNet::from)
            .or_else(|_| s.parse::<IpNet>())
            .into_iter()
            .collect(),
        Value::Object(o) => {
            if let Some(p) = o.get("prefix") {
                let addr = p
                    .get("addr")
                    .and_then(Value::as_str)
                    .and_then(|a| a.parse::<IpAddr>().ok());
                let len = p.get("len").and_then(Value::as_u64);
                match (addr, len) {
                    (Some(a), Some(l)) => IpNet::new(a, l.min(128) as u8).into_iter().collect(),
                    _ => Vec::new(),
                }
            } else if let Some(s) = o.get("set") {
                ip_net(s)
            } else if let Some(r) = o.get("range") {
                // A range: keep its first address (good enough for a VIP list).
                r.as_array()
                    .and_then(|a| a.first())
                    .map(ip_net)
                    .unwrap_or_default()
            } else {
                Vec::new()
            }
        }
        Value::Array(items) => items.iter().flat_map(ip_net).collect(),
        _ => Vec::new(),
    }
}

/// What one rule does, reduced (pure).
#[derive(Debug, Default)]
struct RuleSummary {
    /// It has no match (every packet hits its verdict).
    unconditional: bool,
    verdict: Option<String>,
    jump: Option<String>,
    daddr: Vec<IpNet>,
    established: bool,
}

fn summarize_nft_rule(exprs: &[Value]) -> RuleSummary {
    let mut r = RuleSummary {
        unconditional: true,
        ..RuleSummary::default()
    };
    for e in exprs {
        if let Some(m) = e.get("match") {
            r.unconditional = false;
            let left = &m["left"];
            if left["payload"]["field"] == "daddr" {
                r.daddr.extend(ip_net(&m["right"]));
            }
            if left["ct"]["key"] == "state" {
                let right = m["right"].to_string();
                if right.contains("established") {
                    r.established = true;
                }
            }
        } else if let Some(j) = e.get("jump").or_else(|| e.get("goto")) {
            r.jump = j["target"].as_str().map(String::from);
        } else if e.get("xt").is_some() {
            // An iptables match nft cannot show: some condition.
            r.unconditional = false;
        } else {
            for v in ["accept", "drop", "reject", "return"] {
                if e.get(v).is_some() {
                    r.verdict = Some(v.to_string());
                }
            }
        }
    }
    r
}

struct Table {
    chains: BTreeMap<String, Vec<RuleSummary>>,
}

/// Follow `chain` and the chains it jumps to (depth-limited): (reaches
/// pier's chain, accepted destinations, accepts established).
fn walk(t: &Table, chain: &str, depth: u8, out: &mut (bool, Vec<IpNet>, bool)) {
    let Some(rules) = t.chains.get(chain) else {
        return;
    };
    for r in rules {
        if let Some(j) = &r.jump {
            if j == CHAIN && r.unconditional {
                out.0 = true;
            } else if depth < 4 && r.unconditional {
                walk(t, j, depth + 1, out);
            }
        }
        if r.verdict.as_deref() == Some("accept") {
            out.1.extend(r.daddr.iter().copied());
            if r.established {
                out.2 = true;
            }
        }
    }
}

fn base_chain(
    backend: Backend,
    family: ChainFamily,
    table_name: &str,
    chain: &str,
    policy_drop: bool,
    t: &Table,
) -> ForwardChain {
    let last_drops = t.chains.get(chain).and_then(|r| r.last()).is_some_and(|r| {
        r.unconditional && matches!(r.verdict.as_deref(), Some("drop") | Some("reject"))
    });
    let mut w = (false, Vec::new(), false);
    walk(t, chain, 0, &mut w);
    ForwardChain {
        backend,
        family,
        table: table_name.to_string(),
        chain: chain.to_string(),
        drops: policy_drop || last_drops,
        reaches_pier: w.0,
        accepts_to: w.1,
        accepts_established: w.2,
        docker_user: t.chains.contains_key("DOCKER-USER"),
    }
}

/// Every base chain on the forward hook in `nft -j list ruleset` output,
/// but pier's own table (pure; garbage gives nothing).
pub fn chains_from_nft_json(json: &str) -> Vec<ForwardChain> {
    let v: Value = serde_json::from_str(json).unwrap_or_default();
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    let mut tables: BTreeMap<(String, String), Table> = BTreeMap::new();
    let mut bases = Vec::new();
    for i in &items {
        if let Some(c) = i.get("chain") {
            let key = (
                c["family"].as_str().unwrap_or_default().to_string(),
                c["table"].as_str().unwrap_or_default().to_string(),
            );
            let name = c["name"].as_str().unwrap_or_default().to_string();
            tables
                .entry(key.clone())
                .or_insert_with(|| Table {
                    chains: BTreeMap::new(),
                })
                .chains
                .entry(name.clone())
                .or_default();
            if c["hook"] == "forward" {
                bases.push((key, name, c["policy"] == "drop"));
            }
        } else if let Some(r) = i.get("rule") {
            let key = (
                r["family"].as_str().unwrap_or_default().to_string(),
                r["table"].as_str().unwrap_or_default().to_string(),
            );
            let chain = r["chain"].as_str().unwrap_or_default().to_string();
            let exprs = r["expr"].as_array().cloned().unwrap_or_default();
            tables
                .entry(key)
                .or_insert_with(|| Table {
                    chains: BTreeMap::new(),
                })
                .chains
                .entry(chain)
                .or_default()
                .push(summarize_nft_rule(&exprs));
        }
    }
    bases
        .into_iter()
        .filter_map(|((fam, table), chain, drop)| {
            let family = match fam.as_str() {
                "ip" => ChainFamily::Ip,
                "ip6" => ChainFamily::Ip6,
                "inet" => ChainFamily::Inet,
                _ => return None,
            };
            if fam == "inet" && table == nft::TABLE {
                return None;
            }
            // iptables-nft's naming: table `filter`, chain `FORWARD`.
            let backend = if family != ChainFamily::Inet && table == "filter" && chain == "FORWARD"
            {
                Backend::IptablesNft
            } else {
                Backend::Nftables
            };
            let t = tables.get(&(fam, table.clone()))?;
            Some(base_chain(backend, family, &table, &chain, drop, t))
        })
        .collect()
}

/// The `FORWARD` chain of `iptables-legacy -S` output (pure).
pub fn chains_from_iptables_save(text: &str, v6: bool) -> Option<ForwardChain> {
    let mut t = Table {
        chains: BTreeMap::new(),
    };
    let mut policy_drop = false;
    let mut seen = false;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["-P", "FORWARD", policy, ..] => {
                seen = true;
                policy_drop = *policy == "DROP";
            }
            ["-N", chain, ..] => {
                t.chains.entry(chain.to_string()).or_default();
            }
            ["-A", chain, rest @ ..] => {
                let mut r = RuleSummary {
                    unconditional: true,
                    ..RuleSummary::default()
                };
                let mut k = 0;
                while k < rest.len() {
                    match rest[k] {
                        "-j" | "-g" => {
                            let target = rest.get(k + 1).copied().unwrap_or_default();
                            match target {
                                "ACCEPT" => r.verdict = Some("accept".into()),
                                "DROP" => r.verdict = Some("drop".into()),
                                "REJECT" => r.verdict = Some("reject".into()),
                                "RETURN" => r.verdict = Some("return".into()),
                                other => r.jump = Some(other.to_string()),
                            }
                            k += 2;
                            // Target options (--reject-with ...) are no match.
                            while k < rest.len() {
                                k += 1;
                            }
                        }
                        "-d" => {
                            r.unconditional = false;
                            if let Some(d) = rest.get(k + 1) {
                                r.daddr.extend(ip_net(&Value::String(d.to_string())));
                            }
                            k += 2;
                        }
                        "--ctstate" | "--state" => {
                            r.unconditional = false;
                            if rest.get(k + 1).is_some_and(|s| s.contains("ESTABLISHED")) {
                                r.established = true;
                            }
                            k += 2;
                        }
                        "-m" => k += 2,
                        _ => {
                            r.unconditional = false;
                            k += 1;
                        }
                    }
                }
                t.chains.entry(chain.to_string()).or_default().push(r);
            }
            _ => {}
        }
    }
    seen.then(|| {
        base_chain(
            Backend::IptablesLegacy,
            if v6 {
                ChainFamily::Ip6
            } else {
                ChainFamily::Ip
            },
            "filter",
            "FORWARD",
            policy_drop,
            &t,
        )
    })
}

/// The rules of pier's chain for one family, as `iptables -S` prints them
/// (pure): one accept per VIP, port and allowed source; the replies and
/// ICMP errors of those connections.
pub fn pier_chain_rules(fw: &Firewall, v6: bool) -> Vec<String> {
    let mut out = Vec::new();
    let host = |ip: &IpAddr| format!("{ip}/{}", if ip.is_ipv6() { 128 } else { 32 });
    for (vip, rules) in fw.iter().filter(|(v, _)| v.is_ipv6() == v6) {
        for ((proto, port), sources) in &rules.ports {
            let p = proto.as_str();
            for src in sources {
                let from = if src.prefix_len() == 0 {
                    String::new()
                } else {
                    format!("-s {src} ")
                };
                out.push(format!(
                    "-A {CHAIN} {from}-d {} -p {p} -m {p} --dport {port} -j ACCEPT",
                    host(vip)
                ));
            }
        }
        out.push(format!(
            "-A {CHAIN} -d {} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            host(vip)
        ));
        out.push(format!(
            "-A {CHAIN} -s {} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            host(vip)
        ));
    }
    out
}

// ---- I/O -----------------------------------------------------------------

async fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .await
            .map_err(|e| format!("{program}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` exited with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn has_legacy_tables(v6: bool) -> bool {
    // thread-self: the namespace of this thread (pier's tests and tools
    // enter a namespace per thread; /proc/net follows the main thread).
    let names = if v6 {
        "/proc/thread-self/net/ip6_tables_names"
    } else {
        "/proc/thread-self/net/ip_tables_names"
    };
    let bin = if v6 {
        "ip6tables-legacy"
    } else {
        "iptables-legacy"
    };
    let installed = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(bin).exists());
    installed
        && std::fs::read_to_string(names).is_ok_and(|t| t.lines().any(|l| l.trim() == "filter"))
}

/// The tables (family, name) with a base chain on the forward hook, from
/// `nft -j list chains` output, pier's own left out (pure).
pub fn tables_with_forward_chains(json: &str) -> Vec<(String, String)> {
    let v: Value = serde_json::from_str(json).unwrap_or_default();
    let mut out: Vec<(String, String)> = v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("chain"))
        .filter(|c| c["hook"] == "forward")
        .filter_map(|c| {
            Some((
                c["family"].as_str()?.to_string(),
                c["table"].as_str()?.to_string(),
            ))
        })
        .filter(|(f, t)| !(f == "inet" && t == nft::TABLE))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Every base chain on the forward hook, both backends. Lists the chains
/// first and then only the tables that have one (never pier's own, whose
/// sets hold every VIP).
pub async fn forward_chains() -> Vec<ForwardChain> {
    let tables = match nft::run_nft(&["-j", "list", "chains"], None).await {
        Ok(json) => tables_with_forward_chains(&json),
        Err(e) => {
            tracing::debug!(error = %e, "nft list chains");
            Vec::new()
        }
    };
    let mut items: Vec<Value> = Vec::new();
    for (family, table) in &tables {
        match nft::run_nft(&["-j", "list", "table", family, table], None).await {
            Ok(json) => {
                let v: Value = serde_json::from_str(&json).unwrap_or_default();
                items.extend(v["nftables"].as_array().cloned().unwrap_or_default());
            }
            Err(e) => tracing::debug!(error = %e, "nft list table {family} {table}"),
        }
    }
    let mut out = chains_from_nft_json(&serde_json::json!({ "nftables": items }).to_string());
    for v6 in [false, true] {
        if !has_legacy_tables(v6) {
            continue;
        }
        let program = program(Backend::IptablesLegacy, v6);
        match run(program, &["-t", "filter", "-S"], None).await {
            Ok(text) => out.extend(chains_from_iptables_save(&text, v6)),
            Err(e) => tracing::debug!(error = %e, "{program} -S"),
        }
    }
    out
}

/// Put pier's chain and the jump to it into the iptables table of `c`
/// (idempotent: changes only what differs).
async fn open(c: &ForwardChain, fw: &Firewall) -> Result<(), String> {
    let v6 = c.family == ChainFamily::Ip6;
    let program = program(c.backend, v6);
    let want = pier_chain_rules(fw, v6);
    let have = run(program, &["-t", "filter", "-S", CHAIN], None)
        .await
        .ok();
    let have_rules: Option<Vec<String>> = have.map(|t| {
        t.lines()
            .filter(|l| l.starts_with("-A "))
            .map(String::from)
            .collect()
    });
    if have_rules.as_ref() != Some(&want) {
        let mut text = format!("*filter\n:{CHAIN} - [0:0]\n");
        for r in &want {
            text.push_str(r);
            text.push('\n');
        }
        text.push_str("COMMIT\n");
        run(&format!("{program}-restore"), &["--noflush"], Some(&text)).await?;
    }
    let target = target_chain(c).to_string();
    let listed = run(program, &["-t", "filter", "-S", &target], None).await?;
    let jump = format!("-A {target} -j {CHAIN}");
    let first = listed.lines().find(|l| l.starts_with("-A "));
    if first != Some(jump.as_str()) {
        // Elsewhere in the chain (somebody inserted above it): move it up.
        while run(program, &["-t", "filter", "-D", &target, "-j", CHAIN], None)
            .await
            .is_ok()
        {}
        run(
            program,
            &["-t", "filter", "-I", &target, "1", "-j", CHAIN],
            None,
        )
        .await?;
    }
    Ok(())
}

/// Look at the host's forward chains and, with `open`, put pier's accepts
/// into the iptables ones that drop. Returns one finding per chain that
/// drops VIP traffic (opened or not).
pub async fn check(fw: &Firewall, open_iptables: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    for c in forward_chains().await {
        let vips = blocked(&c, fw);
        if vips.is_empty() && !(c.reaches_pier && c.drops) {
            continue;
        }
        let iptables = c.backend != Backend::Nftables;
        let mut opened = c.reaches_pier;
        if iptables && open_iptables && !vips.is_empty() {
            match open(&c, fw).await {
                Ok(()) => opened = true,
                Err(e) => {
                    tracing::warn!(table = %c.table_name(), chain = %c.chain, "cannot open the host firewall for pier's VIPs: {e}")
                }
            }
        } else if iptables && open_iptables && c.reaches_pier {
            // Keep pier's chain in step with the VIPs.
            if let Err(e) = open(&c, fw).await {
                tracing::warn!(table = %c.table_name(), chain = %c.chain, "cannot update {CHAIN}: {e}");
            }
        }
        out.push(Finding {
            table: c.table_name(),
            chain: c.chain.clone(),
            opened,
            fix: if opened {
                String::new()
            } else {
                fix_for(&c, &vips)
            },
            blocked_vips: if opened { Vec::new() } else { vips },
        });
    }
    out
}

/// Remove pier's chain and every jump to it, in every iptables table
/// where it exists (at stop).
pub async fn remove() {
    let mut backends = vec![(Backend::IptablesNft, false), (Backend::IptablesNft, true)];
    for v6 in [false, true] {
        if has_legacy_tables(v6) {
            backends.push((Backend::IptablesLegacy, v6));
        }
    }
    let ruleset = nft::run_nft(&["list", "ruleset"], None)
        .await
        .unwrap_or_default();
    for (backend, v6) in backends {
        if backend == Backend::IptablesNft && !ruleset.contains(CHAIN) {
            continue;
        }
        let program = program(backend, v6);
        if run(program, &["-t", "filter", "-S", CHAIN], None)
            .await
            .is_err()
        {
            continue;
        }
        for target in ["FORWARD", "DOCKER-USER"] {
            while run(program, &["-t", "filter", "-D", target, "-j", CHAIN], None)
                .await
                .is_ok()
            {}
        }
        let _ = run(program, &["-t", "filter", "-F", CHAIN], None).await;
        if let Err(e) = run(program, &["-t", "filter", "-X", CHAIN], None).await {
            tracing::warn!("removing {CHAIN}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;
    use crate::route::nft::VipRules;
    use std::collections::BTreeSet;

    fn fw() -> Firewall {
        let mut r = VipRules::default();
        r.ports.insert(
            (Protocol::Tcp, 80),
            BTreeSet::from(["0.0.0.0/0".parse().unwrap()]),
        );
        r.ports.insert(
            (Protocol::Tcp, 443),
            BTreeSet::from(["10.0.1.0/24".parse().unwrap()]),
        );
        let mut r6 = VipRules::default();
        r6.ports.insert(
            (Protocol::Udp, 53),
            BTreeSet::from(["::/0".parse().unwrap()]),
        );
        BTreeMap::from([
            ("10.77.0.10".parse().unwrap(), r),
            ("fd66::10".parse().unwrap(), r6),
        ])
    }

    const DOCKERISH: &str = r#"{"nftables":[{"metainfo":{}},
      {"table":{"family":"ip","name":"filter"}},
      {"chain":{"family":"ip","table":"filter","name":"FORWARD","type":"filter","hook":"forward","prio":0,"policy":"drop"}},
      {"chain":{"family":"ip","table":"filter","name":"DOCKER-USER"}},
      {"rule":{"family":"ip","table":"filter","chain":"FORWARD","expr":[{"counter":{}},{"jump":{"target":"DOCKER-USER"}}]}},
      {"rule":{"family":"ip","table":"filter","chain":"DOCKER-USER","expr":[{"counter":{}},{"return":null}]}},
      {"chain":{"family":"inet","table":"filter","name":"forward","type":"filter","hook":"forward","prio":0,"policy":"drop"}},
      {"rule":{"family":"inet","table":"filter","chain":"forward","expr":[{"match":{"op":"in","left":{"ct":{"key":"state"}},"right":["established","related"]}},{"accept":null}]}},
      {"rule":{"family":"inet","table":"filter","chain":"forward","expr":[{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"daddr"}},"right":{"set":["10.77.0.10",{"prefix":{"addr":"10.78.0.0","len":16}}]}}},{"accept":null}]}},
      {"chain":{"family":"inet","table":"pier","name":"forward","type":"filter","hook":"forward","prio":0,"policy":"accept"}},
      {"chain":{"family":"ip","table":"nat","name":"POSTROUTING","type":"nat","hook":"postrouting","prio":100,"policy":"accept"}}
    ]}"#;

    #[test]
    fn forward_chains_of_iptables_nft_and_nftables_are_read() {
        assert_eq!(
            tables_with_forward_chains(DOCKERISH),
            vec![
                ("inet".to_string(), "filter".to_string()),
                ("ip".to_string(), "filter".to_string())
            ]
        );
        let chains = chains_from_nft_json(DOCKERISH);
        assert_eq!(chains.len(), 2, "{chains:?}");
        let ipt = &chains[0];
        assert_eq!(
            (ipt.backend, ipt.table_name(), ipt.chain.as_str()),
            (Backend::IptablesNft, "ip filter".into(), "FORWARD")
        );
        assert!(ipt.drops && ipt.docker_user && !ipt.reaches_pier);
        assert_eq!(
            blocked(ipt, &fw()),
            vec!["10.77.0.10".parse::<IpAddr>().unwrap()],
            "the ip table sees only IPv4"
        );
        assert!(fix_for(ipt, &blocked(ipt, &fw())).contains("DOCKER-USER"));
        let inet = &chains[1];
        assert_eq!(inet.backend, Backend::Nftables);
        assert!(inet.accepts_established);
        // 10.77.0.10 is accepted; fd66::10 is not.
        assert_eq!(
            blocked(inet, &fw()),
            vec!["fd66::10".parse::<IpAddr>().unwrap()]
        );
        let fix = fix_for(inet, &blocked(inet, &fw()));
        assert!(
            fix.contains("nft insert rule inet filter forward ip6 daddr { fd66::10 } accept"),
            "{fix}"
        );
    }

    #[test]
    fn a_jump_to_piers_chain_anywhere_on_the_path_opens_the_chain() {
        let with_jump = DOCKERISH.replace(
            r#"{"counter":{}},{"return":null}"#,
            r#"{"jump":{"target":"PIER-FORWARD"}}"#,
        );
        let chains = chains_from_nft_json(&with_jump);
        assert!(chains[0].reaches_pier);
        assert!(blocked(&chains[0], &fw()).is_empty());
        assert!(chains_from_nft_json("garbage").is_empty());
    }

    #[test]
    fn legacy_save_output_is_read() {
        let text = "-P INPUT ACCEPT\n-P FORWARD DROP\n-P OUTPUT ACCEPT\n-N DOCKER-USER\n-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j RETURN\n";
        let c = chains_from_iptables_save(text, false).unwrap();
        assert!(c.drops && c.docker_user && !c.reaches_pier);
        assert_eq!(c.table_name(), "iptables-legacy ip filter");
        let open = text.replace(
            "-A DOCKER-USER -j RETURN",
            "-A DOCKER-USER -j PIER-FORWARD\n-A DOCKER-USER -j RETURN",
        );
        assert!(
            chains_from_iptables_save(&open, false)
                .unwrap()
                .reaches_pier
        );
        // Accept policy, but a final unconditional REJECT (ufw-like).
        let reject = "-P FORWARD ACCEPT\n-A FORWARD -d 10.77.0.10/32 -j ACCEPT\n-A FORWARD -j REJECT --reject-with icmp-port-unreachable\n";
        let c = chains_from_iptables_save(reject, false).unwrap();
        assert!(c.drops);
        assert_eq!(blocked(&c, &fw()).len(), 1, "no accept of the replies");
        assert!(chains_from_iptables_save("", false).is_none());
    }

    #[test]
    fn piers_chain_accepts_exactly_the_vips_ports_and_sources() {
        assert_eq!(
            pier_chain_rules(&fw(), false),
            vec![
                "-A PIER-FORWARD -d 10.77.0.10/32 -p tcp -m tcp --dport 80 -j ACCEPT",
                "-A PIER-FORWARD -s 10.0.1.0/24 -d 10.77.0.10/32 -p tcp -m tcp --dport 443 -j ACCEPT",
                "-A PIER-FORWARD -d 10.77.0.10/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "-A PIER-FORWARD -s 10.77.0.10/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            ]
        );
        assert_eq!(
            pier_chain_rules(&fw(), true)[0],
            "-A PIER-FORWARD -d fd66::10/128 -p udp -m udp --dport 53 -j ACCEPT"
        );
    }
}
