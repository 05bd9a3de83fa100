//! `peer-plain`: a server for the *naive restart* row of the comparison.
//!
//! It initialises (`--startup-delay`), then binds its own socket (as most
//! applications do: listen once ready), writes `--pid-file`, and serves. On
//! SIGTERM it stops accepting — closing the socket, so new connections are
//! refused until the next process has started — finishes in-flight requests
//! (hyper graceful shutdown; idle keep-alive connections are closed) and exits.
//!
//! The upgrade is done from outside: `kill -TERM`, wait for the exit, start the
//! new process, wait for its PID file.
//!
//! ```text
//! peer-plain --listen 127.0.0.1:8080 --startup-delay 1s --pid-file plain.pid
//! ```

use std::process::ExitCode;

use clap::Parser;
use handover_peers::{
    bind, remove_pid_file_if_holds, serve, stop_signal, write_pid_file, ServerArgs,
};
use tokio_stream::wrappers::TcpListenerStream;

/// Naive-restart peer: binds its own socket after start-up, stops on SIGTERM.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
}

fn main() -> ExitCode {
    let args = Args::parse().server;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("peer-plain: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("peer-plain: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: ServerArgs) -> std::io::Result<()> {
    let pid = std::process::id();
    let stop = stop_signal()?;
    tokio::time::sleep(args.startup_delay).await;
    let listener = tokio::net::TcpListener::from_std(bind(args.listen, false)?)?;
    if let Some(path) = &args.pid_file {
        write_pid_file(path, pid)?;
    }
    eprintln!("peer-plain: pid {pid} serving on http://{}", args.listen);
    let drained = serve(TcpListenerStream::new(listener), stop, args.drain_timeout).await;
    if let Some(path) = &args.pid_file {
        remove_pid_file_if_holds(path, pid);
    }
    eprintln!(
        "peer-plain: pid {pid} stopped (clean drain: {})",
        drained.clean
    );
    Ok(())
}
