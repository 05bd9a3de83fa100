//! Probation: after a commit, the old process waits a while before it lets go
//! for good, and takes over again if its successor dies meanwhile.
//!
//! A successor can be ready and still die a moment later — a crash on its
//! first real request, an OOM kill. Without probation nothing would be left
//! serving: the old process has drained and exited, and every connection from
//! then on is refused (nginx and tableflip have the same hole). So for the
//! window ([`Builder::probation`](crate::Builder::probation), default
//! [`DEFAULT`]) after the commit:
//!
//! - the old process keeps its copies of the listening sockets and does not
//!   accept (the successor gets every connection: it is one accept queue);
//!   its own connections drain as usual;
//! - a watcher thread waits on a pidfd of the successor (its child after a
//!   re-exec, any process of the same uid after a takeover);
//! - if the successor dies inside the window (killed by a signal, a non-zero
//!   exit, or — after a takeover, whose successor is not this process's
//!   child — any exit), the old process is current again: PID file, systemd `MAINPID` + `READY=1`, the takeover socket, the
//!   phase back to `Serving` and the drain order withdrawn; the successor's
//!   exit status is logged. [`Handover::after_drain`] then says
//!   [`AfterDrain::Resume`] and the application accepts again on the sockets
//!   it kept ([`http::serve`](crate::http) does this by itself). Connections
//!   queued on the sockets are still there and are served; the ones the dead
//!   successor had accepted are lost with it;
//! - once the window has passed (or a stop is asked), the copies are dropped
//!   and [`Handover::after_drain`] says [`AfterDrain::Exit`].
//!
//! ```text
//!  commit ─▶ Draining(Upgraded), on probation ──window over / stop──▶ AfterDrain::Exit
//!                       │
//!                       └── successor exits ──▶ Serving again ─▶ AfterDrain::Resume
//! ```
//!
//! The application must ask: a process whose `main` returns as soon as it has
//! drained cannot come back. The cost is the old process's memory for the
//! window, and a later exit.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use handover_mechanism::child::{Child, ExitStatus};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::process::{pidfd_open, Pid, PidfdFlags};

use crate::beacon::Beacon;
use crate::upgrade::{name_main, Phase};
use crate::Handover;

/// The default window: long enough to catch a server that dies at once on
/// real traffic or on a configuration it reads lazily, short enough that the
/// old process's memory is not held for long.
pub const DEFAULT: Duration = Duration::from_secs(5);

/// How often the watcher also looks whether a stop was asked.
const SLICE: Duration = Duration::from_millis(50);

/// What a drained process does next ([`Handover::after_drain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AfterDrain {
    /// Exit: the drain was a stop, or the successor outlived its probation.
    Exit,
    /// The successor died on probation: this process is current again and
    /// should accept on its sockets again.
    Resume {
        /// The successor that died.
        successor: u32,
        /// How it ended.
        how: SuccessorExit,
    },
}

/// How a successor on probation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SuccessorExit {
    /// It exited with this status.
    #[error("exited with status {0}")]
    Exited(i32),
    /// It was killed by this signal.
    #[error("was killed by signal {0}")]
    Signaled(i32),
    /// It is gone, and not this process's child (a takeover), so its status
    /// cannot be known.
    #[error("exited (not this process's child: its status is unknown)")]
    Unknown,
}

/// The successor on probation.
pub(crate) enum Successor {
    /// Started by this process (re-exec): reaped here, status known.
    Child(Child),
    /// Started independently (takeover).
    Other(u32),
}

impl Successor {
    fn pid(&self) -> u32 {
        match self {
            Successor::Child(child) => child.pid(),
            Successor::Other(pid) => *pid,
        }
    }
}

/// The verdicts, one per drain: `None` while a drain is on probation (or no
/// drain yet).
pub(crate) type Verdict = Beacon<Option<AfterDrain>>;

impl Handover {
    /// What to do once drained: blocks until the drain is final
    /// ([`AfterDrain::Exit`]) or the successor died on probation and this
    /// process is current again ([`AfterDrain::Resume`]: accept again).
    ///
    /// ```no_run
    /// # let handover = handover::Handover::new()?;
    /// # let listener = handover.tcp_listener("web", "127.0.0.1:8080")?;
    /// # handover.ready()?;
    /// loop {
    ///     // ... accept on `listener` until the drain order ...
    ///     let order = handover.drain_signal().wait();
    ///     handover.tracker().wait_idle(order.deadline);
    ///     if handover.after_drain() == handover::AfterDrain::Exit {
    ///         break;
    ///     }
    /// }
    /// # Ok::<(), handover::Error>(())
    /// ```
    pub fn after_drain(&self) -> AfterDrain {
        self.inner
            .verdict
            .wait_until(None, |verdict| *verdict)
            .unwrap_or(AfterDrain::Exit)
    }

    /// [`Handover::after_drain`], awaited.
    #[cfg(feature = "tokio")]
    pub async fn after_drain_async(&self) -> AfterDrain {
        self.inner.verdict.wait_for(|verdict| *verdict).await
    }
}

/// Starts the probation of `successor`, just committed to (nothing if the
/// window is zero: the commit released everything already).
pub(crate) fn start(handover: &Handover, successor: Successor) {
    let window = handover.inner.config.probation;
    if window.is_zero() {
        return;
    }
    let handover = handover.clone();
    let pid = successor.pid();
    let spawned = std::thread::Builder::new()
        .name("handover-probation".into())
        .spawn(move || watch(&handover, successor, Instant::now() + window));
    if let Err(error) = spawned {
        // No watcher: no way back, as without probation.
        tracing::error!(%error, successor = pid, "cannot watch the successor; no probation");
    }
}

fn watch(handover: &Handover, successor: Successor, until: Instant) {
    let pid = successor.pid();
    tracing::info!(successor = pid, window = ?until.saturating_duration_since(Instant::now()), "successor on probation");
    let pidfd = Pid::from_raw(pid as i32).and_then(|p| pidfd_open(p, PidfdFlags::empty()).ok());
    loop {
        if handover.inner.stop_asked() {
            return pass(handover, pid, "a stop was asked");
        }
        let Some(left) = until.checked_duration_since(Instant::now()) else {
            return pass(handover, pid, "the window is over");
        };
        if exited(pidfd.as_ref(), pid, left.min(SLICE)) {
            break;
        }
    }
    let how = match &successor {
        Successor::Child(child) => match child.exited() {
            Ok(Some(ExitStatus::Code(code))) => SuccessorExit::Exited(code),
            Ok(Some(ExitStatus::Signal(signal))) => SuccessorExit::Signaled(signal),
            _ => SuccessorExit::Unknown,
        },
        Successor::Other(_) => SuccessorExit::Unknown,
    };
    if how == SuccessorExit::Exited(0) {
        // It chose to exit — it was stopped and drained — rather than died:
        // coming back would undo a stop.
        return pass(
            handover,
            pid,
            "the successor exited cleanly (stopped, not crashed)",
        );
    }
    resume(handover, pid, how);
}

/// Whether `pid` exits within `wait`.
fn exited(pidfd: Option<&OwnedFd>, pid: u32, wait: Duration) -> bool {
    match pidfd {
        Some(pidfd) => {
            let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
            let timeout = Timespec {
                tv_sec: wait.as_secs() as i64,
                tv_nsec: i64::from(wait.subsec_nanos()),
            };
            poll(&mut fds, Some(&timeout)).is_ok_and(|n| n > 0)
        }
        // No pidfd (a kernel before 5.3, or it was gone already): look.
        None => {
            let gone = Pid::from_raw(pid as i32)
                .map_or(true, |p| rustix::process::test_kill_process(p).is_err());
            if !gone {
                std::thread::sleep(wait);
            }
            gone
        }
    }
}

/// The probation is over: the copies of the sockets go, the drain is final.
fn pass(handover: &Handover, pid: u32, why: &str) {
    let inner = &*handover.inner;
    let _phase = inner.phase();
    inner.registry().release();
    inner
        .verdict
        .update(|verdict| *verdict = Some(AfterDrain::Exit));
    tracing::info!(
        successor = pid,
        why,
        "probation over; the hand-over is final"
    );
}

/// The successor died on probation: this process is current again.
fn resume(handover: &Handover, pid: u32, how: SuccessorExit) {
    let inner = &*handover.inner;
    crate::metrics::get().rollback();
    let mut phase = inner.phase();
    if inner.stop_asked() {
        drop(phase);
        return pass(handover, pid, "a stop was asked");
    }
    // Named first: whoever sees the phase may look for us.
    name_main(inner, std::process::id());
    *phase = Phase::Serving;
    inner.drain.withdraw();
    *crate::handover::lock(&inner.give) = None;
    inner.verdict.update(|verdict| {
        *verdict = Some(AfterDrain::Resume {
            successor: pid,
            how,
        })
    });
    let serve_takeovers = !inner.takeover_loop_running();
    drop(phase);
    if serve_takeovers {
        handover.serve_takeovers_again();
    }
    tracing::error!(
        successor = pid,
        %how,
        "the successor died on probation; serving again (its own connections are lost)"
    );
}
