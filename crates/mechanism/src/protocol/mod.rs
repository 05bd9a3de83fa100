//! The hand-off contract between a process and its successor.
//!
//! One protocol for every mode, written down in `docs/PROTOCOL.md`. It is the
//! systemd convention, so that a successor built on this crate and an unmodified
//! server under a supervisor meet the same contract:
//!
//! - sockets arrive as fds 3, 4, … with `LISTEN_FDS`, `LISTEN_FDNAMES` and
//!   `LISTEN_PID` (= the receiver's own pid) — see [`mod@env`];
//! - readiness and state go back as `sd_notify` datagrams (`READY=1`, …) to the
//!   Unix socket named by `NOTIFY_SOCKET` — see [`message`];
//! - three `HANDOVER_*` variables link a successor to its parent: which process
//!   owns the notify socket, the generation number, and where the service manager's
//!   own notify socket is (so the successor can talk to systemd once it is current).

pub mod env;
pub mod message;

/// Number of sockets passed, from fd 3 on (systemd convention).
pub const LISTEN_FDS: &str = "LISTEN_FDS";
/// Colon-separated names of the passed sockets, one per fd (systemd convention).
pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// Pid of the process the sockets are meant for (systemd convention).
pub const LISTEN_PID: &str = "LISTEN_PID";
/// Path of the Unix datagram socket that receives `sd_notify` messages.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// Pid of the parent that started this successor and owns `NOTIFY_SOCKET`.
pub const HANDOVER_PARENT_PID: &str = "HANDOVER_PARENT_PID";
/// Generation number: 0 for the first process, parent's + 1 for a successor.
pub const HANDOVER_GENERATION: &str = "HANDOVER_GENERATION";
/// The service manager's notify socket, kept while `NOTIFY_SOCKET` points at the
/// parent.
pub const HANDOVER_UPSTREAM_NOTIFY_SOCKET: &str = "HANDOVER_UPSTREAM_NOTIFY_SOCKET";

/// The application state handed to a re-exec'd successor: `LEN:CRC32` (hex)
/// of the sealed memfd passed as the fd named [`STATE_FD_NAME`].
pub const HANDOVER_STATE: &str = "HANDOVER_STATE";
/// The fd name of the takeover socket among the passed fds (a name no
/// application can claim: it has a `.` no `--listen` name in our tools uses,
/// and the library keeps it for itself).
pub const TAKEOVER_FD_NAME: &str = "handover.takeover";
/// The fd name of the state memfd among the passed fds.
pub const STATE_FD_NAME: &str = "handover.state";
/// The fd name of a successor's end of the migration channel (a
/// `SOCK_SEQPACKET` socket pair) in a re-exec upgrade: live connections come
/// over it once the successor is ready (docs/PROTOCOL.md §5).
pub const MIGRATE_FD_NAME: &str = "handover.migrate";

/// Variables that describe one hand-off and must not leak into the next one.
pub(crate) const HANDOFF_VARIABLES: &[&str] = &[
    LISTEN_FDS,
    LISTEN_FDNAMES,
    LISTEN_PID,
    NOTIFY_SOCKET,
    HANDOVER_PARENT_PID,
    HANDOVER_GENERATION,
    HANDOVER_UPSTREAM_NOTIFY_SOCKET,
    HANDOVER_STATE,
];

/// Whether `name` may name a socket: 1 to 255 printable ASCII characters other
/// than `:` (the `LISTEN_FDNAMES` separator) — the one rule every part of
/// handover applies.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// Where handover keeps its runtime sockets when not told: `$XDG_RUNTIME_DIR`
/// if it is a directory, else a directory of this uid's under the temporary
/// directory (`handover-UID`, created 0700 by whoever binds there first).
pub fn runtime_dir() -> std::path::PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .filter(|d| d.is_dir())
    {
        Some(dir) => dir,
        None => {
            std::env::temp_dir().join(format!("handover-{}", rustix::process::getuid().as_raw()))
        }
    }
}

/// The first fd number of passed sockets.
pub const LISTEN_FDS_START: i32 = 3;
