use crate::*;
use proptest::prelude::*;
use std::time::Duration;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn pkt(state: State, my: u32, your: u32) -> ControlPacket {
    ControlPacket {
        diag: Diag::None,
        state,
        poll: false,
        fin: false,
        cpi: false,
        demand: false,
        detect_mult: 3,
        my_discr: my,
        your_discr: your,
        desired_min_tx_us: 1_000_000,
        required_min_rx_us: 300_000,
        required_min_echo_rx_us: 0,
        auth: None,
    }
}

// ---- codec ----

#[test]
fn hex_vectors_round_trip() {
    let vectors: Vec<(&str, ControlPacket)> = vec![
        (
            // Down, no discriminator learnt yet, slow TX (§6.8.3).
            "20 40 03 18 00000001 00000000 000f4240 000493e0 00000000",
            pkt(State::Down, 1, 0),
        ),
        (
            // Up with Poll, diag 0, 300 ms / 300 ms.
            "20 e0 03 18 0000abcd 12345678 000493e0 000493e0 00000000",
            ControlPacket {
                poll: true,
                desired_min_tx_us: 300_000,
                ..pkt(State::Up, 0xabcd, 0x1234_5678)
            },
        ),
        (
            // Down after detection time expiry, Final, C bit, mult 5.
            "21 58 05 18 00000002 00000007 000f4240 000186a0 0000c350",
            ControlPacket {
                diag: Diag::ControlDetectionTimeExpired,
                fin: true,
                cpi: true,
                detect_mult: 5,
                required_min_rx_us: 100_000,
                required_min_echo_rx_us: 50_000,
                ..pkt(State::Down, 2, 7)
            },
        ),
        (
            // AdminDown, diag 7, Demand bit.
            "27 02 03 18 00000009 00000000 000f4240 000493e0 00000000",
            ControlPacket {
                diag: Diag::AdministrativelyDown,
                demand: true,
                ..pkt(State::AdminDown, 9, 0)
            },
        ),
        (
            // Init with simple password authentication "abc", key id 1.
            "20 84 03 1e 00000003 00000004 000f4240 000493e0 00000000 01 06 01 616263",
            ControlPacket {
                auth: Some(Authentication {
                    auth_type: 1,
                    data: vec![1, b'a', b'b', b'c'],
                }),
                ..pkt(State::Init, 3, 4)
            },
        ),
    ];
    for (h, want) in vectors {
        let wire = hex(h);
        assert_eq!(decode(&wire).as_ref(), Ok(&want), "{h}");
        assert_eq!(encode(&want), wire, "{h}");
    }
}

#[test]
fn trailing_octets_after_length_are_ignored() {
    let mut wire = encode(&pkt(State::Down, 1, 0));
    wire.extend_from_slice(&[0xde, 0xad]);
    assert_eq!(decode(&wire), Ok(pkt(State::Down, 1, 0)));
}

#[test]
fn reception_checks_discard() {
    let good = encode(&pkt(State::Up, 1, 2));
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut w = good.clone();
        f(&mut w);
        decode(&w)
    };
    use DecodeError as E;
    let cases: Vec<(&str, Result<ControlPacket, DecodeError>, DecodeError)> = vec![
        ("short", decode(&good[..23]), E::Short(23)),
        ("empty", decode(&[]), E::Short(0)),
        ("version 0", with(&|w| w[0] &= 0x1f), E::Version(0)),
        (
            "version 2",
            with(&|w| w[0] = 0x40 | (w[0] & 0x1f)),
            E::Version(2),
        ),
        (
            "length 23",
            with(&|w| w[3] = 23),
            E::LengthTooSmall {
                length: 23,
                min: 24,
            },
        ),
        (
            "A bit, length 24",
            with(&|w| w[1] |= 0x04),
            E::LengthTooSmall {
                length: 24,
                min: 26,
            },
        ),
        (
            "length beyond payload",
            with(&|w| w[3] = 25),
            E::LengthBeyondPayload {
                length: 25,
                payload: 24,
            },
        ),
        ("detect mult 0", with(&|w| w[2] = 0), E::ZeroDetectMult),
        ("multipoint", with(&|w| w[1] |= 0x01), E::Multipoint),
        (
            "my discr 0",
            with(&|w| w[4..8].fill(0)),
            E::ZeroMyDiscriminator,
        ),
        (
            "your discr 0 in Up",
            with(&|w| w[8..12].fill(0)),
            E::ZeroYourDiscriminator(State::Up),
        ),
        (
            "your discr 0 in Init",
            with(&|w| {
                w[8..12].fill(0);
                w[1] = (w[1] & 0x3f) | 0x80;
            }),
            E::ZeroYourDiscriminator(State::Init),
        ),
        (
            "auth len past the packet",
            with(&|w| {
                w[1] |= 0x04;
                w[3] = 28;
                w.extend_from_slice(&[2, 24, 0, 0]);
            }),
            E::AuthLength {
                auth_len: 24,
                available: 4,
            },
        ),
        (
            "auth len 1",
            with(&|w| {
                w[1] |= 0x04;
                w[3] = 26;
                w.extend_from_slice(&[1, 1]);
            }),
            E::AuthLength {
                auth_len: 1,
                available: 2,
            },
        ),
    ];
    for (what, got, want) in cases {
        assert_eq!(got, Err(want), "{what}");
    }
    // Your Discriminator 0 is fine in Down and AdminDown.
    for s in [State::Down, State::AdminDown] {
        assert!(decode(&encode(&pkt(s, 1, 0))).is_ok(), "{s}");
    }
}

#[test]
fn diag_codes_round_trip_and_name() {
    for c in 0..32u8 {
        assert_eq!(Diag::from_code(c).code(), c);
    }
    assert_eq!(
        Diag::ControlDetectionTimeExpired.to_string(),
        "control detection time expired"
    );
    assert_eq!(Diag::Reserved(20).to_string(), "reserved diagnostic 20");
}

fn arb_packet() -> impl Strategy<Value = ControlPacket> {
    (
        (0u8..32, 0u8..4, any::<[bool; 4]>(), 1u8..=255),
        (
            1u32..,
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
        ),
        proptest::option::of((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40))),
    )
        .prop_map(|((diag, st, b, mult), (my, your, tx, rx, echo), auth)| {
            let state = [State::AdminDown, State::Down, State::Init, State::Up][st as usize];
            let your = if matches!(state, State::Init | State::Up) {
                your.max(1)
            } else {
                your
            };
            ControlPacket {
                diag: Diag::from_code(diag),
                state,
                poll: b[0],
                fin: b[1],
                cpi: b[2],
                demand: b[3],
                detect_mult: mult,
                my_discr: my,
                your_discr: your,
                desired_min_tx_us: tx,
                required_min_rx_us: rx,
                required_min_echo_rx_us: echo,
                auth: auth.map(|(auth_type, data)| Authentication { auth_type, data }),
            }
        })
}

proptest! {
    #[test]
    fn encode_decode_round_trip(p in arb_packet()) {
        let wire = encode(&p);
        prop_assert_eq!(wire.len(), p.encoded_len());
        prop_assert_eq!(wire[3] as usize, wire.len());
        prop_assert_eq!(decode(&wire), Ok(p));
    }

    #[test]
    fn decode_never_panics_and_re_encodes(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        if let Ok(p) = decode(&bytes) {
            prop_assert_eq!(decode(&encode(&p)), Ok(p));
        }
    }
}

// ---- session ----

const MS: Duration = Duration::from_millis(1);
const LOCAL: u32 = 0x1111;
const REMOTE: u32 = 0x2222;

fn session() -> Session {
    Session::new(Timers::default(), LOCAL, 42)
}

/// A packet from the remote: 300 ms / 300 ms / 3 unless changed.
fn remote(state: State, your: u32) -> ControlPacket {
    ControlPacket {
        desired_min_tx_us: 300_000,
        ..pkt(state, REMOTE, your)
    }
}

fn sent(out: &[Output]) -> Vec<&ControlPacket> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn changes(out: &[Output]) -> Vec<(State, State, Diag)> {
    out.iter()
        .filter_map(|o| match o {
            Output::StateChanged { from, to, diag } => Some((*from, *to, *diag)),
            _ => None,
        })
        .collect()
}

/// A session brought Up through Down → Init → Up, its Poll answered.
fn up_session(now: Duration) -> Session {
    let mut s = session();
    s.handle(Input::Received(remote(State::Down, 0)), now);
    s.handle(Input::Received(remote(State::Up, LOCAL)), now);
    assert_eq!(s.state(), State::Up);
    s.handle(
        Input::Received(ControlPacket {
            fin: true,
            ..remote(State::Up, LOCAL)
        }),
        now,
    );
    assert!(!s.polling());
    s
}

#[test]
fn state_table_of_section_6_8_6() {
    use Diag as D;
    use State::*;
    // (local state, received state) → (new local state, local diag)
    let table = [
        (Down, AdminDown, Down, D::None),
        (Down, Down, Init, D::None),
        (Down, Init, Up, D::None),
        (Down, Up, Down, D::None),
        (Init, AdminDown, Down, D::NeighborSignaledSessionDown),
        (Init, Down, Init, D::None),
        (Init, Init, Up, D::None),
        (Init, Up, Up, D::None),
        (Up, AdminDown, Down, D::NeighborSignaledSessionDown),
        (Up, Down, Down, D::NeighborSignaledSessionDown),
        (Up, Init, Up, D::None),
        (Up, Up, Up, D::None),
    ];
    for (local, rx, want, diag) in table {
        let now = Duration::from_secs(1);
        let mut s = match local {
            Down => session(),
            Init => {
                let mut s = session();
                s.handle(Input::Received(remote(Down, 0)), now);
                s
            }
            _ => up_session(now),
        };
        assert_eq!(s.state(), local);
        let your = if matches!(rx, Down | AdminDown) {
            0
        } else {
            LOCAL
        };
        let out = s.handle(Input::Received(remote(rx, your)), now + MS);
        assert_eq!(s.state(), want, "{local} + received {rx}");
        assert_eq!(s.status().local_diag, diag, "{local} + received {rx}");
        if want != local {
            assert_eq!(changes(&out), vec![(local, want, diag)]);
            // A state change is told at once.
            assert_eq!(sent(&out).last().unwrap().state, want);
        } else {
            assert!(changes(&out).is_empty());
        }
    }
}

#[test]
fn three_way_handshake_then_poll_to_the_configured_rate() {
    let mut s = session();
    let t0 = Duration::from_secs(10);
    // The first tick sends a Down packet at the slow rate.
    let out = s.handle(Input::Tick, t0);
    let p = sent(&out)[0];
    assert_eq!((p.state, p.your_discr, p.my_discr), (State::Down, 0, LOCAL));
    assert_eq!(p.desired_min_tx_us, 1_000_000);
    assert_eq!(p.required_min_rx_us, 300_000);
    assert_eq!(p.required_min_echo_rx_us, 0);

    let out = s.handle(Input::Received(remote(State::Down, 0)), t0);
    assert_eq!(changes(&out), vec![(State::Down, State::Init, Diag::None)]);
    let p = sent(&out)[0];
    assert_eq!((p.state, p.your_discr), (State::Init, REMOTE));

    let out = s.handle(Input::Received(remote(State::Up, LOCAL)), t0);
    assert_eq!(changes(&out), vec![(State::Init, State::Up, Diag::None)]);
    let p = sent(&out)[0];
    // Up: advertise 300 ms with a Poll; transmit faster at once.
    assert!(p.poll && !p.fin);
    assert_eq!(p.desired_min_tx_us, 300_000);
    assert!(s.polling());
    assert_eq!(s.tx_interval(), Duration::from_millis(300));
    // Detection: remote mult 3 × max(300 ms, 300 ms).
    assert_eq!(s.detection_time(), Duration::from_millis(900));

    let out = s.handle(
        Input::Received(ControlPacket {
            fin: true,
            ..remote(State::Up, LOCAL)
        }),
        t0 + MS,
    );
    assert!(out.is_empty(), "{out:?}");
    assert!(!s.polling());
    let out = s.handle(Input::Tick, s.next_deadline().unwrap());
    assert!(!sent(&out)[0].poll);
}

#[test]
fn detection_time_expiry_takes_the_session_down() {
    let t0 = Duration::from_secs(5);
    let mut s = up_session(t0);
    let detect = t0 + Duration::from_millis(900);
    // Just before: still Up (transmit ticks only).
    let mut now = t0;
    while let Some(d) = s.next_deadline().filter(|d| *d < detect) {
        now = d;
        let out = s.handle(Input::Tick, now);
        assert!(changes(&out).is_empty());
        assert_eq!(sent(&out).len(), 1);
    }
    assert!(now < detect);
    assert_eq!(s.next_deadline(), Some(detect));
    let out = s.handle(Input::Tick, detect);
    assert_eq!(
        changes(&out),
        vec![(State::Up, State::Down, Diag::ControlDetectionTimeExpired)]
    );
    let st = s.status();
    assert_eq!((st.remote_discr, st.remote_state), (0, State::Down));
    // Back to the slow rate; the next packet names no remote.
    let out = s.handle(Input::Tick, s.next_deadline().unwrap());
    let p = sent(&out)[0];
    assert_eq!((p.state, p.your_discr), (State::Down, 0));
    assert_eq!(p.diag, Diag::ControlDetectionTimeExpired);
    assert_eq!(p.desired_min_tx_us, 1_000_000);
    assert!(!p.poll);
}

#[test]
fn received_packets_push_the_detection_time_back() {
    let t0 = Duration::from_secs(5);
    let mut s = up_session(t0);
    for i in 1..=10u64 {
        let now = t0 + Duration::from_millis(500 * i);
        let out = s.handle(Input::Tick, now);
        assert!(changes(&out).is_empty(), "{i}");
        s.handle(Input::Received(remote(State::Up, LOCAL)), now);
    }
    assert_eq!(s.state(), State::Up);
}

#[test]
fn transmit_interval_jitter_stays_within_75_to_100_percent() {
    for (mult, lo, hi) in [(3u8, 225u64, 300u64), (1, 225, 270)] {
        let mut s = Session::new(
            Timers {
                detect_mult: mult,
                ..Timers::default()
            },
            LOCAL,
            7,
        );
        let t0 = Duration::from_secs(1);
        s.handle(Input::Received(remote(State::Down, 0)), t0);
        s.handle(Input::Received(remote(State::Up, LOCAL)), t0);
        let mut now = t0;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            // Keep the session alive.
            s.handle(Input::Received(remote(State::Up, LOCAL)), now);
            let next = s.next_deadline().unwrap();
            let gap = (next - now).as_micros() as u64;
            assert!(
                (lo * 1000..=hi * 1000).contains(&gap),
                "mult {mult}: {gap} µs"
            );
            seen.insert(gap / 5000);
            now = next;
            s.handle(Input::Tick, now);
        }
        assert!(seen.len() > 5, "jitter varies: {seen:?}");
    }
}

#[test]
fn same_seed_same_schedule() {
    let run = |seed| {
        let mut s = Session::new(Timers::default(), LOCAL, seed);
        (0..20)
            .map(|_| {
                let d = s.next_deadline().unwrap();
                s.handle(Input::Tick, d);
                d
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn remote_rx_interval_slows_transmission() {
    let t0 = Duration::from_secs(1);
    let mut s = up_session(t0);
    s.handle(
        Input::Received(ControlPacket {
            required_min_rx_us: 2_000_000,
            ..remote(State::Up, LOCAL)
        }),
        t0,
    );
    assert_eq!(s.tx_interval(), Duration::from_secs(2));
}

#[test]
fn remote_rx_interval_speeds_transmission_at_once() {
    let t0 = Duration::from_secs(1);
    let mut s = up_session(t0);
    s.handle(
        Input::Received(ControlPacket {
            required_min_rx_us: 2_000_000,
            ..remote(State::Up, LOCAL)
        }),
        t0,
    );
    // The next packet is due up to 2 s away; the remote now asks for 300 ms.
    s.handle(Input::Tick, s.next_deadline().unwrap());
    let t1 = s.next_deadline().unwrap() - Duration::from_millis(1500);
    s.handle(Input::Received(remote(State::Up, LOCAL)), t1);
    assert!(
        s.next_deadline().unwrap() <= t1 + Duration::from_millis(300),
        "next transmit at {:?}, received at {t1:?}",
        s.next_deadline()
    );
}

#[test]
fn poll_is_answered_with_final_at_once() {
    let t0 = Duration::from_secs(1);
    let mut s = up_session(t0);
    let out = s.handle(
        Input::Received(ControlPacket {
            poll: true,
            desired_min_tx_us: 500_000,
            ..remote(State::Up, LOCAL)
        }),
        t0 + MS,
    );
    let p = sent(&out);
    assert_eq!(p.len(), 1);
    assert!(p[0].fin && !p[0].poll);
    // The remote's slower TX now sets the detection time.
    assert_eq!(s.detection_time(), Duration::from_millis(1500));
}

#[test]
fn timer_changes_while_up_wait_for_the_final() {
    let t0 = Duration::from_secs(1);
    let mut s = up_session(t0);
    // Slower TX and faster RX: neither applies before the Final.
    let out = s.handle(
        Input::SetTimers(Timers {
            desired_min_tx: Duration::from_millis(600),
            required_min_rx: Duration::from_millis(100),
            detect_mult: 3,
        }),
        t0,
    );
    let p = sent(&out)[0];
    assert!(p.poll);
    assert_eq!(
        (p.desired_min_tx_us, p.required_min_rx_us),
        (600_000, 100_000)
    );
    assert_eq!(s.tx_interval(), Duration::from_millis(300));
    assert_eq!(s.detection_time(), Duration::from_millis(900));
    s.handle(
        Input::Received(ControlPacket {
            fin: true,
            desired_min_tx_us: 100_000,
            required_min_rx_us: 100_000,
            ..remote(State::Up, LOCAL)
        }),
        t0 + MS,
    );
    assert!(!s.polling());
    assert_eq!(s.tx_interval(), Duration::from_millis(600));
    assert_eq!(s.detection_time(), Duration::from_millis(300));

    // Faster TX applies at once; slower RX applies at once to detection.
    s.handle(
        Input::SetTimers(Timers {
            desired_min_tx: Duration::from_millis(200),
            required_min_rx: Duration::from_millis(400),
            detect_mult: 3,
        }),
        t0 + 2 * MS,
    );
    assert!(s.polling());
    assert_eq!(s.tx_interval(), Duration::from_millis(200));
    assert_eq!(s.detection_time(), Duration::from_millis(1200));
}

#[test]
fn admin_down_and_up() {
    let t0 = Duration::from_secs(1);
    let mut s = up_session(t0);
    let out = s.handle(Input::AdminDown, t0);
    assert_eq!(
        changes(&out),
        vec![(State::Up, State::AdminDown, Diag::AdministrativelyDown)]
    );
    let p = sent(&out)[0];
    assert_eq!(
        (p.state, p.diag),
        (State::AdminDown, Diag::AdministrativelyDown)
    );
    // Received packets change nothing, transmission goes on.
    let out = s.handle(Input::Received(remote(State::Up, LOCAL)), t0 + MS);
    assert_eq!(out, vec![Output::Discarded(Discard::AdminDown)]);
    let out = s.handle(Input::Tick, s.next_deadline().unwrap());
    assert_eq!(sent(&out)[0].state, State::AdminDown);
    let out = s.handle(Input::AdminUp, t0 + 2 * MS);
    assert_eq!(
        changes(&out),
        vec![(State::AdminDown, State::Down, Diag::AdministrativelyDown)]
    );
}

#[test]
fn session_discards() {
    let mut s = session();
    let out = s.handle(Input::Received(remote(State::Init, 999)), Duration::ZERO);
    assert_eq!(out, vec![Output::Discarded(Discard::WrongDiscriminator)]);
    let out = s.handle(
        Input::Received(ControlPacket {
            auth: Some(Authentication {
                auth_type: 2,
                data: vec![0; 22],
            }),
            ..remote(State::Down, 0)
        }),
        Duration::ZERO,
    );
    assert_eq!(out, vec![Output::Discarded(Discard::Authentication)]);
    assert_eq!(s.state(), State::Down);
    assert_eq!(s.status().remote_discr, 0);
}

#[test]
fn remote_demand_mode_stops_periodic_transmission() {
    let t0 = Duration::from_secs(1);
    let mut s = up_session(t0);
    s.handle(
        Input::Received(ControlPacket {
            demand: true,
            ..remote(State::Up, LOCAL)
        }),
        t0,
    );
    // Only the detection timer is left... and no packet goes out.
    let d = s.next_deadline().unwrap();
    assert_eq!(d, t0 + Duration::from_millis(900));
    let out = s.handle(Input::Tick, t0 + Duration::from_millis(500));
    assert!(sent(&out).is_empty());
}

#[test]
fn remote_min_rx_zero_stops_periodic_transmission() {
    let mut s = session();
    s.handle(
        Input::Received(ControlPacket {
            required_min_rx_us: 0,
            ..remote(State::Down, 0)
        }),
        Duration::ZERO,
    );
    for ms in [1000u64, 2000, 3000] {
        let out = s.handle(Input::Tick, Duration::from_millis(ms));
        assert!(sent(&out).is_empty(), "{out:?}");
    }
}
