//! Application state: bytes the old process hands to the new one (a cache,
//! counters, a session table), opaque to handover.
//!
//! Up to [`MAX_INLINE_STATE`] bytes travel inline (base64 in the message);
//! more go in a memfd that the sender seals against every change
//! (`F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`) before it is
//! sent, so what the receiver reads cannot change under it. Either way the
//! message carries the length and a CRC-32; state that does not match them,
//! or a memfd without the seals, is [`Error::CorruptState`], never silent
//! garbage. The receiver bounds the size it accepts.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;

use base64::Engine;
use rustix::fs::{MemfdFlags, SealFlags};

use crate::channel::Channel;
use crate::message::{Message, MAX_INLINE_STATE};
use crate::Error;

/// The default largest state a receiver accepts: 64 MiB.
pub const DEFAULT_LIMIT: u64 = 64 * 1024 * 1024;

const SEALS: SealFlags = SealFlags::WRITE
    .union(SealFlags::SHRINK)
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// A sealed memfd holding `bytes`: for handing state to a process by
/// inheritance (re-exec) as well as over a channel.
pub fn sealed(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(
        "handover-state",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    let fd = OwnedFd::from(file);
    rustix::fs::fcntl_add_seals(&fd, SEALS)?;
    Ok(fd)
}

/// Reads state of `len` bytes with checksum `crc32` from a sealed memfd.
pub fn read_sealed(fd: OwnedFd, len: u64, crc32: u32, limit: u64) -> Result<Vec<u8>, Error> {
    if len > limit {
        return Err(Error::CorruptState(format!(
            "{len} bytes is more than the limit of {limit}"
        )));
    }
    let seals = rustix::fs::fcntl_get_seals(&fd).map_err(std::io::Error::from)?;
    if !seals.contains(SEALS) {
        return Err(Error::CorruptState(format!(
            "the memfd is not sealed against changes ({seals:?})"
        )));
    }
    let size = rustix::fs::fstat(&fd)
        .map_err(std::io::Error::from)?
        .st_size as u64;
    if size != len {
        return Err(Error::CorruptState(format!(
            "{size} bytes where {len} were announced"
        )));
    }
    let mut bytes = vec![0u8; len as usize];
    std::fs::File::from(fd).read_exact_at(&mut bytes, 0)?;
    verify(&bytes, len, crc32)?;
    Ok(bytes)
}

fn verify(bytes: &[u8], len: u64, crc32: u32) -> Result<(), Error> {
    if bytes.len() as u64 != len {
        return Err(Error::CorruptState(format!(
            "{} bytes where {len} were announced",
            bytes.len()
        )));
    }
    let actual = crc32fast::hash(bytes);
    if actual != crc32 {
        return Err(Error::CorruptState(format!(
            "checksum {actual:08x} where {crc32:08x} was announced"
        )));
    }
    Ok(())
}

/// Sends `bytes` as the state; returns once the receiver acknowledged it.
pub fn send(channel: &Channel, bytes: &[u8]) -> Result<(), Error> {
    let (len, crc32) = (bytes.len() as u64, crc32fast::hash(bytes));
    if bytes.len() <= MAX_INLINE_STATE {
        let inline = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
        channel.send(&Message::State { len, crc32, inline }, &[])?;
    } else {
        let fd = sealed(bytes)?;
        let message = Message::State {
            len,
            crc32,
            inline: None,
        };
        channel.send(&message, &[fd.as_fd()])?;
    }
    match channel.receive()?.message {
        Message::Ack { batch: 0 } => Ok(()),
        other => Err(Error::Unexpected(format!("{other:?} instead of ack"))),
    }
}

/// Receives the state, at most `limit` bytes; acknowledges it, or tells the
/// sender what was wrong with it.
pub fn receive(channel: &Channel, limit: u64) -> Result<Vec<u8>, Error> {
    let outcome = receive_one(channel, limit);
    match &outcome {
        Ok(_) => channel.send(&Message::Ack { batch: 0 }, &[])?,
        Err(Error::Refused { .. } | Error::Closed) => {}
        Err(error) => channel.refuse(error),
    }
    outcome
}

fn receive_one(channel: &Channel, limit: u64) -> Result<Vec<u8>, Error> {
    let mut received = channel.receive()?;
    let Message::State { len, crc32, inline } = received.message else {
        return Err(Error::Unexpected(format!(
            "{:?} instead of state",
            received.message
        )));
    };
    match inline {
        Some(text) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| Error::CorruptState(e.to_string()))?;
            verify(&bytes, len, crc32)?;
            Ok(bytes)
        }
        None => read_sealed(received.fds.remove(0), len, crc32, limit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hand_over(bytes: Vec<u8>, limit: u64) -> (Result<(), Error>, Result<Vec<u8>, Error>) {
        let (a, b) = Channel::pair().unwrap();
        let receiver = std::thread::spawn(move || receive(&b, limit));
        (send(&a, &bytes), receiver.join().unwrap())
    }

    #[test]
    fn small_state_goes_inline_and_large_in_a_sealed_memfd() {
        for len in [0, 10, MAX_INLINE_STATE, MAX_INLINE_STATE + 1, 8 << 20] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let (sent, received) = hand_over(bytes.clone(), DEFAULT_LIMIT);
            sent.unwrap();
            assert_eq!(received.unwrap(), bytes, "{len} bytes");
        }
    }

    #[test]
    fn state_over_the_limit_is_refused_and_the_sender_learns_it() {
        let (sent, received) = hand_over(vec![1; 100_000], 50_000);
        assert!(matches!(received, Err(Error::CorruptState(_))));
        assert!(matches!(sent, Err(Error::Refused { code, .. }) if code == "corrupt_state"));
    }

    #[test]
    fn a_wrong_checksum_an_unsealed_memfd_and_a_short_one_are_corrupt() {
        let (a, b) = Channel::pair().unwrap();
        let wrong = Message::State {
            len: 3,
            crc32: 0,
            inline: Some("YWJj".into()),
        };
        a.send(&wrong, &[]).unwrap();
        assert!(matches!(
            receive(&b, DEFAULT_LIMIT),
            Err(Error::CorruptState(_))
        ));
        let _ = a.receive();

        let unsealed = rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC).unwrap();
        rustix::io::write(&unsealed, &[0u8; 40_000]).unwrap();
        let message = Message::State {
            len: 40_000,
            crc32: crc32fast::hash(&[0u8; 40_000]),
            inline: None,
        };
        a.send(&message, &[unsealed.as_fd()]).unwrap();
        assert!(
            matches!(receive(&b, DEFAULT_LIMIT), Err(Error::CorruptState(m)) if m.contains("sealed"))
        );
        let _ = a.receive();

        let short = sealed(&[0u8; 40_000]).unwrap();
        let message = Message::State {
            len: 50_000,
            crc32: 0,
            inline: None,
        };
        a.send(&message, &[short.as_fd()]).unwrap();
        assert!(
            matches!(receive(&b, DEFAULT_LIMIT), Err(Error::CorruptState(m)) if m.contains("announced"))
        );
    }
}
