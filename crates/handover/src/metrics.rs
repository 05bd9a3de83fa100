//! The counters a user alerts on, in the Prometheus text format: what
//! `handover status --format prometheus --socket PATH` prints for a library
//! process (the takeover socket's `metrics` command), and what
//! [`Handover::metrics`](crate::Handover::metrics) returns.
//!
//! | metric | type | labels | counts |
//! |---|---|---|---|
//! | `handover_upgrades_total` | counter | `mode` (`reexec`, `takeover`), `result` (`ok`, `failed`, `refused`), `reason` (`ready` for ok; `upgrade_in_progress`, `reload_in_progress`, `not_ready`, `draining` for refused; `spawn_failed`, `exited`, `ready_timeout`, `stopping`, `lost`, `hand_over_failed`, `other` for failed) | upgrades this process started or was asked for: committed, rolled back (the successor died, hung, was not ready), or refused (one under way, not ready, draining) |
//! | `handover_rollbacks_total` | counter | | successors that died on probation, after which this process served again |
//! | `handover_upgrade_duration_seconds` | histogram | `mode` | from the upgrade's start to its commit (the successor's start-up, mostly) |
//! | `handover_drain_duration_seconds` | histogram | | a drain: from the wait's start until no connection is left, or the deadline |
//! | `handover_connections_closed_at_deadline_total` | counter | | connections still open at a drain deadline, and closed |
//! | `handover_connections_migrated_total` | counter | `direction` (`out`, `in`) | live connections handed to a successor / received from a predecessor |
//! | `handover_reloads_total` | counter | `result` (`ok`, `refused`) | reloads in place |
//!
//! Decisions. The counters are the process's, from its start: a new version
//! starts again from 0, which Prometheus's `rate()` reads as a counter reset
//! (as after any restart). They are one set per process (a `static`), since
//! they describe the process, not one [`Handover`](crate::Handover) handle.
//! They are served over the control socket and not an HTTP listener of their
//! own: no port to open, secure and hand over; a scraper reads them with
//! `handover status --format prometheus` (node-exporter's textfile collector,
//! a sidecar), and the application may serve [`Handover::metrics`](crate::Handover::metrics) on its
//! own HTTP routes. The encoding is the `prometheus-client` crate's.

use std::sync::OnceLock;
use std::time::Duration;

use handover_mechanism::metrics::{self as shared, register, ResultLabel};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// How an upgrade reached this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `upgrade()`: this process started its successor.
    Reexec,
    /// A new process took the sockets over the takeover socket.
    Takeover,
}

impl Mode {
    /// The label value: what the table in the module docs says.
    fn label(self) -> &'static str {
        match self {
            Mode::Reexec => "reexec",
            Mode::Takeover => "takeover",
        }
    }
}

/// How an upgrade ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Committed: the successor serves.
    Ok,
    /// Rolled back: this process serves on.
    Failed,
    /// Not started: another was under way, or this process could not.
    Refused,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
        }
    }
}

/// Why an upgrade ended as it did: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// `ok`: the successor was ready (or took the sockets over).
    Ready,
    /// `refused`: an upgrade or takeover is under way.
    UpgradeInProgress,
    /// `refused`: a reload is under way.
    ReloadInProgress,
    /// `refused`: this process has not called `ready()` yet.
    NotReady,
    /// `refused`: this process drains.
    Draining,
    /// `failed`: the successor could not be started.
    SpawnFailed,
    /// `failed`: it exited, or was killed, before it was ready.
    Exited,
    /// `failed`: it was not ready within the ready timeout.
    ReadyTimeout,
    /// `failed`: this process began stopping meanwhile.
    Stopping,
    /// `failed`: the successor could not be watched.
    Lost,
    /// `failed`: the takeover's exchange broke off.
    HandOverFailed,
    /// `failed`: anything else (an fd or memfd could not be made, …).
    Other,
}

impl Reason {
    /// The label value: what the table in the module docs says.
    fn label(self) -> &'static str {
        match self {
            Reason::Ready => "ready",
            Reason::UpgradeInProgress => "upgrade_in_progress",
            Reason::ReloadInProgress => "reload_in_progress",
            Reason::NotReady => "not_ready",
            Reason::Draining => "draining",
            Reason::SpawnFailed => "spawn_failed",
            Reason::Exited => "exited",
            Reason::ReadyTimeout => "ready_timeout",
            Reason::Stopping => "stopping",
            Reason::Lost => "lost",
            Reason::HandOverFailed => "hand_over_failed",
            Reason::Other => "other",
        }
    }

    /// Why `upgrade()` returned `error`.
    pub(crate) fn of(error: &crate::Error) -> Reason {
        use crate::error::SuccessorFailure;
        use crate::Error;
        match error {
            Error::UpgradeInProgress(_) => Reason::UpgradeInProgress,
            Error::ReloadInProgress => Reason::ReloadInProgress,
            Error::NotReady => Reason::NotReady,
            Error::Draining(_) => Reason::Draining,
            Error::Spawn { .. } => Reason::SpawnFailed,
            Error::SuccessorFailed { why, .. } => match why {
                SuccessorFailure::Exited(_) | SuccessorFailure::Signaled(_) => Reason::Exited,
                SuccessorFailure::Timeout(_) => Reason::ReadyTimeout,
                SuccessorFailure::Aborted => Reason::Stopping,
                SuccessorFailure::Lost(_) => Reason::Lost,
            },
            _ => Reason::Other,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpgradeLabels {
    mode: &'static str,
    result: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    mode: &'static str,
}

/// Which way a migrated connection went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Out,
    In,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

/// This process's counters.
pub(crate) struct Metrics {
    registry: Registry,
    upgrades: Family<UpgradeLabels, Counter>,
    rollbacks: Counter,
    upgrade_duration: Family<ModeLabel, Histogram>,
    drain_duration: Histogram,
    closed_at_deadline: Counter,
    migrated: Family<DirectionLabel, Counter>,
    reloads: Family<ResultLabel, Counter>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = shared::registry();
        Metrics {
            upgrades: register(
                &mut r,
                "upgrades",
                "Upgrades by mode, result and reason",
                Family::default(),
            ),
            rollbacks: register(
                &mut r,
                "rollbacks",
                "Successors that died on probation; this process served again",
                Counter::default(),
            ),
            upgrade_duration: register(
                &mut r,
                "upgrade_duration_seconds",
                "From an upgrade's start to its commit",
                Family::new_with_constructor(shared::seconds as fn() -> Histogram),
            ),
            drain_duration: register(
                &mut r,
                "drain_duration_seconds",
                "Drains: until no connection was left, or the deadline",
                shared::seconds(),
            ),
            closed_at_deadline: register(
                &mut r,
                "connections_closed_at_deadline",
                "Connections still open at a drain deadline, closed then",
                Counter::default(),
            ),
            migrated: register(
                &mut r,
                "connections_migrated",
                "Live connections handed to a successor (out) or received (in)",
                Family::default(),
            ),
            reloads: register(
                &mut r,
                "reloads",
                "Reloads in place by result",
                Family::default(),
            ),
            registry: r,
        }
    }

    /// The exposition, in the Prometheus (OpenMetrics) text format.
    pub(crate) fn encode(&self) -> String {
        shared::encode(&self.registry)
    }

    pub(crate) fn upgrade(
        &self,
        mode: Mode,
        result: Outcome,
        reason: Reason,
        took: Option<Duration>,
    ) {
        let (mode, result, reason) = (mode.label(), result.label(), reason.label());
        self.upgrades
            .get_or_create(&UpgradeLabels {
                mode,
                result,
                reason,
            })
            .inc();
        if let Some(took) = took {
            self.upgrade_duration
                .get_or_create(&ModeLabel { mode })
                .observe(took.as_secs_f64());
        }
    }

    pub(crate) fn rollback(&self) {
        self.rollbacks.inc();
    }

    pub(crate) fn drained(&self, took: Duration, left: usize) {
        self.drain_duration.observe(took.as_secs_f64());
        self.closed_at_deadline.inc_by(left as u64);
    }

    pub(crate) fn migrated(&self, direction: Direction, count: usize) {
        self.migrated
            .get_or_create(&DirectionLabel {
                direction: direction.label(),
            })
            .inc_by(count as u64);
    }

    pub(crate) fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "refused" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }
}

/// This process's counters.
pub(crate) fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl crate::Handover {
    /// This process's counters in the Prometheus text format (see
    /// [`crate::metrics`](mod@crate::metrics)), e.g. to serve on a route of
    /// the application's own.
    pub fn metrics(&self) -> String {
        get().encode()
    }
}

#[cfg(test)]
mod tests {
    use super::Reason;
    use crate::error::SuccessorFailure;
    use crate::Error;
    use std::time::Duration;

    #[test]
    fn an_upgrade_error_names_its_reason() {
        let failed = |why| Error::SuccessorFailed { pid: 7, why };
        let cases = [
            (Error::NotReady, Reason::NotReady),
            (Error::UpgradeInProgress(7), Reason::UpgradeInProgress),
            (Error::ReloadInProgress, Reason::ReloadInProgress),
            (failed(SuccessorFailure::Exited(1)), Reason::Exited),
            (failed(SuccessorFailure::Signaled(9)), Reason::Exited),
            (
                failed(SuccessorFailure::Timeout(Duration::from_secs(1))),
                Reason::ReadyTimeout,
            ),
            (failed(SuccessorFailure::Aborted), Reason::Stopping),
            (Error::State("bad".into()), Reason::Other),
        ];
        for (error, reason) in cases {
            assert_eq!(Reason::of(&error), reason, "{error}");
        }
    }
}
