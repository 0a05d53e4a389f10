//! TCP sockets for BGP sessions: source address, TTL for eBGP multihop,
//! GTSM (RFC 5082) and TCP-MD5 (RFC 2385), set before connecting or on the
//! listener.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Socket options for one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketOptions {
    pub source: Option<IpAddr>,
    /// TTL of packets sent (eBGP multihop); `None` = the kernel's default
    /// for a directly connected eBGP peer is 1 in routers, but pier keeps
    /// the system default unless told.
    pub ttl: Option<u8>,
    /// GTSM: send with TTL 255 and accept only packets with TTL ≥ 255 −
    /// (hops − 1).
    pub gtsm_hops: Option<u8>,
    /// TCP-MD5 key.
    pub md5_key: Option<Vec<u8>>,
}

/// Linux `struct tcp_md5sig` (include/uapi/linux/tcp.h).
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: libc::c_int,
    key: [u8; 80],
}

fn setsockopt<T>(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets (or with an empty key, clears) the TCP-MD5 key for `peer` on a
/// socket: a connecting socket or a listener.
pub fn set_md5(fd: &impl AsRawFd, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    if key.len() > 80 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TCP-MD5 key longer than 80 octets",
        ));
    }
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut sig = TcpMd5Sig {
        addr: unsafe { std::mem::zeroed() },
        flags: 0,
        prefixlen: 0,
        keylen: key.len() as u16,
        ifindex: 0,
        key: [0; 80],
    };
    sig.key[..key.len()].copy_from_slice(key);
    match peer {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            let sin = unsafe { &mut *(&mut sig.addr as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from(a).to_be();
        }
        IpAddr::V6(a) => {
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            let sin6 = unsafe { &mut *(&mut sig.addr as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = a.octets();
        }
    }
    setsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_MD5SIG, &sig)
}

fn set_ttl(fd: &impl AsRawFd, v6: bool, ttl: u8) -> io::Result<()> {
    let v = ttl as libc::c_int;
    if v6 {
        setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_UNICAST_HOPS,
            &v,
        )
    } else {
        setsockopt(fd.as_raw_fd(), libc::IPPROTO_IP, libc::IP_TTL, &v)
    }
}

fn set_min_ttl(fd: &impl AsRawFd, v6: bool, min: u8) -> io::Result<()> {
    let v = min as libc::c_int;
    if v6 {
        setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_MINHOPCOUNT,
            &v,
        )
    } else {
        setsockopt(fd.as_raw_fd(), libc::IPPROTO_IP, libc::IP_MINTTL, &v)
    }
}

/// TTL options on an established or listening socket.
pub fn apply_ttl(fd: &impl AsRawFd, v6: bool, opts: &SocketOptions) -> io::Result<()> {
    if let Some(hops) = opts.gtsm_hops {
        set_ttl(fd, v6, 255)?;
        set_min_ttl(fd, v6, 255u8.saturating_sub(hops.saturating_sub(1)))?;
    } else if let Some(ttl) = opts.ttl {
        set_ttl(fd, v6, ttl)?;
    }
    Ok(())
}

/// Connects to `peer` with `opts`.
pub async fn connect(peer: SocketAddr, opts: &SocketOptions) -> io::Result<TcpStream> {
    let v6 = peer.is_ipv6();
    let sock = if v6 {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    if let Some(src) = opts.source {
        sock.bind(SocketAddr::new(src, 0))?;
    }
    if let Some(key) = &opts.md5_key {
        set_md5(&sock, peer.ip(), key)?;
    }
    apply_ttl(&sock, v6, opts)?;
    let stream = sock.connect(peer).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A listener on `addr` (port 179 by default) with `SO_REUSEADDR`.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    sock.set_reuseaddr(true)?;
    if addr.is_ipv6() {
        // Keep IPv4 on its own listener.
        let on: libc::c_int = 1;
        setsockopt(sock.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &on)?;
    }
    sock.bind(addr)?;
    sock.listen(64)
}
