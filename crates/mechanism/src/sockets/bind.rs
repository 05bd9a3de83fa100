//! Creating fresh sockets, and checking that an inherited one is what was asked for.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use socket2::{Domain, SockAddr, SockRef, Socket, Type};

use super::{Address, SocketKind};

/// Binds a fresh socket of `kind` at `address`, close-on-exec, with SO_REUSEADDR
/// (so a restart does not wait out TIME_WAIT), IPv6 sockets IPv6-only (so `[::]`
/// and `0.0.0.0` on one port can be two named sockets), listening with `backlog`.
pub fn bind(kind: SocketKind, address: &Address, backlog: i32) -> io::Result<OwnedFd> {
    let socket = match (kind, address) {
        (SocketKind::TcpListener | SocketKind::Udp, Address::Inet(addr)) => bind_inet(kind, *addr)?,
        (SocketKind::UnixListener, Address::Unix(path)) => bind_unix(path)?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a {kind} cannot have address {address}"),
            ))
        }
    };
    if kind != SocketKind::Udp {
        socket.listen(backlog)?;
    }
    Ok(socket.into())
}

fn bind_inet(kind: SocketKind, addr: SocketAddr) -> io::Result<Socket> {
    let ty = if kind == SocketKind::Udp {
        Type::DGRAM
    } else {
        Type::STREAM
    };
    let socket = Socket::new(Domain::for_address(addr), ty, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

fn bind_unix(path: &Path) -> io::Result<Socket> {
    remove_stale_unix_socket(path)?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&SockAddr::unix(path)?)?;
    Ok(socket)
}

/// A socket file left by a process that is gone refuses connections: remove it.
/// One that still accepts — of any socket type: a stream connect to a
/// `SOCK_SEQPACKET` listener fails with `EPROTOTYPE` — belongs to a live
/// process: leave it and fail with `AddrInUse`. Used for every Unix socket
/// handover binds (named sockets, control sockets, takeover sockets).
pub fn remove_stale_unix_socket(path: &Path) -> io::Result<()> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let live = || {
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} is in use by a live process", path.display()),
        ))
    };
    match UnixStream::connect(path) {
        Ok(_) => live(),
        Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => live(),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}

/// Checks that `fd` is a socket of `kind`; returns its local address, or what is
/// wrong in words ("is not a socket", "is a UDP socket, not a TCP listener", …).
pub fn inspect(fd: &OwnedFd, kind: SocketKind) -> Result<Address, String> {
    let sock = SockRef::from(fd);
    let ty = sock.r#type().map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTSOCK) => "is not a socket".to_owned(),
        _ => format!("cannot be inspected: {e}"),
    })?;
    let local = sock
        .local_addr()
        .map_err(|e| format!("has no local address: {e}"))?;
    let found = describe(ty, &local);
    let fits = match kind {
        SocketKind::TcpListener => ty == Type::STREAM && local.as_socket().is_some(),
        SocketKind::Udp => ty == Type::DGRAM && local.as_socket().is_some(),
        SocketKind::UnixListener => ty == Type::STREAM && local.is_unix(),
    };
    if !fits {
        return Err(format!("is a {found}, not a {kind}"));
    }
    #[cfg(target_os = "linux")]
    if kind != SocketKind::Udp && !sock.is_listener().unwrap_or(false) {
        return Err(format!("is a {found} that is not listening"));
    }
    Ok(match local.as_socket() {
        Some(addr) => Address::Inet(addr),
        None => Address::Unix(local.as_pathname().map(Path::to_owned).unwrap_or_default()),
    })
}

fn describe(ty: Type, local: &SockAddr) -> &'static str {
    match (ty, local.is_unix()) {
        (Type::STREAM, false) => "TCP socket",
        (Type::DGRAM, false) => "UDP socket",
        (Type::STREAM, true) => "Unix stream socket",
        (Type::DGRAM, true) => "Unix datagram socket",
        _ => "socket of another type",
    }
}
