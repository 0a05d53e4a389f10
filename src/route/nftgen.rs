//! The nftables ruleset generation of a network namespace (netlink
//! `NFT_MSG_GETGEN`): a number the kernel bumps on every committed nftables
//! transaction, in any table. pier records it after writing its own table;
//! while it has not moved, nothing (pier or anyone else) changed any table,
//! so the timer repair has nothing to repair and skips the rewrite.
//!
//! The request and the reply are a few bytes each, built and read here; the
//! reply parser is pure and total (any bytes in, a value or an error out).

use std::io;
use std::os::fd::AsRawFd;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN`.
const MSG_GETGEN: u16 = (10 << 8) | 16;
/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN` (the reply).
const MSG_NEWGEN: u16 = (10 << 8) | 15;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
/// `NFTA_GEN_ID` (u32, network byte order).
const NFTA_GEN_ID: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

/// The request for sequence number `seq` (pure).
pub fn request(seq: u32) -> Vec<u8> {
    let len = (NLMSG_HDRLEN + NFGENMSG_LEN) as u32;
    let mut out = Vec::with_capacity(len as usize);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&MSG_GETGEN.to_ne_bytes());
    out.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
                                                // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, res_id 0.
    out.extend_from_slice(&[0, 0, 0, 0]);
    out
}

/// Why a reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("the kernel refused NFT_MSG_GETGEN: {0}")]
    Refused(String),
    #[error("malformed NFT_MSG_GETGEN reply: {0}")]
    Malformed(&'static str),
}

fn u16_ne(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_ne(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The generation in a reply datagram (pure; never panics).
pub fn parse_reply(buf: &[u8]) -> Result<u32, ReplyError> {
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32_ne(buf, at).ok_or(ReplyError::Malformed("header"))? as usize;
        let kind = u16_ne(buf, at + 4).ok_or(ReplyError::Malformed("header"))?;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            return Err(ReplyError::Malformed("message length"));
        }
        let msg = &buf[at..at + len];
        match kind {
            NLMSG_ERROR => {
                let errno = u32_ne(msg, NLMSG_HDRLEN)
                    .map(|e| e as i32)
                    .ok_or(ReplyError::Malformed("error message"))?;
                return Err(ReplyError::Refused(
                    io::Error::from_raw_os_error(errno.checked_neg().unwrap_or(0)).to_string(),
                ));
            }
            MSG_NEWGEN => {
                let mut a = NLMSG_HDRLEN + NFGENMSG_LEN;
                while a + 4 <= msg.len() {
                    let alen = u16_ne(msg, a).ok_or(ReplyError::Malformed("attribute"))? as usize;
                    let atype = u16_ne(msg, a + 2).ok_or(ReplyError::Malformed("attribute"))?;
                    if alen < 4 || a + alen > msg.len() {
                        return Err(ReplyError::Malformed("attribute length"));
                    }
                    // The low 14 bits are the type (nested/byte-order flags above).
                    if atype & 0x3fff == NFTA_GEN_ID && alen == 8 {
                        let v = msg.get(a + 4..a + 8).ok_or(ReplyError::Malformed("id"))?;
                        return Ok(u32::from_be_bytes(
                            v.try_into().map_err(|_| ReplyError::Malformed("id"))?,
                        ));
                    }
                    a += (alen + 3) & !3;
                }
                return Err(ReplyError::Malformed("no NFTA_GEN_ID"));
            }
            _ => {}
        }
        at += (len + 3) & !3;
    }
    Err(ReplyError::Malformed("no reply message"))
}

/// A netfilter netlink socket of the namespace it was opened in.
pub struct Generation {
    socket: Socket,
    seq: u32,
}

impl Generation {
    /// Open the socket (in the calling thread's network namespace).
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // The kernel answers at once; never wait long on a reply.
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: setsockopt with a valid fd and a timeval of the right size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Generation { socket, seq: 0 })
    }

    /// The current ruleset generation.
    pub fn current(&mut self) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        self.socket.send(&request(self.seq), 0)?;
        loop {
            let mut buf: Vec<u8> = Vec::with_capacity(8192);
            self.socket.recv(&mut buf, 0)?;
            // Skip a late reply to an earlier request (after a timeout).
            if u32_ne(&buf, 8).is_some_and(|s| s != self.seq) {
                continue;
            }
            return parse_reply(&buf).map_err(io::Error::other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reply(gen: u32) -> Vec<u8> {
        let mut m = Vec::new();
        let attrs: Vec<u8> = [
            &8u16.to_ne_bytes()[..],
            &NFTA_GEN_ID.to_ne_bytes(),
            &gen.to_be_bytes(),
            // NFTA_GEN_PROC_PID
            &8u16.to_ne_bytes(),
            &2u16.to_ne_bytes(),
            &77u32.to_be_bytes(),
        ]
        .concat();
        let len = (NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len()) as u32;
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&MSG_NEWGEN.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&1u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn request_is_a_getgen_header() {
        let r = request(7);
        assert_eq!(r.len(), 20);
        assert_eq!(u32_ne(&r, 0), Some(20));
        assert_eq!(u16_ne(&r, 4), Some(0x0a10));
        assert_eq!(u32_ne(&r, 8), Some(7));
    }

    #[test]
    fn reply_gives_the_generation() {
        assert_eq!(parse_reply(&reply(0x0102_0304)), Ok(0x0102_0304));
    }

    #[test]
    fn errors_and_garbage_are_errors() {
        let mut err = Vec::new();
        err.extend_from_slice(&36u32.to_ne_bytes());
        err.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err.extend_from_slice(&[0; 10]);
        err.extend_from_slice(&(-1i32).to_ne_bytes()); // EPERM
        err.extend_from_slice(&[0; 16]);
        assert!(matches!(parse_reply(&err), Err(ReplyError::Refused(_))));
        assert!(parse_reply(&[]).is_err());
        let mut short = reply(5);
        short.truncate(30);
        assert!(parse_reply(&short).is_err());
        let mut zero_len = reply(5);
        zero_len[0..4].copy_from_slice(&0u32.to_ne_bytes());
        assert!(parse_reply(&zero_len).is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = parse_reply(&bytes);
        }

        #[test]
        fn corrupted_replies_parse_without_panic(at in 0usize..36, byte in any::<u8>(), cut in 0usize..37) {
            let mut r = reply(9);
            r[at] = byte;
            r.truncate(cut);
            let _ = parse_reply(&r);
        }
    }
}
