//! The ARP/NDP responder's feeding task: every plan goes to the
//! [`ArpResponder`] while this gateway answers, and its counters go to
//! `pier_arp_replies_sent_total` and `pier_garp_sent_total`.
//!
//! ```text
//!  Desired (watch) ─┐
//!  leader (watch) ──┴─► feed ──► ArpResponder ──► one raw-socket task per l2 interface
//!                                     └── counters, every second ─► metrics
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tracing::info;

use super::{ArpConfig, ArpResponder};
use crate::metrics::Metrics;
use crate::model::Desired;

/// Start the responder and its two tasks. The responder lives as long as
/// the feeding task, which ends when the engine's `Desired` channel closes.
pub fn spawn(
    cfg: ArpConfig,
    desired: watch::Receiver<Arc<Desired>>,
    leader: watch::Receiver<bool>,
    metrics: Metrics,
) {
    let responder = Arc::new(ArpResponder::spawn(cfg));
    tokio::spawn(copy_counters(Arc::downgrade(&responder), metrics));
    tokio::spawn(feed(responder, desired, leader));
}

/// Feed the responder every plan, once this gateway has led.
///
/// Two gateways with `l2` pools must not both answer for a VIP, so a
/// standby (lease held by another gateway) stays silent, and starts
/// answering, with gratuitous ARP, when it takes the lease. A gateway that
/// loses the lease keeps answering: with the API server down nobody can
/// hold the lease, and the data path must not depend on the API server; at
/// worst (a gateway cut off from the API only) both answer, and both
/// forward to the same nodes.
async fn feed(
    responder: Arc<ArpResponder>,
    mut desired: watch::Receiver<Arc<Desired>>,
    mut leader: watch::Receiver<bool>,
) {
    let mut answering = false;
    let mut leader_open = true;
    loop {
        if !answering && *leader.borrow_and_update() {
            info!("l2: this gateway answers ARP/NDP for its VIPs from now on");
            answering = true;
        }
        let d = desired.borrow_and_update().clone();
        if d.generation > 0 && answering {
            responder.update(&d);
        }
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { break },
            // The lease task ended: keep the current state.
            changed = leader.changed(), if !answering && leader_open => leader_open = changed.is_ok(),
        }
    }
}

/// Copy the responder's counters into the metrics once a second. It holds
/// the responder weakly: the feeding task owns it.
async fn copy_counters(responder: Weak<ArpResponder>, metrics: Metrics) {
    let mut seen: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(responder) = responder.upgrade() else {
            break;
        };
        for (interface, c) in responder.counters() {
            let last = seen.entry(interface.clone()).or_default();
            let labels = metrics.interface(&interface);
            metrics
                .arp_replies_sent
                .get_or_create(&labels)
                .inc_by(c.replies.saturating_sub(last.0));
            metrics
                .garp_sent
                .get_or_create(&labels)
                .inc_by(c.gratuitous.saturating_sub(last.1));
            *last = (c.replies, c.gratuitous);
        }
    }
}
