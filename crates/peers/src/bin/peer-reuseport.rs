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

use clap::Parser;
use handover_peers::{main_binding_own_socket, ServerArgs};

/// SO_REUSEPORT peer: binds its own socket beside the old version's.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
}

fn main() -> std::process::ExitCode {
    main_binding_own_socket("peer-reuseport", Args::parse().server, true)
}
