//! Application state across a hand-over: what the application registers with
//! [`Handover::set_state`](crate::Handover::set_state) is asked for at the
//! moment of the hand-over, and the successor finds it in
//! [`Handover::inherited_state`](crate::Handover::inherited_state) before it
//! is ready, so it can initialise from it.
//!
//! In a re-exec upgrade the bytes go in a sealed memfd passed among the fds
//! (name `handover.state`), with `HANDOVER_STATE=LEN:CRC32`; in a takeover
//! they travel over the takeover socket (inline or in a sealed memfd, see
//! [`handover_wire::state`]). Either way a length or checksum that does not
//! match, a memfd that is not sealed, or state larger than
//! [`Builder::state_limit`](crate::Builder::state_limit) is
//! [`Error::State`], never silent garbage.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::{Error, Result};

/// What the application hands over: called once per hand-over.
pub(crate) type Provider = Arc<dyn Fn() -> Vec<u8> + Send + Sync>;

/// The `HANDOVER_STATE` value for `bytes`.
pub(crate) fn describe(bytes: &[u8]) -> String {
    format!("{}:{:08x}", bytes.len(), crc32fast::hash(bytes))
}

/// Reads the state a re-exec parent passed: the memfd and its description.
pub(crate) fn read_inherited(
    fd: OwnedFd,
    description: Option<&str>,
    limit: u64,
) -> Result<Vec<u8>> {
    let description =
        description.ok_or_else(|| Error::State("a state fd without HANDOVER_STATE".into()))?;
    let parsed = description
        .split_once(':')
        .and_then(|(len, crc)| Some((len.parse().ok()?, u32::from_str_radix(crc, 16).ok()?)));
    let Some((len, crc32)) = parsed else {
        return Err(Error::State(format!(
            "HANDOVER_STATE={description:?} is not LEN:CRC32"
        )));
    };
    handover_wire::state::read_sealed(fd, len, crc32, limit)
        .map_err(|e| Error::State(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_passed_by_inheritance_is_checked() {
        let bytes = b"boot history".to_vec();
        let fd = handover_wire::state::sealed(&bytes).unwrap();
        assert_eq!(
            read_inherited(fd, Some(&describe(&bytes)), 1 << 20).unwrap(),
            bytes
        );
        let fd = handover_wire::state::sealed(&bytes).unwrap();
        assert!(
            read_inherited(fd, Some("12:00000000"), 1 << 20).is_err(),
            "checksum"
        );
        let fd = handover_wire::state::sealed(&bytes).unwrap();
        assert!(read_inherited(fd, Some("nonsense"), 1 << 20).is_err());
        let fd = handover_wire::state::sealed(&bytes).unwrap();
        assert!(
            read_inherited(fd, Some(&describe(&bytes)), 4).is_err(),
            "limit"
        );
    }
}
