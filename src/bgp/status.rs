//! What the rest of pier sees of the BGP speaker: one [`PeerStatus`]
//! snapshot per peer on the [`StatusBoard`], and the set of peers that are
//! sent pier as next hop because they lack ADD-PATH receive (the route
//! actuator forwards their traffic; see `docs/architecture.md`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::watch;

/// A peer as `pier peers` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PeerStatus {
    pub peer: IpAddr,
    pub asn: u32,
    pub local_asn: u32,
    pub state: String,
    /// Unix seconds when the session came up.
    pub established_at: Option<u64>,
    pub uptime_s: Option<u64>,
    pub hold_time: Option<u16>,
    pub keepalive: Option<u16>,
    pub router_id: Option<Ipv4Addr>,
    /// Negotiated: families, `add-path(<family>)`, `4-octet-as`,
    /// `route-refresh`, `graceful-restart`, `extended-message`.
    pub capabilities: Vec<String>,
    pub prefixes_sent: usize,
    pub updates_sent: u64,
    pub updates_received: u64,
    /// Set when `next_hop = "nodes"` VIPs are sent with pier as next hop
    /// because the peer did not negotiate ADD-PATH.
    pub next_hop_self_fallback: bool,
    pub last_error: Option<String>,
    /// The peer has been tried at least once (for `/readyz`).
    pub attempted: bool,
    /// The BFD session to the peer, when `bfd = true`.
    pub bfd: Option<BfdStatus>,
}

/// A peer's BFD session as `pier peers` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BfdStatus {
    /// AdminDown, Down, Init or Up (RFC 5880 §4.1).
    pub state: String,
    pub remote_state: String,
    /// Configured: `bfd_min_rx_ms`, `bfd_min_tx_ms`, `bfd_multiplier`.
    pub min_rx_ms: u32,
    pub min_tx_ms: u32,
    pub multiplier: u8,
    /// Agreed transmit interval (before jitter), milliseconds.
    pub tx_interval_ms: u64,
    /// Detection time in force, milliseconds; 0 before the first packet.
    pub detection_time_ms: u64,
    /// Why the session last left Up (RFC 5880 §4.1 diagnostic).
    pub last_down: Option<String>,
    /// How many times it left Up.
    pub downs: u64,
}

impl PeerStatus {
    /// A peer not tried yet.
    pub fn idle(peer: IpAddr, asn: u32, local_asn: u32) -> PeerStatus {
        PeerStatus {
            peer,
            asn,
            local_asn,
            state: super::fsm::State::Idle.as_str().into(),
            established_at: None,
            uptime_s: None,
            hold_time: None,
            keepalive: None,
            router_id: None,
            capabilities: Vec::new(),
            prefixes_sent: 0,
            updates_sent: 0,
            updates_received: 0,
            next_hop_self_fallback: false,
            last_error: None,
            attempted: false,
            bfd: None,
        }
    }
}

/// Every peer's status, shared with the API and the OpenELB status writer
/// (peers come and go on reload), plus the peers in next-hop-self fallback.
#[derive(Clone)]
pub struct StatusBoard {
    peers: Arc<Mutex<BTreeMap<IpAddr, Arc<Mutex<PeerStatus>>>>>,
    fallback: watch::Sender<BTreeSet<IpAddr>>,
    /// Why the last configuration could not be applied in full, if so.
    note: watch::Sender<Option<String>>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        StatusBoard {
            peers: Default::default(),
            fallback: watch::channel(BTreeSet::new()).0,
            note: watch::channel(None).0,
        }
    }
}

impl StatusBoard {
    pub fn snapshot(&self) -> Vec<PeerStatus> {
        let Ok(map) = self.peers.lock() else {
            return Vec::new();
        };
        map.values()
            .filter_map(|s| s.lock().ok().map(|s| s.clone()))
            .collect()
    }

    /// Every peer has been tried at least once (for `/readyz`).
    pub fn all_attempted(&self) -> bool {
        self.snapshot().iter().all(|s| s.attempted)
    }

    /// The peers that are sent pier as next hop for `next_hop = "nodes"`
    /// VIPs; changes whenever one enters or leaves the fallback.
    pub fn fallback(&self) -> watch::Receiver<BTreeSet<IpAddr>> {
        self.fallback.subscribe()
    }

    /// Why the speaker's configuration was not applied in full (a listen
    /// change that needs a restart, a password file it cannot read...).
    pub fn note(&self) -> Option<String> {
        self.note.borrow().clone()
    }

    pub(super) fn set_note(&self, note: Option<String>) {
        self.note.send_if_modified(|n| {
            let changed = *n != note;
            *n = note;
            changed
        });
    }

    /// A peer's status, shared with its task (the speaker adds peers).
    pub fn insert(&self, peer: IpAddr, status: Arc<Mutex<PeerStatus>>) {
        if let Ok(mut b) = self.peers.lock() {
            b.insert(peer, status);
        }
    }

    pub(super) fn remove(&self, peer: IpAddr) {
        if let Ok(mut b) = self.peers.lock() {
            b.remove(&peer);
        }
        self.set_fallback(peer, false);
    }

    pub(super) fn set_fallback(&self, peer: IpAddr, on: bool) {
        self.fallback.send_if_modified(|set| {
            if on {
                set.insert(peer)
            } else {
                set.remove(&peer)
            }
        });
    }
}
