#!/bin/sh
# Every VM: basic tools. $1 = this VM's LAN address.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends curl ca-certificates iproute2 nftables tcpdump >/dev/null
# Name the LAN interface "lan" in messages: find it by address (eth1 on
# VirtualBox, often ens6/eth1 on libvirt).
ip -o -4 addr show | awk -v ip="$1" '$4 ~ "^"ip"/" {print $2}' >/etc/pier-lab-lan-interface
echo "LAN interface: $(cat /etc/pier-lab-lan-interface) ($1)"
