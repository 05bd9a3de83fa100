//! `handover-bench`: the speed numbers of issue 2, measured (never asserted).
//!
//! | subcommand | what it measures |
//! |---|---|
//! | `handoff` | one whole `upgrade()` handing over N named TCP listeners, N = 1000 and 1 |
//! | `ready-to-stop` | successor's `ready()` → the old process's accept loop has stopped |
//! | `latency` | p99 latency in upgrade windows vs steady state, and throughput, on `hello` |
//! | `takeover` | the wire protocol's takeover: 1000 / 10 000 sockets, 64 MiB of state |
//! | `rescue` | `handover run`'s keep-alive rescue: added latency, supervisor CPU / RSS, time in the data path |
//! | `supervisor-footprint` | `handover run`'s fds, RSS and children over 1000 upgrades under keep-alive load |
//! | `all` | the first three with their defaults, as one Markdown section |
//!
//! `handoff` and `ready-to-stop` run a *chain* of server generations of this
//! very binary (hidden `chain-*` subcommands, see [`chain`]); `latency` drives
//! the `hello` example, which must sit next to this binary:
//!
//! ```text
//! cargo build --release -p hello -p handover-bench && target/release/handover-bench all
//! ```
//!
//! `rescue` drives `handover run` (the `handover` binary next to this one) with
//! the Go server of `crates/cli/tests/fixtures` (see [`rescue`]):
//!
//! ```text
//! cargo build --release -p handover-cli -p handover-bench && target/release/handover-bench rescue
//! ```
//!
//! `supervisor-footprint` drives `handover run` too, with the Python notify
//! server of the same fixtures (see [`footprint`]):
//!
//! ```text
//! cargo build --release -p handover-cli -p handover-bench && target/release/handover-bench supervisor-footprint
//! ```
//!
//! Every process a benchmark starts is reaped before it returns (this process
//! is a child subreaper; see [`procs`]), and every wait has a time limit.

#![forbid(unsafe_code)]

mod chain;
mod cleanup;
mod clock;
mod footprint;
mod handoff;
mod latency;
mod machine;
mod migrate;
mod procs;
mod ready_to_stop;
mod rescue;
mod results;
mod scratch;
mod stats;
mod takeover;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Speed benchmarks of the handover library (see docs/BENCHMARKS.md).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Time of a whole upgrade() handing over N named sockets (and 1, as baseline).
    Handoff(handoff::Args),
    /// Time from the successor's ready() until the old process stops accepting.
    ReadyToStop(ready_to_stop::Args),
    /// Request latency in upgrade windows vs steady state, and throughput, on `hello`.
    Latency(latency::Args),
    /// Keep-alive rescue of `handover run`: added latency, supervisor CPU / RSS, data-path time.
    Rescue(rescue::Args),
    /// `handover run` over N upgrades under keep-alive load: fds, RSS, children.
    SupervisorFootprint(footprint::Args),
    /// The wire protocol's takeover: N sockets from connect to acknowledged, 64 MiB of state.
    Takeover(takeover::Args),
    /// Live connection migration at an upgrade of `hello --echo`: time, pause, memory.
    Migrate(migrate::Args),
    /// All three with default parameters, printed as one Markdown section.
    All,
    /// A generation of the `handoff` chain (started by `handoff`).
    #[command(hide = true)]
    ChainHandoff(handoff::ChainArgs),
    /// A generation of the `ready-to-stop` chain (started by `ready-to-stop`).
    #[command(hide = true)]
    ChainReadyToStop(ready_to_stop::ChainArgs),
}

fn main() -> ExitCode {
    // First thing: a successor's start-up is part of what `handoff` measures.
    let started = clock::now_ns();
    let cli = Cli::parse();
    let result = match &cli.command {
        // A chain process: measured, so nothing extra (no cleanup thread).
        Command::ChainHandoff(args) => return handoff::chain(args, started),
        Command::ChainReadyToStop(args) => return ready_to_stop::chain(args),
        command => cleanup::install().and_then(|()| match command {
            Command::Handoff(args) => handoff::run(args),
            Command::ReadyToStop(args) => ready_to_stop::run(args),
            Command::Latency(args) => latency::run(args),
            Command::Rescue(args) => rescue::run(args),
            Command::SupervisorFootprint(args) => footprint::run(args),
            Command::Takeover(args) => takeover::run(args),
            Command::Migrate(args) => migrate::run(args),
            _ => all(),
        }),
    };
    match result {
        Ok(markdown) => {
            println!("{markdown}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("handover-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every benchmark with its defaults.
fn all() -> Result<String, String> {
    let parse = |args: &[&str]| Cli::try_parse_from(args).map_err(|e| e.to_string());
    let machine = machine::describe();
    let meter = machine::CpuMeter::start();
    let mut sections = Vec::new();
    for args in [
        ["handover-bench", "handoff"],
        ["handover-bench", "ready-to-stop"],
        ["handover-bench", "latency"],
    ] {
        let section = match parse(&args)?.command {
            Command::Handoff(args) => handoff::run(&args)?,
            Command::ReadyToStop(args) => ready_to_stop::run(&args)?,
            Command::Latency(args) => latency::run(&args)?,
            _ => unreachable!("only benchmark subcommands are listed"),
        };
        sections.push(section);
    }
    Ok(format!(
        "## Results\n\nMachine:\n\n{machine}- load average at the end: {}\n\
         - CPU time used by other processes during the run: {:.0} % of the machine\n\nCommand:\n\n```sh\n\
         cargo build --release -p hello -p handover-bench && target/release/handover-bench all\n\
         ```\n\n{}",
        machine::load_average(),
        meter.others() * 100.0,
        sections.join("\n")
    ))
}
