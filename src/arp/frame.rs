//! Pure parsing and building of the Ethernet frames the responder handles:
//! ARP (RFC 826) requests and replies, gratuitous ARP (RFC 5227 §3
//! "announcement"), and NDP (RFC 4861) neighbour solicitations and
//! advertisements. No I/O, no clock, no panics on any input.
//!
//! Hand-written rather than `pnet_packet`: as fast, and pnet's NDP option
//! walk overflows on an option length of 32 or more (docs/architecture.md,
//! "The nftables and pnet crates").
//!
//! ```text
//! Ethernet:  dst(6) src(6) ethertype(2)
//! ARP:       htype(2)=1 ptype(2)=0x0800 hlen(1)=6 plen(1)=4 op(2)
//!            sha(6) spa(4) tha(6) tpa(4)                          = 28 octets
//! IPv6:      ver/tc/flow(4) payload_len(2) next_header(1)=58 hop_limit(1)=255
//!            src(16) dst(16)                                      = 40 octets
//! ICMPv6 NS: type(1)=135 code(1)=0 checksum(2) reserved(4) target(16) options
//! ICMPv6 NA: type(1)=136 code(1)=0 checksum(2) R|S|O|reserved(4) target(16) options
//! option:    type(1) length(1, in units of 8 octets) value
//!            1 = source link-layer address, 2 = target link-layer address
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::ArpError;

pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETH_HEADER: usize = 14;
const ARP_LEN: usize = 28;
const IPV6_HEADER: usize = 40;
const NEXT_HEADER_ICMPV6: u8 = 58;
const ICMPV6_NS: u8 = 135;
const ICMPV6_NA: u8 = 136;
/// NS and NA without options: type, code, checksum, 4 reserved/flag octets, target.
const ND_MESSAGE_LEN: usize = 24;
const OPT_SOURCE_LL: u8 = 1;
const OPT_TARGET_LL: u8 = 2;
const NA_FLAG_SOLICITED: u8 = 0x40;
const NA_FLAG_OVERRIDE: u8 = 0x20;

/// An Ethernet (EUI-48) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const BROADCAST: Mac = Mac([0xff; 6]);
    pub const ZERO: Mac = Mac([0; 6]);

    /// RFC 2464 §7: IPv6 multicast `ff..:aabb:ccdd` maps to `33:33:aa:bb:cc:dd`.
    pub fn ipv6_multicast(group: &Ipv6Addr) -> Mac {
        let o = group.octets();
        Mac([0x33, 0x33, o[12], o[13], o[14], o[15]])
    }

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// RFC 4291 §2.7.1: `ff02::1:ffXX:XXXX` from the low 24 bits of `addr`.
pub fn solicited_node(addr: &Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | o[13] as u16,
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The all-nodes link-local multicast group `ff02::1`.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// A question about who has an address, as read off the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// ARP request (op 1). `sender_ip` is 0.0.0.0 for an RFC 5227 probe.
    Arp {
        sender_mac: Mac,
        sender_ip: Ipv4Addr,
        target_ip: Ipv4Addr,
    },
    /// ICMPv6 neighbour solicitation. `source` is `::` during duplicate
    /// address detection; `reply_mac` is the source link-layer address
    /// option when present, else the Ethernet source.
    Neighbour {
        reply_mac: Mac,
        source: Ipv6Addr,
        target: Ipv6Addr,
    },
}

impl Request {
    /// The address asked about.
    pub fn target(&self) -> IpAddr {
        match self {
            Request::Arp { target_ip, .. } => IpAddr::V4(*target_ip),
            Request::Neighbour { target, .. } => IpAddr::V6(*target),
        }
    }

    /// A gratuitous ARP from another host (sender = target) announces, it
    /// does not ask: answering it would only start an ARP duel.
    pub fn is_announcement(&self) -> bool {
        matches!(self, Request::Arp { sender_ip, target_ip, .. } if sender_ip == target_ip)
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn take<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at + N)?.try_into().ok()
}

fn truncated(what: &'static str, len: usize, need: usize) -> ArpError {
    ArpError::Truncated { what, len, need }
}

/// Parse one Ethernet frame. `Ok(None)` for frames that are no request
/// (other ethertypes, ARP replies, other ICMPv6 messages, other hardware);
/// `Err` for frames that claim to be ARP or NDP but are malformed.
pub fn parse_request(frame: &[u8]) -> Result<Option<Request>, ArpError> {
    let ethertype = u16_at(frame, 12).ok_or(truncated("Ethernet header", frame.len(), 14))?;
    let eth_src = Mac(take(frame, 6).ok_or(truncated("Ethernet header", frame.len(), 14))?);
    let body = &frame[ETH_HEADER..];
    match ethertype {
        ETHERTYPE_ARP => parse_arp(body),
        ETHERTYPE_IPV6 => parse_ns(body, eth_src),
        _ => Ok(None),
    }
}

fn parse_arp(b: &[u8]) -> Result<Option<Request>, ArpError> {
    // Only Ethernet/IPv4 ARP is ours; hlen/plen checked once that is known.
    let (Some(htype), Some(ptype)) = (u16_at(b, 0), u16_at(b, 2)) else {
        return Err(truncated("ARP packet", b.len(), ARP_LEN));
    };
    if htype != 1 || ptype != ETHERTYPE_IPV4 {
        return Ok(None);
    }
    if b.len() < ARP_LEN {
        return Err(truncated("ARP packet", b.len(), ARP_LEN));
    }
    if b[4] != 6 || b[5] != 4 {
        return Err(ArpError::Malformed {
            what: "ARP packet",
            why: format!(
                "Ethernet/IPv4 ARP with address lengths {}/{} (expected 6/4)",
                b[4], b[5]
            ),
        });
    }
    let op = u16_at(b, 6).unwrap_or(0);
    if op != 1 {
        return Ok(None);
    }
    let sender_mac = Mac(take(b, 8).unwrap_or_default());
    let sender_ip = Ipv4Addr::from(take::<4>(b, 14).unwrap_or_default());
    let target_ip = Ipv4Addr::from(take::<4>(b, 24).unwrap_or_default());
    Ok(Some(Request::Arp {
        sender_mac,
        sender_ip,
        target_ip,
    }))
}

fn malformed(what: &'static str, why: impl Into<String>) -> ArpError {
    ArpError::Malformed {
        what,
        why: why.into(),
    }
}

/// RFC 4861 §7.1.1 validity checks for a neighbour solicitation.
fn parse_ns(b: &[u8], eth_src: Mac) -> Result<Option<Request>, ArpError> {
    if b.len() < IPV6_HEADER {
        return Err(truncated("IPv6 header", b.len(), IPV6_HEADER));
    }
    if b[0] >> 4 != 6 {
        return Err(malformed("IPv6 header", format!("version {}", b[0] >> 4)));
    }
    // Extension headers before ICMPv6 are not followed: NS never carries them.
    if b[6] != NEXT_HEADER_ICMPV6 {
        return Ok(None);
    }
    let payload_len = u16_at(b, 4).unwrap_or(0) as usize;
    let payload = b
        .get(IPV6_HEADER..IPV6_HEADER + payload_len)
        .ok_or(truncated(
            "IPv6 payload",
            b.len(),
            IPV6_HEADER + payload_len,
        ))?;
    if payload.first() != Some(&ICMPV6_NS) {
        return Ok(None);
    }
    let src = Ipv6Addr::from(take::<16>(b, 8).unwrap_or_default());
    let dst = Ipv6Addr::from(take::<16>(b, 24).unwrap_or_default());
    const WHAT: &str = "neighbour solicitation";
    if payload.len() < ND_MESSAGE_LEN {
        return Err(truncated(WHAT, payload.len(), ND_MESSAGE_LEN));
    }
    if b[7] != 255 {
        return Err(malformed(WHAT, format!("hop limit {} (must be 255)", b[7])));
    }
    if payload[1] != 0 {
        return Err(malformed(WHAT, format!("ICMP code {}", payload[1])));
    }
    let sum = icmpv6_checksum(&src, &dst, payload);
    if sum != 0 {
        return Err(malformed(WHAT, "bad ICMPv6 checksum"));
    }
    let target = Ipv6Addr::from(take::<16>(payload, 8).unwrap_or_default());
    if target.is_multicast() {
        return Err(malformed(WHAT, format!("multicast target {target}")));
    }
    let mut source_ll = None;
    let mut opts = &payload[ND_MESSAGE_LEN..];
    while !opts.is_empty() {
        let (Some(&kind), Some(&len8)) = (opts.first(), opts.get(1)) else {
            return Err(truncated("NDP option", opts.len(), 2));
        };
        let len = len8 as usize * 8;
        if len == 0 {
            return Err(malformed(WHAT, "option of length 0"));
        }
        let opt = opts
            .get(..len)
            .ok_or(truncated("NDP option", opts.len(), len))?;
        if kind == OPT_SOURCE_LL && len == 8 {
            source_ll = take::<6>(opt, 2).map(Mac);
        }
        opts = &opts[len..];
    }
    if src.is_unspecified() {
        if dst != solicited_node(&target) {
            return Err(malformed(
                WHAT,
                format!("from :: to {dst}, not the solicited-node group of {target}"),
            ));
        }
        if source_ll.is_some() {
            return Err(malformed(WHAT, "from :: with a source link-layer option"));
        }
    }
    Ok(Some(Request::Neighbour {
        reply_mac: source_ll.unwrap_or(eth_src),
        source: src,
        target,
    }))
}

/// The ICMPv6 checksum (RFC 4443 §2.3) over the IPv6 pseudo-header and
/// `msg`. Computed over a message whose checksum field holds the sum, the
/// result is 0; over one whose field is 0, it is the value to store.
pub fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |bytes: &[u8]| {
        let mut chunks = bytes.chunks_exact(2);
        for c in &mut chunks {
            sum += u16::from_be_bytes([c[0], c[1]]) as u64;
        }
        if let [last] = chunks.remainder() {
            sum += (*last as u64) << 8;
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, NEXT_HEADER_ICMPV6]);
    add(msg);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ethernet(dst: Mac, src: Mac, ethertype: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&dst.0);
    out.extend_from_slice(&src.0);
    out.extend_from_slice(&ethertype.to_be_bytes());
}

fn arp(eth_dst: Mac, op: u16, sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HEADER + ARP_LEN);
    ethernet(eth_dst, sha, ETHERTYPE_ARP, &mut f);
    f.extend_from_slice(&1u16.to_be_bytes());
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    f.extend_from_slice(&[6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha.0);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&tha.0);
    f.extend_from_slice(&tpa.octets());
    f
}

/// A neighbour advertisement for `target` with the target link-layer
/// address option, from `target` itself, override flag set (we own it).
fn neighbour_advertisement(
    eth_dst: Mac,
    dst: Ipv6Addr,
    our_mac: Mac,
    target: Ipv6Addr,
    solicited: bool,
) -> Vec<u8> {
    let mut msg = Vec::with_capacity(ND_MESSAGE_LEN + 8);
    msg.extend_from_slice(&[ICMPV6_NA, 0, 0, 0]);
    let flags = NA_FLAG_OVERRIDE | if solicited { NA_FLAG_SOLICITED } else { 0 };
    msg.extend_from_slice(&[flags, 0, 0, 0]);
    msg.extend_from_slice(&target.octets());
    msg.extend_from_slice(&[OPT_TARGET_LL, 1]);
    msg.extend_from_slice(&our_mac.0);
    let sum = icmpv6_checksum(&target, &dst, &msg);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut f = Vec::with_capacity(ETH_HEADER + IPV6_HEADER + msg.len());
    ethernet(eth_dst, our_mac, ETHERTYPE_IPV6, &mut f);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    f.extend_from_slice(&[NEXT_HEADER_ICMPV6, 255]);
    f.extend_from_slice(&target.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&msg);
    f
}

/// The answer to `req`, saying `req.target()` is at `our_mac`.
/// ARP: a unicast reply to the asker (RFC 826; for an RFC 5227 probe from
/// 0.0.0.0 that is the defence the RFC expects). NDP (RFC 4861 §7.2.4): a
/// solicited advertisement to the asker, or to all nodes when the asker has
/// no address yet (duplicate address detection), with the override flag.
pub fn build_reply(req: &Request, our_mac: Mac) -> Vec<u8> {
    match *req {
        Request::Arp {
            sender_mac,
            sender_ip,
            target_ip,
        } => arp(sender_mac, 2, our_mac, target_ip, sender_mac, sender_ip),
        Request::Neighbour {
            reply_mac,
            source,
            target,
        } => {
            if source.is_unspecified() {
                let dst = ALL_NODES;
                neighbour_advertisement(Mac::ipv6_multicast(&dst), dst, our_mac, target, false)
            } else {
                neighbour_advertisement(reply_mac, source, our_mac, target, true)
            }
        }
    }
}

/// An unsolicited announcement that `vip` is at `our_mac`: a gratuitous ARP
/// request (RFC 5227 §3: sender = target = vip, broadcast) or an unsolicited
/// neighbour advertisement to all nodes with the override flag
/// (RFC 4861 §7.2.6).
pub fn build_gratuitous(vip: IpAddr, our_mac: Mac) -> Vec<u8> {
    match vip {
        IpAddr::V4(v4) => arp(Mac::BROADCAST, 1, our_mac, v4, Mac::ZERO, v4),
        IpAddr::V6(v6) => {
            let dst = ALL_NODES;
            neighbour_advertisement(Mac::ipv6_multicast(&dst), dst, our_mac, v6, false)
        }
    }
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
