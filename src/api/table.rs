//! Readable tables for the CLI, from the API's JSON.

use serde_json::Value;

/// Left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let pad = widths[i] - c.chars().count();
                s.push_str(c);
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(s).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn key(v: &Value) -> String {
    format!("{}/{}", s(&v["namespace"]), s(&v["name"]))
}

/// Unix seconds as an RFC 3339 UTC time.
pub fn unix_time(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|t| k8s_openapi::jiff::Timestamp::from_second(t).ok())
        .map_or_else(|| format!("{secs} (Unix time)"), |t| t.to_string())
}

pub fn status(v: &Value) -> String {
    let e = &v["engine"];
    let rows = vec![
        vec!["version".into(), s(&v["version"])],
        vec!["uptime".into(), format!("{}s", s(&v["uptime_seconds"]))],
        vec!["ready".into(), s(&v["ready"])],
        vec![
            "initial sync".into(),
            if e["synced"] == Value::Bool(true) {
                "done".into()
            } else {
                "waiting".into()
            },
        ],
        vec!["leader".into(), s(&e["leader"])],
        vec![
            "services".into(),
            format!(
                "{} ({} with IPs, {} pending)",
                s(&e["services"]),
                s(&e["allocated"]),
                s(&e["pending"])
            ),
        ],
        vec![
            "VIPs announced".into(),
            format!(
                "{} ({} allocated but not announced)",
                s(&e["vips_announced"]),
                s(&e["vips_unannounced"])
            ),
        ],
        vec!["nodes".into(), s(&e["nodes"])],
        vec!["pools".into(), s(&e["pools"])],
        vec![
            "plan generation".into(),
            format!("{} (saved: {})", s(&e["generation"]), s(&e["plan_saved_generation"])),
        ],
        vec![
            "plan from".into(),
            match e["last_known_state"].as_object() {
                Some(lk) => format!(
                    "the last known state since {} (generation {}, {} VIPs): the Kubernetes API cannot be reached",
                    lk.get("since_unix").and_then(Value::as_u64).map_or("?".into(), unix_time),
                    lk.get("generation").map(s).unwrap_or_default(),
                    lk.get("vips").map(s).unwrap_or_default(),
                ),
                None => "the live view".into(),
            },
        ],
        vec![
            "store".into(),
            match e["store_failing"].as_object() {
                Some(f) => format!(
                    "FAILING since {} ({} failed writes, retrying): {}",
                    f.get("since_unix").and_then(Value::as_u64).map_or("?".into(), unix_time),
                    f.get("attempts").map(s).unwrap_or_default(),
                    f.get("error").map(s).unwrap_or_default(),
                ),
                None => "ok".into(),
            },
        ],
    ];
    let mut rows = rows;
    // The route actuator's findings (next-hop groups, flowtable, host
    // firewalls that drop VIP traffic), one row each.
    for line in v["datapath"]["lines"].as_array().into_iter().flatten() {
        rows.push(vec!["data path".into(), s(line)]);
    }
    table(&["", ""], &rows)
        .lines()
        .skip(1)
        .map(|l| format!("{l}\n"))
        .collect()
}

pub fn services(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    vec![
                        key(&x["service"]),
                        s(&x["origin"]),
                        s(&x["ips"]),
                        x["pending"].as_str().unwrap_or("").to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["SERVICE", "ORIGIN", "IPS", "PENDING"], &rows)
}

pub fn pools(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    let p = &x["pool"];
                    let ranges: Vec<String> = p["ranges"]
                        .as_array()
                        .map(|r| r.iter().map(s).collect())
                        .unwrap_or_default();
                    let usage: Vec<String> = x["usage"]
                        .as_array()
                        .map(|u| {
                            u.iter()
                                .map(|u| {
                                    format!(
                                        "{} {}/{}",
                                        s(&u["family"]),
                                        s(&u["in_use"]),
                                        s(&u["total"])
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let mode = match (s(&p["mode"]).as_str(), s(&p["next_hop"]).as_str()) {
                        ("l2", _) => format!("l2 ({})", s(&p["interface"])),
                        (m, nh) => format!("{m} next-hop {nh}"),
                    };
                    let orphans = x["orphans"].as_array().map_or(0, |o| o.len());
                    vec![
                        s(&p["name"]),
                        mode,
                        if p["disabled"] == Value::Bool(true) {
                            "disabled".into()
                        } else {
                            "enabled".into()
                        },
                        usage.join("  "),
                        if orphans > 0 {
                            format!("{orphans} outside the pool")
                        } else {
                            String::new()
                        },
                        ranges.join(" "),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &["POOL", "MODE", "STATE", "IN USE", "NOTE", "ADDRESSES"],
        &rows,
    )
}

pub fn nodes(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    let n = &x["node"];
                    let mut addrs: Vec<String> = Vec::new();
                    for k in ["internal_ips", "external_ips"] {
                        if let Some(ips) = n[k].as_array() {
                            addrs.extend(ips.iter().map(s));
                        }
                    }
                    vec![
                        s(&n["name"]),
                        addrs.join(","),
                        x["ineligible"]
                            .as_str()
                            .map_or("eligible".to_string(), |w| format!("no: {w}")),
                        s(&x["vips"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["NODE", "ADDRESSES", "NEXT HOP", "VIPS"], &rows)
}

/// Seconds as `3d04h`, `2h05m`, `4m07s` or `9s`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// BGP peers: session state, uptime, what was negotiated, the last error.
pub fn peers(v: &Value) -> String {
    // BFD columns only when some peer runs BFD.
    let with_bfd = v
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x["bfd"].is_object()));
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    let caps: Vec<String> = x["capabilities"]
                        .as_array()
                        .map(|c| c.iter().map(s).collect())
                        .unwrap_or_default();
                    // Families first, then ADD-PATH per family; the other
                    // capabilities are in --json.
                    let mut negotiated: Vec<String> = caps
                        .iter()
                        .filter(|c| c.starts_with("ipv4") || c.starts_with("ipv6"))
                        .cloned()
                        .collect();
                    negotiated.extend(caps.iter().filter(|c| c.starts_with("add-path")).cloned());
                    if x["next_hop_self_fallback"] == Value::Bool(true) {
                        negotiated.push("next-hop-self fallback".into());
                    }
                    let mut row = vec![
                        s(&x["peer"]),
                        s(&x["asn"]),
                        s(&x["state"]),
                        x["uptime_s"].as_u64().map_or("-".into(), duration),
                        s(&x["prefixes_sent"]),
                        if negotiated.is_empty() {
                            "-".into()
                        } else {
                            negotiated.join(",")
                        },
                    ];
                    if with_bfd {
                        row.extend(bfd_cells(&x["bfd"]));
                    }
                    row.push(x["last_error"].as_str().unwrap_or("").to_string());
                    row
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        return "no BGP peers configured\n".into();
    }
    let mut head = vec!["PEER", "ASN", "STATE", "UPTIME", "SENT", "NEGOTIATED"];
    if with_bfd {
        head.extend(["BFD", "RX/TX MS", "DETECT", "BFD LAST DOWN"]);
    }
    head.push("LAST ERROR");
    table(&head, &rows)
}

/// A peer's BFD state, configured intervals (min RX / min TX, multiplier), detection time in force and
/// why it last went down; `-` for a peer without BFD.
fn bfd_cells(b: &Value) -> [String; 4] {
    if !b.is_object() {
        return ["-".into(), "-".into(), "-".into(), "-".into()];
    }
    let detect = b["detection_time_ms"].as_u64().unwrap_or(0);
    [
        s(&b["state"]),
        format!(
            "{}/{} x{}",
            s(&b["min_rx_ms"]),
            s(&b["min_tx_ms"]),
            s(&b["multiplier"])
        ),
        if detect == 0 {
            "-".into()
        } else {
            format!("{detect}ms")
        },
        match (b["last_down"].as_str(), b["downs"].as_u64().unwrap_or(0)) {
            (Some(why), n) => format!("{why} ({n} downs)"),
            (None, _) => "-".into(),
        },
    ]
}

/// Kernel routes pier installed, with the nftables counters of each VIP.
/// Accepted packets are counted only with `gateway.vip_counters = true`;
/// otherwise the API gives `null` and the column `-`, with a note.
pub fn routes(v: &Value) -> String {
    let items = v.as_array().cloned().unwrap_or_default();
    let uncounted = items.iter().any(|x| x["accepted_packets"].is_null());
    // Resilient next-hop groups: the group and its buckets per next hop.
    let grouped = items.iter().any(|x| x["group"].is_u64());
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|x| {
            let mut row = vec![s(&x["vip"]), s(&x["next_hops"])];
            if grouped {
                row.push(match x["group"].as_u64() {
                    Some(id) => {
                        let buckets = x["buckets"]
                            .as_object()
                            .map(|b| {
                                b.iter()
                                    .map(|(h, n)| format!("{h}={n}"))
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                            .unwrap_or_default();
                        format!("{id} ({buckets})")
                    }
                    None => "-".into(),
                });
            }
            row.push(s(&x["accepted_packets"]));
            row.push(s(&x["dropped_packets"]));
            row
        })
        .collect();
    if rows.is_empty() {
        return "no routes installed (no VIP is forwarded through this gateway)\n".into();
    }
    let mut out = if grouped {
        table(
            &["VIP", "NEXT HOPS", "GROUP (BUCKETS)", "ACCEPTED", "DROPPED"],
            &rows,
        )
    } else {
        table(&["VIP", "NEXT HOPS", "ACCEPTED", "DROPPED"], &rows)
    };
    if uncounted {
        out.push_str(
            "ACCEPTED -: not counted (gateway.vip_counters = false); drops are counted always\n",
        );
    }
    out
}

/// A table of an array of flat objects, columns in the order of the first.
pub fn generic(v: &Value) -> String {
    let Some(items) = v.as_array() else {
        return format!("{v}\n");
    };
    let Some(Value::Object(first)) = items.first() else {
        return "(none)\n".into();
    };
    let cols: Vec<&String> = first.keys().collect();
    let header: Vec<String> = cols.iter().map(|c| c.to_uppercase()).collect();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|x| cols.iter().map(|c| s(&x[c.as_str()])).collect())
        .collect();
    table(
        &header.iter().map(String::as_str).collect::<Vec<_>>(),
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn services_table_lines_up() {
        let v = json!([
            {"service": {"namespace": "default", "name": "web"}, "origin": "kubernetes", "ips": ["10.0.0.1", "fd00::1"], "pending": null},
            {"service": {"namespace": "shop", "name": "api"}, "origin": "static", "ips": [], "pending": "pool \"x\" exhausted"},
        ]);
        let t = services(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "SERVICE      ORIGIN      IPS               PENDING"
        );
        assert_eq!(lines[1], "default/web  kubernetes  10.0.0.1,fd00::1");
        assert_eq!(
            lines[2],
            "shop/api     static      -                 pool \"x\" exhausted"
        );
    }

    #[test]
    fn peers_table_shows_state_uptime_families_and_error() {
        let v = json!([
            {"peer": "10.0.0.1", "asn": 65000, "local_asn": 65010, "state": "Established",
             "uptime_s": 3725, "prefixes_sent": 6, "updates_sent": 3, "updates_received": 1,
             "capabilities": ["ipv4-unicast", "ipv6-unicast", "add-path(ipv4-unicast)", "4-octet-as", "graceful-restart"],
             "next_hop_self_fallback": false, "last_error": null, "attempted": true},
            {"peer": "10.0.0.9", "asn": 65009, "state": "Connect", "uptime_s": null,
             "prefixes_sent": 0, "capabilities": [], "next_hop_self_fallback": false,
             "last_error": "connect: Connection refused", "attempted": true},
        ]);
        let t = peers(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "PEER      ASN    STATE        UPTIME  SENT  NEGOTIATED                                        LAST ERROR"
        );
        assert_eq!(
            lines[1],
            "10.0.0.1  65000  Established  1h02m   6     ipv4-unicast,ipv6-unicast,add-path(ipv4-unicast)"
        );
        assert_eq!(
            lines[2],
            "10.0.0.9  65009  Connect      -       0     -                                                 connect: Connection refused"
        );
        assert_eq!(peers(&json!([])), "no BGP peers configured\n");
    }

    #[test]
    fn peers_table_shows_bfd_when_a_peer_runs_it() {
        let v = json!([
            {"peer": "10.0.0.1", "asn": 65000, "state": "Established", "uptime_s": 5,
             "prefixes_sent": 1, "capabilities": [], "next_hop_self_fallback": false,
             "last_error": null,
             "bfd": {"state": "Up", "remote_state": "Up", "min_rx_ms": 100, "min_tx_ms": 100,
                     "multiplier": 3, "tx_interval_ms": 100, "detection_time_ms": 300,
                     "last_down": "control detection time expired", "downs": 2}},
            {"peer": "10.0.0.9", "asn": 65009, "state": "Idle", "uptime_s": null,
             "prefixes_sent": 0, "capabilities": [], "next_hop_self_fallback": false,
             "last_error": "BFD session down", "bfd": null},
        ]);
        let t = peers(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].contains("BFD  RX/TX MS    DETECT  BFD LAST DOWN"),
            "{t}"
        );
        assert!(
            lines[1].contains("Up   100/100 x3  300ms   control detection time expired (2 downs)"),
            "{t}"
        );
        assert!(lines[2].contains("-    -           -       -"), "{t}");
        assert!(lines[2].ends_with("BFD session down"), "{t}");
    }

    #[test]
    fn routes_table_shows_next_hops_and_counters() {
        let v = json!([
            {"vip": "10.77.1.10/32", "next_hops": ["10.66.2.11", "10.66.2.12"], "accepted_packets": 42, "dropped_packets": 0},
            {"vip": "fd66:77::10/128", "next_hops": [], "accepted_packets": 0, "dropped_packets": 7},
        ]);
        let t = routes(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "VIP              NEXT HOPS              ACCEPTED  DROPPED"
        );
        assert_eq!(
            lines[1],
            "10.77.1.10/32    10.66.2.11,10.66.2.12  42        0"
        );
        assert_eq!(
            lines[2],
            "fd66:77::10/128  -                      0         7"
        );
        assert!(!t.contains("not counted"), "{t}");
        assert!(routes(&json!([])).starts_with("no routes installed"));
    }

    #[test]
    fn routes_table_says_when_accepts_are_not_counted() {
        let v = json!([
            {"vip": "10.77.1.10/32", "next_hops": ["10.66.2.11"], "accepted_packets": null, "dropped_packets": 3},
        ]);
        let t = routes(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "VIP            NEXT HOPS   ACCEPTED  DROPPED");
        assert_eq!(lines[1], "10.77.1.10/32  10.66.2.11  -         3");
        assert_eq!(
            lines[2],
            "ACCEPTED -: not counted (gateway.vip_counters = false); drops are counted always"
        );
    }

    #[test]
    fn routes_table_shows_the_group_and_its_buckets_per_next_hop() {
        let v = json!([
            {"vip": "10.77.1.10/32", "next_hops": ["10.66.2.11", "10.66.2.12"], "group": 201000002,
             "buckets": {"10.66.2.11": 128, "10.66.2.12": 128}, "accepted_packets": 1, "dropped_packets": 0},
        ]);
        let t = routes(&v);
        assert!(t.lines().next().unwrap().contains("GROUP (BUCKETS)"), "{t}");
        assert!(
            t.contains("201000002 (10.66.2.11=128,10.66.2.12=128)"),
            "{t}"
        );
    }

    #[test]
    fn status_shows_the_data_path_lines() {
        let v = json!({"version": "0", "engine": {}, "datapath": {"lines": [
            "host firewall: ip filter chain FORWARD DROPS traffic to 1 VIP(s) (10.77.0.10); fix: x"
        ]}});
        let t = status(&v);
        assert!(
            t.lines()
                .any(|l| l.starts_with("data path") && l.contains("ip filter chain FORWARD DROPS")),
            "{t}"
        );
    }

    #[test]
    fn durations_read_like_uptimes() {
        assert_eq!(duration(9), "9s");
        assert_eq!(duration(247), "4m07s");
        assert_eq!(duration(7500), "2h05m");
        assert_eq!(duration(273_600), "3d04h");
    }

    #[test]
    fn generic_table_handles_empty_and_odd_input() {
        assert_eq!(generic(&json!([])), "(none)\n");
        assert_eq!(generic(&json!({"a": 1})), "{\"a\":1}\n");
        let t = generic(&json!([{"peer": "10.0.0.1", "state": "Established"}]));
        assert!(t.starts_with("PEER"), "{t}");
    }
}
