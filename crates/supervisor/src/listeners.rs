//! The sockets of `--listen`, bound once by the supervisor and handed to every
//! child as `LISTEN_FDS`.
//!
//! UDP sockets and Unix listeners are one socket, shared by every child. A TCP
//! listener is a [steered group](crate::steering): each upgrade's new child gets
//! its own socket on the same address, and new connections are steered to it
//! once it is ready, before the old child is asked to stop. A child restarted
//! after a crash takes over the socket of the one that crashed (its accept queue
//! held the clients meanwhile). If the kernel refuses steering (no
//! SO_REUSEPORT BPF, kernel < 4.5), a TCP listener falls back to one shared
//! socket, and the log says so.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

use handover_mechanism::sockets::{Address, SocketKind};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::config::Listen;
use crate::error::Error;
use crate::fdstore::FdStore;
use crate::rescue::Target;
use crate::status::SocketStatus;
use crate::steering::Group;

/// Accept backlog of every listening socket.
const BACKLOG: i32 = 1024;

/// A socket taken back after a self-upgrade: (name, shared fd, group
/// members as (epoch, fd), target epoch).
pub type RestoredSocket = (String, Option<OwnedFd>, Vec<(u64, OwnedFd)>, u64);

/// One `--listen` socket's fds across a self-upgrade.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SavedSocket {
    pub name: String,
    /// A shared socket's fd number.
    pub shared: Option<i32>,
    /// A steered group's members, (epoch, fd number), in the kernel's order.
    pub members: Vec<(u64, i32)>,
    /// The epoch steered to.
    pub target: u64,
}

/// All the sockets, in `--listen` order (the children's fds 3, 4, …).
pub struct Listeners {
    sockets: Vec<Named>,
    probe: Option<ProbeTarget>,
}

struct Named {
    name: String,
    /// As bound (port 0 resolved), for status.
    address: String,
    protocol: crate::config::Protocol,
    socket: Socket,
}

enum Socket {
    Shared(OwnedFd),
    Steered(Group),
}

impl Listeners {
    /// Binds every socket; TCP listeners as steered groups whose first member
    /// belongs to `epoch`. The error names the socket that could not be bound.
    ///
    /// A socket handed in from the service manager's fd store under the same
    /// name is taken instead of binding (see [`crate::fdstore`]).
    pub fn bind(listen: &[Listen], epoch: u64, store: &mut FdStore) -> Result<Listeners, Error> {
        let mut sockets = Vec::new();
        let mut probe = None;
        for listen in listen {
            let named = match store.take(&listen.name) {
                Some(fd) => adopt_one(listen, fd, epoch)?,
                None => None,
            };
            let named = match named {
                Some(named) => named,
                None => bind_one(listen, epoch).map_err(|source| Error::Bind {
                    name: listen.name.clone(),
                    address: listen.address.to_string(),
                    source,
                })?,
            };
            if probe.is_none() {
                probe = named.probe_target();
            }
            sockets.push(named);
        }
        Ok(Listeners { sockets, probe })
    }

    /// Where readiness probes connect: the first TCP listener.
    pub fn probe(&self) -> Option<ProbeTarget> {
        self.probe.clone()
    }

    /// The sockets for a child of `epoch`, as `(name, fd)` in fd order (copies:
    /// drop them once the child is started).
    pub fn for_epoch(&self, epoch: u64) -> io::Result<Vec<(String, OwnedFd)>> {
        self.sockets
            .iter()
            .map(|named| {
                let fd = match &named.socket {
                    Socket::Shared(fd) => fd.try_clone()?,
                    Socket::Steered(group) => group
                        .fd(epoch)
                        .ok_or_else(|| io::Error::other(format!("no socket for epoch {epoch}")))?
                        .try_clone_to_owned()?,
                };
                Ok((named.name.clone(), fd))
            })
            .collect()
    }

    /// The epoch new connections go to (a restarted child gets its sockets).
    pub fn target(&self, fallback: u64) -> u64 {
        self.groups()
            .next()
            .map_or(fallback, |group| group.target())
    }

    /// Adds a socket for `epoch` to every group; it gets no connection yet.
    pub fn open_epoch(&mut self, epoch: u64) -> io::Result<()> {
        let mut failed = None;
        for group in self.groups_mut() {
            if let Err(error) = group.add(epoch) {
                failed = Some(error);
                break;
            }
        }
        match failed {
            Some(error) => {
                self.release(epoch);
                Err(error)
            }
            None => Ok(()),
        }
    }

    /// Sends every new connection to `epoch`'s sockets.
    pub fn steer_to(&mut self, epoch: u64) {
        for group in self.groups_mut() {
            if let Err(error) = group.steer_to(epoch) {
                tracing::error!(%error, address = %group.address(), "cannot steer connections");
            }
        }
    }

    /// Connections waiting in the accept queues of `epoch`'s sockets.
    pub fn queued(&self, epoch: u64) -> u32 {
        self.groups().map(|group| group.queued(epoch)).sum()
    }

    /// Closes `epoch`'s sockets (never the target's). Connections still queued
    /// there are lost unless the kernel migrates them (`tcp_migrate_req`), so
    /// they are counted in the log.
    pub fn release(&mut self, epoch: u64) {
        for group in self.groups_mut() {
            if group.target() == epoch {
                continue; // clients wait there for the next child
            }
            let queued = group.queued(epoch);
            if queued > 0 {
                tracing::warn!(
                    epoch,
                    queued,
                    address = %group.address(),
                    "closing a socket with connections nobody accepted \
                     (set net.ipv4.tcp_migrate_req=1 to have the kernel move them)"
                );
            }
            if let Err(error) = group.remove(epoch) {
                tracing::warn!(%error, epoch, "cannot take a socket out of its group");
            }
        }
    }

    /// Accepts every connection waiting on `epoch`'s TCP sockets, with the
    /// listener it arrived on — for a child that died before accepting them.
    /// Call it only once no child holds those sockets (they are made
    /// non-blocking) and nothing is steered to them any more.
    pub fn take_queued(&self, epoch: u64) -> Vec<(std::net::TcpStream, Target)> {
        let targets = self.rescue_targets();
        let mut taken = Vec::new();
        for named in &self.sockets {
            let Socket::Steered(group) = &named.socket else {
                continue;
            };
            let (Some(fd), Some(target)) = (
                group.fd(epoch),
                targets.iter().find(|t| t.name == named.name),
            ) else {
                continue;
            };
            let socket = socket2::SockRef::from(&fd);
            if let Err(error) = socket.set_nonblocking(true) {
                tracing::warn!(%error, epoch, "cannot take the connections left queued");
                continue;
            }
            // At most a full queue: nothing more arrives once steered away.
            for _ in 0..BACKLOG {
                let Ok((stream, _)) = socket.accept() else {
                    break;
                };
                taken.push((std::net::TcpStream::from(stream), target.clone()));
            }
        }
        taken
    }

    /// Every epoch that still has sockets.
    pub fn epochs(&self) -> Vec<u64> {
        let mut epochs: Vec<u64> = self
            .groups()
            .flat_map(|group| group.epochs().collect::<Vec<_>>())
            .collect();
        epochs.sort_unstable();
        epochs.dedup();
        epochs
    }

    pub fn status(&self) -> Vec<SocketStatus> {
        self.sockets
            .iter()
            .enumerate()
            .map(|(i, named)| SocketStatus {
                name: named.name.clone(),
                address: named.address.clone(),
                fd: handover_mechanism::protocol::LISTEN_FDS_START + i as i32,
            })
            .collect()
    }

    /// The socket new connections go to, for each name: what the fd store
    /// keeps.
    pub fn current(&self) -> Vec<(String, OwnedFd)> {
        self.sockets
            .iter()
            .filter_map(|named| {
                let fd = match &named.socket {
                    Socket::Shared(fd) => fd.try_clone().ok()?,
                    Socket::Steered(group) => {
                        group.fd(group.target())?.try_clone_to_owned().ok()?
                    }
                };
                Some((named.name.clone(), fd))
            })
            .collect()
    }

    /// Every socket with its fd number, for a self-upgrade: the new image
    /// takes them back with [`Listeners::restore`]. Clears their
    /// close-on-exec flag.
    pub fn save(&self) -> io::Result<Vec<SavedSocket>> {
        use std::os::fd::AsRawFd;
        let keep = |fd: std::os::fd::BorrowedFd<'_>| -> io::Result<i32> {
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            Ok(fd.as_raw_fd())
        };
        self.sockets
            .iter()
            .map(|named| {
                Ok(match &named.socket {
                    Socket::Shared(fd) => SavedSocket {
                        name: named.name.clone(),
                        shared: Some(keep(fd.as_fd())?),
                        members: Vec::new(),
                        target: 0,
                    },
                    Socket::Steered(group) => {
                        let members = group
                            .members()
                            .map(|(epoch, fd)| Ok((epoch, keep(fd)?)))
                            .collect::<io::Result<Vec<_>>>()?;
                        SavedSocket {
                            name: named.name.clone(),
                            shared: None,
                            members,
                            target: group.target(),
                        }
                    }
                })
            })
            .collect()
    }

    /// The sockets a previous image [`Listeners::save`]d, for `listen`:
    /// (name, shared fd, or group members as (epoch, fd) in the kernel's
    /// order, and the epoch steered to).
    pub fn restore(listen: &[Listen], saved: Vec<RestoredSocket>) -> io::Result<Listeners> {
        let mut sockets = Vec::new();
        let mut probe = None;
        for (name, shared, members, target) in saved {
            let listen = listen.iter().find(|l| l.name == name).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("no --listen {name:?} any more"),
                )
            })?;
            let socket = match shared {
                Some(fd) => Socket::Shared(fd),
                None => {
                    let first = members.first().ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, "a group without members")
                    })?;
                    let address = socket2::SockRef::from(&first.1)
                        .local_addr()?
                        .as_socket()
                        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not inet"))?;
                    let group = Group::restore(address, BACKLOG, members, target);
                    Socket::Steered(group)
                }
            };
            let address = match &socket {
                Socket::Steered(group) => group.address().to_string(),
                Socket::Shared(fd) => socket2::SockRef::from(fd)
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .map_or_else(|| listen.address.to_string(), |a| a.to_string()),
            };
            let named = Named {
                name: listen.name.clone(),
                address,
                protocol: listen.protocol,
                socket,
            };
            if probe.is_none() {
                probe = named.probe_target();
            }
            sockets.push(named);
        }
        Ok(Listeners { sockets, probe })
    }

    /// Each name's sockets by inode, for the state file (see
    /// [`crate::recovery`]).
    pub fn inodes(&self) -> Vec<crate::recovery::Sockets> {
        use crate::ownership::inode_of;
        self.sockets
            .iter()
            .map(|named| {
                let (current, others) = match &named.socket {
                    Socket::Shared(fd) => (inode_of(fd.as_fd()), Vec::new()),
                    Socket::Steered(group) => {
                        let target = group.target();
                        let current = group.fd(target).and_then(inode_of);
                        let others = group
                            .epochs()
                            .filter(|epoch| *epoch != target)
                            .filter_map(|epoch| group.fd(epoch).and_then(inode_of))
                            .collect();
                        (current, others)
                    }
                };
                crate::recovery::Sockets {
                    name: named.name.clone(),
                    current: current.unwrap_or_default(),
                    others,
                }
            })
            .collect()
    }

    /// The TCP listeners, as the keep-alive rescue needs them.
    pub fn rescue_targets(&self) -> Vec<Target> {
        self.sockets
            .iter()
            .filter_map(|named| {
                let bound = match &named.socket {
                    Socket::Steered(group) => group.address(),
                    Socket::Shared(fd) => {
                        let sock = socket2::SockRef::from(fd);
                        if sock.r#type().ok()? != socket2::Type::STREAM {
                            return None;
                        }
                        sock.local_addr().ok()?.as_socket()?
                    }
                };
                Some(Target {
                    name: named.name.clone(),
                    bound,
                    connect: loopback_if_wildcard(bound),
                    protocol: named.protocol,
                })
            })
            .collect()
    }

    fn groups(&self) -> impl Iterator<Item = &Group> {
        self.sockets.iter().filter_map(|named| match &named.socket {
            Socket::Steered(group) => Some(group),
            Socket::Shared(_) => None,
        })
    }

    fn groups_mut(&mut self) -> impl Iterator<Item = &mut Group> {
        self.sockets
            .iter_mut()
            .filter_map(|named| match &mut named.socket {
                Socket::Steered(group) => Some(group),
                Socket::Shared(_) => None,
            })
    }

    /// Sends connections from exactly `source` to `epoch`'s socket of the
    /// probed group (`None`: ends that route). Asked by a readiness probe,
    /// carried out by the event loop, which alone changes the groups.
    pub fn route_probe(&mut self, source: Option<SocketAddr>, epoch: u64) -> io::Result<()> {
        let probed = self.probe.as_ref().map(|p| p.address);
        for named in &mut self.sockets {
            if let Socket::Steered(group) = &mut named.socket {
                if Some(loopback_if_wildcard(group.address())) == probed {
                    return group.route_probe(source, epoch);
                }
            }
        }
        Ok(())
    }
}

/// Takes `fd`, handed in for `listen`'s name, if it is what `listen` asks
/// for; `None` (closed, logged) if `listen` now names another address.
fn adopt_one(listen: &Listen, fd: OwnedFd, epoch: u64) -> Result<Option<Named>, Error> {
    let address = handover_mechanism::sockets::inspect(&fd, listen.kind).map_err(|problem| {
        Error::HandedIn {
            name: listen.name.clone(),
            problem,
        }
    })?;
    if !address.serves(&listen.address) {
        tracing::warn!(name = listen.name, handed_in = %address, wanted = %listen.address,
            "the socket handed in is bound elsewhere; binding anew");
        return Ok(None);
    }
    let named = |socket| Named {
        name: listen.name.clone(),
        address: address.to_string(),
        protocol: listen.protocol,
        socket,
    };
    tracing::info!(name = listen.name, %address, "took the socket handed in (fd store)");
    if listen.kind == SocketKind::TcpListener {
        let copy = fd.try_clone().map_err(|e| Error::HandedIn {
            name: listen.name.clone(),
            problem: format!("cannot be duplicated: {e}"),
        })?;
        match Group::adopt(copy, BACKLOG, epoch) {
            Ok(group) => return Ok(Some(named(Socket::Steered(group)))),
            Err(error) => tracing::warn!(%error, name = listen.name,
                "cannot steer the socket handed in; sharing it"),
        }
    }
    Ok(Some(named(Socket::Shared(fd))))
}

fn bind_one(listen: &Listen, epoch: u64) -> io::Result<Named> {
    let named = |address: String, socket| Named {
        name: listen.name.clone(),
        address,
        protocol: listen.protocol,
        socket,
    };
    if let (SocketKind::TcpListener, Address::Inet(address)) = (listen.kind, &listen.address) {
        match Group::bind(*address, BACKLOG, epoch) {
            Ok(group) => {
                let bound = group.address().to_string();
                return Ok(named(bound, Socket::Steered(group)));
            }
            Err(error) if error.kind() == io::ErrorKind::AddrInUse => return Err(error),
            Err(error) => tracing::warn!(
                %error,
                name = listen.name,
                "cannot steer connections between generations; sharing one socket \
                 (the old child is stopped while it may still be accepting)"
            ),
        }
    }
    let fd = handover_mechanism::sockets::bind(listen.kind, &listen.address, BACKLOG)?;
    let bound = socket2::SockRef::from(&fd)
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map_or_else(|| listen.address.to_string(), |a| a.to_string());
    Ok(named(bound, Socket::Shared(fd)))
}

impl Named {
    fn probe_target(&self) -> Option<ProbeTarget> {
        let (address, steered) = match &self.socket {
            Socket::Steered(group) => (group.address(), true),
            Socket::Shared(fd) => {
                let sock = socket2::SockRef::from(fd);
                if sock.r#type().ok()? != socket2::Type::STREAM {
                    return None;
                }
                (sock.local_addr().ok()?.as_socket()?, false)
            }
        };
        Some(ProbeTarget {
            address: loopback_if_wildcard(address),
            steered,
        })
    }
}

/// Where the http and tcp readiness probes connect, and whether their
/// connection must be routed to the new child's own socket.
#[derive(Clone)]
pub struct ProbeTarget {
    /// The address probed.
    pub address: SocketAddr,
    steered: bool,
}

/// A readiness probe's request to the event loop: route connections from
/// `source` to `epoch`'s socket (`None`: end the route), then say so.
pub struct RouteRequest {
    pub source: Option<SocketAddr>,
    pub epoch: u64,
    pub done: Option<oneshot::Sender<io::Result<()>>>,
}

/// Routes one probe's connection; the route ends when this is dropped.
pub struct ProbeRoute {
    routes: mpsc::UnboundedSender<RouteRequest>,
    epoch: u64,
}

impl Drop for ProbeRoute {
    fn drop(&mut self) {
        let _ = self.routes.send(RouteRequest {
            source: None,
            epoch: self.epoch,
            done: None,
        });
    }
}

impl ProbeTarget {
    /// Connects to the probed address so that the connection reaches the socket
    /// of `epoch` (with a shared socket: whichever child accepts first); the
    /// route is set by the event loop, through `routes`.
    pub async fn connect(
        &self,
        epoch: u64,
        routes: &mpsc::UnboundedSender<RouteRequest>,
    ) -> io::Result<(TcpStream, Option<ProbeRoute>)> {
        let socket = if self.address.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        let route = if self.steered {
            // A port of our own, on the probed (local) address: no other
            // connection can come from this source while we hold it.
            socket.bind(SocketAddr::new(self.address.ip(), 0))?;
            let source = socket.local_addr()?;
            let (done, routed) = oneshot::channel();
            let request = RouteRequest {
                source: Some(source),
                epoch,
                done: Some(done),
            };
            let gone = || io::Error::other("the supervisor is not routing probes");
            routes.send(request).map_err(|_| gone())?;
            routed.await.map_err(|_| gone())??;
            Some(ProbeRoute {
                routes: routes.clone(),
                epoch,
            })
        } else {
            None
        };
        Ok((socket.connect(self.address).await?, route))
    }
}

/// The loopback address of the same family when bound to the wildcard.
fn loopback_if_wildcard(bound: SocketAddr) -> SocketAddr {
    use std::net::{Ipv4Addr, Ipv6Addr};
    match bound {
        SocketAddr::V4(v4) if v4.ip().is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), bound.port())
        }
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), bound.port())
        }
        _ => bound,
    }
}
