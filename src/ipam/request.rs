//! What a Service asks for: pool, IPs, families, sharing key. A static
//! service carries its pool, IPs and sharing key typed
//! (`Service::static_request`); a Kubernetes Service's are read from pier's
//! annotations, then the OpenELB/Porter and MetalLB ones and
//! `spec.loadBalancerIP`, so users can switch without editing Services.
//!
//! Precedence: pier's own key wins over every other source of the same
//! thing. Without it, the other sources must agree; two that disagree are an
//! `InvalidAnnotation` naming both (guessing which one the user meant would
//! hand out an IP they did not ask for).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::Refusal;
use crate::model::{Family, IpFamilyPolicy, PoolMode, PortSpec, Service, ServiceKey};

/// Annotation keys pier reads.
pub mod annotations {
    pub const POOL: &str = "pier.io/pool";
    pub const IP: &str = "pier.io/ip";
    pub const SHARING_KEY: &str = "pier.io/sharing-key";

    /// Pool, as OpenELB, PorterLB and MetalLB name it.
    pub const POOL_COMPAT: [&str; 4] = [
        "eip.openelb.kubesphere.io/v1alpha2",
        "eip.porter.kubesphere.io/v1alpha2",
        "metallb.io/address-pool",
        "metallb.universe.tf/address-pool",
    ];
    /// Requested IPs (comma-separated for dual-stack).
    pub const IP_COMPAT: [&str; 4] = [
        "eip.openelb.kubesphere.io/v1alpha1",
        "eip.porter.kubesphere.io/v1alpha1",
        "metallb.io/loadBalancerIPs",
        "metallb.universe.tf/loadBalancerIPs",
    ];
    pub const SHARING_KEY_COMPAT: [&str; 2] = [
        "metallb.io/allow-shared-ip",
        "metallb.universe.tf/allow-shared-ip",
    ];

    /// OpenELB's and PorterLB's protocol of a Service: `bgp`, `layer2`
    /// (pools of mode `bgp` / `l2`) or `vip` (not available in pier).
    pub const PROTOCOL_COMPAT: [&str; 2] = [
        "protocol.openelb.kubesphere.io/v1alpha1",
        "protocol.porter.kubesphere.io/v1alpha1",
    ];
    /// OpenELB's and PorterLB's claim: `openelb` or `porter` as its value
    /// claims a Service without `spec.loadBalancerClass`
    /// (`kubernetes.claim_openelb_annotation`).
    pub const OPENELB_CLAIM: &str = "lb.kubesphere.io/v1alpha1";
    pub const OPENELB_CLAIM_VALUES: [&str; 2] = ["openelb", "porter"];

    /// Prefixes of every key above: a watcher may drop other annotations.
    pub const PREFIXES: [&str; 8] = [
        "pier.io/",
        "eip.openelb.kubesphere.io/",
        "eip.porter.kubesphere.io/",
        "protocol.openelb.kubesphere.io/",
        "protocol.porter.kubesphere.io/",
        "lb.kubesphere.io/",
        "metallb.io/",
        "metallb.universe.tf/",
    ];

    pub fn is_read_by_pier(key: &str) -> bool {
        PREFIXES.iter().any(|p| key.starts_with(p))
    }
}

/// A Service's request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub service: ServiceKey,
    pub namespace_labels: BTreeMap<String, String>,
    /// An explicitly named pool.
    pub pool: Option<String>,
    /// Requested IPs, at most one per family.
    pub ips: Vec<IpAddr>,
    /// Families that must be allocated, primary first.
    pub families: Vec<Family>,
    /// A family allocated only if the chosen pool offers it
    /// (`PreferDualStack`).
    pub optional_family: Option<Family>,
    pub sharing_key: Option<String>,
    pub ports: Vec<PortSpec>,
    /// Only pools of this mode (OpenELB's protocol annotation).
    pub mode: Option<PoolMode>,
    /// IPs in the Service's `status.loadBalancer.ingress` (written by pier,
    /// or by the controller it replaces, e.g. OpenELB).
    pub status_ips: Vec<IpAddr>,
}

/// One value from several possible keys: pier's wins; others must agree.
fn pick<'a>(
    svc: &'a Service,
    own: &'static str,
    compat: &[&'static str],
    extra: Option<(&'static str, &'a str)>,
) -> Result<Option<(&'static str, &'a str)>, Refusal> {
    if let Some(v) = svc.annotations.get(own) {
        return Ok(Some((own, v.as_str())));
    }
    let mut found: Option<(&'static str, &'a str)> = extra.filter(|(_, v)| !v.trim().is_empty());
    for key in compat {
        let Some(v) = svc.annotations.get(*key) else {
            continue;
        };
        match found {
            Some((k0, v0)) if normalise(v0) != normalise(v) => {
                return Err(Refusal::InvalidAnnotation {
                    key: (*key).to_string(),
                    value: v.clone(),
                    why: format!("disagrees with {k0}={v0:?}; set {own} to say which one you mean"),
                })
            }
            Some(_) => {}
            None => found = Some((key, v.as_str())),
        }
    }
    Ok(found)
}

fn normalise(v: &str) -> Vec<&str> {
    let mut parts: Vec<&str> = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    parts.sort_unstable();
    parts
}

/// The pool, IPs, sharing key and mode a Service asks for, before families.
struct Asked {
    pool: Option<String>,
    ips: Vec<IpAddr>,
    sharing_key: Option<String>,
    mode: Option<PoolMode>,
}

/// The pool mode OpenELB's / PorterLB's protocol annotation asks for. Both
/// keys may be set; they must agree.
fn protocol(svc: &Service) -> Result<Option<PoolMode>, Refusal> {
    let mut found: Option<(&str, &str)> = None;
    for key in annotations::PROTOCOL_COMPAT {
        let Some(v) = svc.annotations.get(key) else {
            continue;
        };
        let v = v.trim();
        match found {
            Some((k0, v0)) if v0 != v => {
                return Err(Refusal::InvalidAnnotation {
                    key: key.to_string(),
                    value: v.to_string(),
                    why: format!("disagrees with {k0}={v0:?}"),
                })
            }
            _ => found = Some((key, v)),
        }
    }
    match found {
        None => Ok(None),
        Some((_, "bgp")) => Ok(Some(PoolMode::Bgp)),
        Some((_, "layer2")) => Ok(Some(PoolMode::L2)),
        Some((key, "vip")) => Err(Refusal::UnsupportedProtocol {
            key: key.to_string(),
        }),
        Some((key, v)) => Err(Refusal::InvalidAnnotation {
            key: key.to_string(),
            value: v.to_string(),
            why: "the protocol is bgp or layer2".into(),
        }),
    }
}

/// What a Kubernetes Service asks for, read from its annotations and
/// `spec.loadBalancerIP`.
fn from_annotations(svc: &Service) -> Result<Asked, Refusal> {
    let pool = pick(svc, annotations::POOL, &annotations::POOL_COMPAT, None)?
        .map(|(key, v)| {
            let v = v.trim();
            if v.is_empty() {
                Err(Refusal::InvalidAnnotation {
                    key: key.into(),
                    value: v.into(),
                    why: "empty pool name".into(),
                })
            } else {
                Ok(v.to_string())
            }
        })
        .transpose()?;
    let ips = match pick(
        svc,
        annotations::IP,
        &annotations::IP_COMPAT,
        svc.load_balancer_ip
            .as_deref()
            .map(|v| ("spec.loadBalancerIP", v)),
    )? {
        None => Vec::new(),
        Some((key, v)) => parse_ips(key, v)?,
    };
    let sharing_key = pick(
        svc,
        annotations::SHARING_KEY,
        &annotations::SHARING_KEY_COMPAT,
        None,
    )?
    .map(|(_, v)| v.trim().to_string())
    .filter(|v| !v.is_empty());
    Ok(Asked {
        pool,
        ips,
        sharing_key,
        mode: protocol(svc)?,
    })
}

/// Read what `svc` asks for: a static service's typed request as it is, a
/// Kubernetes Service's from its annotations. `namespace_labels` are its
/// namespace's labels (for pools with a `namespace_selector`).
pub fn request_for(
    svc: &Service,
    namespace_labels: &BTreeMap<String, String>,
) -> Result<Request, Refusal> {
    let Asked {
        pool,
        ips,
        sharing_key,
        mode,
    } = match &svc.static_request {
        Some(r) => Asked {
            pool: Some(r.pool.clone()),
            ips: r.ips.clone(),
            sharing_key: r.sharing_key.clone(),
            mode: None,
        },
        None => from_annotations(svc)?,
    };

    let mut listed: Vec<Family> = Vec::new();
    for f in &svc.ip_families {
        if !listed.contains(f) {
            listed.push(*f);
        }
    }
    if listed.is_empty() {
        listed.push(Family::V4);
    }
    let primary = listed[0];
    let other = match primary {
        Family::V4 => Family::V6,
        Family::V6 => Family::V4,
    };
    let (mut families, optional_family) = match svc.ip_family_policy {
        IpFamilyPolicy::SingleStack => (vec![primary], None),
        IpFamilyPolicy::PreferDualStack => (vec![primary], Some(other)),
        IpFamilyPolicy::RequireDualStack => (vec![primary, other], None),
    };
    let mut optional_family = optional_family;
    if !ips.is_empty() {
        for ip in &ips {
            let f = Family::of(ip);
            let allowed = families.contains(&f) || optional_family == Some(f);
            if !allowed {
                return Err(Refusal::InvalidAnnotation {
                    key: "ip".into(),
                    value: ip.to_string(),
                    why: format!(
                        "the Service is {primary} single-stack (spec.ipFamilies/ipFamilyPolicy) but {ip} is {f}"
                    ),
                });
            }
            if optional_family == Some(f) {
                // Asked for explicitly: no longer optional.
                families.push(f);
                optional_family = None;
            }
        }
    }
    families.dedup();
    Ok(Request {
        service: svc.key.clone(),
        namespace_labels: namespace_labels.clone(),
        pool,
        ips,
        families,
        optional_family,
        sharing_key,
        ports: svc.ports.clone(),
        mode,
        status_ips: svc.status_ips.clone(),
    })
}

fn parse_ips(key: &str, value: &str) -> Result<Vec<IpAddr>, Refusal> {
    let invalid = |why: String| Refusal::InvalidAnnotation {
        key: key.into(),
        value: value.into(),
        why,
    };
    let mut ips: Vec<IpAddr> = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let ip: IpAddr = part
            .parse()
            .map_err(|_| invalid(format!("{part:?} is not an IP address")))?;
        if let Some(prev) = ips.iter().find(|p| Family::of(p) == Family::of(&ip)) {
            return Err(invalid(format!(
                "two {} addresses ({prev} and {ip}): at most one per family",
                Family::of(&ip)
            )));
        }
        ips.push(ip);
    }
    if ips.is_empty() {
        return Err(invalid("no IP address given".into()));
    }
    Ok(ips)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ann: &[(&str, &str)]) -> Service {
        let mut s = Service::new(ServiceKey::new("default", "web"));
        for (k, v) in ann {
            s.annotations.insert(k.to_string(), v.to_string());
        }
        s
    }

    fn req(s: &Service) -> Result<Request, Refusal> {
        request_for(s, &BTreeMap::new())
    }

    #[test]
    fn every_pool_key_is_read() {
        for key in std::iter::once(annotations::POOL).chain(annotations::POOL_COMPAT) {
            let r = req(&svc(&[(key, "public")])).unwrap();
            assert_eq!(r.pool.as_deref(), Some("public"), "{key}");
        }
    }

    #[test]
    fn every_ip_source_is_read() {
        for key in std::iter::once(annotations::IP).chain(annotations::IP_COMPAT) {
            let r = req(&svc(&[(key, "10.0.0.1")])).unwrap();
            assert_eq!(r.ips, vec!["10.0.0.1".parse::<IpAddr>().unwrap()], "{key}");
        }
        let mut s = svc(&[]);
        s.load_balancer_ip = Some("10.0.0.2".into());
        assert_eq!(req(&s).unwrap().ips[0].to_string(), "10.0.0.2");
    }

    /// Every key of OpenELB and PorterLB, both versions, that names an Eip
    /// or an IP (their manuals: v1alpha2 names the Eip, v1alpha1 the IP).
    #[test]
    fn every_openelb_and_porter_eip_key_is_read() {
        for (key, value, pool, ip) in [
            (
                "eip.openelb.kubesphere.io/v1alpha2",
                "eip-pool",
                Some("eip-pool"),
                None,
            ),
            (
                "eip.porter.kubesphere.io/v1alpha2",
                "eip-pool",
                Some("eip-pool"),
                None,
            ),
            (
                "eip.openelb.kubesphere.io/v1alpha1",
                "10.0.0.7",
                None,
                Some("10.0.0.7"),
            ),
            (
                "eip.porter.kubesphere.io/v1alpha1",
                "10.0.0.7",
                None,
                Some("10.0.0.7"),
            ),
        ] {
            assert!(annotations::is_read_by_pier(key), "{key}");
            let r = req(&svc(&[(key, value)])).unwrap();
            assert_eq!(r.pool.as_deref(), pool, "{key}");
            let want: Vec<IpAddr> = ip.into_iter().map(|i| i.parse().unwrap()).collect();
            assert_eq!(r.ips, want, "{key}");
        }
    }

    #[test]
    fn protocol_annotations_choose_the_mode() {
        for key in annotations::PROTOCOL_COMPAT {
            assert!(annotations::is_read_by_pier(key), "{key}");
            for (v, mode) in [("bgp", PoolMode::Bgp), ("layer2", PoolMode::L2)] {
                assert_eq!(req(&svc(&[(key, v)])).unwrap().mode, Some(mode), "{key}");
            }
            let e = req(&svc(&[(key, "vip")])).unwrap_err();
            assert_eq!(e.reason(), "UnsupportedProtocol");
            assert!(e.to_string().contains("l2 pool"), "{e}");
            let e = req(&svc(&[(key, "ospf")])).unwrap_err();
            assert_eq!(e.reason(), "InvalidAnnotation");
        }
        assert_eq!(req(&svc(&[])).unwrap().mode, None);
        let both = [
            (annotations::PROTOCOL_COMPAT[0], "bgp"),
            (annotations::PROTOCOL_COMPAT[1], "layer2"),
        ];
        assert!(req(&svc(&both))
            .unwrap_err()
            .to_string()
            .contains("disagrees"));
    }

    #[test]
    fn sharing_keys_are_read() {
        for key in std::iter::once(annotations::SHARING_KEY).chain(annotations::SHARING_KEY_COMPAT)
        {
            let r = req(&svc(&[(key, "k1")])).unwrap();
            assert_eq!(r.sharing_key.as_deref(), Some("k1"), "{key}");
        }
    }

    #[test]
    fn pier_wins_and_others_must_agree() {
        let r = req(&svc(&[
            (annotations::POOL, "mine"),
            ("metallb.io/address-pool", "theirs"),
        ]))
        .unwrap();
        assert_eq!(r.pool.as_deref(), Some("mine"));
        let e = req(&svc(&[
            ("metallb.io/address-pool", "a"),
            ("eip.openelb.kubesphere.io/v1alpha2", "b"),
        ]))
        .unwrap_err();
        assert_eq!(e.reason(), "InvalidAnnotation");
        assert!(e.to_string().contains("disagrees"), "{e}");
        // agreeing duplicates are fine
        let mut s = svc(&[("metallb.io/loadBalancerIPs", "10.0.0.1")]);
        s.load_balancer_ip = Some("10.0.0.1".into());
        assert!(req(&s).is_ok());
        s.load_balancer_ip = Some("10.0.0.9".into());
        assert!(req(&s).is_err());
    }

    #[test]
    fn bad_ip_values_are_invalid_annotations() {
        for v in ["not-an-ip", "10.0.0.1,10.0.0.2", "", " , ", "10.0.0.300"] {
            let e = req(&svc(&[(annotations::IP, v)])).unwrap_err();
            assert!(matches!(e, Refusal::InvalidAnnotation { .. }), "{v:?}: {e}");
        }
    }

    #[test]
    fn a_typed_request_is_taken_as_is_and_annotations_are_not_read() {
        let mut s = svc(&[
            (annotations::POOL, "from-annotation"),
            (annotations::IP, "10.9.9.9"),
            (annotations::SHARING_KEY, "other"),
        ]);
        s.ip_families = vec![Family::V4, Family::V6];
        s.ip_family_policy = IpFamilyPolicy::RequireDualStack;
        let ips: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()];
        s.static_request = Some(crate::model::StaticRequest {
            pool: "typed".into(),
            ips: ips.clone(),
            sharing_key: Some("a,b".into()),
        });
        let r = req(&s).unwrap();
        assert_eq!(r.pool.as_deref(), Some("typed"));
        assert_eq!(r.ips, ips);
        assert_eq!(r.sharing_key.as_deref(), Some("a,b"));
        // The family checks apply to typed IPs too.
        s.ip_families = vec![Family::V4];
        s.ip_family_policy = IpFamilyPolicy::SingleStack;
        assert!(req(&s).unwrap_err().to_string().contains("single-stack"));
    }

    #[test]
    fn families_follow_policy() {
        let mut s = svc(&[]);
        s.ip_families = vec![Family::V6, Family::V4];
        s.ip_family_policy = IpFamilyPolicy::RequireDualStack;
        let r = req(&s).unwrap();
        assert_eq!(r.families, vec![Family::V6, Family::V4]);
        s.ip_family_policy = IpFamilyPolicy::PreferDualStack;
        let r = req(&s).unwrap();
        assert_eq!(
            (r.families, r.optional_family),
            (vec![Family::V6], Some(Family::V4))
        );
        s.ip_family_policy = IpFamilyPolicy::SingleStack;
        assert_eq!(req(&s).unwrap().families, vec![Family::V6]);
        s.ip_families.clear();
        assert_eq!(req(&s).unwrap().families, vec![Family::V4]);
    }

    #[test]
    fn requested_ip_must_fit_the_families() {
        let e = req(&svc(&[(annotations::IP, "fd00::1")])).unwrap_err();
        assert!(e.to_string().contains("single-stack"), "{e}");
        let mut s = svc(&[(annotations::IP, "10.0.0.1, fd00::1")]);
        s.ip_families = vec![Family::V4, Family::V6];
        s.ip_family_policy = IpFamilyPolicy::PreferDualStack;
        let r = req(&s).unwrap();
        assert_eq!(r.families, vec![Family::V4, Family::V6]);
        assert_eq!(r.optional_family, None);
    }
}
