//! Self-upgrade, the exec: what crosses it and how the new image takes it
//! over (when and whether to switch is `self_upgrade.rs`).
//!
//! ```text
//!  old image: state (sockets, control socket, current child, history) in
//!    HANDOVER_SUPERVISOR_STATE, their fds without close-on-exec, and the
//!    running image itself opened as the fallback
//!    └─ execve(/proc/self/fd/N): same pid, so the children stay its children
//!       and systemd's MAINPID holds
//!  new image: takes the fds (the LISTEN_FDS rules), adopts the child,
//!    serves the same control socket; cannot use the state ─▶ execs the
//!    fallback with the same state and the reason, which records the failure
//! ```
//!
//! Connections are never refused: the listening sockets stay open in the
//! process throughout (and in the child, which keeps accepting).

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{push, Supervisor};
use crate::fdstore;
use crate::generation::Generation;
use crate::listeners::SavedSocket;
use crate::metrics::Outcome;
use crate::status::Record;

/// What `supervisor-state-version` prints: images that print the same can
/// read each other's state.
pub const STATE_VERSION: &str = "handover-supervisor-state 1";

const STATE_ENV: &str = "HANDOVER_SUPERVISOR_STATE";
const ROLLBACK_ENV: &str = "HANDOVER_SUPERVISOR_ROLLBACK";

/// The binary this supervisor runs and its arguments, as it was started.
pub(super) struct Image {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
}

impl Image {
    pub fn current() -> Image {
        let exe = std::env::current_exe().unwrap_or_default();
        // A binary replaced since the start reads "PATH (deleted)".
        let exe = exe
            .to_str()
            .and_then(|s| s.strip_suffix(" (deleted)"))
            .map_or(exe.clone(), PathBuf::from);
        Image {
            exe,
            args: std::env::args_os().collect(),
        }
    }
}

/// What crosses the exec.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Saved {
    version: String,
    /// The previous image, opened: run again if this one cannot go on.
    fallback: i32,
    control: i32,
    listeners: Vec<SavedSocket>,
    fdstore: fdstore::Saved,
    current: SavedChild,
    next_number: u64,
    upgrades: VecDeque<Record>,
    crashes: VecDeque<Record>,
    self_upgrades: VecDeque<Record>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedChild {
    number: u64,
    epoch: u64,
    pid: u32,
    age_ms: u64,
    stderr: Option<i32>,
}

/// What a restored image starts from.
pub(super) struct Restored {
    pub control: handover_wire::channel::Listener,
    pub listeners: crate::listeners::Listeners,
    pub fdstore: fdstore::FdStore,
    pub carried: Carried,
}

/// The event loop's state carried across.
pub(super) struct Carried {
    pub current: Generation,
    pub next_number: u64,
    pub upgrades: VecDeque<Record>,
    pub crashes: VecDeque<Record>,
    pub self_upgrades: VecDeque<Record>,
}

impl Supervisor {
    /// Execs `file` with the state (the signals held by the caller);
    /// returns only if the exec failed.
    pub(super) fn reexec(&mut self, file: &File) -> io::Error {
        // The child is ready: its private notify socket (and directory) can go
        // now — nothing would remove them after the exec.
        if let Some(current) = self.current.as_mut() {
            current.notify = None;
        }
        match self.save() {
            Ok((text, _fallback)) => {
                self.notify_upstream(&handover_mechanism::notify::reloading());
                let mut command =
                    std::process::Command::new(format!("/proc/self/fd/{}", file.as_raw_fd()));
                if let Some((first, rest)) = self.image.args.split_first() {
                    command.arg0(first).args(rest);
                }
                // `_fallback` stays open across the exec: the state names it.
                command.env(STATE_ENV, text).exec()
            }
            Err(error) => error,
        }
    }

    /// The state, its fds made to cross the exec; and the open fallback.
    fn save(&self) -> io::Result<(String, File)> {
        let keep = |fd: std::os::fd::BorrowedFd<'_>| -> io::Result<i32> {
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            Ok(fd.as_raw_fd())
        };
        let current = self
            .current
            .as_ref()
            .ok_or_else(|| io::Error::other("no current child"))?;
        let fallback = File::open("/proc/self/exe")?;
        let saved = Saved {
            version: STATE_VERSION.into(),
            fallback: keep(fallback.as_fd())?,
            control: keep(self.control_fd.as_fd())?,
            listeners: self.listeners.save()?,
            fdstore: self.fdstore.save(),
            current: SavedChild {
                number: current.number,
                epoch: current.epoch,
                pid: current.pid(),
                age_ms: current.started.elapsed().as_millis() as u64,
                stderr: match &current.stderr {
                    Some(fd) => Some(keep(fd.as_fd())?),
                    None => None,
                },
            },
            next_number: self.next_number,
            upgrades: self.upgrades.clone(),
            crashes: self.crashes.clone(),
            self_upgrades: self.self_upgrades.clone(),
        };
        Ok((
            serde_json::to_string(&saved).map_err(io::Error::other)?,
            fallback,
        ))
    }
}

/// The state a previous image left, if this process is one's re-exec
/// (taken out of the environment, so no child inherits it); with the reason
/// if this is the previous image run again because the new one failed.
pub(super) fn take_saved() -> Option<(String, Option<String>)> {
    let text = std::env::var(STATE_ENV).ok()?;
    let rollback = std::env::var(ROLLBACK_ENV).ok();
    std::env::remove_var(STATE_ENV);
    std::env::remove_var(ROLLBACK_ENV);
    Some((text, rollback))
}

/// Restores what `text` describes; if this image cannot, runs the previous
/// one again with the same state and the reason (and returns only if even
/// that fails).
pub(super) fn restore_or_fall_back(
    config: &crate::Config,
    text: &str,
    rollback: Option<String>,
) -> Result<Restored, String> {
    // The new image before its signal handlers (tests: a pause, to signal it).
    fail::fail_point!("supervisor-restore-start");
    let saved: Saved = match serde_json::from_str(text) {
        Ok(saved) => saved,
        Err(error) => return Err(format!("the state is unreadable: {error}")),
    };
    // Every fd first, kept here until the end: on failure they are handed on
    // to the fallback as they came (the structures below hold copies).
    let mut fds = HashMap::new();
    let mut numbers = vec![saved.fallback, saved.control];
    numbers.extend(saved.current.stderr);
    for socket in &saved.listeners {
        numbers.extend(socket.shared);
        numbers.extend(socket.members.iter().map(|(_, fd)| *fd));
    }
    let mut adopted = Ok(());
    for number in numbers {
        match handover_mechanism::protocol::env::adopt_handed_fd(number) {
            Ok(fd) => {
                fds.insert(number, fd);
            }
            Err(error) => {
                adopted = Err(format!("fd {number}: {error}"));
                break;
            }
        }
    }
    let restored = adopted
        .and_then(|()| restore_fault(rollback.as_deref()))
        .and_then(|()| build(config, &saved, &fds))
        .and_then(|restored| {
            if saved.version == STATE_VERSION {
                Ok(restored)
            } else {
                Err(format!("state version {:?}", saved.version))
            }
        });
    match restored {
        Ok(mut restored) => {
            let message = match rollback {
                Some(why) => {
                    let message = format!(
                        "failed: the new image could not go on ({why}); this one runs again"
                    );
                    push(&mut restored.carried.self_upgrades, false, message.clone());
                    crate::metrics::get().self_upgrade(Outcome::Failed);
                    message
                }
                None => {
                    let message =
                        format!("supervisor re-executed {}", Image::current().exe.display());
                    push(&mut restored.carried.self_upgrades, true, message.clone());
                    crate::metrics::get().self_upgrade(Outcome::Ok);
                    message
                }
            };
            tracing::info!(%message, "self-upgrade");
            Ok(restored)
        }
        Err(why) if rollback.is_none() => {
            tracing::error!(%why, "cannot take the state over; running the previous image again");
            if let Some(fallback) = fds.get(&saved.fallback) {
                for fd in fds.values() {
                    let _ = rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty());
                }
                let args: Vec<OsString> = std::env::args_os().collect();
                let mut command =
                    std::process::Command::new(format!("/proc/self/fd/{}", fallback.as_raw_fd()));
                if let Some((first, rest)) = args.split_first() {
                    command.arg0(first).args(rest);
                }
                let error = command.env(STATE_ENV, text).env(ROLLBACK_ENV, &why).exec();
                return Err(format!(
                    "{why}; and the previous image cannot run again: {error}"
                ));
            }
            Err(why)
        }
        Err(why) => Err(why),
    }
}

/// A new image that cannot take the state: a fail point for the tests (a
/// no-op without the `failpoints` feature). The previous image, run again,
/// passes it.
fn restore_fault(rollback: Option<&str>) -> Result<(), String> {
    if rollback.is_none() {
        fail::fail_point!("supervisor-restore", |why| Err(
            why.unwrap_or_else(|| "fail point".into())
        ));
    }
    Ok(())
}

fn build(
    config: &crate::Config,
    saved: &Saved,
    fds: &HashMap<i32, OwnedFd>,
) -> Result<Restored, String> {
    let copy = |number: i32| -> Result<OwnedFd, String> {
        fds.get(&number)
            .ok_or_else(|| format!("fd {number} was not handed over"))?
            .try_clone()
            .map_err(|e| e.to_string())
    };
    let control = handover_wire::channel::Listener::from_socket(copy(saved.control)?)
        .map_err(|e| format!("the control socket: {e}"))?;
    let mut sockets = Vec::new();
    for socket in &saved.listeners {
        let shared = socket.shared.map(copy).transpose()?;
        let members = socket
            .members
            .iter()
            .map(|(epoch, fd)| Ok((*epoch, copy(*fd)?)))
            .collect::<Result<Vec<_>, String>>()?;
        sockets.push((socket.name.clone(), shared, members, socket.target));
    }
    let listeners = crate::listeners::Listeners::restore(&config.listen, sockets)
        .map_err(|e| format!("the sockets: {e}"))?;
    let child = &saved.current;
    let stderr = child.stderr.map(copy).transpose()?;
    let current = Generation::adopt(
        child.number,
        child.epoch,
        child.pid,
        Duration::from_millis(child.age_ms),
        stderr,
    )
    .map_err(|e| format!("the child: {e}"))?;
    Ok(Restored {
        control,
        listeners,
        fdstore: fdstore::FdStore::restore(
            handover_mechanism::notify::Upstream::from_env(),
            saved.fdstore.clone(),
        ),
        carried: Carried {
            current,
            next_number: saved.next_number,
            upgrades: saved.upgrades.clone(),
            crashes: saved.crashes.clone(),
            self_upgrades: saved.self_upgrades.clone(),
        },
    })
}
