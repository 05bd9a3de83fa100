//! The crate's error type.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use handover_mechanism::protocol::env::EnvError;

/// Everything that can go wrong; each message says what happened and what was kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The inherited environment (`LISTEN_*`, `HANDOVER_*`) is malformed.
    #[error("invalid inherited environment: {0}")]
    Environment(#[from] EnvError),
    /// An inherited socket does not fit what the application asked for.
    #[error("inherited fd {fd} named {name:?} {problem}")]
    InheritedSocket {
        /// Its name.
        name: String,
        /// Its fd number at start.
        fd: i32,
        /// What is wrong with it.
        problem: String,
    },
    /// A fresh socket could not be created.
    #[error("cannot bind {name:?} to {address}: {source}")]
    Bind {
        /// The socket's name.
        name: String,
        /// The address asked for.
        address: String,
        /// What the kernel said.
        source: io::Error,
    },
    /// A socket name is empty, longer than 255 bytes, or has a `:` or a character
    /// that is not printable ASCII (the `LISTEN_FDNAMES` rules).
    #[error("invalid socket name {0:?}: use 1 to 255 printable ASCII characters, no ':'")]
    InvalidName(String),
    /// The same name was claimed twice.
    #[error("a socket named {0:?} was already claimed")]
    DuplicateName(String),
    /// A socket was asked for after [`crate::Handover::ready`].
    #[error("socket {0:?} asked for after ready(): sockets must be claimed before")]
    ClaimAfterReady(String),
    /// An upgrade was asked for while one is under way.
    #[error("an upgrade is already under way (successor pid {0}); try again when it ends")]
    UpgradeInProgress(u32),
    /// An upgrade was asked for while a reload runs.
    #[error("upgrade refused: a reload is under way; try again when it ends")]
    ReloadInProgress,
    /// An upgrade was asked for before this process said it was ready.
    #[error("upgrade refused: this process has not called ready() yet")]
    NotReady,
    /// An upgrade was asked for while the process drains.
    #[error("upgrade refused: this process is draining ({0})")]
    Draining(crate::DrainReason),
    /// The successor could not be started.
    #[error("cannot start successor {program}: {source}; still serving")]
    Spawn {
        /// The executable.
        program: PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
    /// The successor did not become ready; it was killed and reaped.
    #[error("successor pid {pid} {why}; rolled back, still serving")]
    SuccessorFailed {
        /// The successor's pid.
        pid: u32,
        /// What happened to it.
        why: SuccessorFailure,
    },
    /// This process is not a successor, or its parent's notify socket is gone.
    #[error("cannot notify {target}: {source}")]
    Notify {
        /// Which socket.
        target: String,
        /// What the kernel said.
        source: io::Error,
    },
    /// Taking over from the process at a takeover socket failed; that process
    /// keeps serving.
    #[error("takeover through {path}: {why}")]
    Takeover {
        /// The takeover socket.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// The state handed over by the previous version is corrupt or too large.
    #[error("the state handed over is unusable: {0}")]
    State(String),
    /// Another I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// What the kernel said.
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Why a successor was not committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SuccessorFailure {
    /// It exited with this status before sending `READY=1`.
    #[error("exited with status {0} before it was ready")]
    Exited(i32),
    /// It was killed by this signal before sending `READY=1`.
    #[error("was killed by signal {0} before it was ready")]
    Signaled(i32),
    /// It sent nothing within the ready timeout.
    #[error("was not ready within {0:?} and was killed")]
    Timeout(Duration),
    /// The process was told to stop while waiting; the successor was killed.
    #[error("was abandoned because this process is stopping")]
    Aborted,
    /// Waiting for it failed (the notify socket or `waitpid` broke); it was
    /// killed.
    #[error("could not be watched ({0}) and was killed")]
    Lost(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
