//! Crash safety: run the real `pier` binary on static services, SIGKILL it at
//! random moments many times in a row (while it is allocating a growing set
//! of services), and check after every kill that no allocation was lost,
//! moved or duplicated.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pier::model::{Allocation, ServiceKey};
use pier::store::{AllocationStore, SledStore};

/// xorshift: no dependency, reproducible from the printed seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn write_config(dir: &Path, services: usize) -> std::path::PathBuf {
    let mut s = format!(
        r#"[gateway]
router_id = "10.66.0.2"
state_dir = "{state}"
api_socket = "{dir}/pier.sock"
metrics_listen = "127.0.0.1:0"

[[pools]]
name = "public"
addresses = ["10.77.0.0/22", "fd66:0:0:77::/64"]

[[pools]]
name = "small"
addresses = ["10.78.0.0/28"]
"#,
        state = dir.join("state").display(),
        dir = dir.display()
    );
    for i in 0..services {
        // A mix: v4, dual-stack, and a small pool that runs out.
        let (pool, ip) = match i % 5 {
            // explicit dual-stack IPs, away from where auto allocation lands
            0 => {
                let n = 10 + i / 5;
                (
                    "public",
                    format!(r#"ip = "10.77.3.{n},fd66:0:0:77::3:{n:x}""#),
                )
            }
            1 => ("small", String::new()),
            _ => ("public", String::new()),
        };
        s.push_str(&format!(
            r#"
[[static_services]]
name = "crash/svc-{i}"
pool = "{pool}"
{ip}
ports = ["{port}/tcp"]
nodes = ["10.66.2.11", "10.66.2.12", "fd66::11"]
health = "none"
"#,
            port = 1000 + i
        ));
    }
    let path = dir.join("pier.toml");
    std::fs::write(&path, s).unwrap();
    path
}

fn spawn(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pier"))
        .args(["run", "--config"])
        .arg(config)
        .env("PIER_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pier")
}

/// Open the store once the killed process has released its lock.
fn read_store(state: &Path) -> Vec<Allocation> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match SledStore::open(state) {
            Ok(s) => return s.load().expect("store readable after SIGKILL"),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("store not openable after SIGKILL: {e}"),
        }
    }
}

fn check_invariants(allocs: &[Allocation]) -> BTreeMap<ServiceKey, Vec<IpAddr>> {
    let mut by_ip: BTreeMap<IpAddr, &Allocation> = BTreeMap::new();
    let mut by_svc: BTreeMap<ServiceKey, Vec<IpAddr>> = BTreeMap::new();
    for a in allocs {
        if let Some(other) = by_ip.insert(a.ip, a) {
            panic!("{} given to both {} and {}", a.ip, other.service, a.service);
        }
        by_svc.entry(a.service.clone()).or_default().push(a.ip);
    }
    for (svc, ips) in &by_svc {
        let v4 = ips.iter().filter(|i| i.is_ipv4()).count();
        let v6 = ips.iter().filter(|i| i.is_ipv6()).count();
        assert!(v4 <= 1 && v6 <= 1, "{svc} holds {ips:?}");
    }
    by_svc
}

#[test]
fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let seed = std::env::var("PIER_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test seed: {seed} (set PIER_CRASH_SEED to replay)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut known: BTreeMap<ServiceKey, Vec<IpAddr>> = BTreeMap::new();
    let rounds = 40;
    for round in 0..rounds {
        // Grow the set so every run has new services to allocate.
        let services = 20 + round * 15;
        let config = write_config(dir.path(), services);
        let mut child = spawn(&config);
        let delay = rng.below(120);
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let now = check_invariants(&read_store(&state));
        for (svc, ips) in &known {
            assert_eq!(
                now.get(svc),
                Some(ips),
                "round {round} (killed after {delay} ms): {svc} lost or moved its IPs"
            );
        }
        known = now;
    }
    // Clean runs complete every allocation and keep the old ones. The small
    // pool (16 IPs) cannot serve every `small` service; all others get IPs.
    let total = 20 + (rounds - 1) * 15;
    let small_services = (0..total).filter(|i| i % 5 == 1).count();
    let expected = total - (small_services - 16);
    let config = write_config(dir.path(), total);
    let mut complete = BTreeMap::new();
    for attempt in 1..=20 {
        let mut child = spawn(&config);
        std::thread::sleep(Duration::from_millis(300 * attempt));
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let status = child.wait().unwrap();
        assert!(status.success(), "pier exited with {status} on SIGTERM");
        complete = check_invariants(&read_store(&state));
        if complete.len() == expected {
            break;
        }
    }
    assert_eq!(
        complete.len(),
        expected,
        "services with IPs after clean runs"
    );
    for (svc, ips) in &known {
        assert_eq!(
            complete.get(svc),
            Some(ips),
            "{svc} changed after a clean run"
        );
    }
    let small = complete
        .values()
        .filter(|ips| ips.iter().any(|ip| ip.to_string().starts_with("10.78.")))
        .count();
    assert_eq!(small, 16, "the small pool is used up exactly");
}
