//! UDP sockets for BFD: receive sockets on port 3784 (single hop, RFC 5881
//! §4) and 4784 (multihop, RFC 5883 §3) that report each datagram's TTL or
//! hop limit and local address, and one transmit socket per session bound
//! to a source port in 49152–65535 sending with TTL 255 (GTSM, RFC 5881
//! §5, RFC 5082).

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// RFC 5881 §4: source ports of Control packets.
pub const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

/// One received datagram and what the kernel said about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub payload: Vec<u8>,
    pub source: SocketAddr,
    /// The destination address of the packet (IP_PKTINFO / IPV6_PKTINFO).
    pub local: Option<IpAddr>,
    /// The received TTL or hop limit (IP_RECVTTL / IPV6_RECVHOPLIMIT).
    pub ttl: Option<u8>,
}

fn setsockopt_int(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `v` is a live c_int and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A receive socket on `port` of every address of the family (`v6`:
/// IPv6 only), asking the kernel for each datagram's TTL and destination.
pub fn listen(v6: bool, port: u16) -> io::Result<UdpSocket> {
    let (domain, addr) = if v6 {
        (
            Domain::IPV6,
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
        )
    } else {
        (
            Domain::IPV4,
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        )
    };
    let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    sock.set_reuse_address(true)?;
    let fd = sock.as_raw_fd();
    if v6 {
        sock.set_only_v6(true)?;
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1)?;
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
    } else {
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_RECVTTL, 1)?;
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
    }
    sock.bind(&addr.into())?;
    sock.set_nonblocking(true)?;
    UdpSocket::from_std(sock.into())
}

/// A transmit socket for one session: bound to `local` (or any address of
/// the peer's family) and a free source port in 49152–65535 tried from
/// `first_port` on, sending with TTL / hop limit 255.
pub fn transmitter(peer: IpAddr, local: Option<IpAddr>, first_port: u16) -> io::Result<UdpSocket> {
    let v6 = peer.is_ipv6();
    let sock = Socket::new(
        if v6 { Domain::IPV6 } else { Domain::IPV4 },
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if v6 {
        sock.set_only_v6(true)?;
        sock.set_unicast_hops_v6(255)?;
    } else {
        sock.set_ttl_v4(255)?;
    }
    let ip = local.unwrap_or(if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    });
    let span = (SOURCE_PORTS.end() - SOURCE_PORTS.start()) as u32 + 1;
    let start = (first_port.max(*SOURCE_PORTS.start()) - SOURCE_PORTS.start()) as u32;
    let mut last = None;
    for i in 0..span {
        let port = SOURCE_PORTS.start() + ((start + i) % span) as u16;
        match sock.bind(&SocketAddr::new(ip, port).into()) {
            Ok(()) => {
                sock.set_nonblocking(true)?;
                return UdpSocket::from_std(sock.into());
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
}

/// Receives one datagram with its TTL and destination address.
pub async fn recv(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<Datagram> {
    sock.async_io(Interest::READABLE, || recvmsg(sock.as_raw_fd(), buf))
        .await
}

fn recvmsg(fd: libc::c_int, buf: &mut [u8]) -> io::Result<Datagram> {
    // SAFETY: all-zero is a valid sockaddr_storage / msghdr.
    let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 32];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = &mut from as *mut _ as *mut libc::c_void;
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg points at live buffers of the sizes given.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let source = match from.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in for AF_INET.
            let sin = unsafe { &*(&from as *const _ as *const libc::sockaddr_in) };
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 for AF_INET6.
            let sin6 = unsafe { &*(&from as *const _ as *const libc::sockaddr_in6) };
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            ))
        }
        f => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("datagram from address family {f}"),
            ))
        }
    };
    let mut ttl = None;
    let mut local = None;
    // SAFETY: walking the control messages the kernel wrote into `msg`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_TTL) | (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => {
                    let v = std::ptr::read_unaligned(data as *const libc::c_int);
                    ttl = u8::try_from(v).ok();
                }
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data as *const libc::in_pktinfo);
                    local = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        info.ipi_addr.s_addr,
                    ))));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data as *const libc::in6_pktinfo);
                    local = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Datagram {
        payload: buf[..n as usize].to_vec(),
        source,
        local,
        ttl,
    })
}
