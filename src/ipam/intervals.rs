//! A set of addresses (as `u128`) kept as merged, non-adjacent closed
//! intervals, so that "lowest free address in a range" is O(log n) however
//! large the range (a /64 is never enumerated) and memory follows the
//! number of runs of used addresses.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntervalSet {
    /// start → end (inclusive). Invariant: intervals are disjoint and
    /// non-adjacent (end + 1 < next start).
    runs: BTreeMap<u128, u128>,
}

impl IntervalSet {
    pub fn contains(&self, x: u128) -> bool {
        self.runs
            .range(..=x)
            .next_back()
            .is_some_and(|(_, &end)| end >= x)
    }

    /// Add `x`; false if it was present.
    pub fn insert(&mut self, x: u128) -> bool {
        if self.contains(x) {
            return false;
        }
        let prev = self
            .runs
            .range(..x)
            .next_back()
            .map(|(&s, &e)| (s, e))
            .filter(|&(_, e)| e.checked_add(1) == Some(x));
        let next_end = x
            .checked_add(1)
            .and_then(|n| self.runs.get(&n).copied().map(|e| (n, e)));
        match (prev, next_end) {
            (Some((ps, _)), Some((ns, ne))) => {
                self.runs.remove(&ns);
                self.runs.insert(ps, ne);
            }
            (Some((ps, _)), None) => {
                self.runs.insert(ps, x);
            }
            (None, Some((ns, ne))) => {
                self.runs.remove(&ns);
                self.runs.insert(x, ne);
            }
            (None, None) => {
                self.runs.insert(x, x);
            }
        }
        true
    }

    /// Remove `x`; false if it was absent.
    pub fn remove(&mut self, x: u128) -> bool {
        let Some((&s, &e)) = self.runs.range(..=x).next_back() else {
            return false;
        };
        if e < x {
            return false;
        }
        self.runs.remove(&s);
        if s < x {
            self.runs.insert(s, x - 1);
        }
        if x < e {
            self.runs.insert(x + 1, e);
        }
        true
    }

    /// The lowest address in `[start, end]` not in the set.
    pub fn lowest_free(&self, start: u128, end: u128) -> Option<u128> {
        let mut cand = start;
        if let Some((_, &e)) = self.runs.range(..=cand).next_back() {
            if e >= cand {
                // Runs are non-adjacent, so the address after a run is free.
                cand = e.checked_add(1)?;
            }
        }
        (cand <= end).then_some(cand)
    }

    /// How many members lie in `[start, end]`.
    pub fn count_in(&self, start: u128, end: u128) -> u128 {
        let mut n: u128 = 0;
        // The run that may start before `start` and reach into the range.
        if let Some((_, &e)) = self.runs.range(..start).next_back() {
            if e >= start {
                n = n.saturating_add(e.min(end) - start + 1);
            }
        }
        for (&s, &e) in self.runs.range(start..=end) {
            n = n.saturating_add(e.min(end) - s + 1);
        }
        n
    }

    /// Number of runs (for memory accounting in tests).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn merges_and_splits() {
        let mut s = IntervalSet::default();
        for x in [5, 7, 6, 1, 2, 3] {
            assert!(s.insert(x));
        }
        assert!(!s.insert(6));
        assert_eq!(s.runs(), 2); // 1-3, 5-7
        assert_eq!(s.lowest_free(1, 10), Some(4));
        assert_eq!(s.lowest_free(5, 7), None);
        assert!(s.remove(6));
        assert_eq!(s.runs(), 3);
        assert_eq!(s.lowest_free(5, 10), Some(6));
        assert_eq!(s.count_in(0, 100), 5);
        assert_eq!(s.count_in(2, 5), 3);
        assert!(!s.remove(6));
    }

    #[test]
    fn extremes_do_not_overflow() {
        let mut s = IntervalSet::default();
        assert!(s.insert(u128::MAX));
        assert!(s.insert(u128::MAX - 1));
        assert_eq!(s.lowest_free(u128::MAX - 1, u128::MAX), None);
        assert_eq!(s.count_in(0, u128::MAX), 2);
        assert!(s.insert(0));
        assert_eq!(s.lowest_free(0, 5), Some(1));
    }

    #[test]
    fn a_slash_64_with_100k_used_is_cheap() {
        let mut s = IntervalSet::default();
        let base = 0xfd00_0000_0000_0000_0000_0000_0000_0000u128;
        for i in 0..100_000u128 {
            s.insert(base + i);
        }
        assert_eq!(s.runs(), 1);
        assert_eq!(
            s.lowest_free(base, base + (1u128 << 64) - 1),
            Some(base + 100_000)
        );
    }

    proptest! {
        #[test]
        fn behaves_like_a_set(ops in proptest::collection::vec((any::<bool>(), 0u128..64), 0..200)) {
            let mut s = IntervalSet::default();
            let mut model = BTreeSet::new();
            for (ins, x) in ops {
                if ins {
                    prop_assert_eq!(s.insert(x), model.insert(x));
                } else {
                    prop_assert_eq!(s.remove(x), model.remove(&x));
                }
                let free = (0u128..64).find(|x| !model.contains(x));
                prop_assert_eq!(s.lowest_free(0, 63), free);
                prop_assert_eq!(s.count_in(10, 40), model.range(10..=40).count() as u128);
                // non-adjacent invariant
                let runs: Vec<(u128, u128)> = s.runs.iter().map(|(a, b)| (*a, *b)).collect();
                for w in runs.windows(2) {
                    prop_assert!(w[0].1 + 1 < w[1].0);
                }
            }
        }
    }
}
