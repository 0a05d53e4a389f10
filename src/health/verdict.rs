//! The rise/fall state machine and the probe schedule. Pure: probe
//! outcomes come in as values, time as durations.
//!
//! A target goes down after `fall` consecutive failed probes and comes back
//! after `rise` consecutive successful ones. A target never probed, or not
//! yet probed often enough, has no verdict and counts as up (so pier does
//! not withdraw everything while its first probes run).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::model::{HealthView, ProbeTarget};

/// What the probes so far say about a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not enough probes yet; counts as up.
    Unknown,
    Up,
    Down,
}

/// One target's run of consecutive outcomes and its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetState {
    pub verdict: Verdict,
    /// Consecutive successes (0 after a failure).
    pub successes: u32,
    /// Consecutive failures (0 after a success).
    pub failures: u32,
}

impl Default for TargetState {
    fn default() -> Self {
        TargetState {
            verdict: Verdict::Unknown,
            successes: 0,
            failures: 0,
        }
    }
}

impl TargetState {
    /// Is the target on its way to another verdict: failing but not yet
    /// down, or succeeding again but not yet back up? Such a target is
    /// probed at the fast interval ([`next_probe`]).
    pub fn in_transition(&self) -> bool {
        match self.verdict {
            Verdict::Down => self.successes > 0,
            Verdict::Up | Verdict::Unknown => self.failures > 0,
        }
    }

    /// Take one probe outcome; returns the new verdict if it changed.
    /// `rise` and `fall` below 1 act as 1.
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<Verdict> {
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
        }
        let next = if self.failures >= fall.max(1) {
            Verdict::Down
        } else if self.successes >= rise.max(1) {
            Verdict::Up
        } else {
            self.verdict
        };
        (next != self.verdict).then(|| {
            self.verdict = next;
            next
        })
    }
}

/// Verdicts over a set of targets.
#[derive(Debug, Clone)]
pub struct Verdicts {
    rise: u32,
    fall: u32,
    targets: BTreeMap<ProbeTarget, TargetState>,
}

impl Verdicts {
    pub fn new(rise: u32, fall: u32) -> Self {
        Verdicts {
            rise,
            fall,
            targets: BTreeMap::new(),
        }
    }

    /// Track exactly `targets`: new ones start without a verdict, removed
    /// ones are forgotten. Returns whether the view changed (a removed
    /// target was down).
    pub fn set_targets(&mut self, targets: &BTreeSet<ProbeTarget>) -> bool {
        let mut was_down = false;
        self.targets.retain(|t, s| {
            let keep = targets.contains(t);
            was_down |= !keep && s.verdict == Verdict::Down;
            keep
        });
        for t in targets {
            self.targets.entry(t.clone()).or_default();
        }
        was_down
    }

    /// Take one outcome for `target`; returns the new verdict if it changed.
    /// Outcomes for targets not tracked (a probe that finished after its
    /// target was removed) are ignored.
    pub fn record(&mut self, target: &ProbeTarget, ok: bool) -> Option<Verdict> {
        let (rise, fall) = (self.rise, self.fall);
        self.targets.get_mut(target)?.record(ok, rise, fall)
    }

    pub fn state(&self, target: &ProbeTarget) -> Option<TargetState> {
        self.targets.get(target).copied()
    }

    /// The targets that are down.
    pub fn view(&self) -> HealthView {
        HealthView {
            down: self
                .targets
                .iter()
                .filter(|(_, s)| s.verdict == Verdict::Down)
                .map(|(t, _)| t.clone())
                .collect(),
        }
    }
}

/// Where in each interval `target` is probed: a stable offset in
/// `[0, interval)` from a hash of the target, so 500 nodes are not all
/// probed at the same instant, and a target keeps its rhythm across
/// changes of the target set.
pub fn phase(target: &ProbeTarget, interval: Duration) -> Duration {
    // FNV-1a over the target's fields.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h = (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    };
    match target.address {
        std::net::IpAddr::V4(a) => eat(&a.octets()),
        std::net::IpAddr::V6(a) => eat(&a.octets()),
    }
    eat(&target.port.to_be_bytes());
    eat(target.path.as_bytes());
    let nanos = interval.as_nanos().clamp(1, u64::MAX as u128) as u64;
    Duration::from_nanos(h % nanos)
}

/// The probe interval while a target is in transition: a fifth of the
/// interval (at least 10 ms, at most the interval), so `fall` failures are
/// confirmed soon after the first one (HAProxy's `fastinter`) while a
/// steady target still gets one probe per interval.
pub fn fast_interval(interval: Duration) -> Duration {
    (interval / 5).max(Duration::from_millis(10)).min(interval)
}

/// When to probe next, as an offset from the start of the probe schedule
/// (the first probe, at the target's phase): `fast` after `now` while
/// `state` is in transition, otherwise the next tick of the regular
/// schedule after `now` (ticks missed while a probe ran are skipped, not
/// made up).
pub fn next_probe(
    state: &TargetState,
    now: Duration,
    interval: Duration,
    fast: Duration,
) -> Duration {
    if state.in_transition() {
        return now + fast;
    }
    let interval = interval.max(Duration::from_nanos(1));
    let ticks = now.as_nanos() / interval.as_nanos() + 1;
    let nanos = ticks
        .saturating_mul(interval.as_nanos())
        .min(u64::MAX as u128);
    Duration::from_nanos(nanos as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(n: u8) -> ProbeTarget {
        ProbeTarget {
            address: std::net::IpAddr::V4([10, 0, 0, n].into()),
            port: 10256,
            path: "/healthz".into(),
        }
    }

    #[test]
    fn down_after_fall_failures_up_after_rise_successes() {
        let mut s = TargetState::default();
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(s.record(false, 2, 3), Some(Verdict::Down));
        assert_eq!(s.record(false, 2, 3), None, "stays down");
        assert_eq!(s.record(true, 2, 3), None);
        assert_eq!(s.record(false, 2, 3), None, "a failure restarts the rise");
        assert_eq!(s.record(true, 2, 3), None);
        assert_eq!(s.record(true, 2, 3), Some(Verdict::Up));
        assert_eq!(s.record(true, 2, 3), None);
    }

    #[test]
    fn new_target_is_unknown_and_counts_as_up() {
        let mut v = Verdicts::new(2, 3);
        v.set_targets(&[t(1)].into());
        assert_eq!(v.state(&t(1)).unwrap().verdict, Verdict::Unknown);
        assert!(v.view().down.is_empty());
        assert_eq!(v.record(&t(1), true), None, "one success is not yet a rise");
        assert_eq!(v.record(&t(1), true), Some(Verdict::Up));
    }

    #[test]
    fn fall_and_rise_of_one_act_at_once() {
        let mut s = TargetState::default();
        assert_eq!(s.record(false, 1, 1), Some(Verdict::Down));
        assert_eq!(s.record(true, 1, 1), Some(Verdict::Up));
        let mut z = TargetState::default();
        assert_eq!(z.record(false, 0, 0), Some(Verdict::Down), "0 acts as 1");
    }

    #[test]
    fn removed_targets_leave_the_view_and_ignore_late_results() {
        let mut v = Verdicts::new(2, 1);
        v.set_targets(&[t(1), t(2)].into());
        v.record(&t(1), false);
        assert_eq!(v.view().down, [t(1)].into());
        assert!(
            v.set_targets(&[t(2)].into()),
            "a down target left: view changed"
        );
        assert!(v.view().down.is_empty());
        assert_eq!(v.record(&t(1), false), None);
        assert!(v.view().down.is_empty());
        assert!(!v.set_targets(&[t(2), t(3)].into()));
        // re-added: starts over without a verdict
        v.set_targets(&[t(1)].into());
        assert_eq!(v.state(&t(1)).unwrap(), TargetState::default());
    }

    #[test]
    fn transitions_are_probed_fast_steady_targets_on_the_schedule() {
        let ms = Duration::from_millis;
        let (interval, fast) = (ms(500), fast_interval(ms(500)));
        assert_eq!(fast, ms(100));
        assert_eq!(fast_interval(ms(20)), ms(10));
        assert_eq!(
            fast_interval(ms(5)),
            ms(5),
            "never slower than the interval"
        );
        let mut s = TargetState::default();
        // Steady (no verdict yet, all good): the next regular tick.
        s.record(true, 2, 3);
        assert!(!s.in_transition());
        assert_eq!(next_probe(&s, ms(3), interval, fast), ms(500));
        assert_eq!(next_probe(&s, ms(500), interval, fast), ms(1000));
        assert_eq!(
            next_probe(&s, ms(1730), interval, fast),
            ms(2000),
            "a slow probe skips missed ticks"
        );
        // First failure: fast until down.
        s.record(false, 2, 3);
        assert!(s.in_transition());
        assert_eq!(next_probe(&s, ms(2003), interval, fast), ms(2103));
        s.record(false, 2, 3);
        assert!(s.in_transition());
        assert_eq!(s.record(false, 2, 3), Some(Verdict::Down));
        assert!(!s.in_transition(), "down and staying down: regular rate");
        assert_eq!(next_probe(&s, ms(2210), interval, fast), ms(2500));
        // Coming back: fast until up.
        s.record(true, 2, 3);
        assert!(s.in_transition());
        assert_eq!(s.record(true, 2, 3), Some(Verdict::Up));
        assert!(!s.in_transition());
        // A single failure that recovers ends the transition.
        s.record(false, 2, 3);
        assert!(s.in_transition());
        s.record(true, 2, 3);
        assert!(!s.in_transition());
    }

    #[test]
    fn phases_spread_over_the_interval() {
        let interval = Duration::from_millis(500);
        let phases: BTreeSet<Duration> = (0..=255).map(|n| phase(&t(n), interval)).collect();
        assert!(phases.len() > 250, "{} distinct phases", phases.len());
        assert!(phases.iter().all(|p| *p < interval));
        let early = phases.iter().filter(|p| **p < interval / 2).count();
        assert!(
            (80..=176).contains(&early),
            "{early} of 256 in the first half"
        );
        assert_eq!(phase(&t(7), interval), phase(&t(7), interval));
        assert_eq!(phase(&t(7), Duration::ZERO), Duration::ZERO);
    }

    proptest! {
        /// Over any outcome sequence the verdict matches a direct reading of
        /// the definition: it becomes Down when the current run of failures
        /// reaches `fall`, Up when the current run of successes reaches
        /// `rise`, and otherwise stays what it was (Unknown at first).
        #[test]
        fn verdict_follows_the_definition(
            outcomes in proptest::collection::vec(any::<bool>(), 0..60),
            rise in 1u32..5,
            fall in 1u32..5,
        ) {
            let mut s = TargetState::default();
            let mut expect = Verdict::Unknown;
            for (i, ok) in outcomes.iter().enumerate() {
                s.record(*ok, rise, fall);
                let run = outcomes[..=i].iter().rev().take_while(|o| **o == *ok).count() as u32;
                if !ok && run >= fall {
                    expect = Verdict::Down;
                } else if *ok && run >= rise {
                    expect = Verdict::Up;
                }
                prop_assert_eq!(s.verdict, expect, "after {:?}", &outcomes[..=i]);
            }
        }

        /// Down only after `fall` failures in a row; never straight from a
        /// success.
        #[test]
        fn down_needs_fall_consecutive_failures(
            outcomes in proptest::collection::vec(any::<bool>(), 1..60),
            fall in 1u32..6,
        ) {
            let mut s = TargetState::default();
            let mut failures_in_a_row = 0;
            for ok in outcomes {
                failures_in_a_row = if ok { 0 } else { failures_in_a_row + 1 };
                if s.record(ok, 2, fall) == Some(Verdict::Down) {
                    prop_assert_eq!(failures_in_a_row, fall);
                }
            }
        }

        /// The view always lists exactly the tracked targets whose verdict is Down.
        #[test]
        fn view_matches_states(
            steps in proptest::collection::vec((0u8..6, any::<bool>(), any::<bool>()), 0..80),
        ) {
            let mut v = Verdicts::new(2, 2);
            let mut set: BTreeSet<ProbeTarget> = (0..6).map(t).collect();
            v.set_targets(&set);
            for (n, ok, toggle) in steps {
                if toggle {
                    if !set.remove(&t(n)) {
                        set.insert(t(n));
                    }
                    v.set_targets(&set);
                } else {
                    v.record(&t(n), ok);
                }
                let down: BTreeSet<ProbeTarget> = set
                    .iter()
                    .filter(|x| v.state(x).map(|s| s.verdict) == Some(Verdict::Down))
                    .cloned()
                    .collect();
                prop_assert_eq!(&v.view().down, &down);
                prop_assert!(v.view().down.is_subset(&set));
            }
        }
    }
}
