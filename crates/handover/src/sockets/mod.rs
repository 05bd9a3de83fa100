//! Named sockets: the application asks by name, and gets the inherited socket of
//! that name if there is one, or a freshly bound one.
//!
//! Names, not addresses, are the key, so two sockets on one address (TCP and UDP
//! on port 53, say) are two entries, and a new version may move a name to another
//! address:
//!
//! | inherited socket named N | asked for N at A | result |
//! |---|---|---|
//! | none | A | bind A |
//! | from the parent, bound at A | A | the very same socket (same accept queue) |
//! | from the parent, bound elsewhere | A | bind A; the old one stays unclaimed |
//! | from systemd, bound elsewhere | A | systemd's socket (its unit is the authority), with a warning |
//! | of another type (UDP for a TCP listener, a file, …) | A | error |
//!
//! Port 0 in A matches any port, so `127.0.0.1:0` keeps the port it got first.
//! Sockets inherited but not claimed by [`crate::Handover::ready`] are closed, and
//! the log says which.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use handover_mechanism::protocol::env::InheritedFd;
use handover_mechanism::sockets as bind;
pub use handover_mechanism::sockets::{Address, SocketKind};

use crate::{Error, Result};

/// Where inherited sockets came from; decides what an address change means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Parent,
    ServiceManager,
}

struct Claimed {
    name: String,
    fd: OwnedFd,
}

/// The process's named sockets: inherited ones not yet claimed, and claimed ones,
/// whose copies are kept here to hand to a successor. Lookups are by name, so
/// claiming n sockets costs O(n) (a thousand sockets are handed over in a few ms).
pub(crate) struct Registry {
    /// Inherited sockets in fd order; `None` once claimed.
    unclaimed: Vec<Option<InheritedFd>>,
    /// Name → indices into `unclaimed` (systemd may give one name to several fds).
    inherited_by_name: HashMap<String, Vec<usize>>,
    source: Source,
    claimed: Vec<Claimed>,
    claimed_names: HashSet<String>,
    backlog: i32,
    sealed: bool,
}

impl Registry {
    pub(crate) fn new(inherited: Vec<InheritedFd>, source: Source, backlog: i32) -> Self {
        let mut inherited_by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, socket) in inherited.iter().enumerate() {
            inherited_by_name
                .entry(socket.name.clone())
                .or_default()
                .push(index);
        }
        Registry {
            unclaimed: inherited.into_iter().map(Some).collect(),
            inherited_by_name,
            source,
            claimed: Vec::new(),
            claimed_names: HashSet::new(),
            backlog,
            sealed: false,
        }
    }

    /// Returns the socket named `name` (a new descriptor the caller owns).
    pub(crate) fn claim(
        &mut self,
        name: &str,
        kind: SocketKind,
        wanted: &Address,
    ) -> Result<OwnedFd> {
        if self.sealed {
            return Err(Error::ClaimAfterReady(name.to_owned()));
        }
        if self.claimed_names.contains(name) {
            return Err(Error::DuplicateName(name.to_owned()));
        }
        let fd = match self.take_inherited(name, kind, wanted)? {
            Some(fd) => fd,
            None => bind::bind(kind, wanted, self.backlog).map_err(|source| Error::Bind {
                name: name.to_owned(),
                address: wanted.to_string(),
                source,
            })?,
        };
        let copy = fd
            .try_clone()
            .map_err(|e| Error::io(format!("duplicating socket {name:?}"), e))?;
        self.claimed_names.insert(name.to_owned());
        self.claimed.push(Claimed {
            name: name.to_owned(),
            fd,
        });
        Ok(copy)
    }

    fn take_inherited(
        &mut self,
        name: &str,
        kind: SocketKind,
        wanted: &Address,
    ) -> Result<Option<OwnedFd>> {
        let mut candidates = Vec::new();
        let indices = self
            .inherited_by_name
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for &index in indices {
            let Some(inherited) = &self.unclaimed[index] else {
                continue;
            };
            let address =
                bind::inspect(&inherited.fd, kind).map_err(|problem| Error::InheritedSocket {
                    name: name.to_owned(),
                    fd: inherited.number,
                    problem,
                })?;
            candidates.push((index, address));
        }
        let chosen = match candidates
            .iter()
            .find(|(_, address)| address.serves(wanted))
        {
            Some((index, _)) => *index,
            None => match (candidates.first(), self.source) {
                (None, _) => return Ok(None),
                (Some((_, have)), Source::Parent) => {
                    tracing::warn!(name, from = %have, to = %wanted, "socket address changed; binding anew");
                    return Ok(None);
                }
                (Some((index, have)), Source::ServiceManager) => {
                    tracing::warn!(name, inherited = %have, configured = %wanted,
                        "using the service manager's socket, whose address differs from the configured one");
                    *index
                }
            },
        };
        let inherited = self.unclaimed[chosen]
            .take()
            .expect("a candidate is unclaimed");
        tracing::debug!(name, fd = inherited.number, "claimed inherited socket");
        Ok(Some(inherited.fd))
    }

    /// Closes inherited sockets nobody claimed, and refuses later claims.
    /// Returns the names closed.
    pub(crate) fn seal(&mut self) -> Vec<String> {
        self.sealed = true;
        let closed: Vec<String> = self.unclaimed.drain(..).flatten().map(|s| s.name).collect();
        self.inherited_by_name.clear();
        for name in &closed {
            tracing::info!(name, "inherited socket was not claimed; closed it");
        }
        closed
    }

    /// The sockets to hand to a successor, in a stable order.
    pub(crate) fn handoff(&self) -> Vec<(&str, BorrowedFd<'_>)> {
        self.claimed
            .iter()
            .map(|c| (c.name.as_str(), c.fd.as_fd()))
            .collect()
    }

    /// The name of the claimed socket that `fd` is a copy of (the same open
    /// socket: same device and inode).
    pub(crate) fn name_of(&self, fd: BorrowedFd<'_>) -> Option<String> {
        let key = |fd: BorrowedFd<'_>| {
            rustix::fs::fstat(fd)
                .ok()
                .map(|stat| (stat.st_dev, stat.st_ino))
        };
        let wanted = key(fd)?;
        self.claimed
            .iter()
            .find(|c| key(c.fd.as_fd()) == Some(wanted))
            .map(|c| c.name.clone())
    }

    /// Drops this process's copies (after a successor took over).
    pub(crate) fn release(&mut self) {
        self.claimed.clear();
    }
}
