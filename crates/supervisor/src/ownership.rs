//! Which process holds the server side of a TCP connection, through /proc.
//!
//! The http and tcp readiness probes must reach the *new* child, but old and new
//! accept on the same socket: a probe connection may land in either. So the
//! supervisor connects, asks the kernel (sock_diag) for the inode of the server
//! side of its connection, and looks for that inode among the fds of the new
//! child and its descendants (pre-forking servers accept in workers). A probe
//! accepted by the old child simply does not count. Linux only.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

/// The inode of the socket whose local address is `server` and remote address
/// is `client`, once a process has accepted it (`None` before: an unaccepted
/// connection has no file, so its inode is 0).
///
/// Asks the kernel for exactly that socket through `NETLINK_SOCK_DIAG`
/// (`sock_diag(7)`): reading `/proc/net/tcp` instead would mean parsing every
/// socket on the machine, hundreds of thousands of TIME_WAIT entries under load.
pub fn server_side_inode(server: SocketAddr, client: SocketAddr) -> Option<u64> {
    use rustix::net::{netlink, socket, AddressFamily, SocketType};
    let diag = socket(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        Some(netlink::SOCK_DIAG),
    )
    .ok()?;
    rustix::net::send(
        &diag,
        &diag_request(server, client),
        rustix::net::SendFlags::empty(),
    )
    .ok()?;
    let mut reply = [0u8; 1024];
    let n = rustix::net::recv(&diag, &mut reply, rustix::net::RecvFlags::empty())
        .ok()?
        .0;
    parse_diag_reply(&reply[..n.min(reply.len())])
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_HEADER: usize = 16;

/// An exact-match `inet_diag_req_v2` for one TCP socket, in a netlink message.
fn diag_request(local: SocketAddr, remote: SocketAddr) -> Vec<u8> {
    let mut request = Vec::with_capacity(NLMSG_HEADER + 56);
    let length = (NLMSG_HEADER + 56) as u32;
    request.extend_from_slice(&length.to_ne_bytes());
    request.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    request.extend_from_slice(&[0; 8]); // sequence number, port id
    let family = if local.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    request.extend_from_slice(&[family as u8, libc::IPPROTO_TCP as u8, 0, 0]);
    request.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    request.extend_from_slice(&local.port().to_be_bytes());
    request.extend_from_slice(&remote.port().to_be_bytes());
    request.extend_from_slice(&ip_bytes(local.ip()));
    request.extend_from_slice(&ip_bytes(remote.ip()));
    request.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    request.extend_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    request
}

fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    match ip {
        IpAddr::V4(ip) => bytes[..4].copy_from_slice(&ip.octets()),
        IpAddr::V6(ip) => bytes = ip.octets(),
    }
    bytes
}

/// The inode in an `inet_diag_msg` reply (offset 68 after the netlink header);
/// `None` for an error reply (no such socket) or inode 0 (not accepted yet).
fn parse_diag_reply(reply: &[u8]) -> Option<u64> {
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    if kind != SOCK_DIAG_BY_FAMILY {
        return None;
    }
    let at = NLMSG_HEADER + 68;
    let inode = u32::from_ne_bytes(reply.get(at..at + 4)?.try_into().ok()?);
    (inode != 0).then_some(u64::from(inode))
}

/// The sockets `pid` holds: (fd number, inode), from `/proc/PID/fd`.
pub fn socket_fds(pid: u32) -> std::io::Result<Vec<(i32, u64)>> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let Some(number) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some(inode) = socket_inode(&entry.path()) {
            fds.push((number, inode));
        }
    }
    Ok(fds)
}

/// The inode of the socket a `/proc/PID/fd/N` link names, if it names one.
fn socket_inode(link: &std::path::Path) -> Option<u64> {
    let target = std::fs::read_link(link).ok()?;
    target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The inode of socket `fd` (as `/proc/PID/fd` shows it).
pub fn inode_of(fd: std::os::fd::BorrowedFd<'_>) -> Option<u64> {
    rustix::fs::fstat(fd).ok().map(|stat| stat.st_ino)
}

/// When `pid` started (clock ticks after boot, `/proc/PID/stat` field 22):
/// with the pid, it names one process even if the pid is reused.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Whether `root` or one of its descendants has the socket `inode` open.
pub fn tree_holds(root: u32, inode: u64) -> bool {
    let wanted = format!("socket:[{inode}]");
    descendants(root).into_iter().any(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.filter_map(Result::ok).any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| target.as_os_str() == wanted.as_str())
            })
        })
    })
}

/// `root` and every process below it.
pub fn descendants(root: u32) -> BTreeSet<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|entry| {
                let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let ppid = stat
                    .rsplit_once(") ")?
                    .1
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                Some((pid, ppid))
            })
            .collect()
        })
        .unwrap_or_default();
    let mut tree = BTreeSet::from([root]);
    loop {
        let before = tree.len();
        for (pid, ppid) in &parents {
            if tree.contains(ppid) {
                tree.insert(*pid);
            }
        }
        if tree.len() == before {
            return tree;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn finds_the_accepted_side_in_this_process() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let client = TcpStream::connect(server).unwrap();
        let client_addr = client.local_addr().unwrap();
        assert_eq!(
            server_side_inode(server, client_addr),
            None,
            "not accepted yet"
        );
        let (_accepted, _) = listener.accept().unwrap();
        let inode = server_side_inode(server, client_addr).expect("accepted");
        assert!(tree_holds(std::process::id(), inode));
    }
}
