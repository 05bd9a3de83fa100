//! Who may speak to a process over its socket: checked with `SO_PEERCRED`
//! before anything is sent — the same uid, root, or uids and gids the
//! application allows.

use rustix::net::UCred;

use crate::channel::Channel;
use crate::Error;

/// The peers a socket accepts besides its own uid and root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed {
    /// Further uids.
    pub uids: Vec<u32>,
    /// Further gids (the peer's primary gid).
    pub gids: Vec<u32>,
}

impl Allowed {
    /// Whether `peer` may speak to this process.
    pub fn admits(&self, peer: &UCred) -> bool {
        let (uid, gid) = (peer.uid.as_raw(), peer.gid.as_raw());
        uid == 0
            || uid == rustix::process::geteuid().as_raw()
            || self.uids.contains(&uid)
            || self.gids.contains(&gid)
    }
}

/// Checks the peer of `channel`; refuses it (with an error reply) if it is not
/// admitted.
pub fn check(channel: &Channel, allowed: &Allowed) -> Result<UCred, Error> {
    let peer = channel.peer()?;
    check_quietly(&peer, allowed).inspect_err(|error| channel.refuse(error))?;
    Ok(peer)
}

/// Checks `peer` without answering it: the caller decides how to refuse.
pub fn check_quietly(peer: &UCred, allowed: &Allowed) -> Result<(), Error> {
    if allowed.admits(peer) {
        return Ok(());
    }
    Err(Error::PeerNotAllowed {
        pid: peer.pid.as_raw_nonzero().get() as u32,
        uid: peer.uid.as_raw(),
        gid: peer.gid.as_raw(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_uid_and_root_are_admitted_others_only_if_allowed() {
        let (a, _b) = Channel::pair().unwrap();
        assert!(check(&a, &Allowed::default()).is_ok());
        let mut stranger = a.peer().unwrap();
        stranger.uid = rustix::process::Uid::from_raw(54321);
        stranger.gid = rustix::process::Gid::from_raw(54321);
        let me = rustix::process::geteuid().as_raw();
        if me != 54321 {
            assert!(!Allowed::default().admits(&stranger));
        }
        let by_uid = Allowed {
            uids: vec![54321],
            ..Allowed::default()
        };
        let by_gid = Allowed {
            gids: vec![54321],
            ..Allowed::default()
        };
        assert!(by_uid.admits(&stranger) && by_gid.admits(&stranger));
    }
}
