//! A TOML reader that knows values and their file:line positions.
//!
//! The file is parsed with spans (toml's `DeTable`) and walked by hand, so
//! that one pass reports every problem — unknown keys, wrong types, values
//! out of range — each at its own line and key path, instead of stopping at
//! the first like serde would. Which keys exist and what they mean is the
//! schema's business (`schema/`); nothing here knows pier.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

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

/// A byte range in the file.
pub type Span = Range<usize>;

/// A parsed value with where it came from: span and key path.
pub type Located<T> = (T, Span, String);

/// The problems found so far in one file, and byte offset → line.
pub struct Diagnostics<'a> {
    file: &'a Path,
    line_starts: Vec<usize>,
    errors: Vec<ConfigError>,
}

impl<'a> Diagnostics<'a> {
    pub fn new(file: &'a Path, text: &str) -> Self {
        Diagnostics {
            file,
            line_starts: std::iter::once(0)
                .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
            errors: Vec::new(),
        }
    }

    fn line(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= offset)
    }

    pub fn err(&mut self, span: &Span, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line: self.line(span.start),
            key: key.to_string(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Every problem found, in file order.
    pub fn into_errors(mut self) -> ConfigErrors {
        self.errors.sort_by_key(|e| e.line);
        ConfigErrors(self.errors)
    }
}

/// The top-level table of `text`, or `None` after reporting a syntax error.
pub fn document<'i>(diag: &mut Diagnostics<'_>, text: &'i str) -> Option<Spanned<DeTable<'i>>> {
    match DeTable::parse(text) {
        Ok(d) => Some(d),
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let msg = e.message().trim().to_string();
            diag.err(&span, "", format!("TOML syntax error: {msg}"));
            None
        }
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
pub struct Section<'t, 'i> {
    table: &'t DeTable<'i>,
    /// Key path prefix (`gateway`, `pools[2]`).
    path: String,
    /// Where the table starts (for "missing key").
    pub span: Span,
    known: &'static [&'static str],
}

impl<'t, 'i> Section<'t, 'i> {
    pub fn new(
        diag: &mut Diagnostics<'_>,
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
                diag.err(
                    &k.span(),
                    &s.key(name),
                    format!("unknown key{hint}; known keys here: {}", known.join(", ")),
                );
            }
        }
        s
    }

    pub fn key(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    pub fn raw(&self, name: &str) -> Option<&'t Spanned<DeValue<'i>>> {
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

    pub fn missing(&self, diag: &mut Diagnostics<'_>, name: &str) {
        diag.err(&self.span, &self.key(name), "required key is missing");
    }

    pub fn str(&self, diag: &mut Diagnostics<'_>, name: &str) -> Option<(String, Span)> {
        let v = self.raw(name)?;
        match v.get_ref() {
            DeValue::String(s) => Some((s.to_string(), v.span())),
            other => {
                diag.err(
                    &v.span(),
                    &self.key(name),
                    format!("expected a string, found {}", type_name(other)),
                );
                None
            }
        }
    }

    pub fn bool(&self, diag: &mut Diagnostics<'_>, name: &str, default: bool) -> bool {
        let Some(v) = self.raw(name) else {
            return default;
        };
        match v.get_ref() {
            DeValue::Boolean(b) => *b,
            other => {
                diag.err(
                    &v.span(),
                    &self.key(name),
                    format!("expected true or false, found {}", type_name(other)),
                );
                default
            }
        }
    }

    /// An integer within `min..=max`.
    pub fn int(
        &self,
        diag: &mut Diagnostics<'_>,
        name: &str,
        min: i64,
        max: i64,
    ) -> Option<(i64, Span)> {
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
                diag.err(
                    &v.span(),
                    &self.key(name),
                    format!("{n} is out of range {min}..={max}"),
                );
                None
            }
            None => {
                diag.err(
                    &v.span(),
                    &self.key(name),
                    format!("expected an integer, found {}", type_name(v.get_ref())),
                );
                None
            }
        }
    }

    /// A string parsed with `parse`, whose error becomes the message.
    pub fn parsed<T>(
        &self,
        diag: &mut Diagnostics<'_>,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<(T, Span)> {
        let (s, span) = self.str(diag, name)?;
        match parse(&s) {
            Ok(v) => Some((v, span)),
            Err(e) => {
                diag.err(&span, &self.key(name), e);
                None
            }
        }
    }

    /// An array of strings, each parsed; bad elements are reported at
    /// their own position and skipped.
    pub fn list<T>(
        &self,
        diag: &mut Diagnostics<'_>,
        name: &str,
        mut parse: impl FnMut(&str) -> Result<T, String>,
    ) -> Vec<Located<T>> {
        let Some(v) = self.raw(name) else {
            return Vec::new();
        };
        let DeValue::Array(items) = v.get_ref() else {
            diag.err(
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
                    Err(e) => diag.err(&item.span(), &key, e),
                },
                other => diag.err(
                    &item.span(),
                    &key,
                    format!("expected a string, found {}", type_name(other)),
                ),
            }
        }
        out
    }

    /// An inline table of string → string (label selectors).
    pub fn labels(&self, diag: &mut Diagnostics<'_>, name: &str) -> BTreeMap<String, String> {
        let Some(v) = self.raw(name) else {
            return BTreeMap::new();
        };
        let DeValue::Table(t) = v.get_ref() else {
            diag.err(
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
                other => diag.err(
                    &val.span(),
                    &format!("{}.{}", self.key(name), k.get_ref()),
                    format!("expected a string, found {}", type_name(other)),
                ),
            }
        }
        out
    }

    /// A sub-table.
    pub fn table(&self, diag: &mut Diagnostics<'_>, name: &str) -> Option<(&'t DeTable<'i>, Span)> {
        let v = self.raw(name)?;
        match v.get_ref() {
            DeValue::Table(t) => Some((t, v.span())),
            other => {
                diag.err(
                    &v.span(),
                    &self.key(name),
                    format!("expected a table ([{name}]), found {}", type_name(other)),
                );
                None
            }
        }
    }

    /// An array of tables (`[[name]]`).
    pub fn tables(&self, diag: &mut Diagnostics<'_>, name: &str) -> Vec<(&'t DeTable<'i>, Span)> {
        let Some(v) = self.raw(name) else {
            return Vec::new();
        };
        let DeValue::Array(items) = v.get_ref() else {
            diag.err(
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
                other => diag.err(
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
