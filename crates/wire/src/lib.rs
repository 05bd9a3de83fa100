//! The one wire protocol of handover: how two processes that know each other
//! only by a Unix socket hand over listening sockets, application state and
//! commands. The takeover (a new version started independently asks the
//! running one for its sockets), the control commands and connection migration
//! all speak it; [docs/PROTOCOL.md] is its specification.
//!
//! A key design decision of this crate is to **let the kernel frame the
//! messages**: the protocol runs over `SOCK_SEQPACKET` Unix sockets, where every
//! `sendmsg` is one record that `recvmsg` returns whole, with the descriptors
//! sent alongside it (`SCM_RIGHTS`) and nobody else's. There is no length
//! prefix to parse, no message split across reads, and no way for descriptors to
//! drift from the message they belong to. Each record is one JSON object
//! (self-describing; a field a version does not know is ignored, a message
//! type it does not know is an [`Error`](Message::Error) reply, never a crash).
//!
//! | module | job |
//! |---|---|
//! | [`message`] | the messages and their limits; decoding is the one parser |
//! | [`channel`] | one connection: send and receive a message with its fds, timeouts, the peer's credentials |
//! | [`hello`] | the first exchange: version and capability negotiation |
//! | [`batch`] | any number of named sockets, in acknowledged batches of at most [`MAX_FDS`] |
//! | [`state`] | application state: inline when small, a sealed memfd when large, checksummed |
//! | [`peer`] | who may connect: same uid, root, or uids and gids the application allows |
//! | [`control`] | the commands (`status`, `upgrade`, `stop`, `takeover`) and their replies |
//! | [`migrate`] | live connections, in two-phase batches: given, then `taken` or kept |
//!
//! A conversation, for a takeover (the new process connects):
//!
//! ```text
//!  new                                   old
//!   │ Hello {versions, capabilities} ──────▶ peer check (SO_PEERCRED), version choice
//!   │ ◀────────────────────── Welcome {version, capabilities}
//!   │ Command {takeover} ────────────────────▶ one hand-over at a time: else `busy`
//!   │ ◀──── Sockets {batch 0, names} + fds   (≤ 252 per batch)
//!   │ Ack {batch 0} ─────────────────────────▶ … until `last`
//!   │ ◀──── State {len, crc32} + memfd
//!   │ Ack ───────────────────────────────────▶
//!   │ … initialises …
//!   │ Ready ─────────────────────────────────▶ commits, stops accepting
//!   │ ◀────────────────────────── SteppedDown
//! ```
//!
//! ```
//! use handover_wire::{batch, channel::Channel, hello};
//! use std::net::TcpListener;
//! use std::os::fd::AsFd;
//!
//! let (old, new) = Channel::pair()?;
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! let sender = std::thread::spawn(move || -> Result<(), handover_wire::Error> {
//!     hello::answer(&old, hello::Offer::this_version(&[]))?;
//!     batch::send(&old, &[("web", listener.as_fd())])
//! });
//! hello::offer(&new, hello::Offer::this_version(&[]))?; // (a takeover sends its command here)
//! let sockets = batch::receive(&new, 1000)?;
//! assert_eq!(sockets[0].0, "web");
//! sender.join().unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [docs/PROTOCOL.md]: https://example.invalid/handover/docs/PROTOCOL.md

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod batch;
pub mod channel;
pub mod control;
mod error;
pub mod hello;
pub mod message;
pub mod migrate;
pub mod peer;
pub mod state;

pub use error::Error;
pub use message::{Message, MAX_FDS, MAX_FRAME};

/// The protocol version this build speaks at most.
pub const VERSION: u32 = 1;
/// The oldest protocol version this build still speaks.
pub const MIN_VERSION: u32 = 1;
