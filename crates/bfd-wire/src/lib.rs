//! pier's BFD: the Control packet codec (RFC 5880 §4.1, the reception
//! checks of §6.8.6) and the pure session state machine of asynchronous
//! mode (RFC 5880 §6). No pier dependency, no I/O, no clock: the socket
//! task lives in pier's `src/bfd/`. See `docs/bfd.md`.

mod packet;
mod session;

pub use packet::{
    decode, encode, Authentication, ControlPacket, DecodeError, Diag, State, HEADER_LEN,
    MULTIHOP_PORT, SINGLE_HOP_PORT, VERSION,
};
pub use session::{Discard, Input, Output, Session, SessionStatus, Timers, SLOW_TX};

#[cfg(test)]
mod tests;
