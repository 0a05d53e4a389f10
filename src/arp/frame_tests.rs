use super::*;
use proptest::prelude::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const OUR: Mac = Mac([0x02, 0xaa, 0, 0, 0, 1]);
const PEER: Mac = Mac([0x02, 0xbb, 0, 0, 0, 2]);

/// Captured from Linux 6.18 (tcpdump in a netns): "who-has 10.9.0.7 tell 10.9.0.2".
const KERNEL_ARP_REQUEST: &str = "ffff ffff ffff 02bb 0000 0002 0806 0001
    0800 0604 0001 02bb 0000 0002 0a09 0002 0000 0000 0000 0a09 0007";

/// Captured from Linux 6.18: fd09::2 asks for fd09::7 (with source link-layer option).
const KERNEL_NS: &str = "3333 ff00 0007 02bb 0000 0002 86dd 6000
    0000 0020 3aff fd09 0000 0000 0000 0000 0000 0000 0002 ff02 0000 0000 0000 0000
    0001 ff00 0007 8700 7cbe 0000 0000 fd09 0000 0000 0000 0000 0000 0000 0007 0101
    02bb 0000 0002";

/// Captured from Linux 6.18: duplicate address detection for
/// fe80::bb:ff:fe00:2 (from ::, with an RFC 7527 nonce option).
const KERNEL_DAD_NS: &str = "3333 ff00 0002 02bb 0000 0002 86dd 6000
    0000 0020 3aff 0000 0000 0000 0000 0000 0000 0000 0000 ff02 0000 0000 0000 0000
    0001 ff00 0002 8700 41e0 0000 0000 fe80 0000 0000 0000 00bb 00ff fe00 0002 0e01
    efee fd4f 3f40";

/// Captured from Linux 6.18: an MLDv2 report (hop-by-hop header first).
const KERNEL_MLD: &str = "3333 0000 0016 02aa 0000 0001 86dd 6000
    0000 0024 0001 0000 0000 0000 0000 0000 0000 0000 0000 ff02 0000 0000 0000 0000
    0000 0000 0016 3a00 0502 0000 0100 8f00 6f89 0000 0001 0400 0000 ff02 0000 0000
    0000 0000 0001 ff00 0001";

/// Captured from Linux 6.18: a router solicitation (ICMPv6, not NS).
const KERNEL_RS: &str = "3333 0000 0002 02bb 0000 0002 86dd 6000
    0000 0010 3aff fe80 0000 0000 0000 00bb 00ff fe00 0002 ff02 0000 0000 0000 0000
    0000 0000 0002 8500 79b4 0000 0000 0101 02bb 0000 0002";

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

#[test]
fn kernel_arp_request_parses() {
    let req = parse_request(&hex(KERNEL_ARP_REQUEST)).unwrap().unwrap();
    assert_eq!(
        req,
        Request::Arp {
            sender_mac: PEER,
            sender_ip: Ipv4Addr::new(10, 9, 0, 2),
            target_ip: Ipv4Addr::new(10, 9, 0, 7),
        }
    );
    assert_eq!(req.target(), IpAddr::V4(Ipv4Addr::new(10, 9, 0, 7)));
    assert!(!req.is_announcement());
}

#[test]
fn arp_reply_vector() {
    let req = parse_request(&hex(KERNEL_ARP_REQUEST)).unwrap().unwrap();
    let reply = build_reply(&req, OUR);
    // to the asker, op 2, we (10.9.0.7 at OUR) tell 10.9.0.2 at PEER
    let want = hex("02bb 0000 0002 02aa 0000 0001 0806 0001
        0800 0604 0002 02aa 0000 0001 0a09 0007 02bb 0000 0002 0a09 0002");
    assert_eq!(reply, want);
    // a reply is not a request
    assert_eq!(parse_request(&reply).unwrap(), None);
}

#[test]
fn gratuitous_arp_vector() {
    let g = build_gratuitous(IpAddr::V4(Ipv4Addr::new(10, 9, 0, 7)), OUR);
    let want = hex("ffff ffff ffff 02aa 0000 0001 0806 0001
        0800 0604 0001 02aa 0000 0001 0a09 0007 0000 0000 0000 0a09 0007");
    assert_eq!(g, want);
    let parsed = parse_request(&g).unwrap().unwrap();
    assert!(parsed.is_announcement());
}

#[test]
fn kernel_ns_parses_with_source_link_layer_option() {
    let req = parse_request(&hex(KERNEL_NS)).unwrap().unwrap();
    assert_eq!(
        req,
        Request::Neighbour {
            reply_mac: PEER,
            source: v6("fd09::2"),
            target: v6("fd09::7"),
        }
    );
}

#[test]
fn kernel_dad_ns_parses() {
    let req = parse_request(&hex(KERNEL_DAD_NS)).unwrap().unwrap();
    assert_eq!(
        req,
        Request::Neighbour {
            reply_mac: PEER,
            source: Ipv6Addr::UNSPECIFIED,
            target: v6("fe80::bb:ff:fe00:2"),
        }
    );
}

#[test]
fn other_ipv6_is_not_a_request() {
    assert_eq!(parse_request(&hex(KERNEL_MLD)).unwrap(), None);
    assert_eq!(parse_request(&hex(KERNEL_RS)).unwrap(), None);
}

#[test]
fn kernel_checksums_verify() {
    for v in [KERNEL_NS, KERNEL_DAD_NS, KERNEL_RS] {
        let f = hex(v);
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&f[22..38]).unwrap());
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&f[38..54]).unwrap());
        assert_eq!(icmpv6_checksum(&src, &dst, &f[54..]), 0, "{v}");
    }
}

#[test]
fn bad_checksum_is_refused() {
    let mut f = hex(KERNEL_NS);
    f[56] ^= 1;
    let err = parse_request(&f).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
}

#[test]
fn hop_limit_below_255_is_refused() {
    let mut f = hex(KERNEL_NS);
    f[21] = 64;
    assert!(parse_request(&f)
        .unwrap_err()
        .to_string()
        .contains("hop limit"));
}

#[test]
fn dad_ns_to_wrong_group_is_refused() {
    let mut f = hex(KERNEL_DAD_NS);
    f[53] = 0x99; // destination no longer the target's solicited-node group
                  // fix the checksum so only the group is wrong
    f[56] = 0;
    f[57] = 0;
    let src = Ipv6Addr::UNSPECIFIED;
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&f[38..54]).unwrap());
    let sum = icmpv6_checksum(&src, &dst, &f[54..]);
    f[56..58].copy_from_slice(&sum.to_be_bytes());
    let err = parse_request(&f).unwrap_err();
    assert!(err.to_string().contains("solicited-node"), "{err}");
}

/// Our NA for the kernel's NS: header fields, flags, option, and a checksum
/// that verifies.
#[test]
fn na_reply_vector_and_checksum() {
    let req = parse_request(&hex(KERNEL_NS)).unwrap().unwrap();
    let na = build_reply(&req, OUR);
    let want_head = hex("02bb 0000 0002 02aa 0000 0001 86dd 6000 0000 0020 3aff
        fd09 0000 0000 0000 0000 0000 0000 0007
        fd09 0000 0000 0000 0000 0000 0000 0002");
    assert_eq!(&na[..54], &want_head[..]);
    assert_eq!(na.len(), 54 + 32);
    assert_eq!(na[54], 136);
    assert_eq!(na[55], 0);
    assert_eq!(na[58], 0x60, "solicited + override");
    assert_eq!(&na[62..78], &v6("fd09::7").octets());
    assert_eq!(&na[78..86], &hex("0201 02aa 0000 0001")[..]);
    assert_eq!(
        icmpv6_checksum(&v6("fd09::7"), &v6("fd09::2"), &na[54..]),
        0
    );
    // Independent check of the stored sum: RFC 1071 sum computed by hand
    // over the pseudo-header words and the message.
    let stored = u16::from_be_bytes([na[56], na[57]]);
    let mut words: Vec<u32> = vec![];
    for a in [v6("fd09::7"), v6("fd09::2")] {
        words.extend(a.segments().iter().map(|&s| s as u32));
    }
    words.extend([0, 32, 0, 58]);
    let mut msg = na[54..].to_vec();
    msg[2] = 0;
    msg[3] = 0;
    words.extend(
        msg.chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32),
    );
    let mut sum: u32 = words.iter().sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    assert_eq!(stored, !(sum as u16));
}

#[test]
fn na_for_dad_goes_to_all_nodes_unsolicited() {
    let req = parse_request(&hex(KERNEL_DAD_NS)).unwrap().unwrap();
    let na = build_reply(&req, OUR);
    assert_eq!(&na[..6], &[0x33, 0x33, 0, 0, 0, 1]);
    assert_eq!(&na[38..54], &ALL_NODES.octets());
    assert_eq!(
        na[58], 0x20,
        "override only: S must be 0 to a multicast group"
    );
    assert_eq!(
        icmpv6_checksum(&v6("fe80::bb:ff:fe00:2"), &ALL_NODES, &na[54..]),
        0
    );
}

#[test]
fn unsolicited_na_vector() {
    let g = build_gratuitous(IpAddr::V6(v6("fd09::7")), OUR);
    assert_eq!(&g[..14], &hex("3333 0000 0001 02aa 0000 0001 86dd")[..]);
    assert_eq!(g[20], 58);
    assert_eq!(g[21], 255);
    assert_eq!(g[54], 136);
    assert_eq!(g[58], 0x20);
    assert_eq!(icmpv6_checksum(&v6("fd09::7"), &ALL_NODES, &g[54..]), 0);
    // an NA is not a request
    assert_eq!(parse_request(&g).unwrap(), None);
}

#[test]
fn solicited_node_groups() {
    assert_eq!(solicited_node(&v6("fd09::7")), v6("ff02::1:ff00:7"));
    assert_eq!(
        solicited_node(&v6("2001:db8::abcd:1234:5678")),
        v6("ff02::1:ff34:5678")
    );
    assert_eq!(
        Mac::ipv6_multicast(&v6("ff02::1:ff34:5678")),
        Mac([0x33, 0x33, 0xff, 0x34, 0x56, 0x78])
    );
}

#[test]
fn short_and_odd_frames() {
    assert!(parse_request(&[]).is_err());
    assert!(parse_request(&[0; 13]).is_err());
    let arp = hex(KERNEL_ARP_REQUEST);
    for n in 14..arp.len() {
        assert!(parse_request(&arp[..n]).is_err(), "ARP cut at {n}");
    }
    let ns = hex(KERNEL_NS);
    for n in 14..ns.len() {
        assert!(parse_request(&ns[..n]).is_err(), "NS cut at {n}");
    }
    // trailing Ethernet padding after ARP is fine
    let mut padded = arp.clone();
    padded.resize(60, 0);
    assert!(parse_request(&padded).unwrap().is_some());
    // ARP for other hardware is not ours
    let mut other = arp.clone();
    other[15] = 6;
    assert_eq!(parse_request(&other).unwrap(), None);
    // an IPv4 frame is not ours
    let mut ip4 = arp;
    ip4[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    assert_eq!(parse_request(&ip4).unwrap(), None);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_request(&bytes);
    }

    /// Arbitrary bytes behind a valid ARP or IPv6 Ethernet header, so the
    /// deeper parsers are exercised, not just the ethertype switch.
    #[test]
    fn arbitrary_payloads_never_panic(
        ethertype in prop_oneof![Just(ETHERTYPE_ARP), Just(ETHERTYPE_IPV6)],
        head in proptest::collection::vec(any::<u8>(), 0..8),
        body in proptest::collection::vec(any::<u8>(), 0..120),
    ) {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        // start like a real header most of the time
        if ethertype == ETHERTYPE_IPV6 {
            f.extend_from_slice(&[0x60, 0, 0, 0, 0, body.len() as u8, 58, 255]);
        } else {
            f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        }
        let n = head.len().min(8);
        let at = f.len() - 8;
        f[at..at + n].copy_from_slice(&head[..n]);
        f.extend_from_slice(&body);
        let _ = parse_request(&f);
    }

    /// Mutating any byte of a valid NS never panics, and whatever still
    /// parses as a request has a valid checksum.
    #[test]
    fn mutated_ns_never_panics(at in 0usize..86, val in any::<u8>(), cut in 0usize..90) {
        let mut f = hex(KERNEL_NS);
        f[at] = val;
        f.truncate(cut.max(1));
        let _ = parse_request(&f);
    }

    /// Every reply we build parses back as no request (it is an answer), and
    /// every request round-trips through our gratuitous builder's target.
    #[test]
    fn replies_are_well_formed(
        mac in any::<[u8; 6]>(),
        peer in any::<[u8; 6]>(),
        v4 in any::<[u8; 4]>(),
        src6 in any::<[u8; 16]>(),
        tgt6 in any::<[u8; 16]>(),
    ) {
        let our = Mac(mac);
        let tgt6 = Ipv6Addr::from(tgt6);
        let src6 = Ipv6Addr::from(src6);
        let req = Request::Neighbour { reply_mac: Mac(peer), source: src6, target: tgt6 };
        let na = build_reply(&req, our);
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&na[38..54]).unwrap());
        prop_assert_eq!(icmpv6_checksum(&tgt6, &dst, &na[54..]), 0);
        prop_assert_eq!(parse_request(&na).unwrap(), None);
        let g = build_gratuitous(IpAddr::V4(Ipv4Addr::from(v4)), our);
        let parsed = parse_request(&g).unwrap().unwrap();
        prop_assert_eq!(parsed.target(), IpAddr::V4(Ipv4Addr::from(v4)));
    }
}
