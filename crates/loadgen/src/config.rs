//! Run configuration: where to send load, how much, and how.

use std::net::SocketAddr;
use std::time::Duration;

/// How workers use TCP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Each worker reuses one connection for successive requests (HTTP/1.1
    /// persistent connections). A new connection is opened only for the first
    /// request, after a failure, or after the server announced `Connection: close`.
    KeepAlive,
    /// Every request opens a new TCP connection and sends `Connection: close`.
    Close,
    /// Workers with an even index behave as [`Mode::KeepAlive`], odd ones as
    /// [`Mode::Close`].
    Mixed,
}

impl Mode {
    /// Whether worker number `worker` keeps its connection alive in this mode.
    pub fn keep_alive_for(self, worker: usize) -> bool {
        match self {
            Mode::KeepAlive => true,
            Mode::Close => false,
            Mode::Mixed => worker % 2 == 0,
        }
    }
}

/// What each attempt exchanges with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1 `GET` requests; connections used as [`Mode`] says.
    Http,
    /// Plain TCP, one connection per attempt: connect, write
    /// [`LoadConfig::message`], read one line (`\n`-terminated). A line read is
    /// a success; pids or generations are taken from `pid=N` / `generation=N`
    /// in it. [`Mode`] does not apply.
    Tcp,
    /// Long-lived connections: each worker opens one connection at the start
    /// and, every [`LoadConfig::interval`], writes [`LoadConfig::message`] and
    /// must read exactly one line back. A broken exchange is a failure; the
    /// next exchange reopens the connection (a fresh connection). [`Mode`]
    /// does not apply.
    ///
    /// Each worker's connection is also followed as a whole
    /// ([`Report::line_connections`](crate::Report::line_connections)):
    /// opened how many times, closed by the server or not, bytes sent and
    /// verified, which pids served it.
    LongLived,
}

/// Configuration of one load run.
///
/// Build it with [`LoadConfig::new`] and adjust it with the builder-style
/// setters:
///
/// ```
/// use std::time::Duration;
/// use handover_loadgen::{LoadConfig, Mode};
///
/// let config = LoadConfig::new("127.0.0.1:8080".parse().unwrap())
///     .connections(8)
///     .mode(Mode::Mixed)
///     .duration(Duration::from_secs(10))
///     .max_requests(10_000);
/// assert_eq!(config.path, "/");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadConfig {
    /// Server address to connect to.
    pub addr: SocketAddr,
    /// Request target sent in the request line (default `/`).
    pub path: String,
    /// Number of concurrent workers; each has at most one connection open.
    pub connections: usize,
    /// Connection usage pattern.
    pub mode: Mode,
    /// The run stops starting new requests once this much time has passed.
    pub duration: Duration,
    /// Cap on the total number of attempts across all workers.
    pub max_requests: Option<u64>,
    /// Bound on one whole attempt (connect + write + complete response).
    pub request_timeout: Duration,
    /// Bound on establishing a TCP connection.
    pub connect_timeout: Duration,
    /// What an attempt exchanges (default [`Protocol::Http`]).
    pub protocol: Protocol,
    /// `Host` header of HTTP requests (default: the address).
    pub host: Option<String>,
    /// Bytes written per attempt by the line protocols (default `ping\n`).
    pub message: Vec<u8>,
    /// Time between exchanges on one long-lived connection (default 100 ms).
    pub interval: Duration,
    /// Line protocols: number every line and require its exact echo (default
    /// off). Each line written is `c<worker>-<seq> <message>` (the message
    /// without its line ending; sequence numbers go on across reopened
    /// connections) and the reply must be exactly `<pid> <that line>`; any
    /// other reply — another seq: a line lost, duplicated or reordered — is a
    /// [`FailureKind::Malformed`](crate::FailureKind::Malformed) failure
    /// naming the expected and the received seq. Off, any one line is a
    /// successful reply.
    pub echo_check: bool,
    /// Line protocols: lines written at once per exchange (default 1); the
    /// exchange must read as many reply lines back, in order. With more than
    /// one line in flight a lost line shows as an out-of-order echo at once
    /// rather than as a timeout.
    pub lines_per_exchange: usize,
}

impl LoadConfig {
    /// Defaults: path `/`, 1 connection, [`Mode::KeepAlive`], 10 s duration,
    /// no request cap, 5 s request timeout, 2 s connect timeout,
    /// [`Protocol::Http`], message `ping\n`, 100 ms interval, no echo check,
    /// one line per exchange.
    pub fn new(addr: SocketAddr) -> Self {
        LoadConfig {
            addr,
            path: "/".to_owned(),
            connections: 1,
            mode: Mode::KeepAlive,
            duration: Duration::from_secs(10),
            max_requests: None,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            protocol: Protocol::Http,
            host: None,
            message: b"ping\n".to_vec(),
            interval: Duration::from_millis(100),
            echo_check: false,
            lines_per_exchange: 1,
        }
    }

    /// Sets the request target (e.g. `/slow?ms=100`).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// Sets the number of concurrent workers.
    pub fn connections(mut self, connections: usize) -> Self {
        self.connections = connections;
        self
    }

    /// Sets the connection usage pattern.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets how long new requests are started.
    pub fn duration(mut self, duration: Duration) -> Self {
        self.duration = duration;
        self
    }

    /// Caps the total number of attempts across all workers.
    pub fn max_requests(mut self, max_requests: u64) -> Self {
        self.max_requests = Some(max_requests);
        self
    }

    /// Sets the bound on one whole attempt.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the bound on establishing a connection.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets what each attempt exchanges.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Sets the `Host` header of HTTP requests.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Sets the bytes the line protocols write per attempt (a line, normally
    /// ending with `\n`).
    pub fn message(mut self, message: impl Into<Vec<u8>>) -> Self {
        self.message = message.into();
        self
    }

    /// Sets the time between exchanges on one long-lived connection.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Turns the echo check of the line protocols on or off (see
    /// [`LoadConfig::echo_check`]).
    pub fn echo_check(mut self, on: bool) -> Self {
        self.echo_check = on;
        self
    }

    /// Sets how many lines each line-protocol exchange writes at once (at
    /// least 1).
    pub fn lines_per_exchange(mut self, lines: usize) -> Self {
        self.lines_per_exchange = lines.max(1);
        self
    }
}
