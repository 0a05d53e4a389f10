//! One BFD session in asynchronous mode (RFC 5880 §6), pure: no sockets,
//! no clock, no randomness drawn from the system. Time is an input (`now`,
//! a monotonic duration since any origin) and transmit jitter comes from a
//! seeded generator, so a test replays a session exactly.
//!
//! The I/O layer feeds [`Input`]s to [`Session::handle`], carries out the
//! returned [`Output`]s (send a packet, report a state change), and calls
//! `handle(Input::Tick, now)` at [`Session::next_deadline`].
//!
//! Implemented: the state machine of §6.2 and §6.8.6, the transmit interval
//! with jitter of §6.8.7, the Poll/Final sequence of §6.5 for timer changes
//! (and for the slow → configured transmit rate when the session comes Up,
//! §6.8.3), the detection time of §6.8.4, and a remote system's Demand mode
//! (pier stops periodic transmission, §6.6). Not implemented: the Echo
//! function, Demand mode for pier itself, authentication (a packet with the
//! A bit is discarded: pier configures none).

use crate::packet::{ControlPacket, Diag, State};
use std::time::Duration;

/// While a session is not Up, pier transmits no faster than once a second
/// (§6.8.3).
pub const SLOW_TX: Duration = Duration::from_secs(1);

/// The timers a session is configured with (per peer in pier's config:
/// `bfd_min_rx_ms`, `bfd_min_tx_ms`, `bfd_multiplier`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// bfd.DesiredMinTxInterval once Up.
    pub desired_min_tx: Duration,
    /// bfd.RequiredMinRxInterval.
    pub required_min_rx: Duration,
    /// bfd.DetectMult.
    pub detect_mult: u8,
}

impl Default for Timers {
    /// 300 ms / 300 ms / 3, pier's defaults.
    fn default() -> Self {
        Timers {
            desired_min_tx: Duration::from_millis(300),
            required_min_rx: Duration::from_millis(300),
            detect_mult: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A packet that passed [`crate::decode`] and was demultiplexed to this
    /// session.
    Received(ControlPacket),
    /// A deadline passed: transmit and/or detection timer.
    Tick,
    /// Administratively disable the session (§6.8.16).
    AdminDown,
    /// Enable it again (AdminDown → Down).
    AdminUp,
    /// New timers; a Poll Sequence if the session is Up (§6.8.3).
    SetTimers(Timers),
}

/// Why a received packet was discarded by the session (§6.8.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    /// Your Discriminator is not this session's.
    WrongDiscriminator,
    /// The A bit is set and pier uses no authentication.
    Authentication,
    /// The local session is AdminDown.
    AdminDown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Transmit this packet now.
    Send(ControlPacket),
    /// bfd.SessionState changed; `diag` is bfd.LocalDiag after the change.
    StateChanged { from: State, to: State, diag: Diag },
    /// The packet given was discarded.
    Discarded(Discard),
}

/// A snapshot for status reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionStatus {
    pub state: State,
    pub remote_state: State,
    pub local_diag: Diag,
    /// The Diag of the last packet received.
    pub remote_diag: Diag,
    pub local_discr: u32,
    pub remote_discr: u32,
    /// The agreed transmit interval before jitter (§6.8.7).
    pub tx_interval: Duration,
    /// The detection time in force (§6.8.4); zero before any packet came.
    pub detection_time: Duration,
}

/// xorshift64*: transmit jitter from a seed, no system randomness.
#[derive(Debug, Clone)]
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[derive(Debug, Clone)]
pub struct Session {
    timers: Timers,
    state: State,
    remote_state: State,
    local_discr: u32,
    remote_discr: u32,
    local_diag: Diag,
    remote_diag: Diag,
    /// bfd.RemoteMinRxInterval; 1 µs until the first packet (§6.8.1).
    remote_min_rx: Duration,
    /// The remote's last Desired Min TX Interval.
    remote_desired_tx: Duration,
    remote_detect_mult: u8,
    remote_demand: bool,
    /// Our Desired Min TX actually used for transmission: lags an increase
    /// until the Poll Sequence ends (§6.8.3).
    tx_in_use: Duration,
    /// Our Required Min RX used for the detection time: lags a decrease
    /// until the Poll Sequence ends (§6.8.3).
    rx_in_use: Duration,
    /// A Poll Sequence is in progress: periodic packets carry P.
    polling: bool,
    next_tx: Option<Duration>,
    detect_at: Option<Duration>,
    jitter: Jitter,
}

impl Session {
    /// A session in state Down. `local_discr` must be nonzero and unique
    /// among the system's sessions (§6.8.1); `seed` drives the jitter.
    pub fn new(timers: Timers, local_discr: u32, seed: u64) -> Session {
        let timers = sane(timers);
        Session {
            timers,
            state: State::Down,
            remote_state: State::Down,
            local_discr,
            remote_discr: 0,
            local_diag: Diag::None,
            remote_diag: Diag::None,
            remote_min_rx: Duration::from_micros(1),
            remote_desired_tx: Duration::ZERO,
            remote_detect_mult: 0,
            remote_demand: false,
            tx_in_use: timers.desired_min_tx.max(SLOW_TX),
            rx_in_use: timers.required_min_rx,
            polling: false,
            // The first packet goes out on the first tick.
            next_tx: Some(Duration::ZERO),
            detect_at: None,
            jitter: Jitter(seed | 1),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn local_discr(&self) -> u32 {
        self.local_discr
    }

    pub fn timers(&self) -> Timers {
        self.timers
    }

    /// A Poll Sequence is in progress.
    pub fn polling(&self) -> bool {
        self.polling
    }

    pub fn status(&self) -> SessionStatus {
        SessionStatus {
            state: self.state,
            remote_state: self.remote_state,
            local_diag: self.local_diag,
            remote_diag: self.remote_diag,
            local_discr: self.local_discr,
            remote_discr: self.remote_discr,
            tx_interval: self.tx_interval(),
            detection_time: self.detection_time(),
        }
    }

    /// When to call `handle(Input::Tick, ..)` next.
    pub fn next_deadline(&self) -> Option<Duration> {
        match (self.next_tx, self.detect_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The Desired Min TX Interval pier advertises now (§6.8.3).
    fn advertised_tx(&self) -> Duration {
        if self.state == State::Up {
            self.timers.desired_min_tx
        } else {
            self.timers.desired_min_tx.max(SLOW_TX)
        }
    }

    /// §6.8.7: the larger of our Desired Min TX and the remote's Required
    /// Min RX.
    pub fn tx_interval(&self) -> Duration {
        self.tx_in_use.max(self.remote_min_rx)
    }

    /// §6.8.4, asynchronous mode: the remote's Detect Mult times the larger
    /// of our Required Min RX and the remote's last Desired Min TX.
    pub fn detection_time(&self) -> Duration {
        self.rx_in_use.max(self.remote_desired_tx) * self.remote_detect_mult as u32
    }

    /// Periodic transmission is allowed (§6.8.7, §6.6).
    fn periodic(&self) -> bool {
        let remote_in_demand =
            self.remote_demand && self.state == State::Up && self.remote_state == State::Up;
        !self.remote_min_rx.is_zero() && !remote_in_demand
    }

    /// The next transmit time from `now`: the interval less 0–25 % jitter,
    /// or 10–25 % when Detect Mult is 1 (§6.8.7).
    fn schedule_tx(&mut self, now: Duration) {
        if !self.periodic() {
            self.next_tx = None;
            return;
        }
        let us = self.tx_interval().as_micros().min(u64::MAX as u128) as u64;
        let r = self.jitter.next();
        let keep = if self.timers.detect_mult == 1 {
            // 75 %..=90 %
            us * 75 / 100 + r % (us * 15 / 100 + 1)
        } else {
            // 75 %..=100 %
            us * 75 / 100 + r % (us / 4 + 1)
        };
        self.next_tx = Some(now + Duration::from_micros(keep.max(1)));
    }

    fn packet(&self, fin: bool) -> ControlPacket {
        ControlPacket {
            diag: self.local_diag,
            state: self.state,
            poll: self.polling && !fin,
            fin,
            cpi: false,
            demand: false,
            detect_mult: self.timers.detect_mult,
            my_discr: self.local_discr,
            your_discr: self.remote_discr,
            desired_min_tx_us: micros(self.advertised_tx()),
            required_min_rx_us: micros(self.timers.required_min_rx),
            required_min_echo_rx_us: 0,
            auth: None,
        }
    }

    fn set_state(&mut self, to: State, diag: Diag, out: &mut Vec<Output>) {
        let from = self.state;
        if from == to {
            return;
        }
        self.state = to;
        self.local_diag = diag;
        if to == State::Up {
            // The slow rate may now drop to the configured one: a Poll
            // Sequence tells the remote (§6.8.3).
            self.change_timers(self.timers.desired_min_tx.max(SLOW_TX));
        } else {
            self.polling = false;
            self.tx_in_use = self.advertised_tx();
            self.rx_in_use = self.timers.required_min_rx;
        }
        out.push(Output::StateChanged { from, to, diag });
    }

    /// Starts a Poll Sequence for new advertised values while Up; a
    /// decrease of the transmit interval and an increase of the receive
    /// interval apply at once, the rest when the Final comes (§6.8.3).
    fn change_timers(&mut self, previous_tx: Duration) {
        let tx = self.advertised_tx();
        let rx = self.timers.required_min_rx;
        if tx == previous_tx && rx == self.rx_in_use {
            return;
        }
        self.polling = true;
        if tx < self.tx_in_use {
            self.tx_in_use = tx;
        }
        if rx > self.rx_in_use {
            self.rx_in_use = rx;
        }
    }

    pub fn handle(&mut self, input: Input, now: Duration) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Received(p) => self.receive(p, now, &mut out),
            Input::Tick => self.tick(now, &mut out),
            Input::AdminDown => {
                if self.state != State::AdminDown {
                    self.set_state(State::AdminDown, Diag::AdministrativelyDown, &mut out);
                    self.detect_at = None;
                    self.send_now(now, &mut out);
                }
            }
            Input::AdminUp => {
                if self.state == State::AdminDown {
                    let diag = self.local_diag;
                    self.set_state(State::Down, diag, &mut out);
                    self.send_now(now, &mut out);
                }
            }
            Input::SetTimers(t) => {
                let previous_tx = self.advertised_tx();
                self.timers = sane(t);
                if self.state == State::Up {
                    self.change_timers(previous_tx);
                    if self.polling {
                        self.send_now(now, &mut out);
                    }
                } else {
                    self.tx_in_use = self.advertised_tx();
                    self.rx_in_use = self.timers.required_min_rx;
                }
            }
        }
        if self.next_tx.is_none() {
            self.schedule_tx(now);
        }
        out
    }

    /// Sends a packet now and restarts the transmit timer.
    fn send_now(&mut self, now: Duration, out: &mut Vec<Output>) {
        out.push(Output::Send(self.packet(false)));
        self.schedule_tx(now);
    }

    fn tick(&mut self, now: Duration, out: &mut Vec<Output>) {
        if self.detect_at.is_some_and(|t| t <= now) {
            self.detect_at = None;
            // §6.8.1: RemoteDiscr is reset when the detection time expires.
            self.remote_discr = 0;
            self.remote_state = State::Down;
            self.remote_demand = false;
            if matches!(self.state, State::Init | State::Up) {
                self.set_state(State::Down, Diag::ControlDetectionTimeExpired, out);
            }
        }
        if self.next_tx.is_some_and(|t| t <= now) {
            if self.periodic() {
                out.push(Output::Send(self.packet(false)));
            }
            self.schedule_tx(now);
        }
    }

    fn receive(&mut self, p: ControlPacket, now: Duration, out: &mut Vec<Output>) {
        if p.your_discr != 0 && p.your_discr != self.local_discr {
            out.push(Output::Discarded(Discard::WrongDiscriminator));
            return;
        }
        if p.auth.is_some() {
            out.push(Output::Discarded(Discard::Authentication));
            return;
        }
        self.remote_discr = p.my_discr;
        self.remote_state = p.state;
        self.remote_diag = p.diag;
        self.remote_demand = p.demand;
        self.remote_min_rx = Duration::from_micros(p.required_min_rx_us as u64);
        self.remote_desired_tx = Duration::from_micros(p.desired_min_tx_us as u64);
        self.remote_detect_mult = p.detect_mult;
        if p.fin && self.polling {
            self.polling = false;
            self.tx_in_use = self.advertised_tx();
            self.rx_in_use = self.timers.required_min_rx;
        }
        if self.state == State::AdminDown {
            out.push(Output::Discarded(Discard::AdminDown));
            return;
        }
        // A faster rate now allowed (the remote lowered its Required Min
        // RX, or our Poll ended) applies from now: a transmit timer set for
        // the old rate would outlast the remote's new detection time (FRR
        // leaves its slow Required Min RX with a Poll just after Up).
        if self.periodic() && self.next_tx.is_some_and(|t| t > now + self.tx_interval()) {
            self.schedule_tx(now);
        }
        // Received "for purposes of the Detection Time expiration rules".
        self.detect_at = Some(now + self.detection_time());
        let before = self.state;
        if p.state == State::AdminDown {
            if self.state != State::Down {
                self.set_state(State::Down, Diag::NeighborSignaledSessionDown, out);
            }
        } else {
            match (self.state, p.state) {
                (State::Down, State::Down) => self.set_state(State::Init, Diag::None, out),
                (State::Down, State::Init) => self.set_state(State::Up, Diag::None, out),
                (State::Init, State::Init | State::Up) => {
                    self.set_state(State::Up, Diag::None, out)
                }
                (State::Up, State::Down) => {
                    self.set_state(State::Down, Diag::NeighborSignaledSessionDown, out)
                }
                _ => {}
            }
        }
        if p.poll {
            // §6.5: answer at once, without respect to the transmit timer.
            out.push(Output::Send(self.packet(true)));
        }
        if self.state != before {
            // A state change is told at once (a Poll when coming Up).
            self.send_now(now, out);
        }
        if !self.periodic() {
            self.next_tx = None;
        }
    }
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

/// Timers the wire can carry: intervals 1 µs ..= u32::MAX µs, Detect Mult ≥ 1.
fn sane(t: Timers) -> Timers {
    let clamp = |d: Duration| {
        d.max(Duration::from_micros(1))
            .min(Duration::from_micros(u32::MAX as u64))
    };
    Timers {
        desired_min_tx: clamp(t.desired_min_tx),
        required_min_rx: clamp(t.required_min_rx),
        detect_mult: t.detect_mult.max(1),
    }
}
