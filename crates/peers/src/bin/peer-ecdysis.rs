//! `peer-ecdysis`: a server on cloudflare's [`ecdysis`] crate (the Rust port of
//! tableflip), for the comparison, upgraded the way its README and example do it.
//!
//! - The listening socket comes from `TokioEcdysisBuilder::build_listen_tcp`:
//!   freshly bound by the first process, inherited by every upgraded child.
//! - SIGHUP upgrades: ecdysis fork/execs the same binary with the same argv,
//!   passes the socket, and waits for the child's `ready()` (a pipe). ecdysis
//!   1.1.1 kills a child that is not ready within 5 s (hard-coded), so
//!   `--startup-delay` must stay below that.
//! - The child initialises (`--startup-delay`), starts accepting, then calls
//!   `ready()`, which writes `--pid-file` and tells the parent.
//! - The parent then stops its listener stream and finishes its connections with
//!   hyper's graceful shutdown (idle keep-alive connections are closed at once),
//!   as the crate's example does with its own connections.
//! - SIGTERM / SIGQUIT / SIGINT: graceful stop.
//!
//! ```text
//! peer-ecdysis --listen 127.0.0.1:8080 --startup-delay 1s --pid-file /abs/ecdysis.pid
//! ```
//!
//! The binary must be started by an absolute path (or from `PATH`): ecdysis
//! re-executes `argv[0]` in the current directory.

use std::io;
use std::process::ExitCode;

use clap::Parser;
use ecdysis::tokio_ecdysis::{SignalKind, StopOnShutdown, TokioEcdysisBuilder};
use handover_peers::{remove_pid_file_if_holds, serve, ServerArgs};

/// ecdysis peer: upgrades itself on SIGHUP with cloudflare's ecdysis crate.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
}

fn main() -> ExitCode {
    let args = Args::parse().server;
    log::set_logger(&STDERR_LOGGER).expect("the only logger");
    log::set_max_level(log::LevelFilter::Info);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("peer-ecdysis: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("peer-ecdysis: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: ServerArgs) -> io::Result<()> {
    let pid = std::process::id();
    let mut builder = TokioEcdysisBuilder::new(SignalKind::hangup())?;
    builder.stop_on_signal(SignalKind::terminate())?;
    builder.stop_on_signal(SignalKind::quit())?;
    builder.stop_on_signal(SignalKind::interrupt())?;
    // ecdysis writes the PID file next to a temporary file in its directory, so
    // the path needs a directory part.
    let pid_file = args
        .pid_file
        .as_deref()
        .map(std::path::absolute)
        .transpose()?;
    if let Some(path) = &pid_file {
        builder.set_pid_file(path);
    }
    let incoming = builder.build_listen_tcp(StopOnShutdown::Yes, args.listen, |socket, addr| {
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket.into())
    })?;
    let role = if builder.is_child() { "child" } else { "first" };
    tokio::time::sleep(args.startup_delay).await;

    // Accepting starts before ready(), as in ecdysis's example: the parent stops
    // accepting as soon as it hears of the readiness.
    let server = tokio::spawn(serve(incoming, std::future::pending(), args.drain_timeout));
    let (_ecdysis, exit) = builder.ready()?;
    eprintln!(
        "peer-ecdysis: pid {pid} ({role}) serving on http://{}",
        args.listen
    );
    match exit.await {
        Ok((mode, reason)) => {
            eprintln!("peer-ecdysis: pid {pid} stopping: {mode:?} ({reason:?})");
        }
        Err(error) => {
            // The listener stream was not stopped: there is nothing to drain into.
            server.abort();
            return Err(io::Error::other(format!("ecdysis failed: {error}")));
        }
    }
    let drained = server.await.map_err(io::Error::other)?;
    if let Some(path) = &pid_file {
        remove_pid_file_if_holds(path, pid);
    }
    eprintln!(
        "peer-ecdysis: pid {pid} stopped (clean drain: {})",
        drained.clean
    );
    Ok(())
}

/// ecdysis reports its upgrades through `log`: print them on stderr.
struct StderrLogger;

static STDERR_LOGGER: StderrLogger = StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            eprintln!(
                "peer-ecdysis[{}] {} {}: {}",
                std::process::id(),
                record.level(),
                record.target(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}
