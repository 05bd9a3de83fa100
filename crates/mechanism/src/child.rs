//! Starting a process with named sockets — the sending side of the hand-off
//! contract — and watching it until it is committed, or killed and reaped.
//!
//! `Handover::upgrade` (in the `handover` crate) starts its successor with it,
//! and a supervisor starts its children with it. The child gets fds 0–2 as they
//! are, the named sockets as fds 3, 4, … in the order given, `LISTEN_FDS`,
//! `LISTEN_FDNAMES` and `LISTEN_PID` (its own pid), the extra variables given,
//! and nothing else: every other descriptor is close-on-exec. See
//! `docs/PROTOCOL.md`.
//!
//! ```no_run
//! use std::os::fd::AsFd;
//! use handover_mechanism::child::{self, Program};
//!
//! let web = std::net::TcpListener::bind("127.0.0.1:0")?;
//! let program = Program::new("/usr/bin/my-server");
//! let child = child::spawn(&program, &[("web", web.as_fd())], &[])?;
//! println!("started pid {}", child.pid());
//! # Ok::<(), std::io::Error>(())
//! ```

use std::ffi::{CString, OsString};
use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rustix::process::{Pid, Signal, WaitOptions};

use crate::protocol::*;
use std::os::fd::OwnedFd;

/// What to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// Path of the executable, resolved when the child starts (so a binary
    /// renamed into place is the one that runs).
    pub path: PathBuf,
    /// argv, including argv\[0\].
    pub args: Vec<OsString>,
    /// The complete environment, without hand-off variables.
    pub env: Vec<(OsString, OsString)>,
}

impl Program {
    /// `path` with argv = \[path\] and this process's environment minus the
    /// hand-off variables.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        Program {
            args: vec![path.clone().into_os_string()],
            path,
            env: std::env::vars_os()
                .filter(|(key, _)| !HANDOFF_VARIABLES.iter().any(|v| key == v))
                .collect(),
        }
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exited with status {code}"),
            ExitStatus::Signal(signal) => write!(f, "was killed by signal {signal}"),
        }
    }
}

/// Holds `signals` for the calling thread: they wait, pending, until
/// [`release_signals`]. The mask survives `execve`: a process that
/// re-executes itself holds the signals it handles, and its new image
/// releases them once its handlers are in place, so a signal in between is
/// delivered late rather than killing the process by its default action.
/// Children started by [`spawn`] begin with an empty mask.
pub fn hold_signals(signals: &[i32]) -> io::Result<()> {
    crate::sys::mask_signals(signals, true)
}

/// Releases what [`hold_signals`] held (and delivers what is pending).
pub fn release_signals(signals: &[i32]) -> io::Result<()> {
    crate::sys::mask_signals(signals, false)
}

/// `program` pinned: its file opened now, and a copy of `program` that runs
/// that very file (`/proc/self/fd/N`), whatever is at the path by the time
/// the child execs — a binary swapped in meanwhile cannot start (sozu #515).
/// Keep the returned fd open until the child has started. The fd is placed
/// above the `sockets` fds the child gets at 3, 4, …, so moving those cannot
/// overwrite it.
///
/// `Ok(None)` for a script (`#!`): its interpreter opens it by name after the
/// exec, when the pinned fd is already closed, so a script runs by path.
pub fn pinned(program: &Program, sockets: usize) -> io::Result<Option<(OwnedFd, Program)>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(&program.path)?;
    let mut magic = [0u8; 2];
    if file.read_at(&mut magic, 0).unwrap_or(0) == 2 && &magic == b"#!" {
        return Ok(None);
    }
    let fd = rustix::io::fcntl_dupfd_cloexec(&file, 3 + sockets as i32 + 1)?;
    let mut pinned = program.clone();
    pinned.path = PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ));
    Ok(Some((fd, pinned)))
}

/// A started child, until it is reaped. Dropping it neither kills nor reaps it.
#[derive(Debug)]
pub struct Child {
    pid: Pid,
}

/// Starts `program` with `sockets` at fds 3, 4, … and `extra_env` added to its
/// environment. Fails with the OS error if `execve` fails (the failed child is
/// reaped).
pub fn spawn(
    program: &Program,
    sockets: &[(&str, BorrowedFd<'_>)],
    extra_env: &[(&str, OsString)],
) -> io::Result<Child> {
    spawn_with_stderr(program, sockets, extra_env, None)
}

/// [`spawn`], with `stderr` as the child's fd 2 (e.g. a pipe, to keep its last
/// lines for an error report).
pub fn spawn_with_stderr(
    program: &Program,
    sockets: &[(&str, BorrowedFd<'_>)],
    extra_env: &[(&str, OsString)],
    stderr: Option<BorrowedFd<'_>>,
) -> io::Result<Child> {
    let mut env: Vec<(OsString, OsString)> = program.env.clone();
    if !sockets.is_empty() {
        let names: Vec<&str> = sockets.iter().map(|(name, _)| *name).collect();
        env.push((LISTEN_FDS.into(), sockets.len().to_string().into()));
        env.push((LISTEN_FDNAMES.into(), names.join(":").into()));
    }
    env.extend(
        extra_env
            .iter()
            .map(|(k, v)| (OsString::from(k), v.clone())),
    );
    let envp = env
        .iter()
        .map(|(k, v)| c_string([k.as_bytes(), b"=", v.as_bytes()].concat()))
        .collect::<io::Result<Vec<_>>>()?;
    let argv = program
        .args
        .iter()
        .map(|a| c_string(a.as_bytes().to_vec()))
        .collect::<io::Result<Vec<_>>>()?;
    let path = c_string(program.path.as_os_str().as_bytes().to_vec())?;
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, fd)| *fd).collect();
    let pid = crate::sys::fork_exec(&crate::sys::ExecRequest {
        program: &path,
        argv: &argv,
        envp: &envp,
        fds: &fds,
        set_listen_pid: !fds.is_empty(),
        stderr,
    })?;
    Ok(Child { pid })
}

fn c_string(bytes: Vec<u8>) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "argument or environment contains a NUL byte",
        )
    })
}

impl Child {
    /// The child `pid` this process started before it re-executed itself (a
    /// supervisor's self-upgrade keeps its pid, so its children stay its
    /// children). `None` if `pid` is not a valid pid.
    pub fn adopt(pid: u32) -> Option<Child> {
        Some(Child {
            pid: Pid::from_raw(pid as i32)?,
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw_nonzero().get() as u32
    }

    /// Whether it has exited, and how; reaps it if so (then do not signal it
    /// again: its pid may be reused).
    pub fn exited(&self) -> io::Result<Option<ExitStatus>> {
        Ok(
            rustix::process::waitpid(Some(self.pid), WaitOptions::NOHANG)?.map(
                |(_, status)| match (status.exit_status(), status.terminating_signal()) {
                    (Some(code), _) => ExitStatus::Code(code),
                    (None, Some(signal)) => ExitStatus::Signal(signal),
                    (None, None) => ExitStatus::Code(-1),
                },
            ),
        )
    }

    /// Sends `signal` (a raw signal number such as `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        let signal = Signal::from_named_raw(signal)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "unknown signal"))?;
        Ok(rustix::process::kill_process(self.pid, signal)?)
    }

    /// Kills it with SIGKILL and reaps it, so no zombie is left (then do not
    /// signal it again).
    pub fn kill_and_reap(&self) {
        if let Err(error) = rustix::process::kill_process(self.pid, Signal::KILL) {
            tracing::debug!(%error, pid = self.pid(), "kill failed (already gone?)");
        }
        match rustix::process::waitpid(Some(self.pid), WaitOptions::empty()) {
            Ok(_) => tracing::debug!(pid = self.pid(), "child reaped"),
            Err(error) => tracing::warn!(%error, pid = self.pid(), "cannot reap child"),
        }
    }
}

#[cfg(test)]
mod pinning_tests {
    use super::*;

    #[test]
    fn a_pinned_program_runs_the_file_it_opened_even_after_the_path_is_replaced() {
        let dir = std::env::temp_dir().join(format!("handover-pin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("server");
        std::fs::copy("/bin/true", &path).unwrap();
        let (fd, program) = pinned(&Program::new(&path), 0)
            .unwrap()
            .expect("an ELF binary");
        // A deployment renames another binary into place after the check.
        let staging = dir.join("server.new");
        std::fs::copy("/bin/false", &staging).unwrap();
        std::fs::rename(&staging, &path).unwrap();
        let pinned_run = std::process::Command::new(&program.path).status().unwrap();
        assert!(pinned_run.success(), "the file that was opened runs: true");
        let by_path = std::process::Command::new(&path).status().unwrap();
        assert!(!by_path.success(), "by path it would be the new one: false");
        drop(fd);
        let script = dir.join("script");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        assert!(
            pinned(&Program::new(&script), 0).unwrap().is_none(),
            "scripts run by path"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
