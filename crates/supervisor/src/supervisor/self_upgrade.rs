//! Self-upgrade, the request: when the supervisor re-executes its own binary,
//! and whether (the exec itself and the state across it are `reexec.rs`).
//!
//! ```text
//!  handover upgrade --supervisor
//!    │ stopping, or another self-upgrade waiting ─▶ refused
//!    │ an upgrade, a start or a drain under way ─▶ waits (says so) until the
//!    │   supervisor is simply serving, up to ready timeout + probation +
//!    │   drain timeout + 5 s; then refused with what it still waited for
//!    ├─ open the binary at the path it was started from (the file is pinned:
//!    │  what is checked is what runs, even if the path changes meanwhile)
//!    ├─ not a regular executable file ─▶ refused
//!    ├─ run it: `/proc/self/fd/N supervisor-state-version` (≤ 5 s, in a task)
//!    │  ─ exits non-zero, says another version, or hangs ─▶ refused
//!    │  ─ busy again meanwhile ─▶ waits again, as above
//!    ├─ the replies already sent written out (≤ 1 s)
//!    ├─ the signals held, those taken but not handled raised again
//!    │  (`signals.rs`): they wait, pending, for the new image
//!    └─ exec (`reexec.rs`)
//! ```
//!
//! Why wait rather than refuse: an upgrade in flight or an old child draining
//! holds tasks and timers that do not cross an exec, and a deployment that
//! upgrades the child and then the supervisor would otherwise have to retry
//! for as long as the drain lasts. The wait is bounded by the longest an
//! upgrade can take to be over, and the child upgrades asked for meanwhile go
//! ahead as usual.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::reexec::STATE_VERSION;
use super::{done, push, say, Client, Signals, Slot, Supervisor};
use crate::metrics::Outcome;

/// How long the new binary may take to say its state version.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the exec waits for the control threads to write the replies
/// already sent.
const REPLIES_LIMIT: Duration = Duration::from_secs(1);
/// Beyond the longest an upgrade may take, how long a self-upgrade waits.
const WAIT_SLACK: Duration = Duration::from_secs(5);

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

/// A self-upgrade asked for while the supervisor was busy.
pub(super) struct Waiting {
    client: Client,
    /// When it gives up.
    pub until: Instant,
}

/// Why a self-upgrade cannot go ahead now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum NotNow {
    /// Busy for a while (bounded): it may wait.
    Busy(String),
    /// Not while this lasts.
    Refused(String),
}

impl Supervisor {
    /// `handover upgrade --supervisor`: checks the binary, then re-executes;
    /// waits first if the supervisor is busy.
    pub(super) fn upgrade_supervisor(&mut self, client: Client) {
        if self.self_upgrade_waiting.is_some() {
            let why = "another supervisor upgrade is waiting".to_string();
            return self.self_upgrade_failed(&client, format!("refused: {why}"));
        }
        match self.self_upgrade_refusal() {
            None => self.check_new_image(client),
            Some(NotNow::Refused(why)) => {
                self.self_upgrade_failed(&client, format!("refused: {why}"))
            }
            Some(NotNow::Busy(why)) => self.wait_for_serving(client, &why),
        }
    }

    /// After each event: a waiting self-upgrade goes ahead once the
    /// supervisor is simply serving, or gives up.
    pub(super) fn retry_self_upgrade(&mut self) {
        let Some(waiting) = self.self_upgrade_waiting.take() else {
            return;
        };
        match self.self_upgrade_refusal() {
            None => self.check_new_image(waiting.client),
            Some(NotNow::Busy(_)) if Instant::now() < waiting.until => {
                self.self_upgrade_waiting = Some(waiting);
            }
            Some(NotNow::Busy(why)) => {
                let waited = humantime::format_duration(self.self_upgrade_patience());
                let message = format!("refused: {why}, still after waiting {waited}");
                self.self_upgrade_failed(&waiting.client, message);
            }
            Some(NotNow::Refused(why)) => {
                self.self_upgrade_failed(&waiting.client, format!("refused: {why}"))
            }
        }
    }

    fn wait_for_serving(&mut self, client: Client, why: &str) {
        say(
            &client,
            format!("waiting until the supervisor is simply serving: {why}"),
        );
        self.self_upgrade_waiting = Some(Waiting {
            client,
            until: Instant::now() + self.self_upgrade_patience(),
        });
    }

    /// The longest an upgrade under way can take to be over, and a little.
    fn self_upgrade_patience(&self) -> Duration {
        self.config.ready_timeout + self.config.probation + self.config.drain_timeout + WAIT_SLACK
    }

    /// Opens the binary and starts its check (reported as `SelfChecked`).
    fn check_new_image(&mut self, client: Client) {
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

    /// The check is done: switch, wait again, or say why not.
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
        match self.self_upgrade_refusal() {
            None => {}
            Some(NotNow::Refused(why)) => {
                return self.self_upgrade_failed(&client, format!("refused: {why}"))
            }
            // Checked again once it is serving (the file is opened again).
            Some(NotNow::Busy(why)) if self.self_upgrade_waiting.is_none() => {
                return self.wait_for_serving(client, &why)
            }
            Some(NotNow::Busy(why)) => {
                let why = format!("{why}, and another supervisor upgrade is waiting");
                return self.self_upgrade_failed(&client, format!("refused: {why}"));
            }
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
        // The replies already sent (this request's "re-executing", another
        // request's final answer) are written by the control threads, which
        // the exec ends: let them out first, for a second at most.
        crate::control::written(REPLIES_LIMIT).await;
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

    /// Why the supervisor cannot switch images now: busy with an upgrade, a
    /// start or a drain, whose tasks and timers would not cross the exec; or
    /// stopping.
    pub(super) fn self_upgrade_refusal(&self) -> Option<NotNow> {
        let slot = self.slot();
        if slot == Slot::Stopping {
            return Some(NotNow::Refused("the supervisor is stopping".into()));
        }
        if slot != Slot::Serving {
            return Some(NotNow::Busy(format!(
                "the child is not simply serving ({})",
                slot.name()
            )));
        }
        if !self.draining.is_empty() || !self.settling.is_empty() || !self.orphans.is_empty() {
            return Some(NotNow::Busy("old children are still draining".into()));
        }
        if self.failures_pending > 0 || self.current.is_none() {
            return Some(NotNow::Busy("a start is still being reported".into()));
        }
        None
    }

    fn self_upgrade_failed(&mut self, client: &Client, message: String) {
        tracing::warn!(%message, "self-upgrade");
        push(&mut self.self_upgrades, false, message.clone());
        crate::metrics::get().self_upgrade(Outcome::Refused);
        done(client, false, format!("supervisor upgrade {message}"));
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
