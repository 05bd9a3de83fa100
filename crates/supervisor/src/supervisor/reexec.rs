//! Self-upgrade: the supervisor re-executes its own binary in place.
//!
//! ```text
//!  handover upgrade --supervisor
//!    │ refused unless the slot is Serving and nothing drains
//!    ├─ open the binary at the path it was started from (the file is pinned:
//!    │  what is checked is what runs, even if the path changes meanwhile)
//!    ├─ not a regular executable file ─▶ refused
//!    ├─ run it: `/proc/self/fd/N supervisor-state-version` (≤ 5 s, in a task)
//!    │  ─ exits non-zero, says another version, or hangs ─▶ refused
//!    ├─ the signals held, those taken but not handled raised again
//!    │  (`signals.rs`): they wait, pending, for the new image
//!    ├─ state (sockets, control socket, current child, history) in
//!    │  HANDOVER_SUPERVISOR_STATE, their fds without close-on-exec, and the
//!    │  running image itself opened as the fallback
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

use super::{done, push, say, Client, Signals, Slot, Supervisor};
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
/// How long the new binary may take to say its state version.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

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

/// The new binary's check, reported to the event loop.
pub(super) struct Checked {
    client: Client,
    file: File,
    verdict: Result<(), String>,
}

/// A checked image the event loop switches to.
pub(super) struct Switch {
    client: Client,
    file: File,
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
    /// `handover upgrade --supervisor`: checks the binary, then re-executes.
    pub(super) fn upgrade_supervisor(&mut self, client: Client) {
        if let Some(why) = self.self_upgrade_refusal() {
            return self.self_upgrade_failed(&client, format!("refused: {why}"));
        }
        let exe = self.image.exe.clone();
        let file = match open_executable(&exe) {
            Ok(file) => file,
            Err(why) => {
                return self.self_upgrade_failed(
                    &client,
                    format!("refused before the switch: {} {why}", exe.display()),
                )
            }
        };
        say(&client, format!("checking {}", exe.display()));
        let checks = self.self_checks.clone();
        tokio::spawn(async move {
            let verdict = check(&file).await;
            let _ = checks.send(Checked {
                client,
                file,
                verdict,
            });
        });
    }

    /// The check is done: switch, or say why not.
    pub(super) fn self_checked(&mut self, checked: Checked) {
        let Checked {
            client,
            file,
            verdict,
        } = checked;
        let exe = self.image.exe.display().to_string();
        if let Err(why) = verdict {
            let message = format!("refused before the switch: {exe} {why}");
            return self.self_upgrade_failed(&client, message);
        }
        if let Some(why) = self.self_upgrade_refusal() {
            return self.self_upgrade_failed(&client, format!("refused: {why}"));
        }
        say(
            &client,
            format!("supervisor pid {} re-executing {exe}", std::process::id()),
        );
        // The exec itself is the event loop's next step, after this handler.
        self.switching = Some(Switch { client, file });
    }

    /// Switches to the checked image: holds the signals (see `signals.rs`),
    /// then execs. Returns only if that failed; the signals held meanwhile
    /// are then handled here.
    pub(super) async fn switch_image(&mut self, switch: Switch, signals: &mut Signals) {
        let Switch { client, file } = switch;
        let exe = self.image.exe.display().to_string();
        // Tests: a pause with the decision taken, to signal the old image.
        fail::fail_point!("supervisor-before-exec");
        let error = match signals.hold_for_exec().await {
            Ok(()) => self.reexec(&file),
            Err(error) => error,
        };
        if let Err(error) = Signals::release() {
            tracing::error!(%error, "cannot release the signals held for the exec");
        }
        self.self_upgrade_failed(&client, format!("cannot re-execute {exe}: {error}"));
    }

    fn self_upgrade_refusal(&self) -> Option<String> {
        if self.slot() != Slot::Serving {
            return Some(format!(
                "the child is not simply serving ({})",
                self.slot().name()
            ));
        }
        if !self.draining.is_empty() || !self.settling.is_empty() || !self.orphans.is_empty() {
            return Some("old children are still draining; try again when they are gone".into());
        }
        if self.failures_pending > 0 || self.current.is_none() {
            return Some("a start is still being reported".into());
        }
        None
    }

    fn self_upgrade_failed(&mut self, client: &Client, message: String) {
        tracing::warn!(%message, "self-upgrade");
        push(&mut self.self_upgrades, false, message.clone());
        crate::metrics::get().self_upgrade(Outcome::Refused);
        done(client, false, format!("supervisor upgrade {message}"));
    }

    /// Execs `file` with the state (the signals held by the caller);
    /// returns only if the exec failed.
    fn reexec(&mut self, file: &File) -> io::Error {
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

/// Opens `exe` if it is a regular file someone may execute.
fn open_executable(exe: &std::path::Path) -> Result<File, String> {
    use std::os::unix::fs::PermissionsExt;
    let file = File::open(exe).map_err(|e| format!("cannot be opened: {e}"))?;
    let metadata = file.metadata().map_err(|e| e.to_string())?;
    if !metadata.is_file() || metadata.permissions().mode() & 0o111 == 0 {
        return Err("is not an executable file".into());
    }
    Ok(file)
}

/// Runs the pinned `file` to ask its state version.
async fn check(file: &File) -> Result<(), String> {
    let run = tokio::process::Command::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .arg("supervisor-state-version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(CHECK_TIMEOUT, run).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => return Err(format!("cannot be run: {error}")),
        Err(_) => return Err(format!("did not answer within {CHECK_TIMEOUT:?}")),
    };
    let said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() {
        return Err(format!(
            "is not a handover that can take this state: asked its state version, it {}",
            output.status
        ));
    }
    if said != STATE_VERSION {
        return Err(format!(
            "cannot read this state: it says {said:?}, this supervisor writes {STATE_VERSION:?}"
        ));
    }
    Ok(())
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
