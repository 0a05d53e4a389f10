//! UPDATE (RFC 4271 §4.3) with multiprotocol reach (RFC 4760, 2545),
//! ADD-PATH path identifiers (RFC 7911), 4-octet AS (RFC 6793) and the
//! RFC 7606 error handling.
//!
//! ```text
//! +-----------------------------------------------------+
//! |   Withdrawn Routes Length (2 octets)                |
//! +-----------------------------------------------------+
//! |   Withdrawn Routes (variable)                       |
//! +-----------------------------------------------------+
//! |   Total Path Attribute Length (2 octets)            |
//! +-----------------------------------------------------+
//! |   Path Attributes (variable)                        |
//! +-----------------------------------------------------+
//! |   Network Layer Reachability Information (variable) |
//! +-----------------------------------------------------+
//!
//! Attribute: | flags (1) | type (1) | length (1, or 2 with Extended Length) | value |
//! NLRI:      | [path id (4) with ADD-PATH] | prefix length (1) | prefix (ceil(len/8)) |
//! ```

use super::{
    AfiSafi, AttrAction, AttrNote, Context, EncodeError, Reader, WireError, AS_TRANS, HEADER_LEN,
    TYPE_UPDATE, UPD_INVALID_NETWORK_FIELD, UPD_MALFORMED_ATTRIBUTE_LIST,
    UPD_UNRECOGNIZED_WELL_KNOWN,
};
use crate::notif;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ATTR_ORIGIN: u8 = 1;
pub const ATTR_AS_PATH: u8 = 2;
pub const ATTR_NEXT_HOP: u8 = 3;
pub const ATTR_MED: u8 = 4;
pub const ATTR_LOCAL_PREF: u8 = 5;
pub const ATTR_ATOMIC_AGGREGATE: u8 = 6;
pub const ATTR_AGGREGATOR: u8 = 7;
pub const ATTR_COMMUNITIES: u8 = 8;
pub const ATTR_MP_REACH: u8 = 14;
pub const ATTR_MP_UNREACH: u8 = 15;
pub const ATTR_AS4_PATH: u8 = 17;
pub const ATTR_AS4_AGGREGATOR: u8 = 18;
pub const ATTR_LARGE_COMMUNITIES: u8 = 32;

const FLAG_OPTIONAL: u8 = 0x80;
const FLAG_TRANSITIVE: u8 = 0x40;
const FLAG_EXTENDED: u8 = 0x10;

/// UPDATE error subcode for optional attribute errors (RFC 4271 §6.3).
const UPD_OPTIONAL_ATTRIBUTE_ERROR: u8 = 9;

/// One prefix, with its ADD-PATH path identifier when the session uses them
/// for its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nlri {
    pub prefix: IpNet,
    pub path_id: Option<u32>,
}

impl Nlri {
    pub fn new(prefix: IpNet) -> Nlri {
        Nlri {
            prefix,
            path_id: None,
        }
    }

    pub fn with_path_id(prefix: IpNet, path_id: u32) -> Nlri {
        Nlri {
            prefix,
            path_id: Some(path_id),
        }
    }

    pub fn family(&self) -> AfiSafi {
        match self.prefix {
            IpNet::V4(_) => AfiSafi::IPV4_UNICAST,
            IpNet::V6(_) => AfiSafi::IPV6_UNICAST,
        }
    }

    /// Octets this NLRI takes on the wire.
    pub fn wire_len(&self, add_path: bool) -> usize {
        1 + (self.prefix.prefix_len() as usize).div_ceil(8) + if add_path { 4 } else { 0 }
    }

    fn encode(&self, add_path: bool, out: &mut Vec<u8>) {
        if add_path {
            out.extend_from_slice(&self.path_id.unwrap_or(0).to_be_bytes());
        }
        let len = self.prefix.prefix_len();
        out.push(len);
        let bytes = (len as usize).div_ceil(8);
        match self.prefix.trunc() {
            IpNet::V4(n) => out.extend_from_slice(&n.addr().octets()[..bytes]),
            IpNet::V6(n) => out.extend_from_slice(&n.addr().octets()[..bytes]),
        }
    }
}

/// Reads NLRI of `family` until `buf` ends.
fn decode_nlri(
    buf: &[u8],
    family: AfiSafi,
    add_path: bool,
    what: &str,
) -> Result<Vec<Nlri>, WireError> {
    let bad = |reason: String| {
        WireError::new(
            notif::UPDATE_MESSAGE,
            UPD_INVALID_NETWORK_FIELD,
            Vec::new(),
            format!("{what}: {reason}"),
        )
    };
    let max = if family.is_ipv4() { 32 } else { 128 };
    let mut r = Reader::new(buf);
    let mut out = Vec::new();
    while !r.is_empty() {
        let path_id = if add_path {
            Some(
                r.u32()
                    .ok_or_else(|| bad("path identifier cut short".into()))?,
            )
        } else {
            None
        };
        let len = r.u8().ok_or_else(|| bad("prefix length missing".into()))?;
        if len > max {
            return Err(bad(format!("prefix length {len} exceeds {max}")));
        }
        let bytes = r
            .take((len as usize).div_ceil(8))
            .ok_or_else(|| bad(format!("prefix of length {len} cut short")))?;
        let prefix = if family.is_ipv4() {
            let mut a = [0u8; 4];
            a[..bytes.len()].copy_from_slice(bytes);
            IpNet::V4(
                Ipv4Net::new(Ipv4Addr::from(a), len)
                    .map_err(|e| bad(e.to_string()))?
                    .trunc(),
            )
        } else {
            let mut a = [0u8; 16];
            a[..bytes.len()].copy_from_slice(bytes);
            IpNet::V6(
                Ipv6Net::new(Ipv6Addr::from(a), len)
                    .map_err(|e| bad(e.to_string()))?
                    .trunc(),
            )
        };
        out.push(Nlri { prefix, path_id });
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    Igp,
    Egp,
    Incomplete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentKind {
    Set,
    Sequence,
    ConfedSequence,
    ConfedSet,
}

impl SegmentKind {
    fn from_u8(v: u8) -> Option<SegmentKind> {
        match v {
            1 => Some(SegmentKind::Set),
            2 => Some(SegmentKind::Sequence),
            3 => Some(SegmentKind::ConfedSequence),
            4 => Some(SegmentKind::ConfedSet),
            _ => None,
        }
    }
    fn as_u8(self) -> u8 {
        match self {
            SegmentKind::Set => 1,
            SegmentKind::Sequence => 2,
            SegmentKind::ConfedSequence => 3,
            SegmentKind::ConfedSet => 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Segment {
    pub kind: SegmentKind,
    pub asns: Vec<u32>,
}

/// AS_PATH, always held with 4-octet ASNs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AsPath {
    pub segments: Vec<Segment>,
}

impl AsPath {
    pub fn sequence(asns: Vec<u32>) -> AsPath {
        if asns.is_empty() {
            return AsPath::default();
        }
        AsPath {
            segments: vec![Segment {
                kind: SegmentKind::Sequence,
                asns,
            }],
        }
    }

    /// Path length as RFC 4271 §9.1.2.2 counts it (a set counts one,
    /// confederation segments nothing).
    pub fn len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s.kind {
                SegmentKind::Sequence => s.asns.len(),
                SegmentKind::Set => 1,
                _ => 0,
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    fn needs_four_octets(&self) -> bool {
        self.segments
            .iter()
            .flat_map(|s| &s.asns)
            .any(|a| *a > 0xffff)
    }

    fn encode(&self, four: bool, out: &mut Vec<u8>) {
        for seg in &self.segments {
            // A segment holds at most 255 ASNs; split longer ones.
            for chunk in seg.asns.chunks(255) {
                out.push(seg.kind.as_u8());
                out.push(chunk.len() as u8);
                for asn in chunk {
                    if four {
                        out.extend_from_slice(&asn.to_be_bytes());
                    } else {
                        let two = u16::try_from(*asn).unwrap_or(AS_TRANS);
                        out.extend_from_slice(&two.to_be_bytes());
                    }
                }
            }
        }
    }

    fn decode(buf: &[u8], four: bool) -> Result<AsPath, String> {
        let mut r = Reader::new(buf);
        let mut segments = Vec::new();
        while !r.is_empty() {
            let (Some(kind), Some(count)) = (r.u8(), r.u8()) else {
                return Err("segment header cut short".into());
            };
            let kind =
                SegmentKind::from_u8(kind).ok_or(format!("segment type {kind} is unknown"))?;
            if count == 0 {
                return Err("segment of zero ASNs".into());
            }
            let mut asns = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let asn = if four {
                    r.u32()
                } else {
                    r.u16().map(u32::from)
                };
                asns.push(asn.ok_or("segment overruns the attribute")?);
            }
            segments.push(Segment { kind, asns });
        }
        Ok(AsPath { segments })
    }

    /// RFC 6793 §4.2.3: rebuild the real path from AS_PATH and AS4_PATH as
    /// received from a 2-octet speaker.
    fn merge_as4(self, as4: AsPath) -> AsPath {
        let (n, n4) = (self.len(), as4.len());
        if n < n4 {
            return self;
        }
        let mut keep = n - n4;
        let mut segments = Vec::new();
        for seg in self.segments {
            if keep == 0 {
                break;
            }
            match seg.kind {
                SegmentKind::Sequence if seg.asns.len() > keep => {
                    segments.push(Segment {
                        kind: seg.kind,
                        asns: seg.asns[..keep].to_vec(),
                    });
                    keep = 0;
                }
                SegmentKind::Sequence => {
                    keep -= seg.asns.len();
                    segments.push(seg);
                }
                SegmentKind::Set => {
                    keep -= 1;
                    segments.push(seg);
                }
                _ => segments.push(seg),
            }
        }
        segments.extend(as4.segments);
        AsPath { segments }
    }
}

/// MP_REACH_NLRI for a family pier speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpReach {
    pub family: AfiSafi,
    /// The global next hop, and for IPv6 optionally a link-local one (RFC
    /// 2545).
    pub next_hops: Vec<IpAddr>,
    pub nlri: Vec<Nlri>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpUnreach {
    pub family: AfiSafi,
    pub withdrawn: Vec<Nlri>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    Origin(Origin),
    AsPath(AsPath),
    NextHop(Ipv4Addr),
    Med(u32),
    LocalPref(u32),
    AtomicAggregate,
    Aggregator {
        asn: u32,
        address: Ipv4Addr,
    },
    Communities(Vec<u32>),
    MpReach(MpReach),
    MpUnreach(MpUnreach),
    LargeCommunities(Vec<(u32, u32, u32)>),
    /// An attribute pier does not interpret (or a family it does not speak),
    /// kept as received.
    Unknown {
        flags: u8,
        code: u8,
        value: Vec<u8>,
    },
}

impl Attribute {
    pub fn code(&self) -> u8 {
        match self {
            Attribute::Origin(_) => ATTR_ORIGIN,
            Attribute::AsPath(_) => ATTR_AS_PATH,
            Attribute::NextHop(_) => ATTR_NEXT_HOP,
            Attribute::Med(_) => ATTR_MED,
            Attribute::LocalPref(_) => ATTR_LOCAL_PREF,
            Attribute::AtomicAggregate => ATTR_ATOMIC_AGGREGATE,
            Attribute::Aggregator { .. } => ATTR_AGGREGATOR,
            Attribute::Communities(_) => ATTR_COMMUNITIES,
            Attribute::MpReach(_) => ATTR_MP_REACH,
            Attribute::MpUnreach(_) => ATTR_MP_UNREACH,
            Attribute::LargeCommunities(_) => ATTR_LARGE_COMMUNITIES,
            Attribute::Unknown { code, .. } => *code,
        }
    }

    /// Optional and transitive bits as the attribute's RFC defines them.
    fn standard_flags(code: u8) -> Option<u8> {
        Some(match code {
            ATTR_ORIGIN
            | ATTR_AS_PATH
            | ATTR_NEXT_HOP
            | ATTR_LOCAL_PREF
            | ATTR_ATOMIC_AGGREGATE => FLAG_TRANSITIVE,
            ATTR_MED | ATTR_MP_REACH | ATTR_MP_UNREACH => FLAG_OPTIONAL,
            ATTR_AGGREGATOR
            | ATTR_COMMUNITIES
            | ATTR_AS4_PATH
            | ATTR_AS4_AGGREGATOR
            | ATTR_LARGE_COMMUNITIES => FLAG_OPTIONAL | FLAG_TRANSITIVE,
            _ => return None,
        })
    }

    fn encode_value(&self, ctx: &Context, out: &mut Vec<u8>) {
        match self {
            Attribute::Origin(o) => out.push(match o {
                Origin::Igp => 0,
                Origin::Egp => 1,
                Origin::Incomplete => 2,
            }),
            Attribute::AsPath(p) => p.encode(ctx.four_octet_as, out),
            Attribute::NextHop(a) => out.extend_from_slice(&a.octets()),
            Attribute::Med(v) | Attribute::LocalPref(v) => out.extend_from_slice(&v.to_be_bytes()),
            Attribute::AtomicAggregate => {}
            Attribute::Aggregator { asn, address } => {
                if ctx.four_octet_as {
                    out.extend_from_slice(&asn.to_be_bytes());
                } else {
                    out.extend_from_slice(&u16::try_from(*asn).unwrap_or(AS_TRANS).to_be_bytes());
                }
                out.extend_from_slice(&address.octets());
            }
            Attribute::Communities(list) => {
                for c in list {
                    out.extend_from_slice(&c.to_be_bytes());
                }
            }
            Attribute::MpReach(mp) => {
                out.extend_from_slice(&mp.family.afi.to_be_bytes());
                out.push(mp.family.safi);
                let nh_len: usize = mp
                    .next_hops
                    .iter()
                    .map(|a| if a.is_ipv4() { 4 } else { 16 })
                    .sum();
                out.push(nh_len as u8);
                for a in &mp.next_hops {
                    match a {
                        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
                    }
                }
                out.push(0);
                let ap = ctx.has_path_id(mp.family);
                for n in &mp.nlri {
                    n.encode(ap, out);
                }
            }
            Attribute::MpUnreach(mp) => {
                out.extend_from_slice(&mp.family.afi.to_be_bytes());
                out.push(mp.family.safi);
                let ap = ctx.has_path_id(mp.family);
                for n in &mp.withdrawn {
                    n.encode(ap, out);
                }
            }
            Attribute::LargeCommunities(list) => {
                for (a, b, c) in list {
                    out.extend_from_slice(&a.to_be_bytes());
                    out.extend_from_slice(&b.to_be_bytes());
                    out.extend_from_slice(&c.to_be_bytes());
                }
            }
            Attribute::Unknown { value, .. } => out.extend_from_slice(value),
        }
    }

    fn encode(&self, ctx: &Context, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let code = self.code();
        let flags = match self {
            Attribute::Unknown { flags, .. } => flags & !FLAG_EXTENDED,
            _ => Attribute::standard_flags(code).unwrap_or(FLAG_OPTIONAL),
        };
        encode_raw(flags, code, out, |out| {
            self.encode_value(ctx, out);
            Ok(())
        })
    }
}

/// Writes one attribute whose value `fill` appends, choosing the length
/// field's size afterwards.
fn encode_raw(
    flags: u8,
    code: u8,
    out: &mut Vec<u8>,
    fill: impl FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[flags | FLAG_EXTENDED, code, 0, 0]);
    fill(out)?;
    let len = out.len() - start - 4;
    if len <= 255 {
        out[start] = flags & !FLAG_EXTENDED;
        out[start + 2] = len as u8;
        out.remove(start + 3);
    } else {
        let len16 = u16::try_from(len).map_err(|_| EncodeError::TooLong {
            what: "path attribute",
            len,
            max: 65535,
        })?;
        out[start + 2..start + 4].copy_from_slice(&len16.to_be_bytes());
    }
    Ok(())
}

/// An UPDATE.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// IPv4 unicast withdrawals (the classic field).
    pub withdrawn: Vec<Nlri>,
    pub attributes: Vec<Attribute>,
    /// IPv4 unicast announcements (the classic field).
    pub nlri: Vec<Nlri>,
}

impl Update {
    /// RFC 4724 §2 End-of-RIB marker for `family`.
    pub fn end_of_rib(family: AfiSafi) -> Update {
        if family == AfiSafi::IPV4_UNICAST {
            Update::default()
        } else {
            Update {
                attributes: vec![Attribute::MpUnreach(MpUnreach {
                    family,
                    withdrawn: Vec::new(),
                })],
                ..Update::default()
            }
        }
    }

    /// The family this UPDATE marks End-of-RIB for, if it is one.
    pub fn is_end_of_rib(&self) -> Option<AfiSafi> {
        if !self.withdrawn.is_empty() || !self.nlri.is_empty() {
            return None;
        }
        match self.attributes.as_slice() {
            [] => Some(AfiSafi::IPV4_UNICAST),
            [Attribute::MpUnreach(mp)] if mp.withdrawn.is_empty() => Some(mp.family),
            _ => None,
        }
    }

    pub fn attribute(&self, code: u8) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.code() == code)
    }

    /// Every announced prefix with its next hops, whichever field it came in.
    pub fn announced(&self) -> Vec<(Nlri, Vec<IpAddr>)> {
        let mut out = Vec::new();
        if let Some(Attribute::NextHop(nh)) = self.attribute(ATTR_NEXT_HOP) {
            out.extend(self.nlri.iter().map(|n| (*n, vec![IpAddr::V4(*nh)])));
        }
        for a in &self.attributes {
            if let Attribute::MpReach(mp) = a {
                out.extend(mp.nlri.iter().map(|n| (*n, mp.next_hops.clone())));
            }
        }
        out
    }

    /// Every withdrawn prefix, whichever field it came in.
    pub fn withdrawn_all(&self) -> Vec<Nlri> {
        let mut out = self.withdrawn.clone();
        for a in &self.attributes {
            if let Attribute::MpUnreach(mp) = a {
                out.extend(mp.withdrawn.iter().copied());
            }
        }
        out
    }

    pub(super) fn encode_body(&self, out: &mut Vec<u8>, ctx: &Context) -> Result<(), EncodeError> {
        let ap4 = ctx.has_path_id(AfiSafi::IPV4_UNICAST);
        let start = out.len();
        out.extend_from_slice(&[0, 0]);
        for n in &self.withdrawn {
            n.encode(ap4, out);
        }
        let wlen = out.len() - start - 2;
        out[start..start + 2].copy_from_slice(&(wlen.min(65535) as u16).to_be_bytes());
        let astart = out.len();
        out.extend_from_slice(&[0, 0]);
        for a in &self.attributes {
            a.encode(ctx, out)?;
            // RFC 6793 §4.2.2: a 2-octet peer also gets the real path.
            if let Attribute::AsPath(p) = a {
                if !ctx.four_octet_as && p.needs_four_octets() {
                    encode_raw(FLAG_OPTIONAL | FLAG_TRANSITIVE, ATTR_AS4_PATH, out, |out| {
                        p.encode(true, out);
                        Ok(())
                    })?;
                }
            }
            if let Attribute::Aggregator { asn, address } = a {
                if !ctx.four_octet_as && *asn > 0xffff {
                    encode_raw(
                        FLAG_OPTIONAL | FLAG_TRANSITIVE,
                        ATTR_AS4_AGGREGATOR,
                        out,
                        |out| {
                            out.extend_from_slice(&asn.to_be_bytes());
                            out.extend_from_slice(&address.octets());
                            Ok(())
                        },
                    )?;
                }
            }
        }
        let alen = out.len() - astart - 2;
        let alen16 = u16::try_from(alen).map_err(|_| EncodeError::TooLong {
            what: "UPDATE path attributes",
            len: alen,
            max: 65535,
        })?;
        out[astart..astart + 2].copy_from_slice(&alen16.to_be_bytes());
        for n in &self.nlri {
            n.encode(ap4, out);
        }
        Ok(())
    }

    /// Decodes an UPDATE body, applying RFC 7606.
    pub(super) fn decode(body: &[u8], ctx: &Context) -> Result<(Update, Vec<AttrNote>), WireError> {
        let list_err = |reason: String| {
            WireError::new(
                notif::UPDATE_MESSAGE,
                UPD_MALFORMED_ATTRIBUTE_LIST,
                Vec::new(),
                reason,
            )
        };
        let mut r = Reader::new(body);
        let wlen = r
            .u16()
            .ok_or_else(|| list_err("UPDATE shorter than its length fields".into()))?;
        let withdrawn_raw = r.take(wlen as usize).ok_or_else(|| {
            list_err(format!(
                "withdrawn routes length {wlen} overruns the message"
            ))
        })?;
        let alen = r
            .u16()
            .ok_or_else(|| list_err("UPDATE ends before the total path attribute length".into()))?;
        let attrs_raw = r.take(alen as usize).ok_or_else(|| {
            list_err(format!(
                "total path attribute length {alen} overruns the message"
            ))
        })?;
        let nlri_raw = r.take(r.remaining()).unwrap_or_default();
        let ap4 = ctx.has_path_id(AfiSafi::IPV4_UNICAST);
        let withdrawn = decode_nlri(
            withdrawn_raw,
            AfiSafi::IPV4_UNICAST,
            ap4,
            "withdrawn routes",
        )?;
        let nlri = decode_nlri(nlri_raw, AfiSafi::IPV4_UNICAST, ap4, "NLRI")?;

        let mut notes = Vec::new();
        let withdraw = |notes: &mut Vec<AttrNote>, attr: u8, reason: String| {
            notes.push(AttrNote {
                action: AttrAction::TreatAsWithdraw,
                attr,
                reason,
            })
        };
        let mut attributes: Vec<Attribute> = Vec::new();
        let mut as4_path: Option<AsPath> = None;
        let mut as4_aggregator: Option<(u32, Ipv4Addr)> = None;
        let mut seen = [false; 256];
        let mut a = Reader::new(attrs_raw);
        while !a.is_empty() {
            // RFC 7606 §4: an attribute overrunning the list leaves the NLRI
            // locatable, so the routes are withdrawn rather than the session.
            let header = match (a.u8(), a.u8()) {
                (Some(f), Some(c)) => Some((f, c)),
                _ => None,
            };
            let len = match header {
                Some((f, _)) if f & FLAG_EXTENDED != 0 => a.u16(),
                Some(_) => a.u8().map(u16::from),
                None => None,
            };
            let (Some((flags, code)), Some(len)) = (header, len) else {
                withdraw(&mut notes, 0, "attribute header cut short".into());
                break;
            };
            let Some(value) = a.take(len as usize) else {
                withdraw(
                    &mut notes,
                    code,
                    format!("length {len} overruns the path attributes"),
                );
                break;
            };
            if seen[code as usize] {
                if code == ATTR_MP_REACH || code == ATTR_MP_UNREACH {
                    return Err(list_err(format!("attribute {code} appears twice")));
                }
                notes.push(AttrNote {
                    action: AttrAction::AttributeDiscard,
                    attr: code,
                    reason: "repeated; the first one kept".into(),
                });
                continue;
            }
            seen[code as usize] = true;
            let standard = Attribute::standard_flags(code);
            match standard {
                None if flags & FLAG_OPTIONAL == 0 => {
                    let mut data = vec![flags, code];
                    data.extend_from_slice(&(len.min(255) as u8).to_be_bytes());
                    data.extend_from_slice(value);
                    return Err(WireError::new(
                        notif::UPDATE_MESSAGE,
                        UPD_UNRECOGNIZED_WELL_KNOWN,
                        data,
                        format!("unrecognized well-known attribute {code}"),
                    ));
                }
                None => {
                    attributes.push(Attribute::Unknown {
                        flags: flags & !FLAG_EXTENDED,
                        code,
                        value: value.to_vec(),
                    });
                    continue;
                }
                Some(std_flags)
                    if (flags & (FLAG_OPTIONAL | FLAG_TRANSITIVE)) != std_flags
                        && code != ATTR_MP_REACH
                        && code != ATTR_MP_UNREACH =>
                {
                    withdraw(
                        &mut notes,
                        code,
                        format!("flags {flags:#04x} conflict with the attribute's definition"),
                    );
                    continue;
                }
                Some(_) => {}
            }
            let four = ctx.four_octet_as;
            let parsed: Result<Attribute, (AttrAction, String)> = match code {
                ATTR_ORIGIN => match value {
                    [0] => Ok(Attribute::Origin(Origin::Igp)),
                    [1] => Ok(Attribute::Origin(Origin::Egp)),
                    [2] => Ok(Attribute::Origin(Origin::Incomplete)),
                    _ => Err((
                        AttrAction::TreatAsWithdraw,
                        format!("ORIGIN value {value:?} is invalid"),
                    )),
                },
                ATTR_AS_PATH => AsPath::decode(value, four)
                    .map(Attribute::AsPath)
                    .map_err(|e| (AttrAction::TreatAsWithdraw, format!("AS_PATH: {e}"))),
                ATTR_NEXT_HOP => match <[u8; 4]>::try_from(value) {
                    Ok(b) => Ok(Attribute::NextHop(Ipv4Addr::from(b))),
                    Err(_) => Err((
                        AttrAction::TreatAsWithdraw,
                        format!("NEXT_HOP of {len} octets"),
                    )),
                },
                ATTR_MED | ATTR_LOCAL_PREF => match <[u8; 4]>::try_from(value) {
                    Ok(b) if code == ATTR_MED => Ok(Attribute::Med(u32::from_be_bytes(b))),
                    Ok(b) => Ok(Attribute::LocalPref(u32::from_be_bytes(b))),
                    Err(_) => Err((AttrAction::TreatAsWithdraw, format!("length {len}, not 4"))),
                },
                ATTR_ATOMIC_AGGREGATE if value.is_empty() => Ok(Attribute::AtomicAggregate),
                ATTR_ATOMIC_AGGREGATE => {
                    Err((AttrAction::AttributeDiscard, format!("length {len}, not 0")))
                }
                ATTR_AGGREGATOR => match (four, value.len()) {
                    (true, 8) => Ok(Attribute::Aggregator {
                        asn: u32::from_be_bytes([value[0], value[1], value[2], value[3]]),
                        address: Ipv4Addr::new(value[4], value[5], value[6], value[7]),
                    }),
                    (false, 6) => Ok(Attribute::Aggregator {
                        asn: u16::from_be_bytes([value[0], value[1]]) as u32,
                        address: Ipv4Addr::new(value[2], value[3], value[4], value[5]),
                    }),
                    _ => Err((
                        AttrAction::AttributeDiscard,
                        format!("AGGREGATOR of {len} octets"),
                    )),
                },
                ATTR_COMMUNITIES if !value.is_empty() && value.len() % 4 == 0 => {
                    Ok(Attribute::Communities(
                        value
                            .chunks_exact(4)
                            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                            .collect(),
                    ))
                }
                ATTR_COMMUNITIES => Err((
                    AttrAction::TreatAsWithdraw,
                    format!("COMMUNITIES of {len} octets"),
                )),
                ATTR_LARGE_COMMUNITIES if !value.is_empty() && value.len() % 12 == 0 => {
                    Ok(Attribute::LargeCommunities(
                        value
                            .chunks_exact(12)
                            .map(|c| {
                                let w = |i: usize| {
                                    u32::from_be_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]])
                                };
                                (w(0), w(4), w(8))
                            })
                            .collect(),
                    ))
                }
                ATTR_LARGE_COMMUNITIES => Err((
                    AttrAction::TreatAsWithdraw,
                    format!("LARGE_COMMUNITIES of {len} octets"),
                )),
                ATTR_AS4_PATH => {
                    // RFC 6793 §6: a bad AS4_PATH is discarded; a 4-octet
                    // speaker ignores it altogether.
                    match AsPath::decode(value, true) {
                        Ok(p) if !four => as4_path = Some(p),
                        Ok(_) => {}
                        Err(e) => notes.push(AttrNote {
                            action: AttrAction::AttributeDiscard,
                            attr: code,
                            reason: format!("AS4_PATH: {e}"),
                        }),
                    }
                    continue;
                }
                ATTR_AS4_AGGREGATOR => {
                    if value.len() == 8 {
                        if !four {
                            as4_aggregator = Some((
                                u32::from_be_bytes([value[0], value[1], value[2], value[3]]),
                                Ipv4Addr::new(value[4], value[5], value[6], value[7]),
                            ));
                        }
                    } else {
                        notes.push(AttrNote {
                            action: AttrAction::AttributeDiscard,
                            attr: code,
                            reason: format!("AS4_AGGREGATOR of {len} octets"),
                        });
                    }
                    continue;
                }
                ATTR_MP_REACH => decode_mp_reach(value, ctx, flags)?,
                ATTR_MP_UNREACH => decode_mp_unreach(value, ctx, flags)?,
                _ => verbatim(code, flags, value),
            };
            match parsed {
                Ok(attr) => attributes.push(attr),
                Err((action, reason)) => notes.push(AttrNote {
                    action,
                    attr: code,
                    reason,
                }),
            }
        }

        if let Some(as4) = as4_path {
            for attr in attributes.iter_mut() {
                if let Attribute::AsPath(p) = attr {
                    *p = std::mem::take(p).merge_as4(as4.clone());
                }
            }
        }
        if let Some((asn4, addr4)) = as4_aggregator {
            for attr in attributes.iter_mut() {
                if let Attribute::Aggregator { asn, address } = attr {
                    if *asn == AS_TRANS as u32 {
                        *asn = asn4;
                        *address = addr4;
                    }
                }
            }
        }

        let mut update = Update {
            withdrawn,
            attributes,
            nlri,
        };
        // RFC 7606 §3(d): a missing mandatory attribute withdraws.
        let reaches = update
            .attributes
            .iter()
            .any(|a| matches!(a, Attribute::MpReach(m) if !m.nlri.is_empty()));
        if !update.nlri.is_empty() || reaches {
            for (code, name) in [(ATTR_ORIGIN, "ORIGIN"), (ATTR_AS_PATH, "AS_PATH")] {
                if update.attribute(code).is_none() && !notes.iter().any(|n| n.attr == code) {
                    withdraw(&mut notes, code, format!("mandatory {name} is missing"));
                }
            }
            if !update.nlri.is_empty()
                && update.attribute(ATTR_NEXT_HOP).is_none()
                && !notes.iter().any(|n| n.attr == ATTR_NEXT_HOP)
            {
                withdraw(
                    &mut notes,
                    ATTR_NEXT_HOP,
                    "mandatory NEXT_HOP is missing".into(),
                );
            }
        }
        if notes
            .iter()
            .any(|n| n.action == AttrAction::TreatAsWithdraw)
        {
            update = update.into_withdrawal();
        }
        Ok((update, notes))
    }

    /// RFC 7606 treat-as-withdraw: every route the UPDATE carried is
    /// withdrawn instead, and its attributes are dropped.
    fn into_withdrawal(self) -> Update {
        let mut withdrawn = self.withdrawn;
        withdrawn.extend(self.nlri);
        let mut unreach: Vec<MpUnreach> = Vec::new();
        for a in self.attributes {
            let (family, list) = match a {
                Attribute::MpReach(m) => (m.family, m.nlri),
                Attribute::MpUnreach(m) => (m.family, m.withdrawn),
                _ => continue,
            };
            match unreach.iter_mut().find(|u| u.family == family) {
                Some(u) => u.withdrawn.extend(list),
                None => unreach.push(MpUnreach {
                    family,
                    withdrawn: list,
                }),
            }
        }
        Update {
            withdrawn,
            attributes: unreach.into_iter().map(Attribute::MpUnreach).collect(),
            nlri: Vec::new(),
        }
    }
}

/// A code with standard flags but no parser here: kept as received.
fn verbatim(code: u8, flags: u8, value: &[u8]) -> Result<Attribute, (AttrAction, String)> {
    Ok(Attribute::Unknown {
        flags: flags & !FLAG_EXTENDED,
        code,
        value: value.to_vec(),
    })
}

fn spoken(family: AfiSafi) -> bool {
    family == AfiSafi::IPV4_UNICAST || family == AfiSafi::IPV6_UNICAST
}

fn mp_error(reason: String) -> WireError {
    // RFC 7606 §7.11: the NLRI cannot be located reliably; reset.
    WireError::new(
        notif::UPDATE_MESSAGE,
        UPD_OPTIONAL_ATTRIBUTE_ERROR,
        Vec::new(),
        reason,
    )
}

fn decode_mp_reach(
    value: &[u8],
    ctx: &Context,
    flags: u8,
) -> Result<Result<Attribute, (AttrAction, String)>, WireError> {
    let mut r = Reader::new(value);
    let (Some(afi), Some(safi), Some(nh_len)) = (r.u16(), r.u8(), r.u8()) else {
        return Err(mp_error(format!("MP_REACH_NLRI of {} octets", value.len())));
    };
    let family = AfiSafi { afi, safi };
    if !spoken(family) {
        return Ok(Ok(Attribute::Unknown {
            flags: flags & !FLAG_EXTENDED,
            code: ATTR_MP_REACH,
            value: value.to_vec(),
        }));
    }
    let Some(nh) = r.take(nh_len as usize) else {
        return Err(mp_error(format!(
            "MP_REACH_NLRI next hop length {nh_len} overruns"
        )));
    };
    let v6 = |b: &[u8]| {
        let mut a = [0u8; 16];
        a.copy_from_slice(b);
        IpAddr::V6(Ipv6Addr::from(a))
    };
    let next_hops = match nh.len() {
        4 => vec![IpAddr::V4(Ipv4Addr::new(nh[0], nh[1], nh[2], nh[3]))],
        16 => vec![v6(nh)],
        32 => vec![v6(&nh[..16]), v6(&nh[16..])],
        n => {
            return Err(mp_error(format!(
                "MP_REACH_NLRI next hop of {n} octets for {family}"
            )))
        }
    };
    if r.u8().is_none() {
        return Err(mp_error(
            "MP_REACH_NLRI ends before its reserved octet".into(),
        ));
    }
    let rest = r.take(r.remaining()).unwrap_or_default();
    let nlri = decode_nlri(rest, family, ctx.has_path_id(family), "MP_REACH_NLRI")
        .map_err(|e| mp_error(e.reason))?;
    Ok(Ok(Attribute::MpReach(MpReach {
        family,
        next_hops,
        nlri,
    })))
}

fn decode_mp_unreach(
    value: &[u8],
    ctx: &Context,
    flags: u8,
) -> Result<Result<Attribute, (AttrAction, String)>, WireError> {
    let mut r = Reader::new(value);
    let (Some(afi), Some(safi)) = (r.u16(), r.u8()) else {
        return Err(mp_error(format!(
            "MP_UNREACH_NLRI of {} octets",
            value.len()
        )));
    };
    let family = AfiSafi { afi, safi };
    if !spoken(family) {
        return Ok(Ok(Attribute::Unknown {
            flags: flags & !FLAG_EXTENDED,
            code: ATTR_MP_UNREACH,
            value: value.to_vec(),
        }));
    }
    let rest = r.take(r.remaining()).unwrap_or_default();
    let withdrawn = decode_nlri(rest, family, ctx.has_path_id(family), "MP_UNREACH_NLRI")
        .map_err(|e| mp_error(e.reason))?;
    Ok(Ok(Attribute::MpUnreach(MpUnreach { family, withdrawn })))
}

/// Room for NLRI in an UPDATE whose other parts take `fixed` octets.
fn room(ctx: &Context, fixed: usize) -> Result<usize, EncodeError> {
    let max = ctx.max_len();
    if HEADER_LEN + fixed >= max {
        return Err(EncodeError::TooLong {
            what: "UPDATE path attributes",
            len: HEADER_LEN + fixed,
            max,
        });
    }
    Ok(max - HEADER_LEN - fixed)
}

fn header(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xff; 16]);
    out.extend_from_slice(&[0, 0, TYPE_UPDATE]);
}

fn finish(mut msg: Vec<u8>) -> Vec<u8> {
    let len = msg.len() as u16;
    msg[16..18].copy_from_slice(&len.to_be_bytes());
    msg
}

/// Splits `nlri` into runs that fit `room` octets each.
fn chunks(nlri: &[Nlri], ap: bool, room: usize) -> Vec<&[Nlri]> {
    let mut out = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, n) in nlri.iter().enumerate() {
        let l = n.wire_len(ap);
        if used + l > room && i > start {
            out.push(&nlri[start..i]);
            start = i;
            used = 0;
        }
        used += l;
    }
    if start < nlri.len() {
        out.push(&nlri[start..]);
    }
    out
}

/// UPDATE messages (whole, header included) announcing every prefix of
/// `nlri` (all of `family`) with the shared `attrs` and `next_hops`, as
/// few as the message size allows. `attrs` must not hold NEXT_HOP or MP
/// attributes: they are added here (NEXT_HOP for IPv4, MP_REACH_NLRI for
/// IPv6).
pub fn pack_announce(
    family: AfiSafi,
    next_hops: &[IpAddr],
    attrs: &[Attribute],
    nlri: &[Nlri],
    ctx: &Context,
) -> Result<Vec<Vec<u8>>, EncodeError> {
    let ap = ctx.has_path_id(family);
    let mut common = Vec::new();
    for a in attrs {
        if matches!(
            a,
            Attribute::NextHop(_) | Attribute::MpReach(_) | Attribute::MpUnreach(_)
        ) {
            return Err(EncodeError::Invalid(format!(
                "attribute {} is added by pack_announce",
                a.code()
            )));
        }
        let update = Update {
            attributes: vec![a.clone()],
            ..Update::default()
        };
        let mut one = Vec::new();
        update.encode_body(&mut one, ctx)?;
        // Skip the two length fields of the one-attribute UPDATE.
        common.extend_from_slice(&one[4..]);
    }
    let mut out = Vec::new();
    if family == AfiSafi::IPV4_UNICAST {
        let Some(IpAddr::V4(nh)) = next_hops.first() else {
            return Err(EncodeError::Invalid(
                "IPv4 routes need an IPv4 next hop".into(),
            ));
        };
        Attribute::NextHop(*nh).encode(ctx, &mut common)?;
        let room = room(ctx, 4 + common.len())?;
        for chunk in chunks(nlri, ap, room) {
            let mut msg = Vec::with_capacity(ctx.max_len().min(4096));
            header(&mut msg);
            msg.extend_from_slice(&[0, 0]);
            msg.extend_from_slice(&(common.len() as u16).to_be_bytes());
            msg.extend_from_slice(&common);
            for n in chunk {
                n.encode(ap, &mut msg);
            }
            out.push(finish(msg));
        }
    } else {
        let mp_fixed: usize = 4
            + 3
            + 1
            + next_hops
                .iter()
                .map(|a| if a.is_ipv4() { 4 } else { 16 })
                .sum::<usize>()
            + 1;
        let room = room(ctx, 4 + common.len() + mp_fixed)?;
        for chunk in chunks(nlri, ap, room) {
            let mut attr_bytes = common.clone();
            let mp = Attribute::MpReach(MpReach {
                family,
                next_hops: next_hops.to_vec(),
                nlri: chunk.to_vec(),
            });
            encode_raw(FLAG_OPTIONAL, ATTR_MP_REACH, &mut attr_bytes, |o| {
                mp.encode_value(ctx, o);
                Ok(())
            })?;
            let mut msg = Vec::with_capacity(HEADER_LEN + 4 + attr_bytes.len());
            header(&mut msg);
            msg.extend_from_slice(&[0, 0]);
            msg.extend_from_slice(&(attr_bytes.len() as u16).to_be_bytes());
            msg.extend_from_slice(&attr_bytes);
            out.push(finish(msg));
        }
    }
    Ok(out)
}

/// UPDATE messages withdrawing every prefix of `nlri` (all of `family`).
pub fn pack_withdraw(
    family: AfiSafi,
    nlri: &[Nlri],
    ctx: &Context,
) -> Result<Vec<Vec<u8>>, EncodeError> {
    let ap = ctx.has_path_id(family);
    let mut out = Vec::new();
    if family == AfiSafi::IPV4_UNICAST {
        let room = room(ctx, 4)?;
        for chunk in chunks(nlri, ap, room) {
            let mut msg = Vec::new();
            header(&mut msg);
            let wlen: usize = chunk.iter().map(|n| n.wire_len(ap)).sum();
            msg.extend_from_slice(&(wlen as u16).to_be_bytes());
            for n in chunk {
                n.encode(ap, &mut msg);
            }
            msg.extend_from_slice(&[0, 0]);
            out.push(finish(msg));
        }
    } else {
        let room = room(ctx, 4 + 4 + 3)?;
        for chunk in chunks(nlri, ap, room) {
            let update = Update {
                attributes: vec![Attribute::MpUnreach(MpUnreach {
                    family,
                    withdrawn: chunk.to_vec(),
                })],
                ..Update::default()
            };
            let mut msg = Vec::new();
            header(&mut msg);
            update.encode_body(&mut msg, ctx)?;
            out.push(finish(msg));
        }
    }
    Ok(out)
}
