//! Wire vectors captured from BIRD 2, FRR and GoBGP (tests/fixtures/*.hex,
//! written by tests/capture.sh: tcpdump on a live session in a network
//! namespace, every message the peer sent). They are an independent
//! reference for the codec: every message must decode with the context the
//! session negotiated, to the fields the peer was configured to send, and
//! pier's encoding of what it decoded must give back the peer's bytes —
//! after the two choices RFC 4271 leaves to the sender are normalised: the
//! extended-length bit on attributes shorter than 256 octets (BIRD sets it
//! on MP_REACH/MP_UNREACH, FRR on AS_PATH) and capabilities spread over
//! several optional parameters (FRR sends one parameter per capability).

use ipnet::IpNet;
use pier_bgp_wire::{
    decode, describe_notification, encode, frame_len, AfiSafi, AsPath, Attribute, Capability,
    Context, Message, Nlri, Open, Origin, RouteRefresh, Update, MAX_EXTENDED_LEN,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

const BIRD: &str = include_str!("fixtures/bird.hex");
const FRR: &str = include_str!("fixtures/frr.hex");
const GOBGP: &str = include_str!("fixtures/gobgp.hex");

const PEER_AS: u32 = 4_200_000_001;
const COMMUNITY_100: u32 = (65001 << 16) | 100;
const COMMUNITY_200: u32 = (65001 << 16) | 200;
const LARGE: (u32, u32, u32) = (PEER_AS, 1, 2);

/// One captured message: session name, type as the capture named it, bytes.
struct Captured {
    session: String,
    kind: String,
    wire: Vec<u8>,
}

fn parse(text: &str) -> Vec<Captured> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(session), Some(kind), Some(hex), None) = (f.next(), f.next(), f.next(), f.next())
        else {
            panic!("fixture line {}: want SESSION TYPE HEX: {line}", i + 1);
        };
        assert!(hex.len() % 2 == 0, "fixture line {}: odd hex", i + 1);
        let wire = (0..hex.len())
            .step_by(2)
            .map(|j| u8::from_str_radix(&hex[j..j + 2], 16).expect("hex digit"))
            .collect();
        out.push(Captured {
            session: session.into(),
            kind: kind.into(),
            wire,
        });
    }
    out
}

/// What a session negotiated, from the peer's OPEN: the collector offered
/// every capability, so the peer's offer decides. ADD-PATH applies to the
/// families the peer sends paths for.
fn context(open: &Open) -> Context {
    Context {
        four_octet_as: open.four_octet_as(),
        add_path: open
            .families()
            .into_iter()
            .filter(|f| open.add_path(*f).is_some_and(|m| m.sends()))
            .collect(),
        extended_message: open.extended_message(),
    }
}

/// `wire` with every attribute shorter than 256 octets in the short-length
/// form (RFC 4271 §4.3 lets a sender use either).
fn short_lengths(wire: &[u8]) -> Vec<u8> {
    let wlen = u16::from_be_bytes([wire[19], wire[20]]) as usize;
    let a0 = 21 + wlen;
    let alen = u16::from_be_bytes([wire[a0], wire[a0 + 1]]) as usize;
    let attrs = &wire[a0 + 2..a0 + 2 + alen];
    let mut out_attrs = Vec::new();
    let mut i = 0;
    while i < attrs.len() {
        let (flags, code) = (attrs[i], attrs[i + 1]);
        let (len, hdr) = if flags & 0x10 != 0 {
            (u16::from_be_bytes([attrs[i + 2], attrs[i + 3]]) as usize, 4)
        } else {
            (attrs[i + 2] as usize, 3)
        };
        let value = &attrs[i + hdr..i + hdr + len];
        if len <= 255 {
            out_attrs.extend_from_slice(&[flags & !0x10, code, len as u8]);
        } else {
            out_attrs.extend_from_slice(&[flags | 0x10, code]);
            out_attrs.extend_from_slice(&(len as u16).to_be_bytes());
        }
        out_attrs.extend_from_slice(value);
        i += hdr + len;
    }
    let mut out = wire[..a0].to_vec();
    out.extend_from_slice(&(out_attrs.len() as u16).to_be_bytes());
    out.extend_from_slice(&out_attrs);
    out.extend_from_slice(&wire[a0 + 2 + alen..]);
    let len = out.len() as u16;
    out[16..18].copy_from_slice(&len.to_be_bytes());
    out
}

/// `wire` (an OPEN) with all capabilities in one optional parameter.
fn one_capability_parameter(wire: &[u8]) -> Vec<u8> {
    let opt_len = wire[28] as usize;
    let params = &wire[29..29 + opt_len];
    let mut caps = Vec::new();
    let mut i = 0;
    while i < params.len() {
        assert_eq!(params[i], 2, "only capability parameters are captured");
        let len = params[i + 1] as usize;
        caps.extend_from_slice(&params[i + 2..i + 2 + len]);
        i += 2 + len;
    }
    let mut out = wire[..28].to_vec();
    out.push((caps.len() + 2) as u8);
    out.push(2);
    out.push(caps.len() as u8);
    out.extend_from_slice(&caps);
    let len = out.len() as u16;
    out[16..18].copy_from_slice(&len.to_be_bytes());
    out
}

/// Everything one session of a capture said, decoded.
#[derive(Default)]
struct Session {
    opens: Vec<Open>,
    keepalives: usize,
    /// (prefix, path id) -> attributes other than MP_REACH, and next hops.
    announced: BTreeMap<Nlri, (Vec<Attribute>, Vec<IpAddr>)>,
    withdrawn: BTreeSet<Nlri>,
    end_of_rib: BTreeSet<AfiSafi>,
    refreshes: Vec<RouteRefresh>,
    notifications: Vec<pier_bgp_wire::Notification>,
}

/// Decodes every message of a capture, checking each re-encodes to the
/// peer's bytes; returns the sessions by name.
fn decode_all(name: &str, text: &str) -> BTreeMap<String, Session> {
    let mut sessions: BTreeMap<String, Session> = BTreeMap::new();
    let mut contexts: BTreeMap<String, Context> = BTreeMap::new();
    let captured = parse(text);
    assert!(
        captured.len() > 40,
        "{name}: only {} messages",
        captured.len()
    );
    for (i, m) in captured.iter().enumerate() {
        let what = format!("{name} message {i} ({} {})", m.session, m.kind);
        assert_eq!(
            frame_len(&m.wire, MAX_EXTENDED_LEN),
            Ok(Some(m.wire.len())),
            "{what}: framing"
        );
        let ctx = contexts
            .get(&m.session)
            .cloned()
            .unwrap_or_else(Context::modern);
        let d = decode(&m.wire, &ctx).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(d.notes.is_empty(), "{what}: RFC 7606 notes {:?}", d.notes);
        assert_eq!(d.message.kind().to_lowercase(), m.kind, "{what}: type");
        let canonical = match &d.message {
            Message::Update(_) => short_lengths(&m.wire),
            Message::Open(_) => one_capability_parameter(&m.wire),
            _ => m.wire.clone(),
        };
        let again = encode(&d.message, &ctx).unwrap_or_else(|e| panic!("{what}: encode: {e}"));
        assert_eq!(
            hex(&again),
            hex(&canonical),
            "{what}: pier's encoding differs from the peer's"
        );
        let s = sessions.entry(m.session.clone()).or_default();
        match d.message {
            Message::Open(open) => {
                // A new connection: its own negotiation.
                contexts.insert(m.session.clone(), context(&open));
                s.opens.push(open);
            }
            Message::Keepalive => s.keepalives += 1,
            Message::Update(u) => record(s, u),
            Message::RouteRefresh(rr) => s.refreshes.push(rr),
            Message::Notification(n) => s.notifications.push(n),
        }
    }
    sessions
}

fn record(s: &mut Session, u: Update) {
    if let Some(family) = u.is_end_of_rib() {
        s.end_of_rib.insert(family);
        return;
    }
    s.withdrawn.extend(u.withdrawn_all());
    let attrs: Vec<Attribute> = u
        .attributes
        .iter()
        .filter(|a| !matches!(a, Attribute::MpReach(_) | Attribute::MpUnreach(_)))
        .cloned()
        .collect();
    for (nlri, hops) in u.announced() {
        s.announced.insert(nlri, (attrs.clone(), hops));
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

const V4: [&str; 3] = ["198.51.100.0/24", "203.0.113.0/25", "192.0.2.1/32"];
const V6: [&str; 3] = ["2001:db8:1::/48", "2001:db8:2:3::/64", "2001:db8::1/128"];

struct Expect {
    extended_message: bool,
    /// The R and N bits FRR sets in its graceful restart capability.
    gr_restarted: bool,
    origin: Origin,
    /// The peer sends a link-local next hop beside the global one (RFC 2545
    /// §3) on the (eBGP, iBGP) session, both directly connected.
    link_local: (bool, bool),
    /// The peer asked for a ROUTE-REFRESH (GoBGP's softresetin does not).
    sends_refresh: bool,
    /// Enhanced route refresh (RFC 7313): BoRR/EoRR around the answer.
    enhanced_refresh: bool,
    /// NOTIFICATION closing the eBGP session (shutdown by the operator).
    shutdown: (u8, u8, &'static str),
}

fn check_peer(name: &str, text: &str, want: &Expect) {
    let sessions = decode_all(name, text);
    assert_eq!(
        sessions.keys().collect::<Vec<_>>(),
        ["ebgp", "ibgp"],
        "{name}"
    );
    for (sname, s) in &sessions {
        let ebgp = sname == "ebgp";
        let what = format!("{name} {sname}");
        // OPEN: what the peer was configured to offer.
        assert!(!s.opens.is_empty(), "{what}: no OPEN");
        for open in &s.opens {
            assert_eq!(open.version, 4, "{what}");
            assert_eq!(
                open.my_as,
                pier_bgp_wire::AS_TRANS,
                "{what}: 2-octet AS field"
            );
            assert_eq!(open.asn(), PEER_AS, "{what}: 4-octet AS capability");
            assert_eq!(open.hold_time, 9, "{what}");
            assert_eq!(open.router_id, Ipv4Addr::new(10, 0, 0, 1), "{what}");
            assert_eq!(
                open.families(),
                [AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST],
                "{what}"
            );
            assert!(open.route_refresh(), "{what}: route refresh");
            for f in [AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST] {
                assert!(
                    open.add_path(f).is_some_and(|m| m.sends()),
                    "{what}: ADD-PATH send for {f}"
                );
            }
            assert_eq!(open.extended_message(), want.extended_message, "{what}");
            let gr = open
                .graceful_restart()
                .expect("graceful restart capability");
            assert_eq!(gr.restart_time, 120, "{what}");
            assert_eq!(gr.restarted, want.gr_restarted, "{what}: R bit");
            assert_eq!(
                gr.families.iter().map(|(f, _)| *f).collect::<Vec<_>>(),
                [AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST],
                "{what}: graceful restart families"
            );
            assert!(
                !open.capabilities.iter().any(|c| matches!(
                    c,
                    Capability::Unknown {
                        code: 1 | 2 | 6 | 64 | 65 | 69,
                        ..
                    }
                )),
                "{what}: a capability pier knows was left undecoded: {:?}",
                open.capabilities
            );
        }
        assert!(s.keepalives >= 2, "{what}: keepalives");
        // The routes, each with its path id and the configured attributes.
        let prefixes: BTreeSet<IpNet> = s.announced.keys().map(|n| n.prefix).collect();
        let all: BTreeSet<IpNet> = V4.iter().chain(V6.iter()).map(|p| net(p)).collect();
        assert_eq!(prefixes, all, "{what}: announced prefixes");
        for (nlri, (attrs, hops)) in &s.announced {
            let what = format!("{what} {}", nlri.prefix);
            assert!(nlri.path_id.is_some(), "{what}: ADD-PATH path id");
            let find = |code: u8| attrs.iter().find(|a| a.code() == code);
            assert_eq!(find(1), Some(&Attribute::Origin(want.origin)), "{what}");
            let path = if ebgp {
                AsPath::sequence(vec![PEER_AS])
            } else {
                AsPath::default()
            };
            assert_eq!(find(2), Some(&Attribute::AsPath(path)), "{what}");
            assert_eq!(find(4), Some(&Attribute::Med(50)), "{what}: MED");
            let local_pref = (!ebgp).then_some(Attribute::LocalPref(200));
            assert_eq!(find(5), local_pref.as_ref(), "{what}: LOCAL_PREF");
            let mut communities = vec![COMMUNITY_100];
            if ["198.51.100.0/24", "2001:db8:1::/48"].contains(&nlri.prefix.to_string().as_str()) {
                communities.push(COMMUNITY_200);
            }
            assert_eq!(
                find(8),
                Some(&Attribute::Communities(communities)),
                "{what}"
            );
            assert_eq!(
                find(32),
                Some(&Attribute::LargeCommunities(vec![LARGE])),
                "{what}"
            );
            match nlri.prefix {
                IpNet::V4(_) => {
                    assert_eq!(hops, &["10.0.0.1".parse::<IpAddr>().unwrap()], "{what}")
                }
                IpNet::V6(_) => {
                    assert_eq!(hops[0], "fd00::1".parse::<IpAddr>().unwrap(), "{what}");
                    let ll = if ebgp {
                        want.link_local.0
                    } else {
                        want.link_local.1
                    };
                    assert_eq!(hops.len(), if ll { 2 } else { 1 }, "{what}: {hops:?}");
                    if let Some(IpAddr::V6(l)) = hops.get(1) {
                        assert!(l.is_unicast_link_local(), "{what}: {l} is not link-local");
                    }
                }
            }
        }
        // End-of-RIB for both families; the two withdrawn routes.
        assert_eq!(
            s.end_of_rib,
            [AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST].into(),
            "{what}: End-of-RIB"
        );
        let withdrawn: BTreeSet<IpNet> = s.withdrawn.iter().map(|n| n.prefix).collect();
        assert_eq!(
            withdrawn,
            [net("192.0.2.1/32"), net("2001:db8::1/128")].into(),
            "{what}: withdrawn"
        );
        assert!(s.withdrawn.iter().all(|n| n.path_id.is_some()), "{what}");
        // ROUTE-REFRESH: asked for (subtype 0), and BoRR/EoRR (1, 2)
        // around the answer to the collector's request.
        let kinds: BTreeSet<(AfiSafi, u8)> =
            s.refreshes.iter().map(|r| (r.family, r.subtype)).collect();
        let mut want_kinds = BTreeSet::new();
        for f in [AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST] {
            if want.sends_refresh {
                want_kinds.insert((f, 0));
            }
            if want.enhanced_refresh {
                want_kinds.insert((f, 1));
                want_kinds.insert((f, 2));
            }
        }
        assert_eq!(kinds, want_kinds, "{what}: ROUTE-REFRESH");
        // NOTIFICATIONs: the iBGP session was reset (Cease/administrative
        // reset), the eBGP one shut down.
        let last = s.notifications.last().expect("a NOTIFICATION");
        if ebgp {
            assert_eq!(
                (last.code, last.subcode),
                (want.shutdown.0, want.shutdown.1),
                "{what}"
            );
            assert_eq!(describe_notification(last), want.shutdown.2, "{what}");
        } else {
            assert_eq!((last.code, last.subcode), (6, 4), "{what}");
            assert_eq!(
                describe_notification(last),
                "cease: administrative reset",
                "{what}"
            );
            assert_eq!(s.opens.len(), 2, "{what}: the reset session came back");
        }
    }
}

#[test]
fn bird_2_0_12_messages() {
    check_peer(
        "BIRD",
        BIRD,
        &Expect {
            extended_message: true,
            gr_restarted: false,
            origin: Origin::Igp,
            link_local: (true, false),
            sends_refresh: true,
            enhanced_refresh: true,
            shutdown: (6, 2, "cease: administrative shutdown \"capture done\""),
        },
    );
}

#[test]
fn frr_8_4_messages() {
    check_peer(
        "FRR",
        FRR,
        &Expect {
            extended_message: true,
            gr_restarted: true,
            origin: Origin::Igp,
            link_local: (true, true),
            sends_refresh: true,
            enhanced_refresh: true,
            shutdown: (6, 2, "cease: administrative shutdown \"capture done\""),
        },
    );
}

#[test]
fn gobgp_3_10_messages() {
    check_peer(
        "GoBGP",
        GOBGP,
        &Expect {
            extended_message: false,
            gr_restarted: false,
            origin: Origin::Incomplete,
            link_local: (false, false),
            sends_refresh: false,
            enhanced_refresh: false,
            shutdown: (6, 2, "cease: administrative shutdown"),
        },
    );
}

/// The capabilities pier does not interpret are kept byte for byte (so a
/// re-encoded OPEN is the peer's): enhanced route refresh (70), long-lived
/// graceful restart (71), FQDN (73), the pre-standard route refresh (128)
/// and extended next hop (5).
#[test]
fn unknown_capabilities_are_kept() {
    let mut codes = BTreeSet::new();
    for text in [BIRD, FRR, GOBGP] {
        for m in parse(text) {
            if let Ok(d) = decode(&m.wire, &Context::modern()) {
                if let Message::Open(open) = d.message {
                    for c in open.capabilities {
                        if let Capability::Unknown { code, .. } = c {
                            codes.insert(code);
                        }
                    }
                }
            }
        }
    }
    assert_eq!(codes, [5, 70, 71, 73, 128].into());
}
