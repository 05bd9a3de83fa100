//! One connection of the protocol: a `SOCK_SEQPACKET` Unix socket, on which
//! each [`Channel::send`] is one record that [`Channel::receive`] returns whole
//! with its descriptors.
//!
//! Receiving is strict, because the sender may be anyone who can reach the
//! socket: a record longer than [`MAX_FRAME`] or with its descriptors cut off
//! (`MSG_CTRUNC`) is an error, descriptors are received close-on-exec
//! (`MSG_CMSG_CLOEXEC`), and descriptors that do not belong to the message
//! (a `ready` with an fd attached, a batch with one fd too few) are closed and
//! reported. Timeouts are the socket's own (`SO_RCVTIMEO`, `SO_SNDTIMEO`).

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use rustix::net::{
    self, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
    UCred,
};

use crate::message::{Message, MAX_FDS, MAX_FRAME};
use crate::Error;

/// One end of a conversation.
#[derive(Debug)]
pub struct Channel {
    socket: OwnedFd,
}

/// A message with the descriptors that came with it.
#[derive(Debug)]
pub struct Received {
    /// The message.
    pub message: Message,
    /// Its descriptors (close-on-exec), as many as [`Message::fds`] says.
    pub fds: Vec<OwnedFd>,
}

impl Channel {
    /// Two connected ends, for a parent and its child or for tests.
    pub fn pair() -> std::io::Result<(Channel, Channel)> {
        let (a, b) = net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        Ok((Channel { socket: a }, Channel { socket: b }))
    }

    /// Connects to the listening socket at `path`.
    pub fn connect(path: &Path) -> std::io::Result<Channel> {
        let socket = seqpacket()?;
        net::connect(&socket, &SocketAddrUnix::new(path)?)?;
        Ok(Channel { socket })
    }

    /// A channel on an accepted or inherited `SOCK_SEQPACKET` socket.
    pub fn from_socket(socket: OwnedFd) -> std::io::Result<Channel> {
        if net::sockopt::socket_type(&socket)? != SocketType::SEQPACKET {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a SOCK_SEQPACKET socket",
            ));
        }
        Ok(Channel { socket })
    }

    /// Bounds every later send and receive (`None`: wait forever).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        use net::sockopt::{set_socket_timeout, Timeout};
        set_socket_timeout(&self.socket, Timeout::Recv, timeout)?;
        set_socket_timeout(&self.socket, Timeout::Send, timeout)?;
        Ok(())
    }

    /// Who is at the other end (`SO_PEERCRED`: as it was when it connected).
    pub fn peer(&self) -> std::io::Result<UCred> {
        Ok(net::sockopt::socket_peercred(&self.socket)?)
    }

    /// Sends `message` with `fds` (as many as [`Message::fds`] says).
    pub fn send(&self, message: &Message, fds: &[BorrowedFd<'_>]) -> Result<(), Error> {
        if fds.len() != message.fds() {
            return Err(Error::WrongFds {
                got: fds.len(),
                expected: message.fds(),
            });
        }
        let bytes = message.encode();
        if bytes.len() > MAX_FRAME {
            return Err(Error::Oversized);
        }
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(Error::WrongFds {
                got: fds.len(),
                expected: MAX_FDS,
            });
        }
        let sent = net::sendmsg(
            &self.socket,
            &[IoSlice::new(&bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .map_err(std::io::Error::from)?;
        debug_assert_eq!(
            sent,
            bytes.len(),
            "a seqpacket record goes whole or not at all"
        );
        Ok(())
    }

    /// Sends an [`Message::Error`] for `error`, ignoring a failure to send
    /// (the peer may be gone: the error is the caller's to report anyway).
    pub fn refuse(&self, error: &Error) {
        let _ = self.send(&Message::error(error), &[]);
    }

    /// Receives one message with its descriptors; an error reply from the peer
    /// is returned as [`Error::Refused`].
    pub fn receive(&self) -> Result<Received, Error> {
        let received = self.receive_any()?;
        if let Message::Error { code, message } = received.message {
            return Err(Error::Refused { code, message });
        }
        Ok(received)
    }

    /// Receives one message, an error reply included.
    pub fn receive_any(&self) -> Result<Received, Error> {
        let mut bytes = vec![0u8; MAX_FRAME + 1];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let result = net::recvmsg(
            &self.socket,
            &mut [IoSliceMut::new(&mut bytes)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        // Take the descriptors first, whatever happens next: dropped, they close.
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if result.flags.contains(ReturnFlags::CTRUNC) {
            return Err(Error::Truncated);
        }
        if result.flags.contains(ReturnFlags::TRUNC) || result.bytes > MAX_FRAME {
            return Err(Error::Oversized);
        }
        if result.bytes == 0 {
            return Err(Error::Closed);
        }
        let message = Message::decode(&bytes[..result.bytes])?;
        if fds.len() != message.fds() {
            return Err(Error::WrongFds {
                got: fds.len(),
                expected: message.fds(),
            });
        }
        Ok(Received { message, fds })
    }

    /// The socket, for polling.
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// A new close-on-exec Unix `SOCK_SEQPACKET` socket.
fn seqpacket() -> std::io::Result<OwnedFd> {
    Ok(net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// A listening `SOCK_SEQPACKET` socket at a path.
#[derive(Debug)]
pub struct Listener {
    socket: OwnedFd,
}

impl Listener {
    /// Listens at `path`, which must not exist.
    pub fn bind(path: &Path) -> std::io::Result<Listener> {
        let socket = seqpacket()?;
        net::bind(&socket, &SocketAddrUnix::new(path)?)?;
        net::listen(&socket, 16)?;
        Ok(Listener { socket })
    }

    /// A listener on an inherited or received `SOCK_SEQPACKET` socket that
    /// listens.
    pub fn from_socket(socket: OwnedFd) -> std::io::Result<Listener> {
        if net::sockopt::socket_type(&socket)? != SocketType::SEQPACKET
            || !net::sockopt::socket_acceptconn(&socket)?
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a listening SOCK_SEQPACKET socket",
            ));
        }
        Ok(Listener { socket })
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> std::io::Result<Channel> {
        let socket = net::accept_with(&self.socket, SocketFlags::CLOEXEC)?;
        Ok(Channel { socket })
    }

    /// The socket, for polling or handing over.
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many of this process's descriptors are the socket `fd` is.
    fn copies_of(fd: BorrowedFd<'_>) -> usize {
        let me = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ))
        .unwrap();
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| *target == me)
            .count()
    }

    #[test]
    fn a_message_and_its_descriptors_arrive_together() {
        let (a, b) = Channel::pair().unwrap();
        let (x, _y) = Channel::pair().unwrap();
        let message = Message::Sockets {
            batch: 0,
            names: vec!["x".into()],
            last: true,
        };
        a.send(&message, &[x.socket()]).unwrap();
        let received = b.receive().unwrap();
        assert_eq!(received.message, message);
        let flags = rustix::io::fcntl_getfd(&received.fds[0]).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[test]
    fn descriptors_that_do_not_belong_are_closed_and_reported() {
        let (a, b) = Channel::pair().unwrap();
        let bytes = Message::Ready.encode();
        let stray = [a.socket(), a.socket()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&stray)));
        net::sendmsg(
            a.socket(),
            &[IoSlice::new(&bytes)],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
        assert!(matches!(
            b.receive(),
            Err(Error::WrongFds {
                got: 2,
                expected: 0
            })
        ));
        assert_eq!(
            copies_of(a.socket()),
            1,
            "the stray descriptors were closed"
        );
    }

    #[test]
    fn garbage_an_oversized_record_and_a_hang_up_are_errors() {
        let (a, b) = Channel::pair().unwrap();
        net::send(a.socket(), b"\x00\x01 not json", SendFlags::empty()).unwrap();
        assert!(matches!(b.receive(), Err(Error::Malformed(_))));
        net::send(a.socket(), &vec![b'{'; MAX_FRAME + 10], SendFlags::empty()).unwrap();
        assert!(matches!(b.receive(), Err(Error::Oversized)));
        // The channel still works after both.
        a.send(&Message::Ready, &[]).unwrap();
        assert_eq!(b.receive().unwrap().message, Message::Ready);
        drop(a);
        assert!(matches!(b.receive(), Err(Error::Closed)));
    }

    #[test]
    fn an_error_reply_is_a_refusal_and_a_silent_peer_a_timeout() {
        let (a, b) = Channel::pair().unwrap();
        a.refuse(&Error::Unexpected("no".into()));
        assert!(matches!(b.receive(), Err(Error::Refused { code, .. }) if code == "unexpected"));
        b.set_timeout(Some(Duration::from_millis(20))).unwrap();
        assert!(matches!(b.receive(), Err(Error::Io(_))));
    }

    #[test]
    fn a_listener_accepts_and_reports_the_peer() {
        let dir = std::env::temp_dir().join(format!("wire-listener-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let listener = Listener::bind(&path).unwrap();
        let client = Channel::connect(&path).unwrap();
        let server = listener.accept().unwrap();
        assert_eq!(server.peer().unwrap().pid, rustix::process::getpid());
        client.send(&Message::Ready, &[]).unwrap();
        assert_eq!(server.receive().unwrap().message, Message::Ready);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
