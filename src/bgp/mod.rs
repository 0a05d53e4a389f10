//! pier's BGP speaker: the pure FSM (`fsm`), the codec (`codec`), the pure
//! Adj-RIB-Out (`rib`), and the session I/O built on them: `socket`
//! (MD5, TTL, GTSM), `peer` (one peer's task), `speaker` (listeners and the
//! peer tasks), `status` (what the rest of pier reads) and `task` (the one
//! owner of the speaker and of its configuration).

pub use pier_bgp_wire as codec;
pub mod connected;
pub mod error;
pub mod fsm;
pub mod peer;
pub mod rib;
pub mod socket;
pub mod speaker;
pub mod status;
pub mod task;

pub use status::{PeerStatus, StatusBoard};
pub use task::{spawn, BgpHandle, BgpSpawn, EffectiveBgp};
