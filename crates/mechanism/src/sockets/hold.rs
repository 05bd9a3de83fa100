//! Holding back what a TCP connection receives: a socket filter
//! (`SO_ATTACH_FILTER`, classic BPF, no privilege needed) that drops every
//! incoming segment carrying payload, and lets pure ACKs and FINs through.
//!
//! A dropped segment is not acknowledged, so the peer sends it again (after a
//! retransmission timeout: some 200 ms on Linux); once the filter is gone the
//! retransmission is delivered as if nothing had happened. Nothing is lost and
//! nobody — no process holding the socket — can read the held bytes meanwhile.
//! The filter belongs to the socket, not to a descriptor: every holder of the
//! connection sees the effect, and [`release`] must be called before the last
//! holder but one lets go (closing a duplicate does not remove it).
//!
//! The keep-alive rescue of `handover run` uses it on an old child's idle
//! connections around the stop signal: a server that closes its idle
//! connections at that moment can then never have read half of the next
//! request.
//!
//! ```
//! use std::io::Write;
//! use std::net::{TcpListener, TcpStream};
//! use std::os::fd::AsFd;
//! use handover_mechanism::sockets::{hold, tcp_info::connection_info};
//!
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! let mut client = TcpStream::connect(listener.local_addr()?)?;
//! let (server, _) = listener.accept()?;
//! hold::hold(server.as_fd())?;
//! client.write_all(b"GET / HTTP/1.1\r\n\r\n")?;
//! assert_eq!(connection_info(server.as_fd())?.unread, 0); // held back
//! hold::release(server.as_fd())?;
//! // … the retransmission arrives some 200 ms later.
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::os::fd::BorrowedFd;

use crate::sys;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The filter: the packet starts at the TCP header; drop it if it is longer
/// than its header (it carries payload).
fn program() -> Vec<libc::sock_filter> {
    const LD_B_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    const AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
    const RSH_K: u16 = (libc::BPF_ALU | libc::BPF_RSH | libc::BPF_K) as u16;
    const TAX: u16 = (libc::BPF_MISC | libc::BPF_TAX) as u16;
    const LD_LEN: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_LEN) as u16;
    const JGT_X: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_X) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    vec![
        insn(LD_B_ABS, 0, 0, 12), // data offset, in 32-bit words, high nibble
        insn(AND_K, 0, 0, 0xf0),
        insn(RSH_K, 0, 0, 2),        // = header length in bytes
        insn(TAX, 0, 0, 0),          // X = header length
        insn(LD_LEN, 0, 0, 0),       // A = segment length
        insn(JGT_X, 0, 1, 0),        // payload? drop : keep
        insn(RET_K, 0, 0, 0),        // drop
        insn(RET_K, 0, 0, u32::MAX), // keep whole
    ]
}

/// Holds back what `connection` receives until [`release`].
pub fn hold(connection: BorrowedFd<'_>) -> io::Result<()> {
    sys::attach_cbpf(connection, libc::SO_ATTACH_FILTER, &program())
}

/// Lets `connection` receive again; held-back data arrives with the peer's
/// next retransmission.
pub fn release(connection: BorrowedFd<'_>) -> io::Result<()> {
    sys::detach_filter(connection)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockets::tcp_info::connection_info;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    fn pair(address: &str) -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind(address).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (client, listener.accept().unwrap().0)
    }

    #[test]
    fn held_bytes_arrive_whole_once_released_and_not_before() {
        for address in ["127.0.0.1:0", "[::1]:0"] {
            let (mut client, mut server) = pair(address);
            hold(server.as_fd()).unwrap();
            client.write_all(b"next request").unwrap();
            // Nothing may arrive while held: look for a while (bounded).
            let until = Instant::now() + Duration::from_millis(300);
            while Instant::now() < until {
                assert_eq!(
                    connection_info(server.as_fd()).unwrap().unread,
                    0,
                    "{address}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            release(server.as_fd()).unwrap();
            server
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut got = [0u8; 12];
            server.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"next request", "{address}");
        }
    }

    #[test]
    fn acks_and_the_peer_fin_pass_a_held_connection() {
        let (mut client, mut server) = pair("127.0.0.1:0");
        hold(server.as_fd()).unwrap();
        // Our own sending works (the peer's ACKs get through) ...
        server.write_all(&vec![7u8; 200_000]).unwrap();
        let mut all = vec![0u8; 200_000];
        client.read_exact(&mut all).unwrap();
        // ... and the peer's FIN is seen.
        client.shutdown(std::net::Shutdown::Write).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(server.read(&mut [0u8; 1]).unwrap(), 0);
    }
}
