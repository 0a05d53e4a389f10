//! The ARP/NDP responder's frames and sockets, measured against the crates
//! the specification named (`pnet_packet`, `pnet_datalink`), in the same
//! run. Prints markdown tables for docs/benchmarks.md.
//!
//! 1. Parse + build cost per frame: pier's `arp::frame` (hand-written
//!    offsets) vs the same work through `pnet_packet`'s typed packets
//!    (EthernetPacket, ArpPacket, Ipv6Packet, NeighborSolicitPacket, its
//!    ICMPv6 checksum; Mutable* packets to build). The built bytes are
//!    checked equal first.
//! 2. What pnet_packet's NDP option walk makes of an option whose length
//!    octet is 32 or more (its length function multiplies in `u8`).
//! 3. Frames that reach userspace on a busy LAN: a bounded flood sent
//!    through a veth pair inside a network namespace this program creates
//!    (removed on drop): ARP requests for other hosts, ARP replies and IPv4
//!    data frames. Counted by the kernel (PACKET_STATISTICS) on pier's
//!    socket (ETH_P_ARP + its BPF filter), on the same socket without the
//!    filter, and on a socket opened the way `pnet_datalink`'s Linux backend
//!    opens its channel (ETH_P_ALL, promiscuous, no filter: see its
//!    `linux::channel`); plus the CPU time to drain each. Needs root and
//!    `ip`; skipped otherwise.
//!
//! `cargo bench --bench arp_frames` (env `ARP_FLOOD`, default 100000).

use std::hint::black_box;
use std::mem;
use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::time::{Duration, Instant};

use pier::arp::frame::{self, Mac, Request};
use pier::arp::socket::{self as psock, PacketSocket};
use pnet_base::MacAddr;
use pnet_packet::arp::{ArpHardwareTypes, ArpOperations, ArpPacket, MutableArpPacket};
use pnet_packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet_packet::icmpv6::ndp::{
    MutableNeighborAdvertPacket, NdpOption, NdpOptionTypes, NeighborAdvertFlags,
    NeighborSolicitPacket,
};
use pnet_packet::icmpv6::{self, Icmpv6Code, Icmpv6Packet, Icmpv6Types, MutableIcmpv6Packet};
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv6::{Ipv6Packet, MutableIpv6Packet};
use pnet_packet::{MutablePacket, Packet};

const OUR: Mac = Mac([0x02, 0xaa, 0, 0, 0, 1]);
const PEER: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 2];

fn mac(m: Mac) -> MacAddr {
    let [a, b, c, d, e, f] = m.0;
    MacAddr(a, b, c, d, e, f)
}

fn arp_request(target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&PEER);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&PEER);
    f.extend_from_slice(&[10, 9, 0, 2]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

/// An NS from fd09::2 for `target`, with a source link-layer option.
fn ns(target: Ipv6Addr) -> Vec<u8> {
    let src: Ipv6Addr = "fd09::2".parse().unwrap();
    let dst = frame::solicited_node(&target);
    let mut msg = vec![135, 0, 0, 0, 0, 0, 0, 0];
    msg.extend_from_slice(&target.octets());
    msg.extend_from_slice(&[1, 1]);
    msg.extend_from_slice(&PEER);
    let sum = frame::icmpv6_checksum(&src, &dst, &msg);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = Mac::ipv6_multicast(&dst).0.to_vec();
    f.extend_from_slice(&PEER);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&msg);
    f
}

/// pier's parse through pnet_packet's typed packets (the same checks).
fn pnet_parse(f: &[u8]) -> Option<Request> {
    let eth = EthernetPacket::new(f)?;
    let src_mac = eth.get_source();
    match eth.get_ethertype() {
        EtherTypes::Arp => {
            let arp = ArpPacket::new(eth.payload())?;
            if arp.get_hardware_type() != ArpHardwareTypes::Ethernet
                || arp.get_protocol_type() != EtherTypes::Ipv4
                || arp.get_hw_addr_len() != 6
                || arp.get_proto_addr_len() != 4
                || arp.get_operation() != ArpOperations::Request
            {
                return None;
            }
            Some(Request::Arp {
                sender_mac: Mac(arp.get_sender_hw_addr().octets()),
                sender_ip: arp.get_sender_proto_addr(),
                target_ip: arp.get_target_proto_addr(),
            })
        }
        EtherTypes::Ipv6 => {
            let ip = Ipv6Packet::new(eth.payload())?;
            if ip.get_version() != 6 || ip.get_next_header() != IpNextHeaderProtocols::Icmpv6 {
                return None;
            }
            let payload = ip.payload();
            let icmp = Icmpv6Packet::new(payload)?;
            if icmp.get_icmpv6_type() != Icmpv6Types::NeighborSolicit
                || icmp.get_icmpv6_code() != Icmpv6Code(0)
                || ip.get_hop_limit() != 255
            {
                return None;
            }
            let (src, dst) = (ip.get_source(), ip.get_destination());
            if icmpv6::checksum(&icmp, &src, &dst) != icmp.get_checksum() {
                return None;
            }
            let ns = NeighborSolicitPacket::new(payload)?;
            let target = ns.get_target_addr();
            let mut reply = src_mac;
            for opt in ns.get_options_iter() {
                if opt.get_option_type() == NdpOptionTypes::SourceLLAddr && opt.get_length() == 1 {
                    let d = opt.payload();
                    if d.len() >= 6 {
                        reply = MacAddr(d[0], d[1], d[2], d[3], d[4], d[5]);
                    }
                }
            }
            Some(Request::Neighbour {
                reply_mac: Mac(reply.octets()),
                source: src,
                target,
            })
        }
        _ => None,
    }
}

/// pier's reply through pnet_packet's Mutable* packets.
fn pnet_reply(req: &Request, our: Mac) -> Vec<u8> {
    match *req {
        Request::Arp {
            sender_mac,
            sender_ip,
            target_ip,
        } => {
            let mut buf = vec![0u8; 42];
            let mut eth = MutableEthernetPacket::new(&mut buf).expect("42 octets");
            eth.set_destination(mac(sender_mac));
            eth.set_source(mac(our));
            eth.set_ethertype(EtherTypes::Arp);
            let mut arp = MutableArpPacket::new(eth.payload_mut()).expect("28 octets");
            arp.set_hardware_type(ArpHardwareTypes::Ethernet);
            arp.set_protocol_type(EtherTypes::Ipv4);
            arp.set_hw_addr_len(6);
            arp.set_proto_addr_len(4);
            arp.set_operation(ArpOperations::Reply);
            arp.set_sender_hw_addr(mac(our));
            arp.set_sender_proto_addr(target_ip);
            arp.set_target_hw_addr(mac(sender_mac));
            arp.set_target_proto_addr(sender_ip);
            buf
        }
        Request::Neighbour {
            reply_mac,
            source,
            target,
        } => {
            let mut buf = vec![0u8; 14 + 40 + 32];
            let mut eth = MutableEthernetPacket::new(&mut buf).expect("86 octets");
            eth.set_destination(mac(reply_mac));
            eth.set_source(mac(our));
            eth.set_ethertype(EtherTypes::Ipv6);
            let mut ip = MutableIpv6Packet::new(eth.payload_mut()).expect("72 octets");
            ip.set_version(6);
            ip.set_payload_length(32);
            ip.set_next_header(IpNextHeaderProtocols::Icmpv6);
            ip.set_hop_limit(255);
            ip.set_source(target);
            ip.set_destination(source);
            let mut na = MutableNeighborAdvertPacket::new(ip.payload_mut()).expect("32 octets");
            na.set_icmpv6_type(Icmpv6Types::NeighborAdvert);
            na.set_icmpv6_code(Icmpv6Code(0));
            na.set_flags(NeighborAdvertFlags::Solicited | NeighborAdvertFlags::Override);
            na.set_target_addr(target);
            na.set_options(&[NdpOption {
                option_type: NdpOptionTypes::TargetLLAddr,
                length: 1,
                data: our.0.to_vec(),
            }]);
            let mut icmp = MutableIcmpv6Packet::new(ip.payload_mut()).expect("32 octets");
            let sum = icmpv6::checksum(&icmp.to_immutable(), &target, &source);
            icmp.set_checksum(sum);
            buf
        }
    }
}

fn per_frame(rounds: u32, mut f: impl FnMut()) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..rounds {
            f();
        }
        best = best.min(t.elapsed() / rounds);
    }
    best
}

fn ns_str(d: Duration) -> String {
    format!("{} ns", d.as_nanos())
}

fn frames() {
    let arp = arp_request([10, 9, 0, 7]);
    let nsf = ns("fd09::7".parse().unwrap());
    for f in [&arp, &nsf] {
        let hand = frame::parse_request(f).unwrap().unwrap();
        assert_eq!(pnet_parse(f), Some(hand), "same request");
        assert_eq!(
            pnet_reply(&hand, OUR),
            frame::build_reply(&hand, OUR),
            "same reply bytes"
        );
    }
    let n = 200_000;
    println!("## ARP/NDP frames: pier's hand-written codec vs pnet_packet\n");
    println!("| per frame (best of 5 × {n}) | pier `arp::frame` | pnet_packet |");
    println!("|---|---|---|");
    for (what, f) in [("ARP request", &arp), ("neighbour solicitation", &nsf)] {
        let hand_p = per_frame(n, || {
            black_box(frame::parse_request(black_box(f)).ok());
        });
        let pnet_p = per_frame(n, || {
            black_box(pnet_parse(black_box(f)));
        });
        println!("| parse {what} | {} | {} |", ns_str(hand_p), ns_str(pnet_p));
        let req = frame::parse_request(f).unwrap().unwrap();
        let hand_b = per_frame(n, || {
            black_box(frame::build_reply(black_box(&req), OUR));
        });
        let pnet_b = per_frame(n, || {
            black_box(pnet_reply(black_box(&req), OUR));
        });
        println!(
            "| build its reply | {} | {} |",
            ns_str(hand_b),
            ns_str(pnet_b)
        );
    }
    // An NS with a 2-octet option header claiming 32 × 8 = 256 octets.
    let mut bad = nsf.clone();
    let at = bad.len() - 7; // the option's length octet
    bad[at] = 32;
    // A correct checksum, so both parsers reach the options.
    let (src, dst) = (
        Ipv6Packet::new(&bad[14..]).expect("ipv6").get_source(),
        Ipv6Packet::new(&bad[14..]).expect("ipv6").get_destination(),
    );
    bad[56..58].copy_from_slice(&[0, 0]);
    let sum = frame::icmpv6_checksum(&src, &dst, &bad[54..]);
    bad[56..58].copy_from_slice(&sum.to_be_bytes());
    let hand = frame::parse_request(&bad)
        .map(|_| ())
        .map_err(|e| e.to_string());
    let pnet = std::panic::catch_unwind(|| {
        let ip = Ipv6Packet::new(&bad[14..]).expect("ipv6");
        let ns = NeighborSolicitPacket::new(ip.payload()).expect("ns");
        ns.get_options_iter()
            .map(|o| (o.get_length(), o.payload().len()))
            .collect::<Vec<_>>()
    });
    println!(
        "\nNS whose option length octet is 32: pier: {hand:?}; pnet_packet's option walk: {}",
        match pnet {
            Ok(v) => format!("(length, payload octets) = {v:?}"),
            Err(_) => "panicked".to_string(),
        }
    );
}

/// A network namespace of this run with a veth pair `lana` ↔ `lanb`, removed on drop.
struct Lan(String);

impl Lan {
    fn new() -> Option<Lan> {
        let name = format!("pier-arpb-{}", std::process::id());
        let ok = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ok(&["netns", "add", &name]) {
            return None;
        }
        let lan = Lan(name);
        let n = lan.0.as_str();
        for args in [
            &[
                "-n", n, "link", "add", "name", "lana", "type", "veth", "peer", "name", "lanb",
            ][..],
            &["-n", n, "link", "set", "lana", "up"],
            &["-n", n, "link", "set", "lanb", "up"],
            &["-n", n, "link", "set", "lo", "up"],
        ] {
            if !ok(args) {
                return None;
            }
        }
        Some(lan)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn enter_netns(name: &str) -> std::io::Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{name}"))?;
    // SAFETY: setns with a valid namespace fd; affects this thread only.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A raw AF_PACKET socket bound to `index` for `proto`, no filter
/// (`promisc`: as pnet_datalink's channel does by default).
fn raw_socket(index: u32, proto: u16, promisc: bool) -> OwnedFd {
    // SAFETY: plain socket(2); checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto.to_be() as i32) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto.to_be();
    addr.sll_ifindex = index as i32;
    // SAFETY: valid sockaddr_ll.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const _ as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    if promisc {
        // SAFETY: packet_mreq is plain old data.
        let mut m: libc::packet_mreq = unsafe { mem::zeroed() };
        m.mr_ifindex = index as i32;
        m.mr_type = libc::PACKET_MR_PROMISC as u16;
        setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            &m,
        );
    }
    fd
}

fn setsockopt<T>(fd: RawFd, level: i32, name: i32, v: &T) {
    // SAFETY: v is a live T of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            v as *const T as *const libc::c_void,
            mem::size_of::<T>() as u32,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

/// Frames queued to the socket since the last call, and frames dropped.
fn stats(fd: RawFd) -> (u32, u32) {
    let mut st = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = mem::size_of::<libc::tpacket_stats>() as u32;
    // SAFETY: st is valid for writes of len bytes.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            &mut st as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    (st.tp_packets, st.tp_drops)
}

fn thread_cpu() -> Duration {
    // SAFETY: ru is valid for writes.
    let mut ru: libc::rusage = unsafe { mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Receive until the queue is empty; frames drained and CPU spent.
fn drain(fd: RawFd) -> (usize, Duration) {
    let t = thread_cpu();
    let mut buf = [0u8; 2048];
    let mut n = 0;
    loop {
        // SAFETY: buf valid for writes.
        let r = unsafe {
            libc::recv(
                fd,
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            break;
        }
        // What pier does with each frame it receives.
        black_box(frame::parse_request(&buf[..r as usize]).ok());
        n += 1;
    }
    (n, thread_cpu() - t)
}

fn flood() {
    let count: usize = std::env::var("ARP_FLOOD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let Some(lan) = Lan::new() else {
        println!("\n(flood skipped: needs root and `ip netns`)");
        return;
    };
    let name = lan.0.clone();
    let run = std::thread::spawn(move || -> Result<(), String> {
        enter_netns(&name).map_err(|e| e.to_string())?;
        let b = psock::link("lanb").map_err(|e| e.to_string())?;
        let a = psock::link("lana").map_err(|e| e.to_string())?;
        let pier_sock = PacketSocket::arp("lanb", b).map_err(|e| e.to_string())?;
        let plain = raw_socket(b.index, frame::ETHERTYPE_ARP, false);
        let all = raw_socket(b.index, libc::ETH_P_ALL as u16, true);
        let big: libc::c_int = 512 << 20;
        for fd in [pier_sock.as_raw_fd(), plain.as_raw_fd(), all.as_raw_fd()] {
            setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &big);
            stats(fd); // reset
        }
        let tx = raw_socket(a.index, 0, false);
        // Half ARP requests for other hosts, a quarter ARP replies, a
        // quarter IPv4/UDP data frames (the forwarded data path).
        let mut reply = arp_request([10, 9, 1, 1]);
        reply[0..6].copy_from_slice(&b.mac.0);
        reply[21] = 2;
        let mut data = b.mac.0.to_vec();
        data.extend_from_slice(&PEER);
        data.extend_from_slice(&[0x08, 0x00]);
        data.extend_from_slice(&[0x45, 0, 0, 46, 0, 0, 0, 0, 64, 17, 0, 0]);
        data.extend_from_slice(&[10, 9, 0, 2, 10, 77, 0, 10]);
        data.extend_from_slice(&[0x30, 0x39, 0, 80, 0, 26, 0, 0]);
        data.resize(14 + 46, 0);
        let mut sent = [0usize; 3];
        for i in 0..count {
            let (kind, f) = match i % 4 {
                0 | 2 => {
                    let t = (i as u32).to_be_bytes();
                    (0, arp_request([10, 200, t[2], t[3]]))
                }
                1 => (1, reply.clone()),
                _ => (2, data.clone()),
            };
            // SAFETY: f valid for reads.
            let r = unsafe {
                libc::send(
                    tx.as_raw_fd(),
                    f.as_ptr() as *const libc::c_void,
                    f.len(),
                    0,
                )
            };
            if r > 0 {
                sent[kind] += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        println!(
            "\n## A busy LAN: {} frames into the interface ({} ARP requests for other hosts, {} ARP replies, {} IPv4 data frames)\n",
            sent.iter().sum::<usize>(),
            sent[0],
            sent[1],
            sent[2]
        );
        println!("| socket | frames queued to userspace | dropped | CPU to receive + parse them |");
        println!("|---|---|---|---|");
        for (what, fd) in [
            (
                "pier: ETH_P_ARP + BPF (ARP op = request)",
                pier_sock.as_raw_fd(),
            ),
            ("ETH_P_ARP, no filter", plain.as_raw_fd()),
            (
                "pnet_datalink's channel: ETH_P_ALL, promiscuous, no filter",
                all.as_raw_fd(),
            ),
        ] {
            let (queued, dropped) = stats(fd);
            let (_, cpu) = drain(fd);
            println!(
                "| {what} | {queued} | {dropped} | {:.1} ms |",
                cpu.as_secs_f64() * 1e3
            );
        }
        Ok(())
    });
    match run.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => println!("\nflood failed: {e}"),
        Err(_) => println!("\nflood panicked"),
    }
    drop(lan);
}

fn main() {
    frames();
    flood();
}
