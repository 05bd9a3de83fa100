//! The first exchange: each side says which versions it speaks and what it can
//! do; the listening side picks the newest version both speak and the
//! capabilities both have, or refuses with code `version`. So version N and
//! N+1 interoperate both ways, as long as their ranges meet.

use crate::channel::Channel;
use crate::message::Message;
use crate::{Error, MIN_VERSION, VERSION};

/// What one side offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Oldest version spoken.
    pub min_version: u32,
    /// Newest version spoken.
    pub max_version: u32,
    /// Capabilities.
    pub capabilities: Vec<String>,
    /// This process's generation, told to the peer in `welcome`.
    pub generation: Option<u64>,
}

impl Offer {
    /// This build's versions, with `capabilities`.
    pub fn this_version(capabilities: &[&str]) -> Offer {
        Offer {
            min_version: MIN_VERSION,
            max_version: VERSION,
            capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
            generation: None,
        }
    }
}

/// What both sides agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    /// The version of the conversation.
    pub version: u32,
    /// The capabilities both have.
    pub capabilities: Vec<String>,
    /// The other side's pid, as it said.
    pub peer_pid: u32,
    /// The other side's generation, if it said (in `welcome`).
    pub peer_generation: Option<u64>,
}

impl Agreement {
    /// Whether both sides have `capability`.
    pub fn has(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }
}

/// The connecting side: sends `hello`, returns what the other side chose.
pub fn offer(channel: &Channel, offer: Offer) -> Result<Agreement, Error> {
    send_hello(channel, &offer)?;
    receive_welcome(channel, &offer)
}

/// The first half of [`offer`]: sends `hello` and does not wait, for a side
/// that reads `welcome` later (a successor says `hello` on its inherited
/// channel before `READY=1`, and its parent answers after it).
pub fn send_hello(channel: &Channel, offer: &Offer) -> Result<(), Error> {
    let hello = Message::Hello {
        min_version: offer.min_version,
        max_version: offer.max_version,
        capabilities: offer.capabilities.clone(),
        pid: std::process::id(),
    };
    channel.send(&hello, &[]).map_err(|error| {
        // A peer that refused us at once and hung up left its reason queued.
        match channel.receive() {
            Err(refused @ Error::Refused { .. }) => refused,
            _ => error,
        }
    })
}

/// The second half of [`offer`]: the `welcome` to the `hello` sent with `offer`.
pub fn receive_welcome(channel: &Channel, offer: &Offer) -> Result<Agreement, Error> {
    match channel.receive()?.message {
        Message::Welcome {
            version,
            capabilities,
            pid,
            generation,
        } if (offer.min_version..=offer.max_version).contains(&version) => Ok(Agreement {
            version,
            capabilities: capabilities
                .into_iter()
                .filter(|c| offer.capabilities.contains(c))
                .collect(),
            peer_pid: pid,
            peer_generation: generation,
        }),
        Message::Welcome { version, .. } => Err(Error::Unexpected(format!(
            "the peer chose version {version}, outside {}..={}",
            offer.min_version, offer.max_version
        ))),
        other => Err(Error::Unexpected(format!("{other:?} instead of welcome"))),
    }
}

/// The listening side: expects `hello`, answers `welcome` or refuses (and
/// tells the peer why).
pub fn answer(channel: &Channel, offer: Offer) -> Result<Agreement, Error> {
    let outcome = receive_hello(channel, &offer);
    if let Err(error) = &outcome {
        channel.refuse(error);
    }
    let agreement = outcome?;
    channel.send(
        &Message::Welcome {
            version: agreement.version,
            capabilities: agreement.capabilities.clone(),
            pid: std::process::id(),
            generation: offer.generation,
        },
        &[],
    )?;
    Ok(agreement)
}

fn receive_hello(channel: &Channel, ours: &Offer) -> Result<Agreement, Error> {
    let Message::Hello {
        min_version,
        max_version,
        capabilities,
        pid,
    } = channel.receive()?.message
    else {
        return Err(Error::Unexpected("the first message must be hello".into()));
    };
    let version = max_version.min(ours.max_version);
    if version < min_version.max(ours.min_version) {
        return Err(Error::Version(format!(
            "the peer speaks {min_version}..={max_version}, this process {}..={}",
            ours.min_version, ours.max_version
        )));
    }
    Ok(Agreement {
        version,
        capabilities: capabilities
            .into_iter()
            .filter(|c| ours.capabilities.contains(c))
            .collect(),
        peer_pid: pid,
        peer_generation: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(min: u32, max: u32, capabilities: &[&str]) -> Offer {
        Offer {
            min_version: min,
            max_version: max,
            ..Offer::this_version(capabilities)
        }
    }

    fn meet(client: Offer, server: Offer) -> (Result<Agreement, Error>, Result<Agreement, Error>) {
        let (a, b) = Channel::pair().unwrap();
        let server = std::thread::spawn(move || answer(&b, server));
        let client = offer(&a, client);
        (client, server.join().unwrap())
    }

    #[test]
    fn n_and_n_plus_one_agree_on_n_both_ways() {
        for (client, server) in [
            (range(1, 2, &[]), range(1, 1, &[])),
            (range(1, 1, &[]), range(1, 2, &[])),
        ] {
            let (client, server) = meet(client, server);
            assert_eq!(client.unwrap().version, 1);
            assert_eq!(server.unwrap().version, 1);
        }
        let (client, _) = meet(range(1, 2, &[]), range(1, 2, &[]));
        assert_eq!(client.unwrap().version, 2);
    }

    #[test]
    fn only_shared_capabilities_are_agreed() {
        let (client, server) = meet(range(1, 1, &["state", "migrate"]), range(1, 1, &["state"]));
        assert_eq!(client.unwrap().capabilities, ["state"]);
        assert!(server.unwrap().has("state"));
    }

    #[test]
    fn ranges_that_do_not_meet_are_refused_with_the_reason() {
        let (client, server) = meet(range(3, 4, &[]), range(1, 2, &[]));
        assert!(
            matches!(client, Err(Error::Refused { code, message }) if code == "version" && message.contains("3..=4"))
        );
        assert!(server.is_err());
    }
}
