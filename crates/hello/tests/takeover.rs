//! Takeovers of `hello`: the same command run again, from its own session,
//! takes the sockets and the state over the takeover socket — under load, mixed
//! with re-exec upgrades, and against every way a new version or a stranger
//! can fail or misbehave.

mod support;

use std::process::Command;
use std::time::Duration;

use handover_loadgen::{FailureKind, LiveStats, LoadThread, Report};
use rustix::process::Signal;
use support::*;

/// One test at a time: most of them put the machine (2 cores) under load.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn load(server: &Server) -> (LoadThread, LiveStats) {
    mixed_load(server.addr)
}

fn assert_no_failure(report: &Report, server: &Server) {
    assert_eq!(
        report.failure_count(),
        0,
        "{}\nfirst failures: {:#?}\nserver log:\n{}",
        report.summary(),
        report.first_failures(10),
        server.log_text()
    );
}

#[test]
fn twenty_takeovers_under_load_fail_no_request_and_keep_the_history() {
    let _turn = turn();
    let mut takeover = Takeover::start("takeover-load", &["--startup-delay", "300ms"]);
    let (load, stats) = load(&takeover.server);
    let mut pids = vec![takeover.server.current_pid().unwrap()];
    for round in 0..20 {
        let before = stats.successes();
        let (old, new) = takeover.take_over(&["--startup-delay", "300ms"]);
        assert_ne!(old, new, "round {round}: the serving pid changed");
        pids.push(new);
        assert!(
            stats.wait_for_successes(before + 50, Duration::from_secs(20)),
            "round {round}: load stalled"
        );
    }
    let report = load.stop();
    assert_no_failure(&report, &takeover.server);
    assert_eq!(takeover.history(), pids, "every generation, oldest first");
    assert_eq!(
        report.distinct_generations().len(),
        21,
        "{:?}",
        report.distinct_generations()
    );
    assert_eq!(
        takeover.server.live_processes(),
        vec![*pids.last().unwrap()]
    );
}

#[test]
fn takeovers_and_reexec_upgrades_mix_under_load() {
    let _turn = turn();
    let mut takeover = Takeover::start("takeover-mixed", &["--startup-delay", "200ms"]);
    let (load, stats) = load(&takeover.server);
    let mut pids = vec![takeover.server.current_pid().unwrap()];
    for round in 0..10 {
        let before = stats.successes();
        let (old, new) = if round % 2 == 0 {
            takeover.take_over(&["--startup-delay", "200ms"])
        } else {
            let (old, new) = takeover.server.upgrade();
            takeover.server.wait_exit(old, Duration::from_secs(30));
            (old, new)
        };
        assert_ne!(old, new);
        pids.push(new);
        assert!(stats.wait_for_successes(before + 50, Duration::from_secs(20)));
    }
    let report = load.stop();
    assert_no_failure(&report, &takeover.server);
    assert_eq!(takeover.history(), pids);
    assert_eq!(
        takeover.server.live_processes(),
        vec![*pids.last().unwrap()]
    );
}

#[test]
fn a_new_version_that_crashes_or_is_never_ready_leaves_the_old_one_serving() {
    let _turn = turn();
    let mut takeover = Takeover::start("takeover-fail", &["--ready-timeout", "1500ms"]);
    let old = takeover.server.current_pid().unwrap();
    let (load, _stats) = load(&takeover.server);

    // Crashes during its initialisation, after it received the sockets.
    let mark = takeover.server.log_text().len();
    let crashing = takeover.launch(&["--startup-delay", "5s"]);
    takeover
        .server
        .wait_log("took over the sockets", mark, Duration::from_secs(10));
    signal(crashing.id(), Signal::KILL);
    let line = takeover.server.wait_log(
        "takeover failed; still serving",
        mark,
        Duration::from_secs(10),
    );
    assert!(line.contains(&crashing.id().to_string()), "{line}");
    drop(crashing);

    // Never ready within the old one's ready timeout: it exits non-zero, saying why.
    let mark = takeover.server.log_text().len();
    let mut slow = takeover.launch(&["--startup-delay", "4s"]);
    let status = wait_until(
        "the slow new version to give up",
        Duration::from_secs(20),
        || slow.try_wait().unwrap(),
    );
    assert!(!status.success(), "it exits non-zero");
    let log = takeover.server.log_text()[mark..].to_owned();
    assert!(log.contains("was not ready within"), "{log}");
    assert!(
        log.contains("takeover failed; draining and exiting"),
        "{log}"
    );

    let report = load.stop();
    assert_no_failure(&report, &takeover.server);
    assert_eq!(takeover.server.current_pid(), Some(old));
    assert_eq!(takeover.server.live_processes(), vec![old]);
    // And a genuine takeover still works.
    let (_, new) = takeover.take_over(&[]);
    assert_eq!(takeover.history(), vec![old, new]);
}

#[test]
fn a_second_takeover_racing_the_first_is_refused_and_the_first_goes_on() {
    let _turn = turn();
    let mut takeover = Takeover::start("takeover-race", &[]);
    let old = takeover.server.current_pid().unwrap();
    let mark = takeover.server.log_text().len();
    let first = takeover.launch(&["--startup-delay", "1500ms"]);
    let first_pid = first.id();
    drop(first);
    takeover.server.pids.push(first_pid);
    takeover
        .server
        .wait_log("took over the sockets", mark, Duration::from_secs(10));
    let output = Command::new(&takeover.server.exe)
        .args(["--listen", "127.0.0.1:0", "--takeover"])
        .arg(&takeover.path)
        .output()
        .unwrap();
    assert!(!output.status.success(), "the second one exits non-zero");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("busy"), "{said}");
    wait_until(
        "the first takeover to commit",
        Duration::from_secs(20),
        || (takeover.server.current_pid() == Some(first_pid)).then_some(()),
    );
    takeover.server.wait_exit(old, Duration::from_secs(20));
    assert_eq!(takeover.history(), vec![old, first_pid]);
}

#[test]
fn the_new_version_serves_alone_if_the_old_one_dies_after_handing_over() {
    let _turn = turn();
    let mut takeover = Takeover::start("takeover-orphan", &[]);
    let first = takeover.server.current_pid().unwrap();
    // A second generation, so that the takeover socket's creator (what
    // SO_PEERCRED names) is not the process serving it.
    let (_, old) = takeover.take_over(&[]);
    let (load, _stats) = load(&takeover.server);
    let mark = takeover.server.log_text().len();
    let new = takeover.launch(&["--startup-delay", "1s"]);
    let new_pid = new.id();
    drop(new);
    takeover.server.pids.push(new_pid);
    takeover
        .server
        .wait_log("took over the sockets", mark, Duration::from_secs(10));
    signal(old, Signal::KILL);
    takeover.server.wait_exit(old, Duration::from_secs(10));
    let line = takeover
        .server
        .wait_log("serving alone", mark, Duration::from_secs(10));
    assert!(
        line.contains(&format!("old_pid={old}")),
        "the new one must know which process it took over from ({old}): {line}"
    );
    wait_until(
        "the new one to own the PID file",
        Duration::from_secs(10),
        || (takeover.server.current_pid() == Some(new_pid)).then_some(()),
    );
    let report = load.stop();
    // The old one died with its connections: requests in flight in it fail,
    // but nothing is refused — clients waited in the accept queue.
    assert_eq!(
        report.count_of(&FailureKind::Refused),
        0,
        "{}",
        report.summary()
    );
    assert_eq!(takeover.history(), vec![first, old, new_pid]);
}

#[test]
fn strangers_and_garbage_on_the_takeover_socket_leave_the_old_one_serving() {
    let _turn = turn();
    let mut takeover = Takeover::start("takeover-garbage", &[]);
    let old = takeover.server.current_pid().unwrap();
    let fds_before = stable_fds(old).len();
    for (mode, expect) in [
        ("garbage", "\"malformed\""),
        ("huge", "\"oversized\""),
        ("wrong-version", "\"version\""),
        ("no-hello", "\"unexpected\""),
        ("truncated", "\"malformed\""),
        ("stray-fds", "\"wrong_fds\""),
        ("bad-command", "unknown command"),
    ] {
        let line = takeover.client(mode, None);
        assert!(line.contains(expect), "{mode}: {line}");
        assert!(line.ends_with("fds=0"), "{mode}: no fd sent: {line}");
    }
    let line = takeover.client("disconnect-mid-fds", None);
    assert!(line.contains("fds="), "{line}");
    wait_until(
        "the old process to roll back",
        Duration::from_secs(10),
        || {
            takeover
                .server
                .log_text()
                .contains("takeover failed; still serving")
                .then_some(())
        },
    );
    // Another uid: the socket's mode (0600) keeps it out; past the mode (made
    // 0666 here), the peer check refuses it before any fd is sent.
    if rustix::process::geteuid().is_root() {
        let line = takeover.client("hello-only", Some(65534));
        assert!(line.contains("connect failed"), "{line}");
        use std::os::unix::fs::PermissionsExt;
        let open = std::fs::Permissions::from_mode(0o777);
        for dir in takeover.path.ancestors().skip(1).take(2) {
            std::fs::set_permissions(dir, open.clone()).unwrap();
        }
        std::fs::set_permissions(&takeover.path, open).unwrap();
        let line = takeover.client("hello-only", Some(65534));
        assert!(
            line.contains("not_allowed") && line.ends_with("fds=0"),
            "{line}"
        );
    }
    assert_eq!(takeover.server.current_pid(), Some(old));
    wait_until(
        "the old process's fds to settle",
        Duration::from_secs(10),
        || (stable_fds(old).len() == fds_before).then_some(()),
    );
    // A genuine takeover afterwards succeeds.
    let (_, new) = takeover.take_over(&[]);
    assert_eq!(takeover.history(), vec![old, new]);
}

#[test]
fn two_thousand_sockets_are_taken_over_and_held_exactly() {
    let _turn = turn();
    // 1999 more beside the "web" every hello of these tests listens on.
    let specs: Vec<String> = (1..2000)
        .map(|i| format!("--listen=s{i}=127.0.0.1:0"))
        .collect();
    let args: Vec<&str> = specs.iter().map(String::as_str).collect();
    let mut takeover = Takeover::start("takeover-many", &args);
    let old = takeover.server.current_pid().unwrap();
    // Distinct listening TCP sockets (the library keeps its own copy of each
    // claimed one, so fds are not counted).
    let listening = |pid: u32| -> std::collections::BTreeSet<String> {
        let listeners: std::collections::BTreeSet<String> = tcp_sockets()
            .into_iter()
            .filter(|(_, _, state)| state == "0A")
            .map(|(inode, _, _)| format!("socket:[{inode}]"))
            .collect();
        fds_of(pid)
            .into_iter()
            .map(|(_, target)| target)
            .filter(|t| listeners.contains(t))
            .collect()
    };
    let before = listening(old);
    assert_eq!(before.len(), 2000, "the old process's listeners");
    let (_, new) = takeover.take_over(&args);
    assert_eq!(
        listening(new),
        before,
        "the new process holds the very same 2000 sockets"
    );
    assert_eq!(takeover.history(), vec![old, new]);
}

#[test]
fn status_upgrade_and_stop_are_answered_on_the_takeover_socket() {
    use handover_wire::control::{request, Reply, Request};
    let _turn = turn();
    let mut takeover = Takeover::start("takeover-control", &[]);
    let ask = |what: Request| {
        let mut steps = Vec::new();
        let last = request(&takeover.path, what, Duration::from_secs(60), |r| {
            steps.push(r.clone())
        })
        .unwrap();
        (steps, last)
    };
    let first = takeover.server.current_pid().unwrap();
    let (_, status) = ask(Request::Status);
    let Reply::Status(status) = status else {
        panic!("{status:?}")
    };
    assert_eq!(status["pid"], first);
    assert_eq!(status["phase"], "Serving");
    assert_eq!(status["sockets"], serde_json::json!(["web"]));

    // An upgrade through the socket: progress, then the new pid.
    let (steps, done) = ask(Request::Upgrade);
    assert!(steps.len() >= 2, "{steps:?}");
    let Reply::Done { ok: true, message } = done else {
        panic!("{done:?}")
    };
    let new = wait_until("the new pid", Duration::from_secs(10), || {
        takeover.server.current_pid().filter(|&p| p != first)
    });
    takeover.server.pids.push(new);
    assert!(message.contains(&new.to_string()), "{message}");
    takeover.server.wait_exit(first, Duration::from_secs(20));

    // A broken new version: rolled back, and the reply says so.
    takeover.server.install_script("exit 3");
    let (_, done) = ask(Request::Upgrade);
    let Reply::Done { ok: false, message } = done else {
        panic!("{done:?}")
    };
    assert!(message.contains("rolled back, still serving"), "{message}");
    assert_eq!(takeover.server.current_pid(), Some(new));

    // Stop: the process drains and exits.
    let (_, done) = ask(Request::Stop);
    assert!(matches!(done, Reply::Done { ok: true, .. }), "{done:?}");
    takeover.server.wait_exit(new, Duration::from_secs(20));
}
