//! Starting the successor with exactly the named sockets, and watching it.
//!
//! The successor gets fds 0–2 as they are, the named sockets as fds 3, 4, … in
//! registry order, and nothing else: every other descriptor is close-on-exec.
//! Its environment is the original one minus the previous hand-off's variables,
//! plus this hand-off's (see `docs/PROTOCOL.md`).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::process::{Pid, Signal, WaitOptions};

use crate::protocol::*;
use crate::SuccessorFailure;

/// What to execute: resolved at upgrade time, so a binary replaced on disk is
/// the one that starts.
#[derive(Debug, Clone)]
pub(crate) struct Program {
    pub path: PathBuf,
    /// argv, including argv[0].
    pub args: Vec<OsString>,
    /// The environment without hand-off variables.
    pub env: Vec<(OsString, OsString)>,
}

/// This hand-off's details.
pub(crate) struct Handoff<'a> {
    pub sockets: Vec<(&'a str, BorrowedFd<'a>)>,
    pub notify_socket: &'a Path,
    pub generation: u64,
    pub upstream_notify: Option<&'a OsStr>,
}

/// A started successor, until it is committed or killed and reaped.
#[derive(Debug)]
pub(crate) struct Successor {
    pid: Pid,
}

pub(crate) fn spawn(program: &Program, handoff: &Handoff<'_>) -> io::Result<Successor> {
    let mut env: Vec<(OsString, OsString)> = program.env.clone();
    let mut set = |key: &str, value: &OsStr| env.push((key.into(), value.to_owned()));
    if !handoff.sockets.is_empty() {
        let names: Vec<&str> = handoff.sockets.iter().map(|(name, _)| *name).collect();
        set(LISTEN_FDS, handoff.sockets.len().to_string().as_ref());
        set(LISTEN_FDNAMES, names.join(":").as_ref());
    }
    set(NOTIFY_SOCKET, handoff.notify_socket.as_os_str());
    set(HANDOVER_PARENT_PID, std::process::id().to_string().as_ref());
    set(HANDOVER_GENERATION, handoff.generation.to_string().as_ref());
    if let Some(upstream) = handoff.upstream_notify {
        set(HANDOVER_UPSTREAM_NOTIFY_SOCKET, upstream);
    }
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
    let fds: Vec<BorrowedFd<'_>> = handoff.sockets.iter().map(|(_, fd)| *fd).collect();
    let pid = crate::sys::fork_exec(&crate::sys::ExecRequest {
        program: &path,
        argv: &argv,
        envp: &envp,
        fds: &fds,
        set_listen_pid: !fds.is_empty(),
    })?;
    Ok(Successor { pid })
}

fn c_string(bytes: Vec<u8>) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "argument or environment contains a NUL byte",
        )
    })
}

impl Successor {
    pub(crate) fn pid(&self) -> u32 {
        self.pid.as_raw_nonzero().get() as u32
    }

    /// Whether it has exited (and how); reaps it if so.
    pub(crate) fn exited(&self) -> io::Result<Option<SuccessorFailure>> {
        Ok(
            rustix::process::waitpid(Some(self.pid), WaitOptions::NOHANG)?.map(
                |(_, status)| match (status.exit_status(), status.terminating_signal()) {
                    (Some(code), _) => SuccessorFailure::Exited(code),
                    (None, Some(signal)) => SuccessorFailure::Signaled(signal),
                    (None, None) => SuccessorFailure::Exited(-1),
                },
            ),
        )
    }

    /// Kills it with SIGKILL and reaps it, so no zombie is left.
    pub(crate) fn kill_and_reap(self) {
        if let Err(error) = rustix::process::kill_process(self.pid, Signal::KILL) {
            tracing::debug!(%error, pid = self.pid(), "kill failed (already gone?)");
        }
        match rustix::process::waitpid(Some(self.pid), WaitOptions::empty()) {
            Ok(_) => tracing::debug!(pid = self.pid(), "successor reaped"),
            Err(error) => tracing::warn!(%error, pid = self.pid(), "cannot reap successor"),
        }
    }
}
