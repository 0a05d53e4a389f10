//! The networks a single-hop eBGP peer shares with pier: every prefix of the
//! interface that holds the session's local address. Read once per session
//! establishment (`src/bgp/peer.rs`); the pure Adj-RIB-Out
//! (`src/bgp/rib.rs`) sends such a peer only the node next hops inside
//! them.
//!
//! Why: RFC 4271 §5.1.3 lets a speaker send an external peer one IP hop
//! away a third-party NEXT_HOP only when that peer "shares a common subnet"
//! with the address, and routers act on it: BIRD resolves eBGP next hops
//! `gateway direct` (an off-link next hop is unreachable), FRR refuses them
//! without `disable-connected-check`. A path the router cannot use would
//! still count against its multipath limit (`max_paths`). Both families of
//! the interface count: an IPv6 VIP announced over an IPv4 session has IPv6
//! next hops on the same LAN.

use ipnet::IpNet;
use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The address (or netmask) in one `sockaddr`, if it is IPv4 or IPv6.
///
/// # Safety
/// `sa` is null or points to a `sockaddr` as `getifaddrs` fills it.
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    match i32::from((*sa).sa_family) {
        libc::AF_INET => {
            let sin = &*(sa as *const libc::sockaddr_in);
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            ))))
        }
        libc::AF_INET6 => {
            let sin6 = &*(sa as *const libc::sockaddr_in6);
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// Every (interface name, address with its prefix length) of the host.
fn interface_prefixes() -> std::io::Result<Vec<(String, IpNet)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive
        // until freeifaddrs; its pointers are null or valid.
        let ifa = unsafe { &*cur };
        let addr = unsafe { sockaddr_ip(ifa.ifa_addr) };
        let mask = unsafe { sockaddr_ip(ifa.ifa_netmask) };
        if let (Some(addr), Some(mask)) = (addr, mask) {
            if let Ok(net) = IpNet::with_netmask(addr, mask) {
                let name = if ifa.ifa_name.is_null() {
                    String::new()
                } else {
                    // SAFETY: a NUL-terminated name from getifaddrs.
                    unsafe { CStr::from_ptr(ifa.ifa_name) }
                        .to_string_lossy()
                        .into_owned()
                };
                out.push((name, net));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The prefixes of the interface(s) holding `local`; empty when no
/// interface holds it.
pub fn prefixes_sharing(local: IpAddr) -> std::io::Result<Vec<IpNet>> {
    let all = interface_prefixes()?;
    let names: Vec<&str> = all
        .iter()
        .filter(|(_, net)| net.addr() == local)
        .map(|(n, _)| n.as_str())
        .collect();
    let mut nets: Vec<IpNet> = all
        .iter()
        .filter(|(n, _)| names.contains(&n.as_str()))
        .map(|(_, net)| net.trunc())
        .collect();
    nets.sort();
    nets.dedup();
    Ok(nets)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loopback holds 127.0.0.1 in 127.0.0.0/8 on every Linux host.
    #[test]
    fn loopback_prefix_is_found() {
        let nets = prefixes_sharing("127.0.0.1".parse().unwrap()).unwrap();
        assert!(nets.contains(&"127.0.0.0/8".parse().unwrap()), "{nets:?}");
        assert!(prefixes_sharing("192.0.2.254".parse().unwrap())
            .unwrap()
            .is_empty());
    }
}
