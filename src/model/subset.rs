//! A bounded, balanced subset of next hops per VIP, chosen by rendezvous
//! (highest-random-weight) hashing: each (VIP, next hop) pair gets a weight
//! from a fixed hash, and a VIP keeps the `k` next hops of highest weight.
//!
//! - **Balanced**: the weights of one VIP are independent of another's, so
//!   every next hop is in about `k / n` of the VIPs' subsets.
//! - **Minimal movement**: a next hop leaving changes only the subsets it was
//!   in (its place goes to the next by weight); one joining changes only the
//!   subsets it enters (it displaces the lowest-weighted member).
//! - **Stable**: the hash is FNV-1a 64 over the addresses' bytes, finished by
//!   the MurmurHash3 64-bit mix (FNV alone spreads nearby addresses poorly);
//!   both are fixed arithmetic on bytes, so every pier, on every platform and
//!   after every restart, chooses the same subset. Pure, no I/O.
//!
//! Used per peer by the Adj-RIB-Out (`src/bgp/rib.rs`, `max_paths`) and by
//! the kernel routes (`src/route/kernel.rs`) when a VIP has more next hops
//! than a multipath route holds; see docs/configuration.md (`max_paths`).

use std::net::IpAddr;

fn octets(ip: &IpAddr) -> ([u8; 16], usize) {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(a) => {
            b[..4].copy_from_slice(&a.octets());
            (b, 4)
        }
        IpAddr::V6(a) => (a.octets(), 16),
    }
}

/// The rendezvous weight of `next_hop` for `vip`.
pub fn weight(vip: &IpAddr, next_hop: &IpAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |byte: u8| {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    for ip in [vip, next_hop] {
        let (b, len) = octets(ip);
        feed(len as u8);
        b[..len].iter().for_each(|x| feed(*x));
    }
    // MurmurHash3 fmix64.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The at most `k` items of `items` (identified by their next-hop address,
/// `address`) that `vip` uses, in their original order. All of them when
/// there are `k` or fewer; ties in weight go to the lower address.
pub fn choose<'a, T>(
    vip: &IpAddr,
    items: &'a [T],
    k: usize,
    address: impl Fn(&T) -> IpAddr,
) -> Vec<&'a T> {
    if items.len() <= k {
        return items.iter().collect();
    }
    let mut ranked: Vec<(u64, IpAddr, usize)> = items
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let a = address(t);
            (weight(vip, &a), a, i)
        })
        .collect();
    // Highest weight first; among equal weights the lower address.
    let order =
        |x: &(u64, IpAddr, usize), y: &(u64, IpAddr, usize)| y.0.cmp(&x.0).then(x.1.cmp(&y.1));
    if k > 0 {
        ranked.select_nth_unstable_by(k - 1, order);
    }
    ranked.truncate(k);
    let mut keep: Vec<usize> = ranked.into_iter().map(|(_, _, i)| i).collect();
    keep.sort_unstable();
    keep.into_iter().map(|i| &items[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(n))
    }

    fn subset(vip: &IpAddr, nodes: &[IpAddr], k: usize) -> BTreeSet<IpAddr> {
        choose(vip, nodes, k, |a| *a).into_iter().copied().collect()
    }

    #[test]
    fn weights_are_fixed_values() {
        // The same on every platform and after every restart: a change
        // here moves traffic of every VIP in every deployment. (Checked
        // against an independent computation in Python.)
        let vip: IpAddr = "10.77.0.10".parse().unwrap();
        let node: IpAddr = "10.66.2.11".parse().unwrap();
        assert_eq!(weight(&vip, &node), weight(&vip, &node));
        assert_eq!(
            weight(&vip, &node),
            0x74c2_365f_78e1_07ef,
            "{:#x}",
            weight(&vip, &node)
        );
        let v6: IpAddr = "fd00::10".parse().unwrap();
        assert_ne!(weight(&v6, &node), weight(&vip, &node));
    }

    #[test]
    fn small_sets_are_kept_whole_and_order_is_kept() {
        let nodes: Vec<IpAddr> = (1..=5).map(v4).collect();
        let vip = v4(0x0a4d_0001);
        assert_eq!(choose(&vip, &nodes, 8, |a| *a).len(), 5);
        assert_eq!(choose(&vip, &nodes, 5, |a| *a).len(), 5);
        let three = choose(&vip, &nodes, 3, |a| *a);
        assert_eq!(three.len(), 3);
        assert!(three.windows(2).all(|w| w[0] < w[1]));
        assert!(choose(&vip, &nodes, 0, |a| *a).is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Every node carries about k/n of the VIPs: none more than 1.75×
        /// the mean, none without a VIP.
        #[test]
        fn balanced(n in 10usize..60, k in 2usize..10, base in any::<u32>(), vbase in any::<u32>()) {
            prop_assume!(k < n);
            let nodes: Vec<IpAddr> = (0..n as u32).map(|i| v4(base.wrapping_add(i))).collect();
            let vips = 60 * n;
            let mut load: BTreeMap<IpAddr, usize> = nodes.iter().map(|a| (*a, 0)).collect();
            for v in 0..vips as u32 {
                let s = subset(&v4(vbase.wrapping_add(v)), &nodes, k);
                prop_assert_eq!(s.len(), k);
                for a in s {
                    *load.get_mut(&a).unwrap() += 1;
                }
            }
            let mean = (vips * k) as f64 / n as f64;
            for (a, l) in &load {
                prop_assert!(*l >= 1, "{a} carries nothing");
                prop_assert!((*l as f64) <= 1.75 * mean, "{a} carries {l}, mean {mean}");
            }
        }

        /// A node leaving changes only the subsets it was in, each by
        /// exactly that node out and one other in; a node joining changes
        /// only the subsets it enters, each by one node out.
        #[test]
        fn minimal_movement(n in 3usize..40, k in 1usize..10, gone in any::<prop::sample::Index>(),
                            base in any::<u32>(), vips in prop::collection::vec(any::<u32>(), 1..50)) {
            let nodes: Vec<IpAddr> = (0..n as u32).map(|i| v4(base.wrapping_add(i * 7))).collect();
            let gone = nodes[gone.index(n)];
            let fewer: Vec<IpAddr> = nodes.iter().copied().filter(|a| *a != gone).collect();
            for v in vips {
                let vip = v4(v);
                let before = subset(&vip, &nodes, k);
                let after = subset(&vip, &fewer, k);
                if before.contains(&gone) {
                    let lost: Vec<_> = before.difference(&after).collect();
                    prop_assert_eq!(lost, vec![&gone]);
                    prop_assert!(after.difference(&before).count() <= 1);
                } else {
                    prop_assert_eq!(&before, &after);
                }
                // Joining is the same move backwards.
                let rejoined = subset(&vip, &nodes, k);
                prop_assert_eq!(rejoined, before);
            }
        }
    }
}
