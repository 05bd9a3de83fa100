//! `handover check`: drive load at a server while running its upgrade command
//! at an interval, and report every failed request, split into steady time and
//! upgrade windows.
//!
//! The parts:
//!
//! | module | job |
//! |---|---|
//! | [`args`] | turning the flags into a validated [`args::Plan`] (target, protocol, schedule) |
//! | [`run`] | the run itself: load, upgrade commands, progress and Ctrl-C on one clock |
//! | [`upgrades`] | running one upgrade command (`sh -c`), its timing, status and output |
//! | [`windows`] | upgrade windows and which requests started inside one |
//! | [`gaps`] | the longest stretch without a successful new connection |
//! | [`summary`] | every number of the report, and the verdict (also the `--json` shape) |
//! | [`table`] | the human table |
//! | [`plot`] | the `--plot` SVG |
//! | [`progress`] | the live progress line on a terminal |
//!
//! The load engine (HTTP/1.1, plain TCP and long-lived workers that never
//! retry) is `handover-loadgen`. See docs/CHECK.md for what is measured.
//!
//! Besides requests, the report follows connections: each long-lived
//! connection (survived every upgrade or not, bytes verified in order with
//! `--echo-check`, the pids that served it) and each HTTP keep-alive
//! connection (closed by the server, with or without `Connection: close`, or
//! kept to the end): `long_lived` and `keep_alive` in `--json`, one line
//! each in the table.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

mod args;
mod gaps;
mod plot;
mod progress;
mod run;
mod summary;
mod table;
mod upgrades;
mod windows;

/// Arguments of `handover check`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 when no request and no upgrade command failed, \
                        1 when any did, 2 for usage or setup errors. See docs/CHECK.md."
)]
pub struct Args {
    /// Server to load: http://HOST:PORT/PATH, or tcp://HOST:PORT for the line protocols.
    #[arg(long, value_name = "URL")]
    pub target: String,
    /// Upgrade command, run with `sh -c` (e.g. 'kill -HUP $(cat app.pid)').
    /// Without it the run measures the steady state only.
    #[arg(long, value_name = "CMD")]
    pub upgrade: Option<String>,
    /// Time between upgrade command starts; the first starts one interval in.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "3s")]
    pub every: Duration,
    /// Run at most this many upgrades. Without --duration the run lasts (N+1) × --every.
    #[arg(long, value_name = "N")]
    pub upgrade_count: Option<u32>,
    /// How long load is driven [default: 30s, or (N+1) × --every with --upgrade-count N].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Concurrent connections (workers), each with at most one request in flight.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub connections: usize,
    /// HTTP connection use: keep-alive, a new connection per request, or half of each.
    #[arg(long, value_enum, default_value = "keepalive")]
    pub mode: args::ModeArg,
    /// What is exchanged [default: from the target: http:// → http, tcp:// → tcp].
    #[arg(long, value_enum)]
    pub protocol: Option<args::ProtocolArg>,
    /// Line written per attempt by the tcp and long-lived protocols (newline added if missing).
    #[arg(long, value_name = "TEXT", default_value = "ping")]
    pub message: String,
    /// Time between exchanges on each long-lived connection.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "100ms")]
    pub interval: Duration,
    /// tcp and long-lived: number every line and require its exact echo with the server's pid.
    ///
    /// Each line written is `c<connection>-<seq> <message>` (seq counts from 1
    /// per connection and goes on when it is reopened) and the reply must be
    /// exactly `<pid> <that line>` (as hello's --echo listener answers). Any
    /// other reply is a malformed failure naming the expected and the received
    /// seq: a line lost, duplicated or reordered. The pid is who served the
    /// connection. Without this flag any one line is a successful reply (a
    /// `<pid> <message>` reply still tells the pid, as does `pid=N`).
    #[arg(long)]
    pub echo_check: bool,
    /// tcp and long-lived: lines written at once per exchange; as many reply lines must come back.
    ///
    /// With more than one line in flight, a lost line shows at once as an
    /// out-of-order echo (with --echo-check) rather than as a timeout. One
    /// exchange is one request in the report.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub lines: usize,
    /// How long an upgrade window lasts after the upgrade is over.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "1s")]
    pub window_tail: Duration,
    /// Bound on one attempt (connect + request + complete response); beyond it: timeout.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "5s")]
    pub timeout: Duration,
    /// Bound on opening a connection; beyond it: timeout.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "2s")]
    pub connect_timeout: Duration,
    /// An upgrade command still running after this is killed (its process group) and failed.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "60s")]
    pub upgrade_timeout: Duration,
    /// Stop starting requests after this many (bounds memory: every request is kept).
    #[arg(long, value_name = "N", default_value_t = 3_000_000)]
    pub max_requests: u64,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Draw latency and throughput over time, upgrades marked, into this SVG file.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// No live progress line, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}

/// Runs the check; the exit code says whether anything failed.
pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let plan = args::Plan::from_args(&args)?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("handover-check")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcome = runtime.block_on(run::execute(&plan));
    drop(runtime);
    let summary = summary::Summary::new(&plan, &outcome);
    if plan.json {
        let json = serde_json::to_string_pretty(&summary).context("cannot encode the report")?;
        println!("{json}");
        if summary.request_cap_reached {
            eprintln!(
                "handover check: --max-requests reached: load stopped before the end of the run"
            );
        }
    } else {
        print!("{}", table::render(&summary));
    }
    if let Some(path) = &plan.plot {
        plot::write(path, &outcome, &summary)
            .with_context(|| format!("cannot write the plot {}", path.display()))?;
        if !plan.json {
            println!("plot: {}", path.display());
        }
    }
    Ok(ExitCode::from(if summary.passed() { 0 } else { 1 }))
}
