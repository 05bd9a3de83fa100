//! The signals the event loop takes, and why none is lost across a
//! self-upgrade's exec.
//!
//! Only the event loop's thread takes them. Every other thread of the process
//! — the control server's, the runtime's blocking pool ([`runtime`]) — holds
//! them from its start, so that a signal which arrives while the event loop's
//! thread holds them too stays pending for the process, and a pending signal
//! survives `execve`.
//!
//! A self-upgrade, just before its exec ([`Signals::hold_for_exec`]):
//!
//! ```text
//!  hold them on the event loop's thread   ─ from here on each one waits, pending
//!  yield once to the runtime              ─ it reads what the handlers wrote before
//!  raise again what the streams took but  ─ pending too
//!    the loop has not handled
//!  execve                                 ─ the mask and the pending signals cross
//!  new image: handlers in place, release  ─ each is delivered and handled there
//! ```
//!
//! If the exec fails, [`Signals::release`] delivers them here instead, and the
//! loop handles them as usual.

use std::io;
use std::task::Poll;

use tokio::signal::unix::{signal, Signal, SignalKind};

use super::Event;

/// The signals the event loop handles, as raw numbers.
const HANDLED: [i32; 6] = [
    libc::SIGHUP,
    libc::SIGUSR2,
    libc::SIGTERM,
    libc::SIGQUIT,
    libc::SIGINT,
    libc::SIGCHLD,
];

/// The runtime the supervisor runs on: one thread, the event loop's (the
/// supervisor is idle almost always and must stay small), plus tokio's
/// blocking pool, whose threads hold the handled signals from their start.
pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(|| {
            if let Err(error) = hold_in_this_thread() {
                tracing::warn!(%error, "cannot hold signals on a blocking thread");
            }
        })
        .build()
}

/// Holds the handled signals on the calling thread, for good: for every
/// thread but the event loop's.
pub(crate) fn hold_in_this_thread() -> io::Result<()> {
    handover_mechanism::child::hold_signals(&HANDLED)
}

/// The event loop's signal streams.
pub(super) struct Signals {
    hup: Signal,
    usr2: Signal,
    term: Signal,
    quit: Signal,
    int: Signal,
    chld: Signal,
}

impl Signals {
    /// Installs the handlers, then releases the signals (held if this image
    /// was exec'd by a self-upgrade: those that waited are delivered now).
    pub fn install() -> io::Result<Signals> {
        let signals = Signals {
            hup: signal(SignalKind::hangup())?,
            usr2: signal(SignalKind::user_defined2())?,
            term: signal(SignalKind::terminate())?,
            quit: signal(SignalKind::quit())?,
            int: signal(SignalKind::interrupt())?,
            chld: signal(SignalKind::child())?,
        };
        Signals::release()?;
        Ok(signals)
    }

    /// The next signal, as the event it means. Cancel-safe: a signal is taken
    /// only when this returns.
    pub async fn next(&mut self) -> Event {
        tokio::select! {
            _ = self.hup.recv() => Event::Upgrade,
            _ = self.usr2.recv() => Event::Upgrade,
            _ = self.term.recv() => Event::Stop { fast: false },
            _ = self.quit.recv() => Event::Stop { fast: false },
            _ = self.int.recv() => Event::Stop { fast: true },
            _ = self.chld.recv() => Event::ChildExited,
        }
    }

    /// Makes every signal wait, pending, until the new image (or
    /// [`Signals::release`]) takes it, including those that arrived before and
    /// were not handled yet. See the module docs.
    pub async fn hold_for_exec(&mut self) -> io::Result<()> {
        handover_mechanism::child::hold_signals(&HANDLED)?;
        // The handlers ran on this thread (every other one holds the
        // signals), so what they wrote is written; the runtime reads it
        // when it polls its driver, which a yield makes it do.
        tokio::task::yield_now().await;
        let mut streams = [
            (&mut self.hup, libc::SIGHUP),
            (&mut self.usr2, libc::SIGUSR2),
            (&mut self.term, libc::SIGTERM),
            (&mut self.quit, libc::SIGQUIT),
            (&mut self.int, libc::SIGINT),
            (&mut self.chld, libc::SIGCHLD),
        ];
        // Each stream looked at once, without waiting.
        let unhandled = std::future::poll_fn(|cx| {
            let mut taken = Vec::new();
            for (stream, number) in streams.iter_mut() {
                if let Poll::Ready(Some(())) = stream.poll_recv(cx) {
                    taken.push(*number);
                }
            }
            Poll::Ready(taken)
        })
        .await;
        for number in unhandled {
            raise(number)?;
        }
        Ok(())
    }

    /// Lets the signals through again: those pending are delivered now.
    pub fn release() -> io::Result<()> {
        handover_mechanism::child::release_signals(&HANDLED)
    }
}

/// Sends `number` to this process; held, it stays pending.
fn raise(number: i32) -> io::Result<()> {
    let signal = rustix::process::Signal::from_named_raw(number)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "unknown signal"))?;
    Ok(rustix::process::kill_process(
        rustix::process::getpid(),
        signal,
    )?)
}
