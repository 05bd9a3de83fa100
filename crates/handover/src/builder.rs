//! Configuration: [`Builder`] and its defaults.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::signals::{self, SignalAction};
use crate::{Handover, Result};

/// Configures a [`Handover`]. Every setting has a default that suits a typical
/// server; [`Handover::new`] uses them all.
///
/// ```no_run
/// use std::time::Duration;
///
/// let handover = handover::Handover::builder()
///     .ready_timeout(Duration::from_secs(10))
///     .drain_timeout(Duration::from_secs(5))
///     .pid_file("/run/app.pid")
///     .build()?;
/// # Ok::<(), handover::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    pub(crate) ready_timeout: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) probation: Duration,
    pub(crate) pid_file: Option<PathBuf>,
    pub(crate) backlog: i32,
    pub(crate) program: Option<PathBuf>,
    pub(crate) args: Option<Vec<OsString>>,
    pub(crate) env: Vec<(OsString, Option<OsString>)>,
    pub(crate) signals: Vec<(i32, SignalAction)>,
    pub(crate) takeover: Option<PathBuf>,
    pub(crate) takeover_allowed: handover_wire::peer::Allowed,
    pub(crate) state_limit: u64,
    pub(crate) no_migration: Vec<String>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            ready_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            probation: crate::probation::DEFAULT,
            pid_file: None,
            backlog: 1024,
            program: None,
            args: None,
            env: Vec::new(),
            signals: signals::default_table(),
            takeover: None,
            takeover_allowed: handover_wire::peer::Allowed::default(),
            state_limit: handover_wire::state::DEFAULT_LIMIT,
            no_migration: Vec::new(),
        }
    }
}

impl Builder {
    /// How long a successor may take to send `READY=1` before it is killed and the
    /// upgrade rolled back. Default 60 s.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// How long a drain may last before the remaining connections are closed.
    /// Default 30 s.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// How long a successor is on probation once it is ready. Meanwhile this
    /// process keeps its copies of the sockets (it does not accept), and if
    /// the successor exits or is killed inside the window, this process is
    /// current again: it names itself in the PID file and to systemd, serves
    /// the takeover socket, and [`Handover::after_drain`](crate::Handover::after_drain)
    /// says [`AfterDrain::Resume`](crate::AfterDrain::Resume), so the
    /// application accepts again ([`crate::http::serve`] does by itself).
    /// Default 5 s; zero turns it off. See [`crate::probation`](mod@crate::probation).
    pub fn probation(mut self, window: Duration) -> Self {
        self.probation = window;
        self
    }

    /// Keep the current process's pid in this file. Default: no PID file.
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
    }

    /// Listen backlog of freshly bound stream sockets. Default 1024.
    pub fn backlog(mut self, backlog: i32) -> Self {
        self.backlog = backlog;
        self
    }

    /// The executable an upgrade starts. Default: this process's executable path
    /// as it was at start (so a new binary renamed into place is picked up).
    /// Another program gets exactly the systemd contract (`LISTEN_FDS`, …)
    /// and no migration channel, so connections drain at such an upgrade
    /// (takeovers still migrate them).
    pub fn program(mut self, path: impl Into<PathBuf>) -> Self {
        self.program = Some(path.into());
        self
    }

    /// The successor's argv, including argv\[0\]. Default: this process's argv.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// Sets a variable in the successor's environment (default: this process's
    /// environment).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), Some(value.into())));
        self
    }

    /// Removes a variable from the successor's environment.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.env.push((key.into(), None));
        self
    }

    /// What `signal` does (see [`crate::signals`] for the defaults).
    /// [`SignalAction::Default`] leaves it alone.
    pub fn signal(mut self, signal: i32, action: SignalAction) -> Self {
        self.signals.retain(|(s, _)| *s != signal);
        self.signals.push((signal, action));
        self
    }

    /// Handles no signal at all; the application calls [`Handover::upgrade`] and
    /// [`Handover::stop`] itself.
    pub fn no_signals(mut self) -> Self {
        self.signals.clear();
        self
    }

    /// Listen for takeovers on the Unix socket at `path` (mode 0600, in a
    /// directory created 0700 if missing). A process built with the same path
    /// that finds a live socket there takes over from the process listening on
    /// it — its sockets, its state, and the takeover socket itself — instead
    /// of binding anew; starting the new version is the same command as
    /// starting the first one. See [`crate::takeover`].
    pub fn takeover(mut self, path: impl Into<PathBuf>) -> Self {
        self.takeover = Some(path.into());
        self
    }

    /// Also accept takeovers (and be taken over by) processes of these uids
    /// and gids; by default only the same uid and root.
    pub fn takeover_allow(mut self, uids: &[u32], gids: &[u32]) -> Self {
        self.takeover_allowed.uids.extend_from_slice(uids);
        self.takeover_allowed.gids.extend_from_slice(gids);
        self
    }

    /// The largest state this process accepts from its predecessor. Default
    /// 64 MiB.
    pub fn state_limit(mut self, bytes: u64) -> Self {
        self.state_limit = bytes;
        self
    }

    /// Connections of the listener `name` do not migrate: this process
    /// drains them instead of handing them to its successor, and takes none
    /// from its predecessor. Call once per listener; `"*"` means every one.
    /// Migration is on by default (see [`crate::migration`]).
    pub fn no_migration(mut self, name: &str) -> Self {
        self.no_migration.push(name.to_owned());
        self
    }

    /// Whether connections of `listener` migrate (`"*"`: whether any may).
    pub(crate) fn migrates(&self, listener: &str) -> bool {
        !migration_off(&self.no_migration, listener)
    }

    /// Reads what this process inherited (sockets from a parent or from systemd),
    /// and installs the signal handlers.
    ///
    /// Fails with a clear error on a malformed `LISTEN_FDS` / `LISTEN_FDNAMES` /
    /// `HANDOVER_*` environment; ignores `LISTEN_FDS` meant for another pid.
    pub fn build(self) -> Result<Handover> {
        Handover::from_builder(self)
    }
}

/// Whether `names` (from [`Builder::no_migration`]) turn migration off for
/// `listener`.
pub(crate) fn migration_off(names: &[String], listener: &str) -> bool {
    names.iter().any(|n| n == listener || n == "*")
}
