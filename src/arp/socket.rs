//! AF_PACKET sockets bound to one interface: one for ARP requests, one for
//! ICMPv6 neighbour solicitations, each with a classic BPF filter so the
//! kernel hands pier only the frames it may answer (an `l2` interface also
//! carries the forwarded data path; pier must not wake up for that).
//! `pnet_datalink`'s channel opens ETH_P_ALL without a filter and cannot
//! take one (docs/architecture.md, "The nftables and pnet crates").

use std::ffi::CString;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::frame::{Mac, ETHERTYPE_ARP, ETHERTYPE_IPV6};
use super::ArpError;

/// What an interface is, read from the kernel at open time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub mac: Mac,
}

/// An open AF_PACKET socket bound to one interface and ethertype.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn os_err(interface: &str, op: &'static str) -> ArpError {
    ArpError::Io {
        interface: interface.to_string(),
        op,
        source: io::Error::last_os_error(),
    }
}

/// Index and MAC of `interface`, or why not (missing, not Ethernet).
pub fn link(interface: &str) -> Result<Link, ArpError> {
    let name = CString::new(interface).map_err(|_| ArpError::Interface {
        interface: interface.to_string(),
        why: "name contains a NUL byte".into(),
    })?;
    if name.as_bytes().len() >= libc::IFNAMSIZ {
        return Err(ArpError::Interface {
            interface: interface.to_string(),
            why: format!("name longer than {} bytes", libc::IFNAMSIZ - 1),
        });
    }
    // SAFETY: name is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(ArpError::Interface {
            interface: interface.to_string(),
            why: format!("no such interface ({})", io::Error::last_os_error()),
        });
    }
    // SAFETY: plain socket(2) call; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(os_err(interface, "socket(AF_INET) for SIOCGIFHWADDR"));
    }
    // SAFETY: raw is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads ifr_name and writes ifr_hwaddr of req.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(os_err(interface, "ioctl(SIOCGIFHWADDR)"));
    }
    // SAFETY: the kernel filled the hwaddr member of the union.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    if hw.sa_family != libc::ARPHRD_ETHER {
        return Err(ArpError::Interface {
            interface: interface.to_string(),
            why: format!("not an Ethernet interface (ARPHRD {})", hw.sa_family),
        });
    }
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(hw.sa_data.iter()) {
        *dst = *src as u8;
    }
    Ok(Link {
        index,
        mac: Mac(mac),
    })
}

const fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

const LDB: u32 = libc::BPF_LD | libc::BPF_B | libc::BPF_ABS;
const LDH: u32 = libc::BPF_LD | libc::BPF_H | libc::BPF_ABS;
const JEQ: u32 = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
const RET: u32 = libc::BPF_RET | libc::BPF_K;

/// ARP frames with op = 1 (request). Offsets count the Ethernet header.
const ARP_REQUESTS: [libc::sock_filter; 4] = [
    stmt(LDH, 20),
    jump(JEQ, 1, 0, 1),
    stmt(RET, 0xffff),
    stmt(RET, 0),
];

/// IPv6 frames whose next header is ICMPv6 (58) of type 135 (NS).
const NEIGHBOUR_SOLICITATIONS: [libc::sock_filter; 6] = [
    stmt(LDB, 20),
    jump(JEQ, 58, 0, 3),
    stmt(LDB, 54),
    jump(JEQ, 135, 0, 1),
    stmt(RET, 0xffff),
    stmt(RET, 0),
];

impl PacketSocket {
    /// A non-blocking socket that receives ARP requests on `link`.
    pub fn arp(interface: &str, link: Link) -> Result<Self, ArpError> {
        Self::open(interface, link, ETHERTYPE_ARP, &ARP_REQUESTS)
    }

    /// A non-blocking socket that receives neighbour solicitations on `link`.
    pub fn neighbour(interface: &str, link: Link) -> Result<Self, ArpError> {
        Self::open(interface, link, ETHERTYPE_IPV6, &NEIGHBOUR_SOLICITATIONS)
    }

    fn open(
        interface: &str,
        link: Link,
        ethertype: u16,
        filter: &[libc::sock_filter],
    ) -> Result<Self, ArpError> {
        // Protocol 0 receives nothing until bind: the filter is in place
        // before the first frame is queued.
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(os_err(interface, "socket(AF_PACKET)"));
        }
        // SAFETY: raw is a fresh descriptor we own.
        let sock = PacketSocket {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        };
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr() as *mut libc::sock_filter,
        };
        sock.setsockopt(
            interface,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &prog,
            "setsockopt(SO_ATTACH_FILTER)",
        )?;
        // Our own transmissions are not questions. Best effort (Linux 4.20+);
        // recv also skips PACKET_OUTGOING.
        let one: libc::c_int = 1;
        let _ = sock.setsockopt(
            interface,
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            &one,
            "setsockopt(PACKET_IGNORE_OUTGOING)",
        );
        // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ethertype.to_be();
        addr.sll_ifindex = link.index as i32;
        // SAFETY: addr is a valid sockaddr_ll of the given length.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(os_err(interface, "bind(AF_PACKET)"));
        }
        Ok(sock)
    }

    fn setsockopt<T>(
        &self,
        interface: &str,
        level: libc::c_int,
        name: libc::c_int,
        value: &T,
        op: &'static str,
    ) -> Result<(), ArpError> {
        // SAFETY: value points to a live T of the given size.
        let rc = unsafe {
            libc::setsockopt(
                self.as_raw_fd(),
                level,
                name,
                value as *const T as *const libc::c_void,
                mem::size_of::<T>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(os_err(interface, op));
        }
        Ok(())
    }

    fn membership(&self, interface: &str, link: Link, mac: Mac, add: bool) -> Result<(), ArpError> {
        // SAFETY: packet_mreq is plain old data; all-zero is valid.
        let mut mreq: libc::packet_mreq = unsafe { mem::zeroed() };
        mreq.mr_ifindex = link.index as i32;
        mreq.mr_type = libc::PACKET_MR_MULTICAST as u16;
        mreq.mr_alen = 6;
        mreq.mr_address[..6].copy_from_slice(&mac.0);
        let (name, op) = if add {
            (
                libc::PACKET_ADD_MEMBERSHIP,
                "setsockopt(PACKET_ADD_MEMBERSHIP)",
            )
        } else {
            (
                libc::PACKET_DROP_MEMBERSHIP,
                "setsockopt(PACKET_DROP_MEMBERSHIP)",
            )
        };
        self.setsockopt(interface, libc::SOL_PACKET, name, &mreq, op)
    }

    /// Have the interface accept frames sent to multicast `mac` (a
    /// solicited-node group) for as long as this socket lives.
    pub fn join(&self, interface: &str, link: Link, mac: Mac) -> Result<(), ArpError> {
        self.membership(interface, link, mac, true)
    }

    pub fn leave(&self, interface: &str, link: Link, mac: Mac) -> Result<(), ArpError> {
        self.membership(interface, link, mac, false)
    }

    /// One received frame into `buf`: `Ok(Some(len))`, `Ok(None)` for a
    /// frame to skip (our own outgoing, or for another host), and
    /// `Err(WouldBlock)` when the queue is empty.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
        let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: buf and from are valid for writes of the lengths given.
        let n = unsafe {
            libc::recvfrom(
                self.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_TRUNC,
                &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                &mut len,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if from.sll_pkttype == libc::PACKET_OUTGOING || from.sll_pkttype == libc::PACKET_OTHERHOST {
            return Ok(None);
        }
        // MSG_TRUNC reports the real length: a frame larger than buf is cut.
        Ok(Some((n as usize).min(buf.len())))
    }

    /// Send one whole Ethernet frame out of the bound interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: frame is valid for reads of its length.
        let n = unsafe {
            libc::send(
                self.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
