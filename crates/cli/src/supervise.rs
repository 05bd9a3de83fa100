//! `handover run`, `upgrade`, `status`, `stop`: the supervisor and its clients.
//! The work is done by the `handover-supervisor` crate; this module parses the
//! command line and prints.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use handover_supervisor::config::{default_control_path, parse_signal};
use handover_supervisor::status::Status;
use handover_supervisor::{Config, Listen, ReadyMode};
use handover_wire::control::{self, Reply, Request};

/// Arguments of `handover run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A socket to hold and pass to the server: NAME=HOST:PORT (TCP, HTTP; also
    /// NAME=http://HOST:PORT), NAME=tcp://HOST:PORT (TCP, any protocol: rescued
    /// connections are relayed byte for byte), NAME=udp://HOST:PORT,
    /// NAME=unix:PATH. Repeatable; fds 3, 4, … in this order.
    #[arg(long = "listen", value_name = "NAME=ADDR")]
    listen: Vec<Listen>,
    /// How a new child proves it is ready: notify (sd_notify READY=1),
    /// http:PATH, tcp, or delay:DURATION.
    #[arg(long, default_value = "notify")]
    ready: ReadyMode,
    /// How long a new child may take to be ready before it is killed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    ready_timeout: Duration,
    /// The signal that asks an old child to drain and exit.
    #[arg(long, value_parser = parse_signal, default_value = "TERM")]
    stop_signal: i32,
    /// The signal `handover reload` sends the current child, for servers that
    /// reload their configuration on a signal (gunicorn: HUP, puma: USR1).
    #[arg(long, value_parser = parse_signal, default_value = "HUP")]
    reload_signal: i32,
    /// How long an old child may drain before it is killed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    drain_timeout: Duration,
    /// How long a new child is on probation once it is ready: the old child is
    /// not stopped meanwhile (it gets no new connections), and if the new one
    /// exits inside the window, connections go back to the old one at once
    /// instead of waiting for a restart. The old child lives that much longer;
    /// 0 turns it off.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    probation: Duration,
    /// At most this many old children draining at once (on probation
    /// included); an upgrade beyond that is refused.
    #[arg(long, default_value_t = 1)]
    max_draining: usize,
    /// Do not rescue the connections an old child drops at shutdown: its idle
    /// keep-alive connections then close as the child decides.
    #[arg(long)]
    no_rescue: bool,
    /// At most this many old children's connections held for rescue at once
    /// (also bounded by the fd limit); the others close as without rescue.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    rescue_max: usize,
    /// How long a rescued connection may stay silent before it is closed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    rescue_idle: Duration,
    /// How long the old child's connections receive nothing after its stop
    /// signal unless it closes one (their data is held back, then
    /// retransmitted), so that a server closing its idle connections cannot
    /// read half a request first; 0 turns it off.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "250ms")]
    rescue_hold: Duration,
    /// Write the supervisor's pid here.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// The control socket (default: next to the PID file, else in
    /// $XDG_RUNTIME_DIR).
    #[arg(long)]
    control: Option<PathBuf>,
    /// The server command; `{fd:NAME}` in it is replaced by NAME's fd number.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Arguments of `handover upgrade`.
#[derive(Debug, clap::Args)]
pub struct UpgradeArgs {
    /// Upgrade the supervisor itself: re-execute its binary in place (same
    /// pid, the children and sockets kept), after checking the new binary.
    #[arg(long)]
    pub supervisor: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `handover status`: where, and in which form.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// `human` (the default), `json` (as --json), or `prometheus`: the
    /// counters (upgrades, rollbacks, drains, restarts, …) in the Prometheus
    /// text format, for a scraper (node-exporter's textfile collector, a
    /// sidecar).
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
}

/// What `handover status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For a person.
    Human,
    /// JSON lines.
    Json,
    /// The Prometheus text format.
    Prometheus,
}

/// `handover status` in the form asked for.
pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.client;
    match args.format {
        Format::Prometheus => return self::client(Request::Metrics, client),
        Format::Json => client.json = true,
        Format::Human => {}
    }
    self::client(Request::Status, client)
}

/// Where to find a running supervisor or library process.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The socket to talk to: a supervisor's control socket, or the takeover
    /// socket of a process on the handover library (`Builder::takeover`).
    #[arg(long, visible_alias = "control", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The supervisor's PID file (the control socket is next to it).
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Print replies as JSON lines.
    #[arg(long)]
    json: bool,
}

impl ClientArgs {
    fn control_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| default_control_path(self.pid_file.as_deref()))
    }
}

/// `handover run`.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Colours only for a person at a terminal: not in journald or a log file.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = Config {
        control: args
            .control
            .unwrap_or_else(|| default_control_path(args.pid_file.as_deref())),
        listen: args.listen,
        ready: args.ready,
        ready_timeout: args.ready_timeout,
        stop_signal: args.stop_signal,
        reload_signal: args.reload_signal,
        drain_timeout: args.drain_timeout,
        probation: args.probation,
        max_draining: args.max_draining.max(1),
        pid_file: args.pid_file,
        command: args.command,
        rescue: (!args.no_rescue).then_some(handover_supervisor::rescue::Settings {
            max: args.rescue_max,
            idle: args.rescue_idle,
            hold: args.rescue_hold,
        }),
    };
    let runtime = handover_supervisor::runtime()?;
    match runtime.block_on(handover_supervisor::run(config)) {
        Ok(code) => Ok(ExitCode::from(code as u8)),
        Err(error) => Err(error.into()),
    }
}

/// `handover upgrade`, `status` or `stop`: one client for a supervisor and for
/// a library process alike (they speak the same protocol).
pub fn client(request: Request, args: ClientArgs) -> anyhow::Result<ExitCode> {
    let path = args.control_path();
    let json = args.json;
    // An upgrade waits for the new version (up to its ready timeout) and, under a
    // supervisor, for the old one's drain: no bound between replies but the
    // server's own deadlines.
    let patience = Duration::from_secs(24 * 3600);
    let last = control::request(&path, request, patience, |reply| print(reply, json));
    Ok(match last {
        Ok(Reply::Done { ok: true, .. } | Reply::Status(_) | Reply::Metrics(_)) => {
            ExitCode::SUCCESS
        }
        Ok(_) => ExitCode::FAILURE,
        Err(error) => {
            let message = match &error {
                handover_wire::Error::Refused { message, .. } => message.clone(),
                handover_wire::Error::Io(e) => {
                    format!("cannot reach {}: {e}", path.display())
                }
                other => other.to_string(),
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({"event": "error", "message": message})
                );
            } else {
                eprintln!("{message}");
            }
            ExitCode::FAILURE
        }
    })
}

/// `handover upgrade --supervisor`: asks for the self-upgrade, and — the
/// connection ends with the old image — waits until the supervisor answers
/// again and says how it went.
pub fn upgrade_supervisor(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let path = args.control_path();
    let json = args.json;
    let self_upgrades = |status: &serde_json::Map<String, serde_json::Value>| {
        status
            .get("self_upgrades")
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default()
    };
    // Which image answers (an older one says nothing: its history's length
    // stands in, which stops growing at its bound).
    let image = |status: &serde_json::Map<String, serde_json::Value>| {
        (
            status.get("image").and_then(|v| v.as_u64()),
            self_upgrades(status).len(),
        )
    };
    let before = match control::request(&path, Request::Status, Duration::from_secs(10), |_| {}) {
        Ok(Reply::Status(status)) => image(&status),
        Ok(_) => anyhow::bail!("{} did not answer status", path.display()),
        Err(error) => anyhow::bail!("cannot reach {}: {error}", path.display()),
    };
    // The supervisor bounds its wait for an upgrade under way (see
    // `self_upgrade.rs`) and its check of the new binary: no bound here.
    let last = control::request(
        &path,
        Request::UpgradeSupervisor,
        Duration::from_secs(24 * 3600),
        |reply| print(reply, json),
    );
    // Refused, or failed before the switch: the old image answered.
    if let Ok(Reply::Done { ok, .. }) = &last {
        return Ok(if *ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    // The old image is gone: wait (bounded) for the new one to answer.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Ok(Reply::Status(status)) =
            control::request(&path, Request::Status, Duration::from_secs(5), |_| {})
        {
            let (now, count) = image(&status);
            let new_image = match (before, now) {
                ((None, before_count), None) => count > before_count,
                ((before, _), now) => now != before,
            };
            let records = self_upgrades(&status);
            if new_image {
                let record = records.last().cloned().unwrap_or_default();
                let ok = record.get("ok").and_then(|v| v.as_bool()).unwrap_or(false);
                let message = record
                    .get("message")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned();
                print(&Reply::Done { ok, message }, json);
                return Ok(if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    anyhow::bail!(
        "the supervisor at {} did not answer within 30 s after re-executing",
        path.display()
    )
}

fn print(reply: &Reply, json: bool) {
    if json {
        let line = match reply {
            Reply::Progress(message) => {
                serde_json::json!({"event": "progress", "message": message})
            }
            Reply::Done { ok, message } => {
                serde_json::json!({"event": "done", "ok": ok, "message": message})
            }
            Reply::Status(status) => {
                let mut status = status.clone();
                status.insert("event".into(), "status".into());
                serde_json::Value::Object(status)
            }
            Reply::Metrics(text) => serde_json::json!({"event": "metrics", "text": text}),
        };
        println!("{line}");
        return;
    }
    match reply {
        Reply::Progress(message) | Reply::Done { ok: true, message } => println!("{message}"),
        Reply::Done { ok: false, message } => eprintln!("{message}"),
        Reply::Metrics(text) => print!("{text}"),
        Reply::Status(status) => {
            let value = serde_json::Value::Object(status.clone());
            match serde_json::from_value::<Status>(value) {
                Ok(supervisor) => print!("{supervisor}"),
                // A library process: its fields as they are.
                Err(_) => {
                    for (key, value) in status {
                        println!("{key}: {value}");
                    }
                }
            }
        }
    }
}
