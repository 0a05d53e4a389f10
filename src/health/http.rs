//! A minimal HTTP/1.1 GET: enough to read the status line of kube-proxy's
//! `/healthz` or a Service's `healthCheckNodePort`. Request building and
//! status parsing are pure; [`probe`] does the I/O under one deadline.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::model::ProbeTarget;

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("{target}: no answer within {timeout_ms} ms")]
    Timeout { target: String, timeout_ms: u128 },
    #[error("{target}: {op}: {error}")]
    Io {
        target: String,
        op: &'static str,
        error: String,
    },
    #[error("{target}: status {status}")]
    Status { target: String, status: u16 },
    #[error("{target}: not an HTTP response: {why}")]
    BadResponse { target: String, why: String },
    #[error("{target}: path {path:?} cannot go in a request line")]
    BadPath { target: String, path: String },
}

impl ProbeError {
    /// Short label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ProbeError::Timeout { .. } => "timeout",
            ProbeError::Io { .. } => "io",
            ProbeError::Status { .. } => "status",
            ProbeError::BadResponse { .. } => "bad_response",
            ProbeError::BadPath { .. } => "bad_path",
        }
    }

    /// Count it in `pier_errors_total{component="health"}`.
    pub(super) fn count(&self) {
        crate::metrics::count_error("health", self.metric_label());
    }
}

/// Longest status line read before giving up on a response.
const MAX_HEAD: usize = 1024;

/// The request bytes for `target`, or why the path cannot be sent (it must
/// start with `/` and hold only visible ASCII, so it cannot smuggle
/// headers).
pub fn request(target: &ProbeTarget) -> Result<Vec<u8>, ProbeError> {
    let path = &target.path;
    if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ProbeError::BadPath {
            target: target.to_string(),
            path: path.clone(),
        });
    }
    let host = SocketAddr::new(target.address, target.port);
    Ok(format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: pier-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    .into_bytes())
}

/// The status code of a response starting with `head`: `Ok(None)` while
/// the status line is incomplete.
pub fn parse_status(head: &[u8]) -> Result<Option<u16>, String> {
    let Some(end) = head.windows(2).position(|w| w == b"\r\n") else {
        if head.len() >= MAX_HEAD {
            return Err(format!("no status line in the first {MAX_HEAD} bytes"));
        }
        // Reject early what cannot become a status line.
        let n = head.len().min(5);
        if head[..n] != b"HTTP/"[..n] {
            return Err("does not start with HTTP/".into());
        }
        return Ok(None);
    };
    let line = std::str::from_utf8(&head[..end]).map_err(|_| "status line is not UTF-8")?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Err(format!("version {version:?}"));
    }
    let code = parts.next().unwrap_or_default();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("status code {code:?}"));
    }
    code.parse::<u16>()
        .map(Some)
        .map_err(|_| format!("status code {code:?}"))
}

/// GET `target` and succeed on status 200, all within `timeout`.
pub async fn probe(target: &ProbeTarget, timeout: Duration) -> Result<(), ProbeError> {
    let name = || target.to_string();
    let req = request(target)?;
    let io = |op: &'static str| {
        move |e: std::io::Error| ProbeError::Io {
            target: name(),
            op,
            error: e.to_string(),
        }
    };
    let work = async {
        let mut conn = TcpStream::connect(SocketAddr::new(target.address, target.port))
            .await
            .map_err(io("connect"))?;
        conn.write_all(&req).await.map_err(io("send request"))?;
        let mut head = Vec::with_capacity(128);
        let mut buf = [0u8; 256];
        loop {
            let n = conn.read(&mut buf).await.map_err(io("read response"))?;
            if n == 0 {
                return Err(ProbeError::BadResponse {
                    target: name(),
                    why: "connection closed before the status line".into(),
                });
            }
            head.extend_from_slice(&buf[..n]);
            match parse_status(&head) {
                Ok(None) => continue,
                Ok(Some(200)) => return Ok(()),
                Ok(Some(status)) => {
                    return Err(ProbeError::Status {
                        target: name(),
                        status,
                    })
                }
                Err(why) => {
                    return Err(ProbeError::BadResponse {
                        target: name(),
                        why,
                    })
                }
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(ProbeError::Timeout {
                target: name(),
                timeout_ms: timeout.as_millis(),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn target(path: &str) -> ProbeTarget {
        ProbeTarget {
            address: "fd00::7".parse().unwrap(),
            port: 10256,
            path: path.into(),
        }
    }

    #[test]
    fn request_line_and_host() {
        let r = String::from_utf8(request(&target("/healthz")).unwrap()).unwrap();
        assert!(
            r.starts_with("GET /healthz HTTP/1.1\r\nHost: [fd00::7]:10256\r\n"),
            "{r}"
        );
        assert!(r.ends_with("Connection: close\r\n\r\n"));
        let v4 = ProbeTarget {
            address: "10.0.0.1".parse().unwrap(),
            port: 32000,
            path: "/".into(),
        };
        let r = String::from_utf8(request(&v4).unwrap()).unwrap();
        assert!(r.contains("Host: 10.0.0.1:32000\r\n"));
    }

    #[test]
    fn paths_that_could_inject_are_refused() {
        for p in ["healthz", "/a b", "/x\r\nEvil: 1", "", "/\u{e9}"] {
            assert!(request(&target(p)).is_err(), "{p:?}");
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Ok(Some(200)));
        assert_eq!(
            parse_status(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"),
            Ok(Some(503))
        );
        assert_eq!(parse_status(b"HTTP/1.0 200\r\n"), Ok(Some(200)));
        assert_eq!(parse_status(b"HTTP/1.1 20"), Ok(None));
        assert_eq!(parse_status(b""), Ok(None));
        assert_eq!(parse_status(b"HT"), Ok(None));
        assert!(parse_status(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_status(b"SSH").is_err());
        assert!(parse_status(b"HTTP/2 200\r\n").is_err());
        assert!(parse_status(b"HTTP/1.1 2000 OK\r\n").is_err());
        assert!(parse_status(b"HTTP/1.1 +20 OK\r\n").is_err());
        assert!(parse_status(&[b'H'; 2000]).is_err());
        let mut long = b"HTTP/1.1 200 ".to_vec();
        long.resize(MAX_HEAD, b'x');
        assert!(parse_status(&long).is_err());
    }

    proptest! {
        #[test]
        fn parse_status_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
            let _ = parse_status(&bytes);
        }

        #[test]
        fn any_three_digit_status_round_trips(code in 100u16..1000, reason in "[ -~]{0,20}") {
            let line = format!("HTTP/1.1 {code} {reason}\r\n");
            prop_assert_eq!(parse_status(line.as_bytes()), Ok(Some(code)));
        }
    }
}
