//! The upgrade state machine: [`Phase`] and its transitions (its diagram is on
//! [`Phase`]), the re-exec upgrade, and the commit shared with the takeover.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::handover::Inner;
use crate::{DrainOrder, DrainReason, Error, Handover, Result, SuccessorFailure};
use handover_mechanism::child::{self, Child, ExitStatus};
use handover_mechanism::notify::NotifyReceiver;
use handover_mechanism::pidfile;
use handover_mechanism::protocol::{
    HANDOVER_GENERATION, HANDOVER_PARENT_PID, HANDOVER_STATE, HANDOVER_UPSTREAM_NOTIFY_SOCKET,
    MIGRATE_FD_NAME, NOTIFY_SOCKET, STATE_FD_NAME, TAKEOVER_FD_NAME,
};
use handover_wire::channel::Channel;

/// Where a process is in its life ([`Handover::phase`]).
///
/// ```text
///                  ready()            upgrade() / a takeover request      READY=1 / `ready`
///   Starting ─────────────▶ Serving ───────────────────────────▶ Upgrading ───────────────▶ Draining(Upgraded)
///      │                      ▲  │                                 │                            │
///      │                      │  │     rollback: exited / killed / │                            │ connections = 0
///      │                      ├──┼─── timeout / disconnected ──────┘                            │ or deadline,
///      │                      │  │   (keep serving)                                             │ and probation over
///      │                      └──┼──── the successor exits on probation ◀───────────────────────┤
///      │      stop() / SIGTERM   ▼                                                            exit
///      └────────────────────▶ Draining(Stop | Exit) ─── connections = 0 or deadline ────────▶ exit
///                                ▲
///      Upgrading ── stop() ──────┘   (successor killed and reaped: `Aborted`; a takeover: refused)
///
///   Serving ── reload() / `handover reload` ──▶ Reloading ── the hook returns ──▶ Serving
/// ```
///
/// While `Upgrading`, both processes accept on the same sockets, so there is
/// no accept gap; only one upgrade or takeover runs at a time, a second gets
/// [`Error::UpgradeInProgress`] (a takeover: `busy`). On rollback the old
/// process never stopped accepting, so it simply goes on. On commit it writes
/// the successor's pid to the PID file, tells systemd `MAINPID=<successor>` +
/// `READY=1`, and only then issues the drain order (after which the
/// application may exit at any moment); it drops its copies of the sockets
/// once the successor's probation is over. If the successor exits inside it,
/// this process is `Serving` again and the drain order is withdrawn (see
/// [`crate::probation`]).
/// `Phase` and the [`crate::DrainSignal`] order say the same thing about
/// draining: both are written together, under the phase lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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
    /// The reload hook is running ([`crate::reload`]); an upgrade waits.
    Reloading,
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
        use crate::metrics::{Mode, Outcome, Reason};
        let inner = &*self.inner;
        let started = Instant::now();
        {
            let mut phase = inner.phase();
            let refusal = match *phase {
                Phase::Serving => None,
                Phase::Starting => Some(Error::NotReady),
                Phase::Upgrading { successor } => Some(Error::UpgradeInProgress(successor)),
                Phase::Reloading => Some(Error::ReloadInProgress),
                Phase::Draining(reason) => Some(Error::Draining(reason)),
            };
            if let Some(error) = refusal {
                let reason = Reason::of(&error);
                crate::metrics::get().upgrade(Mode::Reexec, Outcome::Refused, reason, None);
                return Err(error);
            }
            *phase = Phase::Upgrading { successor: 0 };
        }
        tracing::info!(program = %inner.program.path.display(), "upgrade: starting successor");
        inner
            .upstream
            .notify(&handover_mechanism::notify::reloading());
        match run(inner) {
            Ok(successor) => {
                let pid = successor.pid();
                let took = Some(started.elapsed());
                crate::metrics::get().upgrade(Mode::Reexec, Outcome::Ok, Reason::Ready, took);
                crate::probation::start(self, crate::probation::Successor::Child(successor));
                Ok(pid)
            }
            Err(error) => {
                let reason = Reason::of(&error);
                crate::metrics::get().upgrade(Mode::Reexec, Outcome::Failed, reason, None);
                let mut phase = inner.phase();
                if matches!(*phase, Phase::Upgrading { .. }) {
                    *phase = Phase::Serving;
                    inner.upstream.notify(&[NotifyState::Ready]);
                }
                Err(error)
            }
        }
    }
}

/// Starts the successor and waits for it; returns it once committed to.
fn run(inner: &Inner) -> Result<Child> {
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
    // The migration channel: the successor says `hello` on its end before
    // READY=1; connections follow after the commit. Only for a re-exec of this
    // very program: another program (`Builder::program`) gets the exact
    // systemd contract, with no fd it would not know.
    let migrates = inner.config.program.is_none() && inner.config.migrates("*");
    let (migration, theirs) = match Channel::pair().ok().filter(|_| migrates) {
        Some((ours, theirs)) => (Some(ours), Some(theirs)),
        None => (None, None),
    };
    let successor = {
        let registry = inner.registry();
        let mut fds = registry.handoff();
        if let Some(listener) = &takeover {
            fds.push((TAKEOVER_FD_NAME, listener.socket()));
        }
        if let Some(fd) = &state_fd {
            fds.push((STATE_FD_NAME, fd.as_fd()));
        }
        if let Some(channel) = &theirs {
            fds.push((MIGRATE_FD_NAME, channel.socket()));
        }
        let spawn_error = |source| Error::Spawn {
            program: inner.program.path.clone(),
            source,
        };
        // The file as it is now is what runs, even if the path changes before
        // the exec (a script runs by path: see `child::pinned`).
        let pinned = child::pinned(&inner.program, fds.len()).map_err(spawn_error)?;
        let program = pinned
            .as_ref()
            .map_or(&inner.program, |(_, program)| program);
        child::spawn(program, &fds, &link).map_err(spawn_error)?
    };
    drop((state_fd, theirs));
    let pid = successor.pid();
    {
        let mut phase = inner.phase();
        if let Phase::Upgrading { successor } = &mut *phase {
            *successor = pid;
        }
    }
    tracing::info!(successor = pid, "upgrade: waiting for READY=1");
    let started = Instant::now();
    let deadline = started + inner.config.ready_timeout;
    match wait_ready(inner, &successor, &receiver, deadline) {
        Waited::Ready => commit(inner, successor, started.elapsed(), migration),
        Waited::Gone(why) => Err(Error::SuccessorFailed { pid, why }),
        Waited::MustKill(why) => {
            successor.kill_and_reap();
            Err(Error::SuccessorFailed { pid, why })
        }
    }
}

/// How the wait for a successor's `READY=1` ended.
enum Waited {
    Ready,
    /// It exited or was killed: already reaped.
    Gone(SuccessorFailure),
    /// It is still running and must be killed: timeout, stop, or a broken watch.
    MustKill(SuccessorFailure),
}

/// Waits for `READY=1`, checking between slices whether the successor exited
/// or a stop arrived.
fn wait_ready(
    inner: &Inner,
    successor: &Child,
    receiver: &NotifyReceiver,
    deadline: Instant,
) -> Waited {
    loop {
        match successor.exited() {
            Ok(Some(gone)) => return Waited::Gone(gone.into()),
            Ok(None) => {}
            Err(error) => {
                return Waited::MustKill(SuccessorFailure::Lost(format!("waitpid: {error}")))
            }
        }
        if inner.drain.is_draining() {
            return Waited::MustKill(SuccessorFailure::Aborted);
        }
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return Waited::MustKill(SuccessorFailure::Timeout(inner.config.ready_timeout));
        };
        match receiver.recv(left.min(POLL_SLICE)) {
            Ok(Some(Ok(message))) if message.is_ready() => return Waited::Ready,
            Ok(Some(Ok(message))) => {
                tracing::debug!(pid = successor.pid(), %message, "successor says")
            }
            Ok(Some(Err(error))) => {
                tracing::warn!(pid = successor.pid(), %error, "malformed notify message ignored")
            }
            Ok(None) => {}
            Err(error) => {
                return Waited::MustKill(SuccessorFailure::Lost(format!("notify socket: {error}")))
            }
        }
    }
}

fn commit(
    inner: &Inner,
    successor: Child,
    took: Duration,
    migration: Option<Channel>,
) -> Result<Child> {
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
    // The successor's `hello` is already queued if it migrates connections.
    let give = migration
        .filter(successor_migrates)
        .map(|channel| (crate::migration::start_giving(inner), channel));
    commit_to(inner, phase, pid, took);
    if let Some((give, channel)) = give {
        crate::migration::give_from_thread(give, channel);
    }
    Ok(successor)
}

/// Whether the successor said `hello` with the migration capability on its
/// end of the channel (before READY=1); answers it `welcome`.
fn successor_migrates(channel: &Channel) -> bool {
    let answered = channel
        .set_timeout(Some(Duration::from_millis(1)))
        .map_err(handover_wire::Error::from)
        .and_then(|()| handover_wire::hello::answer(channel, crate::migration::offer()));
    match answered {
        Ok(agreement) => agreement.has(crate::migration::CAPABILITY),
        Err(error) => {
            tracing::debug!(%error, "the successor does not migrate connections");
            false
        }
    }
}

/// Commits a hand-over to `pid` (a re-exec'd successor or a process that took
/// over), with the phase lock held: [`name_main`] first, then [`drain_for`].
pub(crate) fn commit_to(
    inner: &Inner,
    phase: std::sync::MutexGuard<'_, Phase>,
    pid: u32,
    took: Duration,
) {
    name_main(inner, pid);
    drain_for(inner, phase, pid, took);
}

/// Names `pid` as the server where others look: the PID file and systemd's
/// `MAINPID`. Everything that must outlive this process happens before the
/// drain order: once drained, the application may exit at any moment, and
/// systemd in particular must learn the new main pid before the old one exits.
pub(crate) fn name_main(inner: &Inner, pid: u32) {
    if let Some(path) = &inner.config.pid_file {
        write_pid_file(path, pid);
    }
    inner
        .upstream
        .notify(&[NotifyState::MainPid(pid), NotifyState::Ready]);
}

/// Issues the drain order for a hand-over to `pid`; then this process's copies
/// of the sockets go — at once without probation, else when it is over
/// ([`crate::probation::start`] follows).
pub(crate) fn drain_for(
    inner: &Inner,
    mut phase: std::sync::MutexGuard<'_, Phase>,
    pid: u32,
    took: Duration,
) {
    let reason = DrainReason::Upgraded { successor: pid };
    *phase = Phase::Draining(reason);
    let on_probation = !inner.config.probation.is_zero();
    inner.verdict.update(|verdict| {
        *verdict = (!on_probation).then_some(crate::AfterDrain::Exit);
    });
    inner.drain.issue(DrainOrder {
        reason,
        deadline: Instant::now() + inner.config.drain_timeout,
    });
    drop(phase);
    if !on_probation {
        inner.registry().release();
    }
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
