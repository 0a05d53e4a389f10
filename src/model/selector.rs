//! A Kubernetes label selector (`metav1.LabelSelector`): `matchLabels`
//! equalities and `matchExpressions` requirements, all of which must hold.
//! A peer's `node_selector` (`[[bgp.peers]]`, `BgpPeer.spec.nodeSelector`)
//! is one: that peer is sent only the next hops of the nodes it matches
//! (`src/bgp/rib.rs`, docs/bgp.md "Rack-aware next hops"). Pure.
//!
//! Semantics as Kubernetes defines them
//! (k8s.io/apimachinery/pkg/labels, `Requirement.Matches`):
//! - `In`: the label is present and its value is one of `values`;
//! - `NotIn`: the label is absent, or its value is none of `values`;
//! - `Exists` / `DoesNotExist`: the label is present / absent;
//! - an empty selector matches every set of labels.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The operator of one `matchExpressions` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One `matchExpressions` entry, validated: `In`/`NotIn` have at least one
/// value, `Exists`/`DoesNotExist` none.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

impl Requirement {
    pub fn new(
        key: impl Into<String>,
        operator: Operator,
        values: Vec<String>,
    ) -> Result<Self, String> {
        let key = key.into();
        if key.is_empty() {
            return Err("a requirement needs a key".into());
        }
        match (operator, values.is_empty()) {
            (Operator::In | Operator::NotIn, true) => Err(format!(
                "{key}: operator {operator:?} needs at least one value"
            )),
            (Operator::Exists | Operator::DoesNotExist, false) => {
                Err(format!("{key}: operator {operator:?} takes no values"))
            }
            _ => Ok(Requirement {
                key,
                operator,
                values,
            }),
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// `matchLabels` and `matchExpressions`; every one must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Selector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
}

impl Selector {
    /// A selector of equalities only (the config file's form, as a pool's
    /// `node_selector`).
    pub fn labels(match_labels: BTreeMap<String, String>) -> Self {
        Selector {
            match_labels,
            match_expressions: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// A `metav1.LabelSelector` as JSON (`{"matchLabels": {…},
    /// "matchExpressions": [{"key", "operator", "values"}]}`). Errors name
    /// the field.
    pub fn from_json(v: &Value) -> Result<Selector, String> {
        let Value::Object(obj) = v else {
            return Err(format!("expected an object, found {v}"));
        };
        let mut sel = Selector::default();
        for (k, _) in obj {
            if k != "matchLabels" && k != "matchExpressions" {
                return Err(format!(
                    "{k}: a label selector has matchLabels and matchExpressions"
                ));
            }
        }
        match obj.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, val) in m {
                    let Value::String(s) = val else {
                        return Err(format!("matchLabels.{k}: {val} is not a string"));
                    };
                    sel.match_labels.insert(k.clone(), s.clone());
                }
            }
            Some(other) => return Err(format!("matchLabels: {other} is not an object")),
        }
        match obj.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for (i, e) in list.iter().enumerate() {
                    let at = |what: &str| format!("matchExpressions[{i}]: {what}");
                    let key = e
                        .get("key")
                        .and_then(Value::as_str)
                        .ok_or_else(|| at("key (a string) is required"))?;
                    let operator = match e.get("operator").and_then(Value::as_str) {
                        Some("In") => Operator::In,
                        Some("NotIn") => Operator::NotIn,
                        Some("Exists") => Operator::Exists,
                        Some("DoesNotExist") => Operator::DoesNotExist,
                        Some(o) => {
                            return Err(at(&format!(
                                "operator {o:?}: expected In, NotIn, Exists or DoesNotExist"
                            )))
                        }
                        None => return Err(at("operator (a string) is required")),
                    };
                    let values = match e.get("values") {
                        None | Some(Value::Null) => Vec::new(),
                        Some(Value::Array(vs)) => vs
                            .iter()
                            .map(|v| {
                                v.as_str()
                                    .map(String::from)
                                    .ok_or_else(|| at(&format!("value {v} is not a string")))
                            })
                            .collect::<Result<_, _>>()?,
                        Some(other) => return Err(at(&format!("values: {other} is not a list"))),
                    };
                    sel.match_expressions
                        .push(Requirement::new(key, operator, values).map_err(|e| at(&e))?);
                }
            }
            Some(other) => return Err(format!("matchExpressions: {other} is not a list")),
        }
        Ok(sel)
    }
}

impl fmt::Display for Selector {
    /// Kubernetes' selector string: `a=b,c in (d,e),!f`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            parts.push(match r.operator {
                Operator::In => format!("{} in ({})", r.key, r.values.join(",")),
                Operator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Each operator against a label that is present with a listed value,
    /// present with another value, and absent (Kubernetes' table).
    #[test]
    fn operators_as_kubernetes_defines_them() {
        let rack1 = labels(&[("rack", "leaf1")]);
        let rack2 = labels(&[("rack", "leaf2")]);
        let none = labels(&[]);
        let req = |op, vals: &[&str]| {
            Requirement::new("rack", op, vals.iter().map(|v| v.to_string()).collect()).unwrap()
        };
        let cases = [
            (req(Operator::In, &["leaf1"]), [true, false, false]),
            (req(Operator::NotIn, &["leaf1"]), [false, true, true]),
            (req(Operator::Exists, &[]), [true, true, false]),
            (req(Operator::DoesNotExist, &[]), [false, false, true]),
        ];
        for (r, want) in cases {
            let got = [r.matches(&rack1), r.matches(&rack2), r.matches(&none)];
            assert_eq!(got, want, "{r:?}");
        }
        assert!(Requirement::new("rack", Operator::In, vec![]).is_err());
        assert!(Requirement::new("rack", Operator::Exists, vec!["x".into()]).is_err());
        assert!(Requirement::new("", Operator::Exists, vec![]).is_err());
    }

    #[test]
    fn labels_and_expressions_must_all_hold() {
        let s = Selector {
            match_labels: labels(&[("zone", "a")]),
            match_expressions: vec![Requirement::new(
                "rack",
                Operator::In,
                vec!["leaf1".into(), "leaf3".into()],
            )
            .unwrap()],
        };
        assert!(s.matches(&labels(&[("zone", "a"), ("rack", "leaf3")])));
        assert!(!s.matches(&labels(&[("zone", "b"), ("rack", "leaf1")])));
        assert!(!s.matches(&labels(&[("zone", "a"), ("rack", "leaf2")])));
        assert!(!s.matches(&labels(&[("zone", "a")])));
        assert!(
            Selector::default().matches(&labels(&[])),
            "empty matches all"
        );
        assert_eq!(s.to_string(), "zone=a,rack in (leaf1,leaf3)");
    }

    #[test]
    fn from_json_reads_a_label_selector_and_names_bad_fields() {
        let s = Selector::from_json(&json!({
            "matchLabels": {"porter.kubesphere.io/rack": "leaf1"},
            "matchExpressions": [
                {"key": "gpu", "operator": "DoesNotExist"},
                {"key": "tier", "operator": "NotIn", "values": ["edge"]}
            ]
        }))
        .unwrap();
        assert_eq!(
            s.to_string(),
            "porter.kubesphere.io/rack=leaf1,!gpu,tier notin (edge)"
        );
        assert_eq!(
            Selector::from_json(&json!({})).unwrap(),
            Selector::default()
        );
        let err = |v: Value| Selector::from_json(&v).unwrap_err();
        assert!(err(json!({"matchLabels": {"a": 1}})).contains("matchLabels.a"));
        assert!(
            err(json!({"matchExpressions": [{"key": "a", "operator": "Has"}]}))
                .contains("matchExpressions[0]")
        );
        assert!(
            err(json!({"matchExpressions": [{"key": "a", "operator": "In"}]}))
                .contains("at least one value")
        );
        assert!(err(json!({"matchExpressions": [{"operator": "Exists"}]})).contains("key"));
        assert!(err(json!({"nodeNames": ["a"]})).contains("nodeNames"));
        assert!(err(json!("rack=leaf1")).contains("object"));
    }
}
