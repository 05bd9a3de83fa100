//! Upgrade windows, and which requests started inside one.
//!
//! An upgrade window runs from the start of an upgrade command until the later
//! of (its exit) and (the first successful response from a pid or generation
//! not seen before the command started — when the server tells who answers),
//! plus `--window-tail`. A request belongs to an upgrade window if it
//! *started* inside one; every other request is steady.
//!
//! The new answer is looked for among responses that arrive after the command
//! started and before the next command starts, so that one upgrade's switch
//! is not credited to the next.

use std::collections::BTreeSet;
use std::time::Duration;

use handover_loadgen::Sample;

use super::upgrades::UpgradeRun;

/// The window of one upgrade.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub start: Duration,
    pub end: Duration,
    /// When the first successful response from a new pid/generation arrived,
    /// and who it came from (e.g. `generation 1, pid 4242`).
    pub first_new_answer: Option<(Duration, String)>,
}

/// When a sample's response (or failure) arrived.
pub fn end_of(sample: &Sample) -> Duration {
    sample.start + sample.latency
}

/// Who answered, for humans: `generation G, pid P`, either part if known.
pub fn who(sample: &Sample) -> Option<String> {
    match (&sample.generation, &sample.pid) {
        (Some(g), Some(p)) => Some(format!("generation {g}, pid {p}")),
        (Some(g), None) => Some(format!("generation {g}")),
        (None, Some(p)) => Some(format!("pid {p}")),
        (None, None) => None,
    }
}

/// The window of each upgrade (same order as `upgrades`, which are in start
/// order). `samples` may be in any order.
pub fn compute(upgrades: &[UpgradeRun], samples: &[Sample], tail: Duration) -> Vec<Window> {
    let mut by_end: Vec<&Sample> = samples.iter().collect();
    by_end.sort_by_key(|s| end_of(s));
    let mut seen_pids = BTreeSet::new();
    let mut seen_generations = BTreeSet::new();
    let mut next = 0;
    let mut windows = Vec::with_capacity(upgrades.len());
    for (i, upgrade) in upgrades.iter().enumerate() {
        // Everyone who answered before this command started.
        while let Some(sample) = by_end.get(next).filter(|s| end_of(s) < upgrade.started) {
            seen_pids.extend(sample.pid.clone());
            seen_generations.extend(sample.generation.clone());
            next += 1;
        }
        let until = upgrades.get(i + 1).map_or(Duration::MAX, |u| u.started);
        let first_new_answer = by_end[next..]
            .iter()
            .take_while(|s| end_of(s) < until)
            .find(|s| {
                s.is_success()
                    && (s.pid.as_ref().is_some_and(|p| !seen_pids.contains(p))
                        || s.generation
                            .as_ref()
                            .is_some_and(|g| !seen_generations.contains(g)))
            })
            .map(|s| (end_of(s), who(s).unwrap_or_default()));
        let over = first_new_answer
            .as_ref()
            .map_or(upgrade.finished, |(at, _)| (*at).max(upgrade.finished));
        windows.push(Window {
            start: upgrade.started,
            end: over + tail,
            first_new_answer,
        });
    }
    windows
}

/// The union of the windows, for classifying requests.
#[derive(Debug, Clone, Default)]
pub struct Union {
    /// Disjoint, sorted intervals `[start, end)`.
    spans: Vec<(Duration, Duration)>,
}

impl Union {
    pub fn new(windows: &[Window]) -> Union {
        let mut all: Vec<(Duration, Duration)> = windows.iter().map(|w| (w.start, w.end)).collect();
        all.sort();
        let mut spans: Vec<(Duration, Duration)> = Vec::new();
        for (start, end) in all {
            match spans.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => spans.push((start, end)),
            }
        }
        Union { spans }
    }

    /// Whether `at` lies inside an upgrade window.
    pub fn contains(&self, at: Duration) -> bool {
        let after = self.spans.partition_point(|(start, _)| *start <= at);
        after > 0 && at < self.spans[after - 1].1
    }

    /// Time covered by windows within `[0, until)`.
    pub fn covered(&self, until: Duration) -> Duration {
        self.spans
            .iter()
            .map(|(start, end)| (*end).min(until).saturating_sub(*start))
            .sum()
    }

    #[cfg(test)]
    pub fn spans(&self) -> &[(Duration, Duration)] {
        &self.spans
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::upgrades::Status;
    use handover_loadgen::Outcome;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn sample(start: u64, generation: &str) -> Sample {
        Sample {
            worker: 0,
            start: ms(start),
            latency: ms(1),
            outcome: Outcome::Success { status: 200 },
            fresh_connection: false,
            pid: None,
            generation: Some(generation.to_owned()),
        }
    }

    fn upgrade(index: u32, started: u64, finished: u64) -> UpgradeRun {
        UpgradeRun {
            index,
            started: ms(started),
            finished: ms(finished),
            status: Status::Exited(0),
            output: Vec::new(),
        }
    }

    #[test]
    fn window_ends_at_the_later_of_exit_and_new_answer_plus_tail() {
        let samples = [
            sample(100, "0"),
            sample(1100, "0"),
            sample(1300, "1"),
            sample(2100, "1"),
            sample(2300, "1"),
        ];
        let upgrades = [upgrade(1, 1000, 1010), upgrade(2, 2000, 2500)];
        let windows = compute(&upgrades, &samples, ms(100));
        assert_eq!(windows[0].start, ms(1000));
        assert_eq!(windows[0].end, ms(1401));
        assert_eq!(
            windows[0].first_new_answer,
            Some((ms(1301), "generation 1".to_owned()))
        );
        // No new generation after the second command: its exit ends it.
        assert_eq!(
            (windows[1].end, &windows[1].first_new_answer),
            (ms(2600), &None)
        );

        let union = Union::new(&windows);
        assert!(!union.contains(ms(999)));
        assert!(union.contains(ms(1000)) && union.contains(ms(1400)));
        assert!(!union.contains(ms(1401)) && union.contains(ms(2599)));
        assert_eq!(union.covered(ms(2500)), ms(401 + 500));
    }

    #[test]
    fn overlapping_windows_merge() {
        let windows = [
            Window {
                start: ms(0),
                end: ms(10),
                first_new_answer: None,
            },
            Window {
                start: ms(5),
                end: ms(20),
                first_new_answer: None,
            },
            Window {
                start: ms(30),
                end: ms(40),
                first_new_answer: None,
            },
        ];
        let union = Union::new(&windows);
        assert_eq!(union.spans(), [(ms(0), ms(20)), (ms(30), ms(40))]);
        assert_eq!(union.covered(ms(35)), ms(25));
    }
}
