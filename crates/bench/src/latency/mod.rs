//! `latency`: request latency during upgrades vs the steady state, and
//! throughput with upgrades vs without, on the `hello` example server.
//!
//! For each client mode (keep-alive, and a new connection per request):
//!
//! - run A1: a fresh `hello` under load for `--duration`, no upgrade;
//! - run B: a fresh `hello` under the same load, sent `SIGHUP` every
//!   `--every`. Each upgrade window is [SIGHUP sent, old process exited];
//! - run A2: A1 again, so that the table shows how far two identical steady
//!   runs differ on this machine (the noise floor of the throughput ratio).
//!
//! From run B's samples (by start time): p50/p99/max of requests started inside
//! a window vs outside every window (the steady state of the same run), and of
//! two parts of the windows: the first 50 ms (fork, exec, successor start-up)
//! and commit → old process exited. Throughput is run B's vs the mean of A1
//! and A2. Every failed request is counted and listed.

mod analysis;
pub(crate) mod hello;
mod table;
mod upgrader;

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use handover_loadgen::{LoadConfig, Mode, Report};

use crate::machine::CpuMeter;
use crate::scratch::Scratch;
use upgrader::{Plan, Window};

/// Options of `handover-bench latency`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Length of each load run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    pub duration: Duration,
    /// Time between upgrades in the run with upgrades.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub every: Duration,
    /// Concurrent client connections (closed loop: each sends its next request
    /// as soon as the previous one is answered).
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// hello's simulated start-up time (part of every upgrade window).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub startup_delay: Duration,
}

/// Runs the benchmark; returns its Markdown section.
pub fn run(args: &Args) -> Result<String, String> {
    if args.every.is_zero() || args.connections == 0 {
        return Err("--every and --connections must be positive".into());
    }
    let exe = hello::locate()?;
    // Two workers: the load generator shares the 2 cores with the server.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let mut out = format!(
        "### Request latency and throughput during upgrades\n\n\
         `handover-bench latency --duration {} --every {} --connections {} --startup-delay {}`: \
         the `hello` server under a closed-loop load of {} connections (the load generator \
         and the server share the machine), each run on a fresh server. Runs A1 and A2: no \
         upgrade. Run B (between them): `SIGHUP` every {}; an upgrade window lasts from the \
         signal until the old process has exited, and includes the successor's {} start-up. \
         Requests are assigned to a window by their start time.\n",
        humantime::format_duration(args.duration),
        humantime::format_duration(args.every),
        args.connections,
        humantime::format_duration(args.startup_delay),
        args.connections,
        humantime::format_duration(args.every),
        humantime::format_duration(args.startup_delay),
    );
    for (mode, title) in [
        (Mode::KeepAlive, "Keep-alive connections"),
        (Mode::Close, "A new connection per request"),
    ] {
        eprintln!("latency: {title}: run A1 (steady)...");
        let first = load_run(&runtime, &exe, args, mode, false)?;
        eprintln!("latency: {title}: run B (with upgrades)...");
        let upgraded = load_run(&runtime, &exe, args, mode, true)?;
        eprintln!("latency: {title}: run A2 (steady)...");
        let second = load_run(&runtime, &exe, args, mode, false)?;
        out.push_str(&table::section(title, [&first, &second], &upgraded));
    }
    Ok(out)
}

/// One run's outcome.
struct Run {
    report: Report,
    /// Share of the machine's CPU time other processes used meanwhile.
    others: f64,
    /// The run's time origin (`Sample::start` counts from here, to within
    /// microseconds: it is taken right before the load generator starts).
    start: Instant,
    /// The upgrades, for run B.
    windows: Vec<Window>,
}

fn load_run(
    runtime: &tokio::runtime::Runtime,
    exe: &Path,
    args: &Args,
    mode: Mode,
    upgrades: bool,
) -> Result<Run, String> {
    let meter = CpuMeter::start();
    let scratch = Scratch::new("latency")?;
    let server = hello::Hello::start(exe, scratch.dir(), args.startup_delay)?;
    let config = LoadConfig::new(server.addr)
        .connections(args.connections)
        .mode(mode)
        .duration(args.duration)
        .request_timeout(Duration::from_secs(5));
    let (started, start) = mpsc::channel();
    let upgrader = upgrades.then(|| {
        let plan = Plan {
            pid_file: server.pid_file.clone(),
            every: args.every,
            duration: args.duration,
            startup_delay: args.startup_delay,
            margin: Duration::from_secs(1),
        };
        std::thread::spawn(move || match start.recv() {
            Ok(start) => upgrader::run(&plan, start),
            Err(_) => Ok(Vec::new()),
        })
    });
    let (start, report) = runtime.block_on(async {
        let start = Instant::now();
        let _ = started.send(start);
        (start, handover_loadgen::run(config).await)
    });
    let windows = match upgrader.map(|thread| thread.join()) {
        None => Vec::new(),
        Some(Ok(Ok(windows))) => windows,
        Some(Ok(Err(error))) => {
            return Err(format!("upgrade failed: {error}; {}", server.log_tail()))
        }
        Some(Err(_)) => return Err("the upgrader thread panicked".into()),
    };
    server.stop()?;
    eprintln!("  {}", report.summary());
    Ok(Run {
        report,
        others: meter.others(),
        start,
        windows,
    })
}
