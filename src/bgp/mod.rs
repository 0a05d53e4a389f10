//! pier's BGP speaker: the pure FSM (`fsm`), the codec (`codec`), and the
//! session I/O and Adj-RIB-Out built on them.

pub use pier_bgp_wire as codec;
pub mod fsm;
pub mod rib;
pub mod socket;
pub mod speaker;
