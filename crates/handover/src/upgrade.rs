//! The upgrade state machine.
//!
//! ```text
//!             ready()            upgrade()                 READY=1
//!  Starting ─────────▶ Serving ───────────▶ Upgrading ──────────────▶ Draining(Upgraded)
//!      │                 ▲  │  (spawning,       │                         │
//!      │                 │  │   waiting ready)  │ exited / killed /       │ connections = 0
//!      │                 │  │                   │ timeout / stop          │ or deadline
//!      │                 └──┼───────────────────┘ (kill, reap: rollback)  ▼
//!      │                    │ stop()                                    exit
//!      └────────────────────┴──────────────────▶ Draining(Stop | Exit) ──▶ exit
//! ```
//!
//! While `Upgrading`, both processes accept on the same sockets, so there is no
//! accept gap. Only one upgrade runs at a time; a second request gets
//! [`Error::UpgradeInProgress`]. On rollback the old process never stopped
//! accepting, so it simply goes on. On commit it writes the successor's pid to the
//! PID file, tells systemd `MAINPID=<successor>` + `READY=1`, and only then issues
//! the drain order (after which the application may exit at any moment) and drops
//! its copies of the sockets.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::child::{self, Child, ExitStatus};
use crate::handover::Inner;
use crate::notify::NotifyReceiver;
use crate::protocol::{
    HANDOVER_GENERATION, HANDOVER_PARENT_PID, HANDOVER_STATE, HANDOVER_UPSTREAM_NOTIFY_SOCKET,
    NOTIFY_SOCKET, STATE_FD_NAME, TAKEOVER_FD_NAME,
};
use crate::{pidfile, DrainOrder, DrainReason, Error, Handover, Result, SuccessorFailure};

/// Where a process is in its life; see [`Handover::phase`] and the state machine
/// in `docs/ARCHITECTURE.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Claiming sockets, not yet ready.
    Starting,
    /// Ready and serving; an upgrade may start.
    Serving,
    /// A successor is starting; both processes accept.
    Upgrading {
        /// The successor's pid (0 until it is forked).
        successor: u32,
    },
    /// No longer accepting.
    Draining(DrainReason),
}

/// How often the wait for readiness also checks whether the successor exited or
/// this process is stopping. Readiness itself is seen at once.
const POLL_SLICE: Duration = Duration::from_millis(20);

impl Handover {
    /// Where this process is in its life.
    pub fn phase(&self) -> Phase {
        *self.inner.phase()
    }

    /// Upgrades this process: starts the new version with the named sockets, waits
    /// until it says `READY=1` (both accept meanwhile), then commits — this process
    /// is told to drain through [`crate::DrainSignal`] — and returns the
    /// successor's pid.
    ///
    /// If the successor exits, is killed, or is not ready within the ready timeout,
    /// it is killed and reaped, this process goes on serving, and the error says
    /// why. Blocks for up to the ready timeout; from async code use
    /// `upgrade_async` (feature `tokio`).
    pub fn upgrade(&self) -> Result<u32> {
        let inner = &*self.inner;
        {
            let mut phase = inner.phase();
            match *phase {
                Phase::Serving => *phase = Phase::Upgrading { successor: 0 },
                Phase::Starting => return Err(Error::NotReady),
                Phase::Upgrading { successor } => return Err(Error::UpgradeInProgress(successor)),
                Phase::Draining(reason) => return Err(Error::Draining(reason)),
            }
        }
        tracing::info!(program = %inner.program.path.display(), "upgrade: starting successor");
        inner.upstream.notify(&reloading());
        let result = run(inner);
        if result.is_err() {
            let mut phase = inner.phase();
            if matches!(*phase, Phase::Upgrading { .. }) {
                *phase = Phase::Serving;
                inner.upstream.notify(&[NotifyState::Ready]);
            }
        }
        result
    }
}

pub(crate) fn reloading() -> Vec<NotifyState<'static>> {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    states
}

fn run(inner: &Inner) -> Result<u32> {
    let receiver =
        NotifyReceiver::create().map_err(|e| Error::io("creating the notify socket", e))?;
    let mut link = vec![
        (NOTIFY_SOCKET, receiver.path().as_os_str().to_owned()),
        (HANDOVER_PARENT_PID, std::process::id().to_string().into()),
        (
            HANDOVER_GENERATION,
            (inner.generation + 1).to_string().into(),
        ),
    ];
    if let Some(upstream) = &inner.upstream.0 {
        link.push((HANDOVER_UPSTREAM_NOTIFY_SOCKET, upstream.clone()));
    }
    // The state as it is now, in a sealed memfd passed among the fds.
    let state = inner.state_to_hand_over();
    let state_fd = if state.is_empty() {
        None
    } else {
        link.push((HANDOVER_STATE, crate::state::describe(&state).into()));
        Some(
            handover_wire::state::sealed(&state)
                .map_err(|e| Error::io("putting the state in a memfd", e))?,
        )
    };
    let takeover = inner.takeover_socket();
    let successor = {
        let registry = inner.registry();
        let mut fds = registry.handoff();
        if let Some(listener) = &takeover {
            fds.push((TAKEOVER_FD_NAME, listener.socket()));
        }
        if let Some(fd) = &state_fd {
            fds.push((STATE_FD_NAME, fd.as_fd()));
        }
        child::spawn(&inner.program, &fds, &link).map_err(|source| Error::Spawn {
            program: inner.program.path.clone(),
            source,
        })?
    };
    drop(state_fd);
    let pid = successor.pid();
    {
        let mut phase = inner.phase();
        if let Phase::Upgrading { successor } = &mut *phase {
            *successor = pid;
        }
    }
    tracing::info!(successor = pid, "upgrade: waiting for READY=1");
    let started = Instant::now();
    match wait_ready(
        inner,
        &successor,
        &receiver,
        started + inner.config.ready_timeout,
    ) {
        Ok(()) => {}
        Err(Some(why))
            if matches!(
                why,
                SuccessorFailure::Exited(_) | SuccessorFailure::Signaled(_)
            ) =>
        {
            return Err(Error::SuccessorFailed { pid, why });
        }
        Err(why) => {
            successor.kill_and_reap();
            let why = why.unwrap_or(SuccessorFailure::Timeout(inner.config.ready_timeout));
            return Err(Error::SuccessorFailed { pid, why });
        }
    }
    commit(inner, successor, started.elapsed())
}

/// Waits for `READY=1`. `Err(Some(Exited|Signaled))` means the successor is gone
/// and reaped; any other error means it must be killed.
fn wait_ready(
    inner: &Inner,
    successor: &Child,
    receiver: &NotifyReceiver,
    deadline: Instant,
) -> std::result::Result<(), Option<SuccessorFailure>> {
    loop {
        if let Some(gone) = successor.exited().map_err(|_| None)? {
            return Err(Some(gone.into()));
        }
        if inner.drain.is_draining() {
            return Err(Some(SuccessorFailure::Aborted));
        }
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return Err(None);
        };
        match receiver.recv(left.min(POLL_SLICE)) {
            Ok(Some(Ok(message))) if message.is_ready() => return Ok(()),
            Ok(Some(Ok(message))) => {
                tracing::debug!(pid = successor.pid(), %message, "successor says")
            }
            Ok(Some(Err(error))) => {
                tracing::warn!(pid = successor.pid(), %error, "malformed notify message ignored")
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!(%error, "notify socket failed");
                return Err(None);
            }
        }
    }
}

fn commit(inner: &Inner, successor: Child, took: Duration) -> Result<u32> {
    let pid = successor.pid();
    let phase = inner.phase();
    if let Some(exited) = successor.exited().ok().flatten() {
        return Err(Error::SuccessorFailed {
            pid,
            why: exited.into(),
        });
    }
    // A stop that arrived while we waited wins: the successor is not committed.
    if inner.drain.is_draining() {
        drop(phase);
        successor.kill_and_reap();
        return Err(Error::SuccessorFailed {
            pid,
            why: SuccessorFailure::Aborted,
        });
    }
    commit_to(inner, phase, pid, took);
    Ok(pid)
}

/// Commits a hand-over to `pid` (a re-exec'd successor or a process that took
/// over), with the phase lock held: PID file and `MAINPID` first, then the
/// drain order, then this process's copies of the sockets go.
pub(crate) fn commit_to(
    inner: &Inner,
    mut phase: std::sync::MutexGuard<'_, Phase>,
    pid: u32,
    took: Duration,
) {
    // Everything that must outlive this process happens before the drain order:
    // once drained, the application may exit at any moment. systemd in
    // particular must learn the new main pid before the old one exits.
    if let Some(path) = &inner.config.pid_file {
        write_pid_file(path, pid);
    }
    inner
        .upstream
        .notify(&[NotifyState::MainPid(pid), NotifyState::Ready]);
    let reason = DrainReason::Upgraded { successor: pid };
    *phase = Phase::Draining(reason);
    inner.drain.issue(DrainOrder {
        reason,
        deadline: Instant::now() + inner.config.drain_timeout,
    });
    drop(phase);
    inner.registry().release();
    tracing::info!(successor = pid, ready_after = ?took, "hand-over committed; draining");
}

fn write_pid_file(path: &Path, pid: u32) {
    if let Err(error) = pidfile::write(path, pid) {
        tracing::error!(%error, path = %path.display(), "cannot write PID file");
    }
}

impl From<ExitStatus> for SuccessorFailure {
    fn from(status: ExitStatus) -> Self {
        match status {
            ExitStatus::Code(code) => SuccessorFailure::Exited(code),
            ExitStatus::Signal(signal) => SuccessorFailure::Signaled(signal),
        }
    }
}
