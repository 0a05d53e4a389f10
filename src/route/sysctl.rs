//! The kernel settings pier's forwarding depends on: what is wrong (pure)
//! and the `/proc/sys` I/O that checks or sets them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::SysctlMode;

use super::RouteError;

/// One setting pier needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// Path under `/proc/sys`, e.g. `net/ipv4/ip_forward`.
    pub path: String,
    pub want: &'static str,
    pub why: &'static str,
}

impl Requirement {
    /// The `sysctl` name: `net.ipv4.ip_forward` (an interface name keeps
    /// its dots, as `sysctl` shows it with slashes; we show the path form).
    pub fn key(&self) -> String {
        self.path.replace('/', ".")
    }
}

/// A setting that is not as pier needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub requirement: Requirement,
    /// What was found: the value, or why it could not be read.
    pub found: Result<String, String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.requirement;
        match &self.found {
            Ok(v) => write!(f, "{} = {v}, pier needs {}: {}", r.key(), r.want, r.why),
            Err(e) => write!(
                f,
                "{} cannot be read ({e}), pier needs {}: {}",
                r.key(),
                r.want,
                r.why
            ),
        }
    }
}

const WHY_FORWARD: &str = "pier forwards VIP traffic to the nodes";
const WHY_HASH: &str = "L4 hashing spreads one client's connections over the nodes \
                        (policy 0 hashes addresses only: one client always hits one node)";
const WHY_REDIRECTS: &str = "traffic leaves by the interface it came in on; \
                             ICMP redirects would send clients straight to a node";

/// Is `name` safe to use as one path component under /proc/sys?
pub fn valid_interface(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && !name.chars().any(char::is_whitespace)
}

/// The per-interface setting: no ICMP redirects out of `interface`.
pub fn interface_requirement(interface: &str) -> Requirement {
    Requirement {
        path: format!("net/ipv4/conf/{interface}/send_redirects"),
        want: "0",
        why: WHY_REDIRECTS,
    }
}

/// Every setting pier needs, given the LAN interfaces it forwards on.
pub fn requirements(lan_interfaces: &[String]) -> Vec<Requirement> {
    let mut r = vec![
        Requirement {
            path: "net/ipv4/ip_forward".into(),
            want: "1",
            why: WHY_FORWARD,
        },
        Requirement {
            path: "net/ipv6/conf/all/forwarding".into(),
            want: "1",
            why: WHY_FORWARD,
        },
        Requirement {
            path: "net/ipv4/fib_multipath_hash_policy".into(),
            want: "1",
            why: WHY_HASH,
        },
        Requirement {
            path: "net/ipv6/fib_multipath_hash_policy".into(),
            want: "1",
            why: WHY_HASH,
        },
        // The kernel sends redirects if `all` OR the interface says so.
        Requirement {
            path: "net/ipv4/conf/all/send_redirects".into(),
            want: "0",
            why: WHY_REDIRECTS,
        },
    ];
    r.extend(lan_interfaces.iter().map(|lan| interface_requirement(lan)));
    r
}

/// The requirements not met by `found` (path → value read, or the read
/// error). A path missing from `found` counts as unreadable.
pub fn problems(
    requirements: &[Requirement],
    found: &BTreeMap<String, Result<String, String>>,
) -> Vec<Problem> {
    requirements
        .iter()
        .filter_map(|r| {
            let got = found
                .get(&r.path)
                .cloned()
                .unwrap_or_else(|| Err("not read".into()));
            match &got {
                Ok(v) if v.trim() == r.want => None,
                _ => Some(Problem {
                    requirement: r.clone(),
                    found: got.map(|v| v.trim().to_string()),
                }),
            }
        })
        .collect()
}

fn read_all(root: &Path, reqs: &[Requirement]) -> BTreeMap<String, Result<String, String>> {
    reqs.iter()
        .map(|r| {
            let v = std::fs::read_to_string(root.join(&r.path)).map_err(|e| e.to_string());
            (r.path.clone(), v)
        })
        .collect()
}

/// Check pier's sysctls under `root` (normally `/proc/sys`). With
/// [`SysctlMode::Set`], write the wrong ones and check again; returns the
/// keys it changed. Any setting still wrong is an error naming each one and
/// why pier needs it.
pub fn ensure(
    root: &Path,
    lan_interfaces: &[String],
    mode: SysctlMode,
) -> Result<Vec<String>, RouteError> {
    if let Some(bad) = lan_interfaces.iter().find(|i| !valid_interface(i)) {
        return Err(RouteError::Sysctl {
            problems: vec![],
            detail: format!("{bad:?} is not an interface name"),
        });
    }
    ensure_requirements(root, &requirements(lan_interfaces), mode)
}

/// Check (and with [`SysctlMode::Set`] fix) the settings `reqs`; returns
/// the keys changed, or an error naming every setting still wrong.
pub fn ensure_requirements(
    root: &Path,
    reqs: &[Requirement],
    mode: SysctlMode,
) -> Result<Vec<String>, RouteError> {
    let mut wrong = problems(reqs, &read_all(root, reqs));
    let mut changed = Vec::new();
    if mode == SysctlMode::Set && !wrong.is_empty() {
        let mut write_errors = Vec::new();
        for p in &wrong {
            let path: PathBuf = root.join(&p.requirement.path);
            match std::fs::write(&path, p.requirement.want) {
                Ok(()) => changed.push(p.requirement.key()),
                Err(e) => write_errors.push(format!("{}: {e}", p.requirement.key())),
            }
        }
        wrong = problems(reqs, &read_all(root, reqs));
        if !wrong.is_empty() {
            return Err(RouteError::Sysctl {
                problems: wrong,
                detail: format!("setting failed: {}", write_errors.join("; ")),
            });
        }
    }
    if wrong.is_empty() {
        Ok(changed)
    } else {
        Err(RouteError::Sysctl {
            problems: wrong,
            detail: "set them (e.g. in /etc/sysctl.d/) or use sysctl = \"set\"".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(pairs: &[(&str, &str)]) -> BTreeMap<String, Result<String, String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Ok(format!("{v}\n"))))
            .collect()
    }

    fn good(lan: &str) -> Vec<(String, String)> {
        requirements(&[lan.to_string()])
            .into_iter()
            .map(|r| (r.path, r.want.to_string()))
            .collect()
    }

    #[test]
    fn all_good_means_no_problems() {
        let g = good("eth1");
        let pairs: Vec<(&str, &str)> = g.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert!(problems(&requirements(&["eth1".into()]), &found(&pairs)).is_empty());
    }

    #[test]
    fn each_wrong_or_missing_setting_is_named_with_why() {
        let reqs = requirements(&["eth1".into()]);
        let f = found(&[
            ("net/ipv4/ip_forward", "0"),
            ("net/ipv6/conf/all/forwarding", "1"),
            ("net/ipv4/fib_multipath_hash_policy", "0"),
            ("net/ipv6/fib_multipath_hash_policy", "1"),
            ("net/ipv4/conf/all/send_redirects", "0"),
        ]);
        let p = problems(&reqs, &f);
        let text: Vec<String> = p.iter().map(|p| p.to_string()).collect();
        assert_eq!(p.len(), 3, "{text:?}");
        assert!(text[0].starts_with("net.ipv4.ip_forward = 0, pier needs 1"));
        assert!(text[1].contains("fib_multipath_hash_policy = 0") && text[1].contains("L4"));
        assert!(text[2].contains("net.ipv4.conf.eth1.send_redirects cannot be read"));
        assert!(text[2].contains("redirects"));
    }

    fn fake_proc(values: &[(String, String)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, v) in values {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("{v}\n")).unwrap();
        }
        dir
    }

    #[test]
    fn check_mode_refuses_and_set_mode_fixes() {
        let mut values = good("lan0");
        for (p, v) in values.iter_mut() {
            if p.ends_with("ip_forward") || p.contains("lan0") {
                *v = if v == "1" { "0".into() } else { "1".into() };
            }
        }
        let dir = fake_proc(&values);
        let lan = vec!["lan0".to_string()];
        let err = ensure(dir.path(), &lan, SysctlMode::Check).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("net.ipv4.ip_forward"), "{msg}");
        assert!(msg.contains("net.ipv4.conf.lan0.send_redirects"), "{msg}");
        let changed = ensure(dir.path(), &lan, SysctlMode::Set).unwrap();
        assert_eq!(changed.len(), 2);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("net/ipv4/ip_forward")).unwrap(),
            "1"
        );
        assert!(ensure(dir.path(), &lan, SysctlMode::Check)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn bad_interface_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "..", "a/b", "x y", "waytoolonginterfacename"] {
            assert!(
                ensure(dir.path(), &[bad.into()], SysctlMode::Set).is_err(),
                "{bad}"
            );
        }
    }
}
