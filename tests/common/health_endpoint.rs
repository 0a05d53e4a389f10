//! A node's health endpoint on a loopback address (127.0.0.x, ::1),
//! switchable between healthy (200), unhealthy (503) and hanging (no
//! answer: the probe times out), counting what it was asked. For
//! tests/health.rs and benches/health.rs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pier::model::ProbeTarget;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const HEALTHY: u8 = 0;
pub const UNHEALTHY: u8 = 1;
pub const HANGING: u8 = 2;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    pub ok: u64,
    pub bad: u64,
    pub hung: u64,
}

impl Served {
    pub fn total(&self) -> u64 {
        self.ok + self.bad + self.hung
    }
}

/// A node's health endpoint. Counts requests per path and per answer.
pub struct Server {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    served: Arc<Mutex<BTreeMap<String, Served>>>,
}

impl Server {
    pub async fn start(ip: &str) -> Server {
        let listener = TcpListener::bind((ip.parse::<IpAddr>().unwrap(), 0))
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(HEALTHY));
        let served: Arc<Mutex<BTreeMap<String, Served>>> = Arc::default();
        let (m, s) = (mode.clone(), served.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let (m, s) = (m.clone(), s.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 512];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    let path = text.split(' ').nth(1).unwrap_or("").to_string();
                    let mode = m.load(Ordering::SeqCst);
                    {
                        let mut s = s.lock().unwrap();
                        let e = s.entry(path).or_default();
                        match mode {
                            HEALTHY => e.ok += 1,
                            UNHEALTHY => e.bad += 1,
                            _ => e.hung += 1,
                        }
                    }
                    let reply: &[u8] = match mode {
                        HEALTHY => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                        UNHEALTHY => {
                            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
                        }
                        _ => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                    };
                    let _ = conn.write_all(reply).await;
                });
            }
        });
        Server { addr, mode, served }
    }

    pub fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    pub fn served(&self, path: &str) -> Served {
        self.served
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or_default()
    }

    pub fn target(&self, path: &str) -> ProbeTarget {
        ProbeTarget {
            address: self.addr.ip(),
            port: self.addr.port(),
            path: path.into(),
        }
    }
}
