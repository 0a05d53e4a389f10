//! Helper program of `benches/bgp_vips.sh` (VIPs to BIRD, pier vs gobgpd);
//! run by that script, not by `cargo bench` on its own (then it only says
//! so). Three subcommands:
//!
//! - `speaker PEER PEER_ASN ASN ROUTER_ID FIFO`: pier's BGP [`Speaker`] (the
//!   library, as `pier run` starts it) fed with [`Desired`] values through
//!   the same `watch` channel the engine publishes on. Commands arrive as
//!   lines on FIFO: `prepare N` (build a Desired of N VIPs, not yet
//!   published), `publish`, `withdraw` (publish an empty Desired), `rss`
//!   (print VmHWM/VmRSS), `quit` (Cease and exit). Replies go to stdout.
//! - `time SOCK PROTO WANT [WANT_CMD] -- TRIGGER...`: runs TRIGGER and polls
//!   BIRD's control socket every 2 ms (`show protocols all PROTO`) until
//!   PROTO's imported route count equals WANT; WANT `-` means "whatever
//!   WANT_CMD prints as `Destination: N` once TRIGGER has exited" (gobgpd's
//!   RIB after an injection that may drop routes). Prints `from_trigger_ms
//!   from_established_ms count`; "established" is the start of the last
//!   poll that saw the session down, so that figure is an upper bound.
//! - `mrt N NEXT_HOP FILE`: an MRT TABLE_DUMP_V2 file (RFC 6396) of N /32s
//!   with the attributes pier sends, for `gobgp mrt inject global`.

use pier::bgp::speaker::Speaker;
use pier::config::{BgpConfig, PeerConfig};
use pier::model::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// VIPs start here: 10.128.0.0 (100,000 of them fit below 10.130.0.0).
const BASE: u32 = 0x0a80_0000;
const COMMUNITY: u32 = (65010 << 16) | 100;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(|s| s.as_str()) {
        Some("speaker") if args.len() == 6 => speaker(&args[1..]),
        Some("time") if args.len() >= 5 => time(&args[1..]),
        Some("mrt") if args.len() == 4 => mrt(&args[1..]),
        _ => println!("bgp_vips: run benches/bgp_vips.sh (root, network namespaces, BIRD, gobgpd)"),
    }
}

fn desired(generation: u64, n: u32) -> Desired {
    let hops: Arc<[NextHop]> = vec![NextHop {
        node: "n1".into(),
        address: "10.0.0.11".parse().unwrap(),
        labels: Default::default(),
    }]
    .into();
    let announcements = (0..n)
        .map(|i| {
            Arc::new(Announcement {
                vip: IpAddr::V4(Ipv4Addr::from(BASE + i)),
                pool: "public".into(),
                mode: AnnounceMode::BgpSelf,
                next_hops: hops.clone(),
                bgp: BgpAttributes {
                    communities: vec![Community(COMMUNITY)],
                    ..BgpAttributes::default()
                },
                services: vec![ServiceKey::new("bench", format!("svc-{i}"))],
                ports: vec![],
            })
        })
        .collect();
    Desired {
        generation,
        announcements,
    }
}

fn rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_string()
    };
    format!("rss VmHWM {} VmRSS {} kB", kib("VmHWM:"), kib("VmRSS:"))
}

fn speaker(a: &[String]) {
    let peer: IpAddr = a[0].parse().expect("peer address");
    let peer_asn: u32 = a[1].parse().expect("peer ASN");
    let asn: u32 = a[2].parse().expect("ASN");
    let router_id: Ipv4Addr = a[3].parse().expect("router id");
    let fifo = a[4].clone();
    let bgp = BgpConfig {
        asn,
        listen: true,
        listen_port: 179,
        listen_addresses: vec![IpAddr::V4(router_id)],
        graceful_restart: false,
        restart_time_s: 120,
        peers: vec![PeerConfig {
            address: peer,
            asn: peer_asn,
            hold_time: 90,
            password_file: None,
            passive: true,
            multihop_ttl: None,
            keepalive_s: None,
            connect_retry_s: 1,
            gtsm: false,
            port: 179,
            local_asn: None,
            source_address: None,
            families: vec![Family::V4],
            add_path: false,
            max_paths: 16,

            bfd: None,
            node_selector: None,
        }],
    };
    // The same runtime shape as `pier run`.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(desired(0, 0)));
        let speaker = Speaker::start(&bgp, router_id, false, rx, None, Default::default())
            .await
            .expect("speaker");
        let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || loop {
            // Each writer's close is an EOF: open the FIFO again.
            let Ok(f) = std::fs::File::open(&fifo) else {
                return;
            };
            for line in BufReader::new(f).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut generation = 0;
        let mut prepared: Option<Desired> = None;
        let say = |s: String| {
            println!("{s}");
            let _ = std::io::stdout().flush();
        };
        while let Some(line) = lines.recv().await {
            let mut w = line.split_whitespace();
            match (w.next(), w.next()) {
                (Some("prepare"), Some(n)) => {
                    generation += 1;
                    let n: u32 = n.parse().expect("prepare N");
                    prepared = Some(desired(generation, n));
                    say(format!("prepared {n}"));
                }
                (Some("publish"), _) => {
                    if let Some(d) = prepared.take() {
                        let n = d.announcements.len();
                        let _ = tx.send(Arc::new(d));
                        say(format!("published {n}"));
                    }
                }
                (Some("withdraw"), _) => {
                    generation += 1;
                    let _ = tx.send(Arc::new(desired(generation, 0)));
                    say("withdrawn".into());
                }
                (Some("rss"), _) => {
                    let sent: usize = speaker.status().iter().map(|s| s.prefixes_sent).sum();
                    say(format!("{} prefixes_sent {sent}", rss()));
                }
                (Some("quit"), _) => break,
                _ => say(format!("unknown command {line:?}")),
            }
        }
        speaker.shutdown(false).await;
        say("bye".into());
    });
}

/// A connection to BIRD's control socket.
struct Birdc {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Birdc {
    fn connect(path: &str) -> Birdc {
        let s = UnixStream::connect(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut b = Birdc {
            reader: BufReader::new(s.try_clone().expect("socket clone")),
            writer: s,
        };
        b.reply(); // the greeting
        b
    }

    /// The reply's lines up to the one with a code and a space (the last).
    fn reply(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                panic!("BIRD closed its control socket");
            }
            let last = line.len() > 4
                && line.as_bytes()[..4].iter().all(|c| c.is_ascii_digit())
                && line.as_bytes()[4] == b' ';
            out.push(line);
            if last {
                return out;
            }
        }
    }

    /// (session established, imported routes) of protocol `proto`.
    fn state(&mut self, proto: &str) -> (bool, u64) {
        writeln!(self.writer, "show protocols all {proto}").expect("write to BIRD");
        let lines = self.reply();
        let up = lines.iter().any(|l| l.contains("Established"));
        let imported = lines
            .iter()
            .find_map(|l| {
                let l = l.trim_start_matches(|c: char| c.is_ascii_digit() || c == '-');
                let rest = l.trim().strip_prefix("Routes:")?;
                rest.split_whitespace().next()?.parse().ok()
            })
            .unwrap_or(0);
        (up, imported)
    }
}

fn destinations(cmd: &str) -> u64 {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .expect("WANT_CMD");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("Destination:")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit() && c != ' ').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no 'Destination: N' in the output of {cmd}: {text}"))
}

// Every path that returns waits for the trigger; the panics end the
// program, and the trigger with it.
#[allow(clippy::zombie_processes)]
fn time(a: &[String]) {
    let (sock, proto, want) = (&a[0], &a[1], &a[2]);
    let sep = a.iter().position(|s| s == "--").expect("-- TRIGGER");
    let want_cmd = if sep > 3 { Some(a[3].clone()) } else { None };
    let trigger = &a[sep + 1..];
    let mut bird = Birdc::connect(sock);
    let mut want: Option<u64> = if want == "-" {
        None
    } else {
        Some(want.parse().expect("WANT"))
    };
    let t0 = Instant::now();
    let mut child = Command::new(&trigger[0])
        .args(&trigger[1..])
        .stdout(Stdio::null())
        .spawn()
        .expect("trigger");
    let mut triggered = false;
    // When the session came up, bounded from below: the start of the last
    // poll that still saw it down (so the time from there is an upper
    // bound, within one poll, the same for every speaker).
    let mut established: Option<Instant> = None;
    let mut last_down = t0;
    let deadline = Duration::from_secs(600);
    loop {
        let polled = Instant::now();
        if !triggered {
            if let Ok(Some(_)) = child.try_wait() {
                triggered = true;
                if want.is_none() {
                    want = Some(destinations(want_cmd.as_deref().expect("WANT_CMD")));
                }
            }
        }
        let (up, count) = bird.state(proto);
        let now = Instant::now();
        if !up {
            last_down = polled;
        } else if established.is_none() {
            established = Some(last_down);
        }
        if want == Some(count) {
            let ms = |t: Instant| (now - t).as_secs_f64() * 1e3;
            println!(
                "{:.1} {:.1} {count}",
                ms(t0),
                established.map(ms).unwrap_or(f64::NAN)
            );
            let _ = child.wait();
            return;
        }
        if now - t0 > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{proto}: {count} routes after {deadline:?}, want {want:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn mrt(a: &[String]) {
    let n: u32 = a[0].parse().expect("N");
    let nh: Ipv4Addr = a[1].parse().expect("NEXT_HOP");
    let mut out = Vec::new();
    let record = |out: &mut Vec<u8>, subtype: u16, body: &[u8]| {
        out.extend_from_slice(&0u32.to_be_bytes()); // timestamp
        out.extend_from_slice(&13u16.to_be_bytes()); // TABLE_DUMP_V2
        out.extend_from_slice(&subtype.to_be_bytes());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
    };
    // PEER_INDEX_TABLE: one IPv4 peer with a 4-octet AS.
    let mut pit = Vec::new();
    pit.extend_from_slice(&nh.octets()); // collector id
    pit.extend_from_slice(&0u16.to_be_bytes()); // no view name
    pit.extend_from_slice(&1u16.to_be_bytes());
    pit.push(0b10); // AS4, IPv4
    pit.extend_from_slice(&nh.octets());
    pit.extend_from_slice(&nh.octets());
    pit.extend_from_slice(&65020u32.to_be_bytes());
    record(&mut out, 1, &pit);
    // ORIGIN IGP, empty AS_PATH (gobgpd prepends its AS towards eBGP peers,
    // as pier does), NEXT_HOP, COMMUNITIES: what pier sends.
    let mut attrs = vec![0x40, 1, 1, 0, 0x40, 2, 0, 0x40, 3, 4];
    attrs.extend_from_slice(&nh.octets());
    attrs.extend_from_slice(&[0xc0, 8, 4]);
    attrs.extend_from_slice(&COMMUNITY.to_be_bytes());
    for i in 0..n {
        let mut rib = Vec::new();
        rib.extend_from_slice(&i.to_be_bytes()); // sequence
        rib.push(32);
        rib.extend_from_slice(&(BASE + i).to_be_bytes());
        rib.extend_from_slice(&1u16.to_be_bytes());
        rib.extend_from_slice(&0u16.to_be_bytes()); // peer index
        rib.extend_from_slice(&0u32.to_be_bytes()); // originated
        rib.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        rib.extend_from_slice(&attrs);
        record(&mut out, 2, &rib);
    }
    std::fs::write(&a[2], out).unwrap_or_else(|e| panic!("{}: {e}", a[2]));
}
