//! The BGP finite state machine of RFC 4271 §8, pure: no sockets, no clock.
//! Time is an input (`now`, a monotonic duration since any origin); the
//! session I/O feeds events and carries out the returned actions, and asks
//! [`Fsm::next_deadline`] when to call [`Fsm::tick`].
//!
//! One `Fsm` runs one peer. Connection collision (§6.8) is decided by
//! [`collision_keeps_local`], applied by the session layer that sees both
//! connections.

use std::net::Ipv4Addr;
use std::time::Duration;

/// RFC 4271 §8.2.2 states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::Active => "Active",
            State::OpenSent => "OpenSent",
            State::OpenConfirm => "OpenConfirm",
            State::Established => "Established",
        }
    }
}

pub use pier_bgp_wire::{notif, Notification, PeerOpen};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsmConfig {
    pub local_asn: u32,
    /// `None`: accept any AS (not used by pier's peers, kept for tests).
    pub peer_asn: Option<u32>,
    pub router_id: Ipv4Addr,
    /// Hold time pier proposes (0 = no keepalives, or ≥ 3).
    pub hold_time: u16,
    /// First ConnectRetry interval; doubled after each failure up to
    /// `connect_retry_max`.
    pub connect_retry: Duration,
    pub connect_retry_max: Duration,
    /// Wait for the peer to connect instead of connecting.
    pub passive: bool,
}

/// What the I/O layer must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to the peer.
    Connect,
    /// Close the TCP connection (after sending anything queued).
    Disconnect,
    SendOpen,
    SendKeepalive,
    SendNotification(Notification),
    /// The session is up with these timers.
    Established {
        hold_time: u16,
        keepalive: u16,
    },
    /// The session went down (it was Established or trying).
    Down(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Administrative start (or restart after Down).
    Start,
    /// Administrative stop: Cease / administrative shutdown.
    Stop,
    TcpConnected,
    TcpFailed(String),
    Open(PeerOpen),
    Keepalive,
    Update,
    RouteRefresh,
    Notification(Notification),
    /// A message that could not be decoded: send this NOTIFICATION.
    Malformed(Notification),
    /// The BFD session to the peer left Up (RFC 5882 §3.2: the forwarding
    /// path is gone, so is the session). Cease / BFD Down (RFC 9384) and
    /// Idle with no retry: the session starts again with [`Event::Start`]
    /// once BFD is Up again.
    BfdDown,
}

/// Cease subcode 10, "BFD Down" (RFC 9384 §2).
pub const CEASE_BFD_DOWN: u8 = 10;

/// RFC 4271 §10: a large hold time while waiting for the OPEN.
const OPEN_HOLD: Duration = Duration::from_secs(240);

#[derive(Debug, Clone)]
pub struct Fsm {
    cfg: FsmConfig,
    state: State,
    retry: Duration,
    connect_at: Option<Duration>,
    hold_at: Option<Duration>,
    keepalive_at: Option<Duration>,
    hold: u16,
    keepalive: u16,
    /// Consecutive failed attempts, for backoff.
    failures: u32,
    pub last_error: Option<String>,
}

impl Fsm {
    pub fn new(cfg: FsmConfig) -> Self {
        let retry = cfg.connect_retry;
        Fsm {
            cfg,
            state: State::Idle,
            retry,
            connect_at: None,
            hold_at: None,
            keepalive_at: None,
            hold: 0,
            keepalive: 0,
            failures: 0,
            last_error: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn config(&self) -> &FsmConfig {
        &self.cfg
    }

    /// Negotiated hold time and keepalive interval (seconds), once
    /// OpenConfirm or Established.
    pub fn timers(&self) -> (u16, u16) {
        (self.hold, self.keepalive)
    }

    /// When [`Fsm::tick`] must next be called.
    pub fn next_deadline(&self) -> Option<Duration> {
        [self.connect_at, self.hold_at, self.keepalive_at]
            .into_iter()
            .flatten()
            .min()
    }

    fn go_idle(&mut self, now: Duration, why: String, out: &mut Vec<Action>) {
        let was = self.state;
        self.state = State::Idle;
        self.hold_at = None;
        self.keepalive_at = None;
        self.failures = self.failures.saturating_add(1);
        // Exponential backoff of the next attempt; reset on Established.
        self.retry = (self.cfg.connect_retry * 2u32.saturating_pow(self.failures.min(16)))
            .min(self.cfg.connect_retry_max)
            .max(self.cfg.connect_retry);
        self.connect_at = Some(now + self.retry);
        self.last_error = Some(why.clone());
        if was != State::Idle {
            out.push(Action::Disconnect);
            out.push(Action::Down(why));
        }
    }

    fn fail(&mut self, now: Duration, n: Notification, why: String, out: &mut Vec<Action>) {
        out.push(Action::SendNotification(n));
        self.go_idle(now, why, out);
    }

    fn start_attempt(&mut self, now: Duration, out: &mut Vec<Action>) {
        self.connect_at = Some(now + self.retry);
        if self.cfg.passive {
            self.state = State::Active;
        } else {
            self.state = State::Connect;
            out.push(Action::Connect);
        }
    }

    /// Handle one event at `now`.
    pub fn handle(&mut self, now: Duration, ev: Event) -> Vec<Action> {
        let mut out = Vec::new();
        use State::*;
        match (self.state, ev) {
            (Idle, Event::Start) => self.start_attempt(now, &mut out),
            (_, Event::Start) => {}
            (Idle, Event::Stop) => {
                self.connect_at = None;
            }
            (_, Event::Stop) => {
                out.push(Action::SendNotification(Notification::new(
                    notif::CEASE,
                    notif::CEASE_ADMIN_SHUTDOWN,
                    Vec::new(),
                )));
                self.go_idle(now, "administrative stop".into(), &mut out);
                self.connect_at = None;
            }
            (Idle, Event::BfdDown) => {
                self.connect_at = None;
            }
            (_, Event::BfdDown) => {
                out.push(Action::SendNotification(Notification::new(
                    notif::CEASE,
                    CEASE_BFD_DOWN,
                    Vec::new(),
                )));
                self.go_idle(now, "BFD session down".into(), &mut out);
                self.connect_at = None;
            }
            (Connect | Active, Event::TcpConnected) => {
                self.state = OpenSent;
                self.connect_at = None;
                self.hold_at = Some(now + OPEN_HOLD);
                out.push(Action::SendOpen);
            }
            (Idle, Event::TcpConnected) => {
                // Not started (or backing off): refuse the connection.
                out.push(Action::Disconnect);
            }
            (_, Event::TcpConnected) => {}
            (Connect, Event::TcpFailed(why)) => {
                // Try again when ConnectRetry expires; listen meanwhile.
                self.state = Active;
                self.last_error = Some(why);
                self.failures = self.failures.saturating_add(1);
            }
            (Idle | Active, Event::TcpFailed(_)) => {}
            (_, Event::TcpFailed(why)) => {
                self.go_idle(now, format!("connection lost: {why}"), &mut out)
            }
            (OpenSent, Event::Open(open)) => match self.check_open(&open) {
                Err(n) => {
                    let why = format!("bad OPEN from peer: error {}/{}", n.code, n.subcode);
                    self.fail(now, n, why, &mut out);
                }
                Ok(hold) => {
                    self.hold = hold;
                    self.keepalive = hold / 3;
                    self.state = OpenConfirm;
                    out.push(Action::SendKeepalive);
                    self.arm_timers(now);
                }
            },
            (OpenConfirm, Event::Keepalive) => {
                self.state = Established;
                self.failures = 0;
                self.retry = self.cfg.connect_retry;
                self.last_error = None;
                self.arm_hold(now);
                out.push(Action::Established {
                    hold_time: self.hold,
                    keepalive: self.keepalive,
                });
            }
            (Established, Event::Keepalive | Event::Update | Event::RouteRefresh) => {
                self.arm_hold(now);
            }
            (_, Event::Notification(n)) => {
                let why = format!("NOTIFICATION received: error {}/{}", n.code, n.subcode);
                self.go_idle(now, why, &mut out);
            }
            (Idle | Connect | Active, Event::Malformed(_)) => {}
            (_, Event::Malformed(n)) => {
                let why = format!(
                    "malformed message from peer: error {}/{}",
                    n.code, n.subcode
                );
                self.fail(now, n, why, &mut out);
            }
            (Idle | Connect | Active, _) => {}
            (state, _) => {
                // Any other message in OpenSent, OpenConfirm or Established
                // is an FSM error (RFC 6608 subcodes).
                let sub = match state {
                    OpenSent => notif::FSM_UNEXPECTED_IN_OPENSENT,
                    OpenConfirm => notif::FSM_UNEXPECTED_IN_OPENCONFIRM,
                    _ => notif::FSM_UNEXPECTED_IN_ESTABLISHED,
                };
                self.fail(
                    now,
                    Notification::new(notif::FSM, sub, Vec::new()),
                    format!("unexpected message in {}", state.as_str()),
                    &mut out,
                );
            }
        }
        out
    }

    fn arm_timers(&mut self, now: Duration) {
        self.arm_hold(now);
        self.keepalive_at =
            (self.keepalive > 0).then(|| now + Duration::from_secs(self.keepalive.into()));
    }

    fn arm_hold(&mut self, now: Duration) {
        self.hold_at = (self.hold > 0).then(|| now + Duration::from_secs(self.hold.into()));
    }

    /// Check the peer's OPEN; the negotiated hold time, or the
    /// NOTIFICATION to send.
    fn check_open(&self, open: &PeerOpen) -> Result<u16, Notification> {
        if open.version != 4 {
            return Err(Notification::new(
                notif::OPEN_MESSAGE,
                notif::OPEN_UNSUPPORTED_VERSION,
                4u16.to_be_bytes().to_vec(),
            ));
        }
        if let Some(asn) = self.cfg.peer_asn {
            if open.asn != asn {
                return Err(Notification::new(
                    notif::OPEN_MESSAGE,
                    notif::OPEN_BAD_PEER_AS,
                    Vec::new(),
                ));
            }
        }
        let ibgp = open.asn == self.cfg.local_asn;
        if open.router_id.is_unspecified() || (ibgp && open.router_id == self.cfg.router_id) {
            return Err(Notification::new(
                notif::OPEN_MESSAGE,
                notif::OPEN_BAD_BGP_ID,
                Vec::new(),
            ));
        }
        if open.hold_time == 1 || open.hold_time == 2 {
            return Err(Notification::new(
                notif::OPEN_MESSAGE,
                notif::OPEN_UNACCEPTABLE_HOLD_TIME,
                Vec::new(),
            ));
        }
        Ok(if open.hold_time == 0 || self.cfg.hold_time == 0 {
            0
        } else {
            open.hold_time.min(self.cfg.hold_time)
        })
    }

    /// Fire the timers due at `now`.
    pub fn tick(&mut self, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        if self.hold_at.is_some_and(|t| now >= t) {
            self.fail(
                now,
                Notification::new(notif::HOLD_TIMER_EXPIRED, 0, Vec::new()),
                "hold timer expired".into(),
                &mut out,
            );
            return out;
        }
        if self.keepalive_at.is_some_and(|t| now >= t) {
            out.push(Action::SendKeepalive);
            self.keepalive_at = Some(now + Duration::from_secs(self.keepalive.into()));
        }
        if self.connect_at.is_some_and(|t| now >= t) {
            match self.state {
                State::Idle => self.start_attempt(now, &mut out),
                State::Connect | State::Active => {
                    if !self.cfg.passive {
                        // Give up on the pending attempt, try again.
                        self.state = State::Connect;
                        out.push(Action::Disconnect);
                        out.push(Action::Connect);
                    }
                    self.connect_at = Some(now + self.retry);
                }
                _ => self.connect_at = None,
            }
        }
        out
    }

    /// Sending a message counts as a keepalive (RFC 4271 §4.4): push the
    /// keepalive timer back.
    pub fn sent_message(&mut self, now: Duration) {
        if self.state == State::Established && self.keepalive > 0 {
            self.keepalive_at = Some(now + Duration::from_secs(self.keepalive.into()));
        }
    }
}

/// RFC 4271 §6.8: of two connections with the same peer, keep the one
/// initiated by the speaker with the higher BGP identifier. `true` when the
/// connection pier initiated is kept.
pub fn collision_keeps_local(local_id: Ipv4Addr, remote_id: Ipv4Addr) -> bool {
    u32::from(local_id) > u32::from(remote_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn cfg() -> FsmConfig {
        FsmConfig {
            local_asn: 65001,
            peer_asn: Some(65000),
            router_id: Ipv4Addr::new(10, 0, 0, 2),
            hold_time: 9,
            connect_retry: 2 * S,
            connect_retry_max: 60 * S,
            passive: false,
        }
    }

    fn open(hold: u16) -> PeerOpen {
        PeerOpen {
            version: 4,
            asn: 65000,
            hold_time: hold,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
        }
    }

    fn established(f: &mut Fsm) {
        assert_eq!(
            f.handle(Duration::ZERO, Event::Start),
            vec![Action::Connect]
        );
        assert_eq!(
            f.handle(Duration::ZERO, Event::TcpConnected),
            vec![Action::SendOpen]
        );
        assert_eq!(
            f.handle(Duration::ZERO, Event::Open(open(30))),
            vec![Action::SendKeepalive]
        );
        assert_eq!(
            f.handle(Duration::ZERO, Event::Keepalive),
            vec![Action::Established {
                hold_time: 9,
                keepalive: 3
            }]
        );
    }

    #[test]
    fn happy_path_negotiates_the_lower_hold_time() {
        let mut f = Fsm::new(cfg());
        established(&mut f);
        assert_eq!(f.state(), State::Established);
        assert_eq!(f.timers(), (9, 3));
        assert_eq!(f.next_deadline(), Some(3 * S));
        assert_eq!(f.tick(3 * S), vec![Action::SendKeepalive]);
    }

    #[test]
    fn hold_timer_expiry_sends_notification_and_backs_off() {
        let mut f = Fsm::new(cfg());
        established(&mut f);
        f.handle(5 * S, Event::Update);
        assert!(f.tick(13 * S).iter().all(|a| *a == Action::SendKeepalive));
        let out = f.tick(14 * S);
        assert_eq!(
            out[0],
            Action::SendNotification(Notification::new(4, 0, vec![]))
        );
        assert!(matches!(out.last(), Some(Action::Down(_))));
        assert_eq!(f.state(), State::Idle);
        // Retries later, by itself.
        let at = f.next_deadline().unwrap();
        assert!(at > 14 * S);
        assert_eq!(f.tick(at), vec![Action::Connect]);
    }

    #[test]
    fn open_errors_carry_the_rfc_codes() {
        for (o, sub) in [
            (
                PeerOpen {
                    version: 3,
                    ..open(9)
                },
                1,
            ),
            (
                PeerOpen {
                    asn: 65099,
                    ..open(9)
                },
                2,
            ),
            (
                PeerOpen {
                    router_id: Ipv4Addr::UNSPECIFIED,
                    ..open(9)
                },
                3,
            ),
            (open(2), 6),
        ] {
            let mut f = Fsm::new(cfg());
            f.handle(Duration::ZERO, Event::Start);
            f.handle(Duration::ZERO, Event::TcpConnected);
            let out = f.handle(Duration::ZERO, Event::Open(o));
            match &out[0] {
                Action::SendNotification(n) => assert_eq!((n.code, n.subcode), (2, sub)),
                other => panic!("{other:?}"),
            }
            assert_eq!(f.state(), State::Idle);
        }
    }

    #[test]
    fn zero_hold_time_means_no_keepalives() {
        let mut f = Fsm::new(cfg());
        f.handle(Duration::ZERO, Event::Start);
        f.handle(Duration::ZERO, Event::TcpConnected);
        f.handle(Duration::ZERO, Event::Open(open(0)));
        f.handle(Duration::ZERO, Event::Keepalive);
        assert_eq!(f.timers(), (0, 0));
        assert_eq!(f.next_deadline(), None);
    }

    #[test]
    fn unexpected_messages_are_fsm_errors() {
        let mut f = Fsm::new(cfg());
        f.handle(Duration::ZERO, Event::Start);
        f.handle(Duration::ZERO, Event::TcpConnected);
        let out = f.handle(Duration::ZERO, Event::Update);
        assert_eq!(
            out[0],
            Action::SendNotification(Notification::new(5, 1, vec![]))
        );
        let mut f = Fsm::new(cfg());
        established(&mut f);
        let out = f.handle(S, Event::Open(open(9)));
        assert_eq!(
            out[0],
            Action::SendNotification(Notification::new(5, 3, vec![]))
        );
    }

    #[test]
    fn connect_failures_back_off_exponentially_and_cap() {
        let mut f = Fsm::new(cfg());
        f.handle(Duration::ZERO, Event::Start);
        let mut now = Duration::ZERO;
        let mut gaps = Vec::new();
        for _ in 0..8 {
            f.handle(now, Event::TcpFailed("refused".into()));
            let next = f.next_deadline().unwrap();
            gaps.push(next - now);
            now = next;
            let _ = f.tick(now);
        }
        assert!(gaps.windows(2).all(|w| w[1] >= w[0]), "{gaps:?}");
        assert!(gaps.iter().all(|g| *g <= 60 * S));
    }

    #[test]
    fn notification_received_goes_idle_without_reply() {
        let mut f = Fsm::new(cfg());
        established(&mut f);
        let out = f.handle(S, Event::Notification(Notification::new(6, 2, vec![])));
        assert!(!out.iter().any(|a| matches!(a, Action::SendNotification(_))));
        assert_eq!(f.state(), State::Idle);
    }

    #[test]
    fn stop_sends_cease() {
        let mut f = Fsm::new(cfg());
        established(&mut f);
        let out = f.handle(S, Event::Stop);
        assert_eq!(
            out[0],
            Action::SendNotification(Notification::new(6, 2, vec![]))
        );
        assert_eq!(f.next_deadline(), None, "a stopped peer does not retry");
    }

    #[test]
    fn bfd_down_ceases_and_waits_for_start() {
        // Established, then BFD goes Down: Cease / BFD Down, no retry.
        let mut f = Fsm::new(cfg());
        established(&mut f);
        let out = f.handle(S, Event::BfdDown);
        assert_eq!(
            out[0],
            Action::SendNotification(Notification::new(6, CEASE_BFD_DOWN, vec![]))
        );
        assert!(out.contains(&Action::Disconnect));
        assert!(matches!(out.last(), Some(Action::Down(w)) if w == "BFD session down"));
        assert_eq!(f.state(), State::Idle);
        assert_eq!(f.next_deadline(), None, "no retry until BFD is Up");
        // BFD Up again: Start connects at once.
        assert_eq!(f.handle(2 * S, Event::Start), vec![Action::Connect]);
        // While connecting, BFD Down again: back to Idle, nothing to send.
        let out = f.handle(3 * S, Event::BfdDown);
        assert_eq!(f.state(), State::Idle);
        assert!(out.contains(&Action::Disconnect), "{out:?}");
        assert_eq!(f.next_deadline(), None);
        // Idle backing off after a failure: BFD Down cancels the retry.
        let mut f = Fsm::new(cfg());
        established(&mut f);
        f.handle(S, Event::TcpFailed("reset".into()));
        assert!(f.next_deadline().is_some());
        assert_eq!(f.handle(S, Event::BfdDown), vec![]);
        assert_eq!(f.next_deadline(), None);
    }

    #[test]
    fn collision_keeps_the_higher_identifier() {
        let hi = Ipv4Addr::new(10, 0, 0, 9);
        let lo = Ipv4Addr::new(10, 0, 0, 1);
        assert!(collision_keeps_local(hi, lo));
        assert!(!collision_keeps_local(lo, hi));
    }

    proptest::proptest! {
        /// No sequence of events and times panics, and the state stays
        /// consistent with its timers.
        #[test]
        fn any_event_sequence_is_safe(evs in proptest::collection::vec((0u8..13, 0u64..50), 0..80)) {
            let mut f = Fsm::new(cfg());
            let mut now = Duration::ZERO;
            for (e, dt) in evs {
                now += Duration::from_millis(dt * 100);
                let ev = match e {
                    0 => Event::Start,
                    1 => Event::Stop,
                    2 => Event::TcpConnected,
                    3 => Event::TcpFailed("x".into()),
                    4 => Event::Open(open(9)),
                    5 => Event::Keepalive,
                    6 => Event::Update,
                    7 => Event::RouteRefresh,
                    8 => Event::Notification(Notification::new(6, 4, vec![])),
                    9 => Event::Malformed(Notification::new(3, 1, vec![])),
                    10 => Event::BfdDown,
                    _ => { let _ = f.tick(now); continue; }
                };
                let _ = f.handle(now, ev);
                if f.state() == State::Established {
                    proptest::prop_assert!(f.next_deadline().is_some());
                }
            }
        }
    }
}
