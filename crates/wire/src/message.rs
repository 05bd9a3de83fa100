//! The messages, their limits, and the one decoder.
//!
//! Every message is one JSON object with a `"type"`; fields a version does not
//! know are ignored, so a later version may add fields freely, and a new type
//! is answered with an [`Message::Error`] of code `unknown_type`. Every field
//! has a bound, checked by [`Message::decode`] before anything acts on it.
//!
//! | type | sent by | fds attached | fields |
//! |---|---|---|---|
//! | `hello` | the connecting side, first | none | `min_version`, `max_version`, `capabilities`, `pid` |
//! | `welcome` | the listening side, to `hello` | none | `version`, `capabilities`, `pid` |
//! | `error` | either, at any time | none | `code`, `message` |
//! | `sockets` | the side giving sockets | one per name, in order | `batch`, `names`, `last` |
//! | `ack` | the receiving side, per batch or state | none | `batch` |
//! | `state` | the side giving state | a sealed memfd unless `inline` | `len`, `crc32`, `inline` (base64) |
//! | `ready` | the new process | none | |
//! | `stepped_down` | the old process, after its commit | none | |
//! | `command` | the connecting side, after `welcome` | none | `command`: `takeover`, `status`, `upgrade`, `stop` |
//! | `progress` | the answering side, during a command | none | `message` |
//! | `done` | the answering side, a command's end | none | `ok`, `message` |
//! | `status` | the answering side, to `status` | none | `status` (an object) |
//! | `room` | the new process, when it takes connections | none | `room` |
//! | `connections` | the old process, migrating | one per connection, in order | `batch`, `connections` (`listener`, `unread`, `state`, base64) |
//! | `taken` | the new process, per `connections` | none | `batch`, `taken` (one bool per connection), `room` |

use serde::{Deserialize, Serialize};

use crate::Error;

/// Longest record: 64 KiB.
pub const MAX_FRAME: usize = 64 * 1024;
/// Most descriptors in one record: Linux accepts 253 (`SCM_MAX_FD`); one
/// fewer leaves room for a credentials message beside them.
pub const MAX_FDS: usize = 252;
/// Longest socket name, as in `LISTEN_FDNAMES` (sd_listen_fds_with_names).
pub const MAX_NAME: usize = 255;
/// Longest error text.
pub const MAX_TEXT: usize = 4096;
/// Longest metrics text (the answer to `metrics`), well inside a record.
pub const MAX_METRICS: usize = 60 * 1024;
/// Most capabilities offered, and the longest one.
pub const MAX_CAPABILITIES: usize = 64;
/// Longest capability name.
pub const MAX_CAPABILITY: usize = 64;
/// Largest state sent inline (decoded); larger state goes in a memfd.
pub const MAX_INLINE_STATE: usize = 32 * 1024;
/// Most bytes a migrating connection carries that were read but not yet
/// processed (decoded). A connection with more stays where it is.
pub const MAX_UNREAD: usize = 32 * 1024;
/// Most bytes of application state a migrating connection carries (decoded).
pub const MAX_CONNECTION_STATE: usize = 4 * 1024;

/// One message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Message {
    /// The connecting side's first message: which versions it speaks, what it
    /// can do, who it is.
    Hello {
        /// Oldest version it speaks.
        min_version: u32,
        /// Newest version it speaks.
        max_version: u32,
        /// What it can do beyond the version's core (names, e.g. `state`).
        #[serde(default)]
        capabilities: Vec<String>,
        /// Its pid (informative: the peer check uses `SO_PEERCRED`).
        pid: u32,
    },
    /// The answer to `hello`: the version both speak, the capabilities both
    /// have.
    Welcome {
        /// The version of the rest of the conversation.
        version: u32,
        /// The capabilities both sides have.
        #[serde(default)]
        capabilities: Vec<String>,
        /// The answering process's pid.
        pid: u32,
        /// The answering process's generation (0 for a first process), so that
        /// a process taking over can number itself.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        generation: Option<u64>,
    },
    /// A refusal or a failure, with a code a program can match and a text a
    /// person can read.
    Error {
        /// `version`, `busy`, `malformed`, `unknown_type`, … (see
        /// [`Error::code`]).
        code: String,
        /// What happened.
        message: String,
    },
    /// A batch of named sockets; the descriptors are attached, one per name,
    /// in order.
    Sockets {
        /// 0, 1, 2, … in order.
        batch: u32,
        /// The sockets' names.
        names: Vec<String>,
        /// Whether this is the last batch.
        last: bool,
    },
    /// A batch (or the state) received whole.
    Ack {
        /// The batch acknowledged (0 for the state).
        batch: u32,
    },
    /// The application state: `inline` (base64) when small, else a sealed
    /// memfd attached.
    State {
        /// Its length in bytes.
        len: u64,
        /// Its CRC-32 (IEEE).
        crc32: u32,
        /// The bytes themselves, base64, when at most [`MAX_INLINE_STATE`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inline: Option<String>,
    },
    /// The new process is ready to serve.
    Ready,
    /// The old process has committed and stopped accepting.
    SteppedDown,
    /// What the connecting side wants, after `welcome`.
    Command {
        /// `takeover`, `status`, `upgrade` or `stop`.
        command: String,
    },
    /// A step of a command under way.
    Progress {
        /// What happened.
        message: String,
    },
    /// A command's end.
    Done {
        /// Whether it succeeded.
        ok: bool,
        /// What happened, with the reason on failure.
        message: String,
    },
    /// The answer to `status`: the process's state, as an object.
    Status {
        /// Its fields depend on the kind of process (library or supervisor).
        status: serde_json::Map<String, serde_json::Value>,
    },
    /// The answer to `metrics`: counters in the Prometheus text format.
    Metrics {
        /// The exposition, as a scraper reads it.
        text: String,
    },
    /// The new process takes connections: at most `room` more descriptors.
    Room {
        /// Descriptors it can still install.
        room: u32,
    },
    /// A batch of live connections; one descriptor per connection attached,
    /// in order. The sender still owns them until `taken`.
    Connections {
        /// 0, 1, 2, … in order.
        batch: u32,
        /// What travels with each connection.
        connections: Vec<Connection>,
    },
    /// Which connections of a batch the new process took: it owns those now,
    /// and the old process keeps the others.
    Taken {
        /// The batch answered.
        batch: u32,
        /// One per connection of the batch, in order.
        taken: Vec<bool>,
        /// Descriptors it can still install.
        room: u32,
    },
}

/// What travels with one migrating connection besides its descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// The name of the listener it was accepted on.
    pub listener: String,
    /// Bytes read from it but not yet processed, base64 (at most
    /// [`MAX_UNREAD`] decoded).
    #[serde(default)]
    pub unread: String,
    /// The application's state for it, base64 (at most
    /// [`MAX_CONNECTION_STATE`] decoded).
    #[serde(default)]
    pub state: String,
}

/// The types this version knows, for telling "unknown" from "malformed".
const KNOWN: [&str; 16] = [
    "hello",
    "welcome",
    "error",
    "sockets",
    "ack",
    "state",
    "ready",
    "stepped_down",
    "command",
    "progress",
    "done",
    "status",
    "metrics",
    "room",
    "connections",
    "taken",
];

impl Message {
    /// An error reply for `error`.
    pub fn error(error: &Error) -> Message {
        let mut message = error.to_string();
        truncate(&mut message, MAX_TEXT);
        Message::Error {
            code: error.code().to_owned(),
            message,
        }
    }

    /// How many descriptors travel with this message.
    pub fn fds(&self) -> usize {
        match self {
            Message::Sockets { names, .. } => names.len(),
            Message::Connections { connections, .. } => connections.len(),
            Message::State { inline: None, .. } => 1,
            _ => 0,
        }
    }

    /// The message as sent: one JSON object.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a message always serializes")
    }

    /// Parses one record and checks every bound.
    pub fn decode(bytes: &[u8]) -> Result<Message, Error> {
        if bytes.len() > MAX_FRAME {
            return Err(Error::Oversized);
        }
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| Error::Malformed(e.to_string()))?;
        let kind = value
            .get("type")
            .and_then(|t| t.as_str())
            .ok_or_else(|| Error::Malformed("no \"type\"".into()))?;
        if !KNOWN.contains(&kind) {
            let mut kind = kind.to_owned();
            truncate(&mut kind, MAX_NAME);
            return Err(Error::UnknownType(kind));
        }
        let message: Message =
            serde_json::from_value(value).map_err(|e| Error::Malformed(e.to_string()))?;
        message.check()?;
        Ok(message)
    }

    fn check(&self) -> Result<(), Error> {
        let bad = |what: String| Err(Error::Malformed(what));
        match self {
            Message::Hello {
                min_version,
                max_version,
                capabilities,
                ..
            } => {
                if min_version > max_version {
                    return bad(format!("versions {min_version}..{max_version}"));
                }
                check_capabilities(capabilities)
            }
            Message::Welcome { capabilities, .. } => check_capabilities(capabilities),
            Message::Error { code, message } => {
                if code.len() > MAX_CAPABILITY || message.len() > MAX_TEXT {
                    return bad("an error code or text too long".into());
                }
                Ok(())
            }
            Message::Sockets { names, .. } => {
                if names.is_empty() || names.len() > MAX_FDS {
                    return bad(format!("{} names in a batch (1 to {MAX_FDS})", names.len()));
                }
                match names.iter().find(|n| !valid_name(n)) {
                    Some(name) => bad(format!("socket name {:?}", short(name))),
                    None => Ok(()),
                }
            }
            Message::State { len, inline, .. } => match inline {
                Some(text) if text.len() > MAX_INLINE_STATE.div_ceil(3) * 4 => {
                    bad("inline state too long".into())
                }
                Some(_) if *len > MAX_INLINE_STATE as u64 => bad("inline state too long".into()),
                _ => Ok(()),
            },
            Message::Command { command } if command.len() > MAX_CAPABILITY => {
                bad("a command name too long".into())
            }
            Message::Progress { message } | Message::Done { message, .. }
                if message.len() > MAX_TEXT =>
            {
                bad("a text too long".into())
            }
            Message::Metrics { text } if text.len() > MAX_METRICS => {
                bad("a metrics text too long".into())
            }
            Message::Connections { connections, .. } => {
                if connections.is_empty() || connections.len() > MAX_FDS {
                    return bad(format!(
                        "{} connections in a batch (1 to {MAX_FDS})",
                        connections.len()
                    ));
                }
                connections.iter().try_for_each(Connection::check)
            }
            Message::Taken { taken, .. } if taken.is_empty() || taken.len() > MAX_FDS => bad(
                format!("{} answers in a batch (1 to {MAX_FDS})", taken.len()),
            ),
            Message::Ack { .. }
            | Message::Room { .. }
            | Message::Taken { .. }
            | Message::Ready
            | Message::SteppedDown
            | Message::Command { .. }
            | Message::Progress { .. }
            | Message::Done { .. }
            | Message::Status { .. }
            | Message::Metrics { .. } => Ok(()),
        }
    }
}

pub use handover_mechanism::protocol::valid_name;

impl Connection {
    fn check(&self) -> Result<(), Error> {
        if !valid_name(&self.listener) {
            return Err(Error::Malformed(format!(
                "listener name {:?}",
                short(&self.listener)
            )));
        }
        if self.unread.len() > MAX_UNREAD.div_ceil(3) * 4
            || self.state.len() > MAX_CONNECTION_STATE.div_ceil(3) * 4
        {
            return Err(Error::Malformed(
                "a connection's unread bytes or state too long".into(),
            ));
        }
        Ok(())
    }
}

fn check_capabilities(capabilities: &[String]) -> Result<(), Error> {
    if capabilities.len() > MAX_CAPABILITIES
        || capabilities
            .iter()
            .any(|c| c.is_empty() || c.len() > MAX_CAPABILITY)
    {
        return Err(Error::Malformed("capabilities out of bounds".into()));
    }
    Ok(())
}

fn short(text: &str) -> String {
    let mut text = text.to_owned();
    truncate(&mut text, 64);
    text
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_message_survives_a_round_trip() {
        let messages = [
            Message::Hello {
                min_version: 1,
                max_version: 2,
                capabilities: vec!["state".into()],
                pid: 7,
            },
            Message::Welcome {
                version: 1,
                capabilities: vec![],
                pid: 8,
                generation: Some(3),
            },
            Message::Error {
                code: "busy".into(),
                message: "a takeover is under way".into(),
            },
            Message::Sockets {
                batch: 3,
                names: vec!["web".into(), "dns".into()],
                last: true,
            },
            Message::Ack { batch: 3 },
            Message::State {
                len: 5,
                crc32: 1,
                inline: Some("aGVsbG8=".into()),
            },
            Message::Ready,
            Message::SteppedDown,
            Message::Command {
                command: "status".into(),
            },
            Message::Progress {
                message: "new pid 9 started".into(),
            },
            Message::Done {
                ok: false,
                message: "rolled back".into(),
            },
            Message::Status {
                status: serde_json::from_str(r#"{"pid":9,"phase":"serving"}"#).unwrap(),
            },
            Message::Metrics {
                text: "# TYPE x counter\nx_total 1\n# EOF\n".into(),
            },
            Message::Room { room: 1000 },
            Message::Connections {
                batch: 3,
                connections: vec![Connection {
                    listener: "echo".into(),
                    unread: "aGVsbG8=".into(),
                    state: String::new(),
                }],
            },
            Message::Taken {
                batch: 3,
                taken: vec![true, false],
                room: 998,
            },
        ];
        for message in messages {
            assert_eq!(Message::decode(&message.encode()).unwrap(), message);
        }
    }

    #[test]
    fn unknown_fields_are_ignored_and_unknown_types_named() {
        let later = br#"{"type":"ack","batch":2,"window":64}"#;
        assert_eq!(Message::decode(later).unwrap(), Message::Ack { batch: 2 });
        let newer = br#"{"type":"migrate","fd":1}"#;
        assert!(matches!(Message::decode(newer), Err(Error::UnknownType(t)) if t == "migrate"));
    }

    #[test]
    fn every_bound_is_checked() {
        let cases: [&[u8]; 11] = [
            b"",
            b"\x00\xff garbage",
            br#"{"batch":1}"#,
            br#"{"type":"ack"}"#,
            br#"{"type":"hello","min_version":3,"max_version":1,"pid":1}"#,
            br#"{"type":"sockets","batch":0,"names":[],"last":true}"#,
            br#"{"type":"sockets","batch":0,"names":["a:b"],"last":true}"#,
            br#"{"type":"state","len":99999999,"crc32":0,"inline":"AA=="}"#,
            br#"{"type":"connections","batch":0,"connections":[]}"#,
            br#"{"type":"connections","batch":0,"connections":[{"listener":"a b"}]}"#,
            br#"{"type":"taken","batch":0,"taken":[],"room":1}"#,
        ];
        for case in cases {
            assert!(
                matches!(Message::decode(case), Err(Error::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
        let names: Vec<String> = (0..=MAX_FDS).map(|i| format!("s{i}")).collect();
        let too_many = Message::Sockets {
            batch: 0,
            names,
            last: true,
        };
        assert!(Message::decode(&too_many.encode()).is_err());
        assert!(matches!(
            Message::decode(&vec![b' '; MAX_FRAME + 1]),
            Err(Error::Oversized)
        ));
    }

    #[test]
    fn texts_are_bounded() {
        let long = Message::Done {
            ok: true,
            message: "x".repeat(MAX_TEXT + 1),
        };
        assert!(matches!(
            Message::decode(&long.encode()),
            Err(Error::Malformed(_))
        ));
        let metrics = Message::Metrics {
            text: "x".repeat(MAX_METRICS + 1),
        };
        assert!(matches!(
            Message::decode(&metrics.encode()),
            Err(Error::Malformed(_))
        ));
        // Message::error cuts its text to fit.
        let error = Message::error(&Error::Unexpected("y".repeat(10_000)));
        assert!(Message::decode(&error.encode()).is_ok());
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn decoding_near_miss_json_never_panics(
            kind in "(hello|welcome|error|sockets|ack|state|ready|stepped_down|command|progress|done|status|x)",
            field in "[a-z_]{1,12}",
            value in prop_oneof![Just("1".to_owned()), Just("\"s\"".to_owned()), Just("[]".to_owned()), Just("null".to_owned()), Just("-1".to_owned())],
        ) {
            let text = format!(r#"{{"type":"{kind}","{field}":{value}}}"#);
            let _ = Message::decode(text.as_bytes());
        }
    }
}
