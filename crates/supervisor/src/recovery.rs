//! Crash recovery without systemd: a supervisor started again after its
//! predecessor was SIGKILLed takes the listening sockets back from the
//! children it left behind, and stops those once its own child is ready.
//!
//! The supervisor keeps a small state file next to its control socket
//! (`CONTROL.state`, JSON, replaced atomically whenever it changes): its pid,
//! each child's pid and start time (a pid and a start time name one process,
//! even if the pid is reused), and for each `--listen` name the inode of the
//! socket new connections go to and of the other sockets of its group.
//!
//! Started with the same control socket, `handover run` reads the file. If the
//! supervisor it names is alive, it refuses (two supervisors would fight). If
//! it is gone but children it names are alive (orphans, now children of
//! init), the sockets are taken back from them without closing anything:
//! `pidfd_open` + `pidfd_getfd` give this process its own duplicate of each
//! listed inode. The current socket of each name is adopted (steered sockets
//! as the only member of their group: the other members are taken out with
//! `shutdown`, as the old supervisor would have when their children
//! exited); the new first child gets it, shares it with the orphans meanwhile,
//! and once it is ready the orphans are sent the stop signal and killed at
//! the drain deadline. The address is never closed: no client is refused.
//!
//! If a socket cannot be taken (another uid, a non-dumpable orphan, Yama
//! `ptrace_scope`), the supervisor exits at once and says which pid to stop;
//! binding anew would fail anyway while an orphan holds the address.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use handover_mechanism::protocol::env::InheritedFd;
use rustix::io::Errno;
use rustix::process::{pidfd_getfd, pidfd_open, Pid, PidfdFlags, PidfdGetfdFlags};
use serde::{Deserialize, Serialize};

use crate::error::RecoveryError;
use crate::ownership::{self, start_time};

/// What a supervisor leaves for its successor after a crash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The supervisor.
    pub supervisor: Process,
    /// Every child: current, starting, draining, and orphans being stopped.
    pub children: Vec<Process>,
    /// Each `--listen` name's sockets.
    pub sockets: Vec<Sockets>,
}

/// One process, named so that a reused pid is not mistaken for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// Its pid.
    pub pid: u32,
    /// Its start time (`/proc/PID/stat` field 22).
    pub start: u64,
}

/// The sockets of one `--listen` name, by inode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sockets {
    /// The `--listen` name.
    pub name: String,
    /// The socket new connections go to.
    pub current: u64,
    /// The other sockets of its steered group (old children's).
    pub others: Vec<u64>,
}

impl Process {
    /// `pid` as it is now (`None` if it is gone).
    pub fn of(pid: u32) -> Option<Process> {
        Some(Process {
            pid,
            start: start_time(pid)?,
        })
    }

    /// Whether this very process still runs (not a zombie, not a new one
    /// with the same pid).
    pub fn alive(&self) -> bool {
        let state = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next()));
        state.flatten().is_some_and(|s| s != 'Z') && start_time(self.pid) == Some(self.start)
    }
}

/// Where the state file of the supervisor with control socket `control` is.
pub fn state_path(control: &Path) -> PathBuf {
    let mut name = control.as_os_str().to_owned();
    name.push(".state");
    PathBuf::from(name)
}

/// Writes `state` to `path` atomically (write a temporary file, rename).
pub fn write(path: &Path, state: &State) -> io::Result<()> {
    let text = serde_json::to_vec(state).map_err(io::Error::other)?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)
}

/// What was taken back from a predecessor's orphans.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The current socket of each name (as if handed in through `LISTEN_FDS`).
    pub sockets: Vec<InheritedFd>,
    /// The orphans to stop once the new child is ready.
    pub orphans: Vec<Process>,
}

/// Takes the sockets back from the orphans the state file at `path` names.
/// `Ok` with nothing if there is no file, or nobody it names is left. The
/// error says why recovery is impossible and what to do.
pub fn recover(path: &Path) -> Result<Recovered, RecoveryError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Recovered::default()),
        Err(source) => {
            return Err(RecoveryError::StateFile {
                path: path.to_owned(),
                source,
            })
        }
    };
    let state: State = match serde_json::from_slice(&text) {
        Ok(state) => state,
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "the state file is unreadable; ignored");
            return Ok(Recovered::default());
        }
    };
    if state.supervisor.pid != std::process::id() && state.supervisor.alive() {
        return Err(RecoveryError::AlreadyRunning {
            pid: state.supervisor.pid,
        });
    }
    let orphans: Vec<Process> = state
        .children
        .iter()
        .copied()
        .filter(Process::alive)
        .collect();
    if orphans.is_empty() {
        return Ok(Recovered::default());
    }
    tracing::warn!(
        supervisor = state.supervisor.pid,
        orphans = ?orphans.iter().map(|o| o.pid).collect::<Vec<_>>(),
        "the previous supervisor is gone and its children still run: taking their sockets back"
    );
    let mut found = take_inodes(&orphans, &state)?;
    let mut sockets = Vec::new();
    for (index, entry) in state.sockets.iter().enumerate() {
        for other in &entry.others {
            if let Some(fd) = found.remove(other) {
                // Out of the group: only the adopted socket stays a member.
                let _ =
                    handover_mechanism::sockets::reuseport::leave(std::os::fd::AsFd::as_fd(&fd));
            }
        }
        match found.remove(&entry.current) {
            Some(fd) => sockets.push(InheritedFd {
                name: entry.name.clone(),
                fd,
                number: index as i32,
            }),
            None => tracing::warn!(
                name = entry.name,
                "no orphan holds its socket any more; binding anew"
            ),
        }
    }
    Ok(Recovered { sockets, orphans })
}

/// Duplicates of every inode the state lists, taken from whichever orphan
/// holds it.
fn take_inodes(
    orphans: &[Process],
    state: &State,
) -> Result<BTreeMap<u64, OwnedFd>, RecoveryError> {
    let wanted: Vec<u64> = state
        .sockets
        .iter()
        .flat_map(|s| std::iter::once(s.current).chain(s.others.iter().copied()))
        .collect();
    let mut found = BTreeMap::new();
    for orphan in orphans {
        let Some(raw) = Pid::from_raw(orphan.pid as i32) else {
            continue;
        };
        let refused = |why: String| RecoveryError::Orphan {
            pid: orphan.pid,
            why,
        };
        let pidfd = match pidfd_open(raw, PidfdFlags::empty()) {
            Ok(pidfd) => pidfd,
            Err(Errno::SRCH) => continue,
            Err(error) => return Err(refused(format!("pidfd_open: {error}"))),
        };
        let fds = match ownership::socket_fds(orphan.pid) {
            Ok(fds) => fds,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(refused(format!("reading /proc/{}/fd: {error}", orphan.pid))),
        };
        for (number, inode) in fds {
            if !wanted.contains(&inode) || found.contains_key(&inode) {
                continue;
            }
            match pidfd_getfd(&pidfd, number, PidfdGetfdFlags::empty()) {
                Ok(fd) => {
                    found.insert(inode, fd);
                }
                Err(Errno::BADF) => {} // closed meanwhile
                Err(Errno::PERM) => {
                    return Err(refused(
                        "pidfd_getfd is not permitted (EPERM): it runs as another user, \
                         is not dumpable, or Yama ptrace_scope forbids it"
                            .into(),
                    ))
                }
                Err(error) => return Err(refused(format!("pidfd_getfd: {error}"))),
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_its_pid_and_its_start_time() {
        let me = Process::of(std::process::id()).unwrap();
        assert!(me.alive());
        let reused = Process {
            start: me.start + 1,
            ..me
        };
        assert!(
            !reused.alive(),
            "same pid, another start time: another process"
        );
    }

    #[test]
    fn no_state_file_or_nobody_left_means_nothing_to_recover() {
        let dir = std::env::temp_dir().join(format!("handover-recovery-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.state");
        assert!(recover(&path).unwrap().sockets.is_empty());
        // pid 1 runs, but it did not start at the end of time: not these.
        let gone = State {
            supervisor: Process {
                pid: 1,
                start: u64::MAX,
            },
            children: vec![Process {
                pid: 1,
                start: u64::MAX,
            }],
            sockets: vec![],
        };
        write(&path, &gone).unwrap();
        let recovered = recover(&path).unwrap();
        assert!(recovered.orphans.is_empty() && recovered.sockets.is_empty());
        std::fs::write(&path, b"{not json").unwrap();
        assert!(
            recover(&path).unwrap().sockets.is_empty(),
            "unreadable: ignored"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_live_supervisor_is_not_replaced() {
        let dir =
            std::env::temp_dir().join(format!("handover-recovery-live-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.state");
        // The parent of this test stands in for a supervisor that still runs.
        let parent = rustix::process::getppid().unwrap().as_raw_nonzero().get() as u32;
        let live = State {
            supervisor: Process::of(parent).unwrap(),
            ..State::default()
        };
        write(&path, &live).unwrap();
        let refused = recover(&path).unwrap_err().to_string();
        assert!(refused.contains("already running"), "{refused}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
