//! Reading what a process inherited: `LISTEN_*` sockets and the `HANDOVER_*` link.
//!
//! Parsing follows `sd_listen_fds(3)`: no `LISTEN_PID`, or a `LISTEN_PID` of
//! another process, means "not for us" and is ignored; a value that is not a
//! number, or names that do not match the count, is an error. The parsing itself
//! ([`parse_listen_env`]) touches no descriptor, so it is tested on its own.

use std::ffi::OsString;
use std::os::fd::OwnedFd;

use super::*;

/// Why the inherited environment cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// A variable that must hold a number does not.
    #[error("{variable}={value:?} is not a valid number")]
    NotANumber {
        /// The variable's name.
        variable: &'static str,
        /// Its value, cut to 64 characters.
        value: String,
    },
    /// A variable is not UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    /// `LISTEN_FDS` is implausibly large.
    #[error("LISTEN_FDS={0} is more than {MAX_INHERITED_FDS}")]
    TooManyFds(u64),
    /// `LISTEN_FDNAMES` does not name each fd exactly once.
    #[error("LISTEN_FDNAMES has {names} names but LISTEN_FDS is {fds}")]
    NamesMismatch {
        /// Number of names.
        names: usize,
        /// Number of fds.
        fds: usize,
    },
    /// An fd that `LISTEN_FDS` promises is not open.
    #[error("fd {fd} is listed in LISTEN_FDS but is not an inherited open fd: {reason}")]
    FdNotOpen {
        /// The fd number.
        fd: i32,
        /// What the kernel said.
        reason: String,
    },
}

/// The most fds accepted from `LISTEN_FDS`.
pub const MAX_INHERITED_FDS: u64 = 65_536;

/// Fd numbers and names meant for this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenEnv {
    /// One name per fd, fd `LISTEN_FDS_START + i` for name `i`. Unnamed fds are
    /// called `unknown`, as systemd does.
    pub names: Vec<String>,
}

/// Parses `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` for a process whose pid
/// is `my_pid`. `Ok(None)` means nothing was passed to this process.
pub fn parse_listen_env(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    my_pid: u32,
) -> Result<Option<ListenEnv>, EnvError> {
    let (Some(listen_pid), Some(listen_fds)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    if number(LISTEN_PID, listen_pid)? != u64::from(my_pid) {
        tracing::debug!(
            listen_pid,
            my_pid,
            "LISTEN_PID is another process; ignoring LISTEN_FDS"
        );
        return Ok(None);
    }
    let count = number(LISTEN_FDS, listen_fds)?;
    if count > MAX_INHERITED_FDS {
        return Err(EnvError::TooManyFds(count));
    }
    let count = count as usize;
    if count == 0 {
        return Ok(None);
    }
    let names: Vec<String> = match listen_fdnames {
        None => vec!["unknown".to_owned(); count],
        Some(names) => names.split(':').map(str::to_owned).collect(),
    };
    if names.len() != count {
        return Err(EnvError::NamesMismatch {
            names: names.len(),
            fds: count,
        });
    }
    Ok(Some(ListenEnv { names }))
}

fn number(variable: &'static str, value: &str) -> Result<u64, EnvError> {
    let trimmed = value.trim();
    let valid = !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit());
    valid
        .then(|| trimmed.parse().ok())
        .flatten()
        .ok_or_else(|| EnvError::NotANumber {
            variable,
            value: value.chars().take(64).collect(),
        })
}

/// Where this process came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Started by a handover parent that waits for our `READY=1` on `notify`.
    Successor {
        /// The parent's pid.
        parent: u32,
        /// The parent's private notify socket.
        notify: OsString,
    },
    /// Started by anything else (a shell, systemd, a supervisor).
    Fresh,
}

/// A socket fd passed to this process, not yet claimed by name.
#[derive(Debug)]
pub struct InheritedFd {
    /// Its name (`LISTEN_FDNAMES`).
    pub name: String,
    /// The descriptor, now owned.
    pub fd: OwnedFd,
    /// Its number at start, for messages.
    pub number: i32,
}

/// Everything a process inherited.
#[derive(Debug)]
pub struct Inheritance {
    /// The sockets, in fd order.
    pub sockets: Vec<InheritedFd>,
    /// Who started this process.
    pub origin: Origin,
    /// 0 for a first process, the parent's + 1 for a successor.
    pub generation: u64,
    /// The service manager's notify socket (systemd's `NOTIFY_SOCKET`).
    pub upstream_notify: Option<OsString>,
}

/// Takes ownership of fd `number`, handed to this process across `execve`
/// by a previous image of itself (a supervisor's self-upgrade lists its fds
/// in its state), under the rules of `LISTEN_FDS`: it must be open, not
/// close-on-exec (so it crossed the exec), and not taken before. It is made
/// close-on-exec again.
pub fn adopt_handed_fd(number: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    crate::sys::adopt_inherited_fd(number)
}

/// Reads the environment through `var` and adopts the listed fds.
pub fn read_inheritance(
    var: impl Fn(&'static str) -> Option<OsString>,
    my_pid: u32,
    parent_pid: Option<u32>,
) -> Result<Inheritance, EnvError> {
    let text = |name: &'static str| -> Result<Option<String>, EnvError> {
        var(name)
            .map(|v| v.into_string().map_err(|_| EnvError::NotUtf8(name)))
            .transpose()
    };
    let link = match text(HANDOVER_PARENT_PID)? {
        Some(pid) => Some(number(HANDOVER_PARENT_PID, &pid)?),
        None => None,
    };
    let is_successor = link.is_some() && link == parent_pid.map(u64::from);
    let (origin, generation, upstream_notify) = match (is_successor, var(NOTIFY_SOCKET)) {
        (true, Some(notify)) => {
            let generation = match text(HANDOVER_GENERATION)? {
                Some(g) => number(HANDOVER_GENERATION, &g)?,
                None => 1,
            };
            let origin = Origin::Successor {
                parent: parent_pid.unwrap_or_default(),
                notify,
            };
            (origin, generation, var(HANDOVER_UPSTREAM_NOTIFY_SOCKET))
        }
        (_, notify) => (Origin::Fresh, 0, notify),
    };
    let listen = parse_listen_env(
        text(LISTEN_PID)?.as_deref(),
        text(LISTEN_FDS)?.as_deref(),
        text(LISTEN_FDNAMES)?.as_deref(),
        my_pid,
    )?;
    let mut sockets = Vec::new();
    for (index, name) in listen
        .map(|l| l.names)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let number = LISTEN_FDS_START + index as i32;
        let fd = crate::sys::adopt_inherited_fd(number).map_err(|e| EnvError::FdNotOpen {
            fd: number,
            reason: e.to_string(),
        })?;
        sockets.push(InheritedFd { name, fd, number });
    }
    Ok(Inheritance {
        sockets,
        origin,
        generation,
        upstream_notify,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(
        pid: Option<&str>,
        fds: Option<&str>,
        names: Option<&str>,
    ) -> Result<Option<ListenEnv>, EnvError> {
        parse_listen_env(pid, fds, names, 42)
    }

    #[test]
    fn accepts_the_systemd_convention() {
        let env = parse(Some("42"), Some("2"), Some("web:admin"))
            .unwrap()
            .unwrap();
        assert_eq!(env.names, ["web", "admin"]);
        let env = parse(Some("42"), Some("1"), None).unwrap().unwrap();
        assert_eq!(env.names, ["unknown"]);
    }

    #[test]
    fn ignores_what_is_not_for_us() {
        assert_eq!(parse(None, Some("2"), None), Ok(None));
        assert_eq!(parse(Some("41"), Some("2"), None), Ok(None));
        assert_eq!(parse(Some("42"), None, None), Ok(None));
        assert_eq!(parse(Some("42"), Some("0"), None), Ok(None));
    }

    #[test]
    fn rejects_garbage() {
        let err = parse(Some("42"), Some("abc"), None).unwrap_err();
        assert_eq!(err.to_string(), "LISTEN_FDS=\"abc\" is not a valid number");
        assert!(matches!(
            parse(Some("x"), Some("1"), None),
            Err(EnvError::NotANumber {
                variable: "LISTEN_PID",
                ..
            })
        ));
        assert!(matches!(
            parse(Some("42"), Some("-1"), None),
            Err(EnvError::NotANumber { .. })
        ));
        assert!(matches!(
            parse(Some("42"), Some("99999999999999999999999"), None),
            Err(EnvError::NotANumber { .. })
        ));
        assert_eq!(
            parse(Some("42"), Some("100000"), None),
            Err(EnvError::TooManyFds(100_000))
        );
        assert_eq!(
            parse(Some("42"), Some("1"), Some("web:admin")),
            Err(EnvError::NamesMismatch { names: 2, fds: 1 })
        );
    }
}
