//! `handover`: the command-line face of the toolkit.
//!
//! - `handover check` drives load at a server while running its upgrade command,
//!   and proves (or disproves) that no request failed.
//! - `handover run -- CMD` supervises an unmodified server: it holds the sockets
//!   and replaces the server with zero downtime on `handover upgrade` or SIGHUP;
//!   `handover status` and `handover stop` talk to it.
//!
//! Each subcommand lives in its own module; this file only dispatches.

#![forbid(unsafe_code)]
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use handover_wire::control::Request;

mod check;
mod supervise;

/// Zero-downtime upgrades for network servers.
#[derive(Debug, Parser)]
#[command(name = "handover", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Drive load at a server while upgrading it; report every failure.
    Check(check::Args),
    /// Run a server with sockets held for it, upgradable with zero downtime.
    Run(supervise::RunArgs),
    /// Upgrade the server under a running supervisor, or a library process
    /// (`--socket`); show each step, exit 1 with the reason on rollback.
    /// `--supervisor`: re-execute the supervisor itself instead.
    Upgrade(supervise::UpgradeArgs),
    /// Show a running supervisor's children, sockets and last upgrades, or a
    /// library process's state.
    Status(supervise::StatusArgs),
    /// Stop the server gracefully (then the supervisor).
    Stop(supervise::ClientArgs),
    /// Apply a new configuration in place: a library process runs its reload
    /// hook and reports the result; a supervisor sends its child the reload
    /// signal (`--reload-signal`). Exit 1 with the reason if it was refused.
    Reload(supervise::ClientArgs),
    /// Print the supervisor state version this binary reads and writes (a
    /// self-upgrade asks the new binary before switching to it).
    #[command(hide = true)]
    SupervisorStateVersion,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => check::main(args),
        Command::Run(args) => supervise::run(args),
        Command::Upgrade(args) if args.supervisor => supervise::upgrade_supervisor(args.client),
        Command::Upgrade(args) => supervise::client(Request::Upgrade, args.client),
        Command::Status(args) => supervise::status(args),
        Command::Stop(args) => supervise::client(Request::Stop, args),
        Command::Reload(args) => supervise::client(Request::Reload, args),
        Command::SupervisorStateVersion => {
            println!("{}", handover_supervisor::STATE_VERSION);
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("handover: {error:#}");
            ExitCode::from(2)
        }
    }
}
