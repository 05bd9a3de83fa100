//! One TCP `--listen` name as a steered SO_REUSEPORT group: a listening socket
//! per *epoch* (the sockets an upgrade's new child gets), and a program that
//! sends every new connection to the current epoch's socket.
//!
//! Why not one socket shared by old and new, as the library does? Because then
//! the only way to make the old child stop accepting is to tell it to shut down,
//! and some servers (uvicorn) close at shutdown the connections they accepted but
//! had not read yet: their clients see a reset. With a socket per epoch the
//! supervisor first steers new connections to the new child, waits until the old
//! child has accepted what was already queued for it, and only then sends the
//! stop signal. See [`handover_mechanism::sockets::reuseport`] for the kernel side.
//!
//! ```text
//!  upgrade starts    add(B): [A, B], route → A       (B gets nothing yet)
//!  probing B         route → A, except the probe's own source → B
//!  B ready           steer_to(B): route → B; A's queue empties; then the old child is stopped
//!  old child exits   remove(A): [B], route → B
//! ```
//!
//! The supervisor alone adds and removes members, so [`Group`] mirrors the
//! kernel's array exactly (a member that leaves is replaced by the last one,
//! [`Vec::swap_remove`]). A child that shuts its listener down itself takes it out
//! too; [`Group`] notices before every change of route.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use handover_mechanism::sockets::reuseport::{self, Route};

/// The listening sockets of one name, one per epoch, in the kernel's order.
pub struct Group {
    address: SocketAddr,
    backlog: i32,
    members: Vec<Member>,
    /// The epoch that gets new connections.
    target: u64,
    /// A probe's source address and the epoch its connection must reach.
    probe: Option<(SocketAddr, u64)>,
}

struct Member {
    epoch: u64,
    fd: OwnedFd,
}

impl Group {
    /// Binds the first socket (for `epoch`) at `address`; the error of a plain
    /// bind if the address is taken.
    pub fn bind(address: SocketAddr, backlog: i32, epoch: u64) -> io::Result<Group> {
        let (fd, address) = reuseport::bind_first(address, backlog)?;
        Ok(Group {
            address,
            backlog,
            members: vec![Member { epoch, fd }],
            target: epoch,
            probe: None,
        })
    }

    /// A group around `fd`, a member of a group bound before (handed back by
    /// the service manager's fd store): it is the only member this process
    /// knows, so it gets every connection. Fails if `fd` has no `SO_REUSEPORT`
    /// (it cannot have siblings) or no address.
    pub fn adopt(fd: OwnedFd, backlog: i32, epoch: u64) -> io::Result<Group> {
        let socket = socket2::SockRef::from(&fd);
        if !socket.reuse_port()? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the socket has no SO_REUSEPORT",
            ));
        }
        let address = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an inet socket"))?;
        let mut group = Group {
            address,
            backlog,
            members: vec![Member { epoch, fd }],
            target: epoch,
            probe: None,
        };
        group.apply()?;
        Ok(group)
    }

    /// The members in the kernel's order, with their epochs (a self-upgrade
    /// hands them to the new image, which [`Group::restore`]s the mirror).
    pub fn members(&self) -> impl Iterator<Item = (u64, BorrowedFd<'_>)> + '_ {
        self.members.iter().map(|m| (m.epoch, m.fd.as_fd()))
    }

    /// The group as a previous image of this process left it: `members` in
    /// the kernel's order (nothing changed it meanwhile), `target` steered to.
    pub fn restore(
        address: SocketAddr,
        backlog: i32,
        members: Vec<(u64, OwnedFd)>,
        target: u64,
    ) -> Group {
        Group {
            address,
            backlog,
            members: members
                .into_iter()
                .map(|(epoch, fd)| Member { epoch, fd })
                .collect(),
            target,
            probe: None,
        }
    }

    /// The address, port 0 resolved.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The epoch that gets new connections.
    pub fn target(&self) -> u64 {
        self.target
    }

    /// Adds a socket for `epoch`; it gets no connection until steered to.
    pub fn add(&mut self, epoch: u64) -> io::Result<()> {
        let fd = reuseport::bind_member(self.address, self.backlog)?;
        self.members.push(Member { epoch, fd });
        Ok(())
    }

    /// The socket of `epoch`.
    pub fn fd(&self, epoch: u64) -> Option<BorrowedFd<'_>> {
        self.members
            .iter()
            .find(|m| m.epoch == epoch)
            .map(|m| m.fd.as_fd())
    }

    /// Sends every new connection to `epoch` (and ends any probe route).
    pub fn steer_to(&mut self, epoch: u64) -> io::Result<()> {
        self.target = epoch;
        self.probe = None;
        self.apply()
    }

    /// Sends connections from exactly `source` to `epoch` (`None`: ends it).
    pub fn route_probe(&mut self, source: Option<SocketAddr>, epoch: u64) -> io::Result<()> {
        self.probe = source.map(|source| (source, epoch));
        self.apply()
    }

    /// Connections waiting in the accept queue of `epoch`'s socket.
    pub fn queued(&self, epoch: u64) -> u32 {
        self.fd(epoch)
            .and_then(|fd| reuseport::accept_queue_len(fd).ok())
            .unwrap_or(0)
    }

    /// Takes `epoch`'s socket out of the group and closes it. Never the target.
    pub fn remove(&mut self, epoch: u64) -> io::Result<()> {
        if epoch == self.target {
            return Ok(());
        }
        self.forget_departed();
        if let Some(index) = self.members.iter().position(|m| m.epoch == epoch) {
            let left = reuseport::leave(self.members[index].fd.as_fd());
            self.members.swap_remove(index);
            left?;
        }
        if self.probe.is_some_and(|(_, to)| to == epoch) {
            self.probe = None;
        }
        self.apply()
    }

    /// Epochs with a socket in the group.
    pub fn epochs(&self) -> impl Iterator<Item = u64> + '_ {
        self.members.iter().map(|m| m.epoch)
    }

    /// Installs the program for the current target and probe route.
    fn apply(&mut self) -> io::Result<()> {
        self.forget_departed();
        let index = |epoch: u64| self.members.iter().position(|m| m.epoch == epoch);
        // A target that is gone (its child shut it down) cannot be reached
        // anyway; any member will do until the supervisor steers again.
        let to = index(self.target).unwrap_or(0) as u32;
        let except = self
            .probe
            .and_then(|(source, epoch)| Some((source, index(epoch)? as u32)));
        let Some(any) = self.members.first() else {
            return Ok(());
        };
        reuseport::steer(any.fd.as_fd(), self.address, &Route { to, except })
    }

    /// Drops members that left without us (a child shut its listener down): the
    /// kernel has already moved the last member into their slot.
    fn forget_departed(&mut self) {
        let mut index = 0;
        while index < self.members.len() {
            if reuseport::is_listening(self.members[index].fd.as_fd()) {
                index += 1;
            } else {
                let gone = self.members.swap_remove(index);
                tracing::warn!(
                    epoch = gone.epoch,
                    address = %self.address,
                    "a child shut its listening socket down; it left the group"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The epoch whose socket a new connection reaches.
    fn lands(group: &Group) -> u64 {
        let before: Vec<(u64, u32)> = group.epochs().map(|e| (e, group.queued(e))).collect();
        let client = std::net::TcpStream::connect(group.address()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            if let Some((epoch, _)) = before.iter().find(|(e, n)| group.queued(*e) > *n) {
                std::mem::forget(client);
                return *epoch;
            }
            assert!(std::time::Instant::now() < deadline, "nobody got it");
            std::thread::yield_now();
        }
    }

    #[test]
    fn an_upgrade_then_the_old_epoch_leaves() {
        let mut group = Group::bind("127.0.0.1:0".parse().unwrap(), 64, 1).unwrap();
        group.add(2).unwrap();
        assert_eq!(lands(&group), 1, "the new socket waits to be steered to");
        group.steer_to(2).unwrap();
        assert_eq!(lands(&group), 2);
        group.remove(2).unwrap(); // the target is never removed
        assert_eq!(lands(&group), 2);
        group.remove(1).unwrap();
        assert_eq!(group.epochs().collect::<Vec<_>>(), [2]);
        assert_eq!(lands(&group), 2);
    }

    #[test]
    fn the_mirror_follows_the_kernel_through_many_changes() {
        let mut group = Group::bind("127.0.0.1:0".parse().unwrap(), 64, 1).unwrap();
        for epoch in 2..=5 {
            group.add(epoch).unwrap();
        }
        group.steer_to(4).unwrap();
        group.remove(1).unwrap(); // [5, 2, 3, 4]
        assert_eq!(lands(&group), 4);
        group.remove(3).unwrap(); // [5, 2, 4]
        assert_eq!(lands(&group), 4);
        group.steer_to(2).unwrap();
        assert_eq!(lands(&group), 2);
        // A child shuts epoch 5's socket down itself: [4, 2] in the kernel.
        reuseport::leave(group.fd(5).unwrap()).unwrap();
        group.steer_to(4).unwrap();
        assert_eq!(lands(&group), 4);
        assert_eq!(group.epochs().collect::<Vec<_>>(), [4, 2]);
    }

    #[test]
    fn a_probe_reaches_the_new_epoch_and_nobody_else_does() {
        let mut group = Group::bind("127.0.0.1:0".parse().unwrap(), 64, 1).unwrap();
        group.add(2).unwrap();
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let source = socket.local_addr().unwrap().as_socket().unwrap();
        group.route_probe(Some(source), 2).unwrap();
        assert_eq!(lands(&group), 1);
        socket.connect(&group.address().into()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while group.queued(2) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the probe went astray"
            );
            std::thread::yield_now();
        }
        group.route_probe(None, 2).unwrap();
        assert_eq!(lands(&group), 1);
    }
}
