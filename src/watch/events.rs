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
//! Then the [`EventOutbox`] decides when: the writes wait until the status
//! writes of their round have gone, leave at a bounded rate (one token
//! bucket for the whole writer, Warnings before Normals), and each
//! (Service, reason) gets a burst and then a slow refill, like client-go's
//! spam filter (`EventSourceObjectSpamFilter`: 25, then one per 5 minutes).
//! A bulk sync of 10,000 allocations thus adds its 10,000 Events after the
//! statuses and spread over tens of seconds, not in the same seconds as the
//! status writes they would compete with in etcd.
//!
//! kube-runtime's `Recorder` keys on the reason alone (a second, different
//! refusal became a repeat of the first, with the first's note) and scans
//! its whole cache on every publish; this book is indexed by Service.

use std::collections::{BTreeMap, VecDeque};
use std::hash::{Hash, Hasher};
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

impl EventWrite {
    /// Whether the outbox queues it with the Warnings: a Warning Event, or
    /// a series update (a count the book already aggregated).
    fn queued_as_warning(&self) -> bool {
        match self {
            EventWrite::Create { occurrence, .. } => occurrence.kind == EventKind::Warning,
            EventWrite::Series { .. } => true,
        }
    }
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

/// Event writes the whole writer may start at once (the bucket's size).
pub const EVENT_BURST: u32 = 200;
/// Event writes per second once the burst is spent: a fifth of what a
/// small etcd commits (~1,000 writes/s on local disk, see
/// docs/benchmarks.md), so Events never take the status writes' share.
pub const EVENT_RATE: u32 = 200;
/// Events one (Service, reason) may write at once (client-go's spam filter burst).
pub const OBJECT_BURST: u32 = 25;
/// Then one more per this long (client-go's spam filter: 1/300 per second).
pub const OBJECT_REFILL: Duration = Duration::from_secs(300);
/// Event writes waiting at most; beyond, a Normal Event is dropped (a
/// Warning takes the place of the oldest Normal), as client-go's
/// broadcaster drops when its queue is full.
pub const OUTBOX_LIMIT: usize = 16_384;
/// Tries of one Event write that failed for a reason waiting can heal (the
/// API server unreachable, restarting, 5xx, 429), as client-go's recorder
/// (`maxTriesPerEvent`); then it is given up.
pub const EVENT_TRIES: u8 = 12;
/// The wait before the outbox gives anything again after such a failure.
pub const EVENT_RETRY_WAIT: Duration = Duration::from_secs(2);

/// A token bucket with time as an input.
#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    tokens: f64,
    at: Timestamp,
}

impl TokenBucket {
    fn full(burst: u32, now: Timestamp) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(burst),
            at: now,
        }
    }

    /// Tokens at `now` (refilled at `per_second`, at most `burst`).
    fn refill(&mut self, now: Timestamp, burst: u32, per_second: f64) {
        let gained = elapsed(self.at, now).as_secs_f64() * per_second;
        self.tokens = (self.tokens + gained).min(f64::from(burst));
        if now > self.at {
            self.at = now;
        }
    }

    fn take(&mut self, now: Timestamp, burst: u32, per_second: f64) -> bool {
        self.refill(now, burst, per_second);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until a token is there (zero: now).
    fn wait(&self, now: Timestamp, burst: u32, per_second: f64) -> Duration {
        let mut b = *self;
        b.refill(now, burst, per_second);
        if b.tokens >= 1.0 || per_second <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - b.tokens) / per_second)
        }
    }
}

/// One Event write waiting, with the uid of its Service if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingEvent {
    pub write: EventWrite,
    /// `regarding.uid` (`None`: read when the write goes out).
    pub uid: Option<String>,
    /// Tries so far that failed for a transient reason.
    pub tries: u8,
}

/// What [`EventOutbox::offer`] did with a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    Queued,
    /// Its (Service, reason) spent its burst: dropped, as client-go's spam filter does.
    Limited,
    /// The outbox was full of Warnings (or this was a Normal Event and it was full).
    Dropped,
}

/// The Event writes waiting for their turn, and the rates that give it.
#[derive(Debug, Default)]
pub struct EventOutbox {
    warnings: VecDeque<OutgoingEvent>,
    normals: VecDeque<OutgoingEvent>,
    bucket: Option<TokenBucket>,
    /// Per (Service, reason), by hash (a collision only shares a budget);
    /// an entry goes once its bucket is full again.
    objects: BTreeMap<u64, TokenBucket>,
    /// Nothing goes before this (a write failed for a transient reason).
    hold_until: Option<Timestamp>,
}

fn object_key(service: &ServiceKey, reason: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    (&service.namespace, &service.name, reason).hash(&mut h);
    h.finish()
}

fn object_rate() -> f64 {
    1.0 / OBJECT_REFILL.as_secs_f64()
}

impl EventOutbox {
    /// Writes waiting.
    pub fn len(&self) -> usize {
        self.warnings.len() + self.normals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queue a write from the book. A new Event counts against its
    /// (Service, reason) budget; a series update (a count the book
    /// already aggregated) does not, and goes with the Warnings.
    pub fn offer(&mut self, write: EventWrite, uid: Option<String>, now: Timestamp) -> Offered {
        if let EventWrite::Create { occurrence, .. } = &write {
            let key = object_key(&occurrence.service, occurrence.reason);
            let bucket = self
                .objects
                .entry(key)
                .or_insert_with(|| TokenBucket::full(OBJECT_BURST, now));
            if !bucket.take(now, OBJECT_BURST, object_rate()) {
                return Offered::Limited;
            }
        }
        let warning = write.queued_as_warning();
        if self.len() >= OUTBOX_LIMIT && (!warning || self.normals.pop_front().is_none()) {
            return Offered::Dropped;
        }
        let out = OutgoingEvent {
            write,
            uid,
            tries: 0,
        };
        if warning {
            self.warnings.push_back(out);
        } else {
            self.normals.push_back(out);
        }
        Offered::Queued
    }

    /// The writes that may go out at `now`: as many as the writer's bucket
    /// allows, Warnings first.
    pub fn take(&mut self, now: Timestamp) -> Vec<OutgoingEvent> {
        if self.hold_until.is_some_and(|t| now < t) {
            return Vec::new();
        }
        self.hold_until = None;
        let bucket = self
            .bucket
            .get_or_insert_with(|| TokenBucket::full(EVENT_BURST, now));
        let mut out = Vec::new();
        while !(self.warnings.is_empty() && self.normals.is_empty())
            && bucket.take(now, EVENT_BURST, f64::from(EVENT_RATE))
        {
            if let Some(w) = self
                .warnings
                .pop_front()
                .or_else(|| self.normals.pop_front())
            {
                out.push(w);
            }
        }
        out
    }

    /// How long until [`take`](Self::take) gives something (`None`: nothing waits).
    pub fn due(&self, now: Timestamp) -> Option<Duration> {
        if self.is_empty() {
            return None;
        }
        let bucket = self.bucket.map_or(Duration::ZERO, |b| {
            b.wait(now, EVENT_BURST, f64::from(EVENT_RATE))
        });
        let held = self.hold_until.map_or(Duration::ZERO, |t| {
            Duration::try_from(t.duration_since(now)).unwrap_or(Duration::ZERO)
        });
        Some(bucket.max(held))
    }

    /// A write that failed for a transient reason goes back to the front
    /// of its queue (no budget charged again), and the outbox holds
    /// everything for [`EVENT_RETRY_WAIT`]. False: it has had its
    /// [`EVENT_TRIES`], and is given up.
    pub fn retry(&mut self, mut out: OutgoingEvent, now: Timestamp) -> bool {
        out.tries = out.tries.saturating_add(1);
        if out.tries >= EVENT_TRIES {
            return false;
        }
        if out.write.queued_as_warning() {
            self.warnings.push_front(out);
        } else {
            self.normals.push_front(out);
        }
        self.hold_until = Some(later(now, EVENT_RETRY_WAIT));
        true
    }

    /// Forget the per-(Service, reason) budgets that are full again.
    pub fn prune(&mut self, now: Timestamp) {
        self.objects.retain(|_, b| {
            b.refill(now, OBJECT_BURST, object_rate());
            b.tokens < f64::from(OBJECT_BURST)
        });
    }

    /// Per-(Service, reason) budgets remembered (for tests and metrics).
    pub fn budgets(&self) -> usize {
        self.objects.len()
    }

    /// This gateway stopped leading: nothing more is written.
    pub fn clear(&mut self) {
        self.warnings.clear();
        self.normals.clear();
        self.objects.clear();
        self.hold_until = None;
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

    fn create(svc: &str, reason: &'static str, kind: EventKind, now: Timestamp) -> EventWrite {
        let mut o = occ(svc, reason, "n");
        o.kind = kind;
        EventWrite::Create {
            name: format!("{svc}.1"),
            occurrence: o,
            event_time: now,
        }
    }

    fn services(out: &[OutgoingEvent]) -> Vec<String> {
        out.iter()
            .map(|o| match &o.write {
                EventWrite::Create { occurrence, .. } => occurrence.service.name.clone(),
                EventWrite::Series { service, .. } => service.name.clone(),
            })
            .collect()
    }

    #[test]
    fn a_bulk_sync_goes_out_in_a_burst_then_at_the_rate() {
        let mut o = EventOutbox::default();
        let now = t0();
        let n = 10_000;
        for i in 0..n {
            let w = create(&format!("s{i}"), "IPAllocated", EventKind::Normal, now);
            assert_eq!(o.offer(w, None, now), Offered::Queued);
        }
        assert_eq!(o.due(now), Some(Duration::ZERO));
        assert_eq!(o.take(now).len(), EVENT_BURST as usize);
        assert!(o.take(now).is_empty(), "the burst is spent");
        let wait = o.due(now).expect("more wait");
        assert!(wait > Duration::ZERO && wait <= S / EVENT_RATE, "{wait:?}");
        // One second later: one second's worth.
        assert_eq!(o.take(later(now, S)).len(), EVENT_RATE as usize);
        // The whole sync drains in (n - burst) / rate seconds.
        let mut sent = EVENT_BURST + EVENT_RATE;
        let mut t = later(now, S);
        while !o.is_empty() {
            t = later(t, S);
            let k = o.take(t).len() as u32;
            assert!(k <= EVENT_RATE);
            sent += k;
        }
        assert_eq!(sent, n);
        let secs = elapsed(now, t).as_secs();
        assert_eq!(secs, u64::from((n - EVENT_BURST).div_ceil(EVENT_RATE)));
        assert_eq!(o.due(t), None);
    }

    #[test]
    fn a_transient_failure_is_tried_again_after_a_wait_then_given_up() {
        let mut o = EventOutbox::default();
        let now = t0();
        for svc in ["a", "b"] {
            o.offer(
                create(svc, "IPAllocated", EventKind::Normal, now),
                None,
                now,
            );
        }
        let mut out = o.take(now);
        assert_eq!(services(&out), ["a", "b"]);
        // "b" failed (the API server restarting): back first, after a wait.
        let b = out.pop().expect("b");
        o.offer(
            create("c", "IPAllocated", EventKind::Normal, now),
            None,
            now,
        );
        assert!(o.retry(b, now));
        assert!(o.take(now).is_empty(), "held after a failure");
        assert_eq!(o.due(now), Some(EVENT_RETRY_WAIT));
        let then = later(now, EVENT_RETRY_WAIT);
        let out = o.take(then);
        assert_eq!(services(&out), ["b", "c"], "the retried write first");
        assert_eq!(out[0].tries, 1);
        // It fails every time: given up at its last try.
        let mut w = out.into_iter().next().expect("b");
        let mut t = then;
        for _ in 1..EVENT_TRIES - 1 {
            assert!(o.retry(w, t));
            t = later(t, EVENT_RETRY_WAIT);
            w = o.take(t).pop().expect("tried again");
        }
        assert_eq!(w.tries, EVENT_TRIES - 1);
        assert!(!o.retry(w, t), "given up after {EVENT_TRIES} tries");
        assert!(o.is_empty());
        // A lost leadership forgets the wait with the rest.
        o.offer(create("d", "IPAllocated", EventKind::Normal, t), None, t);
        let d = o.take(t).pop().expect("d");
        assert!(o.retry(d, t));
        o.clear();
        assert_eq!(o.due(t), None);
    }

    #[test]
    fn warnings_go_before_normals() {
        let mut o = EventOutbox::default();
        let now = t0();
        for i in 0..EVENT_BURST {
            o.offer(
                create(&format!("n{i}"), "IPAllocated", EventKind::Normal, now),
                None,
                now,
            );
        }
        o.offer(
            create("refused", "AllocationFailed", EventKind::Warning, now),
            None,
            now,
        );
        o.offer(
            EventWrite::Series {
                service: ServiceKey::new("shop", "pending"),
                name: "pending.1".into(),
                count: 2,
                last_observed: now,
            },
            None,
            now,
        );
        let out = o.take(now);
        assert_eq!(&services(&out)[..3], ["refused", "pending", "n0"]);
        assert_eq!(o.len(), 2, "two Normals wait for the next token");
    }

    #[test]
    fn each_service_and_reason_gets_a_burst_then_one_per_refill() {
        let mut o = EventOutbox::default();
        let now = t0();
        let flap = |o: &mut EventOutbox, t| {
            o.offer(create("web", "IPAllocated", EventKind::Normal, t), None, t)
        };
        for _ in 0..OBJECT_BURST {
            assert_eq!(flap(&mut o, now), Offered::Queued);
        }
        assert_eq!(flap(&mut o, now), Offered::Limited);
        // Another reason of the same Service, and another Service, have their own.
        assert_eq!(
            o.offer(
                create("web", "IPReleased", EventKind::Normal, now),
                None,
                now
            ),
            Offered::Queued
        );
        assert_eq!(
            o.offer(
                create("api", "IPAllocated", EventKind::Normal, now),
                None,
                now
            ),
            Offered::Queued
        );
        assert_eq!(
            flap(&mut o, later(now, OBJECT_REFILL - S)),
            Offered::Limited
        );
        assert_eq!(flap(&mut o, later(now, OBJECT_REFILL)), Offered::Queued);
        assert_eq!(flap(&mut o, later(now, OBJECT_REFILL)), Offered::Limited);
        // Budgets are forgotten once full again.
        assert_eq!(o.budgets(), 3);
        o.prune(later(now, OBJECT_REFILL * (OBJECT_BURST + 1)));
        assert_eq!(o.budgets(), 0);
        // Series updates are already aggregated: never limited.
        for k in 0..100 {
            let w = EventWrite::Series {
                service: ServiceKey::new("shop", "web"),
                name: "web.1".into(),
                count: k,
                last_observed: now,
            };
            assert_eq!(o.offer(w, None, now), Offered::Queued);
        }
    }

    #[test]
    fn a_full_outbox_drops_normals_and_keeps_warnings() {
        let mut o = EventOutbox::default();
        let now = t0();
        for i in 0..OUTBOX_LIMIT {
            o.offer(
                create(&format!("n{i}"), "IPAllocated", EventKind::Normal, now),
                None,
                now,
            );
        }
        assert_eq!(
            o.offer(
                create("late", "IPAllocated", EventKind::Normal, now),
                None,
                now
            ),
            Offered::Dropped
        );
        assert_eq!(
            o.offer(
                create("refused", "AllocationFailed", EventKind::Warning, now),
                None,
                now
            ),
            Offered::Queued
        );
        assert_eq!(o.len(), OUTBOX_LIMIT);
        let out = o.take(now);
        assert_eq!(services(&out)[..2], ["refused", "n1"], "n0 made room");
        o.clear();
        assert!(o.is_empty() && o.budgets() == 0);
    }

    #[test]
    fn a_clock_stepping_back_neither_panics_nor_mints_tokens() {
        let mut o = EventOutbox::default();
        let now = t0();
        for i in 0..(EVENT_BURST + 10) {
            o.offer(
                create(&format!("s{i}"), "IPAllocated", EventKind::Normal, now),
                None,
                now,
            );
        }
        assert_eq!(o.take(now).len(), EVENT_BURST as usize);
        let back = Timestamp::from_second(1_000_000_000).unwrap();
        assert!(o.take(back).is_empty());
        assert!(o.due(back).is_some());
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
