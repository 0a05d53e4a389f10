//! The static source: `[[static_services]]` from the config, fed to the
//! engine as Services (their pool, IPs and sharing key as a typed
//! [`StaticRequest`] rather than annotations), so pier runs and is testable
//! without a cluster.

use crate::config::{Config, StaticService};
use crate::engine::Input;
use crate::model::{Family, IpFamilyPolicy, Origin, Service, StaticRequest};

/// The Service a static service stands for.
pub fn static_service(s: &StaticService, kube_proxy_port: u16) -> Service {
    let mut svc = Service::new(s.key.clone());
    svc.origin = Origin::Static;
    svc.static_request = Some(StaticRequest {
        pool: s.pool.clone(),
        ips: s.ips.clone(),
        // As the sharing-key annotation is read: surrounding blanks do not
        // count and an empty key is no key.
        sharing_key: s
            .sharing_key
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_string),
    });
    let mut families: Vec<Family> = if s.ips.is_empty() {
        s.families.clone()
    } else {
        s.ips.iter().map(Family::of).collect()
    };
    families.dedup();
    if families.is_empty() {
        families.push(Family::V4);
    }
    svc.ip_family_policy = if families.len() > 1 {
        IpFamilyPolicy::RequireDualStack
    } else {
        IpFamilyPolicy::SingleStack
    };
    svc.ip_families = families;
    svc.ports = s.ports.clone();
    svc.source_ranges = s.source_ranges.clone();
    svc.static_next_hops = Some(s.nodes.clone());
    svc.static_probe_port = s.health.probe_port(kube_proxy_port);
    svc
}

/// Every static service, then `Synced(Static)`.
pub fn static_inputs(config: &Config) -> Vec<Input> {
    config
        .static_services
        .iter()
        .map(|s| Input::Service(static_service(s, config.health.kube_proxy_port)))
        .chain(std::iter::once(Input::Synced(Origin::Static)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::IpAddr;

    use super::*;
    use crate::config::StaticHealth;
    use crate::ipam::request_for;
    use crate::model::ServiceKey;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn entry() -> StaticService {
        StaticService {
            key: ServiceKey::new("static", "dns"),
            pool: "public".into(),
            ips: vec![ip("fd00::53"), ip("10.0.0.53")],
            families: Vec::new(),
            ports: vec!["53/udp".parse().unwrap()],
            nodes: vec![ip("10.1.0.1"), ip("fd01::1")],
            sharing_key: Some("dns,ntp".into()),
            source_ranges: Vec::new(),
            health: StaticHealth::KubeProxy,
        }
    }

    #[test]
    fn a_static_service_asks_ipam_with_typed_values() {
        let svc = static_service(&entry(), 10256);
        assert!(svc.annotations.is_empty(), "{:?}", svc.annotations);
        let r = request_for(&svc, &BTreeMap::new()).unwrap();
        assert_eq!(r.pool.as_deref(), Some("public"));
        // Both IPs, in the order given, and the key with its comma.
        assert_eq!(r.ips, vec![ip("fd00::53"), ip("10.0.0.53")]);
        assert_eq!(r.families, vec![Family::V6, Family::V4]);
        assert_eq!(r.sharing_key.as_deref(), Some("dns,ntp"));
    }

    #[test]
    fn a_blank_sharing_key_is_no_key() {
        let mut e = entry();
        e.sharing_key = Some("  ".into());
        let r = request_for(&static_service(&e, 10256), &BTreeMap::new()).unwrap();
        assert_eq!(r.sharing_key, None);
        e.sharing_key = Some(" a, b ".into());
        let r = request_for(&static_service(&e, 10256), &BTreeMap::new()).unwrap();
        assert_eq!(r.sharing_key.as_deref(), Some("a, b"));
    }
}
