//! Taking an old child's connections for the keep-alive rescue, off the
//! event loop: the capture reads `/proc` (the child's and its descendants'
//! fds) and duplicates each connection with `pidfd_getfd`, which takes
//! milliseconds for a busy child, so it runs on a blocking task and reports
//! back as `Event::Captured`. Meanwhile the old child waits in
//! `Stage::Capturing`: it is told to stop only once its connections are held
//! (or known not to be), since a child told first would close them.

use std::time::{Duration, Instant};

use super::{Rescue, Stage, Supervisor};
use crate::rescue;

/// What a capture found, for the old child `pid`.
pub(super) struct CaptureDone {
    pid: u32,
    targets: Vec<rescue::Target>,
    settings: rescue::Settings,
    started: Instant,
    result: Result<Option<rescue::Captured>, String>,
}

impl Supervisor {
    /// Starts capturing the old child's client connections, just before its
    /// stop signal. `false`: nothing to wait for (the rescue is off).
    pub(super) fn start_capture(&mut self, pid: u32) -> bool {
        let Some(settings) = self.config.rescue else {
            return false;
        };
        let targets = self.listeners.rescue_targets();
        let in_use = self.rescue_in_use.clone();
        let reports = self.captures.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let result = rescue::capture(pid, &targets, settings, &in_use);
            let _ = reports.send(CaptureDone {
                pid,
                targets,
                settings,
                started,
                result,
            });
        });
        true
    }

    /// The capture of an old child is done: its connections are watched (if
    /// any were taken), and it moves on to its stop signal.
    pub(super) fn captured(&mut self, done: CaptureDone) {
        let CaptureDone {
            pid,
            targets,
            settings,
            started,
            result,
        } = done;
        // Gone or killed meanwhile: dropping the capture lets its
        // connections go, untouched.
        let Some(at) = self
            .draining
            .iter()
            .position(|d| d.generation.pid() == pid && d.stage == Stage::Capturing)
        else {
            return;
        };
        let held = match result {
            // A stop came meanwhile: no rescue (dropping the capture lets
            // the connections go, their data flowing again).
            Ok(Some(_)) if self.stopping => false,
            Ok(None) => {
                self.draining[at].rescue = Rescue::Done(rescue::Counts::default());
                false
            }
            Ok(Some(captured)) => {
                tracing::info!(
                    pid,
                    held = captured.held.len(),
                    took = ?started.elapsed(),
                    "holding the old child's connections for rescue"
                );
                tokio::spawn(rescue::watch(
                    pid,
                    captured,
                    targets,
                    settings,
                    self.draining[at].deadline,
                    self.rescue_in_use.clone(),
                    self.rescue_reports.clone(),
                ));
                true
            }
            Err(why) => {
                if std::mem::replace(&mut self.rescue_refusal_logged, true) {
                    tracing::debug!(pid, %why, "no keep-alive rescue");
                } else {
                    tracing::warn!(
                        pid,
                        %why,
                        "no keep-alive rescue (logged once): the old child's idle connections \
                         close as it decides"
                    );
                }
                false
            }
        };
        let draining = &mut self.draining[at];
        let now = Instant::now();
        draining.stage = if held {
            draining.rescue = Rescue::Watching;
            // A little longer than the watch waits: its word comes first.
            Stage::Settling {
                until: now + Duration::from_millis(300),
            }
        } else {
            Stage::Settling { until: now }
        };
        self.advance_draining();
    }
}
