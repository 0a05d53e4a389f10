//! What packaging/rbac.yaml grants, and what pier used (from the test API
//! server's request log), as (resource, verb) pairs.

#![allow(dead_code)]

use pier_testapi::TestApiServer;

/// Resources of the OpenELB-compatible objects (only with `kubernetes.crds`).
pub fn is_openelb(resource: &str) -> bool {
    let base = resource.split('/').next().unwrap_or_default();
    matches!(base, "eips" | "bgpconfs" | "bgppeers")
}

/// (resource, verb) pairs the ClusterRole and Role in packaging/rbac.yaml grant.
pub fn grants() -> std::collections::BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/rbac.yaml"))
        .unwrap();
    let list = |l: &str| -> Vec<String> {
        let inner = l.split_once('[').unwrap().1.split_once(']').unwrap().0;
        inner
            .split(',')
            .map(|x| x.trim().trim_matches('"').to_string())
            .filter(|x| !x.is_empty())
            .collect()
    };
    let mut out = std::collections::BTreeSet::new();
    let mut resources = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with("#") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("resources:") {
            resources = list(rest);
        } else if let Some(rest) = line.strip_prefix("verbs:") {
            for r in &resources {
                for v in list(rest) {
                    out.insert((r.clone(), v));
                }
            }
        }
    }
    out
}

/// (resource, verb) pairs of every request pier made.
pub fn used_verbs(api: &TestApiServer) -> std::collections::BTreeSet<(String, String)> {
    api.requests()
        .into_iter()
        .filter(|r| !r.verb.is_empty())
        .filter_map(|r| {
            let parts: Vec<&str> = r.path.trim_matches('/').split('/').collect();
            // /api/v1/... or /apis/group/version/...
            let rest = match parts.first() {
                Some(&"api") => &parts[2..],
                Some(&"apis") => &parts[3..],
                _ => return None,
            };
            let rest = if rest.first() == Some(&"namespaces") && rest.len() > 2 {
                &rest[2..]
            } else {
                rest
            };
            let resource = match rest {
                [res, _name, sub] => format!("{res}/{sub}"),
                [res, ..] => res.to_string(),
                [] => return None,
            };
            Some((resource, r.verb))
        })
        .collect()
}
