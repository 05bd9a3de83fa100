//! Keep-alive rescue: the client connections an old child drops at shutdown
//! are served to the end instead of failing.
//!
//! Most servers, told to stop, close their idle keep-alive connections. A
//! client that is sending its next request on such a connection at that moment
//! gets EOF or a reset, and a client that does not retry (a load balancer, most
//! API clients, any non-idempotent request) reports a failure. The supervisor
//! is the parent of the old child, so it can prevent that:
//!
//! 1. **Capture** (`capture.rs`): just before the stop signal, the supervisor
//!    takes its own duplicate of every client connection the old child and its
//!    descendants hold on the supervisor's TCP listeners (`pidfd_getfd`). A
//!    socket ends only when its last descriptor closes, so when the child then
//!    closes an idle connection, nothing reaches the client: no FIN, no reset.
//!    What the clients send from then on is held back (a socket filter,
//!    [`handover_mechanism::sockets::hold`]): a server that closes its idle
//!    connections at the stop signal (Go's `Shutdown`) would otherwise, now
//!    and then, read the start of a request in the very microseconds it
//!    decides the connection is idle, and that request would be lost with it.
//!    The hold ends for a connection when the child lets go of it (the relay
//!    gets the client's retransmission); for busy ones as soon as the child
//!    has closed an idle one (it has swept: it finishes the busy ones itself);
//!    for all if the child closes none within `--rescue-hold` (250 ms: it
//!    keeps its idle connections and serves them); and after 2 s at most.
//!    A request held back waits one retransmission (~200 ms) longer.
//! 2. **Watch** (this module): every 2 ms while the child is letting go of
//!    connections (backing off to 32 ms when nothing changes), the supervisor
//!    looks which of them the child's processes still hold (`/proc/PID/fd`) and
//!    at each connection's kernel counters. It never reads a connection the
//!    child still holds.
//! 3. **Verdict** (`verdict.rs`) when the child lets go of one: released (the
//!    child finished it), rescued, or lost (the child read part of a request and
//!    left; nobody can answer it).
//! 4. **Relay** (`relay.rs`): a rescued connection's next request goes to the
//!    new child over a fresh connection through the listener, which steering
//!    sends to the new child, and the response comes back on the client's own
//!    connection with `Connection: close` — so the client's next connection
//!    goes to the new child directly and the supervisor leaves the data path.
//!    Raw TCP listeners (`tcp://`) are relayed byte for byte.
//!
//! ```text
//!  captured ──child still holds it──▶ watched ──child lets go──▶ Release ─▶ closed (the child's FIN, or the client's)
//!                                        │                     ├─▶ Rescue ─▶ relayed ─▶ Connection: close ─▶ closed
//!                                        │                     │               └─ nothing within the idle timeout ─▶ closed
//!                                        │                     └─▶ Lost ────▶ closed, counted
//!                                        └─ child sent its FIN ─▶ Release (while it still holds it)
//! ```
//!
//! Ownership: the duplicates belong to one `watch` task per upgrade; a
//! relay task owns each rescued connection; the event loop only receives the
//! final [`Counts`]. The supervisor closes its duplicates with `close()` and
//! never calls `shutdown()` on a connection a child still holds (that would act
//! on the shared socket). Bounded: at most [`Settings::max`] connections held
//! at once by all rescues (and what the fd limit allows), every wait under the
//! drain deadline. Where the kernel or permissions forbid `pidfd_getfd`, the capture
//! fails with the reason and the upgrade goes on as without rescue.

mod capture;
pub mod http1;
mod relay;
mod verdict;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

pub(crate) use capture::Captured;
use capture::Held;
pub(crate) use capture::Target;
use relay::{Limits, Outcome};
use verdict::Verdict;

use crate::config::Protocol;

/// `--rescue-max`, `--rescue-idle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// At most this many connections held at once, by all rescues together.
    pub max: usize,
    /// How long a rescued connection may stay silent before it is closed.
    pub idle: Duration,
    /// How long the incoming data of connections idle at the capture is held
    /// back (zero: not at all).
    pub hold: Duration,
}

/// What became of the connections of one old child.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Finished by the child or the client (or silent until the idle timeout)
    /// and closed cleanly.
    pub released: u64,
    /// Served by the new child through the supervisor after the old one let go.
    pub rescued: u64,
    /// Dropped by the old child in the middle of a request, or broken in the
    /// relay before an answer.
    pub lost: u64,
    /// Left alone because the limit was reached (they end as without rescue).
    pub not_held: u64,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} released, {} rescued, {} lost mid-request",
            self.released, self.rescued, self.lost
        )?;
        if self.not_held > 0 {
            write!(f, ", {} not held (over --rescue-max)", self.not_held)?;
        }
        Ok(())
    }
}

impl Counts {
    fn add(&mut self, relayed: Result<Outcome, tokio::task::JoinError>) {
        match relayed {
            Ok(Outcome::Released) => self.released += 1,
            Ok(Outcome::Rescued) => self.rescued += 1,
            Ok(Outcome::Lost) | Err(_) => self.lost += 1,
        }
    }
}

/// What a watch tells the event loop about old child `pid`.
#[derive(Debug)]
pub(crate) enum Report {
    /// Its connections are between requests (or the wait is over): send the
    /// stop signal now.
    Settled { pid: u32 },
    /// Every connection is accounted for.
    Done { pid: u32, counts: Counts },
}

/// How long the stop signal may wait for the old child to finish the requests
/// it is busy with (no new one reaches it: they are held back), so that it
/// gets the signal with every connection between requests.
const SETTLE_LIMIT: Duration = Duration::from_millis(250);

/// How many connections every rescue holds at once, against
/// [`Settings::max`]; shared by the event loop (which captures) and the watch
/// tasks (which let go).
#[derive(Debug, Clone, Default)]
pub(crate) struct InUse(Arc<AtomicUsize>);

/// A watch task's share of [`InUse`]: given back one by one, the rest when it
/// is dropped (so a watch that ends early frees its share).
struct Slots {
    in_use: InUse,
    held: usize,
}

impl InUse {
    fn claim(&self, held: usize) -> Slots {
        self.0.fetch_add(held, Ordering::Relaxed);
        Slots {
            in_use: self.clone(),
            held,
        }
    }

    fn now(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

impl Slots {
    fn give_back(&mut self) {
        if self.held > 0 {
            self.held -= 1;
            self.in_use.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        self.in_use.0.fetch_sub(self.held, Ordering::Relaxed);
    }
}

/// The longest an idle connection's data is held back, even from a child
/// that closes its idle connections but has not closed this one yet.
const HOLD_CAP: Duration = Duration::from_secs(2);

/// How often the child's hold is looked at while it is letting go of
/// connections (servers close their idle ones right at the stop signal), and
/// at most how long the looks back off to when nothing changes: a connection
/// let go later waits at most that long before its request is relayed.
const LOOK_FAST: Duration = Duration::from_millis(2);
const LOOK_SLOW: Duration = Duration::from_millis(32);
/// How long after the last let-go the looks stay fast.
const STAY_FAST: Duration = Duration::from_millis(250);

/// Takes the old child's client connections, as many as `--rescue-max` minus
/// those other rescues hold, and the fd limit, allow: `Ok(None)` if it has none.
pub(crate) fn capture(
    pid: u32,
    targets: &[Target],
    settings: Settings,
    in_use: &InUse,
) -> Result<Option<Captured>, String> {
    let pids: Vec<u32> = crate::ownership::descendants(pid).into_iter().collect();
    let limit = settings.max.saturating_sub(in_use.now()).min(fd_room());
    let captured = capture::capture(&pids, targets, limit, !settings.hold.is_zero())?;
    Ok((!captured.held.is_empty() || captured.over_limit > 0).then_some(captured))
}

/// Descriptors this process can still open for relays (two per connection:
/// the client's and the new child's), keeping a margin for everything else.
fn fd_room() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1024) as usize;
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    limit.saturating_sub(open + 64) / 2
}

/// Watches `captured` until the old child has let go of every connection, then
/// waits for the relays and reports. `deadline` is the old child's drain deadline.
pub(crate) async fn watch(
    pid: u32,
    captured: Captured,
    targets: Vec<Target>,
    settings: Settings,
    deadline: Instant,
    in_use: InUse,
    reports: mpsc::UnboundedSender<Report>,
) {
    let mut slots = in_use.claim(captured.held.len());
    let mut counts = Counts {
        not_held: captured.over_limit as u64,
        ..Counts::default()
    };
    let Captured {
        held: mut pending,
        mut processes,
        ..
    } = captured;
    let mut relays = JoinSet::new();
    let started = Instant::now();
    let (mut interval, mut changed) = (LOOK_FAST, started);
    // When the child got its stop signal (asked for once its connections have
    // settled between requests, see SETTLE_LIMIT).
    let mut signalled: Option<Instant> = None;
    // Whether the child has closed a connection that was idle: it is a server
    // that closes its idle connections at the stop signal, and has done so.
    let mut swept = false;
    loop {
        if signalled.is_none()
            && (pending.iter().all(|c| c.track.settled()) || started.elapsed() >= SETTLE_LIMIT)
        {
            for connection in &mut pending {
                connection.idle_at_signal = connection.track.settled();
            }
            signalled = Some(Instant::now());
            let _ = reports.send(Report::Settled { pid });
        }
        if pending.is_empty() {
            break;
        }
        let since_signal = signalled.map_or(Duration::ZERO, |at| at.elapsed());
        for connection in &mut pending {
            // An idle connection is held until the signal; then until the
            // child lets go of it if the child has swept (it closes its idle
            // connections, and finishes the busy ones itself saying
            // Connection: close), else until it is clear the child keeps its
            // idle connections (no sweep within --rescue-hold); at the latest
            // until HOLD_CAP.
            // A busy connection always gets its data: the child may have read
            // the first byte of its request already (Go's background read)
            // and must be able to finish it.
            let idle = !connection.track.owes();
            let keep = match (signalled, swept) {
                (None, _) => idle,
                (Some(_), true) => idle && connection.idle_at_signal && since_signal < HOLD_CAP,
                (Some(_), false) => idle && since_signal < settings.hold,
            };
            if keep {
                connection.hold_data();
            } else {
                connection.let_data_through();
            }
        }
        let look = tokio::task::spawn_blocking(move || {
            let let_go = look(&mut pending, &mut processes);
            (pending, processes, let_go)
        })
        .await;
        let Ok((rest, procs, let_go)) = look else {
            tracing::error!(pid, "the rescue watcher failed; its connections are closed");
            break;
        };
        (pending, processes) = (rest, procs);
        if !let_go.is_empty() {
            changed = Instant::now();
        }
        interval = if changed.elapsed() < STAY_FAST {
            LOOK_FAST
        } else {
            (interval * 2).min(LOOK_SLOW)
        };
        while let Some(outcome) = relays.try_join_next() {
            counts.add(outcome);
            slots.give_back();
        }
        swept |= signalled.is_some()
            && let_go
                .iter()
                .any(|(held, verdict)| held.idle_at_signal && *verdict == Verdict::Rescue);
        for (held, verdict) in let_go {
            match verdict {
                Verdict::Release => {
                    counts.released += 1;
                    slots.give_back();
                }
                Verdict::Lost => {
                    counts.lost += 1;
                    slots.give_back();
                }
                Verdict::Rescue => {
                    let target = &targets[held.target];
                    let limits = Limits {
                        idle_until: Instant::now() + settings.idle,
                        deadline,
                    };
                    match into_stream(held) {
                        Ok(client) => {
                            relays.spawn(relay_one(client, target.clone(), limits));
                        }
                        Err(error) => {
                            tracing::warn!(%error, "cannot relay a rescued connection");
                            counts.lost += 1;
                            slots.give_back();
                        }
                    }
                }
            }
        }
        if !pending.is_empty() {
            tokio::time::sleep(interval).await;
        }
    }
    while let Some(outcome) = relays.join_next().await {
        counts.add(outcome);
        slots.give_back();
    }
    tracing::info!(pid, %counts, "old child's connections");
    let _ = reports.send(Report::Done { pid, counts });
}

/// One look: the connections no process of the child holds any more, with
/// their verdicts; the others stay in `pending`.
fn look(pending: &mut Vec<Held>, processes: &mut Vec<capture::Process>) -> Vec<(Held, Verdict)> {
    // Who holds what first, counters second: a connection seen let go is then
    // looked at after everything the child did with it.
    let Some(held) = capture::still_held(processes) else {
        return Vec::new();
    };
    let mut let_go = Vec::new();
    let mut kept = Vec::with_capacity(pending.len());
    for mut connection in pending.drain(..) {
        let info = handover_mechanism::sockets::tcp_info::connection_info(
            std::os::fd::AsFd::as_fd(&connection.fd),
        );
        let Ok(info) = info else {
            let_go.push((connection, Verdict::Release)); // not a live socket any more
            continue;
        };
        if !held.contains(&connection.inode) {
            let verdict = connection.track.verdict(&info);
            tracing::debug!(?verdict, ?info, track = ?connection.track, "let go");
            let_go.push((connection, verdict));
        } else if info.state.sent_fin() {
            // The child closed it properly and may close its fd later: ours
            // goes now (close, not shutdown: the child's copy is untouched;
            // the hold goes first, so the child can still read).
            connection.let_data_through();
            let_go.push((connection, Verdict::Release));
        } else {
            connection.track.observe(&info);
            kept.push(connection);
        }
    }
    *pending = kept;
    let_go
}

fn into_stream(mut held: Held) -> std::io::Result<TcpStream> {
    held.let_data_through();
    let fd = held.fd.try_clone()?;
    drop(held);
    let stream = std::net::TcpStream::from(fd);
    // The child no longer holds this open file description: making it
    // non-blocking cannot surprise anyone.
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}

async fn relay_one(client: TcpStream, target: Target, limits: Limits) -> Outcome {
    match target.protocol {
        Protocol::Http => relay::http(client, target.connect, limits).await,
        Protocol::Raw => relay::tcp(client, target.connect, limits).await,
    }
}

/// Serves connections that were queued on the socket of a child that died
/// before accepting them (a new child that crashed on probation): each is
/// relayed through the listener — which now steers to the child serving again —
/// with `Connection: close` on the last answer, so the client's next
/// connection goes there directly. Runs in the background; each relay is
/// bounded by `idle` for the first byte and by `deadline` for everything.
pub(crate) fn serve_orphans(
    orphans: Vec<(std::net::TcpStream, Target)>,
    idle: Duration,
    deadline: Instant,
) {
    if orphans.is_empty() {
        return;
    }
    let limits = Limits {
        idle_until: Instant::now() + idle,
        deadline,
    };
    tokio::spawn(async move {
        let mut relays = JoinSet::new();
        let taken = orphans.len();
        for (stream, target) in orphans {
            match stream
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(stream))
            {
                Ok(client) => {
                    relays.spawn(relay_one(client, target, limits));
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot relay a connection the dead child left queued")
                }
            }
        }
        let mut counts = Counts::default();
        while let Some(relayed) = relays.join_next().await {
            counts.add(relayed);
        }
        tracing::info!(taken, %counts, "connections the dead child left queued");
    });
}
