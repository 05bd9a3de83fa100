//! [`Handover`]: one per process; its named sockets, its readiness, its stop.

use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::sockets::{Address, Registry, SocketKind, Source};
use crate::upgrade::Phase;
use crate::{
    signals, Builder, ConnectionTracker, DrainOrder, DrainReason, DrainSignal, Error, Result,
};
use crate::{state, takeover};
use handover_mechanism::child::Program;
use handover_mechanism::notify::{self, Upstream};
use handover_mechanism::pidfile;
use handover_mechanism::protocol::env::{read_inheritance, InheritedFd, Origin};
use handover_mechanism::protocol::{
    HANDOVER_STATE, MIGRATE_FD_NAME, STATE_FD_NAME, TAKEOVER_FD_NAME,
};
use handover_wire::channel::{Channel, Listener};
use handover_wire::hello;
use std::os::fd::OwnedFd;

/// The zero-downtime handle of one process. Cheap to clone; all clones are the
/// same handle. See the [crate docs](crate) for the life cycle.
#[derive(Clone)]
pub struct Handover {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: Builder,
    pub(crate) program: Program,
    pub(crate) registry: Mutex<Registry>,
    pub(crate) phase: Mutex<Phase>,
    pub(crate) drain: DrainSignal,
    pub(crate) tracker: ConnectionTracker,
    pub(crate) upstream: Upstream,
    pub(crate) origin: Origin,
    pub(crate) generation: u64,
    /// After a takeover, until `ready()`: the connection to the old process,
    /// its pid, and whether it migrates connections.
    takeover_link: Mutex<Option<(Channel, u32, bool)>>,
    /// In a re-exec'd successor, until `ready()`: its end of the migration
    /// channel.
    migration_link: Mutex<Option<Channel>>,
    /// In an old process, once committed to a successor that takes
    /// connections: the way to it.
    pub(crate) give: Mutex<Option<crate::migration::Migration>>,
    /// In a successor: where migrated connections wait, by listener.
    pub(crate) inboxes: crate::migration::Inboxes,
    /// Whether this process took over from another.
    took_over: bool,
    /// A takeover socket inherited or received, until `ready()` serves it.
    takeover_inherited: Mutex<Option<OwnedFd>>,
    /// The takeover socket this process serves (handed to a successor too).
    takeover_serving: Mutex<Option<Arc<Listener>>>,
    /// What the previous version handed over.
    inherited_state: Option<Vec<u8>>,
    /// What this version hands over.
    state_provider: Mutex<Option<state::Provider>>,
    /// What a reload does, if the application said (see [`crate::reload`]).
    pub(crate) reload_hook: Mutex<Option<crate::reload::Hook>>,
    /// What a drained process does next (see [`crate::probation`]).
    pub(crate) verdict: crate::probation::Verdict,
    /// Whether a stop was asked (it ends a probation; nothing resumes after it).
    stop_asked: AtomicBool,
    /// Whether the takeover accept loop runs; written under the phase lock.
    pub(crate) takeover_loop: AtomicBool,
}

impl Inner {
    pub(crate) fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn stop_asked(&self) -> bool {
        self.stop_asked.load(Ordering::SeqCst)
    }

    pub(crate) fn takeover_loop_running(&self) -> bool {
        self.takeover_loop.load(Ordering::SeqCst)
    }

    pub(crate) fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The takeover socket this process serves, if any.
    pub(crate) fn takeover_socket(&self) -> Option<Arc<Listener>> {
        lock(&self.takeover_serving).clone()
    }

    /// The state to hand over now (empty if the application registers none).
    pub(crate) fn state_to_hand_over(&self) -> Vec<u8> {
        let provider = lock(&self.state_provider).clone();
        provider.map(|provide| provide()).unwrap_or_default()
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Handover {
    /// A handle with the default configuration; see [`Builder::build`].
    pub fn new() -> Result<Self> {
        Builder::default().build()
    }

    /// Configures a handle.
    pub fn builder() -> Builder {
        Builder::default()
    }

    pub(crate) fn from_builder(config: Builder) -> Result<Self> {
        let mut inheritance = read_inheritance(
            std::env::var_os,
            std::process::id(),
            rustix::process::getppid().map(|pid| pid.as_raw_nonzero().get() as u32),
        )?;
        let mut source = match inheritance.origin {
            Origin::Successor { .. } => Source::Parent,
            Origin::Fresh => Source::ServiceManager,
        };
        // The library's own fds among the inherited ones: the takeover socket
        // and the state.
        let mut takeover_inherited = take_named(&mut inheritance.sockets, TAKEOVER_FD_NAME);
        let migration_link = take_named(&mut inheritance.sockets, MIGRATE_FD_NAME)
            .and_then(|fd| Channel::from_socket(fd).ok());
        let mut inherited_state = match take_named(&mut inheritance.sockets, STATE_FD_NAME) {
            Some(fd) => {
                let description = std::env::var(HANDOVER_STATE).ok();
                Some(state::read_inherited(
                    fd,
                    description.as_deref(),
                    config.state_limit,
                )?)
            }
            None => None,
        };
        let mut takeover_link = None;
        let mut generation = inheritance.generation;
        let mut sockets = inheritance.sockets;
        // Started on its own with a takeover path: take over if someone serves it.
        if let (Some(path), Origin::Fresh, true) =
            (&config.takeover, &inheritance.origin, sockets.is_empty())
        {
            if let Some(taken) = takeover::attempt(path, config.state_limit)? {
                sockets = taken.sockets;
                takeover_inherited = taken.listener;
                inherited_state = taken.state;
                generation = taken.generation;
                takeover_link = Some((taken.channel, taken.old_pid, taken.migrates));
                source = Source::Parent;
            }
        }
        // The hand-off variables are dropped by Program::new; then the overrides.
        let mut program = Program::new(match &config.program {
            Some(path) => path.clone(),
            None => std::env::current_exe()
                .map_err(|e| Error::io("finding this program's executable", e))?,
        });
        program.args = config
            .args
            .clone()
            .unwrap_or_else(|| std::env::args_os().collect());
        apply_env_overrides(&mut program.env, &config.env);
        let handover = Handover {
            inner: Arc::new(Inner {
                registry: Mutex::new(Registry::new(sockets, source, config.backlog)),
                phase: Mutex::new(Phase::Starting),
                drain: DrainSignal::new(),
                tracker: ConnectionTracker::new(),
                upstream: Upstream(inheritance.upstream_notify),
                origin: inheritance.origin,
                generation,
                took_over: takeover_link.is_some(),
                takeover_link: Mutex::new(takeover_link),
                takeover_inherited: Mutex::new(takeover_inherited),
                takeover_serving: Mutex::new(None),
                migration_link: Mutex::new(migration_link),
                give: Mutex::new(None),
                inboxes: Default::default(),
                inherited_state,
                state_provider: Mutex::new(None),
                reload_hook: Mutex::new(None),
                verdict: crate::beacon::Beacon::new(None),
                stop_asked: AtomicBool::new(false),
                takeover_loop: AtomicBool::new(false),
                program,
                config,
            }),
        };
        signals::install(&handover.inner.config.signals, handover.clone())
            .map_err(|e| Error::io("installing signal handlers", e))?;
        Ok(handover)
    }

    /// Registers what this process hands to its successor (re-exec or
    /// takeover): `provide` is called at each hand-over, and its bytes are what
    /// the successor finds in [`Handover::inherited_state`]. See
    /// [`crate::state`](mod@crate::state) for how they travel.
    ///
    /// ```no_run
    /// let handover = handover::Handover::new()?;
    /// let history = handover.inherited_state().unwrap_or_default().to_vec();
    /// handover.set_state(move || history.clone());
    /// # Ok::<(), handover::Error>(())
    /// ```
    pub fn set_state(&self, provide: impl Fn() -> Vec<u8> + Send + Sync + 'static) {
        *lock(&self.inner.state_provider) = Some(Arc::new(provide));
    }

    /// What the previous version handed over, if it registered any state.
    pub fn inherited_state(&self) -> Option<&[u8]> {
        self.inner.inherited_state.as_deref()
    }

    /// Whether this process took over from one that served the takeover socket
    /// (rather than being started by a handover parent, or fresh).
    pub fn took_over(&self) -> bool {
        self.inner.took_over
    }

    /// The TCP listener named `name`: the inherited one if this process was handed
    /// one by that name, else a fresh one bound at `addr` (the first address it
    /// resolves to).
    pub fn tcp_listener(
        &self,
        name: &str,
        addr: impl ToSocketAddrs,
    ) -> Result<std::net::TcpListener> {
        let address = Address::Inet(resolve(name, addr)?);
        Ok(self.claim(name, SocketKind::TcpListener, &address)?.into())
    }

    /// The UDP socket named `name`, inherited or bound at `addr`.
    pub fn udp_socket(&self, name: &str, addr: impl ToSocketAddrs) -> Result<std::net::UdpSocket> {
        let address = Address::Inet(resolve(name, addr)?);
        Ok(self.claim(name, SocketKind::Udp, &address)?.into())
    }

    /// The Unix-domain listener named `name`, inherited or bound at `path` (a stale
    /// socket file nobody listens on is replaced).
    pub fn unix_listener(&self, name: &str, path: impl AsRef<Path>) -> Result<UnixListener> {
        let address = Address::Unix(path.as_ref().to_owned());
        Ok(self.claim(name, SocketKind::UnixListener, &address)?.into())
    }

    /// The name under which `socket` (or the socket it is a copy of) was
    /// claimed, while this process holds its sockets.
    pub fn name_of(&self, socket: &impl std::os::fd::AsFd) -> Option<String> {
        self.inner.registry().name_of(socket.as_fd())
    }

    fn claim(
        &self,
        name: &str,
        kind: SocketKind,
        address: &Address,
    ) -> Result<std::os::fd::OwnedFd> {
        if !handover_mechanism::protocol::valid_name(name) {
            return Err(Error::InvalidName(name.to_owned()));
        }
        self.inner.registry().claim(name, kind, address)
    }

    /// Says this process is ready to serve: closes inherited sockets that were not
    /// claimed, then tells the parent (which commits the upgrade and starts to
    /// drain) or, for a first process, writes the PID file and tells the service
    /// manager. Call it once accepting has started. Later calls do nothing.
    ///
    /// Fails if the parent cannot be told (it died, or gave up waiting); this
    /// process keeps its sockets and may go on serving.
    pub fn ready(&self) -> Result<()> {
        {
            let mut phase = self.inner.phase();
            if *phase != Phase::Starting {
                return Ok(());
            }
            *phase = Phase::Serving;
        }
        self.inner.registry().seal();
        let link = lock(&self.inner.takeover_link).take();
        match (&self.inner.origin, link) {
            (_, Some((channel, old_pid, migrates))) => {
                let path = self.inner.config.takeover.clone().unwrap_or_default();
                match takeover::finish(&channel, old_pid, &path)? {
                    takeover::Finish::SteppedDown if migrates => {
                        crate::migration::receive(self, channel, None);
                    }
                    takeover::Finish::SteppedDown => {}
                    takeover::Finish::OldGone => {
                        self.name_self()?;
                        self.inner.upstream.notify(&[
                            NotifyState::MainPid(std::process::id()),
                            NotifyState::Ready,
                        ]);
                    }
                }
                tracing::info!(generation = self.generation(), "ready; took over");
            }
            (Origin::Successor { notify, parent }, None) => {
                tracing::info!(
                    parent,
                    generation = self.generation(),
                    "ready; telling the parent"
                );
                // `hello` on the migration channel before READY=1: the parent
                // reads it once it has READY=1.
                let link = lock(&self.inner.migration_link).take();
                let offer = crate::migration::offer();
                let link = link.filter(|link| hello::send_hello(link, &offer).is_ok());
                notify::send(notify, &[NotifyState::Ready]).map_err(|source| Error::Notify {
                    target: format!("parent pid {parent} at {}", Path::new(notify).display()),
                    source,
                })?;
                if let Some(link) = link {
                    crate::migration::receive(self, link, Some(offer));
                }
            }
            (Origin::Fresh, None) => {
                // The takeover socket first: whoever sees the PID file may use it.
                self.serve_takeovers()?;
                self.name_self()?;
                self.inner.upstream.notify(&[NotifyState::Ready]);
                tracing::info!("ready");
                return Ok(());
            }
        }
        self.serve_takeovers()
    }

    /// Writes this process's pid to the PID file, if there is one.
    fn name_self(&self) -> Result<()> {
        match &self.inner.config.pid_file {
            Some(path) => pidfile::write(path, std::process::id())
                .map_err(|e| Error::io(format!("writing PID file {}", path.display()), e)),
            None => Ok(()),
        }
    }

    /// Serves the takeover socket: the one inherited or received, else a new
    /// one at the configured path.
    fn serve_takeovers(&self) -> Result<()> {
        let Some(path) = self.inner.config.takeover.clone() else {
            return Ok(());
        };
        let listener = match lock(&self.inner.takeover_inherited).take() {
            Some(fd) => Listener::from_socket(fd).map_err(|e| Error::Takeover {
                path: path.clone(),
                why: format!("the takeover socket handed over is unusable: {e}"),
            })?,
            None => takeover::bind(&path)?,
        };
        let listener = Arc::new(listener);
        *lock(&self.inner.takeover_serving) = Some(Arc::clone(&listener));
        takeover::serve(self, listener, path);
        Ok(())
    }

    /// Serves the takeover socket again (this process is current again after
    /// a probation), if it served one.
    pub(crate) fn serve_takeovers_again(&self) {
        let listener = self.inner.takeover_socket();
        if let (Some(listener), Some(path)) = (listener, self.inner.config.takeover.clone()) {
            takeover::serve(self, listener, path);
        }
    }

    /// Starts a graceful stop: stop accepting, drain within the drain timeout.
    /// Abandons an upgrade under way (its successor is killed).
    pub fn stop(&self) {
        self.inner
            .stop(DrainReason::Stop, self.inner.config.drain_timeout);
    }

    /// Starts a fast stop: stop accepting and close connections now.
    pub fn stop_now(&self) {
        self.inner.stop(DrainReason::Exit, Duration::ZERO);
    }

    /// The signal that tells this process to stop accepting, and why.
    pub fn drain_signal(&self) -> DrainSignal {
        self.inner.drain.clone()
    }

    /// The tracker for this process's connections (the `hyper` glue uses it).
    pub fn tracker(&self) -> ConnectionTracker {
        self.inner.tracker.clone()
    }

    /// 0 for a first process, the parent's generation + 1 for a successor.
    pub fn generation(&self) -> u64 {
        self.inner.generation
    }

    /// Whether this process was started by a handover parent.
    pub fn is_successor(&self) -> bool {
        matches!(self.inner.origin, Origin::Successor { .. })
    }

    /// The configured PID file, if any.
    pub fn pid_file(&self) -> Option<&Path> {
        self.inner.config.pid_file.as_deref()
    }

    /// Drain timeout from the configuration.
    pub fn drain_timeout(&self) -> Duration {
        self.inner.config.drain_timeout
    }
}

impl Inner {
    fn stop(&self, reason: DrainReason, timeout: Duration) {
        let mut phase = self.phase();
        self.stop_asked.store(true, Ordering::SeqCst);
        let first = !matches!(*phase, Phase::Draining(_));
        if first {
            *phase = Phase::Draining(reason);
            self.verdict
                .update(|verdict| *verdict = Some(crate::AfterDrain::Exit));
            self.upstream.notify(&[NotifyState::Stopping]);
            if let Some(path) = &self.config.pid_file {
                pidfile::remove_if_holds(path, std::process::id());
            }
        }
        let order = DrainOrder {
            reason,
            deadline: Instant::now() + timeout,
        };
        if self.drain.issue(order) {
            tracing::info!(%reason, ?timeout, "draining");
        }
    }
}

impl std::fmt::Debug for Handover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handover")
            .field("generation", &self.inner.generation)
            .field("phase", &*self.inner.phase())
            .finish()
    }
}

fn resolve(name: &str, addr: impl ToSocketAddrs) -> Result<SocketAddr> {
    let bind_error = |source| Error::Bind {
        name: name.to_owned(),
        address: "(unresolved)".into(),
        source,
    };
    addr.to_socket_addrs()
        .map_err(bind_error)?
        .next()
        .ok_or_else(|| {
            bind_error(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "address resolves to nothing",
            ))
        })
}

/// Takes the inherited fd named `name` out of `sockets`.
fn take_named(sockets: &mut Vec<InheritedFd>, name: &str) -> Option<OwnedFd> {
    let at = sockets.iter().position(|s| s.name == name)?;
    Some(sockets.remove(at).fd)
}

/// Sets and removes the variables the builder was given.
fn apply_env_overrides(
    env: &mut Vec<(OsString, OsString)>,
    overrides: &[(OsString, Option<OsString>)],
) {
    for (key, value) in overrides {
        env.retain(|(k, _)| k != key);
        if let Some(value) = value {
            env.push((key.clone(), value.clone()));
        }
    }
}
