//! The BFD Control packet (RFC 5880 §4.1) and the checks §6.8.6 makes on a
//! received packet before any session sees it.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Vers |  Diag   |Sta|P|F|C|A|D|M|  Detect Mult  |    Length     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       My Discriminator                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                      Your Discriminator                       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    Desired Min TX Interval                    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                   Required Min RX Interval                    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 Required Min Echo RX Interval                 |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |   Auth Type   |   Auth Len    |    Authentication Data...     |   (A bit set)
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Intervals are in microseconds. pier configures no authentication; the
//! authentication section is parsed as far as its type and length so that a
//! malformed one is told apart from a well-formed one the session must
//! refuse (§6.8.6: A set and no authentication in use → discard).

/// The protocol version this codec speaks (§4.1).
pub const VERSION: u8 = 1;
/// Length of a Control packet without authentication.
pub const HEADER_LEN: usize = 24;
/// UDP destination port of single-hop Control packets (RFC 5881 §4).
pub const SINGLE_HOP_PORT: u16 = 3784;
/// UDP destination port of multihop Control packets (RFC 5883 §3).
pub const MULTIHOP_PORT: u16 = 4784;

/// Session states (§4.1 "Sta", §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    AdminDown = 0,
    Down = 1,
    Init = 2,
    Up = 3,
}

impl State {
    fn from_bits(v: u8) -> State {
        match v & 3 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::AdminDown => "AdminDown",
            State::Down => "Down",
            State::Init => "Init",
            State::Up => "Up",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Diagnostic codes (§4.1 "Diag"): why the sender's session last changed
/// state. Values 9–31 are reserved and kept as they came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Diag {
    None,
    ControlDetectionTimeExpired,
    EchoFunctionFailed,
    NeighborSignaledSessionDown,
    ForwardingPlaneReset,
    PathDown,
    ConcatenatedPathDown,
    AdministrativelyDown,
    ReverseConcatenatedPathDown,
    Reserved(u8),
}

impl Diag {
    pub fn from_code(code: u8) -> Diag {
        match code & 0x1f {
            0 => Diag::None,
            1 => Diag::ControlDetectionTimeExpired,
            2 => Diag::EchoFunctionFailed,
            3 => Diag::NeighborSignaledSessionDown,
            4 => Diag::ForwardingPlaneReset,
            5 => Diag::PathDown,
            6 => Diag::ConcatenatedPathDown,
            7 => Diag::AdministrativelyDown,
            8 => Diag::ReverseConcatenatedPathDown,
            c => Diag::Reserved(c),
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Diag::None => 0,
            Diag::ControlDetectionTimeExpired => 1,
            Diag::EchoFunctionFailed => 2,
            Diag::NeighborSignaledSessionDown => 3,
            Diag::ForwardingPlaneReset => 4,
            Diag::PathDown => 5,
            Diag::ConcatenatedPathDown => 6,
            Diag::AdministrativelyDown => 7,
            Diag::ReverseConcatenatedPathDown => 8,
            Diag::Reserved(c) => c & 0x1f,
        }
    }

    /// The RFC's wording, for logs and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Diag::None => "no diagnostic",
            Diag::ControlDetectionTimeExpired => "control detection time expired",
            Diag::EchoFunctionFailed => "echo function failed",
            Diag::NeighborSignaledSessionDown => "neighbor signaled session down",
            Diag::ForwardingPlaneReset => "forwarding plane reset",
            Diag::PathDown => "path down",
            Diag::ConcatenatedPathDown => "concatenated path down",
            Diag::AdministrativelyDown => "administratively down",
            Diag::ReverseConcatenatedPathDown => "reverse concatenated path down",
            Diag::Reserved(_) => "reserved diagnostic",
        }
    }
}

impl std::fmt::Display for Diag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Diag::Reserved(c) => write!(f, "reserved diagnostic {c}"),
            d => f.write_str(d.as_str()),
        }
    }
}

/// The authentication section (§4.2), kept as it came: pier configures no
/// authentication, so a session refuses every packet that carries one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authentication {
    /// 1 simple password, 2 keyed MD5, 3 meticulous keyed MD5, 4 keyed
    /// SHA1, 5 meticulous keyed SHA1; others reserved.
    pub auth_type: u8,
    /// The octets after Auth Type and Auth Len.
    pub data: Vec<u8>,
}

/// One BFD Control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPacket {
    pub diag: Diag,
    pub state: State,
    /// Poll: the sender asks for a Final (§6.5).
    pub poll: bool,
    /// Final: the answer to a Poll.
    pub fin: bool,
    /// Control plane independent.
    pub cpi: bool,
    /// Demand mode (§6.6).
    pub demand: bool,
    pub detect_mult: u8,
    pub my_discr: u32,
    pub your_discr: u32,
    pub desired_min_tx_us: u32,
    pub required_min_rx_us: u32,
    pub required_min_echo_rx_us: u32,
    /// Present exactly when the A bit is set.
    pub auth: Option<Authentication>,
}

/// Why a received packet was discarded (§6.8.6 and §4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("BFD packet of {0} octets, shorter than the {HEADER_LEN}-octet header")]
    Short(usize),
    #[error("BFD version {0}, only version 1 is spoken")]
    Version(u8),
    #[error("BFD Length field {length} is less than the minimum {min}")]
    LengthTooSmall { length: u8, min: usize },
    #[error("BFD Length field {length} exceeds the {payload} octets received")]
    LengthBeyondPayload { length: u8, payload: usize },
    #[error("BFD Detect Mult is zero")]
    ZeroDetectMult,
    #[error("BFD Multipoint bit set")]
    Multipoint,
    #[error("BFD My Discriminator is zero")]
    ZeroMyDiscriminator,
    #[error("BFD Your Discriminator is zero in state {0}")]
    ZeroYourDiscriminator(State),
    #[error("BFD Auth Len {auth_len} does not fit the {available} octets left in the packet")]
    AuthLength { auth_len: u8, available: usize },
}

impl ControlPacket {
    /// The Length field this packet encodes to.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.auth.as_ref().map_or(0, |a| 2 + a.data.len())
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes one Control packet from a UDP payload, discarding it for every
/// reason §6.8.6 gives that does not depend on a session. Octets after the
/// Length field's end are ignored. Never panics.
pub fn decode(buf: &[u8]) -> Result<ControlPacket, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Short(buf.len()));
    }
    let version = buf[0] >> 5;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let flags = buf[1];
    let auth_bit = flags & 0x04 != 0;
    let length = buf[3];
    let min = if auth_bit { HEADER_LEN + 2 } else { HEADER_LEN };
    if (length as usize) < min {
        return Err(DecodeError::LengthTooSmall { length, min });
    }
    if length as usize > buf.len() {
        return Err(DecodeError::LengthBeyondPayload {
            length,
            payload: buf.len(),
        });
    }
    let detect_mult = buf[2];
    if detect_mult == 0 {
        return Err(DecodeError::ZeroDetectMult);
    }
    if flags & 0x01 != 0 {
        return Err(DecodeError::Multipoint);
    }
    let state = State::from_bits(flags >> 6);
    let my_discr = be32(buf, 4);
    let your_discr = be32(buf, 8);
    if my_discr == 0 {
        return Err(DecodeError::ZeroMyDiscriminator);
    }
    if your_discr == 0 && !matches!(state, State::Down | State::AdminDown) {
        return Err(DecodeError::ZeroYourDiscriminator(state));
    }
    let auth = if auth_bit {
        let body = &buf[HEADER_LEN..length as usize];
        let auth_len = body[1];
        // Auth Len counts Type and Len themselves (§4.2).
        if (auth_len as usize) < 2 || auth_len as usize > body.len() {
            return Err(DecodeError::AuthLength {
                auth_len,
                available: body.len(),
            });
        }
        Some(Authentication {
            auth_type: body[0],
            data: body[2..auth_len as usize].to_vec(),
        })
    } else {
        None
    };
    Ok(ControlPacket {
        diag: Diag::from_code(buf[0]),
        state,
        poll: flags & 0x20 != 0,
        fin: flags & 0x10 != 0,
        cpi: flags & 0x08 != 0,
        demand: flags & 0x02 != 0,
        detect_mult,
        my_discr,
        your_discr,
        desired_min_tx_us: be32(buf, 12),
        required_min_rx_us: be32(buf, 16),
        required_min_echo_rx_us: be32(buf, 20),
        auth,
    })
}

/// Encodes a Control packet. An authentication section longer than the
/// 8-bit Length field allows is cut to fit (pier never sends one).
pub fn encode(p: &ControlPacket) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.encoded_len());
    out.push((VERSION << 5) | p.diag.code());
    let mut flags = (p.state as u8) << 6;
    for (bit, on) in [
        (0x20, p.poll),
        (0x10, p.fin),
        (0x08, p.cpi),
        (0x04, p.auth.is_some()),
        (0x02, p.demand),
    ] {
        if on {
            flags |= bit;
        }
    }
    out.push(flags);
    out.push(p.detect_mult);
    out.push(0); // Length, set below
    for v in [
        p.my_discr,
        p.your_discr,
        p.desired_min_tx_us,
        p.required_min_rx_us,
        p.required_min_echo_rx_us,
    ] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    if let Some(a) = &p.auth {
        let data = &a.data[..a.data.len().min(255 - HEADER_LEN - 2)];
        out.push(a.auth_type);
        out.push((2 + data.len()) as u8);
        out.extend_from_slice(data);
    }
    out[3] = out.len() as u8;
    out
}
