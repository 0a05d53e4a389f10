//! `[kubernetes]`: the API server, the Services pier claims, the leader lease.

use std::path::PathBuf;

use toml::de::DeTable;

use crate::config::toml_reader::{Diagnostics, Section, Span};
use crate::config::KubernetesConfig;

const KUBERNETES: &[&str] = &[
    "kubeconfig",
    "context",
    "load_balancer_class",
    "claim_unclassed",
    "claim_openelb_annotation",
    "lease_namespace",
    "lease_name",
    "lease_duration_s",
    "lease_renew_s",
    "crds",
];

pub(super) fn read(
    diag: &mut Diagnostics<'_>,
    t: &DeTable<'_>,
    span: Span,
) -> Option<KubernetesConfig> {
    let s = Section::new(diag, t, "kubernetes", span, KUBERNETES);
    let kubeconfig = s.str(diag, "kubeconfig").map(|(p, _)| PathBuf::from(p));
    if kubeconfig.is_none() && s.raw("kubeconfig").is_none() {
        s.missing(diag, "kubeconfig");
    }
    let context = s.str(diag, "context").map(|(c, _)| c);
    let load_balancer_class = s
        .str(diag, "load_balancer_class")
        .map_or_else(|| "pier.io/gateway".to_string(), |(c, _)| c);
    let claim_unclassed = s.bool(diag, "claim_unclassed", false);
    let claim_openelb_annotation = s.bool(diag, "claim_openelb_annotation", true);
    let lease_namespace = s
        .str(diag, "lease_namespace")
        .map_or_else(|| "pier-system".to_string(), |(c, _)| c);
    let lease_name = s
        .str(diag, "lease_name")
        .map_or_else(|| "pier".to_string(), |(c, _)| c);
    let lease_duration_s = s
        .int(diag, "lease_duration_s", 2, 3600)
        // Short: an l2 standby takes over a crashed leader's VIPs after
        // about this long (docs/benchmarks.md, "End to end").
        .map_or(2, |(n, _)| n as u32);
    let renew = s.int(diag, "lease_renew_s", 1, 3600);
    let lease_renew_s = renew.as_ref().map_or(1, |(n, _)| *n as u32);
    if lease_renew_s >= lease_duration_s {
        let span = renew.map_or(s.span.clone(), |(_, sp)| sp);
        diag.err(&span, "kubernetes.lease_renew_s", format!("{lease_renew_s} must be less than lease_duration_s ({lease_duration_s}): the leader renews before the lease expires"));
    }
    let crds = s.bool(diag, "crds", false);
    Some(KubernetesConfig {
        kubeconfig: kubeconfig?,
        context,
        load_balancer_class,
        claim_unclassed,
        claim_openelb_annotation,
        lease_namespace,
        lease_name,
        lease_duration_s,
        lease_renew_s,
        crds,
    })
}
