//! The old process's side: connections queue up, one thread sends them in
//! batches and answers each caller with the successor's verdict.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use handover_wire::channel::Channel;
use handover_wire::message::Connection;
use handover_wire::migrate;

use super::{Kept, Migrant};
use crate::beacon::Beacon;

/// Longest wait for the successor's answer to one batch.
const ANSWER: Duration = Duration::from_secs(5);

/// The way to the successor for this process's live connections; from
/// [`Handover::migration`](crate::Handover::migration) once a successor that
/// takes connections is committed. Cheap to clone.
#[derive(Clone)]
pub struct Migration {
    give: Arc<Give>,
}

/// What the callers and the sending thread share.
pub(crate) struct Give {
    outbox: Beacon<Outbox>,
    off: Vec<String>,
}

#[derive(Default)]
struct Outbox {
    waiting: VecDeque<Request>,
    /// Why nothing more is sent, once that is so.
    closed: Option<String>,
}

/// Where the successor's verdict on one connection arrives.
type Answer = Arc<Beacon<Option<Result<(), Kept>>>>;

struct Request {
    migrant: Migrant,
    meta: Connection,
    answer: Answer,
}

impl Request {
    fn answer(self, outcome: Result<(), String>) {
        let Request {
            migrant, answer, ..
        } = self;
        let result = match outcome {
            // Our copy closes here (close(), not shutdown()): the successor's
            // copy is the connection now.
            Ok(()) => {
                drop(migrant);
                Ok(())
            }
            Err(why) => Err(Kept { migrant, why }),
        };
        answer.update(|slot| *slot = Some(result));
    }
}

impl Give {
    /// A queue for a successor; `off` names the listeners that do not migrate.
    pub(crate) fn new(off: Vec<String>) -> Arc<Give> {
        Arc::new(Give {
            outbox: Beacon::new(Outbox::default()),
            off,
        })
    }

    fn off(&self, listener: &str) -> bool {
        crate::builder::migration_off(&self.off, listener)
    }

    /// Stops sending: every connection still waiting is kept, with `why`.
    fn close(&self, why: &str) {
        let waiting = self.outbox.update(|outbox| {
            outbox.closed.get_or_insert_with(|| why.to_owned());
            std::mem::take(&mut outbox.waiting)
        });
        for request in waiting {
            request.answer(Err(why.to_owned()));
        }
    }
}

impl Migration {
    pub(crate) fn new(give: Arc<Give>) -> Migration {
        Migration { give }
    }

    /// Whether connections of `listener` may be handed over now: migration is
    /// on for it and the successor still takes connections.
    pub fn accepts(&self, listener: &str) -> bool {
        !self.give.off(listener) && self.give.outbox.read(|o| o.closed.is_none())
    }

    /// Hands `migrant` to the successor and waits for its answer (a batch
    /// round trip; at most 5 s). `Ok`: the successor has it and this process's
    /// copy is closed. `Err(Kept)`: it is still this process's, untouched.
    pub fn hand_over(&self, migrant: Migrant) -> Result<(), Kept> {
        let answer = self.enqueue(migrant)?;
        answer
            .wait_until(None, Option::take)
            .expect("no deadline: an answer always comes")
    }

    /// [`Migration::hand_over`] for async callers (feature `tokio`).
    #[cfg(feature = "tokio")]
    pub async fn hand_over_async(&self, migrant: Migrant) -> Result<(), Kept> {
        let answer = self.enqueue(migrant)?;
        answer.wait_for(Option::take).await
    }

    fn enqueue(&self, migrant: Migrant) -> Result<Answer, Kept> {
        let kept = |migrant, why: &str| {
            Err(Kept {
                migrant,
                why: why.to_owned(),
            })
        };
        if self.give.off(&migrant.listener) {
            return kept(migrant, "migration is off for this listener");
        }
        let Some(meta) = Connection::new(&migrant.listener, &migrant.unread, &migrant.state) else {
            return kept(migrant, "its unread bytes or state are over the limit");
        };
        let answer = Arc::new(Beacon::new(None));
        let request = Request {
            migrant,
            meta,
            answer: Arc::clone(&answer),
        };
        let refused = self.give.outbox.update(|outbox| match &outbox.closed {
            Some(why) => Some((request, why.clone())),
            None => {
                // A client that has sent something waits for an answer: its
                // connection goes first. An idle one loses nothing by waiting
                // a few batches; a busy one would pause for them.
                if client_waiting(&request.migrant.stream) {
                    outbox.waiting.push_front(request);
                } else {
                    outbox.waiting.push_back(request);
                }
                None
            }
        });
        match refused {
            Some((request, why)) => kept(request.migrant, &why),
            None => Ok(answer),
        }
    }
}

/// Whether bytes from the client wait in the connection's receive queue.
fn client_waiting(stream: &std::net::TcpStream) -> bool {
    rustix::io::ioctl_fionread(stream).is_ok_and(|n| n > 0)
}

/// The sending thread's work, until the channel fails or the successor has
/// no room: batches of what is waiting, each answered before the next.
pub(crate) fn run(give: &Give, channel: &Channel) {
    let why = match send_all(give, channel) {
        Ok(why) => why,
        Err(error) => format!("the successor did not answer: {error}"),
    };
    give.close(&why);
    tracing::info!(%why, "no more connections migrate");
}

fn send_all(give: &Give, channel: &Channel) -> Result<String, handover_wire::Error> {
    channel.set_timeout(Some(ANSWER))?;
    let mut room = migrate::await_room(channel)?;
    let (mut moved, mut kept) = (0usize, 0usize);
    let mut batch = 0u32;
    loop {
        if room == 0 {
            return Ok(format!(
                "the successor has no room for more ({moved} moved, {kept} kept)"
            ));
        }
        let requests = give
            .outbox
            .wait_until(None, |outbox| {
                if outbox.waiting.is_empty() {
                    return None;
                }
                let metas: Vec<&Connection> = outbox.waiting.iter().map(|r| &r.meta).collect();
                let count = migrate::fitting(&metas, room).max(1);
                Some(outbox.waiting.drain(..count).collect::<Vec<_>>())
            })
            .expect("no deadline");
        let metas = requests.iter().map(|r| r.meta.clone()).collect();
        let fds: Vec<BorrowedFd<'_>> = requests.iter().map(|r| r.migrant.stream.as_fd()).collect();
        let sent = migrate::send_batch(channel, batch, metas, &fds);
        drop(fds);
        let (taken, left) = match sent {
            Ok(answer) => answer,
            Err(error) => {
                let why = format!("the successor did not answer batch {batch}: {error}");
                // Closed before anyone hears of the failure: whoever does
                // then sees that no more connections migrate.
                give.close(&why);
                for request in requests {
                    request.answer(Err(why.clone()));
                }
                return Err(error);
            }
        };
        room = left;
        let count = requests.len();
        let took = taken.iter().filter(|&&t| t).count();
        for (request, taken) in requests.into_iter().zip(taken) {
            request.answer(if taken {
                Ok(())
            } else {
                Err("the successor did not take it".to_owned())
            });
        }
        moved += took;
        kept += count - took;
        crate::metrics::get().migrated(crate::metrics::Direction::Out, took);
        tracing::info!(
            batch,
            taken = took,
            kept = count - took,
            room,
            "migrated connections"
        );
        batch = batch.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn accepted(listener: &TcpListener) -> (Migrant, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, _) = listener.accept().unwrap();
        let migrant = Migrant {
            listener: "echo".into(),
            stream,
            unread: b"par".to_vec(),
            state: Vec::new(),
        };
        (migrant, client)
    }

    /// Runs the sending thread against a fake successor, `successor`.
    fn with_successor(successor: impl FnOnce(Channel) + Send + 'static) -> Migration {
        let (old, new) = Channel::pair().unwrap();
        let give = Give::new(vec!["off".into()]);
        std::thread::spawn(move || successor(new));
        let sender = Arc::clone(&give);
        std::thread::spawn(move || run(&sender, &old));
        Migration::new(give)
    }

    #[test]
    fn a_connection_the_successor_takes_is_closed_here_and_one_it_refuses_is_given_back() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let migration = with_successor(|channel| {
            migrate::offer_room(&channel, 10).unwrap();
            let mut answered = 0;
            while answered < 2 {
                let (batch, got) = migrate::receive_batch(&channel).unwrap().unwrap();
                let taken = vec![answered == 0; got.len()];
                answered += got.len();
                migrate::answer(&channel, batch, taken, 10).unwrap();
            }
        });
        let (first, _c1) = accepted(&listener);
        assert!(migration.hand_over(first).is_ok());
        let (second, _c2) = accepted(&listener);
        let kept = migration.hand_over(second).unwrap_err();
        assert_eq!(kept.migrant.unread, b"par", "given back untouched");
        assert!(kept.why.contains("did not take"), "{}", kept.why);
    }

    #[test]
    fn a_successor_that_dies_before_answering_leaves_every_connection_here() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let migration = with_successor(|channel| {
            migrate::offer_room(&channel, 10).unwrap();
            let _ = migrate::receive_batch(&channel);
            drop(channel); // dies: no `taken`
        });
        let (migrant, _client) = accepted(&listener);
        let kept = migration.hand_over(migrant).unwrap_err();
        assert!(kept.why.contains("did not answer"), "{}", kept.why);
        let (later, _client) = accepted(&listener);
        assert!(!migration.accepts("echo"), "no more after a failure");
        assert!(migration.hand_over(later).is_err());
    }

    #[test]
    fn a_listener_with_migration_off_or_a_full_successor_keeps_its_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let migration = with_successor(|channel| {
            migrate::offer_room(&channel, 0).unwrap();
            let _ = migrate::receive_batch(&channel);
        });
        let (mut off, _c) = accepted(&listener);
        off.listener = "off".into();
        assert!(!migration.accepts("off"));
        assert!(migration.hand_over(off).unwrap_err().why.contains("off"));
        let (migrant, _c) = accepted(&listener);
        let kept = migration.hand_over(migrant).unwrap_err();
        assert!(kept.why.contains("no room"), "{}", kept.why);
    }
}
