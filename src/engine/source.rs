//! The static source: `[[static_services]]` from the config, fed to the
//! engine exactly like Kubernetes Services (through pier's own annotations),
//! so pier runs and is testable without a cluster.

use crate::config::{Config, StaticService};
use crate::engine::Input;
use crate::ipam::annotations;
use crate::model::{Family, IpFamilyPolicy, Origin, Service};

/// The Service a static service stands for.
pub fn static_service(s: &StaticService, kube_proxy_port: u16) -> Service {
    let mut svc = Service::new(s.key.clone());
    svc.origin = Origin::Static;
    svc.annotations
        .insert(annotations::POOL.to_string(), s.pool.clone());
    if !s.ips.is_empty() {
        let ips: Vec<String> = s.ips.iter().map(|ip| ip.to_string()).collect();
        svc.annotations
            .insert(annotations::IP.to_string(), ips.join(","));
    }
    if let Some(k) = &s.sharing_key {
        svc.annotations
            .insert(annotations::SHARING_KEY.to_string(), k.clone());
    }
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
