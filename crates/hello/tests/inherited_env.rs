//! Garbage inherited state (systemd's LISTEN_* convention) gives a clear error or
//! is ignored as systemd specifies — never a panic, never a hang.
//!
//! A small Python launcher puts the fd in place and sets LISTEN_PID to its own
//! pid, which is `hello`'s pid after `execv`, exactly as a service manager does.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const LAUNCHER: &str = r#"
import os, socket, sys
kind, listen_pid, env = sys.argv[1], sys.argv[2], sys.argv[3]
exe = sys.argv[4:]
fd = None
if kind == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
elif kind == "listener":
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.bind(("127.0.0.1", 0)); s.listen(16)
    print("launcher-port", s.getsockname()[1], flush=True)
elif kind == "unlistened":
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.bind(("127.0.0.1", 0))
elif kind == "file":
    fd = os.open("/dev/null", os.O_RDONLY)
if kind in ("udp", "listener", "unlistened"):
    fd = s.fileno()
if fd == 3:
    os.set_inheritable(3, True)
elif fd is not None:
    os.dup2(fd, 3)  # the copy is inheritable
else:
    try: os.close(3)
    except OSError: pass
for pair in env.split(";"):
    if pair:
        k, v = pair.split("=", 1); os.environ[k] = v
os.environ["LISTEN_PID"] = str(os.getpid()) if listen_pid == "self" else listen_pid
os.execv(exe[0], exe)
"#;

struct Outcome {
    exited: Option<i32>,
    stdout: Vec<String>,
    stderr: String,
}

/// Runs hello under the launcher. Waits for it to exit, or — if it starts
/// serving — until it is ready, then ends it by pid.
fn launch(kind: &str, listen_pid: &str, env: &str) -> Outcome {
    let scratch = Scratch::new("env");
    let err_path = scratch.path("stderr");
    let mut child = Command::new("python3")
        .args([
            "-c",
            LAUNCHER,
            kind,
            listen_pid,
            env,
            env!("CARGO_BIN_EXE_hello"),
        ])
        .args(["--listen", "127.0.0.1:0"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("python3 is needed for this test");
    let pid = child.id();
    let mut stdout = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        let serving = line.starts_with("listening on");
        stdout.push(line);
        if serving {
            wait_until("hello to be ready", Duration::from_secs(20), || {
                let log = std::fs::read_to_string(&err_path).unwrap_or_default();
                log.contains("handover::handover: ready").then_some(())
            });
            signal(pid, rustix::process::Signal::KILL);
            break;
        }
    }
    let status = try_wait_until(Duration::from_secs(20), || child.try_wait().unwrap());
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("hello neither served nor exited")
    });
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert!(!stderr.contains("panicked"), "hello panicked:\n{stderr}");
    Outcome {
        exited: status.code(),
        stdout,
        stderr,
    }
}

fn assert_refuses(outcome: Outcome, message: &str) {
    assert_eq!(outcome.exited, Some(1), "stderr:\n{}", outcome.stderr);
    assert!(
        outcome.stderr.contains(message),
        "expected {message:?} in:\n{}",
        outcome.stderr
    );
    assert!(!outcome.stdout.iter().any(|l| l.starts_with("listening")));
}

#[test]
fn non_numeric_listen_fds_is_an_error() {
    assert_refuses(
        launch("listener", "self", "LISTEN_FDS=abc;LISTEN_FDNAMES=web"),
        "invalid inherited environment: LISTEN_FDS=\"abc\" is not a valid number",
    );
}

#[test]
fn non_numeric_listen_pid_is_an_error() {
    assert_refuses(
        launch("listener", "12ab", "LISTEN_FDS=1;LISTEN_FDNAMES=web"),
        "LISTEN_PID=\"12ab\" is not a valid number",
    );
}

#[test]
fn names_that_do_not_match_the_count_are_an_error() {
    assert_refuses(
        launch("listener", "self", "LISTEN_FDS=1;LISTEN_FDNAMES=web:admin"),
        "LISTEN_FDNAMES has 2 names but LISTEN_FDS is 1",
    );
}

#[test]
fn a_listed_fd_that_is_not_open_is_an_error() {
    assert_refuses(
        launch("none", "self", "LISTEN_FDS=1;LISTEN_FDNAMES=web"),
        "fd 3 is listed in LISTEN_FDS but is not an inherited open fd",
    );
}

#[test]
fn an_fd_that_is_not_a_socket_is_an_error() {
    assert_refuses(
        launch("file", "self", "LISTEN_FDS=1;LISTEN_FDNAMES=web"),
        "inherited fd 3 named \"web\" is not a socket",
    );
}

#[test]
fn a_socket_of_the_wrong_type_is_an_error() {
    assert_refuses(
        launch("udp", "self", "LISTEN_FDS=1;LISTEN_FDNAMES=web"),
        "inherited fd 3 named \"web\" is a UDP socket, not a TCP listener",
    );
    assert_refuses(
        launch("unlistened", "self", "LISTEN_FDS=1;LISTEN_FDNAMES=web"),
        "is a TCP socket that is not listening",
    );
}

#[test]
fn listen_fds_for_another_pid_is_ignored() {
    let outcome = launch("udp", "1", "LISTEN_FDS=1;LISTEN_FDNAMES=web");
    assert!(
        outcome.stdout.iter().any(|l| l.starts_with("listening on")),
        "{}",
        outcome.stderr
    );
}

#[test]
fn a_valid_socket_is_claimed_by_name() {
    let outcome = launch("listener", "self", "LISTEN_FDS=1;LISTEN_FDNAMES=web");
    let port = outcome.stdout[0]
        .strip_prefix("launcher-port ")
        .unwrap()
        .to_owned();
    assert!(
        outcome.stdout[1].contains(&format!("127.0.0.1:{port} ")),
        "hello serves on the inherited socket: {:?}\n{}",
        outcome.stdout,
        outcome.stderr
    );
}

#[test]
fn an_unclaimed_socket_is_closed_and_logged() {
    // No LISTEN_FDNAMES: systemd calls the socket "unknown", which hello never asks for.
    let outcome = launch("listener", "self", "LISTEN_FDS=1");
    let port = outcome.stdout[0]
        .strip_prefix("launcher-port ")
        .unwrap()
        .to_owned();
    assert!(
        !outcome.stdout[1].contains(&format!(":{port} ")),
        "{:?}",
        outcome.stdout
    );
    assert!(
        outcome
            .stderr
            .contains("inherited socket was not claimed; closed it name=\"unknown\""),
        "{}",
        outcome.stderr
    );
}
