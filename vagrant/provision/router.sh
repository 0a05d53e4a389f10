#!/bin/sh
# The upstream router: BIRD 2 peering with pier, installing every path of a
# VIP as one ECMP route. $1 = router address, $2 = pier gateway address.
set -eu
ROUTER=$1 GW=$2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends bird2 >/dev/null
cat >/etc/sysctl.d/60-router.conf <<SYSCTL
net.ipv4.ip_forward = 1
# Hash ECMP on the 5-tuple so that one client's connections spread over the nodes.
net.ipv4.fib_multipath_hash_policy = 1
SYSCTL
sysctl -q --system
cat >/etc/bird/bird.conf <<BIRD
router id $ROUTER;
log syslog all;
protocol device { }
protocol kernel {
    ipv4 { import none; export all; };
    merge paths on;           # all equal paths of a VIP as one multipath route
}
protocol bgp pier {
    local $ROUTER as 65000;
    neighbor $GW as 65001;
    hold time 9;
    graceful restart on;
    # pier sends each VIP once per node (ADD-PATH), next hop = the node:
    # accept several paths, and third-party next hops on the shared LAN
    # (BIRD does for directly connected eBGP neighbours).
    ipv4 { import all; export none; add paths rx; };
}
BIRD
systemctl enable --now bird >/dev/null 2>&1 || true
systemctl restart bird
echo "router: BIRD peers with pier at $GW (birdc show protocols)"
