//! `peer-reuseport`: a server for the *SO_REUSEPORT overlap* row of the comparison.
//!
//! It initialises (`--startup-delay`), then binds its **own** socket with
//! `SO_REUSEPORT` next to the running version's, writes `--pid-file` once it
//! accepts, and serves. The upgrade, done from outside: start a new instance,
//! wait until the PID file names it, SIGTERM the old one.
//!
//! On SIGTERM the old instance closes its listening socket at once and finishes
//! its in-flight requests (hyper graceful shutdown). The kernel hashes each new
//! connection to one of the `SO_REUSEPORT` sockets when the handshake completes;
//! connections still waiting in the closed socket's accept queue are reset — the
//! loss this row exists to show.
//!
//! ```text
//! peer-reuseport --listen 127.0.0.1:8080 --startup-delay 1s --pid-file rp.pid
//! ```

use std::process::ExitCode;

use clap::Parser;
use handover_peers::{
    bind, remove_pid_file_if_holds, serve, stop_signal, write_pid_file, ServerArgs,
};
use tokio_stream::wrappers::TcpListenerStream;

/// SO_REUSEPORT peer: binds its own socket beside the old version's.
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
            eprintln!("peer-reuseport: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("peer-reuseport: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: ServerArgs) -> std::io::Result<()> {
    let pid = std::process::id();
    let stop = stop_signal()?;
    tokio::time::sleep(args.startup_delay).await;
    let listener = tokio::net::TcpListener::from_std(bind(args.listen, true)?)?;
    if let Some(path) = &args.pid_file {
        write_pid_file(path, pid)?;
    }
    eprintln!(
        "peer-reuseport: pid {pid} serving on http://{}",
        args.listen
    );
    let drained = serve(TcpListenerStream::new(listener), stop, args.drain_timeout).await;
    if let Some(path) = &args.pid_file {
        remove_pid_file_if_holds(path, pid);
    }
    eprintln!(
        "peer-reuseport: pid {pid} stopped (clean drain: {})",
        drained.clean
    );
    Ok(())
}
