//! The control socket: `handover upgrade`, `status` and `stop` talk to a running
//! supervisor over a Unix stream socket.
//!
//! Wire format: the client sends one JSON line, `{"command":"upgrade"}` (or
//! `status`, `stop`); the supervisor answers with JSON lines — `progress` events,
//! then one `done`, `status` or `error`. The socket is mode 0600 and the peer's
//! uid is checked (same uid or root); a request is at most 4 KiB and must arrive
//! within 5 s; a malformed request gets an `error` reply, never a crash.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::status::Status;

/// The largest request accepted.
pub const MAX_REQUEST: usize = 4096;
/// The largest reply line sent or accepted.
pub const MAX_REPLY: usize = 256 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    /// Start a new child, commit when ready, drain the old one.
    Upgrade,
    /// Report the supervisor's state.
    Status,
    /// Stop the child gracefully, then exit.
    Stop,
}

/// What the supervisor answers (one or more per request).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Reply {
    /// A step of a request under way.
    Progress {
        /// What happened.
        message: String,
    },
    /// The request ended.
    Done {
        /// Whether it succeeded.
        ok: bool,
        /// What happened, with the reason on failure.
        message: String,
    },
    /// The answer to `status`.
    Status(Box<Status>),
    /// The request was refused or malformed.
    Error {
        /// Why.
        message: String,
    },
}

/// A request with the channel its replies go to.
pub type Order = (Request, mpsc::Sender<Reply>);

/// Binds the control socket at `path` (mode 0600), replacing a stale one.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} belongs to a running supervisor", path.display()),
                ))
            }
            Err(_) => std::fs::remove_file(path)?,
        }
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts clients forever, passing their requests to `orders`.
pub async fn serve(listener: UnixListener, orders: mpsc::Sender<Order>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle(stream, orders.clone()));
            }
            Err(error) => {
                tracing::warn!(%error, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(mut stream: UnixStream, orders: mpsc::Sender<Order>) {
    let refusal = match stream.peer_cred() {
        Ok(cred) if cred.uid() == 0 || cred.uid() == rustix::process::getuid().as_raw() => None,
        Ok(cred) => Some(format!(
            "permission denied: uid {} may not control this supervisor",
            cred.uid()
        )),
        Err(error) => Some(format!("cannot read peer credentials: {error}")),
    };
    if let Some(message) = refusal {
        tracing::warn!(%message, "control request refused");
        // Read (and ignore) the request before answering, within the same bounds as
        // any other: a client that is still writing when we close would see EPIPE
        // instead of the reason.
        let _ = read_request(&mut stream).await;
        let _ = send(&mut stream, &Reply::Error { message }).await;
        return;
    }
    let request = match read_request(&mut stream).await {
        Ok(request) => request,
        Err(message) => {
            tracing::warn!(%message, "bad control request");
            let _ = send(&mut stream, &Reply::Error { message }).await;
            return;
        }
    };
    let (replies, mut receive) = mpsc::channel(16);
    if orders.send((request, replies)).await.is_err() {
        return;
    }
    while let Some(reply) = receive.recv().await {
        let last = !matches!(reply, Reply::Progress { .. });
        if send(&mut stream, &reply).await.is_err() || last {
            break; // written the answer, or the client went away (the request goes on)
        }
    }
    // Dropping `receive` tells the supervisor the answer is out (see Sender::closed).
}

async fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    let mut line = Vec::new();
    let mut limited = BufReader::new(stream).take(MAX_REQUEST as u64 + 1);
    match tokio::time::timeout(REQUEST_TIMEOUT, limited.read_until(b'\n', &mut line)).await {
        Err(_) => return Err(format!("no request within {REQUEST_TIMEOUT:?}")),
        Ok(Err(error)) => return Err(format!("reading the request: {error}")),
        Ok(Ok(_)) => {}
    }
    if line.len() > MAX_REQUEST {
        return Err(format!("request larger than {MAX_REQUEST} bytes"));
    }
    serde_json::from_slice(&line).map_err(|e| {
        format!(
            "malformed request ({e}); expected one JSON line such as {{\"command\":\"status\"}}"
        )
    })
}

async fn send(stream: &mut UnixStream, reply: &Reply) -> io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
}

/// Client side: sends `request` to the supervisor at `path` and calls `on_reply`
/// for each reply until the last one, which it returns.
pub async fn request(
    path: &Path,
    request: Request,
    mut on_reply: impl FnMut(&Reply),
) -> io::Result<Reply> {
    let mut stream = UnixStream::connect(path).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot reach the supervisor at {}: {e}", path.display()),
        )
    })?;
    let mut line = serde_json::to_vec(&request).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    let mut lines = BufReader::new(stream).lines();
    while let Some(line) = lines.next_line().await? {
        if line.len() > MAX_REPLY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "reply too large",
            ));
        }
        let reply: Reply = serde_json::from_str(&line)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        on_reply(&reply);
        if !matches!(reply, Reply::Progress { .. }) {
            return Ok(reply);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the supervisor closed the connection without an answer",
    ))
}
