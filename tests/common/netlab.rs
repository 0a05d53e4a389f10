//! Network namespaces for tests: hosts on a shared LAN (a bridge in its own
//! namespace), processes started inside them, everything removed on drop —
//! also when the test fails. Names are unique per process and lab, so tests
//! run in parallel.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Root and the named programs: `false` (skip) when missing, a panic under
/// `CI=true` where nothing may be skipped.
pub fn prerequisites(test: &str, programs: &[&str]) -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    for p in programs {
        let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/lib/frr"]
            .iter()
            .any(|d| Path::new(d).join(p).exists());
        if !found {
            missing.push(p.to_string());
        }
    }
    if missing.is_empty() {
        return true;
    }
    if ci {
        panic!(
            "{test}: missing prerequisites under CI: {}",
            missing.join(", ")
        );
    }
    eprintln!("{test}: SKIPPED, missing {}", missing.join(", "));
    false
}

pub struct Lab {
    pub prefix: String,
    namespaces: Vec<String>,
    children: Vec<(String, Child)>,
    pub dir: PathBuf,
}

fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")))
}

pub fn must(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("pt{}{}{tag}", std::process::id() % 100_000, n);
        let dir = std::env::temp_dir().join(format!("pier-lab-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut lab = Lab {
            prefix,
            namespaces: Vec::new(),
            children: Vec::new(),
            dir,
        };
        let lan = lab.ns("lan");
        must(&["ip", "netns", "add", &lan]);
        lab.namespaces.push(lan.clone());
        must(&["ip", "-n", &lan, "link", "add", "br0", "type", "bridge"]);
        must(&["ip", "-n", &lan, "link", "set", "br0", "up"]);
        lab
    }

    /// The namespace name of a host.
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// A host with `eth0` on the LAN holding `addrs` (CIDR notation).
    pub fn host(&mut self, host: &str, addrs: &[&str]) -> String {
        let ns = self.ns(host);
        let lan = self.ns("lan");
        must(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        let peer = format!("v{}", self.namespaces.len());
        must(&[
            "ip", "-n", &lan, "link", "add", &peer, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ]);
        must(&[
            "ip", "-n", &lan, "link", "set", &peer, "master", "br0", "up",
        ]);
        must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        // No duplicate address detection delay for IPv6.
        self.sh(
            host,
            "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0",
        );
        for a in addrs {
            must(&["ip", "-n", &ns, "addr", "add", a, "dev", "eth0", "nodad"]);
        }
        must(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        ns
    }

    /// Runs a shell command in a host; its output (panics on failure).
    pub fn sh(&self, host: &str, cmd: &str) -> String {
        must(&["ip", "netns", "exec", &self.ns(host), "sh", "-c", cmd])
    }

    /// Runs a shell command in a host; (success, stdout+stderr).
    pub fn try_sh(&self, host: &str, cmd: &str) -> (bool, String) {
        let out = run(&["ip", "netns", "exec", &self.ns(host), "sh", "-c", cmd]);
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Starts a long-running program in a host, killed on drop. Its output
    /// goes to `<dir>/<name>.log`.
    pub fn spawn(&mut self, host: &str, name: &str, args: &[&str]) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .args(args)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        self.children.push((name.to_string(), child));
    }

    /// Stops a program started with `spawn`: SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self, name: &str) {
        self.signal(name, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        if let Some(i) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut c) = self.children.remove(i);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal to a program started with `spawn`.
    pub fn signal(&self, name: &str, sig: libc::c_int) {
        if let Some((_, c)) = self.children.iter().find(|(n, _)| n == name) {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as libc::pid_t, sig);
            }
        }
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn write(&self, file: &str, text: &str) -> PathBuf {
        let p = self.dir.join(file);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, c) in self.children.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Anything else left running inside the namespaces.
        for ns in &self.namespaces {
            let _ = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        if let Ok(pid) = pid.parse::<i32>() {
                            // SAFETY: kill(2) of processes in our own namespace.
                            unsafe {
                                libc::kill(pid, libc::SIGKILL);
                            }
                        }
                    }
                });
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("lab files kept in {}", self.dir.display());
        }
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` and the last
/// value seen after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Runs `f` on a new thread inside the network namespace `ns` (sockets it
/// creates, e.g. a listener bound there, stay in that namespace; threads it
/// starts, e.g. a runtime's workers, start there too).
pub fn in_ns<R: Send>(ns: &str, f: impl FnOnce() -> R + Send) -> R {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: a valid netns fd; affects only the calling thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in netns panicked")
    })
}

/// The gateways of `host`'s kernel route to `prefix` (`family` is `-4` or
/// `-6`), sorted; empty when there is no route.
pub fn route_gateways(lab: &Lab, host: &str, family: &str, prefix: &str) -> Vec<String> {
    let (_, out) = lab.try_sh(host, &format!("ip {family} -j route show {prefix}"));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_default();
    let mut gws = Vec::new();
    for r in v.as_array().into_iter().flatten() {
        if let Some(g) = r.get("gateway").and_then(|g| g.as_str()) {
            gws.push(g.to_string());
        }
        for nh in r
            .get("nexthops")
            .and_then(|n| n.as_array())
            .into_iter()
            .flatten()
        {
            if let Some(g) = nh.get("gateway").and_then(|g| g.as_str()) {
                gws.push(g.to_string());
            }
        }
    }
    gws.sort();
    gws
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
