//! Label selectors (`k8s.io/apimachinery/pkg/labels` syntax) and field selectors.

use crate::error::ApiError;
use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Eq,
    NotEq,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt,
    Lt,
}

#[derive(Clone, Debug, PartialEq)]
struct Requirement {
    key: String,
    op: Op,
    values: Vec<String>,
}

/// A parsed label selector: all requirements must hold (AND).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct LabelSelector {
    reqs: Vec<Requirement>,
}

/// Splits at commas outside parentheses.
fn split_top(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced ')'".into());
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    out.push(&s[start..]);
    Ok(out)
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl LabelSelector {
    pub(crate) fn parse(s: &str) -> Result<Self, ApiError> {
        let err = |m: String| ApiError::bad_request(format!("unable to parse requirement: {m}"));
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector { reqs });
        }
        for part in split_top(s).map_err(err)? {
            let part = part.trim();
            let req = if let Some(key) = part.strip_prefix('!') {
                Requirement {
                    key: key.trim().into(),
                    op: Op::DoesNotExist,
                    values: vec![],
                }
            } else if let Some(open) = part.find('(') {
                let head = part[..open].trim_end();
                let (key, op) = if let Some(k) = head.strip_suffix("notin") {
                    (k, Op::NotIn)
                } else if let Some(k) = head.strip_suffix("in") {
                    (k, Op::In)
                } else {
                    return Err(err(format!("expected 'in' or 'notin' in {part:?}")));
                };
                // `keyin (a)` is not `key in (a)`: the operator is a separate word.
                if !key.ends_with(char::is_whitespace) {
                    return Err(err(format!(
                        "expected whitespace before operator in {part:?}"
                    )));
                }
                let body = part[open + 1..]
                    .strip_suffix(')')
                    .ok_or_else(|| err(format!("expected ')' at end of {part:?}")))?;
                let values: Vec<String> = body
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect();
                if values.is_empty() {
                    return Err(err(format!(
                        "for 'in', 'notin' operators, values set can't be empty: {part:?}"
                    )));
                }
                Requirement {
                    key: key.trim().into(),
                    op,
                    values,
                }
            } else {
                let ops: [(&str, Op); 5] = [
                    ("!=", Op::NotEq),
                    ("==", Op::Eq),
                    ("=", Op::Eq),
                    (">", Op::Gt),
                    ("<", Op::Lt),
                ];
                match ops
                    .iter()
                    .find_map(|(tok, op)| part.find(tok).map(|i| (i, *tok, op)))
                {
                    Some((i, tok, op)) => Requirement {
                        key: part[..i].trim().into(),
                        op: op.clone(),
                        values: vec![part[i + tok.len()..].trim().into()],
                    },
                    None => Requirement {
                        key: part.into(),
                        op: Op::Exists,
                        values: vec![],
                    },
                }
            };
            if !valid_key(&req.key) {
                return Err(err(format!("invalid label key {:?}", req.key)));
            }
            if let Some(v) = req.values.iter().find(|v| !valid_value(v)) {
                return Err(err(format!("invalid label value: {v:?}")));
            }
            if matches!(req.op, Op::Gt | Op::Lt)
                && req.values.iter().any(|v| v.parse::<i64>().is_err())
            {
                return Err(err(format!(
                    "for 'Gt', 'Lt' operators, the value must be an integer: {part:?}"
                )));
            }
            reqs.push(req);
        }
        Ok(LabelSelector { reqs })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether an object's `metadata.labels` satisfy the selector.
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let labels = obj.get("metadata").and_then(|m| m.get("labels"));
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|r| {
            let v = get(&r.key);
            let first = r.values.first().map(String::as_str);
            match r.op {
                Op::Eq => v.is_some() && v == first,
                Op::NotEq => v != first,
                Op::In => v.is_some_and(|v| r.values.iter().any(|x| x == v)),
                Op::NotIn => v.is_none_or(|v| !r.values.iter().any(|x| x == v)),
                Op::Exists => v.is_some(),
                Op::DoesNotExist => v.is_none(),
                Op::Gt | Op::Lt => {
                    let (Some(have), Some(want)) = (
                        v.and_then(|v| v.parse::<i64>().ok()),
                        first.and_then(|w| w.parse::<i64>().ok()),
                    ) else {
                        return false;
                    };
                    if r.op == Op::Gt {
                        have > want
                    } else {
                        have < want
                    }
                }
            }
        })
    }
}

/// A parsed field selector: `key=value`, `key==value`, `key!=value`, comma-separated.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// Parses and checks the keys: `metadata.name`, `metadata.namespace` and the
    /// resource's own field labels, as kube-apiserver accepts.
    pub(crate) fn parse(s: &str, allowed: &[&str]) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, eq, value) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            let key = key.trim();
            if key != "metadata.name" && key != "metadata.namespace" && !allowed.contains(&key) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {key}"
                )));
            }
            // events.k8s.io/v1 names map onto the stored core/v1 Event form.
            let key = if let Some(rest) = key.strip_prefix("regarding.") {
                format!("involvedObject.{rest}")
            } else if key == "reportingController" {
                "reportingComponent".to_string()
            } else {
                key.to_string()
            };
            reqs.push((key, eq, value.trim().to_string()));
        }
        Ok(FieldSelector { reqs })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// The single `metadata.name=X` requirement, if that is what it is (lets a get-like
    /// watch or list skip scanning).
    pub(crate) fn only_name(&self) -> Option<&str> {
        match self.reqs.as_slice() {
            [(k, true, v)] if k == "metadata.name" => Some(v),
            _ => None,
        }
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(key, eq, want)| {
            // Core Events expose `source` as the component name.
            let path: Vec<&str> = if key == "source" {
                vec!["source", "component"]
            } else {
                key.split('.').collect()
            };
            let mut cur = Some(obj);
            for p in path {
                cur = cur.and_then(|c| c.get(p));
            }
            let have = match cur {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                // Unset fields read as empty (and `false` for spec.unschedulable).
                _ if key == "spec.unschedulable" => "false".into(),
                _ => String::new(),
            };
            (have == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn label_operators() {
        let o = obj(json!({"app": "web", "tier": "front", "n": "5"}));
        let cases = [
            ("app=web", true),
            ("app==web", true),
            ("app=db", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("app in (web,db)", true),
            ("app in (db)", false),
            ("app notin (db)", true),
            ("missing notin (db)", true),
            ("app", true),
            ("missing", false),
            ("!missing", true),
            ("!app", false),
            ("app=web,tier in (front, back),!gone", true),
            ("app=web,tier=back", false),
            ("n>4", true),
            ("n<4", false),
            ("", true),
        ];
        for (sel, want) in cases {
            let s = LabelSelector::parse(sel).unwrap();
            assert_eq!(s.matches(&o), want, "{sel}");
        }
    }

    #[test]
    fn label_parse_errors() {
        for bad in [
            "app in (",
            "app in ()",
            "a b",
            "app=we b",
            "x in(a)b)",
            "n>x",
            "=a",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn field_selectors() {
        let o = json!({"metadata": {"name": "a", "namespace": "ns"}, "reason": "Allocated",
                       "source": {"component": "pier"}});
        let allowed = ["reason", "source"];
        let t = |s: &str| FieldSelector::parse(s, &allowed).unwrap().matches(&o);
        assert!(t("metadata.name=a"));
        assert!(t("metadata.name==a,metadata.namespace=ns"));
        assert!(!t("metadata.name!=a"));
        assert!(t("reason=Allocated,source=pier"));
        assert!(FieldSelector::parse("spec.x=1", &allowed).is_err());
        assert!(FieldSelector::parse("nonsense", &allowed).is_err());
        assert_eq!(
            FieldSelector::parse("metadata.name=a", &allowed)
                .unwrap()
                .only_name(),
            Some("a")
        );
    }
}
