//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) with JSON pointers
//! (RFC 6901), and the field sets server-side apply keeps in `managedFields`.

use serde_json::{Map, Value};

/// RFC 7386 §2: objects merge recursively, `null` deletes, anything else replaces.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// RFC 6901 §4: `/a/b~1c/~0d` → `["a", "b/c", "~d"]`.
fn parse_pointer(p: &str) -> Result<Vec<String>, String> {
    if p.is_empty() {
        return Ok(vec![]);
    }
    let rest = p
        .strip_prefix('/')
        .ok_or_else(|| format!("JSON pointer {p:?} must start with '/'"))?;
    Ok(rest
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn array_index(tok: &str, len: usize, allow_end: bool) -> Result<usize, String> {
    if allow_end && tok == "-" {
        return Ok(len);
    }
    // RFC 6901 §4: no leading zeros, digits only.
    if tok.is_empty()
        || (tok.len() > 1 && tok.starts_with('0'))
        || !tok.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("invalid array index {tok:?}"));
    }
    let i: usize = tok
        .parse()
        .map_err(|_| format!("invalid array index {tok:?}"))?;
    let max = if allow_end {
        len
    } else {
        len.saturating_sub(1)
    };
    if i > max || (!allow_end && len == 0) {
        return Err(format!("array index {i} out of bounds"));
    }
    Ok(i)
}

fn get_mut<'a>(doc: &'a mut Value, path: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for tok in path {
        cur = match cur {
            Value::Object(m) => m
                .get_mut(tok)
                .ok_or_else(|| format!("missing path component {tok:?}"))?,
            Value::Array(a) => {
                let i = array_index(tok, a.len(), false)?;
                a.get_mut(i)
                    .ok_or_else(|| "index out of bounds".to_string())?
            }
            _ => return Err(format!("cannot descend into scalar at {tok:?}")),
        };
    }
    Ok(cur)
}

fn add(doc: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let Some((last, parent)) = path.split_last() else {
        *doc = value;
        return Ok(());
    };
    match get_mut(doc, parent)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            let i = array_index(last, a.len(), true)?;
            a.insert(i, value);
            Ok(())
        }
        _ => Err("add target parent is not a container".into()),
    }
}

fn remove(doc: &mut Value, path: &[String]) -> Result<Value, String> {
    let Some((last, parent)) = path.split_last() else {
        return Err("cannot remove the whole document".into());
    };
    match get_mut(doc, parent)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| format!("remove: missing key {last:?}")),
        Value::Array(a) => {
            let i = array_index(last, a.len(), false)?;
            Ok(a.remove(i))
        }
        _ => Err("remove target parent is not a container".into()),
    }
}

/// Applies an RFC 6902 patch document (all operations, including `test`) atomically:
/// on error `doc` is left unchanged.
pub(crate) fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), String> {
    let ops = patch
        .as_array()
        .ok_or("a JSON patch must be an array of operations")?;
    let mut work = doc.clone();
    for (n, op) in ops.iter().enumerate() {
        let field = |k: &str| op.get(k).and_then(Value::as_str);
        let name = field("op").ok_or(format!("operation {n}: missing \"op\""))?;
        let path = parse_pointer(field("path").ok_or(format!("operation {n}: missing \"path\""))?)?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or(format!("operation {n}: missing \"value\""))
        };
        match name {
            "add" => add(&mut work, &path, value()?)?,
            "remove" => {
                remove(&mut work, &path)?;
            }
            "replace" => {
                let v = value()?;
                *get_mut(&mut work, &path)? = v;
            }
            "move" | "copy" => {
                let from = parse_pointer(
                    field("from").ok_or(format!("operation {n}: missing \"from\""))?,
                )?;
                if name == "move" && path.len() > from.len() && path.starts_with(&from) {
                    return Err(format!("operation {n}: cannot move a value into itself"));
                }
                let v = if name == "move" {
                    remove(&mut work, &from)?
                } else {
                    get_mut(&mut work, &from)?.clone()
                };
                add(&mut work, &path, v)?;
            }
            "test" => {
                let want = value()?;
                let have = get_mut(&mut work, &path)?;
                if *have != want {
                    return Err(format!(
                        "testing value {} failed",
                        field("path").unwrap_or_default()
                    ));
                }
            }
            other => return Err(format!("operation {n}: unknown op {other:?}")),
        }
    }
    *doc = work;
    Ok(())
}

/// A field path in an object, e.g. `["spec", "ports"]`.
pub(crate) type FieldPath = Vec<String>;

/// Leaf fields of an apply configuration or a changed object: scalars, lists (atomic,
/// the simplification documented in the README) and empty maps.
pub(crate) fn leaves(v: &Value, prefix: &mut FieldPath, out: &mut Vec<FieldPath>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                prefix.push(k.clone());
                leaves(child, prefix, out);
                prefix.pop();
            }
        }
        _ => out.push(prefix.clone()),
    }
}

/// Leaves whose value differs between `old` and `new` (present in `new`).
pub(crate) fn changed_leaves(
    old: Option<&Value>,
    new: &Value,
    prefix: &mut FieldPath,
    out: &mut Vec<FieldPath>,
) {
    match (old, new) {
        (Some(o), n) if o == n => {}
        (Some(Value::Object(o)), Value::Object(n)) if !n.is_empty() => {
            for (k, child) in n {
                prefix.push(k.clone());
                changed_leaves(o.get(k), child, prefix, out);
                prefix.pop();
            }
        }
        (_, n) => leaves(n, prefix, out),
    }
}

pub(crate) fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.get(k.as_str()))
}

pub(crate) fn set_path(v: &mut Value, path: &[String], value: Value) {
    let Some((last, parent)) = path.split_last() else {
        *v = value;
        return;
    };
    let mut cur = v;
    for k in parent {
        if !cur.get(k.as_str()).is_some_and(Value::is_object) {
            if let Value::Object(m) = cur {
                m.insert(k.clone(), Value::Object(Map::new()));
            } else {
                *cur = Value::Object(Map::new());
                if let Value::Object(m) = cur {
                    m.insert(k.clone(), Value::Object(Map::new()));
                }
            }
        }
        cur = match cur.get_mut(k.as_str()) {
            Some(c) => c,
            None => return,
        };
    }
    if let Value::Object(m) = cur {
        m.insert(last.clone(), value);
    }
}

/// Removes a field, then any maps the removal left empty.
pub(crate) fn remove_path(v: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    if let Some(Value::Object(m)) = parent
        .iter()
        .try_fold(&mut *v, |cur, k| cur.get_mut(k.as_str()))
    {
        m.remove(last);
        if m.is_empty() && !parent.is_empty() {
            remove_path(v, parent);
        }
    }
}

/// Encodes field paths as a `fieldsV1` tree: `{"f:spec": {"f:type": {}}}`.
pub(crate) fn to_fields_v1(paths: &[FieldPath]) -> Value {
    let mut root = Value::Object(Map::new());
    for p in paths {
        let mut cur = &mut root;
        for k in p {
            let Value::Object(m) = cur else { break };
            cur = m
                .entry(format!("f:{k}"))
                .or_insert_with(|| Value::Object(Map::new()));
        }
    }
    root
}

/// Decodes a `fieldsV1` tree to its leaf paths (`.` self-markers are ignored).
pub(crate) fn from_fields_v1(v: &Value) -> Vec<FieldPath> {
    fn walk(v: &Value, prefix: &mut FieldPath, out: &mut Vec<FieldPath>) {
        let children: Vec<(&String, &Value)> = match v {
            Value::Object(m) => m.iter().filter(|(k, _)| k.starts_with("f:")).collect(),
            _ => vec![],
        };
        if children.is_empty() {
            if !prefix.is_empty() {
                out.push(prefix.clone());
            }
            return;
        }
        for (k, child) in children {
            prefix.push(k.get(2..).unwrap_or_default().to_string());
            walk(child, prefix, out);
            prefix.pop();
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// `.spec.ports`, the form SSA conflict messages use.
pub(crate) fn display_path(p: &[String]) -> String {
    p.iter().map(|s| format!(".{s}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386_examples() {
        // RFC 7386 appendix A, a selection.
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (mut t, p, want) in cases {
            merge_patch(&mut t, &p);
            assert_eq!(t, want);
        }
    }

    #[test]
    fn json_patch_rfc6902_operations() {
        let mut d = json!({"foo": ["bar", "baz"], "a/b": 1, "m~n": 2});
        json_patch(
            &mut d,
            &json!([
                {"op": "test", "path": "/a~1b", "value": 1},
                {"op": "test", "path": "/m~0n", "value": 2},
                {"op": "add", "path": "/foo/1", "value": "qux"},
                {"op": "add", "path": "/foo/-", "value": "end"},
                {"op": "remove", "path": "/foo/0"},
                {"op": "replace", "path": "/a~1b", "value": 3},
                {"op": "copy", "from": "/foo", "path": "/copy"},
                {"op": "move", "from": "/m~0n", "path": "/moved"},
            ]),
        )
        .unwrap();
        assert_eq!(
            d,
            json!({"foo": ["qux", "baz", "end"], "a/b": 3, "copy": ["qux", "baz", "end"], "moved": 2})
        );
    }

    #[test]
    fn json_patch_failures_leave_document_unchanged() {
        let orig = json!({"a": {"b": 1}, "l": [1]});
        for bad in [
            json!([{"op": "test", "path": "/a/b", "value": 2}]),
            json!([{"op": "replace", "path": "/a/c", "value": 2}]),
            json!([{"op": "remove", "path": "/l/1"}]),
            json!([{"op": "add", "path": "/l/01", "value": 0}]),
            json!([{"op": "add", "path": "/x/y", "value": 0}]),
            json!([{"op": "move", "from": "/a", "path": "/a/b/c"}]),
            json!([{"op": "add", "path": "/z", "value": 1}, {"op": "bogus", "path": "/"}]),
            json!({"op": "add"}),
        ] {
            let mut d = orig.clone();
            assert!(json_patch(&mut d, &bad).is_err(), "{bad}");
            assert_eq!(d, orig);
        }
    }

    #[test]
    fn fields_v1_round_trip() {
        let v = json!({"spec": {"type": "LoadBalancer", "ports": [1], "sel": {}}, "metadata": {"labels": {"a": "b"}}});
        let mut out = Vec::new();
        leaves(&v, &mut Vec::new(), &mut out);
        let fv = to_fields_v1(&out);
        assert_eq!(fv["f:spec"]["f:type"], json!({}));
        let mut back = from_fields_v1(&fv);
        back.sort();
        out.sort();
        assert_eq!(back, out);
    }

    #[test]
    fn changed_leaves_and_paths() {
        let old = json!({"spec": {"a": 1, "b": {"c": 2}}});
        let new = json!({"spec": {"a": 1, "b": {"c": 3}, "d": [1]}});
        let mut out = Vec::new();
        changed_leaves(Some(&old), &new, &mut Vec::new(), &mut out);
        out.sort();
        assert_eq!(
            out,
            vec![
                vec!["spec".to_string(), "b".into(), "c".into()],
                vec!["spec".into(), "d".into()]
            ]
        );
        let mut v = new.clone();
        remove_path(&mut v, &["spec".into(), "b".into(), "c".into()]);
        assert_eq!(v, json!({"spec": {"a": 1, "d": [1]}}));
        set_path(&mut v, &["status".into(), "x".into()], json!(1));
        assert_eq!(
            get_path(&v, &["status".into(), "x".into()]),
            Some(&json!(1))
        );
    }
}
