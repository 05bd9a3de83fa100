//! What happened to each connection over a run, as opposed to each attempt:
//! whether a long-lived connection survived every upgrade and which pids
//! served it ([`LineConnection`]), and how each HTTP keep-alive connection
//! ended ([`KeepAliveConnection`]), plus their totals and the human lines.

use std::fmt;
use std::time::Duration;

/// One long-lived worker's connection over the whole run
/// ([`Protocol::LongLived`](crate::Protocol::LongLived)). The worker keeps
/// one connection and opens a new one only after a failure, so this is one
/// logical connection that may have been reopened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineConnection {
    /// Index of the worker.
    pub worker: usize,
    /// TCP connections successfully opened (1 = never reopened).
    pub opened: u64,
    /// Exchanges attempted (one per interval).
    pub exchanges: u64,
    /// Exchanges that failed.
    pub failures: u64,
    /// The server closed (EOF) or reset the connection at least once: an
    /// exchange failed that way, or it was found closed at the end of the run.
    pub closed_by_server: bool,
    /// It was found closed or reset by the server at the end of the run,
    /// after its last exchange succeeded (no failure sample records that).
    pub closed_after_last_exchange: bool,
    /// Bytes written (lines whose write completed).
    pub bytes_sent: u64,
    /// Bytes of sent lines whose echo came back exactly, in order
    /// ([`LoadConfig::echo_check`](crate::LoadConfig::echo_check); always 0
    /// without it).
    pub bytes_verified: u64,
    /// The distinct pids that answered on it, in the order first seen.
    pub pids: Vec<String>,
}

impl LineConnection {
    pub(crate) fn new(worker: usize) -> LineConnection {
        LineConnection {
            worker,
            opened: 0,
            exchanges: 0,
            failures: 0,
            closed_by_server: false,
            closed_after_last_exchange: false,
            bytes_sent: 0,
            bytes_verified: 0,
            pids: Vec::new(),
        }
    }

    /// Opened once, never failed, not closed by the server: the connection
    /// lived through the whole run (and every upgrade in it).
    pub fn survived(&self) -> bool {
        self.opened == 1 && self.failures == 0 && !self.closed_by_server
    }
}

/// How an HTTP keep-alive connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionEnd {
    /// Still open when the run ended.
    Kept,
    /// The server said the response was the last one: a `Connection: close`
    /// header (or an HTTP/1.0 response without keep-alive, or a body ended
    /// by the close).
    ClosedAnnounced,
    /// The server closed (EOF) or reset it without saying so: the next
    /// request failed that way, or it was found closed at the end of the run.
    ClosedUnannounced,
    /// The client gave it up after another failure (timeout, non-2xx status,
    /// malformed response).
    DroppedAfterFailure,
}

impl ConnectionEnd {
    /// Name in reports: `kept`, `closed_announced`, `closed_unannounced`,
    /// `dropped_after_failure`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionEnd::Kept => "kept",
            ConnectionEnd::ClosedAnnounced => "closed_announced",
            ConnectionEnd::ClosedUnannounced => "closed_unannounced",
            ConnectionEnd::DroppedAfterFailure => "dropped_after_failure",
        }
    }
}

/// One TCP connection opened by an HTTP keep-alive worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepAliveConnection {
    /// Index of the worker.
    pub worker: usize,
    /// When it was opened, relative to the start of the run.
    pub opened_at: Duration,
    /// Complete responses received on it (any status).
    pub responses: u64,
    /// How it ended.
    pub end: ConnectionEnd,
    /// The distinct pids that answered on it (`x-pid` header or `pid=N` in
    /// the body), in the order first seen.
    pub pids: Vec<String>,
}

/// Totals over the long-lived connections of a run; [`fmt::Display`] gives
/// the human line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LongLivedTotals {
    /// Long-lived connections (one per worker).
    pub connections: usize,
    /// Those that [survived](LineConnection::survived).
    pub survived: usize,
    /// Those opened more than once.
    pub reopened: usize,
    /// Those the server closed or reset at least once.
    pub closed_by_server: usize,
    /// Those found closed by the server after their last exchange.
    pub closed_after_last_exchange: usize,
    /// Those answered by more than one pid.
    pub served_by_more_than_one_pid: usize,
    /// Bytes written, all connections.
    pub bytes_sent: u64,
    /// Bytes whose echo was verified in order, all connections.
    pub bytes_verified: u64,
}

impl LongLivedTotals {
    /// Totals of `connections`.
    pub fn of(connections: &[LineConnection]) -> LongLivedTotals {
        let count = |f: fn(&LineConnection) -> bool| connections.iter().filter(|c| f(c)).count();
        LongLivedTotals {
            connections: connections.len(),
            survived: count(LineConnection::survived),
            reopened: count(|c| c.opened > 1),
            closed_by_server: count(|c| c.closed_by_server),
            closed_after_last_exchange: count(|c| c.closed_after_last_exchange),
            served_by_more_than_one_pid: count(|c| c.pids.len() > 1),
            bytes_sent: connections.iter().map(|c| c.bytes_sent).sum(),
            bytes_verified: connections.iter().map(|c| c.bytes_verified).sum(),
        }
    }
}

impl fmt::Display for LongLivedTotals {
    /// `long-lived connections: N, survived every upgrade (never reopened, no
    /// failure): M; served by more than one pid: K; bytes verified in order: B`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "long-lived connections: {}, survived every upgrade (never reopened, no failure): {}; \
             served by more than one pid: {}; bytes verified in order: {}",
            self.connections, self.survived, self.served_by_more_than_one_pid, self.bytes_verified
        )
    }
}

/// Totals over the connections of a run's HTTP keep-alive workers;
/// [`fmt::Display`] gives the human line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeepAliveTotals {
    /// Connections opened by keep-alive workers.
    pub opened: usize,
    /// Closed by the server, announced or not.
    pub closed_by_server: usize,
    /// [`ConnectionEnd::ClosedAnnounced`].
    pub closed_announced: usize,
    /// [`ConnectionEnd::ClosedUnannounced`].
    pub closed_unannounced: usize,
    /// [`ConnectionEnd::Kept`].
    pub kept: usize,
    /// [`ConnectionEnd::DroppedAfterFailure`].
    pub dropped_after_failure: usize,
}

impl KeepAliveTotals {
    /// Totals of `connections`.
    pub fn of(connections: &[KeepAliveConnection]) -> KeepAliveTotals {
        let count = |end| connections.iter().filter(|c| c.end == end).count();
        let (announced, unannounced) = (
            count(ConnectionEnd::ClosedAnnounced),
            count(ConnectionEnd::ClosedUnannounced),
        );
        KeepAliveTotals {
            opened: connections.len(),
            closed_by_server: announced + unannounced,
            closed_announced: announced,
            closed_unannounced: unannounced,
            kept: count(ConnectionEnd::Kept),
            dropped_after_failure: count(ConnectionEnd::DroppedAfterFailure),
        }
    }
}

impl fmt::Display for KeepAliveTotals {
    /// `keep-alive connections: opened N, closed by the server M (announced
    /// with Connection: close: X, without: Y), kept to the end: K, dropped by
    /// the client after a failure: D`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "keep-alive connections: opened {}, closed by the server {} (announced with \
             Connection: close: {}, without: {}), kept to the end: {}, dropped by the client \
             after a failure: {}",
            self.opened,
            self.closed_by_server,
            self.closed_announced,
            self.closed_unannounced,
            self.kept,
            self.dropped_after_failure
        )
    }
}

/// Appends `pid` to `pids` unless it is already there (keeps first-seen order).
pub(crate) fn note_pid(pids: &mut Vec<String>, pid: Option<&String>) {
    if let Some(pid) = pid {
        if !pids.contains(pid) {
            pids.push(pid.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_and_their_lines() {
        let mut survivor = LineConnection::new(0);
        survivor.opened = 1;
        survivor.bytes_verified = 10;
        note_pid(&mut survivor.pids, Some(&"7".to_owned()));
        note_pid(&mut survivor.pids, Some(&"8".to_owned()));
        note_pid(&mut survivor.pids, Some(&"7".to_owned()));
        assert_eq!(survivor.pids, ["7", "8"], "distinct, in the order seen");
        let mut reopened = LineConnection::new(1);
        reopened.opened = 2;
        reopened.failures = 1;
        reopened.closed_by_server = true;
        reopened.bytes_verified = 5;
        let totals = LongLivedTotals::of(&[survivor, reopened]);
        assert_eq!(
            totals.to_string(),
            "long-lived connections: 2, survived every upgrade (never reopened, no failure): 1; \
             served by more than one pid: 1; bytes verified in order: 15"
        );
        assert_eq!((totals.reopened, totals.closed_by_server), (1, 1));

        let conn = |end| KeepAliveConnection {
            worker: 0,
            opened_at: Duration::ZERO,
            responses: 1,
            end,
            pids: Vec::new(),
        };
        let totals = KeepAliveTotals::of(&[
            conn(ConnectionEnd::Kept),
            conn(ConnectionEnd::ClosedAnnounced),
            conn(ConnectionEnd::ClosedAnnounced),
            conn(ConnectionEnd::ClosedUnannounced),
            conn(ConnectionEnd::DroppedAfterFailure),
        ]);
        assert_eq!(
            totals.to_string(),
            "keep-alive connections: opened 5, closed by the server 3 (announced with \
             Connection: close: 2, without: 1), kept to the end: 1, dropped by the client \
             after a failure: 1"
        );
    }
}
