//! Splitting a load run's samples by upgrade window, and the figures the
//! tables show.

use std::time::{Duration, Instant};

use handover_loadgen::{Report, Sample};

use super::upgrader::Window;
use crate::stats::percentile;

/// A stretch of a run, as offsets from the run's start (like `Sample::start`).
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub from: Duration,
    pub to: Duration,
}

impl Span {
    fn contains(&self, at: Duration) -> bool {
        self.from <= at && at <= self.to
    }

    pub fn length(&self) -> Duration {
        self.to.saturating_sub(self.from)
    }
}

/// The spans `pick` selects from each window, relative to `start`.
pub fn spans(
    windows: &[Window],
    start: Instant,
    pick: fn(&Window) -> (Instant, Instant),
) -> Vec<Span> {
    windows
        .iter()
        .map(|w| {
            let (from, to) = pick(w);
            Span {
                from: from.saturating_duration_since(start),
                to: to.saturating_duration_since(start),
            }
        })
        .collect()
}

/// Latency figures of a set of attempts (over the successful ones).
#[derive(Debug, Clone, Copy, Default)]
pub struct Latencies {
    pub requests: usize,
    pub failures: usize,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    pub max: Option<Duration>,
}

impl Latencies {
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Latencies {
        let mut latencies = Vec::new();
        let mut failures = 0;
        for sample in samples {
            if sample.is_success() {
                latencies.push(sample.latency);
            } else {
                failures += 1;
            }
        }
        latencies.sort_unstable();
        Latencies {
            requests: latencies.len() + failures,
            failures,
            p50: percentile(&latencies, 50.0),
            p99: percentile(&latencies, 99.0),
            max: latencies.last().copied(),
        }
    }
}

/// A run with upgrades, split by where each attempt *started*.
#[derive(Debug, Clone, Copy)]
pub struct Split {
    /// Outside every upgrade window: the steady state of the same run.
    pub outside: Latencies,
    /// Inside a window (SIGHUP sent → old process exited).
    pub inside: Latencies,
    /// Inside the first moments of a window (the successor is being started).
    pub spawn: Latencies,
    /// Inside the commit part of a window (successor took over → old exited).
    pub commit: Latencies,
}

pub fn split(report: &Report, windows: &[Span], spawns: &[Span], commits: &[Span]) -> Split {
    let within = |spans: &[Span], s: &Sample| spans.iter().any(|span| span.contains(s.start));
    let samples = &report.samples;
    Split {
        outside: Latencies::of(samples.iter().filter(|s| !within(windows, s))),
        inside: Latencies::of(samples.iter().filter(|s| within(windows, s))),
        spawn: Latencies::of(samples.iter().filter(|s| within(spawns, s))),
        commit: Latencies::of(samples.iter().filter(|s| within(commits, s))),
    }
}

/// Successful requests per second over the whole run.
pub fn throughput(report: &Report) -> f64 {
    let secs = report.elapsed.as_secs_f64();
    if secs > 0.0 {
        report.successes() as f64 / secs
    } else {
        0.0
    }
}
