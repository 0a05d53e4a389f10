//! Prometheus metrics with the names docs/architecture.md ("Contracts") promises.

use std::sync::{Arc, LazyLock};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `pier_errors_total{component,kind}`: errors counted where they are
/// logged, by the error's `metric_label()`. Process-wide, unlike the rest:
/// the tasks that meet these errors (ARP responder, route actuator, health
/// prober) run apart from the engine and hold no [`Metrics`]; every
/// `Metrics` registry exports this one family.
static ERRORS: LazyLock<Family<Labels, Counter>> = LazyLock::new(Family::default);

/// Count one error of `kind` (its `metric_label()`) met by `component`
/// (`arp`, `route`, `health`).
pub fn count_error(component: &str, kind: &str) {
    ERRORS
        .get_or_create(&labels(&[("component", component), ("kind", kind)]))
        .inc();
}

/// Every metric pier exports. Cheap to clone (all handles are shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pool_addresses_total: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pool_addresses_in_use: Family<Labels, Gauge>,
    services: Family<Labels, Gauge>,
    pub bgp_session_up: Family<Labels, Gauge>,
    pub bgp_prefixes_announced: Family<Labels, Gauge>,
    pub bgp_updates_sent: Family<Labels, Counter>,
    pub bfd_session_up: Family<Labels, Gauge>,
    pub bfd_transitions: Family<Labels, Counter>,
    pub node_healthy: Family<Labels, Gauge>,
    pub arp_replies_sent: Family<Labels, Counter>,
    pub garp_sent: Family<Labels, Counter>,
    pub reconcile_seconds: Histogram,
    /// 1 per host firewall chain that drops VIP traffic pier accepts.
    pub forward_blocked: Family<Labels, Gauge>,
    /// 1 when resilient next-hop groups are configured but this kernel
    /// cannot have them (multipath routes instead).
    pub next_hop_groups_fallback: Gauge,

    store_failing: Gauge,
    store_write_failures: Counter,
    running_from_last_known_state: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            pool_addresses_total: Family::default(),
            pool_addresses_in_use: Family::default(),
            services: Family::default(),
            bgp_session_up: Family::default(),
            bgp_prefixes_announced: Family::default(),
            bgp_updates_sent: Family::default(),
            bfd_session_up: Family::default(),
            bfd_transitions: Family::default(),
            node_healthy: Family::default(),
            arp_replies_sent: Family::default(),
            garp_sent: Family::default(),
            // 50 µs .. ~13 s
            reconcile_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 19)),
            forward_blocked: Family::default(),
            next_hop_groups_fallback: Gauge::default(),

            store_failing: Gauge::default(),
            store_write_failures: Counter::default(),
            running_from_last_known_state: Gauge::default(),
        };
        r.register(
            "pier_forward_blocked",
            "1 when a host firewall chain (table, chain) drops VIP traffic pier accepts",
            m.forward_blocked.clone(),
        );
        r.register(
            "pier_next_hop_groups_fallback",
            "1 when resilient next-hop groups are configured but the kernel cannot have them",
            m.next_hop_groups_fallback.clone(),
        );
        r.register(
            "pier_pool_addresses_total",
            "Addresses in a pool, per family (a float: an IPv6 /64 does not fit an integer gauge)",
            m.pool_addresses_total.clone(),
        );
        r.register(
            "pier_pool_addresses_in_use",
            "Addresses of a pool held by Services, per family",
            m.pool_addresses_in_use.clone(),
        );
        r.register(
            "pier_services",
            "Services pier claims, by state (allocated, pending)",
            m.services.clone(),
        );
        r.register(
            "pier_bgp_session_up",
            "1 when the BGP session with the peer is Established",
            m.bgp_session_up.clone(),
        );
        r.register(
            "pier_bgp_prefixes_announced",
            "Paths currently announced to the peer",
            m.bgp_prefixes_announced.clone(),
        );
        // prometheus-client appends _total to counters.
        r.register(
            "pier_bgp_updates_sent",
            "UPDATE messages sent to the peer",
            m.bgp_updates_sent.clone(),
        );
        r.register(
            "pier_bfd_session_up",
            "1 when the BFD session with the BGP peer is Up",
            m.bfd_session_up.clone(),
        );
        r.register(
            "pier_bfd_transitions",
            "BFD session state changes with the BGP peer",
            m.bfd_transitions.clone(),
        );
        r.register(
            "pier_node_healthy",
            "1 when the node passes pier's health probe",
            m.node_healthy.clone(),
        );
        r.register(
            "pier_arp_replies_sent",
            "ARP replies and neighbour advertisements sent in answer to requests",
            m.arp_replies_sent.clone(),
        );
        r.register(
            "pier_garp_sent",
            "Gratuitous ARP and unsolicited neighbour advertisements sent",
            m.garp_sent.clone(),
        );
        r.register(
            "pier_reconcile_seconds",
            "Time the engine takes to apply one batch of changes",
            m.reconcile_seconds.clone(),
        );
        r.register(
            "pier_store_failing",
            "1 while writes to the allocation store fail (retried with backoff; see pier status for the error)",
            m.store_failing.clone(),
        );
        r.register(
            "pier_store_write_failures",
            "Store write attempts that failed",
            m.store_write_failures.clone(),
        );
        r.register(
            "pier_running_from_last_known_state",
            "1 while pier publishes the plan stored before its start because the API server could not be reached",
            m.running_from_last_known_state.clone(),
        );
        r.register(
            "pier_errors",
            "Errors by component (arp, route, health) and kind, counted where they are logged",
            ERRORS.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    pub fn set_pool(&self, pool: &str, family: &str, total: u128, in_use: u128) {
        let l = labels(&[("pool", pool), ("family", family)]);
        self.pool_addresses_total
            .get_or_create(&l)
            .set(total as f64);
        self.pool_addresses_in_use
            .get_or_create(&l)
            .set(i64::try_from(in_use).unwrap_or(i64::MAX));
    }

    /// Forget every pool series (before re-setting them after a reload).
    pub fn clear_pools(&self) {
        self.pool_addresses_total.clear();
        self.pool_addresses_in_use.clear();
    }

    pub fn set_services(&self, allocated: usize, pending: usize) {
        self.services
            .get_or_create(&labels(&[("state", "allocated")]))
            .set(allocated as i64);
        self.services
            .get_or_create(&labels(&[("state", "pending")]))
            .set(pending as i64);
    }

    /// The store fails (or works again).
    pub fn set_store_failing(&self, failing: bool) {
        self.store_failing.set(i64::from(failing));
    }

    /// Raise the failed-write counter to `total` (the engine's count).
    pub fn set_store_write_failures(&self, total: u64) {
        let now = self.store_write_failures.get();
        if total > now {
            self.store_write_failures.inc_by(total - now);
        }
    }

    pub fn set_running_from_last_known_state(&self, running: bool) {
        self.running_from_last_known_state.set(i64::from(running));
    }

    pub fn peer(&self, peer: &str) -> Labels {
        labels(&[("peer", peer)])
    }

    pub fn node(&self, node: &str) -> Labels {
        labels(&[("node", node)])
    }

    pub fn interface(&self, interface: &str) -> Labels {
        labels(&[("interface", interface)])
    }

    /// The data path's findings: blocking chains as (table, chain), and
    /// whether resilient groups fell back to multipath routes.
    pub fn set_datapath(&self, blocked: &[(String, String)], fallback: bool) {
        self.forward_blocked.clear();
        for (table, chain) in blocked {
            self.forward_blocked
                .get_or_create(&labels(&[("table", table), ("chain", chain)]))
                .set(1);
        }
        self.next_hop_groups_fallback.set(i64::from(fallback));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut s, &self.registry);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_name_is_exported() {
        let m = Metrics::new();
        m.set_pool("public", "ipv6", 1u128 << 64, 3);
        m.set_services(2, 1);
        m.bgp_session_up.get_or_create(&m.peer("10.66.0.1")).set(1);
        m.bfd_session_up.get_or_create(&m.peer("10.66.0.1")).set(1);
        m.bfd_transitions
            .get_or_create(&m.peer("10.66.0.1"))
            .inc_by(3);
        m.bgp_prefixes_announced
            .get_or_create(&m.peer("10.66.0.1"))
            .set(7);
        m.bgp_updates_sent.get_or_create(&m.peer("10.66.0.1")).inc();
        m.node_healthy.get_or_create(&m.node("n1")).set(1);
        m.arp_replies_sent.get_or_create(&m.interface("eth0")).inc();
        m.garp_sent.get_or_create(&m.interface("eth0")).inc();
        m.reconcile_seconds.observe(0.001);
        m.set_datapath(&[("ip filter".into(), "FORWARD".into())], true);

        m.set_store_failing(true);
        m.set_store_write_failures(1);
        m.set_running_from_last_known_state(true);
        let text = m.render();
        for name in [
            "pier_pool_addresses_total{pool=\"public\",family=\"ipv6\"} 18446744073709553000.0",
            "pier_pool_addresses_in_use{pool=\"public\",family=\"ipv6\"} 3",
            "pier_services{state=\"allocated\"} 2",
            "pier_bgp_session_up{peer=\"10.66.0.1\"} 1",
            "pier_bfd_session_up{peer=\"10.66.0.1\"} 1",
            "pier_bfd_transitions_total{peer=\"10.66.0.1\"} 3",
            "pier_bgp_prefixes_announced{peer=\"10.66.0.1\"} 7",
            "pier_bgp_updates_sent_total{peer=\"10.66.0.1\"} 1",
            "pier_node_healthy{node=\"n1\"} 1",
            "pier_arp_replies_sent_total{interface=\"eth0\"} 1",
            "pier_garp_sent_total{interface=\"eth0\"} 1",
            "pier_reconcile_seconds_count 1",
            "pier_forward_blocked{table=\"ip filter\",chain=\"FORWARD\"} 1",
            "pier_next_hop_groups_fallback 1",
            "pier_store_failing 1",
            "pier_store_write_failures_total 1",
            "pier_running_from_last_known_state 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }

    #[test]
    fn errors_are_counted_by_component_and_kind() {
        let m = Metrics::new();
        // A kind no error has, so no other test counts it.
        count_error("route", "test_only");
        count_error("route", "test_only");
        let text = m.render();
        let line = "pier_errors_total{component=\"route\",kind=\"test_only\"} 2";
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}
