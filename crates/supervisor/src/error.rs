//! Why `handover run` could not start, or why a new child is not ready: typed,
//! each saying what was being done and what was kept.

use std::io;
use std::path::PathBuf;

use handover_mechanism::protocol::env::EnvError;

/// Why the supervisor could not start (nothing was started then: no child
/// runs, and the sockets it bound are closed again).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `--listen` socket could not be bound.
    #[error("cannot bind {name:?} to {address}: {source}")]
    Bind {
        /// The `--listen` name.
        name: String,
        /// The address asked for.
        address: String,
        /// What the kernel said (`AddrInUse`: someone holds it).
        source: io::Error,
    },
    /// A socket handed in (fd store, socket unit, recovery) is not what its
    /// `--listen` asks for.
    #[error("the socket handed in for {name:?} {problem}")]
    HandedIn {
        /// The `--listen` name.
        name: String,
        /// What is wrong with it, in words.
        problem: String,
    },
    /// `LISTEN_FDS` / `LISTEN_FDNAMES` / `LISTEN_PID` are malformed.
    #[error("the environment is unusable: {0}")]
    Environment(#[from] EnvError),
    /// The control socket could not be created or served.
    #[error("cannot create the control socket {path}: {source}")]
    Control {
        /// Its path.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The PID file could not be written.
    #[error("cannot write PID file {path}: {source}")]
    PidFile {
        /// Its path.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// A predecessor's state could not be recovered.
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    /// A signal handler could not be installed.
    #[error("cannot install a signal handler: {0}")]
    Signal(io::Error),
    /// A self-upgrade's new image could not take the state over, nor could
    /// the previous image run again.
    #[error("cannot go on after a self-upgrade: {0}")]
    Restore(String),
    /// The first child could not be started.
    #[error("{0}")]
    FirstChild(io::Error),
}

/// Why a crashed predecessor's children cannot be taken over (see
/// [`crate::recovery`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// The supervisor the state file names still runs.
    #[error(
        "a supervisor (pid {pid}) is already running with this control socket; \
         use `handover status` / `handover stop`, or give this one another --control"
    )]
    AlreadyRunning {
        /// Its pid.
        pid: u32,
    },
    /// The state file exists but cannot be read.
    #[error("cannot read the state file {path}: {source}")]
    StateFile {
        /// Its path.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// An orphan's sockets may not be taken (another uid, not dumpable, Yama
    /// `ptrace_scope`), or the kernel cannot (Linux < 5.6).
    #[error(
        "cannot take the listening sockets back from pid {pid} ({why}): stop the orphaned \
         child yourself (kill {pid}) and start `handover run` again, or run it as that \
         user or with CAP_SYS_PTRACE"
    )]
    Orphan {
        /// The orphan.
        pid: u32,
        /// What the kernel said, and what it means.
        why: String,
    },
}

/// Why a new child is not ready (besides exiting or the ready timeout, which
/// the event loop sees itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotReady {
    /// `--ready notify`, but the child has no notify socket.
    #[error("no notify socket")]
    NoNotifySocket,
    /// `--ready http:` / `tcp` need a TCP socket to probe.
    #[error("http and tcp readiness need a TCP --listen socket")]
    NothingToProbe,
    /// The notify socket failed.
    #[error("notify socket: {0}")]
    Notify(String),
    /// The readiness task ended abnormally.
    #[error("{0}")]
    Task(String),
}
