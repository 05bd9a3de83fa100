//! The control socket: `handover upgrade`, `status` and `stop` talk to a running
//! supervisor over the wire protocol of [`handover_wire::control`] — the very
//! protocol a library process's takeover socket answers, so one client serves
//! both (`handover status --socket PATH`).
//!
//! The socket is mode 0600 and the peer's uid is checked (same uid or root); a
//! stranger is refused before anything is sent, and a malformed request gets
//! an error reply, never a crash. Each client is served on a thread of its
//! own; the event loop hears its request as an [`Order`] and answers through a
//! channel, so a slow or silent client never holds the supervisor up.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use handover_wire::channel::{Channel, Listener};
use handover_wire::control::{self as wire, Reply as WireReply, Request as WireRequest};
use handover_wire::hello::Offer;
use handover_wire::peer::Allowed;
use tokio::sync::{mpsc, Notify};

use crate::status::Status;

/// What a client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// Start a new child, commit when ready, drain the old one.
    Upgrade,
    /// Report the supervisor's state.
    Status,
    /// Stop the child gracefully, then exit.
    Stop,
    /// Re-execute the supervisor's own binary in place.
    UpgradeSupervisor,
    /// Send the current child the reload signal.
    Reload,
    /// The counters, in the Prometheus text format.
    Metrics,
}

/// What the supervisor answers (one or more per request).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Reply {
    /// A step of a request under way.
    Progress {
        /// What happened.
        message: String,
    },
    /// The request ended.
    Done {
        /// Whether it succeeded.
        ok: bool,
        /// What happened, with the reason on failure.
        message: String,
    },
    /// The answer to `status`.
    Status(Box<Status>),
    /// The answer to `metrics`: the Prometheus text format.
    Metrics(String),
}

impl Reply {
    fn to_wire(&self) -> WireReply {
        match self {
            Reply::Progress { message } => WireReply::Progress(message.clone()),
            Reply::Done { ok, message } => WireReply::Done {
                ok: *ok,
                message: message.clone(),
            },
            Reply::Metrics(text) => WireReply::Metrics(text.clone()),
            Reply::Status(status) => match serde_json::to_value(status) {
                Ok(serde_json::Value::Object(map)) => WireReply::Status(map),
                _ => WireReply::Done {
                    ok: false,
                    message: "the status could not be encoded".into(),
                },
            },
        }
    }
}

/// A request with the channel its replies go to.
pub type Order = (Request, Replies);

/// Replies sent and not yet written to their clients, over all clients.
static UNWRITTEN: AtomicUsize = AtomicUsize::new(0);
/// Told when [`UNWRITTEN`] drops to 0.
static ALL_WRITTEN: Notify = Notify::const_new();

/// How many replies the event loop has sent that no client's thread has
/// written yet.
fn unwritten() -> usize {
    UNWRITTEN.load(Ordering::SeqCst)
}

/// Resolves once every reply sent so far is written, or after `limit`. A
/// self-upgrade waits for this before its exec ends the client threads (an
/// upgrade's final answer is often sent in the very event that lets a waiting
/// self-upgrade go ahead).
pub async fn written(limit: Duration) {
    let all_written = async {
        loop {
            let notified = ALL_WRITTEN.notified();
            tokio::pin!(notified);
            // Listening before looking: a drop to 0 in between is not missed.
            notified.as_mut().enable();
            if unwritten() == 0 {
                return;
            }
            notified.await;
        }
    };
    let _ = tokio::time::timeout(limit, all_written).await;
}

/// One reply written (or given up).
fn one_written() {
    if UNWRITTEN.fetch_sub(1, Ordering::SeqCst) == 1 {
        ALL_WRITTEN.notify_waiters();
    }
}

/// A channel for one request's replies: the event loop's end and the client
/// thread's.
pub fn replies() -> (Replies, Answers) {
    let (send, receive) = mpsc::unbounded_channel();
    (Replies(send), Answers(receive))
}

/// Where the event loop sends a request's replies. Unbounded: the event loop
/// never waits for a client (a request has a handful of replies at most).
#[derive(Debug, Clone)]
pub struct Replies(mpsc::UnboundedSender<Reply>);

impl Replies {
    /// Sends `reply`; false if the client's thread is gone.
    pub fn send(&self, reply: Reply) -> bool {
        UNWRITTEN.fetch_add(1, Ordering::SeqCst);
        let sent = self.0.send(reply).is_ok();
        if !sent {
            one_written();
        }
        sent
    }

    /// Resolves once the client's end is gone (its answer written, or the
    /// client away).
    pub async fn closed(&self) {
        self.0.closed().await
    }
}

/// The client thread's end of a request's replies.
#[derive(Debug)]
pub struct Answers(mpsc::UnboundedReceiver<Reply>);

impl Answers {
    /// The next reply, counted as unwritten until the [`Answer`] is dropped;
    /// `None` once the event loop is done with the request.
    pub fn blocking_recv(&mut self) -> Option<Answer> {
        self.0.blocking_recv().map(Answer)
    }

    /// The next reply if there is one (counted as written).
    pub fn try_recv(&mut self) -> Option<Reply> {
        let reply = self.0.try_recv().ok()?;
        one_written();
        Some(reply)
    }
}

impl Drop for Answers {
    fn drop(&mut self) {
        // What was sent and will never be written is not waited for.
        self.0.close();
        while self.0.try_recv().is_ok() {
            one_written();
        }
    }
}

/// A reply taken by a client's thread: written (or given up) once dropped.
#[derive(Debug)]
pub struct Answer(Reply);

impl Drop for Answer {
    fn drop(&mut self) {
        one_written();
    }
}

/// How long a client may take to say what it wants.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the control socket at `path` (mode 0600, its directory created 0700),
/// replacing a stale one; a live one belongs to a running supervisor.
pub fn bind(path: &Path) -> io::Result<Listener> {
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    handover_mechanism::sockets::remove_stale_unix_socket(path)?;
    let listener = Listener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts clients on a thread of its own, passing their requests to `orders`.
pub fn serve(listener: Listener, orders: mpsc::Sender<Order>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("handover-control".into())
        .spawn(move || {
            // Signals are the event loop's thread's (its clients' threads
            // inherit this mask).
            if let Err(error) = crate::supervisor::hold_signals_in_this_thread() {
                tracing::warn!(%error, "cannot hold signals on the control thread");
            }
            accept_loop(&listener, &orders)
        })?;
    Ok(())
}

fn accept_loop(listener: &Listener, orders: &mpsc::Sender<Order>) -> ! {
    loop {
        match listener.accept() {
            Ok(channel) => {
                let orders = orders.clone();
                let spawned = std::thread::Builder::new()
                    .name("handover-control-client".into())
                    .spawn(move || handle(&channel, &orders));
                if let Err(error) = spawned {
                    tracing::warn!(%error, "cannot serve a control client");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "control socket accept failed");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn handle(channel: &Channel, orders: &mpsc::Sender<Order>) {
    if channel.set_timeout(Some(REQUEST_TIMEOUT)).is_err() {
        return;
    }
    let request = match wire::accept(channel, &Allowed::default(), Offer::this_version(&[])) {
        Ok((request, _)) => request,
        Err(error) => {
            tracing::warn!(%error, "control request refused");
            return;
        }
    };
    let request = match request {
        WireRequest::Upgrade => Request::Upgrade,
        WireRequest::Status => Request::Status,
        WireRequest::Stop => Request::Stop,
        WireRequest::UpgradeSupervisor => Request::UpgradeSupervisor,
        WireRequest::Reload => Request::Reload,
        WireRequest::Metrics => Request::Metrics,
        WireRequest::Takeover => {
            channel.refuse(&handover_wire::Error::Unexpected(
                "this is a supervisor's control socket: it hands its sockets to its own \
                 children; start a new version with `handover upgrade`"
                    .into(),
            ));
            return;
        }
    };
    // The answer may take as long as an upgrade does: only sends are bounded.
    let _ = channel.set_timeout(None);
    let (replies, mut answers) = replies();
    if orders.blocking_send((request, replies)).is_err() {
        return;
    }
    while let Some(answer) = answers.blocking_recv() {
        let last = !matches!(answer.0, Reply::Progress { .. });
        if last {
            // Tests: a slow client thread, whose answer an exec must wait for.
            fail::fail_point!("control-before-final-reply");
        }
        if wire::reply(channel, &answer.0.to_wire()).is_err() || last {
            break; // written the answer, or the client went away (the request goes on)
        }
    }
    // Dropping `answers` tells the supervisor the answer is out (see Replies::closed).
}
