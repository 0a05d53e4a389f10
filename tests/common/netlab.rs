//! Network namespaces for tests: hosts on a shared LAN (a bridge in its own
//! namespace), processes started inside them, everything removed on drop —
//! also when the test fails. Names are unique per process and lab, so tests
//! run in parallel.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
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

    /// A host with no link yet (only `lo`, up); connect it with [`Lab::link`].
    pub fn bare_host(&mut self, host: &str) -> String {
        let ns = self.ns(host);
        must(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        self.sh(
            host,
            "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0",
        );
        ns
    }

    /// A veth between two existing hosts, `a_if` in `a` holding `a_addrs`
    /// and `b_if` in `b` holding `b_addrs` (CIDR), both up.
    pub fn link(
        &self,
        a: &str,
        a_if: &str,
        a_addrs: &[&str],
        b: &str,
        b_if: &str,
        b_addrs: &[&str],
    ) {
        let (na, nb) = (self.ns(a), self.ns(b));
        must(&[
            "ip", "-n", &na, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns",
            &nb,
        ]);
        for (ns, dev, addrs) in [(&na, a_if, a_addrs), (&nb, b_if, b_addrs)] {
            for addr in addrs {
                must(&["ip", "-n", ns, "addr", "add", addr, "dev", dev, "nodad"]);
            }
            must(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
    }

    /// Runs `f` on a thread joined to a host's namespace (sockets it
    /// opens stay in that namespace after the thread ends).
    pub fn in_host<R: Send>(&self, host: &str, f: impl FnOnce() -> R + Send) -> R {
        let ns = self.ns(host);
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&ns);
                f()
            })
            .join()
            .expect("thread in netns panicked")
        })
    }

    /// An HTTP server in a host on `addr` answering every request with 200
    /// and `body` (a node's service, or kube-proxy's `/healthz`), until the
    /// handle is stopped or dropped.
    pub fn http_server(&self, host: &str, addr: &str, body: &str) -> HttpServer {
        let addr: SocketAddr = addr.parse().expect("socket address");
        let listener = self.in_host(host, || TcpListener::bind(addr));
        let listener = listener.unwrap_or_else(|e| panic!("{host}: bind {addr}: {e}"));
        HttpServer::serve(listener, body.to_string())
    }

    /// A host's kernel routes of protocol `proto` (both families), as
    /// `ip -j route show proto N` lists them: destination → gateways.
    pub fn routes(&self, host: &str, proto: u8) -> BTreeMap<String, BTreeSet<String>> {
        let mut out = BTreeMap::new();
        for fam in ["-4", "-6"] {
            let json = must(&[
                "ip",
                "-j",
                fam,
                "-n",
                &self.ns(host),
                "route",
                "show",
                "proto",
                &proto.to_string(),
            ]);
            let v: serde_json::Value = serde_json::from_str(&json).expect("ip -j output");
            for r in v.as_array().cloned().unwrap_or_default() {
                let dst = r["dst"].as_str().unwrap_or_default().to_string();
                let gws: &mut BTreeSet<String> = out.entry(dst).or_default();
                if let Some(g) = r["gateway"].as_str() {
                    gws.insert(g.to_string());
                }
                for nh in r["nexthops"].as_array().cloned().unwrap_or_default() {
                    if let Some(g) = nh["gateway"].as_str() {
                        gws.insert(g.to_string());
                    }
                }
            }
        }
        out
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

/// Joins the calling thread to the network namespace named `ns`.
pub fn enter(ns: &str) {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: a valid netns descriptor; setns affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// A minimal HTTP/1.x server on its own thread (see [`Lab::http_server`]).
/// Stopping it closes the listening socket: new connections are refused.
pub struct HttpServer {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    fn serve(listener: TcpListener, body: String) -> HttpServer {
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), served.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if answer(conn, &body).is_ok() {
                            n.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        HttpServer {
            stop,
            served,
            thread: Some(thread),
        }
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Close the listening socket and wait for the thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn answer(mut conn: TcpStream, body: &str) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// One HTTP GET of `path` on a new connection (call it from a thread
/// inside the client's namespace, [`Lab::in_host`]): the body of a 200.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, String> {
    let mut c = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut out = String::new();
    c.read_to_string(&mut out)
        .map_err(|e| format!("read: {e}"))?;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(format!("bad response: {out:?}")),
    }
}

/// An AF_PACKET socket for ARP frames bound to `dev` (in the calling
/// thread's namespace), with a 20 ms receive timeout.
pub fn raw_arp_socket(dev: &str) -> std::os::fd::OwnedFd {
    raw_socket(dev, 0x0806)
}

/// An AF_PACKET socket for frames of `ethertype` bound to `dev`, with a
/// 20 ms receive timeout.
pub fn raw_socket(dev: &str, ethertype: u16) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let proto = ethertype.to_be() as i32;
    // SAFETY: plain socket(2); checked below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is ours.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(dev).unwrap();
    // SAFETY: valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index > 0, "no {dev}");
    // SAFETY: all-zero sockaddr_ll is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ethertype.to_be();
    addr.sll_ifindex = index as i32;
    // SAFETY: addr is a valid sockaddr_ll.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 20_000,
    };
    // SAFETY: tv is a valid timeval.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    fd
}

pub fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// An ARP request "who has `target` tell `sender`", written out by hand
/// (independently of pier's frame builder).
pub fn arp_request(sender_mac: [u8; 6], sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

/// Send `req` on a raw socket and wait up to `wait` for a frame of at
/// least `min_len` bytes that `wanted` accepts; returns it and how long it
/// took.
fn ask(
    fd: &std::os::fd::OwnedFd,
    req: &[u8],
    wait: Duration,
    min_len: usize,
    wanted: impl Fn(&[u8]) -> bool,
) -> Option<(Vec<u8>, Duration)> {
    let t0 = Instant::now();
    // SAFETY: req is valid for reads.
    let n = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr() as *const _, req.len(), 0) };
    assert_eq!(
        n as usize,
        req.len(),
        "send: {}",
        std::io::Error::last_os_error()
    );
    let mut buf = [0u8; 1600];
    while t0.elapsed() < wait {
        // SAFETY: buf is valid for writes.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len(), 0) };
        if n < min_len as isize {
            continue;
        }
        let f = &buf[..n as usize];
        if wanted(f) {
            return Some((f.to_vec(), t0.elapsed()));
        }
    }
    None
}

/// Send `req` and wait up to `wait` for an ARP reply whose sender IP is
/// `target`; returns the reply and how long it took.
pub fn arp_ask(
    fd: &std::os::fd::OwnedFd,
    req: &[u8],
    target: [u8; 4],
    wait: Duration,
) -> Option<(Vec<u8>, Duration)> {
    ask(fd, req, wait, 42, |f| {
        f[20..22] == [0, 2] && f[28..32] == target
    })
}

/// A neighbour solicitation "who has `target`" from `src` (RFC 4861 §4.3,
/// with a source link-layer address option), written out by hand
/// (independently of pier's frame builder), to `target`'s solicited-node
/// group.
pub fn ndp_solicit(
    src_mac: [u8; 6],
    src: std::net::Ipv6Addr,
    target: std::net::Ipv6Addr,
) -> Vec<u8> {
    let t = target.octets();
    let mut dst = [0u8; 16];
    dst[..2].copy_from_slice(&[0xff, 0x02]);
    dst[11..13].copy_from_slice(&[0x01, 0xff]);
    dst[13..].copy_from_slice(&t[13..]);
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&t);
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&src_mac);
    // Checksum over the pseudo-header (RFC 8200 §8.1) and the message.
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0));
        }
    };
    add(&src.octets());
    add(&dst);
    add(&(icmp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(&icmp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = !(sum as u16);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = vec![0x33, 0x33, 0xff, t[13], t[14], t[15]];
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&icmp);
    f
}

/// Send the solicitation `req` on `fd` (a [`raw_socket`] for 0x86dd) and
/// wait up to `wait` for a neighbour advertisement for `target`; how long
/// it took.
pub fn ndp_ask(
    fd: &std::os::fd::OwnedFd,
    req: &[u8],
    target: std::net::Ipv6Addr,
    wait: Duration,
) -> Option<Duration> {
    // IPv6, ICMPv6, neighbour advertisement, for `target`.
    ask(fd, req, wait, 78, |f| {
        f[12..14] == [0x86, 0xdd] && f[20] == 58 && f[54] == 136 && f[62..78] == target.octets()
    })
    .map(|(_, took)| took)
}

// The polling helpers live in tests/common/wait.rs (one copy for every
// test); benches include this file alone, so it brings them along.
#[path = "wait.rs"]
mod wait;
#[allow(unused_imports)]
pub use wait::{wait_for, wait_until};

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

/// A keep-alive line server in a host on `addr`: every line a client sends
/// is answered with `name` and a newline, on the same connection, until the
/// client closes it (a node's service for tests that keep connections open
/// across a next-hop change). Runs until the test process ends.
pub fn line_server(lab: &Lab, host: &str, addr: SocketAddr, name: &str) {
    let listener = lab
        .in_host(host, || TcpListener::bind(addr))
        .unwrap_or_else(|e| panic!("{host}: bind {addr}: {e}"));
    let name = format!("{name}\n");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let name = name.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let lines = buf[..n].iter().filter(|b| **b == b'\n').count();
                            for _ in 0..lines {
                                if conn.write_all(name.as_bytes()).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            });
        }
    });
}

/// One request on a kept connection of [`line_server`]: the name of the
/// host that answered.
pub fn line_request(conn: &mut TcpStream, timeout: Duration) -> Result<String, String> {
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    conn.write_all(b"?\n").map_err(|e| format!("send: {e}"))?;
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while out.len() < 64 {
        match conn.read(&mut b) {
            Ok(0) => return Err("closed".into()),
            Ok(_) if b[0] == b'\n' => return String::from_utf8(out).map_err(|e| e.to_string()),
            Ok(_) => out.push(b[0]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Err("answer too long".into())
}

/// Run FRR on `host` with `frr.conf` (already written in the lab folder):
/// zebra first, then, once zebra's socket exists, each of `daemons`
/// (`"bgpd"`, `"bfdd"`), all as user `frr` with their sockets in the lab
/// folder. `vtysh --vty_socket <lab dir>` reaches them.
pub fn start_frr_daemons(lab: &mut Lab, host: &str, daemons: &[&str]) {
    let dir = path_str(&lab.dir);
    must(&["chmod", "0777", &dir]);
    let _ = Command::new("chown").args(["-R", "frr:frr", &dir]).output();
    let args = |daemon: &str| {
        let mut v = vec![
            format!("/usr/lib/frr/{daemon}"),
            "-u".into(),
            "frr".into(),
            "-g".into(),
            "frr".into(),
            "-f".into(),
            format!("{dir}/frr.conf"),
            "-i".into(),
            format!("{dir}/{daemon}.pid"),
            "-z".into(),
            format!("{dir}/zserv.api"),
            "--vty_socket".into(),
            dir.clone(),
        ];
        if daemon == "bfdd" {
            v.extend(["--bfdctl".to_string(), format!("{dir}/bfdd.sock")]);
        }
        v
    };
    for daemon in std::iter::once("zebra").chain(daemons.iter().copied()) {
        let argv = args(daemon);
        let argv: Vec<&str> = argv.iter().map(|s| s.as_str()).collect();
        lab.spawn(host, daemon, &argv);
        if daemon == "zebra" {
            // The others talk to zebra through its socket.
            let zserv = lab.dir.join("zserv.api");
            wait_for("zebra's socket", Duration::from_secs(10), || {
                zserv.exists().then_some(()).ok_or_else(|| lab.log("zebra"))
            });
        }
    }
}
