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
    #[error("no pier daemon is running: nothing listens on {0} (start it with `systemctl start pier`, or pass --socket)")]
    NotRunning(PathBuf),
    #[error("permission denied on {0}: run as root or as a member of the socket's group")]
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
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning(socket.to_path_buf())
            }
            std::io::ErrorKind::PermissionDenied => ClientError::Denied(socket.to_path_buf()),
            _ => io_err(e.to_string()),
        })?;
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
