//! Sockets below the level of names: binding fresh ones and checking inherited
//! ones (`bind`), steered `SO_REUSEPORT` groups ([`reuseport`]), one
//! connection's kernel counters ([`tcp_info`]), holding back what a connection
//! receives ([`hold`]).

mod bind;
#[cfg(target_os = "linux")]
pub mod hold;
#[cfg(target_os = "linux")]
pub mod reuseport;
#[cfg(target_os = "linux")]
pub mod tcp_info;

pub use bind::{bind, inspect, remove_stale_unix_socket};

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// What kind of socket a name stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketKind {
    /// A listening TCP socket.
    TcpListener,
    /// A bound UDP socket.
    Udp,
    /// A listening Unix-domain stream socket.
    UnixListener,
}

impl fmt::Display for SocketKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SocketKind::TcpListener => "TCP listener",
            SocketKind::Udp => "UDP socket",
            SocketKind::UnixListener => "Unix listener",
        })
    }
}

/// Where a socket is bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// An IPv4 or IPv6 address and port.
    Inet(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl Address {
    /// Whether a socket bound at `self` serves a request for `wanted` (port 0
    /// in `wanted` matches any port).
    pub fn serves(&self, wanted: &Address) -> bool {
        match (self, wanted) {
            (Address::Inet(have), Address::Inet(want)) => {
                have.ip() == want.ip() && (want.port() == 0 || have.port() == want.port())
            }
            (Address::Unix(have), Address::Unix(want)) => have == want,
            _ => false,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Inet(addr) => write!(f, "{addr}"),
            Address::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}
