//! Kubernetes pieces served inside a test's network namespace: the test
//! API server and a node's kube-proxy health port, each from a thread that
//! entered the namespace, stopped on drop.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pier_testapi::TestApiServer;

/// The test API server, served from a thread inside `ns`; stopped on drop.
pub struct NsApi {
    pub api: Arc<TestApiServer>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsApi {
    pub fn start(ns: &str) -> NsApi {
        let ns = ns.to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            crate::netlab::enter(&ns);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let api = Arc::new(TestApiServer::start().await.expect("test API server"));
                tx.send(api.clone()).unwrap();
                let _ = stop_rx.await;
                drop(api);
            });
        });
        let api = rx.recv().expect("API server started");
        NsApi {
            api,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for NsApi {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// kube-proxy's health endpoint: 200 to every request on `addr`, served
/// from a thread inside `ns` until dropped.
pub struct HealthPort {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HealthPort {
    pub fn start(ns: &str, addr: &str) -> HealthPort {
        let (ns, addr) = (ns.to_string(), addr.to_string());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            crate::netlab::enter(&ns);
            let l = std::net::TcpListener::bind(&addr).expect("bind the health port");
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !flag.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf);
                        let _ = s.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        rx.recv().unwrap();
        HealthPort {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HealthPort {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
