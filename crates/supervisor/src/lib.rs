//! `handover run`: zero-downtime upgrades and restarts for servers in any
//! language, through the conventions they already speak.
//!
//! The supervisor binds the sockets once and starts the command with them as
//! `LISTEN_FDS` / `LISTEN_FDNAMES` (fds 3, 4, …, `LISTEN_PID` = the child's own
//! pid — the library's [`handover_mechanism::child`]). On `SIGHUP`, `SIGUSR2` or
//! `handover upgrade` it starts a new child with the sockets (for TCP, its own
//! socket on the same address, see `steering`), waits until it is ready
//! (`notify`: sd_notify `READY=1`; `http:PATH` / `tcp`: a probe answered by the
//! *new* child, see [`ownership`]; `delay:D`), steers new connections to it, then
//! sends the stop signal to the old child and kills it at the drain deadline. A new child that exits or
//! is not ready in time is killed and reaped; the old one never noticed. A child
//! that crashes is restarted with backoff while the sockets stay open, so clients
//! wait in the accept queue instead of being refused.
//!
//! The children accept on the sockets themselves. The supervisor enters the
//! data path only to rescue a keep-alive connection an old child dropped at
//! shutdown, for one request ([`rescue`]).
//!
//! Modules: [`config`] (what it is told), [`supervisor`](run) (the event loop),
//! `listeners` and `steering` (the sockets), `generation` (one child),
//! `readiness`, [`ownership`] (/proc), [`rescue`] (keep-alive rescue),
//! [`control`] (the control socket and its client), [`status`]. Linux only.

#![forbid(unsafe_code)]
pub mod config;
pub mod control;
pub mod error;
pub mod fdstore;
mod generation;
mod listeners;
mod metrics;
pub mod ownership;
mod readiness;
pub mod recovery;
pub mod rescue;
pub mod status;
mod steering;
mod supervisor;

pub use config::{Config, Listen, ReadyMode};
pub use error::{Error, NotReady, RecoveryError};
pub use supervisor::{run, runtime, STATE_VERSION};
