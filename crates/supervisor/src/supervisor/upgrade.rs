//! Starting a child, and an upgrade's way through: start, readiness verdict,
//! then commit (steer, and stop the old child once it has taken what was queued
//! for it) or rollback.

use std::os::fd::AsFd;
use std::time::Instant;

use handover_mechanism::notify::NotifyState;

use super::{done, say, Client, Draining, Next, Purpose, Stage, Starting, Supervisor};
use super::{FIRST_BACKOFF, HANDOFF_LIMIT};
use crate::config::ReadyMode;
use crate::generation::Generation;
use crate::metrics::{Outcome, Reason};
use crate::readiness;

/// A new child that was not committed: why, and the upgrade's client if it
/// was an upgrade's.
pub(super) struct StartFailed {
    message: String,
    reason: Reason,
    upgrade: Option<Client>,
}

impl Supervisor {
    /// Starts a child for `purpose` and the task that waits for its readiness.
    pub(super) fn start(&mut self, purpose: Purpose) -> std::io::Result<u32> {
        let number = self.next_number;
        self.next_number += 1;
        // An upgrade's child gets sockets of its own; a first or restarted child
        // those that new connections go to.
        let upgrade = matches!(purpose, Purpose::Upgrade { .. });
        let epoch = if upgrade {
            self.listeners.open_epoch(number).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot open the new child's sockets: {e}"),
                )
            })?;
            number
        } else {
            self.listeners.target(number)
        };
        let started = self.listeners.for_epoch(epoch).and_then(|sockets| {
            let sockets: Vec<(&str, std::os::fd::BorrowedFd<'_>)> = sockets
                .iter()
                .map(|(name, fd)| (name.as_str(), fd.as_fd()))
                .collect();
            let notify = self.config.ready == ReadyMode::Notify;
            Generation::start(number, epoch, &self.config.command, &sockets, notify)
        });
        if started.is_err() && upgrade {
            self.listeners.release(epoch);
        }
        let generation = started.map_err(|e| {
            let command = self
                .config
                .command
                .first()
                .map(|c| c.to_string_lossy().into_owned());
            std::io::Error::new(
                e.kind(),
                format!("cannot start {}: {e}", command.unwrap_or_default()),
            )
        })?;
        let pid = generation.pid();
        let socket = generation
            .notify
            .as_ref()
            .and_then(|n| n.socket().try_clone().ok());
        let (mode, probe) = (self.config.ready.clone(), self.listeners.probe());
        let routes = self.probe_routes.clone();
        let ready = tokio::spawn(async move {
            readiness::wait(&mode, pid, epoch, socket.as_ref(), probe, routes).await
        });
        tracing::info!(pid, generation = number, "child started");
        self.starting = Some(Starting {
            generation,
            purpose,
            deadline: Instant::now() + self.config.ready_timeout,
            ready,
        });
        Ok(pid)
    }

    pub(super) fn upgrade(&mut self, client: Client) {
        let refusal = if let Some(refusal) = self.slot().upgrade_refusal() {
            Some(refusal)
        } else if self.draining.len() >= self.config.max_draining {
            let pids: Vec<String> = self
                .draining
                .iter()
                .map(|d| d.generation.pid().to_string())
                .collect();
            Some((
                Reason::MaxDraining,
                format!(
                    "{} old child(ren) still draining (pid {}), and --max-draining is {}; try again when they exit",
                    self.draining.len(),
                    pids.join(", "),
                    self.config.max_draining
                ),
            ))
        } else {
            None
        };
        if let Some((reason, message)) = refusal {
            tracing::warn!(%message, "upgrade refused");
            crate::metrics::get().upgrade(Outcome::Refused, reason);
            done(&client, false, format!("upgrade refused: {message}"));
            return;
        }
        self.notify_upstream(&handover_mechanism::notify::reloading());
        let client_for_start = client.clone();
        match self.start(Purpose::Upgrade {
            client: client_for_start,
        }) {
            Ok(pid) => {
                let number = self.next_number - 1;
                say(
                    &client,
                    format!("new pid {pid} started (generation {number})"),
                );
            }
            Err(error) => {
                tracing::error!(%error, "upgrade failed");
                self.upgrade_failed(&client, Reason::SpawnFailed, error.to_string());
            }
        }
    }

    pub(super) fn commit(&mut self) {
        let Some(starting) = self.starting.take() else {
            return;
        };
        let mut generation = starting.generation;
        let took = generation.started.elapsed();
        generation.ready_at = Some(Instant::now());
        let pid = generation.pid();
        tracing::info!(pid, after = ?took, "child ready");
        self.backoff = FIRST_BACKOFF;
        self.respawn_at = None; // a child is serving again
        match starting.purpose {
            Purpose::First | Purpose::Respawn => {
                self.current = Some(generation);
                // Recovering from a crash: our own child serves, the
                // predecessor's may go.
                self.stop_orphans(false);
            }
            Purpose::Upgrade { client } => {
                // First thing: from now on new connections go to the new child.
                self.steer_to(generation.epoch);
                crate::metrics::get().ready_after(took);
                say(
                    &client,
                    format!("new pid {pid} ready after {:.2}s", took.as_secs_f64()),
                );
                let old = self.current.replace(generation);
                match old {
                    Some(old) => {
                        let old_pid = old.pid();
                        self.record_upgrade(
                            Outcome::Ok,
                            Reason::Ready,
                            format!(
                                "pid {old_pid} → {pid}, ready after {:.2}s",
                                took.as_secs_f64()
                            ),
                        );
                        if let Some(record) = self.upgrades.back_mut() {
                            record.old_pid = Some(old_pid);
                        }
                        let probation = self.config.probation;
                        if !probation.is_zero() {
                            say(
                                &client,
                                format!(
                                    "new pid {pid} on probation for {}: old pid {old_pid} keeps its \
                                     socket and connections, and serves again if it exits",
                                    humantime::format_duration(probation)
                                ),
                            );
                        }
                        self.draining.push(Draining::new(
                            old,
                            probation,
                            self.config.drain_timeout,
                            client,
                        ));
                        self.advance_draining();
                    }
                    None => {
                        self.release_unused_epochs();
                        self.record_upgrade(
                            Outcome::Ok,
                            Reason::Ready,
                            format!("pid {pid} ready (the old child had exited)"),
                        );
                        done(&client, true, format!("new pid {pid} serving"));
                    }
                }
            }
        }
        self.notify_upstream(&[NotifyState::Ready]);
    }

    /// The starting child is not committed: kill it (unless it already exited
    /// and was reaped) at once; why, with its last stderr lines, is reported
    /// by a task once they are read (at most 500 ms: the event loop does not
    /// wait for a pipe) — see [`Supervisor::start_failed`].
    pub(super) fn fail_starting(&mut self, reason: Reason, why: String, reaped: bool) {
        let Some(starting) = self.starting.take() else {
            return;
        };
        starting.ready.abort();
        let mut generation = starting.generation;
        let pid = generation.pid();
        if !reaped {
            generation.child.kill_and_reap();
        }
        self.release_unused_epochs();
        let upgrade = match starting.purpose {
            Purpose::Upgrade { client } => Some(client),
            Purpose::First | Purpose::Respawn => {
                self.schedule_respawn();
                None
            }
        };
        let reports = self.start_failures.clone();
        self.failures_pending += 1;
        tokio::spawn(async move {
            let tail = generation.stderr_tail().await;
            let mut message = format!("new pid {pid} {why}");
            if !tail.is_empty() {
                message.push_str("; last lines of its stderr:\n  ");
                message.push_str(&tail.join("\n  "));
            }
            let _ = reports.send(StartFailed {
                message,
                reason,
                upgrade,
            });
        });
    }

    /// The report of [`Supervisor::fail_starting`].
    pub(super) fn start_failed(&mut self, failed: StartFailed) {
        self.failures_pending -= 1;
        tracing::error!(message = %failed.message, "child not ready");
        if let Some(client) = failed.upgrade {
            self.upgrade_failed(&client, failed.reason, failed.message);
        }
    }

    /// Records a failed upgrade and tells the client and systemd; the old child
    /// was never touched.
    fn upgrade_failed(&mut self, client: &Client, reason: Reason, message: String) {
        self.record_upgrade(Outcome::Failed, reason, message.clone());
        let reply = format!("upgrade failed: {message}\nthe old child keeps serving");
        done(client, false, reply);
        self.notify_upstream(&[NotifyState::Ready]);
    }

    /// Moves every old child on as [`Stage::next`] says: out of probation,
    /// through the hand-off of what was queued for it (new connections go to the
    /// new child) and the rescue's hold, to the stop signal; killed at the drain
    /// deadline.
    pub(super) fn advance_draining(&mut self) {
        for at in 0..self.draining.len() {
            loop {
                let draining = &self.draining[at];
                let epoch = draining.generation.epoch;
                let queued = match draining.stage {
                    Stage::HandingOff { .. } => self.listeners.queued(epoch),
                    _ => 0,
                };
                let now = Instant::now();
                let next = draining.stage.next(now, queued, draining.deadline);
                let pid = draining.generation.pid();
                match next {
                    Next::Wait => break,
                    Next::HandOff => {
                        self.draining[at].stage = Stage::HandingOff {
                            until: now + HANDOFF_LIMIT,
                        };
                    }
                    Next::TakeConnections => {
                        if queued > 0 {
                            tracing::warn!(
                                pid,
                                queued,
                                "old child has not accepted every connection queued for it; \
                                 stopping it anyway"
                            );
                        }
                        let capturing = !self.stopping && self.start_capture(pid);
                        self.draining[at].stage = if capturing {
                            Stage::Capturing
                        } else {
                            Stage::Settling { until: now }
                        };
                    }
                    Next::Stop => {
                        let draining = &mut self.draining[at];
                        draining.stage = Stage::Stopped;
                        if let Err(error) =
                            draining.generation.child.signal(self.config.stop_signal)
                        {
                            tracing::warn!(%error, pid, "cannot signal the old child");
                        }
                        say(&draining.client, format!("old pid {pid} draining"));
                    }
                    Next::Kill => {
                        let draining = &mut self.draining[at];
                        draining.stage = Stage::Killed;
                        crate::metrics::get().killed_at_deadline();
                        tracing::warn!(
                            pid,
                            "old child still running at the drain deadline; killing it"
                        );
                        let _ = draining.generation.child.signal(libc::SIGKILL);
                        say(
                            &draining.client,
                            format!("old pid {pid} still running at the drain deadline: killed"),
                        );
                    }
                }
            }
        }
    }

    /// Closes the sockets of epochs no child holds any more (the old child's,
    /// once it is gone; a failed upgrade's).
    pub(super) fn release_unused_epochs(&mut self) {
        let live: Vec<u64> = self
            .current
            .iter()
            .chain(self.starting.as_ref().map(|s| &s.generation))
            .chain(self.draining.iter().map(|d| &d.generation))
            .map(|g| g.epoch)
            .collect();
        for epoch in self.listeners.epochs() {
            if !live.contains(&epoch) {
                self.listeners.release(epoch);
            }
        }
    }
}
