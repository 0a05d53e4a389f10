//! The BGP speaker: one listener task per listen address handing accepted
//! connections to their peer, and one task per peer ([`super::peer`]).
//! [`Speaker::reconfigure`] diffs a new peer list against the running one.
//! The speaker is owned by one task, [`super::task`], which alone starts,
//! reconfigures and stops it. The speaker owns pier's one [`BfdHandle`]
//! (started with the first peer that has `bfd = true`): a peer added
//! adds its BFD session, a peer removed or changed removes it (AdminDown to
//! the router), and stopping the speaker drops the handle (one AdminDown
//! per session).

pub use super::error::BgpError;
use super::peer::{Command, PeerSettings, PeerTask};
use super::socket;
use super::status::{PeerStatus, StatusBoard};
use crate::bfd::BfdHandle;
use crate::config::BgpConfig;
use crate::metrics::Metrics;
use crate::model::Desired;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

struct Peer {
    settings: PeerSettings,
    commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

/// The running speaker.
pub struct Speaker {
    board: StatusBoard,
    peers: BTreeMap<IpAddr, Peer>,
    listeners: Vec<JoinHandle<()>>,
    desired: watch::Receiver<Arc<Desired>>,
    metrics: Option<Metrics>,
    directory: Option<Directory>,
    bfd: Option<BfdHandle>,
}

type Directory = Arc<Mutex<BTreeMap<IpAddr, mpsc::Sender<Command>>>>;

impl Speaker {
    /// Starts listeners (unless `listen = false`) and one task per peer.
    pub async fn start(
        bgp: &BgpConfig,
        router_id: Ipv4Addr,
        restarting: bool,
        desired: watch::Receiver<Arc<Desired>>,
        metrics: Option<Metrics>,
        board: StatusBoard,
    ) -> Result<Speaker, BgpError> {
        let mut settings = Vec::new();
        for p in &bgp.peers {
            settings.push(PeerSettings::from_config(bgp, p, router_id, restarting)?);
        }
        let directory: Directory = Arc::new(Mutex::new(BTreeMap::new()));
        let mut listeners = Vec::new();
        if bgp.listen {
            let addrs: Vec<IpAddr> = if bgp.listen_addresses.is_empty() {
                vec![
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                ]
            } else {
                bgp.listen_addresses.clone()
            };
            for ip in addrs {
                let addr = SocketAddr::new(ip, bgp.listen_port);
                let listener = match socket::listen(addr) {
                    Ok(l) => l,
                    // No IPv6 on this box: the IPv4 listener is enough.
                    Err(e) if ip.is_ipv6() && ip.is_unspecified() => {
                        debug!(%addr, error = %e, "no IPv6 BGP listener");
                        continue;
                    }
                    Err(source) => return Err(BgpError::Listen { addr, source }),
                };
                for s in &settings {
                    if let Some(key) = &s.socket.md5_key {
                        if s.address.is_ipv6() == ip.is_ipv6() {
                            socket::set_md5(&listener, s.address, key).map_err(|source| {
                                BgpError::Md5 {
                                    peer: s.address,
                                    addr,
                                    source,
                                }
                            })?;
                        }
                    }
                }
                info!(%addr, "listening for BGP");
                listeners.push(tokio::spawn(accept_loop(listener, directory.clone())));
            }
        }
        let mut speaker = Speaker {
            board,
            peers: BTreeMap::new(),
            listeners,
            desired,
            metrics,
            directory: None,
            bfd: None,
        };
        for s in settings {
            speaker.add_peer(s, &directory).await?;
        }
        // Keep the directory alive in the listeners only; peers added later
        // (reload) go through `reconfigure`.
        speaker.directory = Some(directory);
        Ok(speaker)
    }

    async fn add_peer(&mut self, s: PeerSettings, directory: &Directory) -> Result<(), BgpError> {
        let bfd = match &s.bfd {
            Some(b) => {
                let handle = self.bfd.get_or_insert_with(BfdHandle::spawn);
                let rx = handle
                    .add_session(b.peer.clone(), b.wire_timers())
                    .await
                    .map_err(|source| BgpError::Bfd {
                        peer: s.address,
                        source,
                    })?;
                Some(rx)
            }
            None => None,
        };
        let (tx, rx) = mpsc::channel(16);
        let status = Arc::new(Mutex::new(PeerStatus::idle(
            s.address,
            s.peer_asn,
            s.local_asn,
        )));
        if let Ok(mut d) = directory.lock() {
            d.insert(s.address, tx.clone());
        }
        self.board.insert(s.address, status.clone());
        let task = PeerTask::new(
            s.clone(),
            rx,
            self.desired.clone(),
            status.clone(),
            self.board.clone(),
            self.metrics.clone(),
            bfd,
        );
        let task = tokio::spawn(task.run());
        self.peers.insert(
            s.address,
            Peer {
                settings: s,
                commands: tx,
                task,
            },
        );
        Ok(())
    }

    /// Applies a reloaded configuration: peers whose settings did not change
    /// keep their sessions; changed ones restart; removed ones stop (with a
    /// Cease, withdrawing their routes).
    pub async fn reconfigure(
        &mut self,
        bgp: &BgpConfig,
        router_id: Ipv4Addr,
    ) -> Result<(), BgpError> {
        let mut wanted = BTreeMap::new();
        for p in &bgp.peers {
            let s = PeerSettings::from_config(bgp, p, router_id, false)?;
            wanted.insert(s.address, s);
        }
        // New BFD timers alone do not restart the BGP session: the BFD
        // session takes them with a Poll Sequence (RFC 5880 §6.8.3).
        for (a, p) in self.peers.iter_mut() {
            let Some(w) = wanted.get(a) else { continue };
            let (Some(new), Some(old)) = (&w.bfd, &p.settings.bfd) else {
                continue;
            };
            if new.timers == old.timers
                || !same_session(&with_bfd_timers(w, old.timers), &p.settings)
            {
                continue;
            }
            let Some(handle) = &self.bfd else { continue };
            match handle.set_timers(new.peer.clone(), new.wire_timers()).await {
                Ok(()) => {
                    info!(peer = %a, min_rx_ms = new.timers.min_rx_ms, min_tx_ms = new.timers.min_tx_ms, multiplier = new.timers.multiplier, "BFD timers changed; the BGP session stays up");
                    let _ = p.commands.send(Command::BfdTimers(new.timers)).await;
                    p.settings = w.clone();
                }
                Err(e) => {
                    warn!(peer = %a, error = %e, "cannot change BFD timers in place; restarting the session")
                }
            }
        }
        let gone: Vec<IpAddr> = self
            .peers
            .iter()
            .filter(|(a, p)| wanted.get(a).is_none_or(|w| !same_session(w, &p.settings)))
            .map(|(a, _)| *a)
            .collect();
        for a in gone {
            self.board.remove(a);
            if let Some(p) = self.peers.remove(&a) {
                info!(peer = %a, "peer removed or changed: stopping its session");
                let bfd = p.settings.bfd.clone();
                stop_peer(p, false).await;
                if let (Some(b), Some(handle)) = (bfd, &self.bfd) {
                    if let Err(e) = handle.remove_session(b.peer).await {
                        debug!(peer = %a, error = %e, "BFD session not removed");
                    }
                }
            }
            if let Some(d) = &self.directory {
                if let Ok(mut d) = d.lock() {
                    d.remove(&a);
                }
            }
        }
        let directory = self.directory.clone().unwrap_or_default();
        let mut first_error = None;
        for (a, s) in wanted {
            if !self.peers.contains_key(&a) {
                if let Err(e) = self.add_peer(s, &directory).await {
                    warn!("{e}");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Snapshots of every peer.
    pub fn status(&self) -> Vec<PeerStatus> {
        self.board.snapshot()
    }

    pub fn board(&self) -> StatusBoard {
        self.board.clone()
    }

    /// Stops every session. `graceful`: close the connections without a
    /// NOTIFICATION so routers that negotiated graceful restart keep the
    /// routes for the restart time; otherwise Cease / administrative
    /// shutdown, and routers withdraw.
    pub async fn shutdown(mut self, graceful: bool) {
        for l in &self.listeners {
            l.abort();
        }
        let peers = std::mem::take(&mut self.peers);
        let stops = peers.into_values().map(|p| stop_peer(p, graceful));
        futures::future::join_all(stops).await;
    }
}

fn same_session(a: &PeerSettings, b: &PeerSettings) -> bool {
    a == b
}

/// `s` with its BFD timers replaced (to compare everything else).
fn with_bfd_timers(s: &PeerSettings, timers: crate::config::PeerBfd) -> PeerSettings {
    let mut s = s.clone();
    if let Some(b) = s.bfd.as_mut() {
        b.timers = timers;
    }
    s
}

async fn stop_peer(p: Peer, graceful: bool) {
    let (done, wait) = oneshot::channel();
    if p.commands
        .send(Command::Stop { graceful, done })
        .await
        .is_ok()
    {
        let _ = tokio::time::timeout(Duration::from_secs(3), wait).await;
    }
    p.task.abort();
}

async fn accept_loop(listener: tokio::net::TcpListener, directory: Directory) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "BGP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ip = match from.ip() {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        let peer = directory.lock().ok().and_then(|d| d.get(&ip).cloned());
        match peer {
            Some(tx) => {
                if tx.try_send(Command::Incoming(stream)).is_err() {
                    debug!(peer = %ip, "peer task busy: connection dropped");
                }
            }
            None => debug!(from = %from, "BGP connection from an unconfigured address refused"),
        }
    }
}
