//! Every number of the report, computed once from the samples and the
//! upgrade runs, and the verdict. [`Summary`] is also the `--json` shape:
//! its field names are a contract (a benchmark script parses them), so add
//! fields freely but do not rename them.

use std::collections::BTreeMap;
use std::time::Duration;

use handover_loadgen::{FailureKind, Report, Sample};
use serde::Serialize;

use super::args::Plan;
use super::gaps::longest_gap;
use super::run::{secs, RunOutcome};
use super::upgrades::Status;
use super::windows::{self, end_of, Union, Window};

/// Failed requests listed in the report.
const FIRST_FAILURES: usize = 10;

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub target: String,
    pub protocol: &'static str,
    pub mode: &'static str,
    /// Planned length of the run.
    pub duration_s: f64,
    /// Actual length, until the last request ended.
    pub elapsed_s: f64,
    pub connections: usize,
    pub requests: u64,
    pub successes: u64,
    pub failed: u64,
    /// Failed requests that started in steady time / in an upgrade window.
    pub failed_steady: u64,
    pub failed_upgrade: u64,
    pub failures: FailureCounts,
    /// Bad statuses by code, e.g. `{"500": 12}`.
    pub bad_statuses: BTreeMap<String, u64>,
    pub latency_ms: LatencySplit,
    pub throughput_rps: Throughput,
    /// Time covered by upgrade windows (within the run).
    pub upgrade_window_s: f64,
    /// Attempts that opened a new connection (failed or not).
    pub new_connections: u64,
    pub longest_gap_without_new_connection_ms: f64,
    /// Where that stretch lies, if there is one.
    pub longest_gap_without_new_connection: Option<Stretch>,
    /// Successful responses by generation (or by pid when the server gives no generation).
    pub answered_by: BTreeMap<String, u64>,
    pub answered_by_pid: BTreeMap<String, u64>,
    pub answered_by_generation: BTreeMap<String, u64>,
    /// `--protocol long-lived`: each connection over the run (`null` otherwise).
    pub long_lived: Option<LongLivedSummary>,
    /// HTTP keep-alive connections and how they ended (`null` without
    /// keep-alive workers: other protocols, `--mode close`).
    pub keep_alive: Option<KeepAliveSummary>,
    pub upgrades: Vec<UpgradeSummary>,
    pub upgrade_failures: u64,
    /// Descriptions of the first failed requests.
    pub first_failures: Vec<String>,
    /// The run stopped starting requests at `--max-requests`.
    pub request_cap_reached: bool,
    /// Ctrl-C ended the run early.
    pub interrupted: bool,
    /// `"pass"` or `"fail"`.
    pub verdict: &'static str,
    /// Why it failed (empty on pass).
    pub reasons: Vec<String>,
}

/// The long-lived connections (one per `--connections`), followed over the run.
#[derive(Debug, Clone, Serialize)]
pub struct LongLivedSummary {
    pub connections: u64,
    /// Opened once, no failure, not closed by the server.
    pub survived: u64,
    /// Opened more than once (after a failure).
    pub reopened: u64,
    /// Closed (EOF) or reset by the server at least once.
    pub closed_by_server: u64,
    /// Found closed by the server at the end, after a successful last exchange.
    pub closed_after_last_exchange: u64,
    pub served_by_more_than_one_pid: u64,
    pub bytes_sent: u64,
    /// Bytes of lines whose echo came back exactly, in order (0 without `--echo-check`).
    pub bytes_verified: u64,
    pub echo_check: bool,
    pub lines_per_exchange: usize,
    /// By worker.
    pub per_connection: Vec<LongLivedConnection>,
    /// The table's line.
    #[serde(skip)]
    pub line: String,
}

/// One long-lived connection.
#[derive(Debug, Clone, Serialize)]
pub struct LongLivedConnection {
    pub worker: usize,
    /// TCP connections opened (1 = never reopened).
    pub opened: u64,
    pub exchanges: u64,
    pub failures: u64,
    pub closed_by_server: bool,
    pub closed_after_last_exchange: bool,
    pub bytes_sent: u64,
    pub bytes_verified: u64,
    /// Distinct pids that answered on it, in the order first seen.
    pub pids: Vec<String>,
    pub survived: bool,
}

/// Connections listed one by one in `keep_alive.per_connection` (the counts
/// cover all of them): a server that closes every connection would make the
/// list as long as the requests.
const KEEP_ALIVE_LISTED: usize = 1000;

/// The connections of HTTP keep-alive workers and how each ended.
#[derive(Debug, Clone, Serialize)]
pub struct KeepAliveSummary {
    pub opened: u64,
    /// `closed_announced + closed_unannounced`.
    pub closed_by_server: u64,
    /// The response said close: `Connection: close` (or HTTP/1.0 without
    /// keep-alive, or a body ended by the close).
    pub closed_announced: u64,
    /// EOF or reset between requests, or found closed at the end.
    pub closed_unannounced: u64,
    pub kept: u64,
    /// Given up by the client after a timeout, bad status or malformed response.
    pub dropped_after_failure: u64,
    /// The first connections opened, at most 1000.
    pub per_connection: Vec<KeepAliveConnection>,
    /// `per_connection` is not all of them.
    pub per_connection_truncated: bool,
    /// The table's line.
    #[serde(skip)]
    pub line: String,
}

/// One HTTP keep-alive connection.
#[derive(Debug, Clone, Serialize)]
pub struct KeepAliveConnection {
    pub worker: usize,
    pub opened_s: f64,
    /// Complete responses received on it.
    pub responses: u64,
    /// `kept`, `closed_announced`, `closed_unannounced` or `dropped_after_failure`.
    pub end: &'static str,
    /// Distinct pids that answered on it, in the order first seen.
    pub pids: Vec<String>,
}

/// Failed requests by kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FailureCounts {
    pub refused: u64,
    pub reset: u64,
    pub eof: u64,
    pub timeout: u64,
    pub bad_status: u64,
    pub malformed: u64,
    pub other: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencySplit {
    pub steady: LatencyStats,
    pub upgrade: LatencyStats,
}

/// Latency of successful requests, in ms (`null` when there are none).
#[derive(Debug, Clone, Serialize)]
pub struct LatencyStats {
    pub count: u64,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
}

/// Successful requests per second.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub overall: f64,
    pub steady: f64,
    pub upgrade: f64,
    /// Successes completed in each second of the run (the last one may be partial).
    pub per_second: Vec<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stretch {
    pub from_s: f64,
    pub to_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpgradeSummary {
    pub index: u32,
    pub started_s: f64,
    pub duration_ms: f64,
    /// Exit code; `null` when it did not exit by itself.
    pub exit_status: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// Why it could not run, if it could not.
    pub error: Option<String>,
    pub ok: bool,
    pub window_end_s: f64,
    /// First successful response from a new pid/generation after it started.
    pub first_new_answer_s: Option<f64>,
    pub new_answered_by: Option<String>,
    /// Last lines of its stdout and stderr.
    pub output_tail: Vec<String>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn per_second(count: u64, time: Duration) -> f64 {
    let s = time.as_secs_f64();
    if s > 0.0 {
        (count as f64 / s * 10.0).round() / 10.0
    } else {
        0.0
    }
}

impl Summary {
    pub fn new(plan: &Plan, outcome: &RunOutcome) -> Summary {
        let report = &outcome.report;
        let samples = &report.samples;
        let windows = windows::compute(&outcome.upgrades, samples, plan.window_tail);
        let union = Union::new(&windows);
        let elapsed = report.elapsed;

        let mut failures = FailureCounts::default();
        let mut bad_statuses = BTreeMap::new();
        let (mut steady, mut upgrade) = (Vec::new(), Vec::new());
        let (mut failed_steady, mut failed_upgrade) = (0, 0);
        let (mut answered_by, mut by_pid, mut by_generation) = Default::default();
        for sample in samples {
            let in_upgrade = union.contains(sample.start);
            match sample.failure() {
                None => {
                    let class = if in_upgrade {
                        &mut upgrade
                    } else {
                        &mut steady
                    };
                    class.push(sample.latency);
                    count_answer(sample, &mut answered_by, &mut by_pid, &mut by_generation);
                }
                Some(failure) => {
                    if in_upgrade {
                        failed_upgrade += 1;
                    } else {
                        failed_steady += 1;
                    }
                    let counter = match &failure.kind {
                        FailureKind::Refused => &mut failures.refused,
                        FailureKind::Reset => &mut failures.reset,
                        FailureKind::Eof => &mut failures.eof,
                        FailureKind::Timeout => &mut failures.timeout,
                        FailureKind::BadStatus(code) => {
                            *bad_statuses.entry(code.to_string()).or_insert(0) += 1;
                            &mut failures.bad_status
                        }
                        FailureKind::Malformed => &mut failures.malformed,
                        FailureKind::Other(_) => &mut failures.other,
                    };
                    *counter += 1;
                }
            }
        }
        let upgrade_time = union.covered(elapsed);
        let steady_time = elapsed.saturating_sub(upgrade_time);
        let throughput = Throughput {
            overall: per_second((steady.len() + upgrade.len()) as u64, elapsed),
            steady: per_second(steady.len() as u64, steady_time),
            upgrade: per_second(upgrade.len() as u64, upgrade_time),
            per_second: successes_per_second(samples, elapsed),
        };
        let gap = longest_gap(samples);
        let upgrades: Vec<UpgradeSummary> = outcome
            .upgrades
            .iter()
            .zip(&windows)
            .map(|(run, window)| upgrade_summary(run, window))
            .collect();
        let upgrade_failures = upgrades.iter().filter(|u| !u.ok).count() as u64;
        let failed = failed_steady + failed_upgrade;
        let mut reasons = Vec::new();
        if failed > 0 {
            reasons.push(format!("{failed} of {} requests failed", samples.len()));
        }
        if upgrade_failures > 0 {
            reasons.push(format!("{upgrade_failures} upgrade command(s) failed"));
        }
        if samples.is_empty() {
            reasons.push("no request was made".to_owned());
        }
        let long_lived = long_lived_summary(report);
        if let Some(closed) = long_lived
            .as_ref()
            .map(|l| l.closed_after_last_exchange)
            .filter(|&n| n > 0)
        {
            // No failed request says so: the close came after the last one.
            reasons.push(format!(
                "{closed} long-lived connection(s) closed by the server after their last exchange"
            ));
        }
        if outcome.interrupted {
            reasons.push("interrupted by Ctrl-C before the end of the run".to_owned());
        }
        Summary {
            target: plan.target.clone(),
            protocol: plan.protocol_name(),
            mode: plan.mode_name(),
            duration_s: secs(plan.load.duration),
            elapsed_s: secs(elapsed),
            connections: plan.load.connections,
            requests: samples.len() as u64,
            successes: (steady.len() + upgrade.len()) as u64,
            failed,
            failed_steady,
            failed_upgrade,
            failures,
            bad_statuses,
            latency_ms: LatencySplit {
                steady: latency_stats(steady),
                upgrade: latency_stats(upgrade),
            },
            throughput_rps: throughput,
            upgrade_window_s: secs(upgrade_time),
            new_connections: samples.iter().filter(|s| s.fresh_connection).count() as u64,
            longest_gap_without_new_connection_ms: gap.map_or(0.0, |(from, to)| ms(to - from)),
            longest_gap_without_new_connection: gap.map(|(from, to)| Stretch {
                from_s: secs(from),
                to_s: secs(to),
            }),
            answered_by,
            answered_by_pid: by_pid,
            answered_by_generation: by_generation,
            long_lived,
            keep_alive: keep_alive_summary(report),
            upgrades,
            upgrade_failures,
            first_failures: samples
                .iter()
                .filter(|s| !s.is_success())
                .take(FIRST_FAILURES)
                .map(Sample::describe)
                .collect(),
            request_cap_reached: plan
                .load
                .max_requests
                .is_some_and(|max| samples.len() as u64 >= max),
            interrupted: outcome.interrupted,
            verdict: if reasons.is_empty() { "pass" } else { "fail" },
            reasons,
        }
    }

    /// The verdict is "pass".
    pub fn passed(&self) -> bool {
        self.reasons.is_empty()
    }
}

fn long_lived_summary(report: &Report) -> Option<LongLivedSummary> {
    let totals = report.long_lived_totals()?;
    let per_connection = report
        .line_connections
        .iter()
        .map(|c| LongLivedConnection {
            worker: c.worker,
            opened: c.opened,
            exchanges: c.exchanges,
            failures: c.failures,
            closed_by_server: c.closed_by_server,
            closed_after_last_exchange: c.closed_after_last_exchange,
            bytes_sent: c.bytes_sent,
            bytes_verified: c.bytes_verified,
            pids: c.pids.clone(),
            survived: c.survived(),
        })
        .collect();
    Some(LongLivedSummary {
        connections: totals.connections as u64,
        survived: totals.survived as u64,
        reopened: totals.reopened as u64,
        closed_by_server: totals.closed_by_server as u64,
        closed_after_last_exchange: totals.closed_after_last_exchange as u64,
        served_by_more_than_one_pid: totals.served_by_more_than_one_pid as u64,
        bytes_sent: totals.bytes_sent,
        bytes_verified: totals.bytes_verified,
        echo_check: report.config.echo_check,
        lines_per_exchange: report.config.lines_per_exchange,
        per_connection,
        line: totals.to_string(),
    })
}

fn keep_alive_summary(report: &Report) -> Option<KeepAliveSummary> {
    let totals = report.keep_alive_totals()?;
    let all = &report.keep_alive_connections;
    let per_connection = all
        .iter()
        .take(KEEP_ALIVE_LISTED)
        .map(|c| KeepAliveConnection {
            worker: c.worker,
            opened_s: secs(c.opened_at),
            responses: c.responses,
            end: c.end.as_str(),
            pids: c.pids.clone(),
        })
        .collect();
    Some(KeepAliveSummary {
        opened: totals.opened as u64,
        closed_by_server: totals.closed_by_server as u64,
        closed_announced: totals.closed_announced as u64,
        closed_unannounced: totals.closed_unannounced as u64,
        kept: totals.kept as u64,
        dropped_after_failure: totals.dropped_after_failure as u64,
        per_connection,
        per_connection_truncated: all.len() > KEEP_ALIVE_LISTED,
        line: totals.to_string(),
    })
}

type Counts = BTreeMap<String, u64>;

fn count_answer(sample: &Sample, by: &mut Counts, by_pid: &mut Counts, by_gen: &mut Counts) {
    if let Some(pid) = &sample.pid {
        *by_pid.entry(pid.clone()).or_insert(0) += 1;
    }
    if let Some(generation) = &sample.generation {
        *by_gen.entry(generation.clone()).or_insert(0) += 1;
    }
    if let Some(key) = sample.generation.as_ref().or(sample.pid.as_ref()) {
        *by.entry(key.clone()).or_insert(0) += 1;
    }
}

/// Nearest-rank percentiles of `latencies`.
fn latency_stats(mut latencies: Vec<Duration>) -> LatencyStats {
    latencies.sort_unstable();
    // Nearest rank, in integers: rank = ceil(permille × n / 1000).
    let at = |permille: usize| {
        let rank = (permille * latencies.len()).div_ceil(1000);
        latencies.get(rank.max(1) - 1).copied().map(ms)
    };
    LatencyStats {
        count: latencies.len() as u64,
        p50: at(500),
        p99: at(990),
        p999: at(999),
        max: latencies.last().copied().map(ms),
    }
}

fn successes_per_second(samples: &[Sample], elapsed: Duration) -> Vec<u64> {
    let buckets = (elapsed.as_secs_f64().ceil() as usize).max(1);
    let mut counts = vec![0; buckets];
    for sample in samples.iter().filter(|s| s.is_success()) {
        let second = (end_of(sample).as_secs() as usize).min(buckets - 1);
        counts[second] += 1;
    }
    counts
}

fn upgrade_summary(run: &super::upgrades::UpgradeRun, window: &Window) -> UpgradeSummary {
    let (exit_status, signal, timed_out, error) = match &run.status {
        Status::Exited(code) => (Some(*code), None, false, None),
        Status::Signaled(signal) => (None, Some(*signal), false, None),
        Status::TimedOut => (None, None, true, None),
        Status::SpawnFailed(why) => (None, None, false, Some(why.clone())),
    };
    UpgradeSummary {
        index: run.index,
        started_s: secs(run.started),
        duration_ms: ms(run.duration()),
        exit_status,
        signal,
        timed_out,
        error,
        ok: run.status.ok(),
        window_end_s: secs(window.end),
        first_new_answer_s: window.first_new_answer.as_ref().map(|(at, _)| secs(*at)),
        new_answered_by: window.first_new_answer.as_ref().map(|(_, who)| who.clone()),
        output_tail: run.output.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let stats = latency_stats((1..=1000).map(Duration::from_millis).collect());
        assert_eq!(stats.count, 1000);
        assert_eq!(
            (stats.p50, stats.p99, stats.p999, stats.max),
            (Some(500.0), Some(990.0), Some(999.0), Some(1000.0))
        );
        let empty = latency_stats(Vec::new());
        assert_eq!((empty.count, empty.p50, empty.max), (0, None, None));
    }
}
