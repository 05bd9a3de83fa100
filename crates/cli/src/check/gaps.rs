//! The longest stretch without a successful new connection: the longest
//! interval between two consecutive successful attempts that opened a fresh
//! connection (by the time their responses arrived). A stretch from the last
//! such success to a later *failed* attempt on a fresh connection counts too,
//! so a server that stops accepting for good is not reported as gap-free.
//!
//! `None` when no connection was opened after the start (each worker's first
//! connection aside: keep-alive and long-lived runs where nothing broke), or
//! when fewer than two fresh connections succeeded and none failed after one
//! did.

use std::time::Duration;

use handover_loadgen::Sample;

use super::windows::end_of;

/// The longest stretch, as (from, to) offsets in the run.
pub fn longest_gap(samples: &[Sample]) -> Option<(Duration, Duration)> {
    if !opened_after_start(samples) {
        return None;
    }
    let mut fresh: Vec<(Duration, bool)> = samples
        .iter()
        .filter(|s| s.fresh_connection)
        .map(|s| (end_of(s), s.is_success()))
        .collect();
    fresh.sort();
    let mut last_success: Option<Duration> = None;
    let mut best: Option<(Duration, Duration)> = None;
    let mut consider = |from: Duration, to: Duration| {
        if best.map_or(true, |(a, b)| to - from > b - a) {
            best = Some((from, to));
        }
    };
    let mut trailing_failure = None;
    for (at, success) in fresh {
        if success {
            if let Some(from) = last_success {
                consider(from, at);
            }
            last_success = Some(at);
            trailing_failure = None;
        } else {
            trailing_failure = Some(at);
        }
    }
    if let (Some(from), Some(to)) = (last_success, trailing_failure) {
        consider(from, to);
    }
    best
}

/// Whether any attempt other than a worker's first one opened a connection.
fn opened_after_start(samples: &[Sample]) -> bool {
    let mut first = std::collections::BTreeMap::new();
    for sample in samples {
        let earliest = first.entry(sample.worker).or_insert(sample.start);
        *earliest = (*earliest).min(sample.start);
    }
    samples
        .iter()
        .any(|s| s.fresh_connection && first.get(&s.worker) != Some(&s.start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use handover_loadgen::{Failure, FailureKind, Outcome};

    fn fresh(end_ms: u64, ok: bool) -> Sample {
        fresh_on(0, end_ms, ok)
    }

    fn fresh_on(worker: usize, end_ms: u64, ok: bool) -> Sample {
        let outcome = if ok {
            Outcome::Success { status: 200 }
        } else {
            Outcome::Failure(Failure::new(FailureKind::Refused, "refused"))
        };
        Sample {
            worker,
            start: Duration::from_millis(end_ms - 1),
            latency: Duration::from_millis(1),
            outcome,
            fresh_connection: true,
            pid: None,
            generation: None,
        }
    }

    #[test]
    fn gaps_between_fresh_successes_and_to_a_trailing_failure() {
        let d = Duration::from_millis;
        let samples = [
            fresh(10, true),
            fresh(20, true),
            fresh(320, false),
            fresh(350, true),
        ];
        assert_eq!(longest_gap(&samples), Some((d(20), d(350))));
        let samples = [fresh(10, true), fresh(20, true), fresh(500, false)];
        assert_eq!(longest_gap(&samples), Some((d(20), d(500))));
        assert_eq!(longest_gap(&[fresh(10, true)]), None);
    }

    #[test]
    fn none_when_only_the_first_connections_were_opened() {
        let mut reused = fresh_on(0, 900, true);
        reused.fresh_connection = false;
        let samples = [fresh_on(0, 10, true), fresh_on(1, 11, true), reused];
        assert_eq!(longest_gap(&samples), None);
        let samples = [
            fresh_on(0, 10, true),
            fresh_on(1, 11, true),
            fresh_on(1, 900, true),
        ];
        let d = Duration::from_millis;
        assert_eq!(longest_gap(&samples), Some((d(11), d(900))));
    }
}
