//! What can go wrong on the wire, each with what the caller needs to decide.

use std::io;

/// A failed exchange. The connection it happened on should be closed; the
/// process that owns the sockets keeps serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The socket failed (including a timeout: `WouldBlock` / `TimedOut`).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
    /// A record longer than [`crate::MAX_FRAME`].
    #[error("a message longer than {} bytes", crate::MAX_FRAME)]
    Oversized,
    /// More descriptors than fit (`MSG_CTRUNC`: beyond [`crate::MAX_FDS`], or
    /// this process is out of descriptors); the ones that came are closed.
    #[error(
        "descriptors were cut off (MSG_CTRUNC): too many, or this process is out of descriptors"
    )]
    Truncated,
    /// Not a message of this protocol.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A message of a type this version does not know.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// A well-formed message that does not fit the conversation.
    #[error("unexpected message: {0}")]
    Unexpected(String),
    /// Descriptors attached to a message that has none, or the wrong number;
    /// they are closed.
    #[error("{got} descriptor(s) attached where {expected} belong")]
    WrongFds {
        /// How many came.
        got: usize,
        /// How many the message says.
        expected: usize,
    },
    /// The peer answered with an error.
    #[error("refused by the peer ({code}): {message}")]
    Refused {
        /// The peer's error code.
        code: String,
        /// The peer's explanation.
        message: String,
    },
    /// The peer's credentials are not allowed.
    #[error("peer pid {pid} uid {uid} gid {gid} is not allowed")]
    PeerNotAllowed {
        /// Its pid.
        pid: u32,
        /// Its uid.
        uid: u32,
        /// Its gid.
        gid: u32,
    },
    /// The process is in the middle of another hand-over.
    #[error("busy: {0}")]
    Busy(String),
    /// The two sides speak no common version.
    #[error("no common protocol version: {0}")]
    Version(String),
    /// State that does not match its length or checksum.
    #[error("corrupt state: {0}")]
    CorruptState(String),
}

impl Error {
    /// The code an [`Error`](crate::Message::Error) reply carries for this
    /// error, so that the peer learns why.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Io(_) | Error::Closed => "io",
            Error::Oversized => "oversized",
            Error::Truncated => "truncated",
            Error::Malformed(_) => "malformed",
            Error::UnknownType(_) => "unknown_type",
            Error::Unexpected(_) => "unexpected",
            Error::WrongFds { .. } => "wrong_fds",
            Error::Refused { .. } => "refused",
            Error::PeerNotAllowed { .. } => "not_allowed",
            Error::Version(_) => "version",
            Error::Busy(_) => "busy",
            Error::CorruptState(_) => "corrupt_state",
        }
    }
}
