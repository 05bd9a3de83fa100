//! Waiting until a new child is ready, in the mode the user chose.
//!
//! The caller races this against the ready timeout and the child's exit; here
//! we only wait for the positive signal.

use std::time::Duration;

use handover_mechanism::protocol::message::{Message, MAX_MESSAGE_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::ReadyMode;
use crate::error::NotReady;
use crate::listeners::{ProbeTarget, RouteRequest};

/// Where a probe asks the event loop to route its connection.
pub type RouteSender = tokio::sync::mpsc::UnboundedSender<RouteRequest>;
use crate::ownership;

/// How often a probe is retried.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// Waits until the child `pid`, which holds the sockets of `epoch`, is ready.
/// `notify` is its private notify socket (for `notify` mode); `probe` is where
/// to probe (http and tcp modes), and `routes` where its connection's route to
/// the new child's socket is asked for (the event loop sets it).
pub async fn wait(
    mode: &ReadyMode,
    pid: u32,
    epoch: u64,
    notify: Option<&std::os::unix::net::UnixDatagram>,
    probe: Option<ProbeTarget>,
    routes: RouteSender,
) -> Result<(), NotReady> {
    match mode {
        ReadyMode::Notify => {
            let socket = notify.ok_or(NotReady::NoNotifySocket)?;
            wait_notify(socket).await
        }
        ReadyMode::Delay(delay) => {
            tokio::time::sleep(*delay).await;
            Ok(())
        }
        ReadyMode::Http(_) | ReadyMode::Tcp => {
            let target = probe.ok_or(NotReady::NothingToProbe)?;
            loop {
                match probe_once(mode, &target, &routes, pid, epoch).await {
                    Probe::Ready => return Ok(()),
                    // The old child took the connection: try again at once,
                    // the next one may well reach the new child.
                    Probe::OtherProcess => tokio::task::yield_now().await,
                    Probe::NotYet => tokio::time::sleep(PROBE_INTERVAL).await,
                }
            }
        }
    }
}

async fn wait_notify(socket: &std::os::unix::net::UnixDatagram) -> Result<(), NotReady> {
    let socket = socket
        .try_clone()
        .and_then(|s| s.set_nonblocking(true).map(|()| s))
        .and_then(tokio::net::UnixDatagram::from_std)
        .map_err(|e| NotReady::Notify(e.to_string()))?;
    let mut buf = vec![0u8; MAX_MESSAGE_LEN + 1];
    loop {
        let n = socket
            .recv(&mut buf)
            .await
            .map_err(|e| NotReady::Notify(e.to_string()))?;
        match Message::parse(&buf[..n]) {
            Ok(message) if message.is_ready() => return Ok(()),
            Ok(message) => tracing::debug!(%message, "child says"),
            Err(error) => tracing::warn!(%error, "malformed notify message ignored"),
        }
    }
}

/// One probe: ready if the new child (or one of its processes) accepted the
/// connection and, in http mode, answered 2xx or 3xx on it.
///
/// The connection is routed to the new child's own socket (see
/// [`crate::steering`]); who accepted it is still checked, through /proc, because
/// with a shared socket (no steering) the old child may take it. That check
/// comes *before* the request is sent: then the accepting process still holds
/// the connection (it is waiting for the request), even if it closes every
/// connection after one response.
async fn probe_once(
    mode: &ReadyMode,
    target: &ProbeTarget,
    routes: &RouteSender,
    pid: u32,
    epoch: u64,
) -> Probe {
    let attempt = async {
        let Ok((mut stream, _route)) = target.connect(epoch, routes).await else {
            return Probe::NotYet;
        };
        let target = target.address;
        let Ok(client) = stream.local_addr() else {
            return Probe::NotYet;
        };
        let mut inode = None;
        for _ in 0..40 {
            inode = ownership::server_side_inode(target, client);
            if inode.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let Some(inode) = inode else {
            return Probe::NotYet; // nobody accepted it in 200 ms
        };
        if !ownership::tree_holds(pid, inode) {
            return Probe::OtherProcess;
        }
        if let ReadyMode::Http(path) = mode {
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: handover-probe\r\nConnection: close\r\n\r\n"
            );
            if stream.write_all(request.as_bytes()).await.is_err() {
                return Probe::NotYet;
            }
            let mut head = [0u8; 64];
            let n = stream.read(&mut head).await.unwrap_or(0);
            let status = std::str::from_utf8(&head[..n])
                .ok()
                .and_then(|h| h.split_whitespace().nth(1));
            if !status.is_some_and(|s| s.starts_with('2') || s.starts_with('3')) {
                return Probe::NotYet;
            }
        }
        Probe::Ready
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .unwrap_or(Probe::NotYet)
}

enum Probe {
    Ready,
    OtherProcess,
    NotYet,
}
