//! The children a crashed predecessor left behind (see [`crate::recovery`]),
//! and the state file that makes recovering them possible.
//!
//! Orphans are not this process's children: no `SIGCHLD`, no `waitpid`. They
//! are looked at on each tick instead (every [`ORPHAN_POLL`] while any is
//! left): stopped once this supervisor's own child is ready, killed at the
//! drain deadline.

use std::time::{Duration, Instant};

use super::Supervisor;
use crate::recovery::{self, Process, State};

/// How often orphans are looked at.
pub(super) const ORPHAN_POLL: Duration = Duration::from_millis(50);

/// A child of the crashed predecessor.
pub(super) struct Orphan {
    pub process: Process,
    /// Killed if still running then (set when the stop signal goes).
    pub deadline: Option<Instant>,
}

impl Supervisor {
    /// A child of ours is ready: the orphans may go. Sends them the stop signal.
    pub(super) fn stop_orphans(&mut self, fast: bool) {
        let signal = if fast {
            libc::SIGKILL
        } else {
            self.config.stop_signal
        };
        for orphan in &mut self.orphans {
            if orphan.deadline.is_some() && !fast {
                continue;
            }
            orphan.deadline = Some(Instant::now() + self.config.drain_timeout);
            if orphan.process.alive() {
                tracing::info!(
                    pid = orphan.process.pid,
                    "stopping a child the previous supervisor left"
                );
                send(orphan.process.pid, signal);
            }
        }
    }

    /// Forgets the orphans that are gone; kills those past their deadline.
    pub(super) fn check_orphans(&mut self) {
        let now = Instant::now();
        self.orphans.retain_mut(|orphan| {
            if !orphan.process.alive() {
                tracing::info!(
                    pid = orphan.process.pid,
                    "a child the previous supervisor left is gone"
                );
                return false;
            }
            if orphan.deadline.is_some_and(|at| at <= now) {
                tracing::warn!(
                    pid = orphan.process.pid,
                    "orphan still running at the drain deadline; killing it"
                );
                send(orphan.process.pid, libc::SIGKILL);
                orphan.deadline = Some(now + ORPHAN_POLL);
            }
            true
        });
    }

    /// Writes the state file if what it says has changed.
    pub(super) fn save_state(&mut self) {
        let Some(supervisor) = Process::of(std::process::id()) else {
            return;
        };
        let children = self
            .current
            .iter()
            .chain(self.starting.as_ref().map(|s| &s.generation))
            .chain(self.draining.iter().map(|d| &d.generation))
            .filter_map(|g| Process::of(g.pid()))
            .chain(self.orphans.iter().map(|o| o.process))
            .collect();
        let state = State {
            supervisor,
            children,
            sockets: self.listeners.inodes(),
        };
        if self.saved.as_ref() == Some(&state) {
            return;
        }
        let path = recovery::state_path(&self.config.control);
        match recovery::write(&path, &state) {
            Ok(()) => self.saved = Some(state),
            Err(error) => {
                tracing::warn!(%error, path = %path.display(), "cannot write the state file (crash recovery)")
            }
        }
    }
}

fn send(pid: u32, signal: i32) {
    let signal = rustix::process::Signal::from_named_raw(signal);
    if let (Some(pid), Some(signal)) = (rustix::process::Pid::from_raw(pid as i32), signal) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}
