//! OPEN (RFC 4271 §4.2) with capabilities (RFC 5492) and RFC 9072 extended
//! optional parameters.
//!
//! ```text
//! +-+-+-+-+-+-+-+-+
//! |    Version    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     My Autonomous System      |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |           Hold Time           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                         BGP Identifier                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | Opt Parm Len  |  Optional Parameters (type 2 = capabilities) ...
//! +-+-+-+-+-+-+-+-+
//! ```

use super::{
    AfiSafi, EncodeError, Reader, WireError, AS_TRANS, OPEN_UNSPECIFIC,
    OPEN_UNSUPPORTED_OPTIONAL_PARAMETER,
};
use crate::{notif, PeerOpen};
use std::net::Ipv4Addr;

const PARAM_CAPABILITIES: u8 = 2;
/// RFC 9072: the marker of the extended optional parameters format.
const PARAM_EXTENDED: u8 = 255;

pub const CAP_MULTIPROTOCOL: u8 = 1;
pub const CAP_ROUTE_REFRESH: u8 = 2;
pub const CAP_EXTENDED_MESSAGE: u8 = 6;
pub const CAP_GRACEFUL_RESTART: u8 = 64;
pub const CAP_FOUR_OCTET_AS: u8 = 65;
pub const CAP_ADD_PATH: u8 = 69;

/// RFC 7911 Send/Receive field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddPathMode {
    Receive,
    Send,
    Both,
}

impl AddPathMode {
    fn from_u8(v: u8) -> Option<AddPathMode> {
        match v {
            1 => Some(AddPathMode::Receive),
            2 => Some(AddPathMode::Send),
            3 => Some(AddPathMode::Both),
            _ => None,
        }
    }
    fn as_u8(self) -> u8 {
        match self {
            AddPathMode::Receive => 1,
            AddPathMode::Send => 2,
            AddPathMode::Both => 3,
        }
    }
    pub fn receives(self) -> bool {
        matches!(self, AddPathMode::Receive | AddPathMode::Both)
    }
    pub fn sends(self) -> bool {
        matches!(self, AddPathMode::Send | AddPathMode::Both)
    }
}

/// RFC 4724 graceful restart capability (`notification` is RFC 8538's N
/// bit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GracefulRestart {
    /// R bit: the sender has restarted.
    pub restarted: bool,
    pub notification: bool,
    /// Seconds, 12 bits.
    pub restart_time: u16,
    /// Families with their "forwarding state preserved" bit.
    pub families: Vec<(AfiSafi, bool)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    Multiprotocol(AfiSafi),
    RouteRefresh,
    ExtendedMessage,
    GracefulRestart(GracefulRestart),
    FourOctetAs(u32),
    AddPath(Vec<(AfiSafi, AddPathMode)>),
    /// Anything else, kept as received.
    Unknown {
        code: u8,
        value: Vec<u8>,
    },
}

impl Capability {
    pub fn code(&self) -> u8 {
        match self {
            Capability::Multiprotocol(_) => CAP_MULTIPROTOCOL,
            Capability::RouteRefresh => CAP_ROUTE_REFRESH,
            Capability::ExtendedMessage => CAP_EXTENDED_MESSAGE,
            Capability::GracefulRestart(_) => CAP_GRACEFUL_RESTART,
            Capability::FourOctetAs(_) => CAP_FOUR_OCTET_AS,
            Capability::AddPath(_) => CAP_ADD_PATH,
            Capability::Unknown { code, .. } => *code,
        }
    }

    fn encode_value(&self, out: &mut Vec<u8>) {
        match self {
            Capability::Multiprotocol(f) => {
                out.extend_from_slice(&f.afi.to_be_bytes());
                out.push(0);
                out.push(f.safi);
            }
            Capability::RouteRefresh | Capability::ExtendedMessage => {}
            Capability::GracefulRestart(gr) => {
                let mut word = gr.restart_time & 0x0fff;
                if gr.restarted {
                    word |= 0x8000;
                }
                if gr.notification {
                    word |= 0x4000;
                }
                out.extend_from_slice(&word.to_be_bytes());
                for (f, preserved) in &gr.families {
                    out.extend_from_slice(&f.afi.to_be_bytes());
                    out.push(f.safi);
                    out.push(if *preserved { 0x80 } else { 0 });
                }
            }
            Capability::FourOctetAs(asn) => out.extend_from_slice(&asn.to_be_bytes()),
            Capability::AddPath(list) => {
                for (f, mode) in list {
                    out.extend_from_slice(&f.afi.to_be_bytes());
                    out.push(f.safi);
                    out.push(mode.as_u8());
                }
            }
            Capability::Unknown { value, .. } => out.extend_from_slice(value),
        }
    }

    fn decode(code: u8, value: &[u8]) -> Result<Capability, String> {
        let mut r = Reader::new(value);
        let bad = |what: &str| {
            format!(
                "capability {code} ({what}) has a malformed value of {} octets",
                value.len()
            )
        };
        Ok(match code {
            CAP_MULTIPROTOCOL => {
                if value.len() != 4 {
                    return Err(bad("multiprotocol"));
                }
                Capability::Multiprotocol(AfiSafi {
                    afi: u16::from_be_bytes([value[0], value[1]]),
                    safi: value[3],
                })
            }
            CAP_ROUTE_REFRESH if value.is_empty() => Capability::RouteRefresh,
            CAP_EXTENDED_MESSAGE if value.is_empty() => Capability::ExtendedMessage,
            CAP_GRACEFUL_RESTART => {
                let word = r.u16().ok_or_else(|| bad("graceful restart"))?;
                if r.remaining() % 4 != 0 {
                    return Err(bad("graceful restart"));
                }
                let mut families = Vec::new();
                while !r.is_empty() {
                    let (afi, safi, flags) = match (r.u16(), r.u8(), r.u8()) {
                        (Some(a), Some(s), Some(f)) => (a, s, f),
                        _ => return Err(bad("graceful restart")),
                    };
                    families.push((AfiSafi { afi, safi }, flags & 0x80 != 0));
                }
                Capability::GracefulRestart(GracefulRestart {
                    restarted: word & 0x8000 != 0,
                    notification: word & 0x4000 != 0,
                    restart_time: word & 0x0fff,
                    families,
                })
            }
            CAP_FOUR_OCTET_AS => match r.u32() {
                Some(asn) if r.is_empty() => Capability::FourOctetAs(asn),
                _ => return Err(bad("4-octet AS")),
            },
            CAP_ADD_PATH => {
                if value.len() % 4 != 0 || value.is_empty() {
                    return Err(bad("ADD-PATH"));
                }
                let mut list = Vec::new();
                while let (Some(afi), Some(safi), Some(mode)) = (r.u16(), r.u8(), r.u8()) {
                    // RFC 7911 §4: other values are ignored.
                    if let Some(mode) = AddPathMode::from_u8(mode) {
                        list.push((AfiSafi { afi, safi }, mode));
                    }
                }
                Capability::AddPath(list)
            }
            _ => Capability::Unknown {
                code,
                value: value.to_vec(),
            },
        })
    }
}

/// An OPEN message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub version: u8,
    /// The 2-octet field (AS_TRANS when the AS needs four octets).
    pub my_as: u16,
    pub hold_time: u16,
    pub router_id: Ipv4Addr,
    pub capabilities: Vec<Capability>,
}

impl Open {
    /// An OPEN for `asn`, adding the 4-octet AS capability (always sent, as
    /// RFC 6793 asks) in front of `capabilities`.
    pub fn new(
        asn: u32,
        hold_time: u16,
        router_id: Ipv4Addr,
        capabilities: Vec<Capability>,
    ) -> Open {
        let mut caps = vec![Capability::FourOctetAs(asn)];
        caps.extend(
            capabilities
                .into_iter()
                .filter(|c| !matches!(c, Capability::FourOctetAs(_))),
        );
        Open {
            version: 4,
            my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
            hold_time,
            router_id,
            capabilities: caps,
        }
    }

    /// The sender's AS: the 4-octet capability's when present.
    pub fn asn(&self) -> u32 {
        self.capabilities
            .iter()
            .find_map(|c| match c {
                Capability::FourOctetAs(a) => Some(*a),
                _ => None,
            })
            .unwrap_or(self.my_as as u32)
    }

    pub fn four_octet_as(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::FourOctetAs(_)))
    }

    /// Families the sender offers; IPv4 unicast alone when it sent no
    /// multiprotocol capability (RFC 4760 §8).
    pub fn families(&self) -> Vec<AfiSafi> {
        let mut out: Vec<AfiSafi> = self
            .capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::Multiprotocol(f) => Some(*f),
                _ => None,
            })
            .collect();
        if out.is_empty() {
            out.push(AfiSafi::IPV4_UNICAST);
        }
        out.sort();
        out.dedup();
        out
    }

    pub fn add_path(&self, family: AfiSafi) -> Option<AddPathMode> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::AddPath(list) => list.iter().find(|(f, _)| *f == family).map(|(_, m)| *m),
            _ => None,
        })
    }

    pub fn route_refresh(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::RouteRefresh))
    }

    pub fn extended_message(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::ExtendedMessage))
    }

    pub fn graceful_restart(&self) -> Option<&GracefulRestart> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(gr) => Some(gr),
            _ => None,
        })
    }

    /// What the FSM judges.
    pub fn peer_open(&self) -> PeerOpen {
        PeerOpen {
            version: self.version,
            asn: self.asn(),
            hold_time: self.hold_time,
            router_id: self.router_id,
        }
    }

    pub(super) fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.push(self.version);
        out.extend_from_slice(&self.my_as.to_be_bytes());
        out.extend_from_slice(&self.hold_time.to_be_bytes());
        out.extend_from_slice(&self.router_id.octets());
        // One capability per parameter would also do; one parameter holding
        // them all is what BIRD, FRR and GoBGP send.
        let mut caps = Vec::new();
        for cap in &self.capabilities {
            let start = caps.len();
            caps.push(cap.code());
            caps.push(0);
            cap.encode_value(&mut caps);
            let len = caps.len() - start - 2;
            caps[start + 1] = u8::try_from(len).map_err(|_| EncodeError::TooLong {
                what: "capability",
                len,
                max: 255,
            })?;
        }
        if caps.is_empty() {
            out.push(0);
        } else if caps.len() + 2 <= 255 {
            out.push((caps.len() + 2) as u8);
            out.push(PARAM_CAPABILITIES);
            out.push(caps.len() as u8);
            out.extend_from_slice(&caps);
        } else {
            // RFC 9072 extended format.
            let len = caps.len() + 3;
            let len16 = u16::try_from(len).map_err(|_| EncodeError::TooLong {
                what: "OPEN optional parameters",
                len,
                max: 65535,
            })?;
            out.push(255);
            out.push(PARAM_EXTENDED);
            out.extend_from_slice(&len16.to_be_bytes());
            out.push(PARAM_CAPABILITIES);
            out.extend_from_slice(&(caps.len() as u16).to_be_bytes());
            out.extend_from_slice(&caps);
        }
        Ok(())
    }

    pub(super) fn decode(body: &[u8]) -> Result<Open, WireError> {
        let err =
            |sub: u8, reason: String| WireError::new(notif::OPEN_MESSAGE, sub, Vec::new(), reason);
        let mut r = Reader::new(body);
        let (version, my_as, hold_time, id, opt_len) =
            match (r.u8(), r.u16(), r.u16(), r.u32(), r.u8()) {
                (Some(v), Some(a), Some(h), Some(i), Some(l)) => (v, a, h, i, l),
                _ => return Err(err(OPEN_UNSPECIFIC, "OPEN shorter than 10 octets".into())),
            };
        if version != 4 {
            // RFC 4271 §6.2: data is the largest version we support.
            return Err(WireError::new(
                notif::OPEN_MESSAGE,
                notif::OPEN_UNSUPPORTED_VERSION,
                vec![0, 4],
                format!("peer speaks BGP version {version}, pier speaks 4"),
            ));
        }
        let extended = opt_len == 255 && body.get(10) == Some(&PARAM_EXTENDED);
        let params = if extended {
            r.u8();
            let len = r.u16().unwrap_or(0) as usize;
            r.take(len)
        } else {
            r.take(opt_len as usize)
        };
        let params = match params {
            Some(p) if r.is_empty() => p,
            _ => {
                return Err(err(
                    OPEN_UNSPECIFIC,
                    format!(
                    "OPEN optional parameters length {} does not match the {} octets that follow",
                    opt_len,
                    body.len().saturating_sub(10)
                ),
                ))
            }
        };
        let mut p = Reader::new(params);
        let mut capabilities = Vec::new();
        while !p.is_empty() {
            let kind = p.u8();
            let len = if extended {
                p.u16()
            } else {
                p.u8().map(u16::from)
            };
            let value = match (kind, len) {
                (Some(k), Some(l)) => p.take(l as usize).map(|v| (k, v)),
                _ => None,
            };
            let Some((kind, value)) = value else {
                return Err(err(
                    OPEN_UNSPECIFIC,
                    "OPEN optional parameter overruns the parameters".into(),
                ));
            };
            if kind != PARAM_CAPABILITIES {
                return Err(WireError::new(
                    notif::OPEN_MESSAGE,
                    OPEN_UNSUPPORTED_OPTIONAL_PARAMETER,
                    Vec::new(),
                    format!("unsupported optional parameter type {kind}"),
                ));
            }
            let mut c = Reader::new(value);
            while !c.is_empty() {
                let (Some(code), Some(len)) = (c.u8(), c.u8()) else {
                    return Err(err(
                        OPEN_UNSPECIFIC,
                        "capability header overruns its parameter".into(),
                    ));
                };
                let Some(v) = c.take(len as usize) else {
                    return Err(err(
                        OPEN_UNSPECIFIC,
                        format!("capability {code} of {len} octets overruns its parameter"),
                    ));
                };
                capabilities
                    .push(Capability::decode(code, v).map_err(|e| err(OPEN_UNSPECIFIC, e))?);
            }
        }
        Ok(Open {
            version,
            my_as,
            hold_time,
            router_id: Ipv4Addr::from(id),
            capabilities,
        })
    }
}
