//! Wire vectors captured from BIRD 2 and FRR's bfdd talking to each other
//! (tests/fixtures/bird_frr.hex, written by tests/capture.sh: tcpdump in a
//! network namespace). They are an independent reference for the codec:
//! every packet passes the §6.8.6 checks, re-encodes to the same octets,
//! and carries what each side was configured with.

use pier_bfd_wire::{decode, encode, ControlPacket, Diag, State};
use std::collections::{BTreeMap, BTreeSet};

const CAPTURE: &str = include_str!("fixtures/bird_frr.hex");

struct Captured {
    sender: String,
    family: String,
    ttl: u8,
    packet: ControlPacket,
}

fn captured() -> Vec<Captured> {
    let mut out = Vec::new();
    for (i, line) in CAPTURE.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let [sender, family, ttl, hex] = f[..] else {
            panic!("line {}: want SENDER FAMILY TTL HEX: {line}", i + 1);
        };
        let wire: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|j| u8::from_str_radix(&hex[j..j + 2], 16).expect("hex digit"))
            .collect();
        let packet = decode(&wire).unwrap_or_else(|e| panic!("line {}: {e}: {hex}", i + 1));
        assert_eq!(encode(&packet), wire, "line {}: re-encoding differs", i + 1);
        out.push(Captured {
            sender: sender.into(),
            family: family.into(),
            ttl: ttl.parse().unwrap(),
            packet,
        });
    }
    out
}

#[test]
fn every_packet_decodes_and_re_encodes() {
    let all = captured();
    assert!(all.len() > 50, "{} packets", all.len());
    for sender in ["bird", "frr"] {
        for family in ["v4", "v6"] {
            assert!(
                all.iter().any(|c| c.sender == sender && c.family == family),
                "{sender} {family}"
            );
        }
    }
}

#[test]
fn configured_timers_gtsm_and_the_slow_rate() {
    for c in captured() {
        let p = &c.packet;
        let what = format!("{} {} {p:?}", c.sender, c.family);
        // GTSM: both send with TTL / hop limit 255 (RFC 5881 §5).
        assert_eq!(c.ttl, 255, "{what}");
        assert!(p.auth.is_none() && !p.demand && !p.cpi, "{what}");
        let (mult, fast, echo) = match c.sender.as_str() {
            "bird" => (3, 100_000, 0),
            _ => (4, 200_000, 50_000),
        };
        assert_eq!(p.detect_mult, mult, "{what}");
        assert_eq!(p.required_min_echo_rx_us, echo, "{what}");
        assert_eq!(p.required_min_rx_us.min(fast), fast, "{what}");
        if p.state == State::Up {
            // Up: the configured rate, or still the slow one while the
            // Poll Sequence that lowers it runs.
            assert!(
                p.desired_min_tx_us == fast || p.desired_min_tx_us == 1_000_000,
                "{what}"
            );
        } else if c.sender == "bird" {
            // §6.8.3: not Up → Desired Min TX at least one second.
            assert!(p.desired_min_tx_us >= 1_000_000, "{what}");
        } else {
            // FRR 8.4 starts slow but, after `shutdown` / `no shutdown`,
            // advertises its configured rate in AdminDown and Down.
            assert!(
                p.desired_min_tx_us >= 1_000_000 || p.desired_min_tx_us == fast,
                "{what}"
            );
        }
        assert!(!(p.poll && p.fin), "{what}");
    }
}

#[test]
fn one_discriminator_per_session_and_each_poll_answered() {
    let all = captured();
    let mut discr: BTreeMap<(String, String), BTreeSet<u32>> = BTreeMap::new();
    for c in &all {
        discr
            .entry((c.sender.clone(), c.family.clone()))
            .or_default()
            .insert(c.packet.my_discr);
    }
    for (k, d) in &discr {
        assert_eq!(d.len(), 1, "{k:?}: {d:?}");
    }
    // Each Poll is followed by a Final from the other side, same family.
    for (i, c) in all.iter().enumerate().filter(|(_, c)| c.packet.poll) {
        let answered = all[i + 1..].iter().any(|f| {
            f.packet.fin
                && f.sender != c.sender
                && f.family == c.family
                && f.packet.your_discr == c.packet.my_discr
        });
        // The capture may end on an unanswered Poll; none else.
        assert!(answered || i + 8 > all.len(), "poll at {i} unanswered");
    }
}

#[test]
fn the_scenario_left_its_diagnostics() {
    let seen: BTreeSet<(String, u8, u8)> = captured()
        .into_iter()
        .map(|c| (c.sender, c.packet.state as u8, c.packet.diag.code()))
        .collect();
    let has = |sender: &str, state: State, diag: Diag| {
        seen.contains(&(sender.to_string(), state as u8, diag.code()))
    };
    // FRR shut the IPv4 peer: AdminDown.
    assert!(seen
        .iter()
        .any(|(s, st, _)| s == "frr" && *st == State::AdminDown as u8));
    // BIRD heard it: Down, neighbor signaled session down.
    assert!(has("bird", State::Down, Diag::NeighborSignaledSessionDown));
    // FRR's packets dropped: BIRD's detection time expired.
    assert!(has("bird", State::Down, Diag::ControlDetectionTimeExpired));
    // Both came Up.
    assert!(
        has("bird", State::Up, Diag::None)
            || seen
                .iter()
                .any(|(s, st, _)| s == "bird" && *st == State::Up as u8)
    );
    assert!(seen
        .iter()
        .any(|(s, st, _)| s == "frr" && *st == State::Up as u8));
}

/// pier's session in FRR's place: fed BIRD's IPv6 packets in the order
/// BIRD sent them (10 ms apart, well inside every detection time), it comes
/// Up with FRR's discriminator, and answers BIRD's Polls with Finals.
#[test]
fn pier_session_replays_bird_to_up() {
    use pier_bfd_wire::{Input, Output, Session, Timers};
    use std::time::Duration;
    let all = captured();
    let frr_discr = all
        .iter()
        .find(|c| c.sender == "frr" && c.family == "v6")
        .unwrap()
        .packet
        .my_discr;
    let mut s = Session::new(Timers::default(), frr_discr, 1);
    let mut finals = 0;
    let mut t = Duration::ZERO;
    for c in all
        .iter()
        .filter(|c| c.sender == "bird" && c.family == "v6")
    {
        t += Duration::from_millis(10);
        for o in s.handle(Input::Received(c.packet.clone()), t) {
            match o {
                Output::Send(p) if p.fin => finals += 1,
                Output::Discarded(d) => panic!("{d:?}: {:?}", c.packet),
                _ => {}
            }
        }
    }
    assert_eq!(s.state(), State::Up);
    assert!(finals >= 1);
}
