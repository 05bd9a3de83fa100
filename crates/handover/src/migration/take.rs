//! The successor's side: one thread receives batches and puts each connection
//! in its listener's inbox; the application takes them from [`Arrivals`].

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use handover_wire::channel::Channel;
use handover_wire::message::Connection;
use handover_wire::migrate;

use super::Migrant;
use crate::beacon::Beacon;
use crate::drain::DrainSignal;

/// The connections that arrive for one listener, as a stream: blocking
/// ([`Arrivals::next`]) or async ([`Arrivals::recv`]). From
/// [`Handover::migrated`](crate::Handover::migrated). Cheap to clone; clones
/// share the stream.
#[derive(Clone)]
pub struct Arrivals {
    inbox: Arc<Beacon<Inbox>>,
}

#[derive(Default)]
struct Inbox {
    waiting: VecDeque<Migrant>,
    /// No more will come: the old process is gone or has nothing more.
    closed: bool,
}

fn pop(inbox: &mut Inbox) -> Option<Option<Migrant>> {
    match inbox.waiting.pop_front() {
        Some(migrant) => Some(Some(migrant)),
        None if inbox.closed => Some(None),
        None => None,
    }
}

impl Arrivals {
    /// An inbox that is closed from the start (migration off).
    pub(crate) fn closed() -> Arrivals {
        Arrivals {
            inbox: Arc::new(Beacon::new(Inbox {
                waiting: VecDeque::new(),
                closed: true,
            })),
        }
    }

    /// The next connection; `None` once no more will come.
    pub fn next(&self) -> Option<Migrant> {
        self.inbox.wait_until(None, pop).flatten()
    }

    /// The next connection if one is waiting.
    pub fn try_next(&self) -> Option<Migrant> {
        self.inbox.update(|inbox| inbox.waiting.pop_front())
    }

    /// The next connection; `None` once no more will come (feature `tokio`).
    #[cfg(feature = "tokio")]
    pub async fn recv(&self) -> Option<Migrant> {
        self.inbox.wait_for(pop).await
    }
}

/// The inboxes of this process, by listener name.
#[derive(Default)]
pub(crate) struct Inboxes(Mutex<HashMap<String, Arc<Beacon<Inbox>>>>);

impl Inboxes {
    /// The arrivals of `listener` (created on the first call).
    pub(crate) fn arrivals(&self, listener: &str) -> Arrivals {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let inbox = map
            .entry(listener.to_owned())
            .or_insert_with(|| Arc::new(Beacon::new(Inbox::default())));
        Arrivals {
            inbox: Arc::clone(inbox),
        }
    }

    /// Puts `migrant` in its listener's inbox; gives it back if nobody
    /// receives that listener's connections.
    fn deliver(&self, migrant: Migrant) -> Result<(), Migrant> {
        let inbox = {
            let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            map.get(&migrant.listener).cloned()
        };
        match inbox {
            Some(inbox) => inbox.update(|inbox| {
                if inbox.closed {
                    return Err(migrant);
                }
                inbox.waiting.push_back(migrant);
                crate::metrics::get().migrated(crate::metrics::Direction::In, 1);
                Ok(())
            }),
            None => Err(migrant),
        }
    }

    fn close_all(&self) {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for inbox in map.values() {
            inbox.update(|inbox| inbox.closed = true);
        }
    }
}

/// The receiving thread's work: says how many descriptors fit, then takes
/// batch after batch until the old process closes the channel.
pub(crate) fn run(inboxes: &Inboxes, drain: &DrainSignal, channel: &Channel) {
    let outcome = receive_all(inboxes, drain, channel);
    inboxes.close_all();
    match outcome {
        Ok(taken) => tracing::info!(taken, "the old process has no more connections"),
        Err(error) => tracing::warn!(%error, "connection migration ended"),
    }
}

fn receive_all(
    inboxes: &Inboxes,
    drain: &DrainSignal,
    channel: &Channel,
) -> Result<usize, handover_wire::Error> {
    channel.set_timeout(None)?;
    // Counted once (reading /proc/self/fd costs a millisecond with thousands
    // of fds open), then less what was taken; the 32 fds of slack in the
    // count cover what the application opens meanwhile.
    let mut room = room();
    migrate::offer_room(channel, room)?;
    let mut total = 0;
    while let Some((batch, connections)) = migrate::receive_batch(channel)? {
        let taken: Vec<bool> = connections
            .into_iter()
            .map(|(meta, fd)| take(inboxes, drain, meta, fd))
            .collect();
        let took = taken.iter().filter(|&&t| t).count();
        total += took;
        room = room.saturating_sub(took as u32);
        migrate::answer(channel, batch, taken, room)?;
    }
    Ok(total)
}

/// Takes one connection into its inbox; `false` (and the descriptor closed
/// here, which leaves the old process's copy alone) if it cannot be served.
fn take(inboxes: &Inboxes, drain: &DrainSignal, meta: Connection, fd: OwnedFd) -> bool {
    // A process that drains hands connections on; it takes none.
    if drain.is_draining() {
        return false;
    }
    let is_stream = rustix::net::sockopt::socket_type(&fd)
        .is_ok_and(|kind| kind == rustix::net::SocketType::STREAM);
    let Ok((unread, state)) = meta.decode() else {
        return false;
    };
    if !is_stream {
        return false;
    }
    let migrant = Migrant {
        listener: meta.listener,
        stream: std::net::TcpStream::from(fd),
        unread,
        state,
    };
    inboxes.deliver(migrant).is_ok()
}

/// Descriptors this process can take, as `room`.
fn room() -> u32 {
    crate::takeover::fd_room().min(u32::MAX as usize) as u32
}
