//! The supervisor's event loop: one task owns all state and reacts to one event
//! at a time — a control request, a signal, a child's exit, a readiness verdict,
//! a rescue's or a failed start's report, or a deadline.
//!
//! Every handler is a plain (not `async`) function: the loop waits only in
//! its `select!` (and, once, in a self-upgrade's last step before the exec:
//! a yield, see `signals.rs`), never on a control client (replies go into unbounded
//! channels) or a child's stderr (a failed start's last lines are read by a
//! task that reports back as `Event::StartFailed`) or a `/proc` scan (the
//! rescue's capture of an old child's connections runs on a blocking task and
//! reports back as `Event::Captured`; see `rescuing.rs`).
//!
//! ```text
//!  start ─▶ Starting(first) ──ready──▶ Current ──crash──▶ (backoff) ─▶ Starting(respawn)
//!                                         │
//!        upgrade: Starting(upgrade) ──ready──▶ new is Current, old ─▶ Draining ─▶ exited / killed at deadline
//!                       │
//!                       └─ exit / timeout ─▶ killed + reaped, old stays Current (rollback)
//! ```
//!
//! On commit, new connections are steered to the new child's sockets first; the
//! old child gets the stop signal once it has accepted every connection already
//! queued for it (or after [`HANDOFF_LIMIT`]), see [`crate::steering`].

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::time::{Duration, Instant, SystemTime};

use handover_mechanism::notify::NotifyState;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::control::{self, Order, Reply, Request};
use crate::error::{Error, NotReady};
use crate::fdstore::FdStore;
use crate::generation::Generation;
use crate::listeners::{Listeners, RouteRequest};
use crate::metrics::{Outcome, Reason};
use crate::rescue;
use crate::status::{ChildStatus, Record, Status};
use handover_mechanism::protocol::env::read_inheritance;

mod draining;
mod orphans;
mod reexec;
mod reload;
mod rescuing;
mod self_upgrade;
mod signals;
mod slot;
#[cfg(test)]
mod transitions;
mod upgrade;

use draining::{Draining, Next, Rescue, Stage};
use orphans::{Orphan, ORPHAN_POLL};
use signals::Signals;
use slot::Slot;

pub use reexec::STATE_VERSION;
pub(crate) use signals::hold_in_this_thread as hold_signals_in_this_thread;
pub use signals::runtime;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const HISTORY: usize = 20;
/// How long an old child may take to accept the connections queued for it
/// before the new one was ready; it is stopped after that even if some remain.
pub const HANDOFF_LIMIT: Duration = Duration::from_secs(2);
/// How often the old child's accept queue is looked at meanwhile.
pub(super) const HANDOFF_POLL: Duration = Duration::from_millis(1);

/// How long a connection left queued on a crashed child's socket may take to
/// send its request to the relay.
const ORPHAN_IDLE: Duration = Duration::from_secs(2);

type Client = Option<control::Replies>;

enum Purpose {
    First,
    Respawn,
    Upgrade { client: Client },
}

struct Starting {
    generation: Generation,
    purpose: Purpose,
    deadline: Instant,
    ready: JoinHandle<Result<(), NotReady>>,
}

/// An old child that has exited while its rescued connections are still being
/// served; its upgrade's client hears the end once they are.
struct Settling {
    pid: u32,
    how: String,
    took: f64,
    client: Client,
}

enum Event {
    Order(Request, control::Replies),
    /// A new child that was not committed, reported once its stderr is read.
    StartFailed(upgrade::StartFailed),
    /// The new binary of a self-upgrade was checked.
    SelfChecked(self_upgrade::Checked),
    /// A readiness probe asks for (or ends) its connection's route.
    Route(RouteRequest),
    /// An old child's connections were taken for the rescue (or not).
    Captured(rescuing::CaptureDone),
    Upgrade,
    Stop {
        fast: bool,
    },
    ChildExited,
    Ready(Result<(), NotReady>),
    Rescued(rescue::Report),
    Tick,
}

struct Supervisor {
    config: Config,
    listeners: Listeners,
    upstream: handover_mechanism::notify::Upstream,
    fdstore: FdStore,
    current: Option<Generation>,
    starting: Option<Starting>,
    draining: Vec<Draining>,
    settling: Vec<Settling>,
    rescue_reports: mpsc::UnboundedSender<rescue::Report>,
    rescue_in_use: rescue::InUse,
    /// Whether the reason the rescue cannot be done was logged (it is, once).
    rescue_refusal_logged: bool,
    next_number: u64,
    upgrades: VecDeque<Record>,
    crashes: VecDeque<Record>,
    backoff: Duration,
    respawn_at: Option<Instant>,
    stopping: bool,
    stop_clients: Vec<control::Replies>,
    /// Where failed starts are reported, and how many are still to come.
    start_failures: mpsc::UnboundedSender<upgrade::StartFailed>,
    failures_pending: usize,
    /// Children a crashed predecessor left, until they are gone.
    orphans: Vec<Orphan>,
    /// What the state file says now.
    saved: Option<crate::recovery::State>,
    /// This supervisor's binary and arguments (for a self-upgrade).
    image: reexec::Image,
    /// A copy of the control socket, handed to the new image.
    control_fd: std::os::fd::OwnedFd,
    /// The last self-upgrades, newest last.
    self_upgrades: VecDeque<Record>,
    self_checks: mpsc::UnboundedSender<self_upgrade::Checked>,
    /// A checked new image to switch to, once the handler has returned.
    switching: Option<self_upgrade::Switch>,
    /// A self-upgrade waiting until the supervisor is simply serving.
    self_upgrade_waiting: Option<self_upgrade::Waiting>,
    /// Where readiness probes ask for their connection's route.
    probe_routes: mpsc::UnboundedSender<RouteRequest>,
    /// Where rescue captures report.
    captures: mpsc::UnboundedSender<rescuing::CaptureDone>,
}

/// The receiving ends of the event loop's channels (and a sender for the
/// control server).
struct Receivers {
    orders_tx: mpsc::Sender<Order>,
    orders: mpsc::Receiver<Order>,
    rescued: mpsc::UnboundedReceiver<rescue::Report>,
    failures: mpsc::UnboundedReceiver<upgrade::StartFailed>,
    checks: mpsc::UnboundedReceiver<self_upgrade::Checked>,
    routes: mpsc::UnboundedReceiver<RouteRequest>,
    captures: mpsc::UnboundedReceiver<rescuing::CaptureDone>,
}

impl Receivers {
    fn borrow(&mut self) -> Inbox<'_> {
        Inbox {
            orders: &mut self.orders,
            rescued: &mut self.rescued,
            failures: &mut self.failures,
            checks: &mut self.checks,
            routes: &mut self.routes,
            captures: &mut self.captures,
        }
    }
}

/// Everything the event loop hears from besides signals: the control clients
/// and the tasks it started.
struct Inbox<'a> {
    orders: &'a mut mpsc::Receiver<Order>,
    rescued: &'a mut mpsc::UnboundedReceiver<rescue::Report>,
    failures: &'a mut mpsc::UnboundedReceiver<upgrade::StartFailed>,
    checks: &'a mut mpsc::UnboundedReceiver<self_upgrade::Checked>,
    routes: &'a mut mpsc::UnboundedReceiver<RouteRequest>,
    captures: &'a mut mpsc::UnboundedReceiver<rescuing::CaptureDone>,
}

/// What the event loop starts from: fresh, or carried across a self-upgrade.
struct Start {
    listeners: Listeners,
    fdstore: FdStore,
    control: handover_wire::channel::Listener,
    orphans: Vec<Orphan>,
    restored: Option<reexec::Carried>,
}

/// What a [`Supervisor`] owns from the start, besides its configuration.
struct Parts {
    listeners: Listeners,
    fdstore: FdStore,
    orphans: Vec<Orphan>,
    /// A copy of the control socket, handed to the new image in a self-upgrade.
    control_fd: std::os::fd::OwnedFd,
    image: reexec::Image,
}

/// Runs the supervisor until it is stopped; returns the process exit code.
pub async fn run(config: Config) -> Result<i32, Error> {
    // Fail points from FAILPOINTS, in test builds only (feature `failpoints`).
    std::mem::forget(fail::FailScenario::setup());
    let image = reexec::Image::current();
    crate::status::this_image();
    let start = match reexec::take_saved() {
        Some((text, rollback)) => {
            let restored =
                reexec::restore_or_fall_back(&config, &text, rollback).map_err(Error::Restore)?;
            Start {
                listeners: restored.listeners,
                fdstore: restored.fdstore,
                control: restored.control,
                orphans: Vec::new(),
                restored: Some(restored.carried),
            }
        }
        None => fresh(&config)?,
    };
    let Start {
        listeners,
        fdstore,
        control,
        orphans,
        restored,
    } = start;
    let control_path = config.control.clone();
    let control_error = |source| Error::Control {
        path: control_path.clone(),
        source,
    };
    let control_fd = control
        .socket()
        .try_clone_to_owned()
        .map_err(control_error)?;
    let parts = Parts {
        listeners,
        fdstore,
        orphans,
        control_fd,
        image,
    };
    let (mut supervisor, mut inbox) = Supervisor::new(config, parts);
    control::serve(control, inbox.orders_tx.clone()).map_err(control_error)?;
    if let Some(path) = &supervisor.config.pid_file {
        handover_mechanism::pidfile::write(path, std::process::id()).map_err(|source| {
            Error::PidFile {
                path: path.clone(),
                source,
            }
        })?;
    }
    let resumed = restored.is_some();
    if let Some(restored) = restored {
        supervisor.current = Some(restored.current);
        supervisor.next_number = restored.next_number;
        supervisor.upgrades = restored.upgrades;
        supervisor.crashes = restored.crashes;
        supervisor.self_upgrades = restored.self_upgrades;
    }
    supervisor.store_sockets();
    let result = supervisor.event_loop(resumed, inbox.borrow()).await;
    supervisor.cleanup();
    result
}

/// A fresh start: sockets from a crashed predecessor's orphans, from the
/// service manager's fd store, or bound now.
fn fresh(config: &Config) -> Result<Start, Error> {
    // A predecessor that crashed may have left children that still hold the
    // sockets: they are taken back from them (or we refuse, saying why).
    let recovered = crate::recovery::recover(&crate::recovery::state_path(&config.control))?;
    // Sockets handed in by the service manager's fd store (a restart after a
    // crash): taken instead of binding.
    let inheritance = read_inheritance(std::env::var_os, std::process::id(), None)?;
    let upstream = handover_mechanism::notify::Upstream::from_env();
    let fdstore_max = std::env::var("FDSTORE").ok().and_then(|v| v.parse().ok());
    let mut handed_in = inheritance.sockets;
    handed_in.extend(recovered.sockets);
    let mut fdstore = FdStore::new(upstream, fdstore_max, handed_in);
    let listeners = Listeners::bind(&config.listen, 1, &mut fdstore)?;
    fdstore.close_unclaimed();
    let control = control::bind(&config.control).map_err(|source| Error::Control {
        path: config.control.clone(),
        source,
    })?;
    let orphans = recovered
        .orphans
        .into_iter()
        .map(|process| Orphan {
            process,
            deadline: None,
        })
        .collect();
    Ok(Start {
        listeners,
        fdstore,
        control,
        orphans,
        restored: None,
    })
}

impl Supervisor {
    /// A supervisor with no child yet, owning `parts`, and the channels its
    /// event loop reads.
    fn new(config: Config, parts: Parts) -> (Supervisor, Receivers) {
        let (orders_tx, orders) = mpsc::channel::<Order>(16);
        let (rescue_reports, rescued) = mpsc::unbounded_channel();
        let (start_failures, failures) = mpsc::unbounded_channel();
        let (self_checks, checks) = mpsc::unbounded_channel();
        let (probe_routes, routes) = mpsc::unbounded_channel();
        let (captures_tx, captures) = mpsc::unbounded_channel();
        let supervisor = Supervisor {
            upstream: handover_mechanism::notify::Upstream::from_env(),
            fdstore: parts.fdstore,
            config,
            listeners: parts.listeners,
            current: None,
            starting: None,
            draining: Vec::new(),
            settling: Vec::new(),
            rescue_reports,
            rescue_in_use: rescue::InUse::default(),
            rescue_refusal_logged: false,
            next_number: 1,
            upgrades: VecDeque::new(),
            crashes: VecDeque::new(),
            backoff: FIRST_BACKOFF,
            respawn_at: None,
            stopping: false,
            stop_clients: Vec::new(),
            start_failures,
            failures_pending: 0,
            orphans: parts.orphans,
            saved: None,
            image: parts.image,
            control_fd: parts.control_fd,
            self_upgrades: VecDeque::new(),
            self_checks,
            switching: None,
            self_upgrade_waiting: None,
            probe_routes,
            captures: captures_tx,
        };
        let receivers = Receivers {
            orders_tx,
            orders,
            rescued,
            failures,
            checks,
            routes,
            captures,
        };
        (supervisor, receivers)
    }

    async fn event_loop(&mut self, resumed: bool, inbox: Inbox<'_>) -> Result<i32, Error> {
        let Inbox {
            orders,
            rescued,
            failures,
            checks,
            routes,
            captures,
        } = inbox;
        let mut signals = Signals::install().map_err(Error::Signal)?;
        if resumed {
            // Re-executed: the child serves on. A child that exited during
            // the exec sent its SIGCHLD to nobody: look now.
            self.reap();
            self.notify_upstream(&[NotifyState::Ready]);
        } else {
            self.start(Purpose::First).map_err(Error::FirstChild)?;
        }
        tracing::info!(command = ?self.config.command, ready = %self.config.ready, "supervising");
        loop {
            self.save_state();
            if self.stopping
                && self.current.is_none()
                && self.starting.is_none()
                && self.draining.is_empty()
                && self.settling.is_empty()
                && self.orphans.is_empty()
                && self.failures_pending == 0
            {
                // The PID file goes before "stopped" is said: whoever asked may
                // look for it the moment it hears that.
                if let Some(path) = &self.config.pid_file {
                    handover_mechanism::pidfile::remove_if_holds(path, std::process::id());
                }
                for client in self.stop_clients.drain(..) {
                    let _ = client.send(Reply::Done {
                        ok: true,
                        message: "stopped".into(),
                    });
                    // Exit only once the answer is written (the handler then drops
                    // its end), or after a second if the client does not read.
                    let _ = tokio::time::timeout(Duration::from_secs(1), client.closed()).await;
                }
                tracing::info!("all children gone; exiting");
                return Ok(0);
            }
            let deadline = self.next_deadline();
            let event = tokio::select! {
                Some((request, replies)) = orders.recv() => Event::Order(request, replies),
                event = signals.next() => event,
                verdict = ready_verdict(&mut self.starting) => Event::Ready(verdict),
                Some(report) = rescued.recv() => Event::Rescued(report),
                Some(failed) = failures.recv() => Event::StartFailed(failed),
                Some(checked) = checks.recv() => Event::SelfChecked(checked),
                Some(route) = routes.recv() => Event::Route(route),
                Some(captured) = captures.recv() => Event::Captured(captured),
                () = tokio::time::sleep_until(deadline.into()) => Event::Tick,
            };
            self.handle(event);
            if let Some(switch) = self.switching.take() {
                self.switch_image(switch, &mut signals).await;
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Order(Request::Upgrade, client) => self.upgrade(Some(client)),
            Event::Order(Request::Status, client) => {
                let _ = client.send(Reply::Status(Box::new(self.status())));
            }
            Event::Order(Request::Stop, client) => {
                let _ = client.send(progress(
                    "stopping: the child drains, then the supervisor exits",
                ));
                self.stop_clients.push(client);
                self.stop(false);
            }
            Event::Upgrade => self.upgrade(None),
            Event::Stop { fast } => self.stop(fast),
            Event::ChildExited => self.reap(),
            Event::Ready(Ok(())) => self.commit(),
            Event::Ready(Err(why)) => self.fail_starting(
                Reason::ProbeFailed,
                format!("could not be checked for readiness: {why}"),
                false,
            ),
            Event::Rescued(report) => self.rescued(report),
            Event::StartFailed(failed) => self.start_failed(failed),
            Event::SelfChecked(checked) => self.self_checked(checked),
            Event::Captured(captured) => self.captured(captured),
            Event::Route(route) => {
                let routed = self.listeners.route_probe(route.source, route.epoch);
                match route.done {
                    Some(done) => {
                        let _ = done.send(routed);
                    }
                    None => {
                        if let Err(error) = routed {
                            tracing::warn!(%error, "cannot end a probe route");
                        }
                    }
                }
            }
            Event::Order(Request::Reload, client) => self.reload(Some(client)),
            Event::Order(Request::Metrics, client) => {
                let _ = client.send(Reply::Metrics(crate::metrics::get().encode()));
            }
            Event::Order(Request::UpgradeSupervisor, client) => {
                self.upgrade_supervisor(Some(client))
            }
            Event::Tick => self.tick(),
        }
        self.retry_self_upgrade();
    }

    fn reap(&mut self) {
        let starting_exit = self
            .starting
            .as_ref()
            .and_then(|s| s.generation.child.exited().ok().flatten());
        if let Some(status) = starting_exit {
            self.fail_starting(
                Reason::Exited,
                format!("{status} before it was ready"),
                true,
            );
        }
        let current_exit = self
            .current
            .as_ref()
            .and_then(|c| c.child.exited().ok().flatten());
        if let Some(status) = current_exit {
            let Some(crashed) = self.current.take() else {
                return;
            };
            // An old child that has exited too is no rollback target.
            self.reap_draining();
            if self.roll_back(&crashed, &status.to_string()) {
                return;
            }
            let crashed = crashed.pid();
            let upgrading = self
                .starting
                .as_ref()
                .filter(|s| matches!(s.purpose, Purpose::Upgrade { .. }))
                .map(|s| (s.generation.pid(), s.generation.epoch));
            if let Some((pid, epoch)) = upgrading {
                // Nobody accepts on the crashed child's sockets any more: let
                // clients wait for the new child instead (and, if it fails, for
                // the restart, which gets these sockets).
                tracing::error!(
                    "pid {crashed} {status} unexpectedly during an upgrade; new connections wait for new pid {pid}"
                );
                self.steer_to(epoch);
            }
            if !self.stopping {
                let message = format!(
                    "pid {crashed} {status} unexpectedly; restarting it (sockets stay open)"
                );
                tracing::error!(%message);
                push(&mut self.crashes, false, message);
                crate::metrics::get().restart();
                self.schedule_respawn();
            }
        }
        self.reap_draining();
    }

    /// The current child `crashed` (it `how`): if an old child is still on
    /// probation, it is current again — connections are steered back to its
    /// socket at once, those left queued on the crashed child's socket are
    /// relayed to it — and the upgrade that replaced it is recorded as failed.
    /// Returns whether it rolled back.
    fn roll_back(&mut self, crashed: &Generation, how: &str) -> bool {
        if self.stopping {
            return false;
        }
        let Some(at) = draining::rollback_target(self.draining.iter().map(|d| d.stage)) else {
            return false;
        };
        let old = self.draining.remove(at);
        let (pid, new) = (old.generation.pid(), crashed.pid());
        self.steer_to(old.generation.epoch);
        let orphans = self.listeners.take_queued(crashed.epoch);
        let queued = orphans.len();
        rescue::serve_orphans(
            orphans,
            ORPHAN_IDLE,
            Instant::now() + self.config.drain_timeout,
        );
        let message = format!(
            "new pid {new} {how} on probation; old pid {pid} serves again (rolled back; \
             {queued} connection(s) it had not accepted relayed there)"
        );
        tracing::error!(%message);
        push(&mut self.crashes, false, message.clone());
        self.record_upgrade(
            Outcome::RolledBack,
            Reason::DiedOnProbation,
            message.clone(),
        );
        done(&old.client, false, format!("upgrade failed: {message}"));
        self.current = Some(old.generation);
        self.release_unused_epochs();
        self.notify_upstream(&[NotifyState::Ready]);
        true
    }

    /// Reaps the old children that have exited.
    fn reap_draining(&mut self) {
        let mut still = Vec::new();
        for draining in std::mem::take(&mut self.draining) {
            match draining.generation.child.exited() {
                Ok(Some(status)) => {
                    let (pid, took) = (
                        draining.generation.pid(),
                        draining.since.elapsed().as_secs_f64(),
                    );
                    let how = if draining.stage == Stage::Killed {
                        "was killed at the drain deadline".to_owned()
                    } else {
                        status.to_string()
                    };
                    tracing::info!(pid, %how, "old child gone");
                    crate::metrics::get().drained(took);
                    let settling = Settling {
                        pid,
                        how,
                        took,
                        client: draining.client,
                    };
                    match draining.rescue {
                        Rescue::Watching => self.settling.push(settling),
                        Rescue::Done(counts) => settle(settling, Some(counts)),
                        Rescue::NotTaken => settle(settling, None),
                    }
                }
                _ => still.push(draining),
            }
        }
        self.draining = still;
        self.release_unused_epochs();
    }

    fn tick(&mut self) {
        self.advance_draining();
        self.check_orphans();
        let now = Instant::now();
        if self.starting.as_ref().is_some_and(|s| s.deadline <= now) {
            let why = format!(
                "was not ready within {}",
                humantime::format_duration(self.config.ready_timeout)
            );
            self.fail_starting(Reason::ReadyTimeout, why, false);
        }
        if self.slot().restart_due(now) {
            self.respawn_at = None;
            if let Err(error) = self.start(Purpose::Respawn) {
                tracing::error!(%error, "restart failed");
                self.schedule_respawn();
            }
        }
    }

    /// A rescue's connections have settled (the stop signal may go), or are
    /// all accounted for.
    fn rescued(&mut self, report: rescue::Report) {
        let (pid, counts) = match report {
            rescue::Report::Settled { pid } => {
                if let Some(draining) = self.draining.iter_mut().find(|d| d.generation.pid() == pid)
                {
                    if let Stage::Settling { until } = &mut draining.stage {
                        *until = Instant::now();
                    }
                }
                self.advance_draining();
                return;
            }
            rescue::Report::Done { pid, counts } => (pid, counts),
        };
        crate::metrics::get().rescue(&counts);
        if let Some(record) = self
            .upgrades
            .iter_mut()
            .rev()
            .find(|r| r.old_pid == Some(pid))
        {
            record.connections = Some(counts);
        }
        if let Some(draining) = self.draining.iter_mut().find(|d| d.generation.pid() == pid) {
            draining.rescue = Rescue::Done(counts);
            return;
        }
        if let Some(at) = self.settling.iter().position(|s| s.pid == pid) {
            settle(self.settling.remove(at), Some(counts));
        }
    }

    fn schedule_respawn(&mut self) {
        if !self.slot().needs_restart() {
            return;
        }
        tracing::warn!(after = ?self.backoff, "restarting the child");
        self.respawn_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn stop(&mut self, fast: bool) {
        if !self.stopping {
            self.notify_upstream(&[NotifyState::Stopping]);
        }
        self.stopping = true;
        self.respawn_at = None;
        if self.starting.is_some() {
            self.fail_starting(
                Reason::Stopping,
                "was abandoned: the supervisor is stopping".into(),
                false,
            );
        }
        if let Some(current) = self.current.take() {
            let _ = current.child.signal(if fast {
                libc::SIGKILL
            } else {
                self.config.stop_signal
            });
            let mut draining =
                Draining::new(current, Duration::ZERO, self.config.drain_timeout, None);
            // Signalled just above.
            draining.stage = if fast { Stage::Killed } else { Stage::Stopped };
            self.draining.push(draining);
        }
        for draining in &mut self.draining {
            draining.hurry(); // stop the old ones now too
        }
        self.advance_draining();
        if fast {
            for draining in &mut self.draining {
                let _ = draining.generation.child.signal(libc::SIGKILL);
                draining.stage = Stage::Killed;
            }
        }
        self.stop_orphans(fast);
        tracing::info!(fast, "stopping");
    }

    fn next_deadline(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let starting = self.starting.as_ref().map(|s| s.deadline);
        let draining = self
            .draining
            .iter()
            .filter_map(|d| d.stage.wakes_at(d.deadline));
        let orphans = (!self.orphans.is_empty()).then(|| Instant::now() + ORPHAN_POLL);
        starting
            .into_iter()
            .chain(draining)
            .chain(self.respawn_at)
            .chain(orphans)
            .chain(self.self_upgrade_waiting.as_ref().map(|w| w.until))
            .fold(far, Instant::min)
    }

    /// Sends new connections to `epoch`'s sockets, and keeps those in the
    /// service manager's fd store.
    fn steer_to(&mut self, epoch: u64) {
        self.listeners.steer_to(epoch);
        self.store_sockets();
    }

    /// Puts the sockets new connections go to in the fd store (if any).
    fn store_sockets(&mut self) {
        if !self.fdstore.enabled() {
            return;
        }
        for (name, fd) in self.listeners.current() {
            self.fdstore.store(&name, fd.as_fd());
        }
    }

    /// Where the current slot is (see [`slot`]).
    fn slot(&self) -> Slot {
        let starting = self.starting.as_ref().map(|s| {
            let upgrade = matches!(s.purpose, Purpose::Upgrade { .. });
            (s.generation.pid(), upgrade)
        });
        Slot::of(
            self.stopping,
            self.current.is_some(),
            starting,
            self.respawn_at,
        )
    }

    fn notify_upstream(&self, states: &[NotifyState<'_>]) {
        self.upstream.notify(states);
    }

    /// Records an upgrade's end, in the history and the counters.
    fn record_upgrade(&mut self, outcome: Outcome, reason: Reason, message: String) {
        crate::metrics::get().upgrade(outcome, reason);
        push(&mut self.upgrades, outcome == Outcome::Ok, message);
    }

    fn status(&self) -> Status {
        let child = |g: &Generation| ChildStatus {
            pid: g.pid(),
            generation: g.number,
            age_s: g.started.elapsed().as_secs_f64(),
        };
        Status {
            supervisor_pid: std::process::id(),
            command: self
                .config
                .command
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect(),
            sockets: self.listeners.status(),
            current: self.current.as_ref().map(child),
            starting: self.starting.as_ref().map(|s| child(&s.generation)),
            draining: self.draining.iter().map(|d| child(&d.generation)).collect(),
            upgrades: self.upgrades.iter().cloned().collect(),
            crashes: self.crashes.iter().cloned().collect(),
            stopping: self.stopping,
            slot: self.slot().name().to_owned(),
            self_upgrades: self.self_upgrades.iter().cloned().collect(),
            image: Some(crate::status::this_image()),
        }
    }

    fn cleanup(&mut self) {
        for draining in self.draining.drain(..) {
            draining.generation.child.kill_and_reap();
        }
        if let Some(path) = &self.config.pid_file {
            handover_mechanism::pidfile::remove_if_holds(path, std::process::id());
        }
        let _ = std::fs::remove_file(&self.config.control);
        // A clean exit leaves nothing to recover.
        let _ = std::fs::remove_file(crate::recovery::state_path(&self.config.control));
    }
}

/// Tells an upgrade's client that its old child is gone (and what became of its
/// connections).
fn settle(settling: Settling, counts: Option<rescue::Counts>) {
    let Settling {
        pid,
        how,
        took,
        client,
    } = settling;
    let connections = counts.map_or_else(String::new, |c| format!("; its connections: {c}"));
    done(
        &client,
        true,
        format!("old pid {pid} {how} after draining {took:.2}s{connections}"),
    );
}

async fn ready_verdict(starting: &mut Option<Starting>) -> Result<(), NotReady> {
    match starting {
        Some(starting) => match (&mut starting.ready).await {
            Ok(verdict) => verdict,
            Err(error) => Err(NotReady::Task(error.to_string())),
        },
        None => std::future::pending().await,
    }
}

fn push(records: &mut VecDeque<Record>, ok: bool, message: String) {
    if records.len() == HISTORY {
        records.pop_front();
    }
    let at_unix_s = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    records.push_back(Record {
        at_unix_s,
        ok,
        message,
        old_pid: None,
        connections: None,
    });
}

fn progress(message: impl Into<String>) -> Reply {
    Reply::Progress {
        message: message.into(),
    }
}

fn say(client: &Client, message: String) {
    if let Some(client) = client {
        let _ = client.send(progress(message));
    }
}

fn done(client: &Client, ok: bool, message: String) {
    if let Some(client) = client {
        let _ = client.send(Reply::Done { ok, message });
    }
}
