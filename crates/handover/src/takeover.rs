//! Takeover: a new version started independently — by a deploy script,
//! systemd, a second container sharing a volume — takes the sockets and the
//! state of the running one over its takeover socket
//! ([`Builder::takeover`](crate::Builder::takeover)).
//!
//! ```text
//!  new process (build())                          running process (serving)
//!  ─────────────────────                          ─────────────────────────
//!  connect PATH ──── refused / no file ─▶ start fresh: bind, and own PATH at ready()
//!      │ live
//!      ├─ owner check (SO_PEERCRED) ◀──────────▶ peer check (SO_PEERCRED); busy? refuse
//!      ├─ hello ─────────────────────────────────▶ Serving → Upgrading (one at a time)
//!      │ ◀── sockets (batches of ≤ 252, each acked), the takeover socket among them
//!      │ ◀── state (inline or sealed memfd), acked
//!  claims them by name; initialises         keeps accepting on the same sockets
//!  ready() ── ready ─────────────────────────────▶ PID file, MAINPID := new
//!      │ ◀───────────────────────────── stepped_down
//!  serves (writes the PID file only if      drain order (stops accepting, drains, exits)
//!  the old one died before stepped_down)
//!  serves PATH (same socket: no gap)
//! ```
//!
//! Failure edges, all leaving the running process serving:
//!
//! | what happens | running process | new process |
//! |---|---|---|
//! | a peer of another uid (not allowed) | refuses before sending anything | `build()` fails: refused |
//! | a second takeover while one is under way | refuses it (`busy`), the first goes on | `build()` fails: busy |
//! | the new one disconnects or dies at any point | rolls back to Serving, logs why | — |
//! | the new one is not ready within the ready timeout | rolls back, tells it why | `ready()` fails |
//! | garbage, a wrong version, stray fds | error reply, rolls back | — |
//! | the running one dies after sending the sockets | — | `ready()` finds it gone and serves alone |
//!
//! The takeover socket itself is handed over like any socket, so the path is
//! served without a gap, and a re-exec upgrade passes it on too (fd name
//! `handover.takeover`): re-exec upgrades and takeovers mix freely.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use handover_wire::channel::{Channel, Listener};
use handover_wire::control::{self, Reply, Request};
use handover_wire::{batch, hello, state, Message};
use sd_notify::NotifyState;

use crate::handover::Inner;
use crate::metrics::{Mode, Outcome, Reason};
use crate::upgrade::{drain_for, name_main, Phase};
use crate::{Error, Handover, Result};
use handover_mechanism::protocol::env::InheritedFd;
use handover_mechanism::protocol::TAKEOVER_FD_NAME;

/// The capability a process offers when it hands over state.
const STATE: &str = "state";
const MIGRATE: &str = crate::migration::CAPABILITY;
/// Bound on every single exchange (a message and its answer).
const EXCHANGE: Duration = Duration::from_secs(5);
/// How often a wait for `ready` also checks for a stop.
const POLL_SLICE: Duration = Duration::from_millis(50);

/// What a new process received from the one it takes over from.
pub(crate) struct TakenOver {
    /// Still open: `ready` goes here.
    pub channel: Channel,
    pub sockets: Vec<InheritedFd>,
    pub listener: Option<OwnedFd>,
    pub state: Option<Vec<u8>>,
    pub old_pid: u32,
    pub generation: u64,
    /// Whether the old process will migrate its connections after it steps
    /// down.
    pub migrates: bool,
}

fn failed(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::Takeover {
        path: path.to_owned(),
        why: why.to_string(),
    }
}

/// Takes over from the process listening at `path`, if one is: `Ok(None)` if
/// nobody listens there (no file, or a stale one).
pub(crate) fn attempt(path: &Path, state_limit: u64) -> Result<Option<TakenOver>> {
    let offer = hello::Offer::this_version(&[STATE, MIGRATE]);
    let (channel, agreement) = match control::connect(path, Request::Takeover, offer) {
        Ok(connected) => connected,
        Err(handover_wire::Error::Io(error))
            if matches!(
                error.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(error) => return Err(failed(path, error)),
    };
    let limit = fd_room();
    let mut sockets = Vec::new();
    let mut listener = None;
    for (index, (name, fd)) in batch::receive(&channel, limit)
        .map_err(|e| failed(path, e))?
        .into_iter()
        .enumerate()
    {
        if name == TAKEOVER_FD_NAME {
            listener = Some(fd);
        } else {
            sockets.push(InheritedFd {
                name,
                fd,
                number: index as i32, // for messages only: received, not inherited
            });
        }
    }
    let bytes = if agreement.has(STATE) {
        Some(state::receive(&channel, state_limit).map_err(|e| Error::State(e.to_string()))?)
    } else {
        None
    };
    // The pid the old process gave in `welcome`, not SO_PEERCRED's: a
    // listening socket's credentials are those of whoever called listen(), and
    // the takeover socket is handed from generation to generation. (The owner's
    // uid was checked by `control::connect`.)
    let old_pid = agreement.peer_pid;
    tracing::info!(
        old_pid,
        sockets = sockets.len(),
        state_bytes = bytes.as_ref().map_or(0, Vec::len),
        "took over the sockets; initialising"
    );
    Ok(Some(TakenOver {
        channel,
        sockets,
        listener,
        state: bytes.filter(|b| !b.is_empty()),
        old_pid,
        migrates: agreement.has(MIGRATE),
        generation: agreement.peer_generation.map_or(1, |g| g + 1),
    }))
}

/// Descriptors this process can still receive.
pub(crate) fn fd_room() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1024) as usize;
    let open = std::fs::read_dir("/proc/self/fd").map_or(64, |d| d.count());
    limit.saturating_sub(open + 32)
}

/// How a takeover ended for the new process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// The old process stepped down; it has named this one in the PID file
    /// and to systemd.
    SteppedDown,
    /// The old process is gone (it died after handing over): this one serves
    /// alone and must name itself.
    OldGone,
}

/// The new process says it is ready and waits for the old one to step down.
/// If the old one is gone (it died after handing over), this one serves alone.
pub(crate) fn finish(channel: &Channel, old_pid: u32, path: &Path) -> Result<Finish> {
    let sent = channel.send(&Message::Ready, &[]);
    let answer = sent.and_then(|()| channel.receive());
    match answer {
        Ok(received) if received.message == Message::SteppedDown => {
            tracing::info!(old_pid, "the old process stepped down");
            Ok(Finish::SteppedDown)
        }
        Ok(received) => Err(failed(
            path,
            format!("{:?} instead of stepped_down", received.message),
        )),
        Err(error) if !alive(old_pid) => {
            tracing::warn!(old_pid, %error, "the old process is gone; serving alone");
            Ok(Finish::OldGone)
        }
        Err(error) => Err(failed(
            path,
            format!("the old process did not step down: {error}"),
        )),
    }
}

fn alive(pid: u32) -> bool {
    rustix::process::Pid::from_raw(pid as i32)
        .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
}

/// Listens at `path` for the next takeover: creates the directory (0700) if
/// missing, replaces a stale socket file, refuses to steal a live one.
pub(crate) fn bind(path: &Path) -> Result<Listener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| failed(path, format!("cannot create {}: {e}", dir.display())))?;
        }
    }
    handover_mechanism::sockets::remove_stale_unix_socket(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            failed(path, "another process listens there; not stealing it")
        }
        _ => failed(path, format!("cannot replace it: {e}")),
    })?;
    let listener = Listener::bind(path).map_err(|e| failed(path, format!("cannot listen: {e}")))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| failed(path, e))?;
    Ok(listener)
}

/// Serves takeovers on `listener` from a thread of its own, until this process
/// drains.
pub(crate) fn serve(handover: &Handover, listener: Arc<Listener>, path: PathBuf) {
    let handover = handover.clone();
    handover.inner.takeover_loop.store(true, Ordering::SeqCst);
    let inner = Arc::clone(&handover.inner);
    let spawned = std::thread::Builder::new()
        .name("handover-takeover".into())
        .spawn(move || accept_loop(&handover, &listener, &path));
    if let Err(error) = spawned {
        inner.takeover_loop.store(false, Ordering::SeqCst);
        tracing::error!(%error, "cannot start the takeover thread; takeovers are refused");
    }
}

fn accept_loop(handover: &Handover, listener: &Arc<Listener>, path: &Path) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let slice = Timespec {
        tv_sec: 0,
        tv_nsec: POLL_SLICE.as_nanos() as i64,
    };
    loop {
        {
            // Under the phase lock: a probation that ends in a resume looks
            // at this flag to know whether to start the loop again.
            let phase = handover.inner.phase();
            if matches!(*phase, Phase::Draining(_)) {
                handover.inner.takeover_loop.store(false, Ordering::SeqCst);
                break;
            }
        }
        let socket = listener.socket();
        let mut fds = [PollFd::new(&socket, PollFlags::IN)];
        if !poll(&mut fds, Some(&slice)).is_ok_and(|n| n > 0) {
            continue;
        }
        let channel = match listener.accept() {
            Ok(channel) => channel,
            Err(error) => {
                tracing::warn!(%error, "takeover socket: accept failed");
                continue;
            }
        };
        let (handover, listener, path) = (handover.clone(), Arc::clone(listener), path.to_owned());
        let spawned = std::thread::Builder::new()
            .name("handover-takeover-peer".into())
            .spawn(move || answer(&handover, &channel, listener.socket(), &path));
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot serve a takeover request");
        }
    }
    tracing::debug!(path = %path.display(), "no longer serving takeovers");
}

/// One connection to the takeover socket: a takeover, or a control command;
/// whatever fails, this process serves on.
fn answer(handover: &Handover, channel: &Channel, listener: BorrowedFd<'_>, path: &Path) {
    let inner = &*handover.inner;
    let offer = hello::Offer {
        generation: Some(inner.generation),
        ..hello::Offer::this_version(&[STATE, MIGRATE])
    };
    let (request, agreement) = match control::accept(channel, &inner.config.takeover_allowed, offer)
    {
        Ok(accepted) => accepted,
        Err(error) => {
            tracing::warn!(%error, "takeover socket: request refused");
            return;
        }
    };
    let pid = channel
        .peer()
        .map_or(0, |peer| peer.pid.as_raw_nonzero().get() as u32);
    // A command counts as a connection, so that a drain (after `upgrade` or
    // `stop`) waits for its reply before the process may exit.
    let _reply_first = (request != Request::Takeover).then(|| inner.tracker.track());
    let final_reply = match request {
        Request::Takeover => {
            return take_over_by(handover, channel, &agreement, listener, pid, path)
        }
        Request::Status => Reply::Status(status(handover)),
        Request::Metrics => Reply::Metrics(handover.metrics()),
        Request::Reload => match handover.reload() {
            Ok(message) => Reply::Done {
                ok: true,
                message: format!("pid {} reloaded: {message}", std::process::id()),
            },
            Err(error) => Reply::Done {
                ok: false,
                message: format!("pid {}: {error}", std::process::id()),
            },
        },
        Request::UpgradeSupervisor => Reply::Done {
            ok: false,
            message: "this is a process on the handover library, not a supervisor: \
                      use `handover upgrade` (without --supervisor)"
                .into(),
        },
        Request::Stop => {
            handover.stop();
            Reply::Done {
                ok: true,
                message: format!("pid {} stopping: draining", std::process::id()),
            }
        }
        Request::Upgrade => {
            let _ = control::reply(
                channel,
                &Reply::Progress(format!(
                    "pid {}: starting the new version",
                    std::process::id()
                )),
            );
            match handover.upgrade() {
                Ok(successor) => Reply::Done {
                    ok: true,
                    message: format!(
                        "pid {} → {successor}: the new version is ready; the old one drains",
                        std::process::id()
                    ),
                },
                Err(error) => Reply::Done {
                    ok: false,
                    message: format!("upgrade failed: {error}"),
                },
            }
        }
    };
    if let Err(error) = control::reply(channel, &final_reply) {
        tracing::debug!(%error, "the control client went away");
    }
}

/// What `handover status --socket` shows of a library process.
fn status(handover: &Handover) -> serde_json::Map<String, serde_json::Value> {
    let inner = &*handover.inner;
    let sockets: Vec<String> = inner
        .registry()
        .handoff()
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .collect();
    let value = serde_json::json!({
        "pid": std::process::id(),
        "generation": inner.generation,
        "phase": format!("{:?}", handover.phase()),
        "sockets": sockets,
        // Less the status request itself, which is counted while answered.
        "connections": handover.tracker().active().saturating_sub(1),
        "pid_file": inner.config.pid_file.as_ref().map(|p| p.display().to_string()),
    });
    match value {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// A takeover by `pid`, start to end.
fn take_over_by(
    handover: &Handover,
    channel: &Channel,
    agreement: &hello::Agreement,
    listener: BorrowedFd<'_>,
    pid: u32,
    path: &Path,
) {
    let started = Instant::now();
    let inner = &*handover.inner;
    {
        let mut phase = inner.phase();
        let refusal = match *phase {
            Phase::Serving => None,
            Phase::Upgrading { successor } => Some((
                Reason::UpgradeInProgress,
                format!("busy: an upgrade or takeover is already under way (pid {successor})"),
            )),
            Phase::Reloading => Some((
                Reason::ReloadInProgress,
                "busy: a reload is under way".to_owned(),
            )),
            other => Some((
                match other {
                    Phase::Starting => Reason::NotReady,
                    _ => Reason::Draining,
                },
                format!("this process is not serving ({other:?})"),
            )),
        };
        if let Some((reason, why)) = refusal {
            drop(phase);
            tracing::warn!(peer = pid, %why, "takeover refused");
            control::refuse_after_reading(channel, &handover_wire::Error::Busy(why));
            crate::metrics::get().upgrade(Mode::Takeover, Outcome::Refused, reason, None);
            return;
        }
        *phase = Phase::Upgrading { successor: pid };
    }
    tracing::info!(peer = pid, "takeover: handing over");
    inner
        .upstream
        .notify(&handover_mechanism::notify::reloading());
    let handed = hand_over(inner, channel, agreement, listener, pid).and_then(|took| {
        let phase = inner.phase();
        // A stop that arrived meanwhile wins: the new process is not committed.
        if inner.drain.is_draining() {
            return Err("this process is stopping".to_owned());
        }
        // The PID file and MAINPID name the new process before it hears that
        // this one steps down (it does not write them again), and it hears
        // that before the drain order: after the order this process may exit
        // at any moment (an idle one does at once).
        name_main(inner, pid);
        if let Err(e) = channel.send(&Message::SteppedDown, &[]) {
            name_main(inner, std::process::id());
            return Err(format!(
                "the new process did not hear that this one steps down: {e}"
            ));
        }
        // Available to the connections as soon as they hear the drain order.
        let give = agreement
            .has(MIGRATE)
            .then(|| crate::migration::start_giving(inner));
        drain_for(inner, phase, pid, took);
        Ok(give)
    });
    if handed.is_ok() {
        let took = Some(started.elapsed());
        crate::metrics::get().upgrade(Mode::Takeover, Outcome::Ok, Reason::Ready, took);
        crate::probation::start(handover, crate::probation::Successor::Other(pid));
    } else {
        let reason = if inner.drain.is_draining() {
            Reason::Stopping
        } else {
            Reason::HandOverFailed
        };
        crate::metrics::get().upgrade(Mode::Takeover, Outcome::Failed, reason, None);
    }
    match handed {
        // This thread sends the connections, on the same channel.
        Ok(Some(give)) => crate::migration::give_on(&give, channel),
        Ok(None) => {}
        Err(why) => {
            let mut phase = inner.phase();
            if matches!(*phase, Phase::Upgrading { .. }) {
                *phase = Phase::Serving;
                inner.upstream.notify(&[NotifyState::Ready]);
            }
            drop(phase);
            tracing::warn!(peer = pid, %why, path = %path.display(), "takeover failed; still serving");
            channel.refuse(&handover_wire::Error::Unexpected(why));
        }
    }
}

/// Sends everything and waits for `ready`; returns how long the new process
/// took. An error says why the takeover did not happen.
fn hand_over(
    inner: &Inner,
    channel: &Channel,
    agreement: &hello::Agreement,
    listener: BorrowedFd<'_>,
    pid: u32,
) -> std::result::Result<Duration, String> {
    let started = Instant::now();
    {
        let registry = inner.registry();
        let mut sockets = registry.handoff();
        sockets.push((TAKEOVER_FD_NAME, listener.as_fd()));
        batch::send(channel, &sockets).map_err(|e| format!("sending the sockets: {e}"))?;
    }
    if agreement.has(STATE) {
        let bytes = inner.state_to_hand_over();
        state::send(channel, &bytes).map_err(|e| format!("sending the state: {e}"))?;
    }
    // The new process initialises now; both accept meanwhile.
    let deadline = started + inner.config.ready_timeout;
    channel
        .set_timeout(Some(POLL_SLICE))
        .map_err(|e| e.to_string())?;
    loop {
        if inner.drain.is_draining() {
            return Err("this process is stopping".into());
        }
        match channel.receive() {
            Ok(received) if received.message == Message::Ready => break,
            Ok(received) => return Err(format!("{:?} instead of ready", received.message)),
            Err(handover_wire::Error::Io(error))
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if Instant::now() >= deadline {
                    return Err(format!(
                        "pid {pid} was not ready within {:?}",
                        inner.config.ready_timeout
                    ));
                }
            }
            Err(error) => return Err(format!("pid {pid} went away before it was ready: {error}")),
        }
    }
    channel
        .set_timeout(Some(EXCHANGE))
        .map_err(|e| e.to_string())?;
    Ok(started.elapsed())
}
