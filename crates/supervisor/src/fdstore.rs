//! systemd's file descriptor store: the listening sockets outlive a crash of
//! every process of the unit.
//!
//! Under systemd (`NOTIFY_SOCKET` set, and `$FDSTORE` — systemd ≥ 254 sets
//! it to `FileDescriptorStoreMax=` — above zero), the supervisor puts the
//! socket new connections go to, for each `--listen` name, in the store
//! (`FDSTORE=1`, `FDNAME=NAME@SEQ`). If the supervisor and its children all
//! die, `Restart=` starts it again with those sockets in `LISTEN_FDS` /
//! `LISTEN_FDNAMES`; it takes them instead of binding, so the address was
//! never closed and clients that connected meanwhile wait in the accept queue
//! until the new child is ready.
//!
//! Why `NAME@SEQ` and not `NAME`: steering gives each upgrade's child its own
//! socket, so the one to keep changes at every commit. The new one is stored
//! under a fresh name *before* the old name is removed (`FDSTOREREMOVE=1`
//! removes every fd of a name), so there is no moment with nothing stored. On
//! a restart the highest `SEQ` of a name wins; older ones (a crash between the
//! two messages) are closed and removed. A bare `NAME` (a `.socket` unit's
//! `FileDescriptorName=`) is taken too, as the oldest.

use std::collections::HashMap;
use std::os::fd::{BorrowedFd, OwnedFd};

use handover_mechanism::notify::Upstream;
use handover_mechanism::protocol::env::InheritedFd;

/// [`FdStore::save`]'s record.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Saved {
    enabled: bool,
    seq: u64,
    stored: HashMap<String, String>,
}

/// The sockets handed in at start, by `--listen` name, and what is stored.
pub struct FdStore {
    upstream: Upstream,
    /// Whether to store at all.
    enabled: bool,
    /// The next `SEQ`.
    seq: u64,
    /// `--listen` name → the `FDNAME` stored for it now.
    stored: HashMap<String, String>,
    /// Handed in, not yet taken: `--listen` name → (seq, fd, fdname).
    handed_in: HashMap<String, Vec<(u64, OwnedFd, String)>>,
}

impl FdStore {
    /// Reads what was handed in (`sockets`, from `LISTEN_FDS`) and whether
    /// the service manager keeps a store (`fdstore_max`: `$FDSTORE`).
    pub fn new(upstream: Upstream, fdstore_max: Option<u64>, sockets: Vec<InheritedFd>) -> Self {
        let mut handed_in: HashMap<String, Vec<(u64, OwnedFd, String)>> = HashMap::new();
        let mut seq = 1;
        for socket in sockets {
            let (name, at) = parse(&socket.name);
            seq = seq.max(at + 1);
            handed_in.entry(name.to_owned()).or_default().push((
                at,
                socket.fd,
                socket.name.clone(),
            ));
        }
        FdStore {
            enabled: upstream.is_some() && fdstore_max.unwrap_or(0) > 0,
            upstream,
            seq,
            stored: HashMap::new(),
            handed_in,
        }
    }

    /// Whether the service manager keeps the sockets.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The socket handed in for `name` (the newest), if any; older ones of
    /// the name are closed and taken out of the store.
    pub fn take(&mut self, name: &str) -> Option<OwnedFd> {
        let mut candidates = self.handed_in.remove(name)?;
        candidates.sort_by_key(|(seq, _, _)| *seq);
        let (_, fd, fdname) = candidates.pop()?;
        for (_, _, stale) in candidates {
            tracing::info!(name, fdname = stale, "an older stored socket; closed");
            self.forget(&stale);
        }
        self.stored.insert(name.to_owned(), fdname);
        Some(fd)
    }

    /// Closes what was handed in for no `--listen` name, and takes it out of
    /// the store. Returns the names.
    pub fn close_unclaimed(&mut self) -> Vec<String> {
        let unclaimed: Vec<String> = self
            .handed_in
            .drain()
            .flat_map(|(_, fds)| fds.into_iter().map(|(_, _, fdname)| fdname))
            .collect();
        for fdname in &unclaimed {
            tracing::warn!(
                fdname,
                "a socket was handed in for no --listen name; closed"
            );
            self.forget(fdname);
        }
        unclaimed
    }

    /// Stores `fd` as the socket of `name` now, then removes the one stored
    /// before.
    pub fn store(&mut self, name: &str, fd: BorrowedFd<'_>) {
        if !self.enabled {
            return;
        }
        let fdname = format!("{name}@{}", self.seq);
        self.seq += 1;
        self.upstream.store(&fdname, fd);
        if let Some(previous) = self.stored.insert(name.to_owned(), fdname) {
            self.upstream.forget(&previous);
        }
    }

    /// What a self-upgrade carries over: whether it stores, the next `SEQ`,
    /// and what is stored under which name.
    pub fn save(&self) -> Saved {
        Saved {
            enabled: self.enabled,
            seq: self.seq,
            stored: self.stored.clone(),
        }
    }

    /// The store as a previous image of this process left it.
    pub fn restore(upstream: Upstream, saved: Saved) -> FdStore {
        FdStore {
            upstream,
            enabled: saved.enabled,
            seq: saved.seq,
            stored: saved.stored,
            handed_in: HashMap::new(),
        }
    }

    fn forget(&self, fdname: &str) {
        if self.enabled {
            self.upstream.forget(fdname);
        }
    }
}

/// `NAME@SEQ` → (NAME, SEQ); a bare `NAME` → (NAME, 0).
fn parse(fdname: &str) -> (&str, u64) {
    match fdname.rsplit_once('@') {
        Some((name, seq)) => match seq.parse() {
            Ok(seq) => (name, seq),
            Err(_) => (fdname, 0),
        },
        None => (fdname, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(name: &str) -> InheritedFd {
        InheritedFd {
            name: name.to_owned(),
            fd: std::net::TcpListener::bind("127.0.0.1:0").unwrap().into(),
            number: 3,
        }
    }

    #[test]
    fn names_carry_a_sequence_number() {
        assert_eq!(parse("web@7"), ("web", 7));
        assert_eq!(parse("web"), ("web", 0));
        assert_eq!(parse("a@b"), ("a@b", 0));
    }

    #[test]
    fn the_newest_socket_of_a_name_is_taken_and_numbering_goes_on() {
        let address = |fd: &OwnedFd| socket2::SockRef::from(fd).local_addr().unwrap().as_socket();
        let newest = socket("web@7");
        let newest_address = address(&newest.fd);
        let sockets = vec![socket("web@3"), newest, socket("dns@2"), socket("stray@1")];
        let mut store = FdStore::new(Upstream(None), None, sockets);
        assert!(!store.enabled(), "no service manager");
        let web = store.take("web").unwrap();
        assert_eq!(address(&web), newest_address, "web@7, not web@3");
        assert!(store.take("web").is_none(), "taken once");
        assert!(store.take("dns").is_some());
        assert_eq!(store.close_unclaimed(), vec!["stray@1".to_owned()]);
        assert_eq!(store.seq, 8, "the next name is web@8, never a reused one");
    }
}
