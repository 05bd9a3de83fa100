//! The mechanism of a hand-over, shared by the `handover` library, the
//! `handover run` supervisor and the takeover: the hand-off contract by
//! inheritance ([`protocol`]: `LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`,
//! `HANDOVER_*`, the `sd_notify` codec), starting a process with named sockets
//! ([`child`]), `sd_notify` both ways ([`notify`]), the PID file
//! ([`pidfile`]), and sockets below the level of names ([`sockets`]: binding
//! and checking, steered `SO_REUSEPORT` groups, a connection's kernel
//! counters, holding back what it receives), and what the two kinds of
//! process share of their Prometheus counters ([`metrics`]: prefix, buckets,
//! encoding). The wire protocol over a Unix
//! socket is its sibling crate, `handover-wire`.
//!
//! As a utility library there is no central type: an application uses the
//! `handover` crate, whose `Handover` ties these pieces together.
//!
//! A key design decision of this crate is to hold **all the `unsafe` code of
//! the project in one private module** (`sys`): adopting inherited
//! descriptors, `fork`/`execve` with the successor's own pid in `LISTEN_PID`,
//! and the socket options no crate wraps. The rest of the crate — and every
//! other crate — may not use `unsafe` (`#![deny(unsafe_code)]`); each block in
//! `sys` carries a `SAFETY` comment.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod child;
pub mod metrics;
pub mod notify;
pub mod pidfile;
pub mod protocol;
pub mod sockets;
#[allow(unsafe_code)]
mod sys;
