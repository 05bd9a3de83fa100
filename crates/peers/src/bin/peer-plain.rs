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

use clap::Parser;
use handover_peers::{main_binding_own_socket, ServerArgs};

/// Naive-restart peer: binds its own socket after start-up, stops on SIGTERM.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
}

fn main() -> std::process::ExitCode {
    main_binding_own_socket("peer-plain", Args::parse().server, false)
}
