//! `peer-holder`: a parent that holds the listening socket and restarts its
//! server child sequentially — the systemfd / catflap style, for the comparison.
//!
//! It binds `--listen` once (backlog 1024) and runs the command after `--` as its
//! child with the socket at fd 3 and systemd's socket-activation variables
//! (`LISTEN_FDS=1`, `LISTEN_FDNAMES=web`, `LISTEN_PID` = the child's own pid, set
//! by `sh -c 'export LISTEN_PID=$$; exec "$@"'`). The child's start-up delay is
//! the child's own option (e.g. `hello --startup-delay 1s`).
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
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use handover_peers::{bind, remove_pid_file_if_holds, write_pid_file};
use rustix::process::{kill_process, Pid, Signal};
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
        child.id()
    );
    let code = 'signals: loop {
        for signal in signals.wait() {
            match signal {
                SIGHUP => {
                    let old = child.id();
                    stop(&mut child, args.stop_timeout)?;
                    child = spawn(&listener, &args.command)?;
                    eprintln!("peer-holder: restarted child {old} as {}", child.id());
                }
                SIGCHLD => {
                    if let Some(status) = child.try_wait()? {
                        eprintln!(
                            "peer-holder: child {} exited on its own: {status}",
                            child.id()
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

/// Starts the command with the socket at fd 3 and `LISTEN_*` set for it.
fn spawn(listener: &TcpListener, command: &[OsString]) -> io::Result<Child> {
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"export LISTEN_PID=$$; exec "$@""#)
        .arg("sh")
        .args(command)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "web")
        .env_remove("LISTEN_PID")
        .stdin(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only calls
    // dup2 and fcntl, which are async-signal-safe; it allocates nothing and
    // touches no state shared with other threads. `fd` is the listener's open
    // descriptor, which the child inherits from the fork.
    unsafe {
        cmd.pre_exec(move || {
            let moved = if fd == 3 {
                // Already in place: only clear its close-on-exec flag.
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                // dup2 gives the new fd 3 no close-on-exec flag.
                libc::dup2(fd, 3)
            };
            if moved == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// SIGTERM, wait for the exit; SIGKILL after `timeout`.
fn stop(child: &mut Child, timeout: Duration) -> io::Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    if let Some(pid) = Pid::from_raw(child.id() as i32) {
        let _ = kill_process(pid, Signal::TERM);
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "peer-holder: child {} did not stop in {timeout:?}; killing it",
        child.id()
    );
    child.kill()?;
    child.wait()?;
    Ok(())
}
