//! Live connections, moved from the old process to the new one in
//! acknowledged batches: the two-phase exchange of connection migration.
//!
//! ```text
//!  new (receiving)                         old (giving)
//!   │ Room {room} ───────────────────────────▶ it takes connections, at most room fds
//!   │ ◀── Connections {batch 0, [{listener, unread, state}]} + one fd each
//!   │     (≤ min(252, room) per batch, the record ≤ 64 KiB)
//!   │ Taken {batch 0, [true, false, …], room} ─▶ closes its copies of the taken ones,
//!   │                                            keeps the others
//!   │ ◀── Connections {batch 1, …} …            … for as long as it has any to give
//! ```
//!
//! Until `taken` says so, a connection belongs to the old process: it still
//! holds its descriptor, and if the new process dies, refuses, or does not
//! answer in time, the old one serves on with it. After `taken`, the old one
//! closes its copy with `close()` — never `shutdown()`, which would act on the
//! socket both now share.

use std::os::fd::{BorrowedFd, OwnedFd};

use base64::Engine;

use crate::channel::Channel;
use crate::message::{Connection, Message, MAX_CONNECTION_STATE, MAX_FDS, MAX_FRAME, MAX_UNREAD};
use crate::Error;

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Room left for the rest of a `connections` record besides its entries.
const RECORD_OVERHEAD: usize = 128;

impl Connection {
    /// What travels with a connection accepted on `listener`: the bytes read
    /// but not processed, and the application's state for it. `None` if either
    /// is over its bound ([`MAX_UNREAD`], [`MAX_CONNECTION_STATE`]): such a
    /// connection stays where it is.
    pub fn new(listener: &str, unread: &[u8], state: &[u8]) -> Option<Connection> {
        if unread.len() > MAX_UNREAD || state.len() > MAX_CONNECTION_STATE {
            return None;
        }
        Some(Connection {
            listener: listener.to_owned(),
            unread: BASE64.encode(unread),
            state: BASE64.encode(state),
        })
    }

    /// The unread bytes and the state, decoded.
    pub fn decode(&self) -> Result<(Vec<u8>, Vec<u8>), Error> {
        let decode = |what: &str, text: &str| {
            BASE64
                .decode(text)
                .map_err(|e| Error::Malformed(format!("a connection's {what}: {e}")))
        };
        Ok((
            decode("unread bytes", &self.unread)?,
            decode("state", &self.state)?,
        ))
    }

    /// Its size in a record, roughly (JSON).
    fn size(&self) -> usize {
        self.listener.len() + self.unread.len() + self.state.len() + 48
    }
}

/// The receiving side says it takes connections, `room` descriptors at most.
pub fn offer_room(channel: &Channel, room: u32) -> Result<(), Error> {
    channel.send(&Message::Room { room }, &[])
}

/// The giving side waits for the receiver's first `room`.
pub fn await_room(channel: &Channel) -> Result<u32, Error> {
    match channel.receive()?.message {
        Message::Room { room } => Ok(room),
        other => Err(Error::Unexpected(format!("{other:?} instead of room"))),
    }
}

/// How many of `connections`, from the first, fit in one batch: at most
/// [`MAX_FDS`], at most `room`, and a record under [`MAX_FRAME`].
pub fn fitting(connections: &[&Connection], room: u32) -> usize {
    let mut size = RECORD_OVERHEAD;
    let most = MAX_FDS.min(room as usize).min(connections.len());
    for (index, connection) in connections[..most].iter().enumerate() {
        size += connection.size();
        if size > MAX_FRAME {
            return index;
        }
    }
    most
}

/// Sends one batch (each connection with its descriptor) and waits for its
/// `taken`; returns which were taken and the receiver's room. Check the size
/// first with [`fitting`].
pub fn send_batch(
    channel: &Channel,
    batch: u32,
    connections: Vec<Connection>,
    fds: &[BorrowedFd<'_>],
) -> Result<(Vec<bool>, u32), Error> {
    let count = connections.len();
    channel.send(&Message::Connections { batch, connections }, fds)?;
    match channel.receive()?.message {
        Message::Taken {
            batch: answered,
            taken,
            room,
        } if answered == batch && taken.len() == count => Ok((taken, room)),
        other => Err(Error::Unexpected(format!(
            "{other:?} instead of taken for batch {batch} of {count}"
        ))),
    }
}

/// A batch received: its number, and each connection with its descriptor.
pub type Batch = (u32, Vec<(Connection, OwnedFd)>);

/// The receiving side: the next batch, or `None` once the giver has closed
/// the channel (it has nothing more to give, or it is gone).
pub fn receive_batch(channel: &Channel) -> Result<Option<Batch>, Error> {
    let received = match channel.receive() {
        Ok(received) => received,
        Err(Error::Closed) => return Ok(None),
        Err(error) => return Err(error),
    };
    match received.message {
        Message::Connections { batch, connections } => Ok(Some((
            batch,
            connections.into_iter().zip(received.fds).collect(),
        ))),
        other => Err(Error::Unexpected(format!(
            "{other:?} instead of connections"
        ))),
    }
}

/// The receiving side answers a batch: which it took, and its room now.
pub fn answer(channel: &Channel, batch: u32, taken: Vec<bool>, room: u32) -> Result<(), Error> {
    channel.send(&Message::Taken { batch, taken, room }, &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn connections_move_with_their_unread_bytes_and_the_refused_stay() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut clients: Vec<std::net::TcpStream> = (0..3)
            .map(|_| std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap())
            .collect();
        let accepted: Vec<std::net::TcpStream> =
            (0..3).map(|_| listener.accept().unwrap().0).collect();
        let (old, new) = Channel::pair().unwrap();
        let receiver = std::thread::spawn(move || {
            offer_room(&new, 10).unwrap();
            let (batch, got) = receive_batch(&new).unwrap().unwrap();
            let taken: Vec<bool> = got.iter().map(|(c, _)| c.listener != "off").collect();
            answer(&new, batch, taken, 7).unwrap();
            let moved: Vec<(Vec<u8>, OwnedFd)> = got
                .into_iter()
                .filter(|(c, _)| c.listener != "off")
                .map(|(c, fd)| (c.decode().unwrap().0, fd))
                .collect();
            assert!(receive_batch(&new).unwrap().is_none(), "closed: None");
            moved
        });
        assert_eq!(await_room(&old).unwrap(), 10);
        let metas = vec![
            Connection::new("echo", b"partial li", b"s1").unwrap(),
            Connection::new("off", b"", b"").unwrap(),
            Connection::new("echo", b"", b"").unwrap(),
        ];
        assert_eq!(
            fitting(&metas.iter().collect::<Vec<_>>(), 2),
            2,
            "room bounds a batch"
        );
        let fds: Vec<BorrowedFd<'_>> = accepted.iter().map(|s| s.as_fd()).collect();
        let (taken, room) = send_batch(&old, 0, metas, &fds).unwrap();
        assert_eq!((taken, room), (vec![true, false, true], 7));
        drop(old);
        let moved = receiver.join().unwrap();
        assert_eq!(moved[0].0, b"partial li");
        // The new process's copy answers the client; the old one's is closed
        // (dropped), which does not end the connection.
        drop(accepted);
        let mut stream = std::net::TcpStream::from(moved.into_iter().next().unwrap().1);
        stream.write_all(b"pong").unwrap();
        let mut buf = [0u8; 4];
        clients[0].read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");
    }

    #[test]
    fn an_oversized_connection_is_not_offered_and_a_big_one_goes_alone() {
        assert!(Connection::new("web", &vec![0; MAX_UNREAD + 1], b"").is_none());
        let big = Connection::new("web", &vec![0; MAX_UNREAD], b"").unwrap();
        let small = Connection::new("web", b"", b"").unwrap();
        assert_eq!(fitting(&[&big, &big], 100), 1);
        assert_eq!(fitting(&[&small; 300], 1000), MAX_FDS);
        let message = Message::Connections {
            batch: 0,
            connections: vec![big],
        };
        assert!(message.encode().len() <= MAX_FRAME);
    }
}
