//! Taking the supervisor's own duplicates of the old child's client
//! connections, and watching which of them the child still holds.
//!
//! `pidfd_open` + `pidfd_getfd` (Linux ≥ 5.6) give a parent of the same uid a
//! copy of any descriptor of its child, as `ptrace` would: it fails with `EPERM`
//! for a child of another uid, a non-dumpable one, or under Yama
//! `ptrace_scope` ≥ 2 (without `CAP_SYS_PTRACE`). The child and its descendants
//! are searched, because pre-forking servers (gunicorn, puma) hold their
//! connections in workers. A descriptor is kept only if it is a connected TCP
//! socket whose local address is one of the supervisor's listeners; everything
//! else is closed again at once (closing a duplicate never affects the child's
//! own descriptor).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

use handover_mechanism::sockets::tcp_info::connection_info;
use rustix::io::Errno;
use rustix::process::{pidfd_getfd, pidfd_open, Pid, PidfdFlags, PidfdGetfdFlags};

use super::verdict::Track;
use crate::config::Protocol;

/// Why reading another process's descriptors is refused, in the words a user
/// can act on.
const NOT_PERMITTED: &str = "the child runs as another user, is not dumpable \
    (prctl PR_SET_DUMPABLE 0), or Yama ptrace_scope forbids it";

/// A listener whose connections may be rescued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The `--listen` name.
    pub name: String,
    /// Where it is bound.
    pub bound: SocketAddr,
    /// Where a relay connects to reach the current child.
    pub connect: SocketAddr,
    /// How its connections are relayed.
    pub protocol: Protocol,
}

impl Target {
    fn accepted(&self, local: SocketAddr) -> bool {
        local.port() == self.bound.port()
            && (self.bound.ip().is_unspecified() || self.bound.ip() == local.ip())
    }
}

/// One connection the supervisor holds a duplicate of.
pub struct Held {
    pub fd: OwnedFd,
    pub inode: u64,
    /// Index into the targets.
    pub target: usize,
    pub track: Track,
    /// Whether its incoming data is held back ([`handover_mechanism::sockets::hold`]).
    pub held_back: bool,
    /// Whether it was between requests when the child got its stop signal
    /// (set then; see [`Track::settled`]).
    pub idle_at_signal: bool,
}

impl Held {
    /// Holds its incoming data back (again).
    pub fn hold_data(&mut self) {
        if !self.held_back {
            self.held_back = handover_mechanism::sockets::hold::hold(self.fd.as_fd()).is_ok();
        }
    }

    /// Lets its incoming data through again (the peer retransmits what was
    /// held back).
    pub fn let_data_through(&mut self) {
        if std::mem::take(&mut self.held_back) {
            if let Err(error) = handover_mechanism::sockets::hold::release(self.fd.as_fd()) {
                tracing::warn!(%error, "cannot release a held-back connection");
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // The filter is the socket's: a child that still holds the connection
        // must not be left unable to receive.
        self.let_data_through();
    }
}

/// A process of the old child's tree that held at least one of them.
pub struct Process {
    pub pid: u32,
    pidfd: OwnedFd,
}

/// What a capture took.
pub struct Captured {
    pub held: Vec<Held>,
    pub processes: Vec<Process>,
    /// Connections left alone because `limit` was reached.
    pub over_limit: usize,
}

/// Takes a duplicate of every client connection on `targets` held by `pids`
/// (the old child and its descendants), at most `limit`; with `hold`, holds
/// back their incoming data. The error says why
/// nothing can be taken from this child at all.
pub fn capture(
    pids: &[u32],
    targets: &[Target],
    limit: usize,
    hold: bool,
) -> Result<Captured, String> {
    let mut captured = Captured {
        held: Vec::new(),
        processes: Vec::new(),
        over_limit: 0,
    };
    let mut seen = HashSet::new();
    for &pid in pids {
        let Some(raw) = Pid::from_raw(pid as i32) else {
            continue;
        };
        let pidfd = match pidfd_open(raw, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(Errno::SRCH) => continue, // gone meanwhile
            Err(Errno::NOSYS) => return Err("pidfd_open is not available (Linux < 5.3)".into()),
            Err(error) => return Err(format!("pidfd_open({pid}): {error}")),
        };
        let fds = match crate::ownership::socket_fds(pid) {
            Ok(fds) => fds,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(format!(
                    "reading /proc/{pid}/fd is not permitted ({error}): {NOT_PERMITTED}"
                ))
            }
            Err(error) => return Err(format!("reading /proc/{pid}/fd: {error}")),
        };
        let before = captured.held.len();
        for (number, inode) in fds {
            if !seen.insert(inode) {
                continue;
            }
            let fd = match pidfd_getfd(&pidfd, number, PidfdGetfdFlags::empty()) {
                Ok(fd) => fd,
                Err(Errno::BADF) => continue, // closed meanwhile
                Err(Errno::SRCH) => break,
                Err(Errno::NOSYS) => {
                    return Err("pidfd_getfd is not available (Linux < 5.6)".into())
                }
                Err(Errno::PERM) => {
                    return Err(format!(
                        "pidfd_getfd on pid {pid} is not permitted (EPERM): {NOT_PERMITTED}"
                    ))
                }
                Err(error) => return Err(format!("pidfd_getfd on pid {pid}: {error}")),
            };
            let Some(target) = client_of(&fd, targets) else {
                continue; // not one of ours: the duplicate closes here
            };
            if captured.held.len() >= limit {
                captured.over_limit += 1;
                continue;
            }
            let Ok(info) = connection_info(fd.as_fd()) else {
                continue;
            };
            let track = Track::start(&info);
            // What arrives now is held back until the child has closed the
            // connection or shown that it keeps serving: then no child can
            // have read half a request when it closes (see the watch).
            let held_back = hold && handover_mechanism::sockets::hold::hold(fd.as_fd()).is_ok();
            captured.held.push(Held {
                fd,
                inode,
                target,
                idle_at_signal: false, // set when the signal is sent
                track,
                held_back,
            });
        }
        if captured.held.len() > before {
            captured.processes.push(Process { pid, pidfd });
        }
    }
    Ok(captured)
}

/// The target whose connection `fd` is: a connected TCP stream, not a listener,
/// whose local address is a target's.
fn client_of(fd: &OwnedFd, targets: &[Target]) -> Option<usize> {
    let socket = socket2::SockRef::from(fd);
    if socket.r#type().ok()? != socket2::Type::STREAM || socket.is_listener().ok()? {
        return None;
    }
    socket.peer_addr().ok()?.as_socket()?;
    let local = socket.local_addr().ok()?.as_socket()?;
    targets.iter().position(|t| t.accepted(local))
}

/// `(fd number, socket inode)` for each socket `pid` has open.
impl Process {
    /// Whether it has exited (its pidfd is readable).
    fn exited(&self) -> bool {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let mut fds = [PollFd::new(&self.pidfd, PollFlags::IN)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        poll(&mut fds, Some(&zero)).is_ok_and(|n| n > 0)
    }
}

/// The socket inodes that `processes` still hold; `None` if a live one's fds
/// cannot be read (then nothing may be taken as let go). Exited processes are
/// dropped from the list: they hold nothing.
pub fn still_held(processes: &mut Vec<Process>) -> Option<HashSet<u64>> {
    processes.retain(|p| !p.exited());
    let mut held = HashSet::new();
    for process in processes.iter() {
        match crate::ownership::socket_fds(process.pid) {
            Ok(fds) => held.extend(fds.into_iter().map(|(_, inode)| inode)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => return None,
        }
    }
    Some(held)
}
