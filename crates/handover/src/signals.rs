//! Signals as the control surface, nginx's vocabulary by default:
//!
//! | signal | default action |
//! |---|---|
//! | `SIGHUP`, `SIGUSR2` | [`SignalAction::Upgrade`]: start the new version, commit when ready |
//! | `SIGTERM`, `SIGQUIT` | [`SignalAction::Stop`]: stop accepting, drain, exit |
//! | `SIGINT` | [`SignalAction::StopNow`]: stop accepting, close connections now, exit |
//!
//! [`SignalAction::Reload`] is on no signal by default (`SIGHUP`, the usual
//! reload signal, upgrades here): an application picks one, e.g. `SIGUSR1`.
//!
//! Every entry can be changed with [`crate::Builder::signal`]; signals not in the
//! table keep their usual disposition.

use std::io;

use signal_hook::consts::signal::*;
use signal_hook::iterator::Signals;

use crate::Handover;

/// What a signal does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalAction {
    /// Call [`Handover::upgrade`] (on a new thread; the outcome is logged).
    Upgrade,
    /// Call [`Handover::stop`].
    Stop,
    /// Call [`Handover::stop_now`].
    StopNow,
    /// Call [`Handover::reload`] (on a new thread; the outcome is logged).
    Reload,
    /// Leave the signal's usual disposition alone.
    Default,
}

/// The default table (see the module docs).
pub(crate) fn default_table() -> Vec<(i32, SignalAction)> {
    vec![
        (SIGHUP, SignalAction::Upgrade),
        (SIGUSR2, SignalAction::Upgrade),
        (SIGTERM, SignalAction::Stop),
        (SIGQUIT, SignalAction::Stop),
        (SIGINT, SignalAction::StopNow),
    ]
}

/// Starts the thread that turns signals into actions on `handover`.
pub(crate) fn install(table: &[(i32, SignalAction)], handover: Handover) -> io::Result<()> {
    let table: Vec<(i32, SignalAction)> = table
        .iter()
        .copied()
        .filter(|(_, action)| *action != SignalAction::Default)
        .collect();
    if table.is_empty() {
        return Ok(());
    }
    let mut signals = Signals::new(table.iter().map(|(signal, _)| *signal))?;
    std::thread::Builder::new()
        .name("handover-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let Some((_, action)) = table.iter().find(|(s, _)| *s == signal) else {
                    continue;
                };
                tracing::info!(signal, ?action, "signal received");
                match action {
                    SignalAction::Upgrade => {
                        let handover = handover.clone();
                        let spawned = std::thread::Builder::new()
                            .name("handover-upgrade".into())
                            .spawn(move || match handover.upgrade() {
                                Ok(pid) => tracing::info!(successor = pid, "upgrade done"),
                                // A draining process has handed its sockets on already.
                                Err(error @ crate::Error::Draining(_)) => {
                                    tracing::error!(%error, "upgrade failed")
                                }
                                Err(error) => {
                                    tracing::error!(%error, "upgrade failed; still serving")
                                }
                            });
                        if let Err(error) = spawned {
                            tracing::error!(%error, "cannot start upgrade thread");
                        }
                    }
                    SignalAction::Reload => {
                        let handover = handover.clone();
                        let spawned = std::thread::Builder::new()
                            .name("handover-reload".into())
                            .spawn(move || {
                                // The outcome is logged by reload() itself.
                                let _ = handover.reload();
                            });
                        if let Err(error) = spawned {
                            tracing::error!(%error, "cannot start reload thread");
                        }
                    }
                    SignalAction::Stop => handover.stop(),
                    SignalAction::StopNow => handover.stop_now(),
                    SignalAction::Default => {}
                }
            }
        })?;
    Ok(())
}
