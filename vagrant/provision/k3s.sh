#!/bin/sh
# A k3s node. $1 = server|agent, $2 = this node's LAN address, $3 = join
# token, $4 = the server's address.
#
# Flags that matter for pier:
#   --disable servicelb   k3s's own LoadBalancer controller would race pier
#   --kube-proxy-arg healthz-bind-address=0.0.0.0:10256
#                         k3s binds kube-proxy's /healthz to 127.0.0.1; pier
#                         probes it from the gateway and would see every node down
#   --node-ip             the LAN address is the node's InternalIP: pier's next hop
set -eu
ROLE=$1 IP=$2 TOKEN=$3 SERVER=$4
LAN=$(cat /etc/pier-lab-lan-interface)
COMMON="--node-ip $IP --flannel-iface $LAN --kube-proxy-arg healthz-bind-address=0.0.0.0:10256"
if [ "$ROLE" = server ]; then
    curl -sfL https://get.k3s.io | K3S_TOKEN="$TOKEN" \
        INSTALL_K3S_EXEC="server $COMMON --tls-san $IP --disable servicelb --disable traefik --write-kubeconfig-mode 0644" sh -
    until kubectl get nodes >/dev/null 2>&1; do sleep 2; done
    install -d -m 0755 /usr/local/share/pier
    install -m 0644 /tmp/rbac.yaml /usr/local/share/pier/rbac.yaml
    # Prints a kubeconfig for pier's ServiceAccount (README.md, step 2).
    cat >/usr/local/bin/pier-kubeconfig <<SH
#!/bin/sh
set -eu
CA=\$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
TOKEN=\$(kubectl -n pier-system create token pier --duration=8760h)
cat <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
  - name: lab
    cluster:
      server: https://$IP:6443
      certificate-authority-data: \$CA
users:
  - name: pier
    user:
      token: \$TOKEN
contexts:
  - name: pier@lab
    context: { cluster: lab, user: pier }
current-context: pier@lab
KUBECONFIG
SH
    chmod 0755 /usr/local/bin/pier-kubeconfig
else
    curl -sfL https://get.k3s.io | K3S_URL="https://$SERVER:6443" K3S_TOKEN="$TOKEN" \
        INSTALL_K3S_EXEC="agent $COMMON" sh -
fi
echo "k3s $ROLE up on $IP"
