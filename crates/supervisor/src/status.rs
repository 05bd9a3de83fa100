//! The supervisor's state as `handover status` shows it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Everything `handover status` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The supervisor's pid.
    pub supervisor_pid: u32,
    /// The command it runs.
    pub command: Vec<String>,
    /// The sockets it holds.
    pub sockets: Vec<SocketStatus>,
    /// The child serving now.
    pub current: Option<ChildStatus>,
    /// A child being started (upgrade or respawn), not ready yet.
    pub starting: Option<ChildStatus>,
    /// Old children finishing their connections.
    pub draining: Vec<ChildStatus>,
    /// The last upgrades, newest last.
    pub upgrades: Vec<Record>,
    /// The last unexpected exits of the current child, newest last.
    pub crashes: Vec<Record>,
    /// Whether the supervisor is stopping.
    pub stopping: bool,
    /// Where the current slot is: starting, serving, upgrading, backoff,
    /// stopping.
    #[serde(default)]
    pub slot: String,
    /// The last self-upgrades (`handover upgrade --supervisor`), newest last.
    #[serde(default)]
    pub self_upgrades: Vec<Record>,
    /// Which image of the supervisor answers: a number that changes with each
    /// exec of a self-upgrade and with nothing else (the image's start, in ns
    /// since the epoch). `handover upgrade --supervisor` tells by it that a new
    /// image answers; the history above is bounded, so its length cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<u64>,
}

/// This image's number for [`Status::image`], fixed at the first call.
pub(crate) fn this_image() -> u64 {
    static IMAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *IMAGE.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    })
}

/// One socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketStatus {
    /// Its name.
    pub name: String,
    /// Where it is bound.
    pub address: String,
    /// Its fd number in the children.
    pub fd: i32,
}

/// One child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildStatus {
    /// Its pid.
    pub pid: u32,
    /// 1 for the first child, +1 per start.
    pub generation: u64,
    /// Seconds since it started.
    pub age_s: f64,
}

/// One past event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Seconds since the Unix epoch.
    pub at_unix_s: u64,
    /// Whether it went well.
    pub ok: bool,
    /// What happened.
    pub message: String,
    /// For an upgrade: the old child's pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_pid: Option<u32>,
    /// For an upgrade: what became of the old child's client connections
    /// (keep-alive rescue), once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<crate::rescue::Counts>,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "supervisor pid {} ({})", self.supervisor_pid, self.slot)?;
        writeln!(f, "command: {}", self.command.join(" "))?;
        for socket in &self.sockets {
            writeln!(
                f,
                "socket {} = {} (fd {})",
                socket.name, socket.address, socket.fd
            )?;
        }
        match &self.current {
            Some(c) => writeln!(
                f,
                "current: pid {} (generation {}), up {:.1}s",
                c.pid, c.generation, c.age_s
            )?,
            None => writeln!(f, "current: none")?,
        }
        if let Some(c) = &self.starting {
            writeln!(
                f,
                "starting: pid {} (generation {}), for {:.1}s",
                c.pid, c.generation, c.age_s
            )?;
        }
        for c in &self.draining {
            writeln!(
                f,
                "draining: pid {} (generation {}), up {:.1}s",
                c.pid, c.generation, c.age_s
            )?;
        }
        for (label, records) in [("upgrade", &self.upgrades), ("crash", &self.crashes)] {
            for r in records {
                write!(
                    f,
                    "{label} at {}: {} {}",
                    r.at_unix_s,
                    if r.ok { "ok" } else { "FAILED" },
                    r.message
                )?;
                match &r.connections {
                    Some(counts) => writeln!(f, "; old child's connections: {counts}")?,
                    None => writeln!(f)?,
                }
            }
        }
        Ok(())
    }
}
