//! `peer-holder`: a parent that holds the listening socket and restarts its
//! server child sequentially — the systemfd / catflap style, for the comparison.
//!
//! It binds `--listen` once (backlog 1024) and runs the command after `--` as its
//! child with the socket at fd 3 and systemd's socket-activation variables
//! (`LISTEN_FDS=1`, `LISTEN_FDNAMES=web`, `LISTEN_PID` = the child's own pid),
//! started by [`handover_mechanism::child`], the same spawn the library and the
//! supervisor use. The child's start-up delay is the child's own option (e.g.
//! `hello --startup-delay 1s`).
//!
//! - SIGHUP: SIGTERM the child, wait for it to exit (SIGKILL after
//!   `--stop-timeout`), start a new one. The socket stays open all along, so no
//!   connection is refused: clients wait in the accept queue for the whole
//!   start-up of the new child.
//! - SIGTERM / SIGINT / SIGQUIT: stop the child the same way, then exit.
//! - The child exiting on its own: the holder exits with status 1.
//!
//! ```text
//! peer-holder --listen 127.0.0.1:8080 --pid-file holder.pid -- \
//!     hello --startup-delay 1s --pid-file hello.pid
//! ```

use std::ffi::OsString;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use handover_mechanism::child::{self, Child, Program};
use handover_peers::{bind, remove_pid_file_if_holds, write_pid_file};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;

/// Holds the socket; restarts the child on SIGHUP, one after the other.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to bind once and pass to every child as fd 3 ("web").
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Write the holder's own pid here.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// How long a child may take to exit after SIGTERM before it is killed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    stop_timeout: Duration,
    /// The server command (program and arguments).
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("peer-holder: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> io::Result<ExitCode> {
    let pid = std::process::id();
    let listener = bind(args.listen, false)?;
    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGCHLD])?;
    let mut child = spawn(&listener, &args.command)?;
    if let Some(path) = &args.pid_file {
        write_pid_file(path, pid)?;
    }
    eprintln!(
        "peer-holder: pid {pid} holds http://{}, child {}",
        args.listen,
        child.pid()
    );
    let code = 'signals: loop {
        for signal in signals.wait() {
            match signal {
                SIGHUP => {
                    let old = child.pid();
                    stop(&mut child, args.stop_timeout)?;
                    child = spawn(&listener, &args.command)?;
                    eprintln!("peer-holder: restarted child {old} as {}", child.pid());
                }
                SIGCHLD => {
                    if let Some(status) = child.exited()? {
                        eprintln!(
                            "peer-holder: child {} exited on its own: {status}",
                            child.pid()
                        );
                        break 'signals ExitCode::FAILURE;
                    }
                }
                _ => {
                    stop(&mut child, args.stop_timeout)?;
                    break 'signals ExitCode::SUCCESS;
                }
            }
        }
    };
    if let Some(path) = &args.pid_file {
        remove_pid_file_if_holds(path, pid);
    }
    Ok(code)
}

/// Starts the command with the socket at fd 3 and `LISTEN_*` set for it; the
/// program is looked up in `PATH` unless it names a path.
fn spawn(listener: &TcpListener, command: &[OsString]) -> io::Result<Child> {
    let (first, _) = command
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no command given"))?;
    let mut program = Program::new(resolve(first)?);
    program.args = command.to_vec();
    child::spawn(&program, &[("web", listener.as_fd())], &[])
}

fn resolve(name: &OsString) -> io::Result<PathBuf> {
    let path = PathBuf::from(name);
    if path.components().count() > 1 {
        return Ok(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(&path))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{name:?} not in PATH")))
}

/// SIGTERM, wait for the exit; SIGKILL after `timeout`.
fn stop(child: &mut Child, timeout: Duration) -> io::Result<()> {
    if child.exited()?.is_some() {
        return Ok(());
    }
    let _ = child.signal(libc::SIGTERM);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if child.exited()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "peer-holder: child {} did not stop in {timeout:?}; killing it",
        child.pid()
    );
    child.kill_and_reap();
    Ok(())
}
