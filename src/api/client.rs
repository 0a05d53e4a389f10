//! The CLI side of the local API.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use thiserror::Error;
use tokio::net::UnixStream;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("no pier daemon is running: {0} does not exist (start it with `systemctl start pier`, or pass --socket if it listens elsewhere)")]
    NoSocket(PathBuf),
    #[error("no pier daemon is running: {0} exists but nothing listens on it (left by a daemon that stopped; start it with `systemctl start pier`)")]
    NotListening(PathBuf),
    #[error("permission denied on {0}: run as root, or as the socket's owner or a member of its group (gateway.api_socket_group)")]
    Denied(PathBuf),
    #[error("cannot talk to pier on {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("pier answered {status}: {body}")]
    Status { status: u16, body: String },
}

/// `GET path` on the daemon's socket; the JSON body.
pub async fn get(socket: &Path, path: &str) -> Result<Value, ClientError> {
    let io_err = |reason: String| ClientError::Io {
        path: socket.to_path_buf(),
        reason,
    };
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| connect_error(socket, &e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| io_err(e.to_string()))?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, "pier")
        .body(Empty::<Bytes>::new())
        .map_err(|e| io_err(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| io_err(e.to_string()))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| io_err(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        return Err(ClientError::Status {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    serde_json::from_slice(&body).map_err(|e| io_err(format!("invalid JSON: {e}")))
}

/// What a failed connect to the socket means for the operator.
fn connect_error(socket: &Path, e: &std::io::Error) -> ClientError {
    let path = socket.to_path_buf();
    match e.kind() {
        std::io::ErrorKind::NotFound => ClientError::NoSocket(path),
        std::io::ErrorKind::ConnectionRefused => ClientError::NotListening(path),
        std::io::ErrorKind::PermissionDenied => ClientError::Denied(path),
        _ => ClientError::Io {
            path,
            reason: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_socket_says_no_daemon_and_where() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("pier.sock");
        let e = get(&sock, "/v1/status").await.unwrap_err();
        assert!(matches!(e, ClientError::NoSocket(_)), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("no pier daemon is running"), "{text}");
        assert!(text.contains("does not exist"), "{text}");
        assert!(text.contains(&sock.display().to_string()), "{text}");
    }

    #[tokio::test]
    async fn stale_socket_says_nothing_listens() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("pier.sock");
        // A daemon that died leaves its socket file behind.
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let e = get(&sock, "/v1/status").await.unwrap_err();
        assert!(matches!(e, ClientError::NotListening(_)), "{e:?}");
        assert!(e.to_string().contains("nothing listens on it"), "{e}");
    }

    #[test]
    fn permission_denied_names_the_group_setting() {
        // Root bypasses the socket's mode, so the mapping is checked directly.
        let e = connect_error(
            Path::new("/run/pier/pier.sock"),
            &std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert!(matches!(e, ClientError::Denied(_)), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("permission denied on /run/pier/pier.sock"),
            "{text}"
        );
        assert!(text.contains("api_socket_group"), "{text}");
    }
}
