//! nftables: pier's one table `inet pier`, rendered whole from the desired
//! state (pure) and loaded as one atomic `nft -f -` transaction.
//!
//! Layout (per family; `4` shown, `6` is the same with `ip6`):
//!
//! ```text
//! set vips4      ipv4_addr                                   every VIP pier forwards
//! set ports4     ipv4_addr . inet_proto . inet_service       every declared VIP port
//! set allow4     ipv4_addr . inet_proto . inet_service . ipv4_addr   (flags interval)
//!                declared port and allowed source prefix (0.0.0.0/0 = any source)
//! map accepted4  ipv4_addr : counter    per-VIP counter "a_<hex vip>"
//! map dropped4   ipv4_addr : counter    per-VIP counter "d_<hex vip>"
//! counter dropped_source, dropped_port  totals by reason
//!
//! chain forward (hook forward, priority filter, policy accept)
//!   ip daddr @vips4 jump vip4           traffic not to a VIP is untouched
//! chain vip4
//!   allowed (vip . proto . port . source)      → count accepted, accept
//!   ICMP errors (PMTU, unreachable)            → count accepted, accept
//!   declared port, source not allowed          → count dropped, drop
//!   anything else to the VIP                   → count dropped, drop
//! ```
//!
//! The rule count is fixed; VIPs only add set elements and counters. Every
//! apply flushes the chains, recreates the sets and maps and refills them in
//! the same transaction, so a failure leaves the previous table in place. Per-VIP
//! counter objects survive an apply (re-adding an existing counter keeps its
//! value); counters of VIPs that are gone are deleted.

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
    addr_type: &'static str,
    match_daddr: &'static str,
    match_saddr: &'static str,
    icmp: &'static str,
}

const V4: FamilyNames = FamilyNames {
    suffix: '4',
    addr_type: "ipv4_addr",
    match_daddr: "ip daddr",
    match_saddr: "ip saddr",
    icmp: "icmp type { destination-unreachable, time-exceeded, parameter-problem }",
};

const V6: FamilyNames = FamilyNames {
    suffix: '6',
    addr_type: "ipv6_addr",
    match_daddr: "ip6 daddr",
    match_saddr: "ip6 saddr",
    icmp:
        "icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem }",
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

/// The whole nft transaction that makes `inet pier` equal to `fw` (pure).
///
/// `existing_counters` are the counter objects now in the table; those of
/// VIPs no longer wanted are deleted. With `fresh`, the table is deleted and
/// created anew first (for a table an older pier left with another layout);
/// counters then restart at zero.
pub fn render(fw: &Firewall, existing_counters: &BTreeSet<String>, fresh: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# generated by pier; this table is pier's alone");
    if fresh {
        let _ = writeln!(out, "table inet {TABLE} {{}}");
        let _ = writeln!(out, "delete table inet {TABLE}");
    }
    // (kind, name, declaration) of every set and map.
    let mut sets: Vec<(&str, String, String)> = Vec::new();
    for f in [&V4, &V6] {
        let (s, t) = (f.suffix, f.addr_type);
        sets.push(("set", format!("vips{s}"), format!("type {t};")));
        sets.push((
            "set",
            format!("ports{s}"),
            format!("type {t} . inet_proto . inet_service;"),
        ));
        sets.push((
            "set",
            format!("allow{s}"),
            format!("type {t} . inet_proto . inet_service . {t}; flags interval;"),
        ));
        sets.push((
            "map",
            format!("accepted{s}"),
            format!("type {t} : counter;"),
        ));
        sets.push(("map", format!("dropped{s}"), format!("type {t} : counter;")));
    }
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
    let _ = writeln!(out, "\tchain vip4 {{}}");
    let _ = writeln!(out, "\tchain vip6 {{}}");
    let _ = writeln!(out, "}}");
    for chain in ["forward", "vip4", "vip6"] {
        let _ = writeln!(out, "flush chain inet {TABLE} {chain}");
    }
    // Sets are recreated rather than flushed: refilling a flushed interval
    // set in one transaction costs the kernel ~10 s at 20,000 elements,
    // a new one ~0.1 s. Nothing refers to them once the chains are flushed.
    for (kind, name, decl) in &sets {
        let _ = writeln!(out, "delete {kind} inet {TABLE} {name}");
        let _ = writeln!(out, "add {kind} inet {TABLE} {name} {{ {decl} }}");
    }
    let wanted = counter_names(fw);
    for stale in existing_counters.difference(&wanted) {
        if parse_counter_name(stale).is_some() && !fresh {
            let _ = writeln!(out, "delete counter inet {TABLE} {stale}");
        }
    }
    for name in &wanted {
        let _ = writeln!(out, "add counter inet {TABLE} {name}");
    }
    for (f, family) in [(&V4, Family::V4), (&V6, Family::V6)] {
        let s = f.suffix;
        let vips: Vec<&IpAddr> = fw.keys().filter(|v| Family::of(v) == family).collect();
        let mut ports = Vec::new();
        let mut allow = Vec::new();
        for vip in &vips {
            if let Some(rules) = fw.get(vip) {
                for ((proto, port), sources) in &rules.ports {
                    let p = proto.as_str();
                    ports.push(format!("{vip} . {p} . {port}"));
                    for src in sources {
                        allow.push(format!("{vip} . {p} . {port} . {src}"));
                    }
                }
            }
        }
        let names = |prefix: char| -> Vec<String> {
            vips.iter()
                .map(|v| format!("{v} : \"{}\"", counter_name(prefix, v)))
                .collect()
        };
        let plain: Vec<String> = vips.iter().map(|v| v.to_string()).collect();
        push_elements(&mut out, &format!("vips{s}"), &plain);
        push_elements(&mut out, &format!("ports{s}"), &ports);
        push_elements(&mut out, &format!("allow{s}"), &allow);
        push_elements(&mut out, &format!("accepted{s}"), &names('a'));
        push_elements(&mut out, &format!("dropped{s}"), &names('d'));
    }
    for f in [&V4, &V6] {
        let (s, d, src) = (f.suffix, f.match_daddr, f.match_saddr);
        let _ = writeln!(
            out,
            "add rule inet {TABLE} forward {d} @vips{s} jump vip{s}"
        );
        let rule = |body: String| format!("add rule inet {TABLE} vip{s} {body}\n");
        out.push_str(&rule(format!(
            "{d} . meta l4proto . th dport . {src} @allow{s} counter name {d} map @accepted{s} accept"
        )));
        out.push_str(&rule(format!(
            "{} counter name {d} map @accepted{s} accept",
            f.icmp
        )));
        out.push_str(&rule(format!(
            "{d} . meta l4proto . th dport @ports{s} counter name {d} map @dropped{s} counter name dropped_source drop"
        )));
        out.push_str(&rule(format!(
            "counter name {d} map @dropped{s} counter name dropped_port drop"
        )));
    }
    out
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
    pub accepted: Counter,
    /// Dropped: a port the VIP does not declare, or a source outside
    /// `loadBalancerSourceRanges`.
    pub dropped: Counter,
}

/// Counter objects named in `nft -j list counters table inet pier` output
/// (pure): every counter name with its values.
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
        if c.get("table").and_then(|t| t.as_str()) != Some(TABLE) {
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
                e.accepted = *c;
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

/// Counter objects now in pier's table; empty when the table does not exist.
pub async fn read_counters() -> Result<BTreeMap<String, Counter>, RouteError> {
    match run_nft(&["-j", "list", "counters", "table", "inet", TABLE], None).await {
        Ok(json) => parse_counters_json(&json),
        Err(RouteError::Nft { detail, .. }) if detail.contains("No such file or directory") => {
            Ok(BTreeMap::new())
        }
        Err(e) => Err(e),
    }
}

/// Per-VIP counter names wanted for `fw`.
pub fn counter_names(fw: &Firewall) -> BTreeSet<String> {
    fw.keys()
        .flat_map(|vip| [counter_name('a', vip), counter_name('d', vip)])
        .collect()
}

/// Make pier's table equal to `fw` in one transaction. `known` is the set
/// of counter objects in the table if the caller knows it (what the last
/// successful apply left); otherwise it is read. When the incremental
/// transaction fails (a table with another layout, a counter deleted by
/// hand), retry once with the table recreated. Returns the counter objects
/// the table now holds, for the next call.
pub async fn apply(
    fw: &Firewall,
    known: Option<&BTreeSet<String>>,
) -> Result<BTreeSet<String>, RouteError> {
    let existing: BTreeSet<String> = match known {
        Some(k) => k.clone(),
        None => read_counters().await?.into_keys().collect(),
    };
    let text = render(fw, &existing, false);
    if let Err(first) = run_nft(&["-f", "-"], Some(&text)).await {
        tracing::warn!(error = %first, "nft transaction failed; recreating table inet pier");
        run_nft(&["-f", "-"], Some(&render(fw, &BTreeSet::new(), true))).await?;
    }
    Ok(counter_names(fw))
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
    use std::sync::Arc;

    fn ann(vip: &str, mode: AnnounceMode, ports: &[(&str, &[&str])]) -> Arc<Announcement> {
        Arc::new(Announcement {
            vip: vip.parse().unwrap(),
            pool: "p".into(),
            mode,
            next_hops: vec![NextHop {
                node: "n".into(),
                address: "10.0.0.1".parse().unwrap(),
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

    const GOLDEN: &str = r#"# generated by pier; this table is pier's alone
table inet pier {
	set vips4 { type ipv4_addr; }
	set ports4 { type ipv4_addr . inet_proto . inet_service; }
	set allow4 { type ipv4_addr . inet_proto . inet_service . ipv4_addr; flags interval; }
	map accepted4 { type ipv4_addr : counter; }
	map dropped4 { type ipv4_addr : counter; }
	set vips6 { type ipv6_addr; }
	set ports6 { type ipv6_addr . inet_proto . inet_service; }
	set allow6 { type ipv6_addr . inet_proto . inet_service . ipv6_addr; flags interval; }
	map accepted6 { type ipv6_addr : counter; }
	map dropped6 { type ipv6_addr : counter; }
	counter dropped_source {}
	counter dropped_port {}
	chain forward { type filter hook forward priority filter; policy accept; }
	chain vip4 {}
	chain vip6 {}
}
flush chain inet pier forward
flush chain inet pier vip4
flush chain inet pier vip6
delete set inet pier vips4
add set inet pier vips4 { type ipv4_addr; }
delete set inet pier ports4
add set inet pier ports4 { type ipv4_addr . inet_proto . inet_service; }
delete set inet pier allow4
add set inet pier allow4 { type ipv4_addr . inet_proto . inet_service . ipv4_addr; flags interval; }
delete map inet pier accepted4
add map inet pier accepted4 { type ipv4_addr : counter; }
delete map inet pier dropped4
add map inet pier dropped4 { type ipv4_addr : counter; }
delete set inet pier vips6
add set inet pier vips6 { type ipv6_addr; }
delete set inet pier ports6
add set inet pier ports6 { type ipv6_addr . inet_proto . inet_service; }
delete set inet pier allow6
add set inet pier allow6 { type ipv6_addr . inet_proto . inet_service . ipv6_addr; flags interval; }
delete map inet pier accepted6
add map inet pier accepted6 { type ipv6_addr : counter; }
delete map inet pier dropped6
add map inet pier dropped6 { type ipv6_addr : counter; }
delete counter inet pier a_0a4d0063
delete counter inet pier d_0a4d0063
add counter inet pier a_0a4d000a
add counter inet pier a_0a4d000b
add counter inet pier a_fd660000000000000000000000000010
add counter inet pier d_0a4d000a
add counter inet pier d_0a4d000b
add counter inet pier d_fd660000000000000000000000000010
add element inet pier vips4 { 10.77.0.10, 10.77.0.11 }
add element inet pier ports4 { 10.77.0.10 . tcp . 80, 10.77.0.10 . tcp . 443, 10.77.0.11 . tcp . 80 }
add element inet pier allow4 { 10.77.0.10 . tcp . 80 . 0.0.0.0/0, 10.77.0.10 . tcp . 443 . 192.0.2.0/24, 10.77.0.11 . tcp . 80 . 0.0.0.0/0 }
add element inet pier accepted4 { 10.77.0.10 : "a_0a4d000a", 10.77.0.11 : "a_0a4d000b" }
add element inet pier dropped4 { 10.77.0.10 : "d_0a4d000a", 10.77.0.11 : "d_0a4d000b" }
add element inet pier vips6 { fd66::10 }
add element inet pier ports6 { fd66::10 . udp . 53 }
add element inet pier allow6 { fd66::10 . udp . 53 . 2001:db8::/32 }
add element inet pier accepted6 { fd66::10 : "a_fd660000000000000000000000000010" }
add element inet pier dropped6 { fd66::10 : "d_fd660000000000000000000000000010" }
add rule inet pier forward ip daddr @vips4 jump vip4
add rule inet pier vip4 ip daddr . meta l4proto . th dport . ip saddr @allow4 counter name ip daddr map @accepted4 accept
add rule inet pier vip4 icmp type { destination-unreachable, time-exceeded, parameter-problem } counter name ip daddr map @accepted4 accept
add rule inet pier vip4 ip daddr . meta l4proto . th dport @ports4 counter name ip daddr map @dropped4 counter name dropped_source drop
add rule inet pier vip4 counter name ip daddr map @dropped4 counter name dropped_port drop
add rule inet pier forward ip6 daddr @vips6 jump vip6
add rule inet pier vip6 ip6 daddr . meta l4proto . th dport . ip6 saddr @allow6 counter name ip6 daddr map @accepted6 accept
add rule inet pier vip6 icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem } counter name ip6 daddr map @accepted6 accept
add rule inet pier vip6 ip6 daddr . meta l4proto . th dport @ports6 counter name ip6 daddr map @dropped6 counter name dropped_source drop
add rule inet pier vip6 counter name ip6 daddr map @dropped6 counter name dropped_port drop
"#;

    #[test]
    fn render_golden() {
        let existing: BTreeSet<String> = [
            "a_0a4d000a",
            "a_0a4d0063",
            "d_0a4d0063",
            "dropped_port",
            "dropped_source",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let text = render(&firewall(&sample()), &existing, false);
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
        assert_eq!(text.matches("add rule").count(), 10, "rule count is fixed");
        let big: Firewall = (0..1000u32)
            .map(|i| {
                (
                    IpAddr::V4((0x0a4d_0000 + i).into()),
                    firewall(&sample()).into_values().next().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            render(&big, &BTreeSet::new(), false)
                .matches("add rule")
                .count(),
            10
        );
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
          {"counter": {"family": "inet", "name": "a_0a4d000b", "table": "other", "handle": 6, "packets": 1, "bytes": 60}}]}"#;
        let objs = parse_counters_json(json).unwrap();
        assert_eq!(objs.len(), 3);
        let per_vip = vip_counters(&objs);
        assert_eq!(
            per_vip[&"10.77.0.10".parse::<IpAddr>().unwrap()],
            VipCounters {
                accepted: Counter {
                    packets: 7,
                    bytes: 700
                },
                dropped: Counter {
                    packets: 1,
                    bytes: 60
                },
            }
        );
        assert_eq!(per_vip.len(), 1);
        assert!(parse_counters_json("not json").is_err());
        assert!(parse_counters_json("{}").unwrap().is_empty());
    }
}
