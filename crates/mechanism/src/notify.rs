//! `sd_notify` both ways.
//!
//! - Sending: a process tells its parent (successor → parent: `READY=1`) or the
//!   service manager (`READY=1`, `RELOADING=1`, `MAINPID=…`, `STOPPING=1`) about
//!   its state. Messages are the sd-notify crate's [`NotifyState`]s, sent to an
//!   explicit socket path (the crate itself only reads `NOTIFY_SOCKET`, which a
//!   successor must not confuse with the service manager's).
//! - Receiving: for each upgrade the parent binds a private datagram socket in a
//!   fresh 0700 directory, passes its path to the successor as `NOTIFY_SOCKET`, and
//!   waits on it for `READY=1`.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use sd_notify::NotifyState;

use crate::protocol::message::{Message, MessageError, MAX_MESSAGE_LEN};

/// Sends one datagram of `states` to the notify socket at `target` (a path, or
/// `@name` for a Linux abstract socket).
pub fn send(target: &OsStr, states: &[NotifyState<'_>]) -> io::Result<()> {
    let text: String = states.iter().map(|s| format!("{s}\n")).collect();
    let socket = UnixDatagram::unbound()?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(target);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(text.as_bytes(), &addr)?;
        return Ok(());
    }
    let _ = bytes;
    socket.send_to(text.as_bytes(), target)?;
    Ok(())
}

/// Sends one datagram of `states` with `fds` attached (`SCM_RIGHTS`), as
/// `FDSTORE=1` needs, to the notify socket at `target` (a path or `@name`).
pub fn send_with_fds(
    target: &OsStr,
    states: &[NotifyState<'_>],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> io::Result<()> {
    use rustix::net::{
        sendmsg_addr, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix,
    };
    use std::mem::MaybeUninit;
    let text: String = states.iter().map(|s| format!("{s}\n")).collect();
    let socket = UnixDatagram::unbound()?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(target);
    let address = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddrUnix::new_abstract_name(name)?,
        None => SocketAddrUnix::new(Path::new(target))?,
    };
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many fds for one notify message"));
    }
    sendmsg_addr(
        &socket,
        &address,
        &[io::IoSlice::new(text.as_bytes())],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// `RELOADING=1` with `MONOTONIC_USEC`, as systemd wants it at the start of a
/// reload (an upgrade).
pub fn reloading() -> Vec<NotifyState<'static>> {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    states
}

/// The service manager's notify socket, if the first process had one. Messages to
/// it are best effort: a failure is logged, never fatal.
#[derive(Debug, Clone, Default)]
pub struct Upstream(pub Option<OsString>);

impl Upstream {
    /// The service manager of this process, if it has one (`NOTIFY_SOCKET`).
    pub fn from_env() -> Upstream {
        Upstream(std::env::var_os(crate::protocol::NOTIFY_SOCKET))
    }

    /// Sends `states`, best effort.
    pub fn notify(&self, states: &[NotifyState<'_>]) {
        if let Some(target) = &self.0 {
            if let Err(error) = send(target, states) {
                tracing::warn!(%error, ?states, "cannot notify the service manager");
            }
        }
    }

    /// Whether there is a service manager to tell.
    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }

    /// Puts `fd` in the service manager's file descriptor store under `name`
    /// (`FDSTORE=1`, `FDNAME=`): it keeps the socket open across a crash of
    /// every process of the unit and passes it back through `LISTEN_FDS`.
    /// Best effort; systemd ignores it unless `FileDescriptorStoreMax=` is set.
    pub fn store(&self, name: &str, fd: std::os::fd::BorrowedFd<'_>) {
        if let Some(target) = &self.0 {
            // As text: sd-notify's FdStore variants need its `fdstore` feature
            // (and a crate to send fds), and the fd is sent here.
            let fdname = format!("FDNAME={name}");
            let states = [
                NotifyState::Custom("FDSTORE=1"),
                NotifyState::Custom(&fdname),
            ];
            if let Err(error) = send_with_fds(target, &states, &[fd]) {
                tracing::warn!(%error, name, "cannot store a socket with the service manager");
            }
        }
    }

    /// Takes the fds stored under `name` out of the store (`FDSTOREREMOVE=1`).
    pub fn forget(&self, name: &str) {
        let fdname = format!("FDNAME={name}");
        self.notify(&[
            NotifyState::Custom("FDSTOREREMOVE=1"),
            NotifyState::Custom(&fdname),
        ]);
    }
}

/// A private notify socket that one child reports to; removed with its
/// directory when dropped.
pub struct NotifyReceiver {
    socket: UnixDatagram,
    dir: PathBuf,
    path: PathBuf,
}

impl NotifyReceiver {
    /// Binds a fresh socket in a new 0700 directory under
    /// [`runtime_dir`](crate::protocol::runtime_dir).
    pub fn create() -> io::Result<Self> {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let base = crate::protocol::runtime_dir();
        if !base.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&base)?;
        }
        // A name left by an earlier image of this process (re-executed, or a
        // crashed one whose pid was reused) is skipped, not reused.
        let dir = loop {
            let dir = base.join(format!(
                "handover-{}-{}",
                std::process::id(),
                SEQUENCE.fetch_add(1, Ordering::Relaxed)
            ));
            use std::os::unix::fs::DirBuilderExt;
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => break dir,
                Err(error)
                    if error.kind() == io::ErrorKind::AlreadyExists
                        && SEQUENCE.load(Ordering::Relaxed) < 1 << 20 => {}
                Err(error) => return Err(error),
            }
        };
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).inspect_err(|_| {
            let _ = std::fs::remove_dir(&dir);
        })?;
        Ok(NotifyReceiver { socket, dir, path })
    }

    /// The path to give the successor as `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` for one datagram. `Ok(None)` on timeout.
    pub fn recv(&self, timeout: Duration) -> io::Result<Option<Result<Message, MessageError>>> {
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut buf = vec![0u8; MAX_MESSAGE_LEN + 1];
        match self.socket.recv(&mut buf) {
            Ok(n) => Ok(Some(Message::parse(&buf[..n]))),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl NotifyReceiver {
    /// The bound socket, for callers that wait on it themselves (e.g. with
    /// `tokio::net::UnixDatagram::from_std` on a clone).
    pub fn socket(&self) -> &UnixDatagram {
        &self.socket
    }
}

impl Drop for NotifyReceiver {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receives_what_is_sent() {
        let receiver = NotifyReceiver::create().unwrap();
        send(
            receiver.path().as_os_str(),
            &[NotifyState::Ready, NotifyState::Status("up")],
        )
        .unwrap();
        let msg = receiver
            .recv(Duration::from_secs(5))
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(msg.is_ready());
        assert_eq!(msg.get("STATUS"), Some("up"));
        assert!(receiver.recv(Duration::from_millis(10)).unwrap().is_none());
        let dir = receiver.dir.clone();
        drop(receiver);
        assert!(!dir.exists(), "the private directory is removed");
    }
}
