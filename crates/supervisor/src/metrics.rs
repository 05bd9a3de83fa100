//! The supervisor's counters, in the Prometheus text format: what `handover
//! status --format prometheus` prints (the control socket's `metrics`
//! command).
//!
//! | metric | type | labels | counts |
//! |---|---|---|---|
//! | `handover_upgrades_total` | counter | `result`: `ok` (committed: the new child was ready), `failed` (it exited, was not ready, could not start), `refused` (one under way, `--max-draining`, stopping); `reason`: `ready` (ok); `spawn_failed`, `exited`, `ready_timeout`, `probe_failed`, `stopping` (failed); `upgrade_in_progress`, `max_draining`, `no_child`, `stopping` (refused) | child upgrades |
//! | `handover_rollbacks_total` | counter | | committed upgrades whose new child died on probation, the old one serving again (counted as `ok` above too: they were committed) |
//! | `handover_child_restarts_total` | counter | | current children that crashed and were restarted |
//! | `handover_upgrade_duration_seconds` | histogram | | an upgrade's new child, its start to its readiness (the hand-over; first starts and restarts are not counted) |
//! | `handover_drain_duration_seconds` | histogram | | an old child's replacement to its exit |
//! | `handover_children_killed_at_deadline_total` | counter | | old children still running at the drain deadline, SIGKILLed |
//! | `handover_rescue_connections_total` | counter | `outcome`: `released`, `rescued`, `lost`, `not_held` | the keep-alive rescue's connections (see `rescue::Counts`) |
//! | `handover_self_upgrades_total` | counter | `result`: `ok`, `failed` (the previous image ran again), `refused` | `handover upgrade --supervisor` |
//!
//! Decisions. One set per process (a `static`): they describe the
//! supervisor process. A self-upgrade is a new image, and its counters start
//! from 0 (but `handover_self_upgrades_total` counts the switch that started
//! it): Prometheus's `rate()` reads that as a counter reset, as after any
//! restart, and the history in `handover status` is carried over. No HTTP
//! listener: the control socket is already there and permissioned; a scraper
//! runs `handover status --format prometheus` (node-exporter's textfile
//! collector, a sidecar).

use std::sync::OnceLock;
use std::time::Duration;

use handover_mechanism::metrics::{self as shared, register, ResultLabel};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// How an upgrade (of a child, or of the supervisor itself) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Committed: the new one serves.
    Ok,
    /// The new one could not start, exited or was not ready: the old serves on.
    Failed,
    /// Not started: one under way, `--max-draining`, stopping.
    Refused,
    /// Committed, then its new child died on probation: the old serves again.
    RolledBack,
}

impl Outcome {
    /// The `result` label (a rollback is counted apart, see [`Metrics::upgrade`]).
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
            Outcome::RolledBack => "rolled_back",
        }
    }
}

/// Why a child upgrade ended as it did: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// `ok`: the new child was ready.
    Ready,
    /// `failed`: the new child could not be started.
    SpawnFailed,
    /// `failed`: it exited, or was killed, before it was ready.
    Exited,
    /// `failed`: it was not ready within `--ready-timeout`.
    ReadyTimeout,
    /// `failed`: its readiness could not be checked.
    ProbeFailed,
    /// `failed` (it was abandoned) or `refused`: the supervisor is stopping.
    Stopping,
    /// `refused`: an upgrade or a restart is already under way.
    UpgradeInProgress,
    /// `refused`: `--max-draining` old children are still draining.
    MaxDraining,
    /// `refused`: no child runs (it crashed and is being restarted).
    NoChild,
    /// A rollback (counted in `handover_rollbacks_total`, unlabelled): the
    /// new child died on probation.
    DiedOnProbation,
}

impl Reason {
    /// The label value: what the table in the module docs says.
    fn label(self) -> &'static str {
        match self {
            Reason::Ready => "ready",
            Reason::SpawnFailed => "spawn_failed",
            Reason::Exited => "exited",
            Reason::ReadyTimeout => "ready_timeout",
            Reason::ProbeFailed => "probe_failed",
            Reason::Stopping => "stopping",
            Reason::UpgradeInProgress => "upgrade_in_progress",
            Reason::MaxDraining => "max_draining",
            Reason::NoChild => "no_child",
            Reason::DiedOnProbation => "died_on_probation",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpgradeLabels {
    result: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The supervisor's counters.
pub(crate) struct Metrics {
    registry: Registry,
    upgrades: Family<UpgradeLabels, Counter>,
    rollbacks: Counter,
    restarts: Counter,
    upgrade_duration: Histogram,
    drain_duration: Histogram,
    killed: Counter,
    rescue: Family<OutcomeLabel, Counter>,
    self_upgrades: Family<ResultLabel, Counter>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = shared::registry();
        Metrics {
            upgrades: register(
                &mut r,
                "upgrades",
                "Child upgrades by result and reason",
                Family::default(),
            ),
            rollbacks: register(
                &mut r,
                "rollbacks",
                "New children that died on probation; the old one served again",
                Counter::default(),
            ),
            restarts: register(
                &mut r,
                "child_restarts",
                "Current children that crashed and were restarted",
                Counter::default(),
            ),
            upgrade_duration: register(
                &mut r,
                "upgrade_duration_seconds",
                "An upgrade's new child, its start to its readiness",
                shared::seconds(),
            ),
            drain_duration: register(
                &mut r,
                "drain_duration_seconds",
                "An old child's replacement to its exit",
                shared::seconds(),
            ),
            killed: register(
                &mut r,
                "children_killed_at_deadline",
                "Old children still running at the drain deadline, killed",
                Counter::default(),
            ),
            rescue: register(
                &mut r,
                "rescue_connections",
                "The keep-alive rescue's connections by outcome",
                Family::default(),
            ),
            self_upgrades: register(
                &mut r,
                "self_upgrades",
                "Supervisor self-upgrades by result",
                Family::default(),
            ),
            registry: r,
        }
    }

    /// The exposition, in the Prometheus (OpenMetrics) text format.
    pub(crate) fn encode(&self) -> String {
        shared::encode(&self.registry)
    }

    /// An upgrade ended: counted by result and reason, or, for a committed
    /// one rolled back, as a rollback (it was counted `ok` at its commit).
    pub(crate) fn upgrade(&self, outcome: Outcome, reason: Reason) {
        match outcome {
            Outcome::RolledBack => self.rollbacks.inc(),
            _ => {
                let (result, reason) = (outcome.label(), reason.label());
                self.upgrades
                    .get_or_create(&UpgradeLabels { result, reason })
                    .inc()
            }
        };
    }

    pub(crate) fn ready_after(&self, took: Duration) {
        self.upgrade_duration.observe(took.as_secs_f64());
    }

    pub(crate) fn restart(&self) {
        self.restarts.inc();
    }

    pub(crate) fn drained(&self, took: f64) {
        self.drain_duration.observe(took);
    }

    pub(crate) fn killed_at_deadline(&self) {
        self.killed.inc();
    }

    pub(crate) fn rescue(&self, counts: &crate::rescue::Counts) {
        for (outcome, n) in [
            ("released", counts.released),
            ("rescued", counts.rescued),
            ("lost", counts.lost),
            ("not_held", counts.not_held),
        ] {
            self.rescue
                .get_or_create(&OutcomeLabel { outcome })
                .inc_by(n);
        }
    }

    pub(crate) fn self_upgrade(&self, outcome: Outcome) {
        let result = outcome.label();
        self.self_upgrades
            .get_or_create(&ResultLabel { result })
            .inc();
    }
}

/// The supervisor's counters.
pub(crate) fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
