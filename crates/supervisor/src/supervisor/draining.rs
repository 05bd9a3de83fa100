//! An old child after an upgrade, stage by stage, until it exits.
//!
//! ```text
//!  commit ─▶ Probation ──window over──▶ HandingOff ──queue empty / HANDOFF_LIMIT──▶ Capturing ──rescue off──┐
//!               │                                                                      │ captured         │
//!               │ new child exits: rollback,                                           ▼ (held or none)   │
//!               │ this one is current again                                        Settling ──────────────┤
//!               ▼                                                            settled / limit              ▼
//!            (Current)                                                                                 Stopped
//!                         any stage ──drain deadline──▶ Killed
//! ```
//!
//! - **Probation**: the new child is on probation (`--probation`). This one
//!   keeps its own socket and its connections, gets no new connection (they
//!   are steered to the new child), and is not told to stop. If the new child
//!   exits inside the window, connections are steered back here at once:
//!   nobody waits for a fresh start-up.
//! - **HandingOff**: it accepts what was queued for it before the new child was
//!   ready; the stop signal waits for that, at most [`super::HANDOFF_LIMIT`].
//! - **Capturing**: its connections are being taken for the keep-alive
//!   rescue, on a blocking task (it reads `/proc`); the stop signal waits for
//!   the result (`Event::Captured`), or the drain deadline.
//! - **Settling**: its connections are held for the keep-alive rescue; the
//!   stop signal waits until they are between requests (the watch says so), or
//!   a limit.
//! - **Stopped**: told to stop; it drains as it decides.
//! - **Killed**: still there at the drain deadline, SIGKILLed.
//!
//! [`Stage::next`] is the whole rule, one match; the event loop only carries
//! out what it says.

use std::time::{Duration, Instant};

use super::Client;
use crate::generation::Generation;
use crate::rescue;

/// One old child and where it stands.
pub(super) struct Draining {
    pub generation: Generation,
    pub stage: Stage,
    /// Its client connections, held for the keep-alive rescue.
    pub rescue: Rescue,
    /// When it stopped being current.
    pub since: Instant,
    /// Killed if still running then.
    pub deadline: Instant,
    /// The upgrade's client, told how it ends.
    pub client: Client,
}

/// Where an old child is on its way out (the diagram above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// The new child is on probation until then.
    Probation { until: Instant },
    /// Accepting what was queued for it, until then at most.
    HandingOff { until: Instant },
    /// Its connections are being taken for the rescue (off the loop).
    Capturing,
    /// Its connections are held; the stop signal waits until then at most.
    Settling { until: Instant },
    /// The stop signal was sent.
    Stopped,
    /// Killed at the drain deadline (or by a fast stop).
    Killed,
}

/// What the event loop does next with an old child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Nothing yet.
    Wait,
    /// The probation is over: it may hand off and be stopped.
    HandOff,
    /// Take its connections for the rescue (or skip it), then stop it.
    TakeConnections,
    /// Send the stop signal.
    Stop,
    /// Kill it: the drain deadline has passed.
    Kill,
}

/// Where the keep-alive rescue of one old child stands.
pub(super) enum Rescue {
    /// Not taken (yet, or at all: off, stopping, not permitted).
    NotTaken,
    /// A watch task holds its connections.
    Watching,
    /// Every connection is accounted for.
    Done(rescue::Counts),
}

impl Stage {
    /// The rule: what to do with an old child in this stage, `queued`
    /// connections still waiting in its accept queue, past its `deadline` or not.
    pub fn next(self, now: Instant, queued: u32, deadline: Instant) -> Next {
        if deadline <= now && self != Stage::Killed {
            return Next::Kill;
        }
        match self {
            Stage::Probation { until } if now < until => Next::Wait,
            Stage::Probation { .. } => Next::HandOff,
            Stage::HandingOff { until } if queued > 0 && now < until => Next::Wait,
            Stage::HandingOff { .. } => Next::TakeConnections,
            Stage::Capturing => Next::Wait,
            Stage::Settling { until } if now < until => Next::Wait,
            Stage::Settling { .. } => Next::Stop,
            Stage::Stopped | Stage::Killed => Next::Wait,
        }
    }

    /// When [`Stage::next`] may change its answer by itself (a deadline).
    pub fn wakes_at(self, deadline: Instant) -> Option<Instant> {
        match self {
            Stage::Probation { until } | Stage::Settling { until } => Some(until.min(deadline)),
            // The accept queue is polled: it empties without an event.
            Stage::HandingOff { .. } => Some(Instant::now() + super::HANDOFF_POLL),
            Stage::Capturing | Stage::Stopped => Some(deadline),
            Stage::Killed => None,
        }
    }
}

impl Draining {
    /// An old child just replaced by a ready new one: on probation for
    /// `probation` (none if zero), killed `drain_timeout` after that.
    pub fn new(
        generation: Generation,
        probation: Duration,
        drain_timeout: Duration,
        client: Client,
    ) -> Self {
        let now = Instant::now();
        Draining {
            generation,
            stage: Stage::Probation {
                until: now + probation,
            },
            rescue: Rescue::NotTaken,
            since: now,
            deadline: now + probation + drain_timeout,
            client,
        }
    }

    /// Ends the probation and any wait now (the supervisor is stopping).
    pub fn hurry(&mut self) {
        let now = Instant::now();
        self.stage = match self.stage {
            Stage::Probation { .. } | Stage::HandingOff { .. } => Stage::HandingOff { until: now },
            Stage::Settling { .. } => Stage::Settling { until: now },
            done => done,
        };
    }
}

/// The old child to roll back to when the current one exits: the newest one
/// still on probation (`None`: restart with backoff, as after any crash).
pub(super) fn rollback_target(stages: impl Iterator<Item = Stage>) -> Option<usize> {
    stages
        .enumerate()
        .filter(|(_, stage)| matches!(stage, Stage::Probation { .. }))
        .map(|(at, _)| at)
        .last()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(now: Instant, ms: u64) -> Instant {
        now + Duration::from_millis(ms)
    }

    #[test]
    fn probation_holds_the_stop_signal_until_the_window_is_over() {
        let now = Instant::now();
        let stage = Stage::Probation {
            until: at(now, 100),
        };
        let deadline = at(now, 10_000);
        assert_eq!(stage.next(now, 0, deadline), Next::Wait);
        assert_eq!(stage.next(at(now, 99), 0, deadline), Next::Wait);
        assert_eq!(stage.next(at(now, 100), 0, deadline), Next::HandOff);
        assert_eq!(stage.wakes_at(deadline), Some(at(now, 100)));
    }

    #[test]
    fn hand_off_waits_for_the_queue_or_the_limit() {
        let now = Instant::now();
        let stage = Stage::HandingOff { until: at(now, 50) };
        let deadline = at(now, 10_000);
        assert_eq!(stage.next(now, 3, deadline), Next::Wait);
        assert_eq!(stage.next(now, 0, deadline), Next::TakeConnections);
        assert_eq!(stage.next(at(now, 50), 3, deadline), Next::TakeConnections);
    }

    #[test]
    fn a_capture_under_way_waits_for_its_result_or_the_deadline() {
        let now = Instant::now();
        let deadline = at(now, 1_000);
        assert_eq!(Stage::Capturing.next(now, 0, deadline), Next::Wait);
        assert_eq!(Stage::Capturing.wakes_at(deadline), Some(deadline));
        assert_eq!(Stage::Capturing.next(deadline, 0, deadline), Next::Kill);
    }

    #[test]
    fn held_connections_delay_the_stop_until_settled_or_the_limit() {
        let now = Instant::now();
        let stage = Stage::Settling {
            until: at(now, 300),
        };
        let deadline = at(now, 10_000);
        assert_eq!(stage.next(now, 0, deadline), Next::Wait);
        assert_eq!(stage.next(at(now, 300), 0, deadline), Next::Stop);
    }

    #[test]
    fn the_drain_deadline_kills_in_every_stage_but_once() {
        let now = Instant::now();
        let later = at(now, 1_000);
        for stage in [
            Stage::Probation { until: later },
            Stage::HandingOff { until: later },
            Stage::Capturing,
            Stage::Settling { until: later },
            Stage::Stopped,
        ] {
            assert_eq!(stage.next(now, 5, now), Next::Kill, "{stage:?}");
        }
        assert_eq!(Stage::Killed.next(now, 0, now), Next::Wait);
        assert_eq!(Stage::Killed.wakes_at(now), None);
    }

    #[test]
    fn a_stopped_child_only_waits_for_its_deadline() {
        let now = Instant::now();
        assert_eq!(Stage::Stopped.next(now, 0, at(now, 5)), Next::Wait);
        assert_eq!(Stage::Stopped.wakes_at(at(now, 5)), Some(at(now, 5)));
    }

    #[test]
    fn rollback_goes_to_the_newest_child_on_probation() {
        let now = Instant::now();
        let on = Stage::Probation { until: now };
        assert_eq!(
            rollback_target([Stage::Stopped, on, on].into_iter()),
            Some(2)
        );
        assert_eq!(rollback_target([on, Stage::Stopped].into_iter()), Some(0));
        assert_eq!(
            rollback_target([Stage::Stopped, Stage::Killed].into_iter()),
            None
        );
        assert_eq!(rollback_target(std::iter::empty()), None);
    }
}
