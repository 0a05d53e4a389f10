//! pier's BGP-4 wire codec (RFC 4271), pure: bytes in, messages out, and
//! back. No I/O, no clock, no panics on any input. A crate of its own with
//! no dependency on the rest of pier, so its fuzz targets build in seconds.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                     Marker (16 octets of 0xff)                |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Length               |      Type     |  body ...
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Decoding is done with a [`Context`] built from what the session
//! negotiated (4-octet AS, ADD-PATH per family, extended messages). A
//! decoding error that must reset the session is a [`WireError`] carrying the
//! NOTIFICATION code and subcode (RFC 4271 §6); an UPDATE whose attributes are
//! malformed in a way RFC 7606 lets the session survive is decoded into what
//! the receiver must act on (its routes turned into withdrawals, or the bad
//! attribute dropped) plus an [`AttrNote`] saying what was done and why.

mod open;
mod update;

#[cfg(test)]
mod tests;

pub use open::{AddPathMode, Capability, GracefulRestart, Open};
pub use update::{
    pack_announce, pack_withdraw, AsPath, Attribute, MpReach, MpUnreach, Nlri, Origin, Segment,
    SegmentKind, Update,
};

use std::fmt;
use std::net::Ipv4Addr;

/// NOTIFICATION error codes and subcodes used by the FSM (RFC 4271 §4.5,
/// RFC 6608 for FSM errors).
pub mod notif {
    pub const MESSAGE_HEADER: u8 = 1;
    pub const OPEN_MESSAGE: u8 = 2;
    pub const UPDATE_MESSAGE: u8 = 3;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM: u8 = 5;
    pub const CEASE: u8 = 6;

    pub const OPEN_UNSUPPORTED_VERSION: u8 = 1;
    pub const OPEN_BAD_PEER_AS: u8 = 2;
    pub const OPEN_BAD_BGP_ID: u8 = 3;
    pub const OPEN_UNACCEPTABLE_HOLD_TIME: u8 = 6;

    pub const FSM_UNEXPECTED_IN_OPENSENT: u8 = 1;
    pub const FSM_UNEXPECTED_IN_OPENCONFIRM: u8 = 2;
    pub const FSM_UNEXPECTED_IN_ESTABLISHED: u8 = 3;

    /// RFC 4486 Cease subcodes.
    pub const CEASE_ADMIN_SHUTDOWN: u8 = 2;
    pub const CEASE_CONNECTION_COLLISION: u8 = 7;
}

/// A NOTIFICATION to send or that was received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    pub fn new(code: u8, subcode: u8, data: Vec<u8>) -> Self {
        Notification {
            code,
            subcode,
            data,
        }
    }
}

/// The peer's OPEN, as far as the FSM judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerOpen {
    pub version: u8,
    /// The 4-octet AS when the capability was sent, else the 2-octet field.
    pub asn: u32,
    pub hold_time: u16,
    pub router_id: Ipv4Addr,
}

/// Length of the common header.
pub const HEADER_LEN: usize = 19;
/// Largest message without RFC 8654 extended messages.
pub const MAX_LEN: usize = 4096;
/// Largest message with RFC 8654 extended messages.
pub const MAX_EXTENDED_LEN: usize = 65535;
/// AS_TRANS (RFC 6793): the 2-octet stand-in for a 4-octet AS.
pub const AS_TRANS: u16 = 23456;

pub const TYPE_OPEN: u8 = 1;
pub const TYPE_UPDATE: u8 = 2;
pub const TYPE_NOTIFICATION: u8 = 3;
pub const TYPE_KEEPALIVE: u8 = 4;
pub const TYPE_ROUTE_REFRESH: u8 = 5;

/// Message header error subcodes (RFC 4271 §4.5).
pub const HDR_NOT_SYNCHRONIZED: u8 = 1;
pub const HDR_BAD_LENGTH: u8 = 2;
pub const HDR_BAD_TYPE: u8 = 3;

/// OPEN error subcodes not already in `fsm::notif`.
pub const OPEN_UNSPECIFIC: u8 = 0;
pub const OPEN_UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;

/// UPDATE error subcodes (RFC 4271 §6.3).
pub const UPD_MALFORMED_ATTRIBUTE_LIST: u8 = 1;
pub const UPD_UNRECOGNIZED_WELL_KNOWN: u8 = 2;
pub const UPD_INVALID_NETWORK_FIELD: u8 = 10;
pub const UPD_MALFORMED_AS_PATH: u8 = 11;

/// ROUTE-REFRESH message error (RFC 7313): invalid message length.
pub const ROUTE_REFRESH_ERROR: u8 = 7;

/// An address family and subsequent address family (RFC 4760).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AfiSafi {
    pub afi: u16,
    pub safi: u8,
}

impl AfiSafi {
    pub const IPV4_UNICAST: AfiSafi = AfiSafi { afi: 1, safi: 1 };
    pub const IPV6_UNICAST: AfiSafi = AfiSafi { afi: 2, safi: 1 };

    pub fn is_ipv4(self) -> bool {
        self.afi == 1
    }
}

impl fmt::Display for AfiSafi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.afi, self.safi) {
            (1, 1) => f.write_str("ipv4-unicast"),
            (2, 1) => f.write_str("ipv6-unicast"),
            (afi, safi) => write!(f, "afi{afi}/safi{safi}"),
        }
    }
}

/// What the session negotiated, which changes how bytes are read and
/// written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// Both sides sent the 4-octet AS capability (RFC 6793).
    pub four_octet_as: bool,
    /// Families whose NLRI carry a path identifier in this direction
    /// (RFC 7911): for decoding, those the peer sends with path ids; for
    /// encoding, those pier sends with path ids.
    pub add_path: Vec<AfiSafi>,
    /// Both sides sent the extended message capability (RFC 8654).
    pub extended_message: bool,
}

impl Context {
    /// The context of a session that negotiated everything pier speaks, for
    /// tests and the initial OPEN exchange (`four_octet_as` only matters
    /// to UPDATEs).
    pub fn modern() -> Context {
        Context {
            four_octet_as: true,
            add_path: Vec::new(),
            extended_message: false,
        }
    }

    pub fn max_len(&self) -> usize {
        if self.extended_message {
            MAX_EXTENDED_LEN
        } else {
            MAX_LEN
        }
    }

    pub fn has_path_id(&self, family: AfiSafi) -> bool {
        self.add_path.contains(&family)
    }
}

/// ROUTE-REFRESH (RFC 2918; `subtype` is RFC 7313's, 0 for a plain
/// request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRefresh {
    pub family: AfiSafi,
    pub subtype: u8,
}

/// One BGP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    RouteRefresh(RouteRefresh),
}

impl Message {
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Open(_) => "OPEN",
            Message::Update(_) => "UPDATE",
            Message::Notification(_) => "NOTIFICATION",
            Message::Keepalive => "KEEPALIVE",
            Message::RouteRefresh(_) => "ROUTE-REFRESH",
        }
    }
}

/// A decoding error that ends the session: send this NOTIFICATION.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (NOTIFICATION {code}/{subcode})")]
pub struct WireError {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
    pub reason: String,
}

impl WireError {
    pub fn new(code: u8, subcode: u8, data: Vec<u8>, reason: impl Into<String>) -> WireError {
        WireError {
            code,
            subcode,
            data,
            reason: reason.into(),
        }
    }

    pub fn notification(&self) -> Notification {
        Notification::new(self.code, self.subcode, self.data.clone())
    }
}

/// What the decoder did about a malformed attribute the session survives
/// (RFC 7606 §2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrNote {
    pub action: AttrAction,
    /// The attribute type code (0 when the attribute list itself was bad).
    pub attr: u8,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrAction {
    /// The UPDATE's routes are withdrawn instead of announced.
    TreatAsWithdraw,
    /// The attribute was dropped; the routes stand.
    AttributeDiscard,
}

impl fmt::Display for AttrNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            AttrAction::TreatAsWithdraw => "routes treated as withdrawn",
            AttrAction::AttributeDiscard => "attribute discarded",
        };
        write!(f, "attribute {}: {} ({action})", self.attr, self.reason)
    }
}

/// A message read off the wire, with what RFC 7606 made of its errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub message: Message,
    pub notes: Vec<AttrNote>,
}

/// An encoding request the wire cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{what} is {len} octets, more than the {max} a message may carry")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{0}")]
    Invalid(String),
}

/// How long the next message in `buf` is, once its header has arrived:
/// `Ok(None)` while fewer than 19 octets are buffered. Checks the marker,
/// the length against the type's bounds and `max_len`, and the type.
pub fn frame_len(buf: &[u8], max_len: usize) -> Result<Option<usize>, WireError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    if buf[..16].iter().any(|b| *b != 0xff) {
        return Err(WireError::new(
            notif::MESSAGE_HEADER,
            HDR_NOT_SYNCHRONIZED,
            Vec::new(),
            "message header marker is not all ones",
        ));
    }
    let len = u16::from_be_bytes([buf[16], buf[17]]) as usize;
    let kind = buf[18];
    let (min, max) = match kind {
        TYPE_OPEN => (29, MAX_LEN),
        TYPE_UPDATE => (23, max_len),
        TYPE_NOTIFICATION => (21, max_len),
        TYPE_KEEPALIVE => (19, 19),
        TYPE_ROUTE_REFRESH => (23, max_len),
        other => {
            return Err(WireError::new(
                notif::MESSAGE_HEADER,
                HDR_BAD_TYPE,
                vec![other],
                format!("unknown message type {other}"),
            ))
        }
    };
    if len < min || len > max {
        return Err(WireError::new(
            notif::MESSAGE_HEADER,
            HDR_BAD_LENGTH,
            (len as u16).to_be_bytes().to_vec(),
            format!("message type {kind} has length {len}, outside {min}..={max}"),
        ));
    }
    Ok(Some(len))
}

/// Decodes one whole message (header included, as delimited by
/// [`frame_len`]).
pub fn decode(frame: &[u8], ctx: &Context) -> Result<Decoded, WireError> {
    let len = frame_len(frame, ctx.max_len())?.ok_or_else(|| {
        WireError::new(
            notif::MESSAGE_HEADER,
            HDR_BAD_LENGTH,
            Vec::new(),
            "message shorter than its header",
        )
    })?;
    if len != frame.len() {
        return Err(WireError::new(
            notif::MESSAGE_HEADER,
            HDR_BAD_LENGTH,
            (len as u16).to_be_bytes().to_vec(),
            format!("header says {len} octets but the frame has {}", frame.len()),
        ));
    }
    let body = &frame[HEADER_LEN..];
    let plain = |message| {
        Ok(Decoded {
            message,
            notes: Vec::new(),
        })
    };
    match frame[18] {
        TYPE_OPEN => plain(Message::Open(Open::decode(body)?)),
        TYPE_UPDATE => {
            let (update, notes) = Update::decode(body, ctx)?;
            Ok(Decoded {
                message: Message::Update(update),
                notes,
            })
        }
        TYPE_NOTIFICATION => plain(Message::Notification(Notification::new(
            body[0],
            body[1],
            body[2..].to_vec(),
        ))),
        TYPE_KEEPALIVE => plain(Message::Keepalive),
        TYPE_ROUTE_REFRESH => {
            if body.len() != 4 {
                return Err(WireError::new(
                    ROUTE_REFRESH_ERROR,
                    1,
                    body.to_vec(),
                    format!("ROUTE-REFRESH body of {} octets, not 4", body.len()),
                ));
            }
            plain(Message::RouteRefresh(RouteRefresh {
                family: AfiSafi {
                    afi: u16::from_be_bytes([body[0], body[1]]),
                    safi: body[3],
                },
                subtype: body[2],
            }))
        }
        // frame_len rejected every other type.
        other => Err(WireError::new(
            notif::MESSAGE_HEADER,
            HDR_BAD_TYPE,
            vec![other],
            format!("unknown message type {other}"),
        )),
    }
}

/// Encodes one message.
pub fn encode(msg: &Message, ctx: &Context) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[0xff; 16]);
    out.extend_from_slice(&[0, 0, 0]);
    let (kind, max) = match msg {
        Message::Open(open) => {
            open.encode_body(&mut out)?;
            (TYPE_OPEN, MAX_LEN)
        }
        Message::Update(update) => {
            update.encode_body(&mut out, ctx)?;
            (TYPE_UPDATE, ctx.max_len())
        }
        Message::Notification(n) => {
            out.push(n.code);
            out.push(n.subcode);
            out.extend_from_slice(&n.data);
            (TYPE_NOTIFICATION, ctx.max_len())
        }
        Message::Keepalive => (TYPE_KEEPALIVE, MAX_LEN),
        Message::RouteRefresh(rr) => {
            out.extend_from_slice(&rr.family.afi.to_be_bytes());
            out.push(rr.subtype);
            out.push(rr.family.safi);
            (TYPE_ROUTE_REFRESH, MAX_LEN)
        }
    };
    if out.len() > max {
        return Err(EncodeError::TooLong {
            what: msg.kind(),
            len: out.len(),
            max,
        });
    }
    let len = out.len() as u16;
    out[16..18].copy_from_slice(&len.to_be_bytes());
    out[18] = kind;
    Ok(out)
}

/// A NOTIFICATION in words, for logs and `pier peers` (RFC 4271 §4.5, RFC
/// 4486 Cease subcodes, RFC 8203 shutdown communication).
pub fn describe_notification(n: &Notification) -> String {
    let code = match n.code {
        1 => "message header error",
        2 => "OPEN message error",
        3 => "UPDATE message error",
        4 => "hold timer expired",
        5 => "finite state machine error",
        6 => "cease",
        7 => "ROUTE-REFRESH message error",
        _ => "unknown error code",
    };
    let sub = match (n.code, n.subcode) {
        (1, 1) => "connection not synchronized",
        (1, 2) => "bad message length",
        (1, 3) => "bad message type",
        (2, 1) => "unsupported version number",
        (2, 2) => "bad peer AS",
        (2, 3) => "bad BGP identifier",
        (2, 4) => "unsupported optional parameter",
        (2, 6) => "unacceptable hold time",
        (2, 7) => "unsupported capability",
        (3, 1) => "malformed attribute list",
        (3, 2) => "unrecognized well-known attribute",
        (3, 3) => "missing well-known attribute",
        (3, 4) => "attribute flags error",
        (3, 5) => "attribute length error",
        (3, 6) => "invalid ORIGIN attribute",
        (3, 8) => "invalid NEXT_HOP attribute",
        (3, 9) => "optional attribute error",
        (3, 10) => "invalid network field",
        (3, 11) => "malformed AS_PATH",
        (6, 1) => "maximum number of prefixes reached",
        (6, 2) => "administrative shutdown",
        (6, 3) => "peer de-configured",
        (6, 4) => "administrative reset",
        (6, 5) => "connection rejected",
        (6, 6) => "other configuration change",
        (6, 7) => "connection collision resolution",
        (6, 8) => "out of resources",
        (6, 9) => "hard reset",
        _ => "",
    };
    let mut text = code.to_string();
    if !sub.is_empty() {
        text.push_str(": ");
        text.push_str(sub);
    } else if n.subcode != 0 {
        text.push_str(&format!(" (subcode {})", n.subcode));
    }
    // RFC 8203/9003: a length-prefixed UTF-8 reason on admin shutdown/reset.
    if n.code == 6 && matches!(n.subcode, 2 | 4) {
        if let Some((&len, rest)) = n.data.split_first() {
            if let Some(msg) = rest.get(..len as usize) {
                if let Ok(msg) = std::str::from_utf8(msg) {
                    text.push_str(&format!(" \"{msg}\""));
                }
            }
        }
    }
    text
}

/// A cursor over received bytes that never reads past its end.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}
