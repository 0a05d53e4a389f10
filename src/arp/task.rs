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
use tracing::{info, warn};

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

/// Feed the responder every plan while this gateway holds the lease.
///
/// Two gateways with `l2` pools must not both answer for a VIP: a standby
/// (lease held by another gateway) stays silent and starts answering, with
/// gratuitous ARP / unsolicited NA, when it takes the lease. A gateway that
/// loses the lease goes silent at once. The lease task steps down before
/// any other gateway may take over (`src/watch/lease.rs`), also when it is
/// cut off from the API server, so two gateways never answer at once; the
/// price is that with the API server unreachable for every gateway for
/// longer than the lease, `l2` VIPs go unanswered (`docs/ha.md`).
async fn feed(
    responder: Arc<ArpResponder>,
    mut desired: watch::Receiver<Arc<Desired>>,
    mut leader: watch::Receiver<bool>,
) {
    let mut answering = false;
    let mut leader_open = true;
    loop {
        let leads = *leader.borrow_and_update();
        if leads != answering {
            if leads {
                info!(
                    "l2: this gateway holds the lease: it answers ARP/NDP for its VIPs from now on"
                );
            } else {
                warn!("l2: this gateway no longer holds the lease: it stops answering ARP/NDP");
                responder.update(&Desired::default());
            }
            answering = leads;
        }
        let d = desired.borrow_and_update().clone();
        if d.generation > 0 && answering {
            responder.update(&d);
        }
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { break },
            // The lease task ended (pier stops): keep the current state.
            changed = leader.changed(), if leader_open => leader_open = changed.is_ok(),
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
