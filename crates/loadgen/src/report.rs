//! The result of a run: every sample, plus queries and a human summary.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use crate::config::{LoadConfig, Mode, Protocol};
use crate::connections::{KeepAliveConnection, KeepAliveTotals, LineConnection, LongLivedTotals};
use crate::outcome::{FailureKind, Sample};

/// Everything that happened during one run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The configuration the run used.
    pub config: LoadConfig,
    /// Wall-clock time from the start of the run until the last attempt ended.
    pub elapsed: Duration,
    /// One sample per attempt, ordered by start offset.
    pub samples: Vec<Sample>,
    /// [`Protocol::LongLived`]: each worker's connection over the run, by
    /// worker (empty for the other protocols).
    pub line_connections: Vec<LineConnection>,
    /// HTTP keep-alive workers: every connection they opened, in the order
    /// opened (empty for the other protocols and in [`Mode::Close`]).
    pub keep_alive_connections: Vec<KeepAliveConnection>,
}

impl Report {
    /// Number of attempts.
    pub fn total(&self) -> usize {
        self.samples.len()
    }

    /// Number of successful attempts.
    pub fn successes(&self) -> usize {
        self.samples.iter().filter(|s| s.is_success()).count()
    }

    /// The failed attempts, in start order.
    pub fn failures(&self) -> Vec<&Sample> {
        self.samples.iter().filter(|s| !s.is_success()).collect()
    }

    /// Number of failed attempts.
    pub fn failure_count(&self) -> usize {
        self.total() - self.successes()
    }

    /// Number of failed attempts of exactly `kind`.
    pub fn count_of(&self, kind: &FailureKind) -> usize {
        self.failure_kinds().filter(|k| *k == kind).count()
    }

    /// Failure counts keyed by the kind's display form (`"Eof"`, `"BadStatus(503)"`, ...).
    pub fn failure_counts(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for kind in self.failure_kinds() {
            *counts.entry(kind.to_string()).or_insert(0) += 1;
        }
        counts
    }

    /// Number of attempts that opened a new connection.
    pub fn fresh_connections(&self) -> usize {
        self.samples.iter().filter(|s| s.fresh_connection).count()
    }

    /// Latency percentile `p` (0–100, nearest rank) over successful attempts;
    /// `None` if there are none or `p` is out of range.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        if !(0.0..=100.0).contains(&p) {
            return None;
        }
        let mut latencies: Vec<Duration> = self
            .samples
            .iter()
            .filter(|s| s.is_success())
            .map(|s| s.latency)
            .collect();
        latencies.sort_unstable();
        let rank = (p / 100.0 * latencies.len() as f64).ceil() as usize;
        latencies.get(rank.max(1) - 1).copied()
    }

    /// Distinct `x-generation` values seen in responses.
    pub fn distinct_generations(&self) -> BTreeSet<String> {
        self.samples
            .iter()
            .filter_map(|s| s.generation.clone())
            .collect()
    }

    /// Distinct `x-pid` values seen in responses.
    pub fn distinct_pids(&self) -> BTreeSet<String> {
        self.samples.iter().filter_map(|s| s.pid.clone()).collect()
    }

    /// Totals of [`Report::line_connections`]; `None` unless the run used
    /// [`Protocol::LongLived`].
    pub fn long_lived_totals(&self) -> Option<LongLivedTotals> {
        (self.config.protocol == Protocol::LongLived)
            .then(|| LongLivedTotals::of(&self.line_connections))
    }

    /// Totals of [`Report::keep_alive_connections`]; `None` unless the run
    /// had HTTP keep-alive workers.
    pub fn keep_alive_totals(&self) -> Option<KeepAliveTotals> {
        (self.config.protocol == Protocol::Http && self.config.mode != Mode::Close)
            .then(|| KeepAliveTotals::of(&self.keep_alive_connections))
    }

    /// Human descriptions of the first `n` failures (kind, start offset,
    /// worker, connection, detail), for assertion messages.
    pub fn first_failures(&self, n: usize) -> Vec<String> {
        self.failures()
            .into_iter()
            .take(n)
            .map(Sample::describe)
            .collect()
    }

    /// A one-paragraph human summary of the run.
    pub fn summary(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.total() as f64 / secs
        } else {
            0.0
        };
        let mut out = format!(
            "{} requests to {}{} in {secs:.2}s ({rate:.0} req/s, {} workers, {:?} mode, \
             {} connections opened): {} succeeded, {} failed",
            self.total(),
            self.config.addr,
            self.config.path,
            self.config.connections,
            self.config.mode,
            self.fresh_connections(),
            self.successes(),
            self.failure_count(),
        );
        let counts = self.failure_counts();
        if !counts.is_empty() {
            let list: Vec<String> = counts.iter().map(|(k, n)| format!("{k}: {n}")).collect();
            out.push_str(&format!(" ({})", list.join(", ")));
        }
        let ms = |p: f64| self.percentile(p).map(|d| d.as_secs_f64() * 1e3);
        if let (Some(p50), Some(p99), Some(max)) = (ms(50.0), ms(99.0), ms(100.0)) {
            out.push_str(&format!(
                "; latency p50 {p50:.2}ms, p99 {p99:.2}ms, max {max:.2}ms"
            ));
        }
        let join = |set: BTreeSet<String>| set.into_iter().collect::<Vec<_>>().join(", ");
        out.push_str(&format!(
            "; generations [{}]; pids [{}]",
            join(self.distinct_generations()),
            join(self.distinct_pids())
        ));
        if let Some(totals) = self.long_lived_totals() {
            out.push_str(&format!("; {totals}"));
        }
        if let Some(totals) = self.keep_alive_totals() {
            out.push_str(&format!("; {totals}"));
        }
        if let Some(first) = self.first_failures(1).pop() {
            out.push_str(&format!("; first failure: {first}"));
        }
        out.push('.');
        out
    }

    fn failure_kinds(&self) -> impl Iterator<Item = &FailureKind> {
        self.samples
            .iter()
            .filter_map(|s| s.failure())
            .map(|f| &f.kind)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Failure, Outcome};

    fn sample(ms: u64, outcome: Outcome, generation: Option<&str>) -> Sample {
        Sample {
            worker: 0,
            start: Duration::from_millis(ms),
            latency: Duration::from_millis(ms),
            outcome,
            fresh_connection: true,
            pid: None,
            generation: generation.map(str::to_owned),
        }
    }

    #[test]
    fn percentiles_counts_and_descriptions() {
        let ok = || Outcome::Success { status: 200 };
        let fail = |kind| Outcome::Failure(Failure::new(kind, "boom"));
        let mut samples: Vec<Sample> = (1..=10).map(|ms| sample(ms, ok(), Some("1"))).collect();
        samples.push(sample(500, fail(FailureKind::Eof), None));
        samples.push(sample(600, fail(FailureKind::BadStatus(503)), Some("2")));
        samples.push(sample(700, fail(FailureKind::Eof), None));
        let report = Report {
            config: LoadConfig::new("127.0.0.1:1".parse().unwrap()),
            elapsed: Duration::from_secs(1),
            samples,
            line_connections: Vec::new(),
            keep_alive_connections: Vec::new(),
        };
        let ms = Duration::from_millis;
        assert_eq!(report.percentile(50.0), Some(ms(5)));
        assert_eq!(report.percentile(90.0), Some(ms(9)));
        assert_eq!(report.percentile(100.0), Some(ms(10)));
        assert_eq!(report.percentile(0.0), Some(ms(1)));
        assert_eq!(report.percentile(f64::NAN), None);
        assert_eq!(
            (report.total(), report.successes(), report.failure_count()),
            (13, 10, 3)
        );
        let counts: Vec<_> = report.failure_counts().into_iter().collect();
        assert_eq!(counts, [("BadStatus(503)".into(), 1), ("Eof".into(), 2)]);
        assert_eq!(report.count_of(&FailureKind::Eof), 2);
        assert_eq!(report.distinct_generations().len(), 2);
        let first = report.first_failures(1);
        assert_eq!(
            first,
            ["Eof at 0.500s (worker 0, new connection, 500.0ms): boom"]
        );
        assert!(report
            .summary()
            .contains("3 failed (BadStatus(503): 1, Eof: 2)"));
    }
}
