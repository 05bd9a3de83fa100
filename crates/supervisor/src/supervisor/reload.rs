//! `handover reload`: the current child is sent the reload signal
//! (`--reload-signal`, default `SIGHUP`), which servers such as gunicorn
//! (`HUP`: new workers with the new configuration) and nginx take as "read
//! your configuration again"; puma's is `USR1` (a phased restart).
//!
//! The supervisor cannot see when, or whether, the child has finished
//! reloading: what the caller learns is that the signal was delivered, to
//! which pid. systemd hears `RELOADING=1` before the signal and `READY=1`
//! after it, so a `systemctl reload` (with `ExecReload=handover reload …`)
//! returns once the child has been told.

use super::{done, Client, Supervisor};
use crate::config::signal_name;

impl Supervisor {
    /// Forwards the reload signal to the current child, if one serves alone.
    pub(super) fn reload(&mut self, client: Client) {
        if let Some(why) = self.slot().reload_refusal() {
            return done(&client, false, format!("reload refused: {why}"));
        }
        let Some(current) = &self.current else {
            return done(&client, false, "reload refused: no child is running".into());
        };
        let (pid, signal) = (current.pid(), self.config.reload_signal);
        let name = signal_name(signal);
        self.notify_upstream(&handover_mechanism::notify::reloading());
        let sent = current.child.signal(signal);
        self.notify_upstream(&[handover_mechanism::notify::NotifyState::Ready]);
        match sent {
            Ok(()) => {
                tracing::info!(pid, signal = name, "reload: signal sent to the child");
                done(&client, true, format!("sent {name} to pid {pid} (reload)"));
            }
            Err(error) => {
                tracing::error!(pid, %error, "reload: cannot signal the child");
                done(
                    &client,
                    false,
                    format!("cannot send {name} to pid {pid}: {error}"),
                );
            }
        }
    }
}
