//! Reload: a new configuration applied in place, by the process that runs,
//! with no new process and no connection touched (seed 004's "logic hot
//! update"). An upgrade replaces the program; a reload replaces what the
//! program read.
//!
//! The application registers one hook ([`Handover::on_reload`]): it reads
//! the new configuration, validates it, and applies it — or returns an error
//! and keeps the old one. It runs when
//!
//! - a signal the application chose arrives
//!   (`Builder::signal(SIGUSR1, SignalAction::Reload)`; no signal reloads by
//!   default: `SIGHUP` upgrades),
//! - `handover reload --socket PATH` asks over the takeover socket (the
//!   caller gets the hook's message and exits 0, or its error and exits 1),
//! - or the application calls [`Handover::reload`].
//!
//! ```text
//!   Serving ── reload ──▶ Reloading ── hook returns Ok / Err / panics ──▶ Serving
//!     RELOADING=1 + MONOTONIC_USEC ─┘                          READY=1 ──┘
//! ```
//!
//! One reload runs at a time, and only while [`Phase::Serving`]: an upgrade
//! or takeover under way refuses a reload and a reload under way refuses
//! them (each says why), so systemd's `RELOADING=1` … `READY=1` brackets
//! never interleave. A stop that arrives during a reload wins: the process
//! drains once the hook returns.
//!
//! ```no_run
//! use std::sync::{Arc, RwLock};
//!
//! let handover = handover::Handover::new()?;
//! let greeting = Arc::new(RwLock::new(std::fs::read_to_string("greeting.txt")?));
//! let current = Arc::clone(&greeting);
//! handover.on_reload(move || {
//!     let text = std::fs::read_to_string("greeting.txt")?;
//!     if text.trim().is_empty() {
//!         return Err("greeting.txt is empty".into());
//!     }
//!     *current.write().unwrap() = text;
//!     Ok("greeting reloaded".to_owned())
//! });
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use sd_notify::NotifyState;

use crate::handover::lock;
use crate::upgrade::Phase;
use crate::Handover;

/// The error a reload hook returns: anything that says why.
pub type HookError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A registered reload hook.
pub(crate) type Hook = Arc<dyn Fn() -> Result<String, HookError> + Send + Sync>;

/// Why a reload did not apply a new configuration. In every case the
/// process serves on with the configuration it had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The application registered no hook.
    #[error("this process has no reload hook (Handover::on_reload); nothing was reloaded")]
    NoHook,
    /// The process is not `Serving`: starting, upgrading, reloading or draining.
    #[error("reload refused: this process is {0:?}; try again when it is serving")]
    NotServing(Phase),
    /// The hook refused the new configuration.
    #[error("the new configuration was refused, the old one is kept: {0}")]
    Refused(String),
    /// The hook panicked.
    #[error("the reload hook panicked ({0}); the old configuration is kept")]
    Panicked(String),
}

impl Handover {
    /// Registers what a reload does (replacing any earlier hook): read,
    /// validate and apply the new configuration, returning a message for the
    /// caller, or an error that says why it was refused (then the hook must
    /// leave the old configuration in place). See [`crate::reload`](mod@crate::reload).
    pub fn on_reload(&self, hook: impl Fn() -> Result<String, HookError> + Send + Sync + 'static) {
        *lock(&self.inner.reload_hook) = Some(Arc::new(hook));
    }

    /// Reloads now: runs the hook between `RELOADING=1` and `READY=1` to the
    /// service manager, and returns its message or why nothing changed.
    /// Blocks while the hook runs.
    pub fn reload(&self) -> Result<String, ReloadError> {
        let inner = &*self.inner;
        let hook = lock(&inner.reload_hook)
            .clone()
            .ok_or(ReloadError::NoHook)?;
        {
            let mut phase = inner.phase();
            match *phase {
                Phase::Serving => *phase = Phase::Reloading,
                other => return Err(ReloadError::NotServing(other)),
            }
        }
        inner
            .upstream
            .notify(&handover_mechanism::notify::reloading());
        let outcome = match catch_unwind(AssertUnwindSafe(|| hook())) {
            Ok(Ok(message)) => Ok(message),
            Ok(Err(error)) => Err(ReloadError::Refused(error.to_string())),
            Err(panic) => Err(ReloadError::Panicked(panic_message(&panic))),
        };
        {
            let mut phase = inner.phase();
            // A stop meanwhile has moved the phase on: it stays.
            if *phase == Phase::Reloading {
                *phase = Phase::Serving;
                inner.upstream.notify(&[NotifyState::Ready]);
            }
        }
        crate::metrics::get().reload(outcome.is_ok());
        match &outcome {
            Ok(message) => tracing::info!(%message, "reloaded"),
            Err(error) => tracing::error!(%error, "reload failed"),
        }
        outcome
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    fn serving() -> Handover {
        let handover = Handover::builder().no_signals().build().unwrap();
        handover.ready().unwrap();
        handover
    }

    #[test]
    fn a_reload_needs_a_hook_and_a_serving_process() {
        let handover = Handover::builder().no_signals().build().unwrap();
        assert!(matches!(handover.reload(), Err(ReloadError::NoHook)));
        handover.on_reload(|| Ok("applied".into()));
        assert!(matches!(
            handover.reload(),
            Err(ReloadError::NotServing(Phase::Starting))
        ));
        handover.ready().unwrap();
        assert_eq!(handover.reload().unwrap(), "applied");
        assert_eq!(handover.phase(), Phase::Serving);
    }

    #[test]
    fn a_refused_or_panicking_hook_leaves_the_process_serving() {
        let handover = serving();
        handover.on_reload(|| Err("port 0 is not allowed".into()));
        let error = handover.reload().unwrap_err();
        assert!(matches!(&error, ReloadError::Refused(why) if why.contains("port 0")));
        assert_eq!(handover.phase(), Phase::Serving);
        handover.on_reload(|| panic!("bad config"));
        let error = handover.reload().unwrap_err();
        assert!(matches!(&error, ReloadError::Panicked(why) if why == "bad config"));
        assert_eq!(handover.phase(), Phase::Serving);
    }

    #[test]
    fn while_a_reload_runs_an_upgrade_and_another_reload_are_refused() {
        let handover = serving();
        let inside = handover.clone();
        handover.on_reload(move || {
            assert_eq!(inside.phase(), Phase::Reloading);
            assert!(matches!(inside.upgrade(), Err(Error::ReloadInProgress)));
            assert!(matches!(
                inside.reload(),
                Err(ReloadError::NotServing(Phase::Reloading))
            ));
            Ok("done".into())
        });
        assert_eq!(handover.reload().unwrap(), "done");
    }

    #[test]
    fn a_stop_during_a_reload_wins() {
        let handover = serving();
        let inside = handover.clone();
        handover.on_reload(move || {
            inside.stop();
            Ok("applied".into())
        });
        assert!(handover.reload().is_ok());
        assert!(matches!(handover.phase(), Phase::Draining(_)));
    }
}
