//! `ready-to-stop`: from the successor's `ready()` to the old process no
//! longer accepting.
//!
//! The successor takes a `CLOCK_MONOTONIC` stamp just before it calls
//! `ready()`. The old process accepts in a tokio task that selects on
//! `drain_signal().recv()`; when the drain order arrives the loop ends, the
//! listener is dropped, and the task takes its stamp. Both processes write
//! their stamp to the results file; the difference covers the `READY=1`
//! datagram, the old process's wait for it waking up, the commit, and the
//! wake-up of the accept task.
//!
//! With `--takeover`, each generation starts the next as a plain new process
//! (not a re-exec: it finds the takeover socket live and takes over), so the
//! difference covers the wire protocol's `ready` instead of `READY=1`. With
//! `--pid-file DIR`, every generation keeps a PID file in DIR, which the commit
//! writes before its drain order: where DIR is (tmpfs or a disk) shows in the
//! result.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use handover::{DrainSignal, Handover};

use crate::chain;
use crate::clock::{between, now_ns};
use crate::results::{self, Records};
use crate::scratch::Scratch;
use crate::stats::{us, verdict, Spread};

/// Target for the median (issue 2).
const TARGET: Duration = Duration::from_millis(1);

/// Options of `handover-bench ready-to-stop`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Upgrades measured.
    #[arg(long, default_value_t = 50)]
    pub runs: u64,
    /// Each new generation is started independently and takes over (through a
    /// takeover socket) instead of being re-executed by the old one.
    #[arg(long)]
    pub takeover: bool,
    /// Keep a PID file in this directory (none by default).
    #[arg(long, value_name = "DIR")]
    pub pid_file: Option<PathBuf>,
}

/// Options of a chain process (hidden subcommand `chain-ready-to-stop`).
#[derive(Debug, Clone, clap::Args)]
pub struct ChainArgs {
    #[arg(long)]
    runs: u64,
    #[arg(long)]
    results: PathBuf,
    #[arg(long)]
    takeover: Option<PathBuf>,
    #[arg(long)]
    pid_file: Option<PathBuf>,
}

/// Runs the benchmark; returns its Markdown section.
pub fn run(args: &Args) -> Result<String, String> {
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    eprintln!("ready-to-stop: {} upgrades...", args.runs);
    let scratch = Scratch::new("ready-to-stop")?;
    let results = scratch.path("results");
    let mut chain_args = vec![
        "chain-ready-to-stop".to_owned(),
        format!("--runs={}", args.runs),
        format!("--results={}", results.display()),
    ];
    if args.takeover {
        chain_args.push(format!(
            "--takeover={}",
            scratch.path("takeover.sock").display()
        ));
    }
    if let Some(dir) = &args.pid_file {
        let file = dir.join(format!("handover-bench-{}.pid", std::process::id()));
        chain_args.push(format!("--pid-file={}", file.display()));
    }
    let records = chain::run(
        &chain_args,
        &results,
        Duration::from_secs(30 + 5 * args.runs),
    )?;
    if let Some(dir) = &args.pid_file {
        let file = dir.join(format!("handover-bench-{}.pid", std::process::id()));
        let _ = std::fs::remove_file(file);
    }
    let gaps = analyse(&records, args.runs)?;
    let s = Spread::of(gaps).ok_or("no upgrade measured")?;
    let how = if args.takeover {
        "takeovers (each generation started independently)"
    } else {
        "re-exec upgrades"
    };
    let pid_file = match &args.pid_file {
        Some(dir) => format!(" and a PID file in `{}`", dir.display()),
        None => " and no PID file".to_owned(),
    };
    Ok(format!(
        "### Successor ready → old process stops accepting\n\n\
         `handover-bench {command}`: {how}{pid_file}; from the successor's stamp just \
         before `ready()` to the old process's stamp right after its tokio accept loop \
         (`select!` on `drain_signal().recv()`) ended and dropped the listener.\n\n\
         | upgrades | min | median | p99 | max |\n|---|---|---|---|---|\n\
         | {} | {} | {} | {} | {} |\n\n\
         Target: median < {} — {} (median {}, max {}).\n",
        s.count,
        us(s.min),
        us(s.median),
        us(s.p99),
        us(s.max),
        us(TARGET),
        verdict(s.median < TARGET),
        us(s.median),
        us(s.max),
        command = command_line(args),
    ))
}

fn command_line(args: &Args) -> String {
    let mut line = format!("ready-to-stop --runs {}", args.runs);
    if args.takeover {
        line.push_str(" --takeover");
    }
    if let Some(dir) = &args.pid_file {
        line.push_str(&format!(" --pid-file {}", dir.display()));
    }
    line
}

fn analyse(records: &Records, runs: u64) -> Result<Vec<Duration>, String> {
    let stamp = |kind: &str, generation: u64| {
        records
            .get(kind, generation)
            .and_then(|r| r.numbers.first().copied())
            .ok_or_else(|| format!("generation {generation} recorded no {kind:?} stamp"))
    };
    let mut gaps = Vec::new();
    for generation in 0..runs {
        let ready = stamp("ready", generation + 1)?;
        let stopped = stamp("stopped", generation)?;
        if stopped < ready {
            return Err(format!(
                "generation {generation} stopped accepting {} before its successor's ready()",
                us(between(stopped, ready))
            ));
        }
        gaps.push(between(ready, stopped));
    }
    Ok(gaps)
}

/// Accepts (and drops) connections until the drain order; returns the stamp
/// taken once the listener is gone.
async fn accept_until_drained(listener: tokio::net::TcpListener, drain: DrainSignal) -> u64 {
    loop {
        tokio::select! {
            biased;
            _ = drain.recv() => break,
            accepted = listener.accept() => drop(accepted),
        }
    }
    drop(listener);
    now_ns()
}

/// A generation of the chain: accept, ready, wait for the parent to go, then
/// upgrade (or start the next generation, which takes over).
pub fn chain(args: &ChainArgs) -> ExitCode {
    let fail = |e: &dyn std::fmt::Display| chain::fail(&args.results, e);
    let parent = rustix::process::getppid();
    // Before the runtime opens its fds: inherited sockets are at fds 3, 4, …
    let mut builder = Handover::builder()
        .no_signals()
        .ready_timeout(Duration::from_secs(30));
    if let Some(path) = &args.takeover {
        builder = builder.takeover(path);
    }
    if let Some(path) = &args.pid_file {
        builder = builder.pid_file(path);
    }
    let handover = match builder.build() {
        Ok(handover) => handover,
        Err(e) => return fail(&e),
    };
    let generation = handover.generation();
    // Two workers, like a server on this 2-core machine (the hello example).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&e),
    };
    let listener = {
        let _context = runtime.enter();
        match handover.tokio_tcp_listener("web", (Ipv4Addr::LOCALHOST, 0)) {
            Ok(listener) => listener,
            Err(e) => return fail(&e),
        }
    };
    let accepting = runtime.spawn(accept_until_drained(listener, handover.drain_signal()));
    let ready = now_ns();
    if let Err(e) = handover.ready() {
        return fail(&e);
    }
    if let Err(e) = results::append(&args.results, "ready", generation, &[ready]) {
        return fail(&e);
    }
    let successor = handover.is_successor() || handover.took_over();
    if successor && !chain::wait_parent_gone(parent, Duration::from_secs(10)) {
        return fail(&"the old generation did not exit within 10 s");
    }
    if generation >= args.runs {
        return match results::append(&args.results, "done", generation, &[]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    if args.takeover.is_some() {
        // The next generation, a child only so that it can wait for this one
        // to exit; it finds the takeover socket live and takes over.
        let next = std::env::current_exe().and_then(|exe| {
            std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .spawn()
        });
        if let Err(e) = next {
            return fail(&format!("cannot start the next generation: {e}"));
        }
    } else if let Err(e) = handover.upgrade() {
        // upgrade() blocks; this thread is not one of the runtime's workers.
        return fail(&e);
    }
    let stopped = match runtime.block_on(accepting) {
        Ok(stamp) => stamp,
        Err(e) => return fail(&e),
    };
    match results::append(&args.results, "stopped", generation, &[stopped]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}
