//! Steered SO_REUSEPORT groups: several listening TCP sockets on one address, and
//! a classic BPF program that picks, for each new connection, the one socket that
//! gets it. Linux only.
//!
//! Why: when an old and a new process share *one* listening socket, there is no
//! way to stop the old one from accepting except to tell it to shut down, and a
//! server that closes the connections it has accepted but not yet read (uvicorn
//! does, at shutdown) resets them. With one socket per process in a group, the
//! new connections can be sent to the new process first; the old one empties its
//! own accept queue, and only then is asked to stop.
//!
//! The kernel keeps a group's live sockets in an array, in the order they started
//! listening; when one leaves, the last one takes its slot (exactly
//! [`Vec::swap_remove`]). A program returns an index into that array, so whoever
//! steers must mirror the array: the supervisor does, because it alone adds
//! members ([`bind_member`]) and removes them ([`leave`]).
//!
//! ```
//! # #[cfg(target_os = "linux")] {
//! use handover_mechanism::sockets::reuseport::{self, Route};
//! use std::os::fd::AsFd;
//!
//! let (old, address) = reuseport::bind_first("127.0.0.1:0".parse().unwrap(), 128).unwrap();
//! let new = reuseport::bind_member(address, 128).unwrap(); // index 1; still steered to 0
//! reuseport::steer(old.as_fd(), address, &Route::to(1)).unwrap(); // now every connection goes to `new`
//! let client = std::net::TcpStream::connect(address).unwrap();
//! let (accepted, _) = std::net::TcpListener::from(new).accept().unwrap();
//! assert_eq!(accepted.peer_addr().unwrap(), client.local_addr().unwrap());
//! # }
//! ```

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{BorrowedFd, OwnedFd};

use socket2::{Domain, SockRef, Socket, Type};

use crate::sys;

/// Which member of a group gets a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Index of the member that gets every connection…
    pub to: u32,
    /// …except those coming from exactly this source address and port, which go
    /// to the member at the given index. The supervisor's readiness probe uses it
    /// to reach a new child before any client is sent there.
    pub except: Option<(SocketAddr, u32)>,
}

impl Route {
    /// Every new connection to the member at `index`.
    pub fn to(index: u32) -> Route {
        Route {
            to: index,
            except: None,
        }
    }
}

/// Binds the first socket of a group at `address` and starts listening, with every
/// connection routed to it. Returns it with the address it got (port 0 resolved).
///
/// The bind itself is done *without* SO_REUSEPORT, so an address some other
/// socket already uses fails with `AddrInUse` just as a plain bind would; the
/// option is set between bind and listen, which is when the kernel forms the
/// group.
pub fn bind_first(address: SocketAddr, backlog: i32) -> io::Result<(OwnedFd, SocketAddr)> {
    let socket = new_socket(address)?;
    socket.bind(&address.into())?;
    socket.set_reuse_port(true)?;
    socket.listen(backlog)?;
    let fd = OwnedFd::from(socket);
    let bound = local_address(&fd)?;
    steer(std::os::fd::AsFd::as_fd(&fd), bound, &Route::to(0))?;
    Ok((fd, bound))
}

/// Binds one more member of the group listening at `address` (the group's real
/// address: port 0 is not resolved here). It takes the next index; the group's
/// program does not change, so it gets no connection until it is steered to.
pub fn bind_member(address: SocketAddr, backlog: i32) -> io::Result<OwnedFd> {
    let socket = new_socket(address)?;
    socket.set_reuse_port(true)?;
    socket.bind(&address.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Replaces the program of the group that `member` belongs to with one that
/// follows `route`. `address` is the group's address (its family decides how the
/// program reads the packet).
pub fn steer(member: BorrowedFd<'_>, address: SocketAddr, route: &Route) -> io::Result<()> {
    sys::attach_cbpf(
        member,
        libc::SO_ATTACH_REUSEPORT_CBPF,
        &program(address.is_ipv6(), route),
    )
}

/// How many connections wait in `listener`'s accept queue: for a listening
/// socket, `TCP_INFO`'s `tcpi_unacked` is the accept backlog.
pub fn accept_queue_len(listener: BorrowedFd<'_>) -> io::Result<u32> {
    let info = sys::tcp_info(listener)?;
    if super::tcp_info::TcpState::from_raw(info.tcpi_state) != super::tcp_info::TcpState::Listen {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a listening TCP socket",
        ));
    }
    Ok(info.tcpi_unacked)
}

/// Takes `member` out of its group and stops it listening, for every process that
/// holds it (`shutdown(SHUT_RDWR)` on a listener). Connections still in its
/// accept queue are reset, unless `net.ipv4.tcp_migrate_req` is 1, in which case
/// the kernel moves them to another member.
pub fn leave(member: BorrowedFd<'_>) -> io::Result<()> {
    match rustix::net::shutdown(member, rustix::net::Shutdown::Both) {
        Ok(()) => Ok(()),
        // Already out: someone else shut it down.
        Err(rustix::io::Errno::NOTCONN) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Whether `socket` is still listening (a member that left, or was shut down by
/// a process holding it, is not).
pub fn is_listening(socket: BorrowedFd<'_>) -> bool {
    rustix::net::sockopt::socket_acceptconn(socket).unwrap_or(false)
}

fn new_socket(address: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

fn local_address(fd: &OwnedFd) -> io::Result<SocketAddr> {
    SockRef::from(fd)
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an inet socket"))
}

// Classic BPF, as far as needed here (linux/filter.h).
const LD_W_ABS: u16 = 0x20; // A = u32 at [k]
const LD_H_ABS: u16 = 0x28; // A = u16 at [k]
const LD_H_IND: u16 = 0x48; // A = u16 at [X + k]
const LDX_B_MSH: u16 = 0xb1; // X = 4 * ([k] & 0xf): the IPv4 header length
const JEQ_K: u16 = 0x15; // if A == k: skip jt, else skip jf
const RET_K: u16 = 0x06;
/// Loads relative to the network header: the program is run with the packet's
/// data pointer *after* the TCP header, so addresses and ports are reached from
/// the IP header (linux/filter.h `SKF_NET_OFF`).
const NET: u32 = (-0x100000i32) as u32;

fn insn(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// The program for `route`: `ret to`, preceded, when there is an exception, by
/// comparisons of the SYN's source address and port that jump to `ret except`.
fn program(ipv6: bool, route: &Route) -> Vec<libc::sock_filter> {
    let mut program = Vec::new();
    if let Some((source, index)) = route.except {
        // (load instructions, value the loaded word must equal)
        let mut checks: Vec<(Vec<libc::sock_filter>, u32)> = Vec::new();
        match (ipv6, source.ip()) {
            (false, IpAddr::V4(ip)) => {
                checks.push((vec![insn(LD_W_ABS, NET + 12)], u32::from(ip)));
                checks.push((
                    vec![insn(LDX_B_MSH, NET), insn(LD_H_IND, NET)],
                    u32::from(source.port()),
                ));
            }
            (true, IpAddr::V6(ip)) => {
                for (i, word) in ip.octets().chunks(4).enumerate() {
                    let word = u32::from_be_bytes(word.try_into().expect("4 bytes"));
                    checks.push((vec![insn(LD_W_ABS, NET + 8 + 4 * i as u32)], word));
                }
                // No extension headers on a probe's SYN: TCP starts at 40.
                checks.push((vec![insn(LD_H_ABS, NET + 40)], u32::from(source.port())));
            }
            // A source of the other family can never match: no exception.
            _ => checks.clear(),
        }
        if !checks.is_empty() {
            let mut jumps = Vec::new();
            for (loads, value) in checks {
                program.extend(loads);
                jumps.push(program.len());
                program.push(insn(JEQ_K, value));
            }
            program.push(insn(RET_K, index));
            let miss = program.len(); // the final `ret to`
            for at in jumps {
                program[at].jf = u8::try_from(miss - at - 1).expect("short program");
            }
        }
    }
    program.push(insn(RET_K, route.to));
    program
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsFd;

    /// Which of `members` received a new connection from `client`.
    fn lands(members: &[&OwnedFd], address: SocketAddr, client: Option<SocketAddr>) -> usize {
        let queues = || -> Vec<u32> {
            members
                .iter()
                .map(|m| accept_queue_len(m.as_fd()).unwrap())
                .collect()
        };
        let before = queues();
        let socket = Socket::new(Domain::for_address(address), Type::STREAM, None).unwrap();
        if let Some(client) = client {
            socket.bind(&client.into()).unwrap();
        }
        socket.connect(&address.into()).unwrap();
        std::mem::forget(socket); // keep it queued; the test process ends soon
                                  // The server side is queued when the handshake's last ACK is processed,
                                  // which on loopback is at once, but not necessarily before connect returns.
        let total = |q: &[u32]| q.iter().sum::<u32>();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut after = queues();
        while total(&after) == total(&before) && std::time::Instant::now() < deadline {
            std::thread::yield_now();
            after = queues();
        }
        let grew: Vec<usize> = (0..members.len())
            .filter(|&i| after[i] == before[i] + 1)
            .collect();
        assert_eq!(grew.len(), 1, "{before:?} -> {after:?}");
        grew[0]
    }

    fn group(host: &str) -> (SocketAddr, Vec<OwnedFd>) {
        let (first, address) = bind_first(format!("{host}:0").parse().unwrap(), 64).unwrap();
        let mut members = vec![first];
        for _ in 0..3 {
            members.push(bind_member(address, 64).unwrap());
        }
        (address, members)
    }

    #[test]
    fn connections_go_where_they_are_steered() {
        for host in ["127.0.0.1", "[::1]"] {
            let (address, members) = group(host);
            let all: Vec<&OwnedFd> = members.iter().collect();
            for _ in 0..5 {
                assert_eq!(lands(&all, address, None), 0, "new members get nothing");
            }
            for target in [3, 1, 2, 0] {
                steer(members[0].as_fd(), address, &Route::to(target)).unwrap();
                for _ in 0..5 {
                    assert_eq!(lands(&all, address, None), target as usize);
                }
            }
        }
    }

    #[test]
    fn a_probe_from_one_source_port_is_routed_apart() {
        for host in ["127.0.0.1", "[::1]"] {
            let (address, members) = group(host);
            let all: Vec<&OwnedFd> = members.iter().collect();
            // Reserve a source port the way the supervisor's probe does.
            let reserved = TcpListener::bind((address.ip(), 0)).unwrap();
            let probe = reserved.local_addr().unwrap();
            drop(reserved);
            let route = Route {
                to: 1,
                except: Some((probe, 2)),
            };
            steer(members[3].as_fd(), address, &route).unwrap();
            assert_eq!(lands(&all, address, Some(probe)), 2);
            if address.is_ipv4() {
                // The same port from another address is anyone else.
                let elsewhere = SocketAddr::new([127, 0, 0, 2].into(), probe.port());
                assert_eq!(lands(&all, address, Some(elsewhere)), 1);
            }
            for _ in 0..5 {
                assert_eq!(lands(&all, address, None), 1, "everyone else");
            }
        }
    }

    #[test]
    fn a_member_that_leaves_is_replaced_by_the_last() {
        let (address, mut members) = group("127.0.0.1");
        leave(members[0].as_fd()).unwrap();
        assert!(!is_listening(members[0].as_fd()));
        let gone = members.swap_remove(0); // the kernel's order: [3, 1, 2]
        let all: Vec<&OwnedFd> = members.iter().collect();
        for target in 0..3 {
            steer(members[1].as_fd(), address, &Route::to(target)).unwrap();
            assert_eq!(lands(&all, address, None), target as usize);
        }
        leave(gone.as_fd()).unwrap(); // twice is fine
    }

    #[test]
    fn a_taken_address_is_refused_as_by_a_plain_bind() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let error = bind_first(taken.local_addr().unwrap(), 8).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
        // And a group does not let a plain socket in either.
        let (_first, address) = bind_first("127.0.0.1:0".parse().unwrap(), 8).unwrap();
        assert!(TcpListener::bind(address).is_err());
    }
}
