//! Zero-downtime upgrades for network servers.
//!
//! A server gets its listening sockets **by name** from a [`Handover`]. On
//! `SIGHUP` (or [`Handover::upgrade`]) it starts its new version with those very
//! sockets, keeps accepting until the new version says it is ready, then stops
//! accepting and drains its connections — or, if the new version crashes, hangs or
//! is too slow, kills it and goes on serving as if nothing happened.
//!
//! ```no_run
//! use handover::Handover;
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let handover = Handover::builder().pid_file("app.pid").build()?;
//!     // The inherited socket if we are a successor, else a fresh one.
//!     let listener = handover.tcp_listener("web", "127.0.0.1:8080")?;
//!     // ... slow initialisation: the old version keeps serving meanwhile ...
//!     std::thread::spawn(move || {
//!         for conn in listener.incoming() { /* serve it */ }
//!     });
//!     handover.ready()?; // the parent (if any) stops accepting and drains
//!     let order = handover.drain_signal().wait(); // upgraded, or asked to stop
//!     // stop accepting, then wait for connections up to order.deadline
//!     handover.tracker().wait_idle(order.deadline);
//!     Ok(())
//! }
//! ```
//!
//! With the `hyper` feature, [`http::serve`] does the accepting, the connection
//! tracking and the HTTP-aware drain (`Connection: close` on HTTP/1.1, GOAWAY on
//! HTTP/2) for you.
//!
//! # Life cycle
//!
//! See [`upgrade`](crate::Handover::upgrade), [`takeover`] and the state
//! machine on [`Phase`]; the hand-off contracts (systemd's `LISTEN_FDS` and
//! `sd_notify` by inheritance, the wire protocol over a Unix socket) are in
//! `docs/PROTOCOL.md`. The mechanism beneath — spawning, notify, socket checks —
//! is the `handover-mechanism` crate, and the wire protocol `handover-wire`;
//! an application needs neither.
//!
//! # Platform
//!
//! Linux is the supported platform. The code is plain POSIX except for
//! `close_range` (a best-effort extra guard) and abstract notify sockets, both
//! `cfg`-gated, so it is meant to build on macOS too, where systemd integration is
//! meaningless and the listener check (`SO_ACCEPTCONN`) is skipped.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod beacon;
mod builder;
mod drain;
mod error;
mod handover;
pub mod metrics;
pub mod migration;
pub mod probation;
pub mod reload;
pub mod signals;
mod sockets;
pub mod state;
pub mod takeover;
mod upgrade;

#[cfg(feature = "hyper")]
pub mod http;
#[cfg(feature = "tokio")]
mod tokio_glue;

pub use builder::Builder;
pub use drain::{ConnectionGuard, ConnectionTracker, DrainOrder, DrainReason, DrainSignal};
pub use error::{Error, Result, SuccessorFailure};
pub use handover::Handover;
pub use probation::{AfterDrain, SuccessorExit};
pub use reload::ReloadError;
pub use signals::SignalAction;
pub use sockets::{Address, SocketKind};
pub use upgrade::Phase;
