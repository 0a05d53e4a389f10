//! Which `events.k8s.io/v1` Events to write, decided without I/O (time is
//! an input), the way client-go's events recorder does it
//! (`k8s.io/client-go/tools/events`), keyed by (Service, reason, note):
//!
//! - the first occurrence creates an Event;
//! - the second sets `series {count: 2, lastObservedTime}` on it at once;
//! - later ones only count, and the count is written every
//!   [`HEARTBEAT`] and when the series ends ([`FINISH`] without a repeat);
//! - an entry is forgotten [`FINISH`] after its last occurrence, when its
//!   Service goes, and when this gateway stops leading, so the book holds
//!   only recent Events of existing Services.
//!
//! kube-runtime's `Recorder` keys on the reason alone (a second, different
//! refusal became a repeat of the first, with the first's note) and scans
//! its whole cache on every publish; this book is indexed by Service.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::model::ServiceKey;

/// A series with no repeat for this long is finished (client-go's `finishTime`).
pub const FINISH: Duration = Duration::from_secs(6 * 60);
/// A running series' count is written at least this often (client-go's
/// `refreshTime`).
pub const HEARTBEAT: Duration = Duration::from_secs(30 * 60);

/// kube-apiserver refuses a `note` longer than this (bytes).
pub const NOTE_LIMIT: usize = 1024;

/// `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Normal,
    Warning,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Normal => "Normal",
            EventKind::Warning => "Warning",
        }
    }
}

/// One occurrence to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrence {
    pub service: ServiceKey,
    pub reason: &'static str,
    pub kind: EventKind,
    /// What pier was doing (`action` of the Event).
    pub action: &'static str,
    pub note: String,
}

/// A write the book asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventWrite {
    /// Create the Event `name` in the Service's namespace.
    Create {
        name: String,
        occurrence: Occurrence,
        event_time: Timestamp,
    },
    /// Merge-patch `series` of the Event `name`.
    Series {
        service: ServiceKey,
        name: String,
        count: i32,
        last_observed: Timestamp,
    },
}

#[derive(Debug)]
struct Entry {
    reason: &'static str,
    note: Box<str>,
    name: Box<str>,
    event_time: Timestamp,
    series: Option<Series>,
}

#[derive(Debug)]
struct Series {
    count: i32,
    last_observed: Timestamp,
    /// When the count was last written.
    written: Timestamp,
    /// Occurrences since then.
    unwritten: bool,
}

/// The recent Events of each Service.
#[derive(Debug, Default)]
pub struct EventBook {
    entries: BTreeMap<ServiceKey, Vec<Entry>>,
    /// The number in the last name given: names stay unique within this
    /// process even within one nanosecond or when the clock steps back.
    last: i128,
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO)
}

/// `note` cut to [`NOTE_LIMIT`] bytes on a character boundary.
pub fn bounded_note(mut note: String) -> String {
    if note.len() > NOTE_LIMIT {
        let mut end = NOTE_LIMIT - 3;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    note
}

impl EventBook {
    /// Number of Events remembered (for tests and metrics).
    pub fn len(&self) -> usize {
        self.entries.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Note an occurrence; the write it needs, if any. Normal Events
    /// (`IPAllocated`, `IPReleased`) each report a change that happened, so
    /// they are written and not remembered: only Warnings, which a pending
    /// Service may repeat, are counted in series.
    pub fn record(&mut self, mut occ: Occurrence, now: Timestamp) -> Option<EventWrite> {
        occ.note = bounded_note(occ.note);
        if occ.kind == EventKind::Normal {
            return Some(EventWrite::Create {
                name: self.name(&occ.service, now),
                occurrence: occ,
                event_time: now,
            });
        }
        let name = self.name(&occ.service, now);
        let list = self.entries.entry(occ.service.clone()).or_default();
        if let Some(e) = list
            .iter_mut()
            .find(|e| e.reason == occ.reason && *e.note == *occ.note)
        {
            return match &mut e.series {
                None => {
                    e.series = Some(Series {
                        count: 2,
                        last_observed: now,
                        written: now,
                        unwritten: false,
                    });
                    Some(EventWrite::Series {
                        service: occ.service,
                        name: e.name.to_string(),
                        count: 2,
                        last_observed: now,
                    })
                }
                Some(s) => {
                    s.count = s.count.saturating_add(1);
                    s.last_observed = now;
                    s.unwritten = true;
                    None
                }
            };
        }
        list.push(Entry {
            reason: occ.reason,
            note: occ.note.clone().into_boxed_str(),
            name: name.clone().into_boxed_str(),
            event_time: now,
            series: None,
        });
        Some(EventWrite::Create {
            name,
            occurrence: occ,
            event_time: now,
        })
    }

    /// A new Event name, kube's own form: `<object name>.<hex nanoseconds>`.
    fn name(&mut self, service: &ServiceKey, now: Timestamp) -> String {
        self.last = now.as_nanosecond().max(self.last + 1);
        format!("{}.{:x}", service.name, self.last)
    }

    /// Series counts due (heartbeat, or a series that just finished), and
    /// entries past [`FINISH`] forgotten.
    pub fn tick(&mut self, now: Timestamp) -> Vec<EventWrite> {
        let mut out = Vec::new();
        self.entries.retain(|service, list| {
            list.retain_mut(|e| match &mut e.series {
                None => elapsed(e.event_time, now) < FINISH,
                Some(s) => {
                    let finished = elapsed(s.last_observed, now) >= FINISH;
                    if s.unwritten && (finished || elapsed(s.written, now) >= HEARTBEAT) {
                        out.push(EventWrite::Series {
                            service: service.clone(),
                            name: e.name.to_string(),
                            count: s.count,
                            last_observed: s.last_observed,
                        });
                        s.written = now;
                        s.unwritten = false;
                    }
                    !finished
                }
            });
            !list.is_empty()
        });
        out
    }

    /// The Event `name` of `service` could not be written: forget it, so
    /// the next occurrence creates a new one.
    pub fn failed(&mut self, service: &ServiceKey, name: &str) {
        if let Some(list) = self.entries.get_mut(service) {
            list.retain(|e| &*e.name != name);
            if list.is_empty() {
                self.entries.remove(service);
            }
        }
    }

    /// The Service is gone (or no longer pier's).
    pub fn forget(&mut self, service: &ServiceKey) {
        self.entries.remove(service);
    }

    /// This gateway stopped leading: the next leader keeps its own book.
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// `now` plus `d` (for tests).
pub fn later(now: Timestamp, d: Duration) -> Timestamp {
    now.checked_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::ZERO))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occ(name: &str, reason: &'static str, note: &str) -> Occurrence {
        Occurrence {
            service: ServiceKey::new("shop", name),
            reason,
            kind: EventKind::Warning,
            action: "Allocate",
            note: note.into(),
        }
    }

    fn t0() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn first_creates_second_patches_later_ones_wait_for_the_heartbeat_or_the_end() {
        let mut b = EventBook::default();
        let now = t0();
        let w = b.record(occ("web", "AllocationFailed", "pool full"), now);
        let Some(EventWrite::Create { name, .. }) = w else {
            panic!("{w:?}")
        };
        assert!(name.starts_with("web."), "{name}");
        let w = b.record(
            occ("web", "AllocationFailed", "pool full"),
            later(now, 10 * S),
        );
        assert_eq!(
            w,
            Some(EventWrite::Series {
                service: ServiceKey::new("shop", "web"),
                name: name.clone(),
                count: 2,
                last_observed: later(now, 10 * S),
            })
        );
        for k in 0..5 {
            assert_eq!(
                b.record(
                    occ("web", "AllocationFailed", "pool full"),
                    later(now, (20 + k) * S)
                ),
                None
            );
        }
        assert!(b.tick(later(now, 60 * S)).is_empty(), "no heartbeat yet");
        // Six minutes after the last occurrence: the final count, then gone.
        let w = b.tick(later(now, 24 * S + FINISH));
        assert_eq!(
            w,
            vec![EventWrite::Series {
                service: ServiceKey::new("shop", "web"),
                name,
                count: 7,
                last_observed: later(now, 24 * S),
            }]
        );
        assert!(b.is_empty());
    }

    #[test]
    fn a_long_series_is_written_every_heartbeat() {
        let mut b = EventBook::default();
        let now = t0();
        b.record(occ("web", "AllocationFailed", "x"), now);
        b.record(occ("web", "AllocationFailed", "x"), now);
        let mut t = now;
        let mut writes = 0;
        // One occurrence a minute for 65 minutes.
        for _ in 0..65 {
            t = later(t, 60 * S);
            assert_eq!(b.record(occ("web", "AllocationFailed", "x"), t), None);
            writes += b.tick(t).len();
        }
        assert_eq!(writes, 2, "one count per 30 minutes");
    }

    #[test]
    fn keyed_by_service_reason_and_note() {
        let mut b = EventBook::default();
        let now = t0();
        for (svc, reason, note) in [
            ("web", "AllocationFailed", "pool full"),
            ("web", "AllocationFailed", "IP taken"),
            ("web", "InvalidAnnotation", "pool full"),
            ("api", "AllocationFailed", "pool full"),
        ] {
            assert!(matches!(
                b.record(occ(svc, reason, note), now),
                Some(EventWrite::Create { .. })
            ));
        }
        assert_eq!(b.len(), 4);
        let names: std::collections::BTreeSet<String> = b
            .entries
            .values()
            .flatten()
            .map(|e| e.name.to_string())
            .collect();
        assert_eq!(names.len(), 4, "names are unique");
    }

    #[test]
    fn normal_events_are_written_and_not_remembered() {
        let mut b = EventBook::default();
        let now = t0();
        let mut o = occ("web", "IPAllocated", "allocated 10.0.0.1");
        o.kind = EventKind::Normal;
        for _ in 0..2 {
            assert!(matches!(
                b.record(o.clone(), now),
                Some(EventWrite::Create { .. })
            ));
        }
        assert!(b.is_empty());
    }

    #[test]
    fn bounded_by_time_by_service_and_by_leadership() {
        let mut b = EventBook::default();
        let now = t0();
        b.record(occ("web", "IPAllocated", "allocated 10.0.0.1"), now);
        b.record(occ("api", "IPAllocated", "allocated 10.0.0.2"), now);
        b.forget(&ServiceKey::new("shop", "web"));
        assert_eq!(b.len(), 1);
        // A Service that comes back is a new Event.
        assert!(matches!(
            b.record(occ("web", "IPAllocated", "allocated 10.0.0.1"), now),
            Some(EventWrite::Create { .. })
        ));
        assert!(b.tick(later(now, FINISH - S)).is_empty());
        assert_eq!(b.len(), 2);
        assert!(b.tick(later(now, FINISH)).is_empty());
        assert!(b.is_empty(), "singletons expire");
        b.record(occ("web", "IPAllocated", "x"), now);
        b.clear();
        assert!(b.is_empty());
    }

    #[test]
    fn a_failed_create_is_forgotten_and_retried_on_the_next_occurrence() {
        let mut b = EventBook::default();
        let now = t0();
        let Some(EventWrite::Create { name, .. }) = b.record(occ("web", "R", "n"), now) else {
            panic!()
        };
        b.failed(&ServiceKey::new("shop", "web"), &name);
        assert!(matches!(
            b.record(occ("web", "R", "n"), now),
            Some(EventWrite::Create { .. })
        ));
    }

    #[test]
    fn notes_are_cut_to_the_api_limit_on_a_char_boundary() {
        let long = "é".repeat(1000);
        let n = bounded_note(long);
        assert!(n.len() <= NOTE_LIMIT);
        assert!(n.ends_with("..."));
        assert_eq!(bounded_note("short".into()), "short");
    }
}
