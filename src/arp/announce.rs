//! When to send gratuitous ARP / unsolicited neighbour advertisements: a
//! short burst when a VIP is taken over (one frame may be lost), then a
//! low-rate refresh. Pure: time is an input.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Announcement timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Frames sent on takeover (at least one).
    pub takeover: u32,
    /// Gap between the takeover frames.
    pub spacing: Duration,
    /// Gap between refreshes afterwards.
    pub refresh: Duration,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            takeover: 3,
            spacing: Duration::from_secs(1),
            refresh: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Due {
    at: Instant,
    /// Takeover frames still to send after the one due at `at`.
    burst_left: u32,
    /// The burst is over; refreshes follow.
    refreshing: bool,
}

/// The per-VIP announcement plan of one interface.
#[derive(Debug, Clone, Default)]
pub struct Announcer {
    schedule: Schedule,
    by_vip: BTreeMap<IpAddr, Due>,
    queue: BTreeSet<(Instant, IpAddr)>,
}

/// A stable spread in `[0, span)` per VIP, so VIPs taken over together do
/// not refresh together forever after.
fn spread(vip: &IpAddr, span: Duration) -> Duration {
    let n = crate::model::ip_to_u128(vip);
    // FNV-1a over the address bytes.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in n.to_be_bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    let nanos = span.as_nanos().max(1) as u64;
    Duration::from_nanos(h % nanos)
}

impl Announcer {
    pub fn new(schedule: Schedule) -> Self {
        Announcer {
            schedule,
            ..Default::default()
        }
    }

    /// Make the plan follow `owned`: VIPs new to it are due at once with a
    /// full takeover burst; VIPs no longer owned are forgotten.
    pub fn sync(&mut self, owned: &BTreeSet<IpAddr>, now: Instant) {
        let gone: Vec<IpAddr> = self
            .by_vip
            .keys()
            .filter(|v| !owned.contains(v))
            .copied()
            .collect();
        for vip in gone {
            if let Some(d) = self.by_vip.remove(&vip) {
                self.queue.remove(&(d.at, vip));
            }
        }
        for vip in owned {
            if !self.by_vip.contains_key(vip) {
                let d = Due {
                    at: now,
                    burst_left: self.schedule.takeover.saturating_sub(1),
                    refreshing: false,
                };
                self.by_vip.insert(*vip, d);
                self.queue.insert((now, *vip));
            }
        }
    }

    /// The VIPs to announce at `now`, each rescheduled.
    pub fn take_due(&mut self, now: Instant) -> Vec<IpAddr> {
        let mut out = Vec::new();
        while let Some(&(at, vip)) = self.queue.first() {
            if at > now {
                break;
            }
            self.queue.pop_first();
            out.push(vip);
            let Some(d) = self.by_vip.get_mut(&vip) else {
                continue;
            };
            if d.burst_left > 0 {
                d.burst_left -= 1;
                d.at = now + self.schedule.spacing;
            } else if !d.refreshing {
                // First refresh after the burst: spread over half a period.
                let half = self.schedule.refresh / 2;
                d.at = now + half + spread(&vip, half);
                d.refreshing = true;
            } else {
                d.at = now + self.schedule.refresh;
            }
            self.queue.insert((d.at, vip));
        }
        out
    }

    /// When the next VIP is due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.first().map(|(at, _)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn sched() -> Schedule {
        Schedule {
            takeover: 3,
            spacing: Duration::from_secs(1),
            refresh: Duration::from_secs(60),
        }
    }

    #[test]
    fn takeover_burst_then_refresh() {
        let t0 = Instant::now();
        let mut a = Announcer::new(sched());
        a.sync(&set(&["10.0.0.1"]), t0);
        assert_eq!(a.next_due(), Some(t0));
        assert_eq!(a.take_due(t0), vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert!(a.take_due(t0).is_empty(), "nothing due twice at once");
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(a.next_due(), Some(t1));
        assert_eq!(a.take_due(t1).len(), 1);
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(a.take_due(t2).len(), 1);
        // burst over: next within [30 s, 60 s) of t2
        let next = a.next_due().unwrap();
        assert!(next >= t2 + Duration::from_secs(30) && next < t2 + Duration::from_secs(60));
        assert!(a.take_due(next - Duration::from_millis(1)).is_empty());
        assert_eq!(a.take_due(next).len(), 1);
        // then every 60 s
        assert_eq!(a.next_due(), Some(next + Duration::from_secs(60)));
    }

    #[test]
    fn released_vip_is_never_announced() {
        let t0 = Instant::now();
        let mut a = Announcer::new(sched());
        a.sync(&set(&["10.0.0.1", "10.0.0.2"]), t0);
        a.sync(&set(&["10.0.0.2"]), t0);
        assert_eq!(a.take_due(t0), vec!["10.0.0.2".parse::<IpAddr>().unwrap()]);
        a.sync(&set(&[]), t0);
        assert_eq!(a.next_due(), None);
        assert!(a.take_due(t0 + Duration::from_secs(3600)).is_empty());
    }

    #[test]
    fn retaken_vip_gets_a_new_burst() {
        let t0 = Instant::now();
        let mut a = Announcer::new(sched());
        a.sync(&set(&["fd00::1"]), t0);
        for i in 0..3 {
            a.take_due(t0 + Duration::from_secs(i));
        }
        a.sync(&set(&[]), t0 + Duration::from_secs(5));
        a.sync(&set(&["fd00::1"]), t0 + Duration::from_secs(6));
        assert_eq!(a.next_due(), Some(t0 + Duration::from_secs(6)));
    }

    #[test]
    fn sync_with_same_set_changes_nothing() {
        let t0 = Instant::now();
        let mut a = Announcer::new(sched());
        a.sync(&set(&["10.0.0.1"]), t0);
        a.take_due(t0);
        let next = a.next_due();
        a.sync(&set(&["10.0.0.1"]), t0 + Duration::from_millis(500));
        assert_eq!(a.next_due(), next);
    }

    #[test]
    fn refreshes_of_vips_taken_together_spread() {
        let t0 = Instant::now();
        let mut a = Announcer::new(Schedule {
            takeover: 1,
            ..sched()
        });
        let owned: BTreeSet<IpAddr> = (1..=200u32)
            .map(|i| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        a.sync(&owned, t0);
        assert_eq!(a.take_due(t0).len(), 200);
        let distinct: BTreeSet<Instant> = a.queue.iter().map(|(at, _)| *at).collect();
        assert!(
            distinct.len() > 150,
            "{} distinct refresh times",
            distinct.len()
        );
    }
}
