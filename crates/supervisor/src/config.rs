//! What `handover run` is told: sockets, readiness, timeouts, the command.

use std::ffi::OsString;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use handover_mechanism::sockets::{Address, SocketKind};

/// The supervisor's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Sockets bound once and passed to every child.
    pub listen: Vec<Listen>,
    /// How a new child proves it is ready.
    pub ready: ReadyMode,
    /// How long a new child may take to be ready.
    pub ready_timeout: Duration,
    /// Signal that asks an old child to drain and exit.
    pub stop_signal: i32,
    /// Signal `handover reload` sends the current child.
    pub reload_signal: i32,
    /// How long an old child may drain before it is killed.
    pub drain_timeout: Duration,
    /// How long a new child is on probation after it is ready: the old child
    /// is kept (not stopped, getting no new connections) and serves again if
    /// the new one exits meanwhile. Zero: no probation.
    pub probation: Duration,
    /// At most this many old children draining at once.
    pub max_draining: usize,
    /// The supervisor's PID file.
    pub pid_file: Option<PathBuf>,
    /// The control socket's path.
    pub control: PathBuf,
    /// The command and its arguments; `{fd:NAME}` is replaced by NAME's fd number.
    pub command: Vec<OsString>,
    /// Keep-alive rescue of an old child's connections (`None`: `--no-rescue`).
    pub rescue: Option<crate::rescue::Settings>,
}

/// One `--listen NAME=ADDR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// The socket's name (LISTEN_FDNAMES).
    pub name: String,
    /// TCP listener, UDP socket or Unix listener.
    pub kind: SocketKind,
    /// Where it is bound.
    pub address: Address,
    /// What its connections speak, for the keep-alive rescue (TCP only).
    pub protocol: Protocol,
}

/// What a TCP listener's connections speak, as far as a rescue relay cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// HTTP/1.1: rescued request by request, the last answer `Connection: close`
    /// (`NAME=HOST:PORT`, `NAME=http://HOST:PORT`).
    Http,
    /// Anything else: rescued connections relayed byte for byte
    /// (`NAME=tcp://HOST:PORT`).
    Raw,
}

impl FromStr for Listen {
    type Err = String;

    /// `NAME=HOST:PORT` or `NAME=http://HOST:PORT` (TCP, HTTP),
    /// `NAME=tcp://HOST:PORT` (TCP, any protocol), `NAME=udp://HOST:PORT`,
    /// `NAME=unix:PATH` or `NAME=/abs/path` (Unix).
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (name, addr) = spec
            .split_once('=')
            .ok_or_else(|| format!("{spec:?}: expected NAME=ADDR, e.g. web=127.0.0.1:8080"))?;
        if !handover_mechanism::protocol::valid_name(name) {
            return Err(format!(
                "{name:?}: a name is 1-255 printable ASCII characters without ':'"
            ));
        }
        let inet = |addr: &str| -> Result<SocketAddr, String> {
            addr.to_socket_addrs()
                .map_err(|e| format!("{addr:?}: {e}"))?
                .next()
                .ok_or_else(|| format!("{addr:?} resolves to nothing"))
        };
        let mut protocol = Protocol::Http;
        let (kind, address) = if let Some(path) = addr.strip_prefix("unix:") {
            (SocketKind::UnixListener, Address::Unix(path.into()))
        } else if addr.starts_with('/') || addr.starts_with("./") {
            (SocketKind::UnixListener, Address::Unix(addr.into()))
        } else if let Some(rest) = addr.strip_prefix("udp://") {
            (SocketKind::Udp, Address::Inet(inet(rest)?))
        } else if let Some(rest) = addr.strip_prefix("tcp://") {
            protocol = Protocol::Raw;
            (SocketKind::TcpListener, Address::Inet(inet(rest)?))
        } else {
            let rest = addr.strip_prefix("http://").unwrap_or(addr);
            (SocketKind::TcpListener, Address::Inet(inet(rest)?))
        };
        Ok(Listen {
            name: name.to_owned(),
            kind,
            address,
            protocol,
        })
    }
}

/// How the supervisor learns that a new child is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadyMode {
    /// The child sends `READY=1` to `NOTIFY_SOCKET` (sd_notify).
    Notify,
    /// An HTTP GET of this path, answered 2xx or 3xx *by the new child*.
    Http(String),
    /// A TCP connection accepted *by the new child*.
    Tcp,
    /// Ready after this long, if still alive (last resort).
    Delay(Duration),
}

impl FromStr for ReadyMode {
    type Err = String;

    fn from_str(mode: &str) -> Result<Self, Self::Err> {
        match mode {
            "notify" => Ok(ReadyMode::Notify),
            "tcp" => Ok(ReadyMode::Tcp),
            _ => {
                if let Some(path) = mode.strip_prefix("http:") {
                    if !path.starts_with('/') {
                        return Err(format!(
                            "{mode:?}: the path must start with '/', e.g. http:/healthz"
                        ));
                    }
                    Ok(ReadyMode::Http(path.to_owned()))
                } else if let Some(delay) = mode.strip_prefix("delay:") {
                    humantime::parse_duration(delay)
                        .map(ReadyMode::Delay)
                        .map_err(|e| format!("{mode:?}: {e}"))
                } else {
                    Err(format!(
                        "{mode:?}: expected notify, http:PATH, tcp or delay:DURATION"
                    ))
                }
            }
        }
    }
}

impl fmt::Display for ReadyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadyMode::Notify => f.write_str("notify"),
            ReadyMode::Http(path) => write!(f, "http:{path}"),
            ReadyMode::Tcp => f.write_str("tcp"),
            ReadyMode::Delay(d) => write!(f, "delay:{}", humantime::format_duration(*d)),
        }
    }
}

/// Parses `TERM`, `SIGTERM` or `15`.
pub fn parse_signal(name: &str) -> Result<i32, String> {
    if let Ok(number) = name.parse::<i32>() {
        return rustix::process::Signal::from_named_raw(number)
            .map(|_| number)
            .ok_or_else(|| format!("{name}: not a signal number"));
    }
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(known, _)| *known == bare)
        .map(|(_, number)| *number)
        .ok_or_else(|| format!("{name}: unknown signal"))
}

/// `SIGHUP` for 1, and so on: the signals [`parse_signal`] knows by name
/// (others as `signal N`).
pub fn signal_name(signal: i32) -> String {
    SIGNALS
        .iter()
        .find(|(_, number)| *number == signal)
        .map_or_else(
            || format!("signal {signal}"),
            |(name, _)| format!("SIG{name}"),
        )
}

/// The signals known by name.
const SIGNALS: [(&str, i32); 8] = [
    ("TERM", libc::SIGTERM),
    ("QUIT", libc::SIGQUIT),
    ("INT", libc::SIGINT),
    ("HUP", libc::SIGHUP),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("WINCH", libc::SIGWINCH),
    ("KILL", libc::SIGKILL),
];

/// Where the control socket is when not given: next to the PID file, else in
/// `$XDG_RUNTIME_DIR`, else in a private directory under the temporary directory.
pub fn default_control_path(pid_file: Option<&Path>) -> PathBuf {
    if let Some(pid_file) = pid_file {
        let mut name = pid_file.as_os_str().to_owned();
        name.push(".control");
        return PathBuf::from(name);
    }
    handover_mechanism::protocol::runtime_dir().join("handover.control")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_specs() {
        let web: Listen = "web=127.0.0.1:8080".parse().unwrap();
        assert_eq!(web.kind, SocketKind::TcpListener);
        assert_eq!(
            web.address,
            Address::Inet("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(web.protocol, Protocol::Http);
        let raw: Listen = "db=tcp://127.0.0.1:5432".parse().unwrap();
        assert_eq!(
            (raw.kind, raw.protocol),
            (SocketKind::TcpListener, Protocol::Raw)
        );
        let http: Listen = "web=http://127.0.0.1:80".parse().unwrap();
        assert_eq!(
            (http.kind, http.protocol),
            (SocketKind::TcpListener, Protocol::Http)
        );
        let dns: Listen = "dns=udp://127.0.0.1:53".parse().unwrap();
        assert_eq!(dns.kind, SocketKind::Udp);
        let ctl: Listen = "ctl=unix:/run/app.sock".parse().unwrap();
        assert_eq!(ctl.address, Address::Unix("/run/app.sock".into()));
        assert!("127.0.0.1:8080".parse::<Listen>().is_err());
        assert!("a:b=127.0.0.1:1".parse::<Listen>().is_err());
    }

    #[test]
    fn ready_modes() {
        assert_eq!(
            "http:/healthz".parse(),
            Ok(ReadyMode::Http("/healthz".into()))
        );
        assert_eq!(
            "delay:2s".parse(),
            Ok(ReadyMode::Delay(Duration::from_secs(2)))
        );
        assert!("http:healthz".parse::<ReadyMode>().is_err());
        assert!("soon".parse::<ReadyMode>().is_err());
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM"), Ok(libc::SIGTERM));
        assert_eq!(parse_signal("sigquit"), Ok(libc::SIGQUIT));
        assert_eq!(parse_signal("2"), Ok(libc::SIGINT));
        assert!(parse_signal("NOPE").is_err());
        assert_eq!(signal_name(libc::SIGHUP), "SIGHUP");
        assert_eq!(signal_name(40), "signal 40");
    }
}
