#!/bin/sh
# The pier gateway: install the .deb, write /etc/pier/pier.toml. pier is not
# started here: it needs the kubeconfig from the cluster (README.md, step 2).
# $1 = gateway address, $2 = router address, $3 = node addresses (a,b,c).
set -eu
GW=$1 ROUTER=$2
LAN=$(cat /etc/pier-lab-lan-interface)
export DEBIAN_FRONTEND=noninteractive
if [ ! -f /tmp/pier.deb ]; then
    echo "gateway: no pier .deb: run 'cargo deb --strip' in the repository (or set PIER_DEB), then 'vagrant provision gw'" >&2
    exit 1
fi
apt-get install -y -qq /tmp/pier.deb >/dev/null
install -d -m 0755 /usr/local/share/pier
install -m 0644 /tmp/rbac.yaml /usr/local/share/pier/rbac.yaml
if [ ! -f /etc/pier/pier.toml.lab ]; then
    cat >/etc/pier/pier.toml <<TOML
[gateway]
router_id = "$GW"
state_dir = "/var/lib/pier"
api_socket = "/run/pier/pier.sock"
api_socket_group = "pier"
metrics_listen = "127.0.0.1:9469"

[kubernetes]
kubeconfig = "/etc/pier/kubeconfig"
load_balancer_class = "pier.io/gateway"
claim_unclassed = true               # kubectl expose --type=LoadBalancer works as is
lease_namespace = "pier-system"

[bgp]
asn = 65001

[[bgp.peers]]
address = "$ROUTER"
asn = 65000
hold_time = 9

[[pools]]
name = "bgp"
addresses = ["10.77.0.10-10.77.0.250"]
mode = "bgp"
next_hop = "nodes"                   # the router sends straight to the nodes

[[pools]]
name = "lan"
addresses = ["10.66.2.240/28"]
mode = "l2"                          # pier answers ARP and forwards
interface = "$LAN"
auto_assign = false                  # only for Services that ask: pier.io/pool: lan
TOML
    cp /etc/pier/pier.toml /etc/pier/pier.toml.lab
fi
pier check --config /etc/pier/pier.toml
echo "gateway: pier installed; next: README.md step 2 (kubeconfig), then systemctl enable --now pier"
