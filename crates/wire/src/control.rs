//! The control commands — `handover status`, `upgrade`, `stop` — over the wire
//! protocol, served alike by a supervisor's control socket and by a library
//! process's takeover socket; and `takeover` itself is one of them.
//!
//! ```text
//!  client                                  server
//!   │ hello ───────────────────────────────▶ peer check, version
//!   │ ◀───────────────────────────── welcome
//!   │ command {"status"|"metrics"|"upgrade"|"stop"|"reload"|"takeover"|"upgrade-supervisor"} ─▶
//!   │ ◀── progress … ◀── done {ok, message}  (or status {…}, or error)
//! ```

use std::path::Path;

use crate::channel::Channel;
use crate::hello::{self, Agreement, Offer};
use crate::message::Message;
use crate::peer::{self, Allowed};
use crate::Error;

/// What a client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Report the process's state.
    Status,
    /// Upgrade: start the new version, commit when ready, roll back if not.
    Upgrade,
    /// Stop gracefully.
    Stop,
    /// Hand the sockets and the state over to the client (library processes).
    Takeover,
    /// Re-execute the supervisor's own binary in place (supervisors only):
    /// same pid, children and sockets kept.
    UpgradeSupervisor,
    /// Apply a new configuration in place: a library process runs its reload
    /// hook; a supervisor sends its child the reload signal.
    Reload,
    /// The process's counters, in the Prometheus text format.
    Metrics,
}

impl Request {
    /// The command's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Upgrade => "upgrade",
            Request::Stop => "stop",
            Request::Takeover => "takeover",
            Request::UpgradeSupervisor => "upgrade-supervisor",
            Request::Reload => "reload",
            Request::Metrics => "metrics",
        }
    }

    fn from_name(name: &str) -> Option<Request> {
        [
            Request::Status,
            Request::Upgrade,
            Request::Stop,
            Request::Takeover,
            Request::UpgradeSupervisor,
            Request::Reload,
            Request::Metrics,
        ]
        .into_iter()
        .find(|r| r.name() == name)
    }
}

/// What the server answers: progress, then one final reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A step of a request under way.
    Progress(String),
    /// The request ended.
    Done {
        /// Whether it succeeded.
        ok: bool,
        /// What happened.
        message: String,
    },
    /// The answer to `status`.
    Status(serde_json::Map<String, serde_json::Value>),
    /// The answer to `metrics`: the Prometheus text format.
    Metrics(String),
}

impl Reply {
    /// Whether this is the last reply to a request.
    pub fn is_final(&self) -> bool {
        !matches!(self, Reply::Progress(_))
    }

    fn message(&self) -> Message {
        match self {
            Reply::Progress(message) => Message::Progress {
                message: message.clone(),
            },
            Reply::Done { ok, message } => Message::Done {
                ok: *ok,
                message: message.clone(),
            },
            Reply::Status(status) => Message::Status {
                status: status.clone(),
            },
            Reply::Metrics(text) => Message::Metrics { text: text.clone() },
        }
    }
}

/// The client side, up to the command: connects to `path`, checks the owner,
/// agrees on a version and sends `request`; the caller reads the replies (or,
/// for a takeover, the sockets).
///
/// The owner must be this uid or root — except that root may send a command
/// (not take over: that would make it run on another user's sockets and
/// state) to anyone's process.
pub fn connect(path: &Path, request: Request, offer: Offer) -> Result<(Channel, Agreement), Error> {
    let channel = Channel::connect(path)?;
    channel.set_timeout(Some(std::time::Duration::from_secs(5)))?;
    if request == Request::Takeover || !rustix::process::geteuid().is_root() {
        peer::check(&channel, &Allowed::default())?;
    }
    let agreement = hello::offer(&channel, offer)?;
    channel.send(
        &Message::Command {
            command: request.name().to_owned(),
        },
        &[],
    )?;
    Ok((channel, agreement))
}

/// The client side of `status`, `upgrade` or `stop`: calls `on_reply` for every
/// reply and returns the last. Waits as long as the server takes (an upgrade
/// lasts up to its ready timeout), but at most `patience` between replies.
pub fn request(
    path: &Path,
    request: Request,
    patience: std::time::Duration,
    mut on_reply: impl FnMut(&Reply),
) -> Result<Reply, Error> {
    let (channel, _) = connect(path, request, Offer::this_version(&[]))?;
    channel.set_timeout(Some(patience))?;
    loop {
        let reply = match channel.receive()?.message {
            Message::Progress { message } => Reply::Progress(message),
            Message::Done { ok, message } => Reply::Done { ok, message },
            Message::Status { status } => Reply::Status(status),
            Message::Metrics { text } => Reply::Metrics(text),
            other => {
                return Err(Error::Unexpected(format!(
                    "{other:?} in reply to a command"
                )))
            }
        };
        on_reply(&reply);
        if reply.is_final() {
            return Ok(reply);
        }
    }
}

/// The server side, up to the command: checks the peer (a stranger is refused
/// before anything is sent, and learns why), agrees on a version, and reads
/// the command. A refused or malformed request has been answered already.
pub fn accept(
    channel: &Channel,
    allowed: &Allowed,
    offer: Offer,
) -> Result<(Request, Agreement), Error> {
    let peer = channel.peer()?;
    if let Err(error) = peer::check_quietly(&peer, allowed) {
        refuse_after_reading(channel, &error);
        return Err(error);
    }
    let agreement = hello::answer(channel, offer)?;
    let outcome = match channel.receive()?.message {
        Message::Command { command } => Request::from_name(&command)
            .ok_or_else(|| Error::Unexpected(format!("unknown command {command:?}"))),
        other => Err(Error::Unexpected(format!("{other:?} instead of a command"))),
    };
    match outcome {
        Ok(request) => Ok((request, agreement)),
        Err(error) => {
            channel.refuse(&error);
            Err(error)
        }
    }
}

/// Sends one reply.
pub fn reply(channel: &Channel, reply: &Reply) -> Result<(), Error> {
    channel.send(&reply.message(), &[])
}

/// Refuses a peer whose first message may still be on its way: it is read
/// (and dropped) first, within a second, so that the refusal is what the peer
/// reads next, not a broken pipe.
pub fn refuse_after_reading(channel: &Channel, error: &Error) {
    let _ = channel.set_timeout(Some(std::time::Duration::from_secs(1)));
    let _ = channel.receive_any();
    channel.refuse(error);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::Listener;

    #[test]
    fn a_command_gets_its_progress_and_its_end() {
        let dir = std::env::temp_dir().join(format!("wire-control-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let listener = Listener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let channel = listener.accept().unwrap();
            let (request, _) =
                accept(&channel, &Allowed::default(), Offer::this_version(&[])).unwrap();
            assert_eq!(request, Request::Upgrade);
            reply(&channel, &Reply::Progress("new pid 2 started".into())).unwrap();
            let done = Reply::Done {
                ok: false,
                message: "rolled back".into(),
            };
            reply(&channel, &done).unwrap();
        });
        let mut seen = Vec::new();
        let last = request(
            &path,
            Request::Upgrade,
            std::time::Duration::from_secs(5),
            |r| seen.push(r.clone()),
        )
        .unwrap();
        server.join().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(
            last,
            Reply::Done {
                ok: false,
                message: "rolled back".into()
            }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
