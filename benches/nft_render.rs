//! pier's `inet pier` table for 10,000 VIPs: rendered as nft text (pier's
//! `route::nft::render_layout` with `vip_counters = true`, the layout the
//! JSON side builds, applied with `nft -f -`) and as nftables JSON built
//! with the `nftables` crate's typed schema (applied with `nft -j -f -`), in
//! the same run. Prints a markdown table for docs/benchmarks.md.
//!
//! The JSON side uses the crate's types for everything they can express
//! (table, chains, the `vips` sets, counters, every element list, flush and
//! delete commands) and raw JSON for what they cannot: maps whose values are
//! counters or verdicts (`"map": "counter"` / `"verdict"` is no `SetType`)
//! and `counter name <map lookup>` statements (the crate's `Counter` is a
//! name or an anonymous counter). The run also reads the applied table back
//! through the crate's schema and counts what it cannot parse or loses.
//!
//! Apply needs root, `ip` and `nft`: each path gets its own network
//! namespace, created here and removed on drop. Without them only the
//! render rows are printed.
//!
//! `cargo bench --bench nft_render` (env `NFT_VIPS`, default 10000).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nftables::expr::{Expression, NamedExpression, Verdict};
use nftables::schema::{
    Chain, Counter, Element, NfCmd, NfListObject, NfObject, Set, SetType, SetTypeValue, Table,
};
use nftables::stmt::JumpTarget;
use nftables::types::NfFamily;
use pier::model::{
    AnnounceMode, Announcement, BgpAttributes, Desired, Family, NextHop, PortRule, PortSpec,
};
use pier::route::nft::{self, Firewall, TABLE};
use serde::Serialize;
use serde_json::{json, Value};

fn desired(n: usize) -> Desired {
    let lists: [&[&str]; 2] = [&["192.0.2.0/24"], &["198.51.100.0/24", "203.0.113.9/32"]];
    Desired {
        generation: 1,
        announcements: (0..n)
            .map(|i| {
                let ports = [("80/tcp", &[][..]), ("443/tcp", lists[i % 2])];
                Arc::new(Announcement {
                    vip: IpAddr::V4(Ipv4Addr::from(0x0a4d_0000 + i as u32)),
                    pool: "p".into(),
                    mode: AnnounceMode::BgpSelf,
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
            })
            .collect(),
    }
}

/// One command of the JSON document: typed where the crate can say it.
#[derive(Serialize)]
#[serde(untagged)]
enum Item<'a> {
    Typed(NfObject<'a>),
    Raw(Value),
}

#[derive(Serialize)]
struct Doc<'a> {
    nftables: Vec<Item<'a>>,
}

fn add(o: NfListObject<'_>) -> Item<'_> {
    Item::Typed(NfObject::CmdObject(NfCmd::Add(o)))
}

fn s(x: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(x.into()))
}

fn chain(name: &str) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.to_string().into(),
        ..Default::default()
    })
}

fn elements(name: String, elem: Vec<Expression<'static>>) -> Option<Item<'static>> {
    (!elem.is_empty()).then(|| {
        add(NfListObject::Element(Element {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: name.into(),
            elem: elem.into(),
        }))
    })
}

/// The same transaction as [`render_text`], as JSON.
fn render_json(fw: &Firewall, existing: &BTreeSet<String>) -> String {
    let mut items: Vec<Item> = Vec::new();
    items.push(add(NfListObject::Table(Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    })));
    // Source sets of each family, numbered in sorted order as pier does.
    let mut chain_of: [BTreeMap<_, usize>; 2] = [BTreeMap::new(), BTreeMap::new()];
    for (vip, rules) in fw {
        let f = usize::from(Family::of(vip) == Family::V6);
        for sources in rules.ports.values() {
            if !sources.iter().any(|p| p.prefix_len() == 0) {
                chain_of[f].entry(sources).or_insert(0);
            }
        }
    }
    for m in chain_of.iter_mut() {
        for (k, (_, n)) in m.iter_mut().enumerate() {
            *n = k;
        }
    }
    let fams = [('4', "ipv4_addr", "ip"), ('6', "ipv6_addr", "ip6")];
    let map_decls = |sfx: char, t: &str| -> Vec<(String, Value, &'static str)> {
        let cat = json!([t, "inet_proto", "inet_service"]);
        vec![
            (format!("open{sfx}"), cat.clone(), "counter"),
            (format!("ranged{sfx}"), cat, "verdict"),
            (format!("accepted{sfx}"), json!(t), "counter"),
            (format!("dropped{sfx}"), json!(t), "counter"),
        ]
    };
    let vips_set = |sfx: char| {
        NfListObject::Set(Box::new(Set {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: format!("vips{sfx}").into(),
            set_type: SetTypeValue::Single(if sfx == '4' {
                SetType::Ipv4Addr
            } else {
                SetType::Ipv6Addr
            }),
            ..Default::default()
        }))
    };
    let raw_map = |name: &str, t: &Value, m: &str| json!({"family": "inet", "table": TABLE, "name": name, "type": t, "map": m});
    for (sfx, t, _) in fams {
        items.push(add(vips_set(sfx)));
        for (name, ty, m) in map_decls(sfx, t) {
            items.push(Item::Raw(json!({"add": {"map": raw_map(&name, &ty, m)}})));
        }
    }
    for name in ["dropped_source", "dropped_port"] {
        items.push(add(NfListObject::Counter(Counter {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: name.into(),
            handle: None,
            packets: None,
            bytes: None,
        })));
    }
    items.push(Item::Raw(
        json!({"add": {"chain": {"family": "inet", "table": TABLE,
        "name": "forward", "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}}),
    ));
    let mut wanted_chains = vec!["vip4".to_string(), "vip6".to_string()];
    for (f, (sfx, _, _)) in fams.iter().enumerate() {
        wanted_chains.extend((0..chain_of[f].len()).map(|k| format!("src{sfx}_{k}")));
    }
    for c in &wanted_chains {
        items.push(add(chain(c)));
    }
    let stale: Vec<&String> = existing
        .iter()
        .filter(|n| nft::is_source_chain(n) && !wanted_chains.contains(n))
        .collect();
    for c in std::iter::once(&"forward".to_string())
        .chain(&wanted_chains)
        .chain(stale.iter().copied())
    {
        items.push(Item::Typed(NfObject::CmdObject(NfCmd::Flush(
            nftables::schema::FlushObject::Chain(Chain {
                family: NfFamily::INet,
                table: TABLE.into(),
                name: c.clone().into(),
                ..Default::default()
            }),
        ))));
    }
    for (sfx, t, _) in fams {
        items.push(Item::Typed(NfObject::CmdObject(NfCmd::Delete(vips_set(
            sfx,
        )))));
        items.push(add(vips_set(sfx)));
        for (name, ty, m) in map_decls(sfx, t) {
            items.push(Item::Raw(
                json!({"delete": {"map": {"family": "inet", "table": TABLE, "name": name}}}),
            ));
            items.push(Item::Raw(json!({"add": {"map": raw_map(&name, &ty, m)}})));
        }
    }
    for c in &stale {
        items.push(Item::Typed(NfObject::CmdObject(NfCmd::Delete(chain(c)))));
    }
    let wanted = nft::counter_names(fw);
    for name in existing.difference(&wanted) {
        if nft::parse_counter_name(name).is_some() {
            items.push(Item::Typed(NfObject::CmdObject(NfCmd::Delete(
                NfListObject::Counter(Counter {
                    family: NfFamily::INet,
                    table: TABLE.into(),
                    name: name.clone().into(),
                    handle: None,
                    packets: None,
                    bytes: None,
                }),
            ))));
        }
    }
    for name in &wanted {
        items.push(add(NfListObject::Counter(Counter {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: name.clone().into(),
            handle: None,
            packets: None,
            bytes: None,
        })));
    }
    for (f, (sfx, _, _)) in fams.iter().enumerate() {
        let fam = if f == 0 { Family::V4 } else { Family::V6 };
        let (mut vips, mut open, mut ranged, mut acc, mut drop) =
            (vec![], vec![], vec![], vec![], vec![]);
        for (vip, rules) in fw.iter().filter(|(v, _)| Family::of(v) == fam) {
            let v = vip.to_string();
            vips.push(s(&v));
            let a = nft::counter_name('a', vip);
            for ((proto, port), sources) in &rules.ports {
                let key = Expression::Named(NamedExpression::Concat(vec![
                    s(&v),
                    s(proto.as_str()),
                    Expression::Number(u32::from(*port)),
                ]));
                match chain_of[f].get(sources) {
                    None => open.push(Expression::List(vec![key, s(&a)])),
                    Some(k) => ranged.push(Expression::List(vec![
                        key,
                        Expression::Verdict(Verdict::Goto(JumpTarget {
                            target: format!("src{sfx}_{k}").into(),
                        })),
                    ])),
                }
            }
            acc.push(Expression::List(vec![s(&v), s(a)]));
            drop.push(Expression::List(vec![
                s(&v),
                s(nft::counter_name('d', vip)),
            ]));
        }
        for (name, elem) in [
            (format!("vips{sfx}"), vips),
            (format!("open{sfx}"), open),
            (format!("ranged{sfx}"), ranged),
            (format!("accepted{sfx}"), acc),
            (format!("dropped{sfx}"), drop),
        ] {
            items.extend(elements(name, elem));
        }
    }
    for (f, (sfx, _, ip)) in fams.iter().enumerate() {
        let daddr = json!({"payload": {"protocol": ip, "field": "daddr"}});
        let key = json!({"concat": [daddr, {"meta": {"key": "l4proto"}},
            {"payload": {"protocol": "th", "field": "dport"}}]});
        let cmap = |m: &str, k: &Value| json!({"counter": {"map": {"key": k, "data": format!("@{m}{sfx}")}}});
        let icmp = if *sfx == '4' {
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "icmp", "field": "type"}},
                "right": {"set": ["destination-unreachable", "time-exceeded", "parameter-problem"]}}})
        } else {
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}},
                "right": {"set": ["destination-unreachable", "packet-too-big", "time-exceeded", "parameter-problem"]}}})
        };
        let vip_chain = format!("vip{sfx}");
        let mut rules: Vec<(String, Value)> = vec![
            (
                "forward".into(),
                json!([{"match": {"op": "==", "left": daddr, "right": format!("@vips{sfx}")}},
                    {"jump": {"target": vip_chain}}]),
            ),
            (
                vip_chain.clone(),
                json!([cmap("open", &key), {"accept": null}]),
            ),
            (
                vip_chain.clone(),
                json!([{"vmap": {"key": key, "data": format!("@ranged{sfx}")}}]),
            ),
            (
                vip_chain.clone(),
                json!([icmp, cmap("accepted", &daddr), {"accept": null}]),
            ),
            (
                vip_chain.clone(),
                json!([cmap("dropped", &daddr), {"counter": "dropped_port"}, {"drop": null}]),
            ),
        ];
        for (sources, k) in &chain_of[f] {
            let c = format!("src{sfx}_{k}");
            if !sources.is_empty() {
                let set: Vec<Value> = sources
                    .iter()
                    .map(|p| json!({"prefix": {"addr": p.addr().to_string(), "len": p.prefix_len()}}))
                    .collect();
                let saddr = json!({"payload": {"protocol": ip, "field": "saddr"}});
                rules.push((
                    c.clone(),
                    json!([{"match": {"op": "==", "left": saddr, "right": {"set": set}}},
                        cmap("accepted", &daddr), {"accept": null}]),
                ));
            }
            rules.push((
                c,
                json!([cmap("dropped", &daddr), {"counter": "dropped_source"}, {"drop": null}]),
            ));
        }
        for (c, expr) in rules {
            items.push(Item::Raw(
                json!({"add": {"rule": {"family": "inet", "table": TABLE,
                "chain": c, "expr": expr}}}),
            ));
        }
    }
    serde_json::to_string(&Doc { nftables: items }).unwrap_or_default()
}

/// The best of several rounds: on a shared machine the other rounds
/// measure the neighbours.
fn best(v: Vec<Duration>) -> Duration {
    v.into_iter().min().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn time<T>(rounds: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..rounds {
        let t = Instant::now();
        last = Some(std::hint::black_box(f()));
        times.push(t.elapsed());
    }
    (best(times), last.expect("rounds > 0"))
}

/// A network namespace of this run, removed on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Option<Netns> {
        let name = format!("pier-nftb-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Netns(name))
    }

    fn nft(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// `nft -j list table inet pier` without handles, element lists sorted:
/// two tables with the same content compare equal.
fn normalized(json: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    let mut out: Vec<String> = v["nftables"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or(&[])
        .iter()
        .filter(|o| o.get("metainfo").is_none())
        .map(|o| {
            let mut o = o.clone();
            if let Some(obj) = o.as_object_mut().and_then(|m| m.values_mut().next()) {
                if let Some(m) = obj.as_object_mut() {
                    m.remove("handle");
                    if let Some(Value::Array(e)) = m.get_mut("elem") {
                        e.sort_by_key(|x| x.to_string());
                    }
                }
            }
            o.to_string()
        })
        .collect();
    out.sort();
    out
}

/// Objects of a listed table the crate's schema cannot parse, and ones it
/// parses but writes back different.
fn crate_round_trip(json: &str) -> (usize, usize, usize) {
    let v: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    let (mut total, mut refused, mut lossy) = (0, 0, 0);
    for o in v["nftables"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or(&[])
    {
        total += 1;
        match serde_json::from_value::<NfObject>(o.clone()) {
            Err(_) => refused += 1,
            Ok(x) => {
                if serde_json::to_value(&x).ok().as_ref() != Some(o) {
                    lossy += 1
                }
            }
        }
    }
    (total, refused, lossy)
}

/// pier's text with per-VIP accept counters (`vip_counters = true`): the
/// layout [`render_json`] builds.
fn render_text(fw: &Firewall, existing: &BTreeSet<String>) -> String {
    let counted = nft::Layout {
        vip_counters: true,
        flowtable: None,
    };
    nft::render_layout(fw, &counted, existing, false)
}

fn main() {
    let n: usize = std::env::var("NFT_VIPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let fw = nft::firewall(&desired(n));
    let none = BTreeSet::new();
    let objects: BTreeSet<String> = nft::counter_names(&fw)
        .into_iter()
        .chain(["src4_0".to_string(), "src4_1".to_string()])
        .collect();
    let rounds = 15;
    let (t_text, text) = time(rounds, || render_text(&fw, &objects));
    let (t_json, js) = time(rounds, || render_json(&fw, &objects));
    println!("## nft table for {n} VIPs (2 ports each): text vs the nftables crate's JSON\n");
    println!("| step | nft text (pier) | nftables crate JSON |");
    println!("|---|---|---|");
    println!(
        "| render, best of {rounds} | {} | {} |",
        ms(t_text),
        ms(t_json)
    );
    println!(
        "| transaction size | {} KiB | {} KiB |",
        text.len() / 1024,
        js.len() / 1024
    );
    let (Some(ns_text), Some(ns_json)) = (Netns::new("text"), Netns::new("json")) else {
        println!("\n(apply skipped: needs root and `ip netns`)");
        return;
    };
    let apply_rounds = 3;
    let mut rows: Vec<(&str, Duration, Duration)> = Vec::new();
    // First apply: no table yet (existing = none), as pier's first start.
    let t0 = Instant::now();
    let r = ns_text.nft(&["-f", "-"], Some(&render_text(&fw, &none)));
    let first_text = t0.elapsed();
    if let Err(e) = r {
        println!("\ntext apply failed: {e}");
        return;
    }
    let t0 = Instant::now();
    let r = ns_json.nft(&["-j", "-f", "-"], Some(&render_json(&fw, &none)));
    let first_json = t0.elapsed();
    if let Err(e) = r {
        println!("\nJSON apply failed: {}", &e[..e.len().min(2000)]);
        return;
    }
    rows.push(("apply, first (no table)", first_text, first_json));
    let (t_re_text, r1) = time(apply_rounds, || ns_text.nft(&["-f", "-"], Some(&text)));
    let (t_re_json, r2) = time(apply_rounds, || ns_json.nft(&["-j", "-f", "-"], Some(&js)));
    if let (Err(e), _) | (_, Err(e)) = (&r1, &r2) {
        println!("\nre-apply failed: {}", &e[..e.len().min(2000)]);
        return;
    }
    rows.push((
        "apply again (table present), best of 3",
        t_re_text,
        t_re_json,
    ));
    for (what, a, b) in rows {
        println!("| {what} | {} | {} |", ms(a), ms(b));
    }
    let list = |ns: &Netns| ns.nft(&["-j", "list", "table", "inet", TABLE], None);
    let (Ok(l_text), Ok(l_json)) = (list(&ns_text), list(&ns_json)) else {
        println!("\nlisting the tables failed");
        return;
    };
    println!(
        "\nsame table from both paths: {}",
        if normalized(&l_text) == normalized(&l_json) {
            "yes"
        } else {
            "NO"
        }
    );
    let (total, refused, lossy) = crate_round_trip(&l_text);
    let maps = l_text.matches("\"map\": {\"family\"").count();
    println!(
        "the table listed ({total} objects, {maps} maps) read back through the crate's schema: \
         {refused} objects refused, {lossy} parsed but written back different"
    );
}
