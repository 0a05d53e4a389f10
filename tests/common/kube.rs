//! pier against the test API server (tests/support): the server with its
//! namespaces, pier's config (one pool, the `[kubernetes]` section), the
//! Services the tests create, and what can be read back: status, Events,
//! status writes, the lease, and pier's own view through its API socket.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use pier_testapi::{ServerOptions, TestApiServer};
use serde_json::{json, Value};

/// The namespace the tests' Services live in.
pub const SHOP: &str = "shop";

/// The IPv4 range of the pool "public" unless a test says otherwise.
pub const POOL_V4: &str = "10.77.0.0/24";

/// The pool "public" with both families.
pub const POOL_DUAL: &[&str] = &[POOL_V4, "fd66:0:0:77::/64"];

/// The test API server with these namespaces.
pub async fn api_server(opts: ServerOptions, namespaces: &[&str]) -> TestApiServer {
    let api = TestApiServer::start_with(opts).await.unwrap();
    for ns in namespaces {
        api.create(json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name": ns}}))
            .unwrap();
    }
    api
}

/// A directory for one test, holding a kubeconfig for `api`.
pub fn workdir(api: &TestApiServer) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    api.kubeconfig(&kc).unwrap();
    (dir, kc)
}

/// The server with `pier-system` (the lease) and `shop`, and a directory
/// with its kubeconfig.
pub async fn setup(opts: ServerOptions) -> (TestApiServer, tempfile::TempDir, PathBuf) {
    let api = api_server(opts, &["pier-system", SHOP]).await;
    let (dir, kc) = workdir(&api);
    (api, dir, kc)
}

/// The `[[pools]]` block of a pool: its name, addresses and more lines.
pub fn pool(name: &str, addresses: &[&str], more: &str) -> String {
    let addresses: Vec<String> = addresses.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "[[pools]]\nname = {name:?}\naddresses = [{}]\n{more}",
        addresses.join(", ")
    )
}

/// A pier config for the tests against the test API server. Its files sit
/// in one directory: `{name}.toml`, the API socket `{name}.sock` (see
/// [`socket`]), the log `{name}.log` (tests/common/daemon.rs) and the state
/// directory `state-{name}` (or `state`).
pub struct PierConfig<'a> {
    pub name: &'a str,
    /// The state directory's name, when not `state-{name}`.
    pub state: Option<&'a str>,
    /// `lease_duration_s`, `lease_renew_s`.
    pub lease: (u32, u32),
    /// More lines of `[kubernetes]`.
    pub kubernetes: &'a str,
    /// The pools (see [`pool`]).
    pub pools: String,
    /// More sections.
    pub extra: &'a str,
}

impl Default for PierConfig<'_> {
    fn default() -> Self {
        PierConfig {
            name: "a",
            state: None,
            lease: (4, 1),
            kubernetes: "load_balancer_class = \"pier.io/gateway\"\n",
            pools: pool("public", &[POOL_V4], ""),
            extra: "",
        }
    }
}

impl PierConfig<'_> {
    /// Writes `{dir}/{name}.toml` for the API server of `kubeconfig`.
    pub fn write(&self, dir: &Path, kubeconfig: &Path) -> PathBuf {
        let name = self.name;
        let state = match self.state {
            Some(s) => dir.join(s),
            None => dir.join(format!("state-{name}")),
        };
        let text = format!(
            r#"[gateway]
router_id = "10.66.0.2"
state_dir = "{state}"
api_socket = "{dir}/{name}.sock"
metrics_listen = "127.0.0.1:0"

[kubernetes]
kubeconfig = "{kc}"
{kubernetes}claim_unclassed = true
lease_namespace = "pier-system"
lease_duration_s = {dur}
lease_renew_s = {renew}

{pools}
{extra}
"#,
            state = state.display(),
            dir = dir.display(),
            kc = kubeconfig.display(),
            kubernetes = self.kubernetes,
            dur = self.lease.0,
            renew = self.lease.1,
            pools = self.pools,
            extra = self.extra,
        );
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// The API socket of the pier running with `config` (written by
/// [`PierConfig::write`]).
pub fn socket(config: &Path) -> PathBuf {
    config.with_extension("sock")
}

/// `pier WHAT --json` against the daemon's API socket (`Null` when it does
/// not answer).
pub fn cli_json(socket: &Path, what: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_pier"))
        .args([what, "--json", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// pier's entry for Service `namespace/name` in `pier services --json`: a
/// Service pier has seen (with its IPs, or why it is pending).
pub fn pier_service(socket: &Path, namespace: &str, name: &str) -> Option<Value> {
    cli_json(socket, "services")
        .as_array()?
        .iter()
        .find(|s| s["service"]["namespace"] == namespace && s["service"]["name"] == name)
        .cloned()
}

/// Whether pier (by `pier status --json`) holds the lease.
pub fn pier_leads(socket: &Path) -> Option<bool> {
    cli_json(socket, "status")["leader"].as_bool()
}

/// A LoadBalancer Service in `shop`, port 80/TCP.
pub fn lb(name: &str, annotations: Value) -> Value {
    lb_ports(name, annotations, &[80])
}

/// A LoadBalancer Service in `shop` with these TCP ports.
pub fn lb_ports(name: &str, annotations: Value, ports: &[u16]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| json!({"name": format!("p{p}"), "port": p, "protocol": "TCP"}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": SHOP, "annotations": annotations},
        "spec": {"type": "LoadBalancer", "ports": ports}
    })
}

/// `status.loadBalancer.ingress` of Service `shop/name`.
pub fn ingress(api: &TestApiServer, name: &str) -> Vec<Value> {
    ingress_in(api, SHOP, name)
}

pub fn ingress_in(api: &TestApiServer, namespace: &str, name: &str) -> Vec<Value> {
    api.get("v1", "Service", Some(namespace), name)
        .and_then(|s| s["status"]["loadBalancer"]["ingress"].as_array().cloned())
        .unwrap_or_default()
}

/// The IPs in the status of Service `shop/name`.
pub fn ips(api: &TestApiServer, name: &str) -> Vec<String> {
    ips_in(api, SHOP, name)
}

pub fn ips_in(api: &TestApiServer, namespace: &str, name: &str) -> Vec<String> {
    ingress_in(api, namespace, name)
        .iter()
        .filter_map(|i| i["ip"].as_str().map(String::from))
        .collect()
}

/// Events with `reason` about Service `shop/name`.
pub fn events(api: &TestApiServer, reason: &str, name: &str) -> Vec<Value> {
    api.list("events.k8s.io/v1", "Event", Some(SHOP))
        .into_iter()
        .filter(|e| e["reason"] == reason && e["regarding"]["name"] == name)
        .collect()
}

pub fn status_path(name: &str) -> String {
    format!("/api/v1/namespaces/{SHOP}/services/{name}/status")
}

/// Status writes (any method that changes a status) to Service `shop/name`.
pub fn status_writes_to(api: &TestApiServer, name: &str) -> usize {
    let path = status_path(name);
    api.count_requests(|r| r.path == path && r.method != "GET")
}

/// Status PATCHes to any Service.
pub fn status_writes(api: &TestApiServer) -> usize {
    api.count_requests(|r| r.path.ends_with("/status") && r.method == "PATCH")
}

/// Requests of `verb` (`list`, `watch`) on Services.
pub fn service_requests(api: &TestApiServer, verb: &str) -> usize {
    api.count_requests(|r| r.verb == verb && r.path == "/api/v1/services")
}

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/pier-system/leases/pier";

fn lease(api: &TestApiServer) -> Option<Value> {
    api.get(
        "coordination.k8s.io/v1",
        "Lease",
        Some("pier-system"),
        "pier",
    )
}

/// The lease's holder.
pub fn holder(api: &TestApiServer) -> Option<String> {
    lease(api).and_then(|l| l["spec"]["holderIdentity"].as_str().map(String::from))
}

/// Requests to the lease with this HTTP method and answer.
pub fn lease_requests(api: &TestApiServer, method: &str, status: u16) -> usize {
    api.count_requests(|r| r.method == method && r.path == LEASE && r.status == status)
}

/// Whether the lease has run out by its own fields (`renewTime` +
/// `leaseDurationSeconds` is past): what another gateway reads before it
/// takes the lease over.
pub fn lease_expired(api: &TestApiServer) -> bool {
    let Some(l) = lease(api) else { return true };
    let (Some(renew), Some(duration)) = (
        l["spec"]["renewTime"].as_str().and_then(unix_seconds),
        l["spec"]["leaseDurationSeconds"].as_f64(),
    ) else {
        return true;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    now > renew + duration
}

/// Seconds since the epoch of an RFC 3339 UTC time as Kubernetes writes
/// it (`2026-12-01T23:25:00.123456Z`).
fn unix_seconds(t: &str) -> Option<f64> {
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut c = time.split(':');
    let (h, min) = (
        c.next()?.parse::<i64>().ok()?,
        c.next()?.parse::<i64>().ok()?,
    );
    let s: f64 = c.next()?.parse().ok()?;
    // Days from the civil date (H. Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3_600 + min * 60) as f64 + s)
}
