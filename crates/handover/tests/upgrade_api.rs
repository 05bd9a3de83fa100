//! `Handover::upgrade` against real successor processes: each failure is reported
//! with its cause, the caller keeps serving, nothing is left behind.

use std::path::Path;
use std::time::{Duration, Instant};

use handover::{DrainReason, Error, Handover, Phase, SuccessorFailure};

fn handover(program: &str, args: &[&str], ready_timeout: Duration) -> Handover {
    let handover = Handover::builder()
        .no_signals()
        .program(program)
        .args(args.iter().copied())
        .ready_timeout(ready_timeout)
        .build()
        .unwrap();
    handover.tcp_listener("web", "127.0.0.1:0").unwrap();
    handover.ready().unwrap();
    handover
}

fn gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn failed_pid(error: &Error) -> u32 {
    match error {
        Error::SuccessorFailed { pid, .. } => *pid,
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn upgrade_before_ready_is_refused() {
    let handover = Handover::builder().no_signals().build().unwrap();
    assert!(matches!(handover.upgrade(), Err(Error::NotReady)));
}

#[test]
fn a_missing_binary_is_reported_and_nothing_changes() {
    let handover = handover("/nonexistent/server", &["server"], Duration::from_secs(5));
    for _ in 0..2 {
        let error = handover.upgrade().unwrap_err();
        assert!(matches!(error, Error::Spawn { .. }), "{error}");
        assert!(error.to_string().contains("No such file"), "{error}");
    }
    assert!(!handover.drain_signal().is_draining());
}

#[test]
fn a_successor_that_exits_is_reported_with_its_status() {
    let handover = handover("/bin/sh", &["sh", "-c", "exit 3"], Duration::from_secs(30));
    let error = handover.upgrade().unwrap_err();
    assert!(
        matches!(
            error,
            Error::SuccessorFailed {
                why: SuccessorFailure::Exited(3),
                ..
            }
        ),
        "{error}"
    );
    assert!(gone(failed_pid(&error)), "reaped");
    assert!(!handover.drain_signal().is_draining());
}

#[test]
fn a_successor_killed_by_a_signal_is_reported() {
    let handover = handover(
        "/bin/sh",
        &["sh", "-c", "kill -9 $$"],
        Duration::from_secs(30),
    );
    let error = handover.upgrade().unwrap_err();
    assert!(
        matches!(
            error,
            Error::SuccessorFailed {
                why: SuccessorFailure::Signaled(9),
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn a_successor_that_never_gets_ready_is_killed_at_the_timeout() {
    let timeout = Duration::from_millis(300);
    let handover = handover("/bin/sleep", &["sleep", "30"], timeout);
    let started = Instant::now();
    let error = handover.upgrade().unwrap_err();
    assert!(started.elapsed() >= timeout);
    assert!(
        matches!(error, Error::SuccessorFailed { why: SuccessorFailure::Timeout(t), .. } if t == timeout),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .ends_with("was not ready within 300ms and was killed; rolled back, still serving"),
        "{error}"
    );
    assert!(gone(failed_pid(&error)), "killed and reaped");
}

/// Starts an upgrade on another thread and returns once its successor is forked.
fn upgrade_in_background(
    handover: &Handover,
) -> (std::thread::JoinHandle<Result<u32, Error>>, u32) {
    let thread = {
        let handover = handover.clone();
        std::thread::spawn(move || handover.upgrade())
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Phase::Upgrading { successor } = handover.phase() {
            if successor != 0 {
                return (thread, successor);
            }
        }
        assert!(Instant::now() < deadline, "the upgrade never started");
        std::thread::yield_now();
    }
}

#[test]
fn only_one_upgrade_at_a_time() {
    let handover = handover("/bin/sleep", &["sleep", "30"], Duration::from_secs(1));
    let (first, successor) = upgrade_in_background(&handover);
    let error = handover.upgrade().unwrap_err();
    assert!(
        matches!(error, Error::UpgradeInProgress(pid) if pid == successor),
        "{error}"
    );
    assert!(error.to_string().contains("already under way"), "{error}");
    let first = first.join().unwrap().unwrap_err();
    assert_eq!(failed_pid(&first), successor);
    assert_eq!(handover.phase(), Phase::Serving, "rolled back");
}

#[test]
fn stop_during_an_upgrade_abandons_the_successor() {
    let handover = handover("/bin/sleep", &["sleep", "30"], Duration::from_secs(30));
    let (upgrade, successor) = upgrade_in_background(&handover);
    handover.stop();
    let error = upgrade.join().unwrap().unwrap_err();
    assert!(
        matches!(
            error,
            Error::SuccessorFailed {
                why: SuccessorFailure::Aborted,
                ..
            }
        ),
        "{error}"
    );
    assert!(gone(successor));
    assert_eq!(
        handover.drain_signal().get().unwrap().reason,
        DrainReason::Stop
    );
    assert_eq!(handover.phase(), Phase::Draining(DrainReason::Stop));
}

/// A successor that checks the hand-off contract (docs/PROTOCOL.md) and then
/// reports READY=1 on NOTIFY_SOCKET.
const CONTRACT_CHECKER: &str = r#"
import os, socket, sys
expected_port = int(sys.argv[1])
problems = []
if os.environ.get("LISTEN_PID") != str(os.getpid()): problems.append("LISTEN_PID")
if os.environ.get("LISTEN_FDS") != "3": problems.append("LISTEN_FDS")
if os.environ.get("LISTEN_FDNAMES") != "web:dns:ctl": problems.append("LISTEN_FDNAMES")
if os.environ.get("HANDOVER_GENERATION") != "1": problems.append("HANDOVER_GENERATION")
if os.environ.get("HANDOVER_PARENT_PID") != str(os.getppid()): problems.append("HANDOVER_PARENT_PID")
web = socket.socket(fileno=3)
if web.type != socket.SOCK_STREAM or web.getsockname()[1] != expected_port: problems.append("fd 3")
if web.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) != 1: problems.append("fd 3 listening")
dns = socket.socket(fileno=4)
if dns.type != socket.SOCK_DGRAM or dns.getsockname()[1] != expected_port: problems.append("fd 4")
ctl = socket.socket(fileno=5)
if ctl.family != socket.AF_UNIX or ctl.getsockname() != sys.argv[2]: problems.append("fd 5")
if ctl.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) != 1: problems.append("fd 5 listening")
if sorted(os.listdir("/proc/self/fd")) != sorted(["0", "1", "2", "3", "4", "5", str(os.open("/dev/null", 0))]): problems.append("extra fds")
if problems:
    sys.stderr.write("contract broken: %s\n" % problems); sys.exit(2)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"STATUS=checked\nREADY=1\n", os.environ["NOTIFY_SOCKET"])
__import__("time").sleep(30)
"#;

#[test]
fn a_ready_successor_is_committed_and_the_contract_holds() {
    let dir = std::env::temp_dir().join(format!("handover-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("app.pid");
    let ctl = dir.join("ctl.sock");
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let handover = Handover::builder()
        .no_signals()
        .program("/usr/bin/env")
        .args([
            "env",
            "python3",
            "-c",
            CONTRACT_CHECKER,
            &port.to_string(),
            ctl.to_str().unwrap(),
        ])
        .pid_file(&pid_file)
        // This test ends the successor itself: no probation watching (and
        // reaping) it meanwhile. Probation is tested in hello/tests/probation.rs.
        .probation(Duration::ZERO)
        .build()
        .unwrap();
    handover.tcp_listener("web", ("127.0.0.1", port)).unwrap();
    handover.udp_socket("dns", ("127.0.0.1", port)).unwrap();
    handover.unix_listener("ctl", &ctl).unwrap();
    handover.ready().unwrap();
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        std::process::id().to_string()
    );

    let pid = handover
        .upgrade()
        .expect("the successor checks the contract and says READY=1");
    let order = handover.drain_signal().get().expect("committed: drain");
    assert_eq!(order.reason, DrainReason::Upgraded { successor: pid });
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string()
    );
    assert!(matches!(handover.upgrade(), Err(Error::Draining(_))));
    // The successor is ours to end.
    end(pid);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Ends a successor this test process started, by pid, and reaps it.
fn end(pid: u32) {
    use rustix::process::{kill_process, waitpid, Pid, Signal, WaitOptions};
    let pid = Pid::from_raw(pid as i32).unwrap();
    kill_process(pid, Signal::KILL).unwrap();
    waitpid(Some(pid), WaitOptions::empty()).unwrap();
}
