//! What happened to one request attempt.

use std::fmt;
use std::io;
use std::time::Duration;

/// Classification of a failed attempt. Every failed attempt has exactly one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// The connection was refused (`ECONNREFUSED` on connect).
    Refused,
    /// The connection was reset (`ECONNRESET`, `EPIPE`) while writing or reading.
    Reset,
    /// The connection was closed before a complete response arrived
    /// (after zero bytes or a partial response).
    Eof,
    /// Connecting or the whole attempt exceeded its timeout.
    Timeout,
    /// A complete response arrived with a non-2xx status.
    BadStatus(u16),
    /// The response could not be parsed as HTTP/1.x.
    Malformed,
    /// Anything else; carries a short description of the error kind.
    Other(String),
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::Refused => f.write_str("Refused"),
            FailureKind::Reset => f.write_str("Reset"),
            FailureKind::Eof => f.write_str("Eof"),
            FailureKind::Timeout => f.write_str("Timeout"),
            FailureKind::BadStatus(status) => write!(f, "BadStatus({status})"),
            FailureKind::Malformed => f.write_str("Malformed"),
            FailureKind::Other(what) => write!(f, "Other({what})"),
        }
    }
}

/// A failed attempt: its kind plus a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct Failure {
    /// The classification.
    pub kind: FailureKind,
    /// What exactly went wrong, for humans (e.g. which phase failed).
    pub detail: String,
}

impl Failure {
    /// Creates a failure of `kind` with a detail message.
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        Failure {
            kind,
            detail: detail.into(),
        }
    }

    /// Classifies an I/O error that happened while `during` (e.g. "write request").
    pub fn from_io(err: &io::Error, during: &str) -> Self {
        let kind = match err.kind() {
            io::ErrorKind::ConnectionRefused => FailureKind::Refused,
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => FailureKind::Reset,
            io::ErrorKind::UnexpectedEof => FailureKind::Eof,
            io::ErrorKind::TimedOut => FailureKind::Timeout,
            other => FailureKind::Other(other.to_string()),
        };
        Failure::new(kind, format!("{during}: {err}"))
    }
}

/// Result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A complete response with a 2xx status.
    Success {
        /// The HTTP status code.
        status: u16,
    },
    /// The attempt failed; see [`FailureKind`].
    Failure(Failure),
}

/// Record of one completed attempt (successful or not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Index of the worker that made the attempt.
    pub worker: usize,
    /// When the attempt started, relative to the start of the run.
    pub start: Duration,
    /// Time from the start of the attempt (including any connect) to its end.
    pub latency: Duration,
    /// Success or the classified failure.
    pub outcome: Outcome,
    /// Whether the attempt opened a new connection (as opposed to reusing one).
    pub fresh_connection: bool,
    /// Value of the `x-pid` response header, if a response head was received.
    pub pid: Option<String>,
    /// Value of the `x-generation` response header, if a response head was received.
    pub generation: Option<String>,
}

impl Sample {
    /// Whether the attempt succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self.outcome, Outcome::Success { .. })
    }

    /// The failure, if the attempt failed.
    pub fn failure(&self) -> Option<&Failure> {
        match &self.outcome {
            Outcome::Success { .. } => None,
            Outcome::Failure(failure) => Some(failure),
        }
    }

    /// One-line human description, e.g.
    /// `Eof at 1.204s (worker 3, reused connection, 0.8ms): connection closed ...`.
    pub fn describe(&self) -> String {
        let conn = if self.fresh_connection {
            "new connection"
        } else {
            "reused connection"
        };
        let what = match &self.outcome {
            Outcome::Success { status } => format!("OK {status}"),
            Outcome::Failure(failure) => failure.kind.to_string(),
        };
        let mut line = format!(
            "{what} at {:.3}s (worker {}, {conn}, {:.1}ms)",
            self.start.as_secs_f64(),
            self.worker,
            self.latency.as_secs_f64() * 1e3
        );
        if let Some(failure) = self.failure() {
            line.push_str(": ");
            line.push_str(&failure.detail);
        }
        line
    }
}
