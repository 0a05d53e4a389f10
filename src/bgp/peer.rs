//! One peer's task: drives the pure [`Fsm`] over tokio TCP, owns the
//! peer's connections (and a racing incoming one, RFC 4271 §6.8), its
//! [`AdjRibOut`] fed from the engine's [`Desired`], and its status on the
//! [`StatusBoard`].
//!
//! ```text
//!  engine ──watch<Desired>──► peer task ──TCP──► router
//!                              ▲   ▲   ▲
//!  listener ─accepted stream───┘   │   └── reader task (frames) per connection
//!  BFD task ─watch<BfdState>───────┘   (peers with `bfd = true`)
//! ```
//!
//! With BFD (`docs/bfd.md`, `docs/bgp.md`): the session is not attempted
//! (no connection made, none accepted) until the BFD session is Up, so a
//! router never gets routes over a path BFD has not confirmed; when BFD
//! leaves Up because the path failed (`bfd::path_failure`: pier's
//! detection time expired, or the router's) the session goes down at once
//! with a Cease / BFD Down NOTIFICATION (RFC 9384) and waits for BFD Up
//! again (RFC 5882 §3.2). A router restarting its BFD session or going
//! AdminDown does not take BGP down.

use super::codec::{
    self, decode, describe_notification, encode, frame_len, AddPathMode, AfiSafi, Capability,
    Context, GracefulRestart, Message, Open, Update,
};
use super::error::BgpError;
use super::fsm::{
    collision_keeps_local, notif, Action, Event, Fsm, FsmConfig, Notification, State,
};
use super::rib::{AdjRibOut, PeerView};
use super::socket::{self, SocketOptions};
use super::status::BfdStatus;
use super::status::{PeerStatus, StatusBoard};
use crate::bfd::{BfdPeer, BfdState, Hops};
use crate::config::{BgpConfig, PeerBfd, PeerConfig};
use crate::metrics::Metrics;
use crate::model::{Desired, Family};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Everything a peer task needs, resolved from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSettings {
    pub address: IpAddr,
    pub port: u16,
    pub peer_asn: u32,
    pub local_asn: u32,
    pub router_id: Ipv4Addr,
    pub hold_time: u16,
    pub connect_retry: Duration,
    pub passive: bool,
    pub families: Vec<AfiSafi>,
    pub add_path: bool,
    /// Paths per VIP at most (`max_paths`).
    pub max_paths: u16,
    /// Only these nodes' next hops (`node_selector`); `None` = every node.
    pub node_selector: Option<crate::model::selector::Selector>,
    /// eBGP multihop TTL is set: next hops need not be on a shared network.
    pub multihop: bool,
    pub graceful_restart: Option<u16>,
    /// pier restarted within the restart time after a graceful stop (R bit).
    pub restarting: bool,
    pub socket: SocketOptions,
    /// The BFD session that gates this peer's session, if `bfd = true`.
    pub bfd: Option<BfdSettings>,
}

/// A peer's BFD session: where it runs and its configured timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BfdSettings {
    pub peer: BfdPeer,
    pub timers: PeerBfd,
}

impl BfdSettings {
    /// Single hop (RFC 5881) for a directly connected peer; multihop
    /// (RFC 5883) for `multihop_ttl` > 1, accepting any TTL: RFC 5883 §5
    /// leaves the TTL check to the operator, and BIRD 2.0.12 sends
    /// multihop BFD with its default TTL 64 (`docs/bfd.md`), so a hop
    /// count check would keep a BIRD session Down.
    fn from_config(p: &PeerConfig, timers: PeerBfd) -> BfdSettings {
        let hops = match p.multihop_ttl {
            Some(t) if t > 1 => Hops::Multi(255),
            _ => Hops::Single,
        };
        BfdSettings {
            peer: BfdPeer {
                peer: p.address,
                local: p.source_address,
                hops,
            },
            timers,
        }
    }

    pub fn wire_timers(&self) -> crate::bfd::BfdTimers {
        crate::bfd::timers_ms(
            self.timers.min_rx_ms.into(),
            self.timers.min_tx_ms.into(),
            self.timers.multiplier,
        )
    }
}

impl PeerSettings {
    pub fn from_config(
        bgp: &BgpConfig,
        p: &PeerConfig,
        router_id: Ipv4Addr,
        restarting: bool,
    ) -> Result<PeerSettings, BgpError> {
        let md5_key = match &p.password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| BgpError::Password {
                    peer: p.address,
                    path: path.display().to_string(),
                    source,
                })?;
                Some(text.trim_end_matches(['\n', '\r']).as_bytes().to_vec())
            }
            None => None,
        };
        let families = p
            .families
            .iter()
            .map(|f| match f {
                Family::V4 => AfiSafi::IPV4_UNICAST,
                Family::V6 => AfiSafi::IPV6_UNICAST,
            })
            .collect();
        Ok(PeerSettings {
            address: p.address,
            port: p.port,
            peer_asn: p.asn,
            local_asn: p.local_asn.unwrap_or(bgp.asn),
            router_id,
            hold_time: p.hold_time,
            connect_retry: Duration::from_secs(p.connect_retry_s.max(1).into()),
            passive: p.passive,
            families,
            add_path: p.add_path,
            max_paths: p.max_paths,
            node_selector: p.node_selector.clone(),
            multihop: p.multihop_ttl.is_some(),
            graceful_restart: bgp.graceful_restart.then_some(bgp.restart_time_s),
            restarting,
            socket: SocketOptions {
                source: p.source_address,
                // eBGP without `multihop_ttl`: directly connected, TTL 1
                // (docs/configuration.md); iBGP: the system's default.
                ttl: p
                    .multihop_ttl
                    .or((p.local_asn.unwrap_or(bgp.asn) != p.asn).then_some(1)),
                gtsm_hops: p.gtsm.then(|| p.multihop_ttl.unwrap_or(1)),
                md5_key,
            },
            bfd: p.bfd.map(|t| BfdSettings::from_config(p, t)),
        })
    }

    fn open(&self) -> Open {
        let mut caps: Vec<Capability> = self
            .families
            .iter()
            .map(|f| Capability::Multiprotocol(*f))
            .collect();
        caps.push(Capability::RouteRefresh);
        if self.add_path {
            caps.push(Capability::AddPath(
                self.families
                    .iter()
                    .map(|f| (*f, AddPathMode::Send))
                    .collect(),
            ));
        }
        if let Some(t) = self.graceful_restart {
            caps.push(Capability::GracefulRestart(GracefulRestart {
                restarted: self.restarting,
                notification: false,
                restart_time: t.min(4095),
                // Forwarding survives a pier restart: the routers forward
                // to nodes (or pier's kernel routes stay).
                families: self.families.iter().map(|f| (*f, true)).collect(),
            }));
        }
        caps.push(Capability::ExtendedMessage);
        Open::new(self.local_asn, self.hold_time, self.router_id, caps)
    }
}

pub(super) enum Command {
    Incoming(TcpStream),
    /// The peer's BFD timers changed (the BFD session applies them with a
    /// Poll Sequence; the BGP session stays up).
    BfdTimers(PeerBfd),
    Stop {
        graceful: bool,
        done: oneshot::Sender<()>,
    },
}

/// What a reader task reports.
enum Read {
    Frame(Vec<u8>),
    Bad(codec::WireError),
    Closed(String),
}

struct Conn {
    id: u64,
    writer: OwnedWriteHalf,
    reader: JoinHandle<()>,
    outgoing: bool,
    local: SocketAddr,
    /// Their OPEN, once received.
    open: Option<Open>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

pub(super) struct PeerTask {
    s: PeerSettings,
    fsm: Fsm,
    conn: Option<Conn>,
    /// An incoming connection racing `conn` (RFC 4271 §6.8).
    second: Option<Conn>,
    dial: Option<JoinHandle<std::io::Result<TcpStream>>>,
    next_conn: u64,
    reads_tx: mpsc::UnboundedSender<(u64, Read)>,
    reads: mpsc::UnboundedReceiver<(u64, Read)>,
    commands: mpsc::Receiver<Command>,
    desired: watch::Receiver<Arc<Desired>>,
    rib: Option<AdjRibOut>,
    ctx_in: Context,
    ctx_out: Context,
    status: Arc<Mutex<PeerStatus>>,
    board: StatusBoard,
    metrics: Option<Metrics>,
    origin: Instant,
    up_since: Option<Instant>,
    fallback_logged: bool,
    /// End-of-RIB waits for the engine's first plan: sent before it, an
    /// empty table would make a graceful-restart helper flush the routes
    /// it holds for us (RFC 4724 §4.1: EoR after the initial update).
    eor_pending: bool,
    /// The BFD session gating this peer (`bfd = true`).
    bfd: Option<watch::Receiver<BfdState>>,
    /// The BFD task dropped the session (pier is stopping): stop watching.
    bfd_closed: bool,
    /// `failures` and `transitions` of the last [`BfdState`] seen (a
    /// failure between two reads of the `watch` is still noticed and
    /// counted), and whether it was Up.
    bfd_seen: (u64, u64, bool),
}

impl PeerTask {
    pub(super) fn new(
        s: PeerSettings,
        commands: mpsc::Receiver<Command>,
        desired: watch::Receiver<Arc<Desired>>,
        status: Arc<Mutex<PeerStatus>>,
        board: StatusBoard,
        metrics: Option<Metrics>,
        bfd: Option<watch::Receiver<BfdState>>,
    ) -> PeerTask {
        let fsm = Fsm::new(FsmConfig {
            local_asn: s.local_asn,
            peer_asn: Some(s.peer_asn),
            router_id: s.router_id,
            hold_time: s.hold_time,
            connect_retry: s.connect_retry,
            connect_retry_max: (s.connect_retry * 8)
                .max(Duration::from_secs(60))
                .min(Duration::from_secs(300)),
            passive: s.passive,
        });
        let (reads_tx, reads) = mpsc::unbounded_channel();
        PeerTask {
            s,
            fsm,
            conn: None,
            second: None,
            dial: None,
            next_conn: 0,
            reads_tx,
            reads,
            commands,
            desired,
            rib: None,
            ctx_in: Context::default(),
            ctx_out: Context::default(),
            status,
            board,
            metrics,
            origin: Instant::now(),
            up_since: None,
            fallback_logged: false,
            eor_pending: false,
            bfd,
            bfd_closed: false,
            bfd_seen: (0, 0, false),
        }
    }

    /// BFD allows the session: not configured, or Up.
    fn bfd_up(&self) -> bool {
        self.bfd
            .as_ref()
            .is_none_or(|r| r.borrow().state == crate::bfd::State::Up)
    }

    /// The BFD session changed: publish it, take the BGP session down on a
    /// path failure (even if BFD is Up again by now), start it when BFD
    /// came Up.
    async fn on_bfd(&mut self, open: bool) {
        let Some(rx) = self.bfd.as_mut() else { return };
        if !open {
            self.bfd_closed = true;
            return;
        }
        let st = rx.borrow_and_update().clone();
        let failed = st.failures > self.bfd_seen.0;
        let transitions = st.transitions.saturating_sub(self.bfd_seen.1);
        let up = st.state == crate::bfd::State::Up;
        let came_up = up && (failed || !self.bfd_seen.2);
        self.bfd_seen = (st.failures, st.transitions, up);
        if let Some(m) = &self.metrics {
            let l = m.peer(&self.label());
            m.bfd_session_up.get_or_create(&l).set(i64::from(up));
            m.bfd_transitions.get_or_create(&l).inc_by(transitions);
        }
        let timers = self.s.bfd.as_ref().map(|b| b.timers).unwrap_or_default();
        self.set_status(|s| s.bfd = Some(bfd_status(&st, timers)));
        // Only a path failure takes the session down; a remote restarting
        // its BFD session or going AdminDown does not (`bfd::path_failure`).
        if failed {
            let acts = self.fsm.handle(self.now(), Event::BfdDown);
            if !acts.is_empty() {
                info!(peer = %self.label(), bfd = %st.state, "BFD path failure: taking the BGP session down");
            }
            self.act(acts).await;
        }
        if came_up && self.fsm.state() == State::Idle {
            info!(peer = %self.label(), "BFD Up: starting the BGP session");
            let acts = self.fsm.handle(self.now(), Event::Start);
            self.act(acts).await;
        }
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn label(&self) -> String {
        self.s.address.to_string()
    }

    pub(super) async fn run(mut self) {
        if let Some(rx) = &self.bfd {
            let st = rx.borrow().clone();
            self.bfd_seen = (
                st.failures,
                st.transitions,
                st.state == crate::bfd::State::Up,
            );
            let timers = self.s.bfd.as_ref().map(|b| b.timers).unwrap_or_default();
            self.set_status(|s| {
                s.bfd = Some(bfd_status(&st, timers));
                s.last_error = Some("waiting for BFD Up".into());
                s.attempted = true;
            });
        }
        if self.bfd_up() {
            let acts = self.fsm.handle(self.now(), Event::Start);
            self.act(acts).await;
        }
        loop {
            let deadline = self
                .fsm
                .next_deadline()
                .map(|d| tokio::time::Instant::from_std(self.origin + d));
            let sleep = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let bfd = (!self.bfd_closed).then_some(self.bfd.as_mut()).flatten();
            let bfd_changed = async move {
                match bfd {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let dialing = &mut self.dial;
            let dial = async move {
                match dialing.as_mut() {
                    Some(h) => h.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Incoming(stream)) => self.incoming(stream).await,
                    Some(Command::BfdTimers(timers)) => {
                        if let Some(b) = self.s.bfd.as_mut() {
                            b.timers = timers;
                        }
                        if let Some(rx) = &self.bfd {
                            let st = rx.borrow().clone();
                            self.set_status(|s| s.bfd = Some(bfd_status(&st, timers)));
                        }
                    }
                    Some(Command::Stop { graceful, done }) => {
                        self.stop(graceful).await;
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        self.stop(false).await;
                        return;
                    }
                },
                Some((id, read)) = self.reads.recv() => self.read(id, read).await,
                open = bfd_changed => self.on_bfd(open).await,
                res = dial => {
                    self.dial = None;
                    let res = res.unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
                    self.dialed(res).await;
                }
                _ = sleep => {
                    // A retry waits for BFD Up like the first attempt.
                    let acts = if self.fsm.state() == State::Idle && !self.bfd_up() {
                        self.fsm.handle(self.now(), Event::BfdDown)
                    } else {
                        self.fsm.tick(self.now())
                    };
                    self.act(acts).await;
                }
                changed = self.desired.changed(), if self.rib.is_some() => {
                    if changed.is_ok() {
                        self.send_changes().await;
                        if self.eor_pending && self.desired.borrow().generation > 0 {
                            self.eor_pending = false;
                            self.send_end_of_rib().await;
                        }
                    }
                }
            }
        }
    }

    fn attach(&mut self, stream: TcpStream, outgoing: bool) -> Conn {
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
        let (mut rd, writer) = stream.into_split();
        let id = self.next_conn;
        self.next_conn += 1;
        let tx = self.reads_tx.clone();
        let reader = tokio::spawn(async move {
            let mut buf: Vec<u8> = Vec::with_capacity(8192);
            let mut chunk = vec![0u8; 65536];
            loop {
                // Frame everything buffered before reading more.
                loop {
                    match frame_len(&buf, codec::MAX_EXTENDED_LEN) {
                        Ok(Some(len)) if buf.len() >= len => {
                            let frame: Vec<u8> = buf.drain(..len).collect();
                            if tx.send((id, Read::Frame(frame))).is_err() {
                                return;
                            }
                        }
                        Ok(_) => break,
                        Err(e) => {
                            let _ = tx.send((id, Read::Bad(e)));
                            return;
                        }
                    }
                }
                match rd.read(&mut chunk).await {
                    Ok(0) => {
                        let _ = tx.send((id, Read::Closed("connection closed by peer".into())));
                        return;
                    }
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) => {
                        let _ = tx.send((id, Read::Closed(e.to_string())));
                        return;
                    }
                }
            }
        });
        Conn {
            id,
            writer,
            reader,
            outgoing,
            local,
            open: None,
        }
    }

    async fn incoming(&mut self, stream: TcpStream) {
        let v6 = self.s.address.is_ipv6();
        if let Err(e) = socket::apply_ttl(&stream, v6, &self.s.socket) {
            warn!(peer = %self.label(), error = %e, "cannot set TTL on the accepted connection");
        }
        let _ = stream.set_nodelay(true);
        match self.fsm.state() {
            State::Idle if self.s.passive || self.fsm.last_error.is_some() || !self.bfd_up() => {
                // Backing off, or BFD not Up: the FSM refuses; let the
                // peer retry.
                drop(stream);
            }
            State::Connect | State::Active | State::Idle => {
                if let Some(d) = self.dial.take() {
                    d.abort();
                }
                if self.fsm.state() == State::Idle {
                    let acts = self.fsm.handle(self.now(), Event::Start);
                    self.act_no_dial(acts).await;
                }
                let conn = self.attach(stream, false);
                self.conn = Some(conn);
                let acts = self.fsm.handle(self.now(), Event::TcpConnected);
                self.act(acts).await;
            }
            State::OpenSent | State::OpenConfirm if self.second.is_none() => {
                let mut conn = self.attach(stream, false);
                let open = self.s.open();
                if write_msg(&mut conn.writer, &Message::Open(open), &Context::default())
                    .await
                    .is_ok()
                {
                    self.second = Some(conn);
                    // Their OPEN on the first connection already arrived:
                    // decide now.
                    if let Some(remote) = self
                        .conn
                        .as_ref()
                        .and_then(|c| c.open.as_ref())
                        .map(|o| o.router_id)
                    {
                        self.resolve_collision(remote, false, None).await;
                    }
                }
            }
            _ => {
                // Established (or already racing): the new connection loses.
                let mut conn = self.attach(stream, false);
                let n =
                    Notification::new(notif::CEASE, notif::CEASE_CONNECTION_COLLISION, Vec::new());
                let _ = write_msg(
                    &mut conn.writer,
                    &Message::Notification(n),
                    &Context::default(),
                )
                .await;
            }
        }
    }

    /// Keeps one of `conn` and `second` (RFC 4271 §6.8). `open_on_second`:
    /// the OPEN that revealed `remote` came on `second` (then `open` holds it).
    async fn resolve_collision(
        &mut self,
        remote: Ipv4Addr,
        open_on_second: bool,
        open: Option<Open>,
    ) {
        let Some(first) = self.conn.as_ref() else {
            return;
        };
        let keep_local = collision_keeps_local(self.s.router_id, remote);
        // Keep the connection initiated by the side with the higher id.
        let keep_first = first.outgoing == keep_local;
        let cease = Message::Notification(Notification::new(
            notif::CEASE,
            notif::CEASE_CONNECTION_COLLISION,
            Vec::new(),
        ));
        if keep_first {
            if let Some(mut second) = self.second.take() {
                let _ = write_msg(&mut second.writer, &cease, &Context::default()).await;
            }
            debug!(peer = %self.label(), "connection collision: kept the first connection");
        } else {
            if let Some(mut first) = self.conn.take() {
                let _ = write_msg(&mut first.writer, &cease, &Context::default()).await;
            }
            self.conn = self.second.take();
            debug!(peer = %self.label(), "connection collision: kept the second connection");
            // The FSM is in OpenSent or OpenConfirm for the first
            // connection. The second has sent its OPEN; if the first had
            // already answered with a KEEPALIVE, start over on the second.
            if self.fsm.state() == State::OpenConfirm {
                self.restart_fsm_on_conn().await;
            }
        }
        if open_on_second && !keep_first {
            if let Some(open) = open {
                self.on_open(open).await;
            }
        }
    }

    /// Moves the FSM back to OpenSent for the current connection (after a
    /// collision swapped connections).
    async fn restart_fsm_on_conn(&mut self) {
        let now = self.now();
        let mut fsm = Fsm::new(self.fsm.config().clone());
        fsm.handle(now, Event::Start);
        fsm.handle(now, Event::TcpConnected);
        self.fsm = fsm;
    }

    async fn dialed(&mut self, res: std::io::Result<TcpStream>) {
        self.set_status(|s| s.attempted = true);
        match res {
            Ok(stream) if self.conn.is_none() && self.fsm.state() == State::Connect => {
                let conn = self.attach(stream, true);
                self.conn = Some(conn);
                let acts = self.fsm.handle(self.now(), Event::TcpConnected);
                self.act(acts).await;
            }
            Ok(_) => {}
            Err(e) => {
                let why = format!("connect to {}:{}: {e}", self.s.address, self.s.port);
                debug!(peer = %self.label(), "{why}");
                self.set_status(|s| s.last_error = Some(why.clone()));
                let acts = self.fsm.handle(self.now(), Event::TcpFailed(why));
                self.act(acts).await;
            }
        }
    }

    async fn read(&mut self, id: u64, read: Read) {
        let on_second = self.second.as_ref().is_some_and(|c| c.id == id);
        let on_first = self.conn.as_ref().is_some_and(|c| c.id == id);
        if !on_first && !on_second {
            return; // a connection already dropped
        }
        if on_second {
            match read {
                Read::Frame(frame) => match decode(&frame, &self.ctx_in) {
                    Ok(d) => match d.message {
                        Message::Open(open) => {
                            let remote = open.router_id;
                            if let Some(c) = self.second.as_mut() {
                                c.open = Some(open.clone());
                            }
                            self.resolve_collision(remote, true, Some(open)).await;
                        }
                        _ => self.second = None,
                    },
                    Err(_) => self.second = None,
                },
                _ => self.second = None,
            }
            return;
        }
        let now = self.now();
        let event = match read {
            Read::Closed(why) => Event::TcpFailed(why),
            Read::Bad(e) => {
                warn!(peer = %self.label(), error = %e, "malformed message");
                Event::Malformed(e.notification())
            }
            Read::Frame(frame) => match decode(&frame, &self.ctx_in) {
                Err(e) => {
                    warn!(peer = %self.label(), error = %e, "malformed message");
                    Event::Malformed(e.notification())
                }
                Ok(d) => {
                    for note in &d.notes {
                        warn!(peer = %self.label(), "UPDATE error handled per RFC 7606: {note}");
                    }
                    match d.message {
                        Message::Open(open) => {
                            if let Some(c) = self.conn.as_mut() {
                                c.open = Some(open.clone());
                            }
                            if self.second.is_some() {
                                let remote = open.router_id;
                                let keep_local = collision_keeps_local(self.s.router_id, remote);
                                let keep_first =
                                    self.conn.as_ref().is_some_and(|c| c.outgoing) == keep_local;
                                self.resolve_collision(remote, false, None).await;
                                if !keep_first {
                                    // This OPEN came on the loser; the FSM
                                    // waits for the winner's.
                                    return;
                                }
                            }
                            self.on_open(open).await;
                            return;
                        }
                        Message::Update(_) => {
                            self.set_status(|s| s.updates_received += 1);
                            Event::Update
                        }
                        Message::Keepalive => Event::Keepalive,
                        Message::Notification(n) => {
                            let text = describe_notification(&n);
                            warn!(peer = %self.label(), "NOTIFICATION received: {text}");
                            self.set_status(|s| s.last_error = Some(format!("received: {text}")));
                            Event::Notification(n)
                        }
                        Message::RouteRefresh(rr) => {
                            let acts = self.fsm.handle(now, Event::RouteRefresh);
                            self.act(acts).await;
                            if self.fsm.state() == State::Established {
                                info!(peer = %self.label(), family = %rr.family, "route refresh: re-sending the table");
                                self.send_full(Some(rr.family)).await;
                            }
                            return;
                        }
                    }
                }
            },
        };
        let acts = self.fsm.handle(now, event);
        self.act(acts).await;
    }

    async fn on_open(&mut self, open: Open) {
        let acts = self.fsm.handle(self.now(), Event::Open(open.peer_open()));
        if self.fsm.state() == State::OpenConfirm {
            let mine = self.s.open();
            let four = open.four_octet_as();
            let families: Vec<AfiSafi> = self
                .s
                .families
                .iter()
                .copied()
                .filter(|f| open.families().contains(f))
                .collect();
            let ext = open.extended_message();
            // Path ids we send: we offered Send, they must offer Receive.
            let send_ap: Vec<AfiSafi> = if self.s.add_path {
                families
                    .iter()
                    .copied()
                    .filter(|f| open.add_path(*f).is_some_and(|m| m.receives()))
                    .collect()
            } else {
                Vec::new()
            };
            // Path ids we receive: they send, we did not offer Receive.
            self.ctx_in = Context {
                four_octet_as: four,
                add_path: Vec::new(),
                extended_message: ext,
            };
            self.ctx_out = Context {
                four_octet_as: four,
                add_path: send_ap.clone(),
                extended_message: ext,
            };
            let mut caps: Vec<String> = families.iter().map(|f| f.to_string()).collect();
            caps.extend(send_ap.iter().map(|f| format!("add-path({f})")));
            if four {
                caps.push("4-octet-as".into());
            }
            if open.route_refresh() && mine.route_refresh() {
                caps.push("route-refresh".into());
            }
            if open.graceful_restart().is_some() && self.s.graceful_restart.is_some() {
                caps.push("graceful-restart".into());
            }
            if ext {
                caps.push("extended-message".into());
            }
            let local = self.conn.as_ref().map(|c| c.local.ip());
            let view = PeerView {
                local_asn: self.s.local_asn,
                ebgp: self.s.local_asn != self.s.peer_asn,
                families,
                add_path: send_ap,
                max_paths: self.s.max_paths.into(),
                self_v4: match (self.s.socket.source, local) {
                    (Some(IpAddr::V4(a)), _) | (_, Some(IpAddr::V4(a))) => Some(a),
                    _ => None,
                },
                self_v6: match (self.s.socket.source, local) {
                    (Some(IpAddr::V6(a)), _) | (_, Some(IpAddr::V6(a))) if !a.is_unspecified() => {
                        Some(a)
                    }
                    _ => None,
                },
                node_selector: self.s.node_selector.clone(),
                connected: self.connected_prefixes(local),
            };
            self.rib = Some(AdjRibOut::new(view));
            let rid = open.router_id;
            self.set_status(|s| {
                s.capabilities = caps;
                s.router_id = Some(rid);
            });
        }
        self.act(acts).await;
    }

    /// A single-hop eBGP peer can use only next hops on a network it shares
    /// with pier: the prefixes of the interface of the session's local
    /// address (src/bgp/connected.rs). `None` (no limit) for multihop and
    /// iBGP peers, and when the interface cannot be read (logged).
    fn connected_prefixes(&self, local: Option<IpAddr>) -> Option<Vec<ipnet::IpNet>> {
        if self.s.multihop || self.s.local_asn == self.s.peer_asn {
            return None;
        }
        let local = local?;
        match super::connected::prefixes_sharing(local) {
            Ok(nets) if !nets.is_empty() => Some(nets),
            Ok(_) => {
                warn!(peer = %self.s.address, %local, "no interface holds the session's local address; node next hops are sent unfiltered");
                None
            }
            Err(e) => {
                warn!(peer = %self.s.address, %local, error = %e, "cannot read the interface prefixes; node next hops are sent unfiltered");
                None
            }
        }
    }

    async fn act_no_dial(&mut self, acts: Vec<Action>) {
        let acts: Vec<Action> = acts.into_iter().filter(|a| *a != Action::Connect).collect();
        self.act(acts).await;
    }

    async fn act(&mut self, acts: Vec<Action>) {
        for a in acts {
            match a {
                Action::Connect => {
                    if let Some(d) = self.dial.take() {
                        d.abort();
                    }
                    let addr = SocketAddr::new(self.s.address, self.s.port);
                    let opts = self.s.socket.clone();
                    self.dial = Some(tokio::spawn(
                        async move { socket::connect(addr, &opts).await },
                    ));
                }
                Action::Disconnect => {
                    if let Some(d) = self.dial.take() {
                        d.abort();
                    }
                    if let Some(mut c) = self.conn.take() {
                        let _ = c.writer.shutdown().await;
                    }
                    self.second = None;
                }
                Action::SendOpen => {
                    let open = self.s.open();
                    self.send(&Message::Open(open)).await;
                }
                Action::SendKeepalive => self.send(&Message::Keepalive).await,
                Action::SendNotification(n) => {
                    warn!(peer = %self.label(), "sending NOTIFICATION: {}", describe_notification(&n));
                    // Bounded: after a BFD Down the path may be dead and
                    // the send buffer full; the connection closes anyway.
                    let msg = Message::Notification(n);
                    let send = self.send(&msg);
                    if tokio::time::timeout(Duration::from_millis(200), send)
                        .await
                        .is_err()
                    {
                        debug!(peer = %self.label(), "NOTIFICATION not written within 200 ms");
                    }
                }
                Action::Established {
                    hold_time,
                    keepalive,
                } => {
                    self.up_since = Some(Instant::now());
                    let at = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    info!(peer = %self.label(), hold_time, keepalive, "BGP session established");
                    self.set_status(|s| {
                        s.state = State::Established.as_str().into();
                        s.established_at = Some(at);
                        s.hold_time = Some(hold_time);
                        s.keepalive = Some(keepalive);
                        s.last_error = None;
                    });
                    if let Some(m) = &self.metrics {
                        m.bgp_session_up
                            .get_or_create(&m.peer(&self.label()))
                            .set(1);
                    }
                    self.send_changes().await;
                    if self.desired.borrow().generation > 0 {
                        self.send_end_of_rib().await;
                    } else {
                        self.eor_pending = true;
                    }
                }
                Action::Down(why) => {
                    warn!(peer = %self.label(), reason = %why, "BGP session down");
                    self.rib = None;
                    self.up_since = None;
                    self.fallback_logged = false;
                    self.eor_pending = false;
                    self.ctx_in = Context::default();
                    self.ctx_out = Context::default();
                    self.set_status(|s| {
                        s.established_at = None;
                        s.hold_time = None;
                        s.keepalive = None;
                        s.prefixes_sent = 0;
                        s.next_hop_self_fallback = false;
                        s.last_error = Some(why.clone());
                    });
                    self.board.set_fallback(self.s.address, false);
                    if let Some(m) = &self.metrics {
                        let l = m.peer(&self.label());
                        m.bgp_session_up.get_or_create(&l).set(0);
                        m.bgp_prefixes_announced.get_or_create(&l).set(0);
                    }
                }
            }
        }
        let state = self.fsm.state();
        let attempted =
            !matches!(state, State::Idle | State::Connect) || self.fsm.last_error.is_some();
        self.set_status(|s| {
            s.state = state.as_str().into();
            s.attempted |= attempted;
        });
    }

    async fn send(&mut self, msg: &Message) {
        let ctx = self.ctx_out.clone();
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if let Err(e) = write_msg(&mut conn.writer, msg, &ctx).await {
            let why = format!("write failed: {e}");
            let acts = self.fsm.handle(self.now(), Event::TcpFailed(why));
            Box::pin(self.act(acts)).await;
            return;
        }
        self.fsm.sent_message(self.now());
    }

    async fn send_raw(&mut self, msgs: Vec<Vec<u8>>) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        let n = msgs.len() as u64;
        // Write in batches so a big table goes out in few syscalls.
        let mut batch = Vec::with_capacity(64 * 1024);
        for m in msgs {
            batch.extend_from_slice(&m);
            if batch.len() >= 60 * 1024 {
                if let Err(e) = conn.writer.write_all(&batch).await {
                    let acts = self
                        .fsm
                        .handle(self.now(), Event::TcpFailed(format!("write failed: {e}")));
                    Box::pin(self.act(acts)).await;
                    return false;
                }
                batch.clear();
            }
        }
        if !batch.is_empty() {
            if let Err(e) = conn.writer.write_all(&batch).await {
                let acts = self
                    .fsm
                    .handle(self.now(), Event::TcpFailed(format!("write failed: {e}")));
                Box::pin(self.act(acts)).await;
                return false;
            }
        }
        self.fsm.sent_message(self.now());
        self.set_status(|s| s.updates_sent += n);
        if let Some(m) = &self.metrics {
            m.bgp_updates_sent
                .get_or_create(&m.peer(&self.label()))
                .inc_by(n);
        }
        true
    }

    async fn send_changes(&mut self) {
        if self.fsm.state() != State::Established {
            return;
        }
        let desired = self.desired.borrow_and_update().clone();
        let Some(rib) = self.rib.as_mut() else { return };
        let changes = rib.update(&desired);
        if changes.is_empty() {
            return;
        }
        let encoded = rib.encode(&changes, &self.ctx_out);
        let (len, fallback) = (rib.len(), rib.fallback_self);
        match encoded {
            Ok(msgs) => {
                debug!(
                    peer = %self.label(),
                    announced = changes.announce.len(),
                    withdrawn = changes.withdraw.len(),
                    messages = msgs.len(),
                    "sending changes"
                );
                for (n, a) in changes.announce.iter().take(32) {
                    info!(peer = %self.label(), prefix = %n.prefix, next_hop = %a.next_hop, path_id = ?n.path_id, "announced");
                }
                for n in changes.withdraw.iter().take(32) {
                    info!(peer = %self.label(), prefix = %n.prefix, path_id = ?n.path_id, "withdrawn");
                }
                if self.send_raw(msgs).await {
                    self.after_send(len, fallback);
                }
            }
            Err(e) => warn!(peer = %self.label(), error = %e, "cannot encode UPDATEs"),
        }
    }

    fn after_send(&mut self, len: usize, fallback: bool) {
        if fallback && !self.fallback_logged {
            self.fallback_logged = true;
            warn!(
                peer = %self.label(),
                "peer did not negotiate ADD-PATH receive: next_hop = \"nodes\" VIPs are sent with pier as next hop"
            );
        }
        self.set_status(|s| {
            s.prefixes_sent = len;
            s.next_hop_self_fallback = fallback;
        });
        self.board.set_fallback(self.s.address, fallback);
        if let Some(m) = &self.metrics {
            m.bgp_prefixes_announced
                .get_or_create(&m.peer(&self.label()))
                .set(len as i64);
        }
    }

    async fn send_full(&mut self, family: Option<AfiSafi>) {
        let Some(rib) = self.rib.as_ref() else { return };
        let mut changes = rib.full();
        if let Some(f) = family {
            changes.announce.retain(|(n, _)| n.family() == f);
        }
        match rib.encode(&changes, &self.ctx_out) {
            Ok(msgs) => {
                self.send_raw(msgs).await;
            }
            Err(e) => warn!(peer = %self.label(), error = %e, "cannot encode UPDATEs"),
        }
    }

    async fn send_end_of_rib(&mut self) {
        let Some(rib) = self.rib.as_ref() else { return };
        let fams = rib.view().families.clone();
        let mut msgs = Vec::new();
        for f in fams {
            if let Ok(m) = encode(&Message::Update(Update::end_of_rib(f)), &self.ctx_out) {
                msgs.push(m);
            }
        }
        self.send_raw(msgs).await;
    }

    async fn stop(&mut self, graceful: bool) {
        if let Some(d) = self.dial.take() {
            d.abort();
        }
        if graceful && self.s.graceful_restart.is_some() {
            // Close without NOTIFICATION: the routers keep the routes as
            // stale for the restart time (RFC 4724 §4.2).
            if let Some(mut c) = self.conn.take() {
                let _ = c.writer.shutdown().await;
            }
        } else {
            let acts = self.fsm.handle(self.now(), Event::Stop);
            self.act(acts).await;
        }
        if let Some(m) = &self.metrics {
            m.bgp_session_up
                .get_or_create(&m.peer(&self.label()))
                .set(0);
        }
    }

    fn set_status(&self, f: impl FnOnce(&mut PeerStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
            s.uptime_s = self.up_since.map(|t| t.elapsed().as_secs());
        }
    }
}

async fn write_msg(w: &mut OwnedWriteHalf, msg: &Message, ctx: &Context) -> std::io::Result<()> {
    let bytes = encode(msg, ctx).map_err(|e| std::io::Error::other(e.to_string()))?;
    w.write_all(&bytes).await
}

fn bfd_status(st: &BfdState, timers: PeerBfd) -> BfdStatus {
    BfdStatus {
        state: st.state.to_string(),
        remote_state: st.remote_state.to_string(),
        min_rx_ms: timers.min_rx_ms,
        min_tx_ms: timers.min_tx_ms,
        multiplier: timers.multiplier,
        tx_interval_ms: st.tx_interval.as_millis().try_into().unwrap_or(u64::MAX),
        detection_time_ms: st.detection_time.as_millis().try_into().unwrap_or(u64::MAX),
        last_down: st.last_down.map(|d| d.to_string()),
        downs: st.downs,
    }
}
