//! `handover run` SIGKILLed under load, then started again with the same
//! arguments: it takes the listening socket back from the orphaned child,
//! starts its own, stops the orphan — and nobody is refused. And where it may
//! not take the socket (another user), it says why and what to do.

mod run_support;

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use run_support::fresh::{ask, FreshLoad};
use run_support::*;
use rustix::process::Signal;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// `handover run` again, with the first one's arguments and PID file.
fn start_again(supervisor: &Supervisor, listen: &str, log: &str, as_nobody: bool) -> Child {
    let mut command = if as_nobody {
        let mut command = Command::new("python3");
        command.args([
            "-c",
            "import os, sys\nos.setgroups([]); os.setgid(65534); os.setuid(65534)\nos.execv(sys.argv[1], sys.argv[1:])",
            HANDOVER,
        ]);
        command
    } else {
        Command::new(HANDOVER)
    };
    command
        .args(["run", "--listen", listen, "--pid-file"])
        .arg(&supervisor.pid_file)
        .args(["--probation", "100ms", "--ready", "notify", "--"])
        .args(["python3", fixture("notify_server.py").to_str().unwrap()])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(supervisor.scratch.path(log)).unwrap())
        .spawn()
        .unwrap()
}

fn first_supervisor(label: &str) -> (Supervisor, u32) {
    let supervisor = Supervisor::start(
        label,
        &["--ready", "notify"],
        &["python3", fixture("notify_server.py").to_str().unwrap()],
    );
    let orphan = supervisor.current_pid();
    (supervisor, orphan)
}

fn kill_the_supervisor(supervisor: &mut Supervisor) {
    signal(supervisor.process.id(), Signal::KILL);
    supervisor.process.wait().unwrap();
}

#[test]
fn a_supervisor_started_again_after_a_sigkill_takes_the_sockets_back_and_nobody_is_refused() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (mut first, orphan) = first_supervisor("recovery");
    let began = Instant::now();
    let load = FreshLoad::start(first.addr, 3);
    load.wait_for_answers_after(began, 30);
    kill_the_supervisor(&mut first);
    assert!(!exited(orphan), "the orphan serves on");

    let started = Instant::now();
    let mut second = start_again(&first, "web=127.0.0.1:0", "second.log", false);
    let new = wait_until(
        "a child of the new supervisor",
        Duration::from_secs(30),
        || {
            first
                .status()
                .filter(|s| s["supervisor_pid"] == second.id())
                .and_then(|s| s["current"]["pid"].as_u64())
                .map(|pid| pid as u32)
        },
    );
    let recovered_in = started.elapsed();
    assert_ne!(new, orphan);
    wait_until("the orphan to go", Duration::from_secs(30), || {
        exited(orphan).then_some(())
    });
    load.wait_for_answers_after(Instant::now(), 100);
    let answers = load.stop();
    let failed: Vec<_> = answers.iter().filter(|a| a.pid.is_err()).collect();
    let log = std::fs::read_to_string(first.scratch.path("second.log")).unwrap_or_default();
    assert!(failed.is_empty(), "{failed:?}\n{log}");
    assert!(
        answers.iter().any(|a| a.pid == Ok(new)),
        "the new child answered"
    );
    assert!(log.contains("taking their sockets back"), "{log}");
    assert_eq!(
        descendants(second.id()),
        vec![new],
        "exactly one child left"
    );
    eprintln!("from the new start to its child current: {recovered_in:?}");

    // A clean stop leaves no state to recover.
    let output = first.client("stop", &[]);
    assert!(output.status.success(), "{}", text(&output));
    second.wait().unwrap();
    assert!(!std::path::Path::new(&format!("{}.control.state", first.pid_file.display())).exists());
}

#[test]
fn a_supervisor_that_may_not_take_the_sockets_back_says_why_and_the_orphan_serves_on() {
    if rustix::process::getuid().as_raw() != 0 {
        eprintln!("skipped: needs root to start the second supervisor as another user");
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (mut first, orphan) = first_supervisor("recovery-refused");
    // The second supervisor runs as nobody: it may read the state file but
    // not take root's sockets.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&first.scratch.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    kill_the_supervisor(&mut first);
    let mut second = start_again(&first, "web=127.0.0.1:0", "refused.log", true);
    let status = second.wait().unwrap();
    let log = std::fs::read_to_string(first.scratch.path("refused.log")).unwrap_or_default();
    assert!(!status.success(), "{log}");
    assert!(log.contains(&format!("kill {orphan}")), "{log}");
    assert!(
        log.contains("not permitted") || log.contains("Permission denied"),
        "{log}"
    );
    assert_eq!(ask(first.addr).pid, Ok(orphan), "the orphan serves on");
    signal(orphan, Signal::KILL);
}

#[test]
fn without_the_state_file_the_address_is_still_taken_by_the_orphan() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The proof that the state file is what recovers: without it, the second
    // supervisor finds its address taken — the failure users met before.
    let port = (20_000..30_000)
        .map(|p| p + (std::process::id() % 5_000) as u16)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .unwrap();
    let listen = format!("web=127.0.0.1:{port}");
    let mut first = Supervisor::start_listening(
        "recovery-no-state",
        &listen,
        &["--ready", "notify"],
        &["python3", fixture("notify_server.py").to_str().unwrap()],
    );
    let orphan = first.current_pid();
    kill_the_supervisor(&mut first);
    std::fs::remove_file(format!("{}.control.state", first.pid_file.display())).unwrap();
    let mut second = start_again(&first, &listen, "no-state.log", false);
    let status = second.wait().unwrap();
    let log = std::fs::read_to_string(first.scratch.path("no-state.log")).unwrap_or_default();
    assert!(!status.success(), "{log}");
    assert!(log.contains("in use"), "{log}");
    signal(orphan, Signal::KILL);
}
