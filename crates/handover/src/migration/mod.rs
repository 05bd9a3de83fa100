//! Live connection migration: established connections move to the new
//! version with the bytes already read and a small state, and never close.
//!
//! Draining ends every connection in the old process; a keep-alive client
//! must reconnect and a long-lived one (a chat, a database proxy, a push
//! stream) breaks at each upgrade. With migration, once the successor is
//! ready, the old process hands each connection over at a point the
//! application knows is safe — between two requests, at a line or frame
//! boundary — and the successor serves it as if it had accepted it, the
//! unread bytes first. The client sees nothing but a different pid.
//!
//! ```text
//!  old process (draining)                         successor (ready)
//!  ──────────────────────                         ─────────────────
//!  at a safe point: Migration::hand_over(m) ─┐     Handover::migrated("echo") (before ready())
//!                                            │ queued, sent in batches of ≤ 252:
//!     still owns the connection ─────────────┼──▶ connections + fds
//!                                            │    the listener has a receiver?
//!     closes its copy (close(), never  ◀─────┼─── taken [true, false, …], room
//!     shutdown()); Ok(())                    │    Arrivals::recv() → Migrant
//!     Err(Kept): serve on, or drain ◀────────┘    (serves it: unread bytes first)
//! ```
//!
//! It is **two-phase**: until the successor says `taken`, the connection is the
//! old process's, which still holds it. If the successor dies, refuses (no
//! receiver for that listener, no room for the descriptor, a state it cannot
//! read) or does not answer within 5 s, [`Migration::hand_over`] returns the
//! connection as [`Kept`], and the old process serves it on or drains it the
//! usual way: nothing is closed or lost. The channel is the wire protocol's
//! (docs/PROTOCOL.md): the takeover connection in a takeover, a socket pair
//! passed as an fd in a re-exec upgrade.
//!
//! In the old process:
//!
//! ```no_run
//! # fn serve_on(_: std::net::TcpStream) {}
//! # fn demo(handover: &handover::Handover, stream: std::net::TcpStream, partial: Vec<u8>) {
//! use handover::migration::Migrant;
//!
//! // The drain order came; this connection is at a line boundary.
//! if let Some(migration) = handover.migration().filter(|m| m.accepts("echo")) {
//!     let migrant = Migrant { listener: "echo".into(), stream, unread: partial, state: vec![] };
//!     match migration.hand_over(migrant) {
//!         Ok(()) => {} // the successor has it; our copy is closed
//!         Err(kept) => serve_on(kept.migrant.stream), // still ours
//!     }
//! }
//! # }
//! ```
//!
//! In the successor, before `ready()`:
//!
//! ```no_run
//! # fn serve(_: handover::migration::Migrant) {}
//! # fn demo(handover: &handover::Handover) {
//! let arrivals = handover.migrated("echo");
//! std::thread::spawn(move || {
//!     while let Some(migrant) = arrivals.next() {
//!         serve(migrant); // migrant.unread first, then migrant.stream
//!     }
//! });
//! # }
//! ```
//!
//! [`crate::http::serve`] (feature `hyper`) does both for HTTP/1.1.
//! Migration is on for every listener unless
//! [`Builder::no_migration`](crate::Builder::no_migration) turns it off for
//! one; then that listener's connections drain as before.

mod give;
mod take;

pub use give::Migration;
pub use take::Arrivals;

pub(crate) use give::Give;
pub(crate) use take::Inboxes;

/// The capability both sides name in `hello` when they migrate connections.
pub(crate) const CAPABILITY: &str = "migrate";

/// A live connection on its way from one process to the next.
#[derive(Debug)]
pub struct Migrant {
    /// The name of the listener it was accepted on.
    pub listener: String,
    /// The connection.
    pub stream: std::net::TcpStream,
    /// Bytes read from it but not yet processed (at most 32 KiB): the
    /// successor processes them before reading more.
    pub unread: Vec<u8>,
    /// The application's state for it (at most 4 KiB): a session id,
    /// counters, the idle time left.
    pub state: Vec<u8>,
}

/// A connection the successor did not take: it is still this process's.
#[derive(Debug)]
pub struct Kept {
    /// The connection, untouched.
    pub migrant: Migrant,
    /// Why it stayed.
    pub why: String,
}

impl std::fmt::Display for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connection kept: {}", self.why)
    }
}

impl std::error::Error for Kept {}

use crate::Handover;
use handover_wire::channel::Channel;
use handover_wire::hello;

impl Handover {
    /// In an old process committed to a successor that takes connections:
    /// the way to hand them over (see [`crate::migration`]). `None` before the
    /// commit, after a stop, and when the successor does not migrate (an older
    /// version, or migration off).
    pub fn migration(&self) -> Option<Migration> {
        self.inner
            .give
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// In a successor: the connections migrated to it for the listener
    /// `name`, as they arrive. Call it before [`Handover::ready`]: a
    /// connection for a listener nobody receives stays in the old process. The
    /// stream is closed at once if migration is off for `name`.
    pub fn migrated(&self, name: &str) -> Arrivals {
        if self.inner.config.migrates(name) {
            self.inner.inboxes.arrivals(name)
        } else {
            Arrivals::closed()
        }
    }
}

/// This build's `hello` offer on a migration channel.
pub(crate) fn offer() -> hello::Offer {
    hello::Offer::this_version(&[CAPABILITY])
}

/// In a successor: receives connections on `channel` from a thread of its
/// own. With `welcome_to`, first reads the `welcome` to that `hello` (the
/// re-exec case) and stops there if the parent does not migrate.
pub(crate) fn receive(handover: &Handover, channel: Channel, welcome_to: Option<hello::Offer>) {
    let handover = handover.clone();
    let spawned = std::thread::Builder::new()
        .name("handover-migrate-in".into())
        .spawn(move || {
            if let Some(offer) = welcome_to {
                let agreed = channel
                    .set_timeout(Some(std::time::Duration::from_secs(30)))
                    .map_err(handover_wire::Error::from)
                    .and_then(|()| hello::receive_welcome(&channel, &offer));
                match agreed {
                    Ok(agreement) if agreement.has(CAPABILITY) => {}
                    Ok(_) => return,
                    Err(error) => {
                        tracing::debug!(%error, "the parent does not migrate connections");
                        return;
                    }
                }
            }
            let inner = &handover.inner;
            take::run(&inner.inboxes, &inner.drain, &channel);
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot receive migrated connections; they drain in the old process");
    }
}

/// In an old process, at the commit (before the drain order): makes the way
/// to the successor available to [`Handover::migration`]; the caller then
/// runs [`give::run`] with it on the channel.
pub(crate) fn start_giving(inner: &crate::handover::Inner) -> std::sync::Arc<Give> {
    let give = Give::new(inner.config.no_migration.clone());
    *inner.give.lock().unwrap_or_else(|e| e.into_inner()) =
        Some(Migration::new(std::sync::Arc::clone(&give)));
    give
}

/// In an old process after the commit: sends connections on `channel` from a
/// thread of its own, for as long as the successor takes them.
pub(crate) fn give_from_thread(give: std::sync::Arc<Give>, channel: Channel) {
    let spawned = std::thread::Builder::new()
        .name("handover-migrate-out".into())
        .spawn(move || give::run(&give, &channel));
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot migrate connections; they drain here");
    }
}

pub(crate) use give::run as give_on;
