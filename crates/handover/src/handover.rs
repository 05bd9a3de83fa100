//! [`Handover`]: one per process; its named sockets, its readiness, its stop.

use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::child::Program;
use crate::notify::{self, Upstream};
use crate::protocol::env::{read_inheritance, Origin};
use crate::sockets::{Address, Registry, SocketKind, Source};
use crate::upgrade::Phase;
use crate::{
    pidfile, signals, Builder, ConnectionTracker, DrainOrder, DrainReason, DrainSignal, Error,
    Result,
};

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
}

impl Inner {
    pub(crate) fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }
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
        let inheritance = read_inheritance(
            std::env::var_os,
            std::process::id(),
            rustix::process::getppid().map(|pid| pid.as_raw_nonzero().get() as u32),
        )?;
        let source = match inheritance.origin {
            Origin::Successor { .. } => Source::Parent,
            Origin::Fresh => Source::ServiceManager,
        };
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
                registry: Mutex::new(Registry::new(inheritance.sockets, source, config.backlog)),
                phase: Mutex::new(Phase::Starting),
                drain: DrainSignal::new(),
                tracker: ConnectionTracker::new(),
                upstream: Upstream(inheritance.upstream_notify),
                origin: inheritance.origin,
                generation: inheritance.generation,
                program,
                config,
            }),
        };
        signals::install(&handover.inner.config.signals, handover.clone())
            .map_err(|e| Error::io("installing signal handlers", e))?;
        Ok(handover)
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

    fn claim(
        &self,
        name: &str,
        kind: SocketKind,
        address: &Address,
    ) -> Result<std::os::fd::OwnedFd> {
        if name.is_empty()
            || name.len() > 255
            || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
        {
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
        match &self.inner.origin {
            Origin::Successor { notify, parent } => {
                tracing::info!(
                    parent,
                    generation = self.generation(),
                    "ready; telling the parent"
                );
                notify::send(notify, &[NotifyState::Ready]).map_err(|source| Error::Notify {
                    target: format!("parent pid {parent} at {}", Path::new(notify).display()),
                    source,
                })
            }
            Origin::Fresh => {
                if let Some(path) = &self.inner.config.pid_file {
                    pidfile::write(path, std::process::id()).map_err(|e| {
                        Error::io(format!("writing PID file {}", path.display()), e)
                    })?;
                }
                self.inner.upstream.notify(&[NotifyState::Ready]);
                tracing::info!("ready");
                Ok(())
            }
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
        let first = !matches!(*phase, Phase::Draining(_));
        if first {
            *phase = Phase::Draining(reason);
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
