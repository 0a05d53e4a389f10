//! Static check of `packaging/crds/`: every string, list and map that a CEL
//! rule (`x-kubernetes-validations`) reads is bounded (`maxLength`,
//! `maxItems`, `maxProperties`).
//!
//! kube-apiserver estimates a rule's cost from the declared bounds of what it
//! reads and refuses the whole CRD when the estimate exceeds its budget (an
//! unbounded string is costed at the size of a whole request). The test API
//! server in tests/support/ cannot evaluate CEL or its cost, so this test
//! keeps the manifests within what a real API server accepts.

use serde_json::Value;

/// The field paths a rule reads from `self` (`self.a.b` → `["a", "b"]`;
/// bare `self` or `self.method(..)` → `[]`).
fn reads(rule: &str) -> Vec<Vec<String>> {
    let bytes = rule.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(found) = rule[i..].find("self") {
        let start = i + found;
        let mut at = start + "self".len();
        i = at;
        if (start > 0 && ident(bytes[start - 1])) || (at < bytes.len() && ident(bytes[at])) {
            continue; // part of a longer name
        }
        let mut path = Vec::new();
        while at < bytes.len() && bytes[at] == b'.' {
            let from = at + 1;
            let mut to = from;
            while to < bytes.len() && ident(bytes[to]) {
                to += 1;
            }
            if to == from || bytes.get(to) == Some(&b'(') {
                break; // a method call on what was read so far
            }
            path.push(rule[from..to].to_string());
            at = to;
        }
        i = at;
        out.push(path);
    }
    out
}

/// Every unbounded string, list or map in `node` and below.
fn unbounded(node: &Value, at: &str, out: &mut Vec<String>) {
    let has = |key: &str| node.get(key).is_some();
    match node.get("type").and_then(Value::as_str) {
        Some("string") if !has("maxLength") => out.push(format!("{at}: string without maxLength")),
        Some("array") => {
            if !has("maxItems") {
                out.push(format!("{at}: list without maxItems"));
            }
            if let Some(items) = node.get("items") {
                unbounded(items, &format!("{at}[]"), out);
            }
        }
        Some("object") => {
            if node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
                out.push(format!("{at}: object with unknown fields"));
            }
            if let Some(values) = node.get("additionalProperties") {
                if !has("maxProperties") {
                    out.push(format!("{at}: map without maxProperties"));
                }
                unbounded(values, &format!("{at}{{}}"), out);
            }
            if let Some(props) = node.get("properties").and_then(Value::as_object) {
                for (name, prop) in props {
                    unbounded(prop, &format!("{at}.{name}"), out);
                }
            }
        }
        _ => {}
    }
}

/// Problems of every rule in the schema `node` (at path `at`; `root` tells
/// whether `node` is the object's root: its `metadata.name` and
/// `metadata.generateName` are the API server's own fields, names of at most
/// 253 characters, and kube-apiserver v1.36 accepts the BgpConf rule that
/// compares `metadata.name` with a constant).
fn check_rules(node: &Value, at: &str, root: bool, out: &mut Vec<String>) {
    for rule in node
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let text = rule.get("rule").and_then(Value::as_str).unwrap_or_default();
        for path in reads(text) {
            let mut target = node;
            let mut where_ = at.to_string();
            let mut bounded_by_server = false;
            for (depth, field) in path.iter().enumerate() {
                if root
                    && depth == 1
                    && path[0] == "metadata"
                    && matches!(field.as_str(), "name" | "generateName")
                {
                    bounded_by_server = true;
                    break;
                }
                match target.get("properties").and_then(|p| p.get(field)) {
                    Some(next) => {
                        target = next;
                        where_ = format!("{where_}.{field}");
                    }
                    None => {
                        out.push(format!(
                            "{at}: rule {text:?} reads {field}, not declared at {where_}"
                        ));
                        bounded_by_server = true; // reported already
                        break;
                    }
                }
            }
            if !bounded_by_server {
                let mut found = Vec::new();
                unbounded(target, &where_, &mut found);
                out.extend(
                    found
                        .into_iter()
                        .map(|f| format!("rule {text:?} reads {f}")),
                );
            }
        }
    }
    for (key, suffix) in [
        ("properties", ""),
        ("additionalProperties", "{}"),
        ("items", "[]"),
    ] {
        match (key, node.get(key)) {
            ("properties", Some(Value::Object(props))) => {
                for (name, prop) in props {
                    check_rules(prop, &format!("{at}.{name}"), false, out);
                }
            }
            (_, Some(child @ Value::Object(_))) if key != "properties" => {
                check_rules(child, &format!("{at}{suffix}"), false, out);
            }
            _ => {}
        }
    }
}

/// Problems of every version of one CRD manifest.
fn problems(yaml: &str) -> Vec<String> {
    let crd: Value = serde_saphyr::from_str(yaml).expect("the manifest is YAML");
    let mut out = Vec::new();
    for version in crd["spec"]["versions"].as_array().expect("versions") {
        let name = version["name"].as_str().unwrap_or("?");
        let schema = &version["schema"]["openAPIV3Schema"];
        assert!(schema.is_object(), "{name}: no openAPIV3Schema");
        check_rules(schema, name, true, &mut out);
    }
    out
}

#[test]
fn every_rule_in_packaging_crds_reads_only_bounded_values() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/crds");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "Eip, BgpConf, BgpPeer");
    let mut rules = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        rules += text.matches("rule: ").count();
        let found = problems(&text);
        assert!(
            found.is_empty(),
            "{}:\n{}",
            file.display(),
            found.join("\n")
        );
    }
    assert!(rules >= 8, "the rules were seen ({rules})");
}

#[test]
fn rules_use_the_ip_library_not_regular_expressions() {
    for name in ["eips", "bgppeers"] {
        let text = std::fs::read_to_string(format!(
            "{}/packaging/crds/network.kubesphere.io_{name}.yaml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        assert!(!text.contains("self.matches("), "{name}");
        assert_eq!(
            text.matches("isIP(self)").count(),
            2,
            "{name}, both versions"
        );
    }
}

fn schema_with(spec_props: &str) -> String {
    format!(
        "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
spec:
  versions:
  - name: v1
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-validations:
        - rule: self.metadata.name == 'default'
        properties:
          metadata:
            type: object
          spec:
            type: object
            properties:
{spec_props}"
    )
}

#[test]
fn the_check_finds_each_unbounded_read() {
    // The BgpPeer field the API server refused (issue 16): no maxLength.
    let found = problems(&schema_with(
        "              neighborAddress:
                type: string
                x-kubernetes-validations:
                - rule: isIP(self)
",
    ));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("v1.spec.neighborAddress: string without maxLength"));
    // A list read through a parent's rule, its items unbounded strings.
    let found = problems(&schema_with(
        "              names:
                type: array
                maxItems: 4
                items:
                  type: string
              map:
                type: object
                additionalProperties:
                  type: string
                  maxLength: 3
            x-kubernetes-validations:
            - rule: self.names.all(n, n != '') && self.map.size() < 3 && has(self.other)
",
    ));
    let joined = found.join("\n");
    assert!(
        joined.contains("v1.spec.names[]: string without maxLength"),
        "{joined}"
    );
    assert!(
        joined.contains("v1.spec.map: map without maxProperties"),
        "{joined}"
    );
    assert!(joined.contains("reads other, not declared"), "{joined}");
    assert_eq!(found.len(), 3, "{joined}");
    // Bounded: nothing found; metadata.name at the root is the server's.
    let found = problems(&schema_with(
        "              neighborAddress:
                type: string
                maxLength: 45
                x-kubernetes-validations:
                - rule: isIP(self) && self.split('.').size() > 0
",
    ));
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn reads_of_a_rule() {
    assert_eq!(reads("isIP(self)"), vec![Vec::<String>::new()]);
    assert_eq!(
        reads("self.a.b == 1 && self.c.split('-').size() == 2 && myself == 1"),
        vec![vec!["a".to_string(), "b".into()], vec!["c".into()]]
    );
}
