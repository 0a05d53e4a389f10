//! BFD for pier's BGP peers: RFC 5880 asynchronous mode over UDP, single
//! hop (RFC 5881) or multihop (RFC 5883). The codec and the pure session
//! state machine are the crate `crates/bfd-wire`; this module is the I/O.
//! What is and is not implemented: `docs/bfd.md`.
//!
//! ```text
//!  BfdHandle ── Command (mpsc) ──► owner task ── owns: every Session, its
//!                                   ▲            transmit socket, its status
//!  reader task ×socket ── Datagram ─┘            └─► watch::Sender<BfdState>
//!  (3784 v4/v6, 4784 v4/v6, opened on first use)
//! ```
//!
//! Use:
//!
//! ```no_run
//! # async fn f() -> Result<(), pier::bfd::BfdError> {
//! use pier::bfd::{BfdHandle, BfdPeer, BfdTimers, Hops};
//! let bfd = BfdHandle::spawn();
//! let peer = BfdPeer { peer: "10.0.0.1".parse().unwrap(), local: None, hops: Hops::Single };
//! let mut state = bfd.add_session(peer.clone(), BfdTimers::default()).await?;
//! state.changed().await.ok();          // BfdState: state, diag, intervals, last_down
//! bfd.remove_session(peer).await?;     // AdminDown to the peer, then gone
//! # Ok(()) }
//! ```
//!
//! - One owner task holds all sessions; reader tasks only receive
//!   datagrams (with TTL and destination address) and pass them on.
//! - GTSM (RFC 5881 §5): packets go out with TTL / hop limit 255; a
//!   single-hop packet is accepted only with 255, a multihop one with at
//!   least 256 − hops.
//! - Demultiplexing (RFC 5880 §6.3): by Your Discriminator when nonzero
//!   (and the source must be that session's peer), else by source address,
//!   hop kind and, when the session has one, local address.
//! - Removing a session sends AdminDown (diag 7) and keeps transmitting it
//!   for one detection time of the remote before the session is dropped
//!   (RFC 5880 §6.8.16); dropping the handle stops the task after one
//!   AdminDown packet per session.

pub mod socket;

pub use pier_bfd_wire::{Diag, State, Timers as BfdTimers};

use pier_bfd_wire::{decode, encode, Input, Output, Session, MULTIHOP_PORT, SINGLE_HOP_PORT};
use socket::Datagram;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Single hop or multihop (with the most hops allowed, for the TTL check).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hops {
    Single,
    /// RFC 5883; packets are accepted with TTL ≥ 256 − hops.
    Multi(u8),
}

/// Who a session runs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BfdPeer {
    pub peer: IpAddr,
    /// Source address; `None`: the kernel's choice, and packets to any
    /// local address are accepted.
    pub local: Option<IpAddr>,
    pub hops: Hops,
}

impl BfdPeer {
    fn multihop(&self) -> bool {
        matches!(self.hops, Hops::Multi(_))
    }

    fn port(&self) -> u16 {
        if self.multihop() {
            MULTIHOP_PORT
        } else {
            SINGLE_HOP_PORT
        }
    }

    /// The lowest TTL / hop limit a received packet may carry.
    fn min_ttl(&self) -> u8 {
        match self.hops {
            Hops::Single => 255,
            Hops::Multi(h) => 255u8.saturating_sub(h.saturating_sub(1)),
        }
    }
}

/// What the rest of pier sees of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BfdState {
    pub state: State,
    pub remote_state: State,
    /// bfd.LocalDiag: why the session last changed state.
    pub diag: Diag,
    pub local_discr: u32,
    pub remote_discr: u32,
    /// The agreed transmit interval (before jitter).
    pub tx_interval: Duration,
    /// The detection time in force; zero before the first packet.
    pub detection_time: Duration,
    /// Why the session last left Up, if it ever did.
    pub last_down: Option<Diag>,
    /// How many times it left Up.
    pub downs: u64,
    /// How many times it left Up because the path failed
    /// ([`path_failure`]): what a BGP session is taken down for.
    pub failures: u64,
    /// How many state changes it went through (for
    /// `pier_bfd_transitions_total`; a `watch` reader may miss some).
    pub transitions: u64,
}

/// Whether a session that left Up with local diag `local` (the remote's
/// last packet: `remote_state`, `remote_diag`) says the forwarding path
/// failed, so that a client (BGP) must go down (RFC 5882 §3.2): pier's own
/// detection time expired, or the remote went Down because its path
/// failed (its detection time expired, echo failed, a path down). Not a
/// failure: the remote going AdminDown (RFC 5882 §3.2 forbids acting on
/// it), or the remote restarting its session (Down, diag 0): FRR and BIRD
/// re-create their BFD session when their BGP session changes, and a
/// working path must not take BGP down with it.
pub fn path_failure(local: Diag, remote_state: State, remote_diag: Diag) -> bool {
    match local {
        Diag::ControlDetectionTimeExpired => true,
        Diag::NeighborSignaledSessionDown => {
            remote_state != State::AdminDown
                && matches!(
                    remote_diag,
                    Diag::ControlDetectionTimeExpired
                        | Diag::EchoFunctionFailed
                        | Diag::ForwardingPlaneReset
                        | Diag::PathDown
                        | Diag::ConcatenatedPathDown
                        | Diag::ReverseConcatenatedPathDown
                )
        }
        _ => false,
    }
}

/// Timers from the per-peer config keys `bfd_min_rx_ms`, `bfd_min_tx_ms`,
/// `bfd_multiplier` (defaults 300 / 300 / 3: `BfdTimers::default()`).
pub fn timers_ms(min_rx_ms: u64, min_tx_ms: u64, multiplier: u8) -> BfdTimers {
    BfdTimers {
        desired_min_tx: Duration::from_millis(min_tx_ms),
        required_min_rx: Duration::from_millis(min_rx_ms),
        detect_mult: multiplier,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BfdError {
    #[error("BFD task has stopped")]
    Stopped,
    #[error("BFD session to {peer} ({hops:?}) exists already")]
    Exists { peer: IpAddr, hops: Hops },
    #[error("BFD session to {peer}: no such session")]
    NoSession { peer: IpAddr },
    #[error("BFD {what} for peer {peer}: {source}")]
    Socket {
        what: &'static str,
        peer: IpAddr,
        #[source]
        source: std::io::Error,
    },
}

enum Command {
    Add(
        BfdPeer,
        BfdTimers,
        oneshot::Sender<Result<watch::Receiver<BfdState>, BfdError>>,
    ),
    Remove(BfdPeer, oneshot::Sender<Result<(), BfdError>>),
    SetTimers(BfdPeer, BfdTimers, oneshot::Sender<Result<(), BfdError>>),
}

/// The BFD task's handle; dropping it stops the task.
pub struct BfdHandle {
    commands: mpsc::Sender<Command>,
}

impl BfdHandle {
    /// Starts the owner task (sockets open with the first session).
    pub fn spawn() -> BfdHandle {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(run(rx));
        BfdHandle { commands: tx }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, BfdError>>) -> Command,
    ) -> Result<T, BfdError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| BfdError::Stopped)?;
        rx.await.map_err(|_| BfdError::Stopped)?
    }

    /// Starts a session; its state is published on the returned receiver.
    pub async fn add_session(
        &self,
        peer: BfdPeer,
        timers: BfdTimers,
    ) -> Result<watch::Receiver<BfdState>, BfdError> {
        self.ask(|tx| Command::Add(peer, timers, tx)).await
    }

    /// Stops a session: AdminDown to the peer, then the session is gone
    /// (its receiver sees AdminDown, then the sender closes).
    pub async fn remove_session(&self, peer: BfdPeer) -> Result<(), BfdError> {
        self.ask(|tx| Command::Remove(peer, tx)).await
    }

    /// New timers for a running session (a Poll Sequence when Up).
    pub async fn set_timers(&self, peer: BfdPeer, timers: BfdTimers) -> Result<(), BfdError> {
        self.ask(|tx| Command::SetTimers(peer, timers, tx)).await
    }
}

/// Randomness for discriminators, source ports and jitter seeds, drawn at
/// the I/O edge (the session itself is deterministic).
fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

struct Entry {
    peer: BfdPeer,
    session: Session,
    tx: UdpSocket,
    status: watch::Sender<BfdState>,
    /// Set by remove: the session is AdminDown and goes at this time.
    remove_at: Option<Duration>,
}

impl Entry {
    fn publish(&self) {
        let s = self.session.status();
        self.status.send_if_modified(|b| {
            let next = BfdState {
                state: s.state,
                remote_state: s.remote_state,
                diag: s.local_diag,
                local_discr: s.local_discr,
                remote_discr: s.remote_discr,
                tx_interval: s.tx_interval,
                detection_time: s.detection_time,
                last_down: b.last_down,
                downs: b.downs,
                failures: b.failures,
                transitions: b.transitions,
            };
            if *b == next {
                false
            } else {
                *b = next;
                true
            }
        });
    }

    fn deadline(&self) -> Option<Duration> {
        match (self.session.next_deadline(), self.remove_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The owner task's state.
struct Sessions {
    origin: Instant,
    by_discr: HashMap<u32, Entry>,
    /// (family v6, multihop) of the receive sockets opened.
    listening: HashSet<(bool, bool)>,
    datagrams: mpsc::Sender<(bool, Datagram)>,
}

impl Sessions {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn find(&self, peer: &BfdPeer) -> Option<u32> {
        self.by_discr
            .iter()
            .find(|(_, e)| {
                e.peer.peer == peer.peer
                    && e.peer.local == peer.local
                    && e.peer.multihop() == peer.multihop()
            })
            .map(|(d, _)| *d)
    }

    /// Opens the receive socket for this family and hop kind, once.
    fn listen(&mut self, peer: &BfdPeer) -> Result<(), BfdError> {
        let key = (peer.peer.is_ipv6(), peer.multihop());
        if self.listening.contains(&key) {
            return Ok(());
        }
        let sock = socket::listen(key.0, peer.port()).map_err(|source| BfdError::Socket {
            what: "receive socket",
            peer: peer.peer,
            source,
        })?;
        let out = self.datagrams.clone();
        let multihop = key.1;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            loop {
                tokio::select! {
                    got = socket::recv(&sock, &mut buf) => match got {
                        Ok(d) => {
                            if out.send((multihop, d)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            warn!(error = %e, "BFD receive failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                    _ = out.closed() => return,
                }
            }
        });
        self.listening.insert(key);
        Ok(())
    }

    fn add(
        &mut self,
        peer: BfdPeer,
        timers: BfdTimers,
    ) -> Result<watch::Receiver<BfdState>, BfdError> {
        if let Some(d) = self.find(&peer) {
            if self.by_discr[&d].remove_at.is_none() {
                return Err(BfdError::Exists {
                    peer: peer.peer,
                    hops: peer.hops,
                });
            }
            // Still sending its AdminDown: replace it.
            self.by_discr.remove(&d);
        }
        self.listen(&peer)?;
        let r = random();
        let port = *socket::SOURCE_PORTS.start() + (r % (socket::SOURCE_PORTS.len() as u64)) as u16;
        let tx = socket::transmitter(peer.peer, peer.local, port).map_err(|source| {
            BfdError::Socket {
                what: "transmit socket",
                peer: peer.peer,
                source,
            }
        })?;
        let mut discr = (r >> 32) as u32;
        while discr == 0 || self.by_discr.contains_key(&discr) {
            discr = discr.wrapping_add(1);
        }
        let session = Session::new(timers, discr, random());
        let s = session.status();
        let (status, rx) = watch::channel(BfdState {
            state: s.state,
            remote_state: s.remote_state,
            diag: s.local_diag,
            local_discr: discr,
            remote_discr: 0,
            tx_interval: s.tx_interval,
            detection_time: s.detection_time,
            last_down: None,
            downs: 0,
            failures: 0,
            transitions: 0,
        });
        info!(peer = %peer.peer, local = ?peer.local, hops = ?peer.hops, discr, "BFD session added");
        self.by_discr.insert(
            discr,
            Entry {
                peer,
                session,
                tx,
                status,
                remove_at: None,
            },
        );
        let now = self.now();
        self.drive(discr, Input::Tick, now);
        Ok(rx)
    }

    fn remove(&mut self, peer: &BfdPeer) -> Result<(), BfdError> {
        let d = self
            .find(peer)
            .filter(|d| self.by_discr[d].remove_at.is_none())
            .ok_or(BfdError::NoSession { peer: peer.peer })?;
        let now = self.now();
        self.drive(d, Input::AdminDown, now);
        if let Some(e) = self.by_discr.get_mut(&d) {
            let st = e.session.status();
            // The remote detects in its Detect Mult × our TX interval at
            // most; keep telling AdminDown for that long (RFC 5880 §6.8.16).
            let linger = (st.tx_interval * e.session.timers().detect_mult as u32)
                .clamp(Duration::from_secs(1), Duration::from_secs(10));
            e.remove_at = Some(now + linger);
            info!(peer = %peer.peer, "BFD session removed (AdminDown)");
        }
        Ok(())
    }

    fn set_timers(&mut self, peer: &BfdPeer, timers: BfdTimers) -> Result<(), BfdError> {
        let d = self
            .find(peer)
            .ok_or(BfdError::NoSession { peer: peer.peer })?;
        let now = self.now();
        self.drive(d, Input::SetTimers(timers), now);
        Ok(())
    }

    /// Feeds one input to a session and carries out what it returns.
    fn drive(&mut self, discr: u32, input: Input, now: Duration) {
        let Some(e) = self.by_discr.get_mut(&discr) else {
            return;
        };
        let outputs = e.session.handle(input, now);
        for o in outputs {
            match o {
                Output::Send(p) => {
                    let wire = encode(&p);
                    let to = SocketAddr::new(e.peer.peer, e.peer.port());
                    if let Err(err) = e.tx.try_send_to(&wire, to) {
                        debug!(peer = %e.peer.peer, error = %err, "BFD send failed");
                    }
                }
                Output::StateChanged { from, to, diag } => {
                    let st = e.session.status();
                    let failed =
                        from == State::Up && path_failure(diag, st.remote_state, st.remote_diag);
                    info!(peer = %e.peer.peer, %from, %to, %diag, remote_diag = %st.remote_diag, path_failure = failed, "BFD session state");
                    e.status.send_modify(|b| {
                        b.transitions += 1;
                        if from == State::Up {
                            b.last_down = Some(diag);
                            b.downs += 1;
                            b.failures += u64::from(failed);
                        }
                    });
                }
                Output::Discarded(why) => {
                    debug!(peer = %e.peer.peer, ?why, "BFD packet discarded");
                }
            }
        }
        e.publish();
    }

    fn receive(&mut self, multihop: bool, d: Datagram) {
        let p = match decode(&d.payload) {
            Ok(p) => p,
            Err(err) => {
                debug!(from = %d.source, error = %err, "BFD packet discarded");
                return;
            }
        };
        let src = d.source.ip();
        let discr = if p.your_discr != 0 {
            Some(p.your_discr).filter(|x| {
                self.by_discr
                    .get(x)
                    .is_some_and(|e| e.peer.peer == src && e.peer.multihop() == multihop)
            })
        } else {
            self.by_discr
                .iter()
                .find(|(_, e)| {
                    e.peer.peer == src
                        && e.peer.multihop() == multihop
                        && (e.peer.local.is_none() || e.peer.local == d.local)
                })
                .map(|(x, _)| *x)
        };
        let Some(discr) = discr else {
            debug!(from = %d.source, your = p.your_discr, "BFD packet for no session");
            return;
        };
        let min_ttl = self.by_discr[&discr].peer.min_ttl();
        // GTSM (RFC 5881 §5): without authentication, TTL 255 only.
        if d.ttl.is_none_or(|t| t < min_ttl) {
            debug!(from = %d.source, ttl = ?d.ttl, min_ttl, "BFD packet discarded: TTL");
            return;
        }
        let now = self.now();
        self.drive(discr, Input::Received(p), now);
    }

    fn tick(&mut self) {
        let now = self.now();
        let due: Vec<u32> = self
            .by_discr
            .iter()
            .filter(|(_, e)| e.deadline().is_some_and(|t| t <= now))
            .map(|(d, _)| *d)
            .collect();
        for d in due {
            if self.by_discr[&d].remove_at.is_some_and(|t| t <= now) {
                self.by_discr.remove(&d);
                continue;
            }
            self.drive(d, Input::Tick, now);
        }
    }

    fn next_deadline(&self) -> Option<Duration> {
        self.by_discr.values().filter_map(Entry::deadline).min()
    }
}

async fn run(mut commands: mpsc::Receiver<Command>) {
    let (dtx, mut datagrams) = mpsc::channel(256);
    let mut s = Sessions {
        origin: Instant::now(),
        by_discr: HashMap::new(),
        listening: HashSet::new(),
        datagrams: dtx,
    };
    loop {
        let wake = s
            .next_deadline()
            .map_or(s.origin + Duration::from_secs(3600), |d| s.origin + d);
        tokio::select! {
            c = commands.recv() => match c {
                Some(Command::Add(peer, timers, reply)) => {
                    let _ = reply.send(s.add(peer, timers));
                }
                Some(Command::Remove(peer, reply)) => {
                    let _ = reply.send(s.remove(&peer));
                }
                Some(Command::SetTimers(peer, timers, reply)) => {
                    let _ = reply.send(s.set_timers(&peer, timers));
                }
                None => break,
            },
            Some((multihop, d)) = datagrams.recv() => s.receive(multihop, d),
            _ = tokio::time::sleep_until(wake) => s.tick(),
        }
    }
    // The handle is gone: tell every peer AdminDown once.
    let now = s.now();
    let discrs: Vec<u32> = s.by_discr.keys().copied().collect();
    for d in discrs {
        s.drive(d, Input::AdminDown, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_ttl_per_hop_kind() {
        let p = |hops| BfdPeer {
            peer: "10.0.0.1".parse().unwrap(),
            local: None,
            hops,
        };
        assert_eq!(p(Hops::Single).min_ttl(), 255);
        assert_eq!(p(Hops::Multi(1)).min_ttl(), 255);
        assert_eq!(p(Hops::Multi(2)).min_ttl(), 254);
        assert_eq!(p(Hops::Multi(255)).min_ttl(), 1);
        assert_eq!(p(Hops::Multi(0)).min_ttl(), 255);
        assert_eq!(
            (p(Hops::Single).port(), p(Hops::Multi(2)).port()),
            (3784, 4784)
        );
    }

    #[test]
    fn which_downs_are_path_failures() {
        use Diag::*;
        let cases = [
            (ControlDetectionTimeExpired, State::Up, None, true),
            (
                NeighborSignaledSessionDown,
                State::Down,
                ControlDetectionTimeExpired,
                true,
            ),
            (NeighborSignaledSessionDown, State::Down, PathDown, true),
            // A remote that restarted its session, or went AdminDown.
            (NeighborSignaledSessionDown, State::Down, None, false),
            (
                NeighborSignaledSessionDown,
                State::AdminDown,
                AdministrativelyDown,
                false,
            ),
            (
                NeighborSignaledSessionDown,
                State::AdminDown,
                PathDown,
                false,
            ),
            // pier's own AdminDown.
            (AdministrativelyDown, State::Up, None, false),
        ];
        for (local, rs, rd, want) in cases {
            assert_eq!(path_failure(local, rs, rd), want, "{local:?} {rs:?} {rd:?}");
        }
    }

    #[test]
    fn timers_from_config_keys() {
        assert_eq!(timers_ms(300, 300, 3), BfdTimers::default());
    }
}
