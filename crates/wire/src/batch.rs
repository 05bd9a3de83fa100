//! Any number of named sockets, in batches of at most [`MAX_FDS`] descriptors,
//! each acknowledged before the next is sent: the sender never has more than
//! one batch in the receiver's queue, and a receiver that fails (out of
//! descriptors, a bad name) says so after the batch it could not take.

use std::os::fd::{BorrowedFd, OwnedFd};

use crate::channel::Channel;
use crate::message::{Message, MAX_FDS};
use crate::Error;

/// Sends `sockets` (name, fd) in order; returns once the last batch is
/// acknowledged.
pub fn send(channel: &Channel, sockets: &[(&str, BorrowedFd<'_>)]) -> Result<(), Error> {
    if sockets.is_empty() {
        return Err(Error::Unexpected("no sockets to send".into()));
    }
    let batches = sockets.chunks(MAX_FDS);
    let count = batches.len();
    for (index, batch) in batches.enumerate() {
        let message = Message::Sockets {
            batch: index as u32,
            names: batch.iter().map(|(name, _)| (*name).to_owned()).collect(),
            last: index + 1 == count,
        };
        let fds: Vec<BorrowedFd<'_>> = batch.iter().map(|(_, fd)| *fd).collect();
        channel.send(&message, &fds)?;
        match channel.receive()?.message {
            Message::Ack { batch } if batch == index as u32 => {}
            other => {
                return Err(Error::Unexpected(format!(
                    "{other:?} instead of ack {index}"
                )))
            }
        }
    }
    Ok(())
}

/// Receives sockets until the last batch, at most `limit` in all; answers each
/// batch with an ack, or the first problem with an error reply.
pub fn receive(channel: &Channel, limit: usize) -> Result<Vec<(String, OwnedFd)>, Error> {
    let outcome = receive_all(channel, limit);
    if let Err(error) = &outcome {
        if !matches!(error, Error::Refused { .. } | Error::Closed) {
            channel.refuse(error);
        }
    }
    outcome
}

fn receive_all(channel: &Channel, limit: usize) -> Result<Vec<(String, OwnedFd)>, Error> {
    let mut sockets = Vec::new();
    for expected in 0u32.. {
        let received = channel.receive()?;
        let Message::Sockets { batch, names, last } = received.message else {
            return Err(Error::Unexpected(format!(
                "{:?} instead of sockets batch {expected}",
                received.message
            )));
        };
        if batch != expected {
            return Err(Error::Unexpected(format!(
                "batch {batch} instead of {expected}"
            )));
        }
        if sockets.len() + names.len() > limit {
            return Err(Error::Unexpected(format!("more than {limit} sockets")));
        }
        sockets.extend(names.into_iter().zip(received.fds));
        channel.send(&Message::Ack { batch }, &[])?;
        if last {
            break;
        }
    }
    Ok(sockets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn raise_fd_limit(wanted: u64) {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let limit = getrlimit(Resource::Nofile);
        let hard = limit.maximum.unwrap_or(u64::MAX);
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(wanted.min(hard)),
                maximum: limit.maximum,
            },
        );
    }

    #[test]
    fn two_thousand_sockets_arrive_in_acknowledged_batches() {
        raise_fd_limit(8192);
        let listeners: Vec<std::net::TcpListener> = (0..2000)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let names: Vec<String> = (0..2000).map(|i| format!("s{i}")).collect();
        let (a, b) = Channel::pair().unwrap();
        let receiver = std::thread::spawn(move || receive(&b, 10_000));
        let sockets: Vec<(&str, BorrowedFd<'_>)> = names
            .iter()
            .zip(&listeners)
            .map(|(n, l)| (n.as_str(), l.as_fd()))
            .collect();
        send(&a, &sockets).unwrap();
        let received = receiver.join().unwrap().unwrap();
        assert_eq!(received.len(), 2000);
        for (i, (name, fd)) in received.iter().enumerate() {
            assert_eq!(name, &format!("s{i}"));
            let got = rustix::net::getsockname(fd).unwrap();
            let want = rustix::net::getsockname(&listeners[i]).unwrap();
            assert_eq!(
                format!("{got:?}"),
                format!("{want:?}"),
                "same socket, in order"
            );
        }
    }

    #[test]
    fn a_receiver_over_its_limit_refuses_and_the_sender_learns_why() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (a, b) = Channel::pair().unwrap();
        let receiver = std::thread::spawn(move || receive(&b, 1));
        let sockets = [("a", listener.as_fd()), ("b", listener.as_fd())];
        let sent = send(&a, &sockets);
        assert!(matches!(sent, Err(Error::Refused { .. })), "{sent:?}");
        assert!(receiver.join().unwrap().is_err());
    }
}
