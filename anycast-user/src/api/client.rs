//! The CLI's side of the admin API: one HTTP/1.1 request over the daemon's Unix socket.
//!
//! "No daemon" is decided by the connection alone: the socket file missing or nobody
//! listening on it ([`ClientError::NoDaemon`]). Anything else (permission denied, a reset,
//! a slow answer) is an error of its own, never a reason to go around the daemon.

use std::{io, path::Path, time::Duration};

use http_body_util::{BodyExt, Full};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

pub use hyper::Method;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket does not exist, or nothing listens on it.
    #[error("no daemon listens on {path}: {source}")]
    NoDaemon { path: String, source: io::Error },
    #[error(
        "{path}: permission denied: the admin socket is for root and the members of its group ([admin] socket_group)"
    )]
    Denied { path: String },
    #[error("talking to the daemon on {path}: {reason}")]
    Failed { path: String, reason: String },
    #[error("the daemon on {path} did not answer within {timeout:?} (busy? see its log)")]
    Timeout { path: String, timeout: Duration },
}

/// A reply: the HTTP status and the body.
pub struct Reply {
    pub status: u16,
    pub body: String,
}

/// `method path` with `body` to the daemon on `socket`, within `timeout`.
pub async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<String>,
    timeout: Duration,
) -> Result<Reply, ClientError> {
    let name = socket.display().to_string();
    let stream = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => {
            return Err(ClientError::NoDaemon { path: name, source: e });
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(ClientError::Denied { path: name });
        }
        Err(e) => return Err(ClientError::Failed { path: name, reason: e.to_string() }),
    };
    let failed =
        |e: &dyn std::fmt::Display| ClientError::Failed { path: name.clone(), reason: e.to_string() };
    let exchange = async {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| failed(&e))?;
        let conn = tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            // HTTP/1.1 wants a Host; the socket is the address.
            .header(hyper::header::HOST, "localhost")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| failed(&e))?;
        let res = sender.send_request(req).await.map_err(|e| failed(&e))?;
        let status = res.status().as_u16();
        let bytes = res.into_body().collect().await.map_err(|e| failed(&e))?.to_bytes();
        conn.abort();
        Ok(Reply { status, body: String::from_utf8_lossy(&bytes).into_owned() })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout { path: name, timeout }),
    }
}
