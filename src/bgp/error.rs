//! Why the speaker could not start or take a configuration.

use std::net::{IpAddr, SocketAddr};

/// Errors starting the speaker.
#[derive(Debug, thiserror::Error)]
pub enum BgpError {
    #[error("cannot listen for BGP on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("peer {peer}: cannot read password file {path}: {source}")]
    Password {
        peer: IpAddr,
        path: String,
        source: std::io::Error,
    },
    #[error("peer {peer}: cannot set TCP-MD5 on the listener {addr}: {source}")]
    Md5 {
        peer: IpAddr,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("peer {peer}: cannot start its BFD session: {source}")]
    Bfd {
        peer: IpAddr,
        source: crate::bfd::BfdError,
    },
}
