//! The end-to-end lab, shared by `tests/e2e.rs` and `benches/e2e.rs`: the
//! real `pier` binary in network namespaces against the test API server.
//!
//! ```text
//!  c (client) 10.0.0.50 ─┐
//!  r (BIRD)   10.0.0.1  ─┤ LAN 10.0.0.0/24 (bridge)
//!  gw (pier)  10.0.0.2  ─┤
//!  gw2 (pier) 10.0.0.3  ─┤
//!  api        10.0.0.5  ─┤ the test API server (bound on api's 127.0.0.1,
//!                        │ reached on 10.0.0.5 through a DNAT)
//!  n1..n3     10.0.0.11-13 ┘ kube-proxy stand-ins: nft DNAT of VIP:80 to
//!                            tests/lab/node_http.py (answers its name),
//!                            /healthz on 10256
//! ```
//!
//! The client reaches BGP VIPs (192.0.2.0/24) through the router, and `l2`
//! VIPs (10.0.0.240/28) on the LAN directly.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pier_testapi::TestApiServer;
use serde_json::{json, Value};

use crate::netlab::{self, path_str, wait_for, Lab};

pub const NODES: [(&str, &str); 3] = [
    ("n1", "10.0.0.11"),
    ("n2", "10.0.0.12"),
    ("n3", "10.0.0.13"),
];
pub const ROUTER: &str = "10.0.0.1";
pub const API: &str = "10.0.0.5";
pub const BGP_POOL: &str = "192.0.2.0/28";
pub const L2_POOL: &str = "10.0.0.240/28";
/// Generous bound for something the daemon must bring about (this checks
/// behaviour; speed is the benchmark's business).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Everything the lab needs on the machine (root, the router, nft, the
/// node stand-ins and the client).
pub fn prerequisites(test: &str) -> bool {
    netlab::prerequisites(test, &["ip", "bird", "birdc", "nft", "python3", "curl"])
}

pub struct E2eLab {
    // Dropped in this order: the API server, its runtime, then the lab.
    pub api: TestApiServer,
    rt: tokio::runtime::Runtime,
    pub lab: Lab,
    pub pier_bin: PathBuf,
    runs: u32,
}

pub struct Gateway<'a> {
    /// Host name: `gw` or `gw2`.
    pub host: &'a str,
    pub address: &'a str,
    /// `bgp` (pool 192.0.2.0/28, ADD-PATH to the router) or `l2` (pool
    /// 10.0.0.240/28 on eth0).
    pub mode: &'a str,
    pub lease: (u32, u32),
    /// Extra TOML appended to the config (pools, static services).
    pub extra: &'a str,
    /// `kubernetes.claim_unclassed`.
    pub claim_unclassed: bool,
    /// `kubernetes.crds`: pools from Eip objects, none in the file (the
    /// `[bgp]` of `bgp` mode stays, for the router).
    pub crds: bool,
    /// `gateway.vip_counters`: count accepted packets per VIP.
    pub vip_counters: bool,
}

impl Default for Gateway<'_> {
    fn default() -> Self {
        Gateway {
            host: "gw",
            address: "10.0.0.2",
            mode: "bgp",
            lease: (15, 5),
            extra: "",
            claim_unclassed: true,
            crds: false,
            vip_counters: false,
        }
    }
}

impl E2eLab {
    /// The LAN with router, gateways, nodes and client; the nodes serving;
    /// BIRD running when `router`; the API server in `gw` with the Nodes.
    pub fn new(tag: &str, pier_bin: &str, router: bool, gateways: &[&str]) -> E2eLab {
        let mut lab = Lab::new(tag);
        lab.host("r", &[&format!("{ROUTER}/24")]);
        for (i, g) in gateways.iter().enumerate() {
            lab.host(g, &[&format!("10.0.0.{}/24", 2 + i)]);
        }
        for (n, ip) in NODES {
            lab.host(n, &[&format!("{ip}/24")]);
        }
        lab.host("c", &["10.0.0.50/24"]);
        lab.host("api", &[&format!("{API}/24")]);
        lab.sh("c", &format!("ip route add 192.0.2.0/24 via {ROUTER}"));
        lab.sh(
            "r",
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 \
             net.ipv4.conf.eth0.send_redirects=0 net.ipv4.fib_multipath_hash_policy=1",
        );
        let node_http = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lab/node_http.py");
        for (n, ip) in NODES {
            lab.sh(
                n,
                &format!(
                    "nft -f - <<'EOF'
table inet kubeproxy {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {{ 192.0.2.0/24, {L2_POOL} }} tcp dport 80 dnat ip to {ip}:8080
    }}
}}
EOF"
                ),
            );
            lab.spawn(
                n,
                &format!("http-{n}"),
                &["/usr/bin/python3", node_http, n, ip, "8080", "10256"],
            );
        }
        if router {
            let conf = lab.write(
                "bird.conf",
                &format!(
                    r#"log "{dir}/bird-log" all;
router id {ROUTER};
protocol device {{ scan time 1; }}
protocol kernel k4 {{ ipv4 {{ export all; import none; }}; merge paths on; }}
protocol bgp pier {{
  local {ROUTER} as 65000;
  neighbor 10.0.0.2 as 65010;
  passive on;
  hold time 9;
  graceful restart on;
  ipv4 {{ import all; export none; add paths rx; }};
}}
"#,
                    dir = path_str(&lab.dir)
                ),
            );
            let sock = path_str(&lab.dir.join("bird.ctl"));
            lab.spawn(
                "r",
                "bird",
                &["bird", "-f", "-c", &path_str(&conf), "-s", &sock],
            );
        }
        // The API server listens on the api host's loopback (a thread
        // inside binds it); the gateways reach it on 10.0.0.5 through a
        // DNAT, so a gateway can die (its link down) without it.
        let api_ns = lab.ns("api");
        let (rt, api) = netlab::in_ns(&api_ns, || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            let api = rt
                .block_on(TestApiServer::start())
                .expect("test API server");
            (rt, api)
        });
        let port = api.addr().port();
        lab.sh(
            "api",
            &format!(
                "sysctl -qw net.ipv4.conf.all.route_localnet=1 net.ipv4.conf.eth0.route_localnet=1
nft -f - <<'EOF'
table ip testapi {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {API} tcp dport {port} dnat to 127.0.0.1:{port}
    }}
}}
EOF"
            ),
        );
        for ns in ["pier-system", "shop"] {
            api.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
                .expect("namespace");
        }
        for (n, ip) in NODES {
            api.create(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": n, "labels": {"kubernetes.io/hostname": n}},
                "status": {
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "addresses": [{"type": "InternalIP", "address": ip}]
                }
            }))
            .expect("node");
        }
        E2eLab {
            api,
            rt,
            lab,
            pier_bin: PathBuf::from(pier_bin),
            runs: 0,
        }
    }

    /// Writes the gateway's config; its path.
    pub fn gateway_config(&self, g: &Gateway) -> PathBuf {
        let kc = self.lab.dir.join(format!("kubeconfig-{}", g.host));
        let yaml = self.api.kubeconfig_yaml().replace("127.0.0.1", API);
        std::fs::write(&kc, yaml).expect("kubeconfig");
        let (mut pools, bgp) = match g.mode {
            "l2" => (
                format!(
                    "[[pools]]\nname = \"lan\"\naddresses = [\"{L2_POOL}\"]\nmode = \"l2\"\ninterface = \"eth0\"\n"
                ),
                String::new(),
            ),
            _ => (
                format!(
                    "[[pools]]\nname = \"public\"\naddresses = [\"{BGP_POOL}\"]\nmode = \"bgp\"\nnext_hop = \"nodes\"\n"
                ),
                format!(
                    "[bgp]\nasn = 65010\nrestart_time_s = 60\n\n[[bgp.peers]]\naddress = \"{ROUTER}\"\nasn = 65000\nhold_time = 9\nconnect_retry_s = 1\n"
                ),
            ),
        };
        if g.crds {
            pools.clear();
        }
        let text = format!(
            r#"[gateway]
router_id = "{addr}"
state_dir = "{dir}/state-{host}"
api_socket = "{dir}/{host}.sock"
metrics_listen = "127.0.0.1:9469"
shutdown = "keep"
vip_counters = {vip_counters}

[kubernetes]
kubeconfig = "{kc}"
claim_unclassed = {claim}
crds = {crds}
lease_namespace = "pier-system"
lease_duration_s = {dur}
lease_renew_s = {renew}

{bgp}
{pools}
# Loose enough for a loaded 2-core CI machine: a node is down after 3
# probes in a row failed (1.5 s), not after one slow answer.
[health]
interval_ms = 500
timeout_ms = 450
fall = 3
rise = 2

{extra}"#,
            addr = g.address,
            dir = path_str(&self.lab.dir),
            host = g.host,
            kc = path_str(&kc),
            dur = g.lease.0,
            renew = g.lease.1,
            extra = g.extra,
            claim = g.claim_unclassed,
            crds = g.crds,
            vip_counters = g.vip_counters,
        );
        self.lab.write(&format!("{}.toml", g.host), &text)
    }

    /// Starts pier on `host` with `config`; the name of its process (and
    /// log) for `Lab::stop`, `Lab::signal` and `Lab::log`.
    pub fn start_pier(&mut self, host: &str, config: &std::path::Path) -> String {
        self.start_pier_with(host, config, &[])
    }

    /// The same with more arguments to `pier run`.
    pub fn start_pier_with(
        &mut self,
        host: &str,
        config: &std::path::Path,
        extra: &[&str],
    ) -> String {
        self.runs += 1;
        let name = format!("pier-{host}-{}", self.runs);
        let bin = path_str(&self.pier_bin);
        let config = path_str(config);
        let mut args = vec![bin.as_str(), "run", "--config", config.as_str()];
        args.extend_from_slice(extra);
        self.lab.spawn(host, &name, &args);
        name
    }

    /// The socket of a gateway's local API.
    pub fn socket(&self, host: &str) -> PathBuf {
        self.lab.dir.join(format!("{host}.sock"))
    }

    /// `pier <args> --socket <host's socket>`: (success, stdout+stderr).
    pub fn cli(&self, host: &str, args: &str) -> (bool, String) {
        let bin = path_str(&self.pier_bin);
        let sock = path_str(&self.socket(host));
        self.lab
            .try_sh(host, &format!("{bin} {args} --socket {sock}"))
    }

    /// GET on a gateway's metrics listener: (HTTP status, body).
    pub fn http_get(&self, host: &str, path: &str) -> (u16, String) {
        let (_, out) = self.lab.try_sh(
            host,
            &format!("curl -s -m 2 -w '\\n%{{http_code}}' http://127.0.0.1:9469{path}"),
        );
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    pub fn birdc(&self, cmd: &str) -> String {
        let sock = path_str(&self.lab.dir.join("bird.ctl"));
        self.lab.try_sh("r", &format!("birdc -s {sock} {cmd}")).1
    }

    /// BIRD's line for the session with pier (state and since when).
    pub fn bird_session(&self) -> String {
        self.birdc("show protocols pier")
            .lines()
            .find(|l| l.starts_with("pier"))
            .unwrap_or_default()
            .to_string()
    }

    /// The router's kernel next hops for `vip`.
    pub fn router_hops(&self, vip: &str) -> Vec<String> {
        netlab::route_gateways(&self.lab, "r", "-4", vip)
    }

    pub fn wait_router_hops(&self, vip: &str, want: &[&str], what: &str, pier: &str) {
        wait_for(what, PATIENCE, || {
            let got = self.router_hops(vip);
            if got == want {
                Ok(())
            } else {
                Err(format!(
                    "{got:?}, want {want:?}\nbird:\n{}\npier log:\n{}",
                    self.birdc("show route all"),
                    self.lab.log(pier)
                ))
            }
        });
    }

    /// `n` requests from the client to `vip:80`, each a new connection: the
    /// answering node per request, `FAIL` for a failed one.
    pub fn requests(&self, vip: &str, n: usize) -> Vec<String> {
        let (_, out) = self.lab.try_sh(
            "c",
            &format!("for i in $(seq {n}); do curl -s -m 2 http://{vip}/ || echo FAIL; done"),
        );
        out.lines().map(|l| l.trim().to_string()).collect()
    }

    /// One request; the answering node.
    pub fn request(&self, vip: &str, timeout_ms: u64) -> Result<String, String> {
        let (ok, out) = self.lab.try_sh(
            "c",
            &format!("curl -s -m {:.3} http://{vip}/", timeout_ms as f64 / 1000.0),
        );
        match (ok, out.trim()) {
            (true, name) if !name.is_empty() => Ok(name.to_string()),
            (_, other) => Err(format!("request failed: {other}")),
        }
    }

    /// Creates a LoadBalancer Service in `shop`.
    pub fn create_service(&self, name: &str, local: bool, annotations: Value) -> Value {
        let mut spec = json!({"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]});
        if local {
            spec["externalTrafficPolicy"] = json!("Local");
        }
        self.api
            .create(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "shop", "annotations": annotations},
                "spec": spec
            }))
            .expect("create Service")
    }

    /// An EndpointSlice of `service` with one ready endpoint on each of `nodes`.
    pub fn endpoints(&self, service: &str, nodes: &[&str]) {
        let endpoints: Vec<Value> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                json!({
                    "addresses": [format!("10.244.{i}.10")],
                    "conditions": {"ready": true},
                    "nodeName": n
                })
            })
            .collect();
        self.api
            .create(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {
                    "name": format!("{service}-abcde"), "namespace": "shop",
                    "labels": {"kubernetes.io/service-name": service}
                },
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": endpoints
            }))
            .expect("create EndpointSlice");
    }

    /// The IPs in a Service's status.
    pub fn status_ips(&self, name: &str) -> Vec<String> {
        self.api
            .get("v1", "Service", Some("shop"), name)
            .and_then(|s| s["status"]["loadBalancer"]["ingress"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|i| i["ip"].as_str().map(String::from))
            .collect()
    }

    pub fn wait_status_ip(&self, name: &str, pier: &str) -> String {
        wait_for(
            &format!("an IP in {name}'s status"),
            PATIENCE,
            || match self.status_ips(name).first() {
                Some(ip) => Ok(ip.clone()),
                None => Err(self.lab.log(pier)),
            },
        )
    }

    /// Polls until a request to `vip` succeeds; the time it took.
    pub fn wait_served(&self, vip: &str, timeout: Duration) -> Option<Duration> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if self.request(vip, 300).is_ok() {
                return Some(t.elapsed());
            }
        }
        None
    }

    /// The MAC address of `host`'s eth0.
    pub fn mac(&self, host: &str) -> String {
        self.lab
            .sh(host, "cat /sys/class/net/eth0/address")
            .trim()
            .to_string()
    }

    /// The client's neighbour entry (MAC) for `ip`, if any.
    pub fn client_neighbour(&self, ip: &str) -> Option<String> {
        let out = self.lab.sh("c", &format!("ip -j neigh show {ip}"));
        let v: Value = serde_json::from_str(out.trim()).ok()?;
        v.as_array()?
            .iter()
            .find_map(|e| e["lladdr"].as_str().map(String::from))
    }
}

/// Two texts from `birdc` are the same but for BIRD's `HH:MM:SS.mmm`
/// timestamps, which may differ by a few milliseconds: BIRD keeps times on
/// its monotonic clock and converts them to wall-clock time when printing,
/// so the same instant prints ±1 ms apart from one call to the next. A
/// session reset or a re-sent route moves its time by far more.
pub fn same_bird_text(a: &str, b: &str) -> bool {
    let re = regex::Regex::new(r"\b(\d\d):(\d\d):(\d\d)\.(\d{3})\b").expect("regex");
    let times = |s: &str| -> Vec<i64> {
        re.captures_iter(s)
            .map(|c| {
                let n = |i: usize| c[i].parse::<i64>().unwrap_or(0);
                ((n(1) * 60 + n(2)) * 60 + n(3)) * 1000 + n(4)
            })
            .collect()
    };
    let (ta, tb) = (times(a), times(b));
    re.replace_all(a, "T") == re.replace_all(b, "T")
        && ta.len() == tb.len()
        && ta.iter().zip(&tb).all(|(x, y)| (x - y).abs() <= 20)
}
