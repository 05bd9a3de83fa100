//! What the kernel knows about one TCP connection: its state, how many bytes
//! crossed it each way, and how many wait unread.
//!
//! These counters belong to the socket, not to an fd, so every process holding
//! the socket sees the same numbers. That is what lets a process that holds a
//! duplicate of another's connection (`pidfd_getfd`) tell, without reading a
//! byte, whether the other one consumed a request it has not answered: the
//! bytes received minus the bytes unread grew, and the bytes sent did not.
//!
//! ```
//! use std::io::Write;
//! use std::net::{TcpListener, TcpStream};
//! use std::os::fd::AsFd;
//! use handover_mechanism::sockets::tcp_info::{connection_info, TcpState};
//!
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! let mut client = TcpStream::connect(listener.local_addr()?)?;
//! let (server, _) = listener.accept()?;
//! client.write_all(b"hello")?;
//! # while connection_info(server.as_fd())?.unread < 5 { std::thread::yield_now(); }
//! let info = connection_info(server.as_fd())?;
//! assert_eq!(info.state, TcpState::Established);
//! assert_eq!((info.bytes_received, info.unread, info.consumed()), (5, 5, 0));
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::os::fd::BorrowedFd;

use crate::sys;

/// A TCP socket's state (`include/net/tcp_states.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TcpState {
    /// Data flows both ways.
    Established,
    /// Connecting.
    SynSent,
    /// Being accepted (server side of a handshake).
    SynRecv,
    /// This side sent its FIN; the peer has not acknowledged it yet.
    FinWait1,
    /// This side's FIN is acknowledged; the peer may still send.
    FinWait2,
    /// Both sides closed; waiting out stray segments.
    TimeWait,
    /// Closed (or reset).
    Close,
    /// The peer sent its FIN; this side may still send.
    CloseWait,
    /// The peer closed first, then this side; waiting for the last ACK.
    LastAck,
    /// A listening socket.
    Listen,
    /// Both sides sent a FIN at once.
    Closing,
    /// A state this code does not know.
    Other(u8),
}

impl TcpState {
    /// The state from the kernel's number.
    pub fn from_raw(raw: u8) -> TcpState {
        match raw {
            1 => TcpState::Established,
            2 => TcpState::SynSent,
            3 => TcpState::SynRecv,
            4 => TcpState::FinWait1,
            5 => TcpState::FinWait2,
            6 => TcpState::TimeWait,
            7 => TcpState::Close,
            8 => TcpState::CloseWait,
            9 => TcpState::LastAck,
            10 => TcpState::Listen,
            11 => TcpState::Closing,
            other => TcpState::Other(other),
        }
    }

    /// Whether this side has sent its FIN (`shutdown(SHUT_WR)` or the last
    /// close): it will send nothing more.
    pub fn sent_fin(self) -> bool {
        matches!(
            self,
            TcpState::FinWait1
                | TcpState::FinWait2
                | TcpState::TimeWait
                | TcpState::Closing
                | TcpState::LastAck
                | TcpState::Close
        )
    }
}

/// One look at a connection (`TCP_INFO` and `FIONREAD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Its state.
    pub state: TcpState,
    /// Payload bytes received from the peer since the connection began
    /// (`tcpi_bytes_received`, Linux ≥ 4.1).
    pub bytes_received: u64,
    /// Payload bytes sent to the peer (`tcpi_bytes_sent`, Linux ≥ 4.19; before
    /// that, the bytes the peer acknowledged).
    pub bytes_sent: u64,
    /// Received bytes nobody has read yet (`FIONREAD`).
    pub unread: u64,
    /// Milliseconds since the last payload arrived (`tcpi_last_data_recv`).
    pub ms_since_received: u32,
    /// Milliseconds since the last payload left (`tcpi_last_data_sent`).
    pub ms_since_sent: u32,
}

impl ConnectionInfo {
    /// Bytes some holder of the socket has read: received minus unread.
    pub fn consumed(&self) -> u64 {
        self.bytes_received.saturating_sub(self.unread)
    }
}

/// Looks at the connected TCP socket `fd`.
pub fn connection_info(fd: BorrowedFd<'_>) -> io::Result<ConnectionInfo> {
    // TCP_INFO first: bytes arriving between the two calls then count as
    // unread but not yet as received, so `consumed` can only be understated —
    // never "someone read this" about bytes nobody read.
    let info = sys::tcp_info(fd)?;
    let unread = rustix::io::ioctl_fionread(fd)?;
    let state = TcpState::from_raw(info.tcpi_state);
    // The peer's FIN takes a sequence number, which tcpi_bytes_received
    // counts and FIONREAD does not: without this, a peer that closed would
    // look like one whose last byte someone read.
    let fin = u64::from(matches!(
        state,
        TcpState::CloseWait | TcpState::LastAck | TcpState::Closing | TcpState::TimeWait
    ));
    let bytes_received = info.tcpi_bytes_received.saturating_sub(fin);
    let bytes_sent = if info.tcpi_bytes_sent > 0 {
        info.tcpi_bytes_sent
    } else {
        info.tcpi_bytes_acked
    };
    Ok(ConnectionInfo {
        state,
        bytes_received,
        bytes_sent,
        unread: unread.min(bytes_received),
        ms_since_received: info.tcpi_last_data_recv,
        ms_since_sent: info.tcpi_last_data_sent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::os::fd::AsFd;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (client, listener.accept().unwrap().0)
    }

    fn settle(server: &TcpStream, unread: u64) -> ConnectionInfo {
        for _ in 0..10_000 {
            let info = connection_info(server.as_fd()).unwrap();
            if info.unread == unread {
                return info;
            }
            std::thread::yield_now();
        }
        panic!("never saw {unread} unread bytes");
    }

    #[test]
    fn counts_bytes_read_unread_and_sent() {
        let (mut client, mut server) = pair();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let info = settle(&server, 18);
        assert_eq!((info.bytes_received, info.consumed()), (18, 0));
        let mut request = [0u8; 10];
        server.read_exact(&mut request).unwrap();
        let info = connection_info(server.as_fd()).unwrap();
        assert_eq!((info.unread, info.consumed(), info.bytes_sent), (8, 10, 0));
        server.write_all(b"HTTP/1.1 200 OK\r\n").unwrap();
        assert_eq!(connection_info(server.as_fd()).unwrap().bytes_sent, 17);
    }

    #[test]
    fn a_duplicate_sees_what_the_other_holder_did() {
        let (mut client, mut server) = pair();
        let duplicate = server.try_clone().unwrap();
        client.write_all(b"abc").unwrap();
        settle(&duplicate, 3);
        let mut one = [0u8; 1];
        server.read_exact(&mut one).unwrap();
        drop(server); // the other holder lets go: no FIN, the duplicate holds it
        let info = connection_info(duplicate.as_fd()).unwrap();
        assert_eq!(info.state, TcpState::Established);
        assert_eq!(info.consumed(), 1);
    }

    #[test]
    fn states_after_each_side_closes() {
        let (client, server) = pair();
        server.shutdown(Shutdown::Write).unwrap();
        let state = connection_info(server.as_fd()).unwrap().state;
        assert!(state.sent_fin(), "{state:?}");
        client.shutdown(Shutdown::Write).unwrap();
        let (client, server) = pair();
        client.shutdown(Shutdown::Write).unwrap();
        for _ in 0..10_000 {
            let info = connection_info(server.as_fd()).unwrap();
            if info.state == TcpState::CloseWait {
                assert_eq!(info.bytes_received, 0, "the FIN is not a byte");
                assert_eq!(info.consumed(), 0);
                return;
            }
            std::thread::yield_now();
        }
        panic!("the peer's FIN never showed");
    }
}
