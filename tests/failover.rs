//! Two pier gateways and one router, BIRD 2 or FRR (`tests/failover/lab.rs`):
//! a `nodes` VIP and a `self` VIP under continuous client load; one gateway
//! freezes (pier stopped, its frames dropped, links up), then thaws.
//!
//! Asserted (counts, never durations): the `nodes` VIP loses no request
//! while a gateway is frozen (the router keeps the other gateway's
//! identical paths); once the frozen gateway is back, both VIPs lose no
//! request while it takes traffic again. How long the `self` VIP lost new
//! flows is printed; `benches/failover.rs` measures it over many trials
//! (figures in docs/benchmarks.md, docs/ha.md).

#[path = "common/netlab.rs"]
mod netlab;

#[path = "failover/lab.rs"]
mod lab;

use std::time::{Duration, Instant};

use lab::{failures, outage, Detection, FailoverLab, Load, Router, NODES_VIP, SELF_VIP};

const PIER: &str = env!("CARGO_BIN_EXE_pier");

const BFD: Detection = Detection {
    hold_time: 9,
    bfd: Some((100, 3)),
};
const HOLD_TIMER_ONLY: Detection = Detection {
    hold_time: 3,
    bfd: None,
};

fn freeze_and_thaw(tag: &str, router: Router, d: Detection) {
    let fl = FailoverLab::with_router(tag, PIER, d, router);
    let nodes = Load::start(&fl.lab, NODES_VIP);
    let selfv = Load::start(&fl.lab, SELF_VIP);
    std::thread::sleep(Duration::from_secs(1));
    let before = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    // Both VIPs serve before anything happens.
    let (n, f, _) = outage(&nodes.requests(), before, None);
    assert!(
        n > 0 && f == 0,
        "nodes VIP before the freeze: {f} of {n} failed"
    );
    let (n, f, _) = outage(&selfv.requests(), before, None);
    assert!(
        n > 0 && f == 0,
        "self VIP before the freeze: {f} of {n} failed"
    );

    let frozen = fl.freeze();
    fl.wait_router_dropped_gw();
    let dropped = frozen.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let thawed = Instant::now();
    fl.thaw();
    fl.wait_both_gateways();
    let back = thawed.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let nodes = nodes.stop();
    let selfv = selfv.stop();

    let (nn, nf, _) = outage(&nodes, frozen, Some(thawed));
    let (sn, sf, s_last) = outage(&selfv, frozen, Some(thawed));
    eprintln!(
        "{router:?}, {}: frozen → router dropped the gateway after {dropped:?}; \
         nodes VIP {nf} of {nn} failed; self VIP {sf} of {sn} failed, \
         the last failed one started {s_last:?} after the freeze; thawed → back after {back:?}",
        d.label()
    );
    assert_eq!(
        nf,
        0,
        "nodes VIP lost requests while a gateway was frozen (after the freeze, why): {:?}",
        failures(&nodes, frozen, Some(thawed))
    );
    let (an, af, _) = outage(&nodes, thawed, None);
    let (bn, bf, _) = outage(&selfv, thawed, None);
    eprintln!("after the thaw: nodes VIP {af} of {an} failed, self VIP {bf} of {bn} failed");
    assert!(an > 0 && bn > 0);
    assert_eq!(
        af,
        0,
        "nodes VIP lost requests after the thaw: {:?}",
        failures(&nodes, thawed, None)
    );
    assert_eq!(
        bf,
        0,
        "self VIP lost requests after the thaw: {:?}",
        failures(&selfv, thawed, None)
    );
    let gw = fl.lab.log("pier-gw");
    if d.bfd.is_some() {
        // The thawed gateway's BFD session saw the path failure. Whether
        // its BGP session was still up to be taken down by it ("BFD path
        // failure: taking the BGP session down") is a race with the TCP
        // reset from the router, so only the BFD transition is asserted.
        assert!(gw.contains("path_failure=true"), "{gw}");
    }
}

#[test]
fn two_gateways_one_freezes_with_bfd() {
    if lab::prerequisites_for("failover_bfd", Router::Bird) {
        freeze_and_thaw("fob", Router::Bird, BFD);
    }
}

#[test]
fn two_gateways_one_freezes_hold_timer_only() {
    if lab::prerequisites_for("failover_hold", Router::Bird) {
        freeze_and_thaw("foh", Router::Bird, HOLD_TIMER_ONLY);
    }
}

#[test]
fn frr_two_gateways_one_freezes_with_bfd() {
    if lab::prerequisites_for("failover_frr_bfd", Router::Frr) {
        freeze_and_thaw("ffb", Router::Frr, BFD);
    }
}

#[test]
fn frr_two_gateways_one_freezes_hold_timer_only() {
    if lab::prerequisites_for("failover_frr_hold", Router::Frr) {
        freeze_and_thaw("ffh", Router::Frr, HOLD_TIMER_ONLY);
    }
}
