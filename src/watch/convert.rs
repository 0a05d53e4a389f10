//! Kubernetes objects → pier's model, and the claim rule. Pure: what is not
//! read here is never stored (managedFields, labels pier does not select
//! on, specs of other Service types…).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Node as KNode, Service as KService};
use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;

use crate::ipam::annotations;
use crate::model::{
    Endpoint, EndpointSlice, Family, IpFamilyPolicy, Node, PortSpec, Protocol, Service, ServiceKey,
    TrafficPolicy,
};

/// Which Services are pier's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRule {
    pub load_balancer_class: String,
    /// Every Service without a class.
    pub claim_unclassed: bool,
    /// Services without a class that carry OpenELB's / PorterLB's claim
    /// (`lb.kubesphere.io/v1alpha1: openelb|porter`).
    pub claim_openelb_annotation: bool,
}

impl ClaimRule {
    /// `spec.type` is `LoadBalancer`, and the class is pier's, or there is
    /// no class and either unclassed Services are claimed or the Service
    /// carries OpenELB's claim annotation (and that is honoured).
    pub fn claims(&self, svc: &KService) -> bool {
        let Some(spec) = &svc.spec else {
            return false;
        };
        if spec.type_.as_deref() != Some("LoadBalancer") {
            return false;
        }
        match spec.load_balancer_class.as_deref() {
            Some(class) => class == self.load_balancer_class,
            None => self.claim_unclassed || (self.claim_openelb_annotation && openelb_claim(svc)),
        }
    }
}

/// Whether `svc` carries `lb.kubesphere.io/v1alpha1: openelb` (or
/// PorterLB's `porter`), the claim the OpenELB and PorterLB manuals write.
fn openelb_claim(svc: &KService) -> bool {
    svc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::OPENELB_CLAIM))
        .is_some_and(|v| annotations::OPENELB_CLAIM_VALUES.contains(&v.trim()))
}

pub fn service_key(svc: &KService) -> Option<ServiceKey> {
    Some(ServiceKey::new(
        svc.metadata.namespace.clone()?,
        svc.metadata.name.clone()?,
    ))
}

/// The part of a Service pier reads. Unknown protocols and unparsable
/// status IPs are skipped (a Service is never refused for what pier does
/// not use); annotation values are checked by the ipam, which reports them.
pub fn service(svc: &KService) -> Option<Service> {
    let key = service_key(svc)?;
    let mut out = Service::new(key);
    if let Some(ann) = &svc.metadata.annotations {
        out.annotations = ann
            .iter()
            .filter(|(k, _)| annotations::is_read_by_pier(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    }
    if let Some(spec) = &svc.spec {
        out.load_balancer_ip = spec
            .load_balancer_ip
            .clone()
            .filter(|s| !s.trim().is_empty());
        let families: Vec<Family> = spec
            .ip_families
            .iter()
            .flatten()
            .filter_map(|f| match f.as_str() {
                "IPv4" => Some(Family::V4),
                "IPv6" => Some(Family::V6),
                _ => None,
            })
            .collect();
        if !families.is_empty() {
            out.ip_families = families;
        }
        out.ip_family_policy = match spec.ip_family_policy.as_deref() {
            Some("PreferDualStack") => IpFamilyPolicy::PreferDualStack,
            Some("RequireDualStack") => IpFamilyPolicy::RequireDualStack,
            _ => IpFamilyPolicy::SingleStack,
        };
        out.ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                    "TCP" => Protocol::Tcp,
                    "UDP" => Protocol::Udp,
                    "SCTP" => Protocol::Sctp,
                    _ => return None,
                };
                Some(PortSpec {
                    port: u16::try_from(p.port).ok()?,
                    protocol,
                })
            })
            .collect();
        out.ports.sort();
        out.ports.dedup();
        out.traffic_policy = match spec.external_traffic_policy.as_deref() {
            Some("Local") => TrafficPolicy::Local,
            _ => TrafficPolicy::Cluster,
        };
        out.health_check_node_port = spec
            .health_check_node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        out.source_ranges = spec
            .load_balancer_source_ranges
            .iter()
            .flatten()
            .filter_map(|r| r.trim().parse().ok())
            .collect();
    }
    out.status_ips = status_ips(svc);
    Some(out)
}

/// The IPs in `status.loadBalancer.ingress`.
pub fn status_ips(svc: &KService) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

/// Node annotations that choose the node's next-hop address, per family:
/// pier's own (IPv4 and/or IPv6, comma-separated), then the PorterLB and
/// OpenELB manuals' (one address).
pub const NEXT_HOP_ANNOTATIONS: [&str; 3] = [
    "pier.io/next-hop",
    "layer2.porter.kubesphere.io/v1alpha1",
    "layer2.openelb.kubesphere.io/v1alpha1",
];

/// Why a node's next-hop annotation was not used (the default address is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHopProblem {
    pub node: String,
    pub key: &'static str,
    pub value: String,
    pub why: String,
}

impl std::fmt::Display for NextHopProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "node {}: {}={:?} not used ({}); the node's default address is its next hop",
            self.node, self.key, self.value, self.why
        )
    }
}

/// The node with its annotated next-hop address (per family) moved to the
/// front of its InternalIPs, where `Node::address` looks first; and the
/// annotation values that could not be used. A chosen address must be one
/// of the node's addresses (a router could not reach another).
pub fn node_with_next_hop(n: &KNode) -> Option<(Node, Vec<NextHopProblem>)> {
    let mut node = node(n)?;
    let mut problems = Vec::new();
    let ann = n.metadata.annotations.as_ref();
    let mut chosen: Vec<IpAddr> = Vec::new();
    for key in NEXT_HOP_ANNOTATIONS {
        let Some(value) = ann.and_then(|a| a.get(key)) else {
            continue;
        };
        let problem = |why: String| NextHopProblem {
            node: node.name.clone(),
            key,
            value: value.clone(),
            why,
        };
        let mut ok: Vec<IpAddr> = Vec::new();
        let mut bad = None;
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse::<IpAddr>() {
                Err(_) => bad = Some(format!("{part:?} is not an IP address")),
                Ok(ip) if !node.internal_ips.contains(&ip) && !node.external_ips.contains(&ip) => {
                    bad = Some(format!("{ip} is not one of the node's addresses"))
                }
                Ok(ip) if ok.iter().any(|o| Family::of(o) == Family::of(&ip)) => {
                    bad = Some(format!("two {} addresses", Family::of(&ip)))
                }
                Ok(ip) => ok.push(ip),
            }
        }
        if ok.is_empty() && bad.is_none() {
            bad = Some("no address given".into());
        }
        if let Some(why) = bad {
            problems.push(problem(why));
            continue;
        }
        // The first key that names a family wins.
        for ip in ok {
            if !chosen.iter().any(|c| Family::of(c) == Family::of(&ip)) {
                chosen.push(ip);
            }
        }
    }
    for ip in chosen {
        node.internal_ips.retain(|a| *a != ip);
        node.external_ips.retain(|a| *a != ip);
        node.internal_ips.insert(0, ip);
    }
    Some((node, problems))
}

pub fn node(n: &KNode) -> Option<Node> {
    let name = n.metadata.name.clone()?;
    let status = n.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let addrs = |kind: &str| -> Vec<IpAddr> {
        status
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == kind)
            .filter_map(|a| a.address.parse().ok())
            .collect()
    };
    Some(Node {
        name,
        ready,
        labels: n
            .metadata
            .labels
            .clone()
            .map(|l| l.into_iter().collect())
            .unwrap_or_default(),
        internal_ips: addrs("InternalIP"),
        external_ips: addrs("ExternalIP"),
    })
}

/// The label that names an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

pub fn slice(s: &KSlice) -> Option<EndpointSlice> {
    let namespace = s.metadata.namespace.clone()?;
    let name = s.metadata.name.clone()?;
    let service = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone();
    Some(EndpointSlice {
        name,
        service: ServiceKey::new(namespace, service),
        endpoints: s
            .endpoints
            .iter()
            .flatten()
            .map(|e| Endpoint {
                // Unset counts as ready (the API's documented default).
                ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
                node_name: e.node_name.clone(),
            })
            .collect(),
    })
}

pub fn slice_key(s: &KSlice) -> Option<(ServiceKey, String)> {
    let sl = slice(s)?;
    Some((sl.service, sl.name))
}

pub fn namespace(ns: &Namespace) -> Option<(String, BTreeMap<String, String>)> {
    Some((
        ns.metadata.name.clone()?,
        ns.metadata
            .labels
            .clone()
            .map(|l| l.into_iter().collect())
            .unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> KService {
        serde_json::from_value(v).unwrap()
    }

    fn rule(unclassed: bool) -> ClaimRule {
        ClaimRule {
            load_balancer_class: "pier.io/gateway".into(),
            claim_unclassed: unclassed,
            claim_openelb_annotation: true,
        }
    }

    #[test]
    fn openelb_and_porter_claims() {
        let with = |value: &str, class: Option<&str>| {
            let mut spec = json!({"type":"LoadBalancer"});
            if let Some(c) = class {
                spec["loadBalancerClass"] = json!(c);
            }
            svc(json!({"metadata":{"name":"a","namespace":"n",
                "annotations":{"lb.kubesphere.io/v1alpha1":value}},"spec":spec}))
        };
        for value in ["openelb", "porter"] {
            assert!(rule(false).claims(&with(value, None)), "{value}");
            // Another controller's class wins over the annotation.
            assert!(
                !rule(false).claims(&with(value, Some("metallb"))),
                "{value}"
            );
            // Turned off (OpenELB still runs side by side).
            let off = ClaimRule {
                claim_openelb_annotation: false,
                ..rule(false)
            };
            assert!(!off.claims(&with(value, None)), "{value}");
            assert!(ClaimRule {
                claim_unclassed: true,
                ..off
            }
            .claims(&with(value, None)));
        }
        assert!(!rule(false).claims(&with("metallb", None)));
        let cluster_ip = svc(json!({"metadata":{"name":"a","namespace":"n",
            "annotations":{"lb.kubesphere.io/v1alpha1":"openelb"}},"spec":{"type":"ClusterIP"}}));
        assert!(!rule(true).claims(&cluster_ip));
        // The annotations of the manuals' Services reach the model.
        let s = service(&svc(
            json!({"metadata":{"name":"a","namespace":"n","annotations":{
            "lb.kubesphere.io/v1alpha1":"porter",
            "protocol.porter.kubesphere.io/v1alpha1":"layer2",
            "eip.porter.kubesphere.io/v1alpha2":"eip-pool"}},"spec":{"type":"LoadBalancer"}}),
        ))
        .unwrap();
        assert_eq!(s.annotations.len(), 3);
    }

    #[test]
    fn claim_rule() {
        let lb =
            svc(json!({"metadata":{"name":"a","namespace":"n"},"spec":{"type":"LoadBalancer"}}));
        let ours = svc(
            json!({"metadata":{"name":"a","namespace":"n"},"spec":{"type":"LoadBalancer","loadBalancerClass":"pier.io/gateway"}}),
        );
        let theirs = svc(
            json!({"metadata":{"name":"a","namespace":"n"},"spec":{"type":"LoadBalancer","loadBalancerClass":"metallb"}}),
        );
        let cluster_ip =
            svc(json!({"metadata":{"name":"a","namespace":"n"},"spec":{"type":"ClusterIP"}}));
        assert!(rule(true).claims(&lb));
        assert!(!rule(false).claims(&lb));
        assert!(rule(false).claims(&ours));
        assert!(!rule(true).claims(&theirs));
        assert!(!rule(true).claims(&cluster_ip));
        assert!(!rule(true).claims(&svc(json!({"metadata":{"name":"a"}}))));
    }

    #[test]
    fn service_fields() {
        let s = service(&svc(json!({
            "metadata":{"name":"web","namespace":"shop","annotations":{
                "pier.io/pool":"public","metallb.io/loadBalancerIPs":"10.0.0.1",
                "kubectl.kubernetes.io/last-applied-configuration":"{...big...}"},
                "managedFields":[{"manager":"kubectl"}]},
            "spec":{"type":"LoadBalancer","loadBalancerIP":"10.0.0.1",
                "ipFamilies":["IPv6","IPv4"],"ipFamilyPolicy":"PreferDualStack",
                "ports":[{"port":443,"protocol":"TCP"},{"port":53,"protocol":"UDP"},{"port":80}],
                "externalTrafficPolicy":"Local","healthCheckNodePort":31000,
                "loadBalancerSourceRanges":["192.0.2.0/24"," 198.51.100.0/24 ","bogus"]},
            "status":{"loadBalancer":{"ingress":[{"ip":"10.0.0.1"},{"hostname":"x"},{"ip":"nope"}]}}
        })))
        .unwrap();
        assert_eq!(s.key, ServiceKey::new("shop", "web"));
        assert_eq!(s.annotations.len(), 2, "only keys pier reads are kept");
        assert_eq!(s.load_balancer_ip.as_deref(), Some("10.0.0.1"));
        assert_eq!(s.ip_families, vec![Family::V6, Family::V4]);
        assert_eq!(s.ip_family_policy, IpFamilyPolicy::PreferDualStack);
        assert_eq!(s.ports.len(), 3);
        assert_eq!(s.traffic_policy, TrafficPolicy::Local);
        assert_eq!(s.health_check_node_port, Some(31000));
        assert_eq!(s.source_ranges.len(), 2);
        assert_eq!(s.status_ips, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn next_hop_annotations_choose_the_address() {
        let knode = |ann: serde_json::Value| -> KNode {
            serde_json::from_value(json!({
                "metadata":{"name":"master1","annotations":ann},
                "status":{"addresses":[{"type":"InternalIP","address":"10.1.0.1"},
                    {"type":"InternalIP","address":"192.168.0.2"},
                    {"type":"InternalIP","address":"fd00::1"},{"type":"InternalIP","address":"fd01::1"},
                    {"type":"ExternalIP","address":"203.0.113.1"}]}
            }))
            .unwrap()
        };
        let addr = |n: &Node| {
            (
                n.address(Family::V4).unwrap(),
                n.address(Family::V6).unwrap(),
            )
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Default: the first InternalIP of each family.
        let (n, p) = node_with_next_hop(&knode(json!({}))).unwrap();
        assert_eq!((addr(&n), p.len()), ((ip("10.1.0.1"), ip("fd00::1")), 0));
        // The manuals' keys, and pier's with both families.
        for key in [
            "layer2.porter.kubesphere.io/v1alpha1",
            "layer2.openelb.kubesphere.io/v1alpha1",
        ] {
            let (n, p) = node_with_next_hop(&knode(json!({key: "192.168.0.2"}))).unwrap();
            assert_eq!(addr(&n), (ip("192.168.0.2"), ip("fd00::1")), "{key}");
            assert!(p.is_empty());
        }
        let (n, p) =
            node_with_next_hop(&knode(json!({"pier.io/next-hop": "fd01::1, 203.0.113.1"})))
                .unwrap();
        assert_eq!(addr(&n), (ip("203.0.113.1"), ip("fd01::1")));
        assert!(p.is_empty());
        // pier's key wins per family over the manuals'.
        let (n, _) = node_with_next_hop(&knode(json!({"pier.io/next-hop": "10.1.0.1",
            "layer2.porter.kubesphere.io/v1alpha1": "192.168.0.2"})))
        .unwrap();
        assert_eq!(addr(&n).0, ip("10.1.0.1"));
        // Bad values: a problem each, and the default address.
        for (value, why) in [
            ("192.168.9.9", "not one of the node's addresses"),
            ("eth1", "not an IP address"),
            ("10.1.0.1,192.168.0.2", "two ipv4 addresses"),
            ("", "no address given"),
        ] {
            let (n, p) = node_with_next_hop(&knode(
                json!({"layer2.openelb.kubesphere.io/v1alpha1": value}),
            ))
            .unwrap();
            assert_eq!(addr(&n), (ip("10.1.0.1"), ip("fd00::1")), "{value}");
            assert_eq!(p.len(), 1, "{value}");
            assert!(p[0].why.contains(why), "{value}: {}", p[0]);
            assert!(p[0].to_string().contains("master1"));
        }
    }

    #[test]
    fn node_and_slice() {
        let n: KNode = serde_json::from_value(json!({
            "metadata":{"name":"n1","labels":{"a":"b"}},
            "status":{"conditions":[{"type":"Ready","status":"True"}],
                "addresses":[{"type":"Hostname","address":"n1"},{"type":"InternalIP","address":"10.1.0.1"},
                    {"type":"InternalIP","address":"fd00::1"},{"type":"ExternalIP","address":"203.0.113.1"}]}
        }))
        .unwrap();
        let n = node(&n).unwrap();
        assert!(n.ready);
        assert_eq!(n.internal_ips.len(), 2);
        assert_eq!(n.external_ips.len(), 1);
        let s: KSlice = serde_json::from_value(json!({
            "metadata":{"name":"web-abc","namespace":"shop","labels":{"kubernetes.io/service-name":"web"}},
            "addressType":"IPv4",
            "endpoints":[{"addresses":["10.2.0.1"],"nodeName":"n1"},
                {"addresses":["10.2.0.2"],"nodeName":"n2","conditions":{"ready":false}}]
        }))
        .unwrap();
        let s = slice(&s).unwrap();
        assert_eq!(s.service, ServiceKey::new("shop", "web"));
        assert!(s.endpoints[0].ready);
        assert!(!s.endpoints[1].ready);
    }
}
