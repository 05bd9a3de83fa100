//! `handover run` when things go wrong: a new version that crashes or hangs, a
//! child that dies while serving, bad control requests, a stranger on the
//! control socket — and systemd's view of it all.

mod run_support;

use std::io::{Read, Write};
use std::time::Duration;

use handover_loadgen::{LoadConfig, LoadThread, Mode};
use run_support::*;

/// A copy of the Python server that a test can replace, as a deployment would.
fn server_copy(scratch: &Scratch) -> std::path::PathBuf {
    let path = scratch.path("server.py");
    std::fs::copy(fixture("notify_server.py"), &path).unwrap();
    path
}

fn replace(path: &std::path::Path, code: &str) {
    let staging = path.with_extension("new");
    std::fs::write(&staging, code).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

fn load(supervisor: &Supervisor, mode: Mode) -> LoadThread {
    let load = LoadThread::start(
        LoadConfig::new(supervisor.addr)
            .connections(6)
            .mode(mode)
            .duration(Duration::from_secs(120)),
    );
    assert!(
        load.stats().wait_for_successes(50, Duration::from_secs(20)),
        "no load"
    );
    load
}

#[test]
fn a_new_version_that_crashes_or_hangs_is_rolled_back() {
    let scratch = Scratch::new("versions");
    let server = server_copy(&scratch);
    let supervisor = Supervisor::start(
        "versions",
        &["--ready", "notify", "--ready-timeout", "2s"],
        &["python3", server.to_str().unwrap()],
    );
    let old = supervisor.current_pid();
    let load = load(&supervisor, Mode::Mixed);
    let fds_before = fds_at_rest(supervisor.process.id());

    replace(
        &server,
        "import sys\nsys.stderr.write('boom: cannot read config.toml\\n')\nsys.exit(1)\n",
    );
    let output = supervisor.client("upgrade", &[]);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(
        said.contains("exited with status 1 before it was ready"),
        "{said}"
    );
    assert!(
        said.contains("boom: cannot read config.toml"),
        "the new child's stderr: {said}"
    );
    assert!(said.contains("the old child keeps serving"), "{said}");

    replace(&server, "import time\ntime.sleep(60)\n");
    let output = supervisor.client("upgrade", &[]);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(said.contains("was not ready within 2s"), "{said}");

    std::fs::copy(fixture("notify_server.py"), &server).unwrap();
    let report = load.stop();
    assert_eq!(report.failure_count(), 0, "{}", report.summary());
    assert_eq!(
        report.distinct_pids().into_iter().collect::<Vec<_>>(),
        [old.to_string()]
    );
    assert_eq!(supervisor.current_pid(), old);
    let children = descendants(supervisor.process.id());
    assert_eq!(
        children,
        [old],
        "no failed child is left, not even a zombie"
    );
    // Neither the failed children's sockets (each upgrade binds its own) nor
    // their notify sockets or pipes are left open in the supervisor.
    try_wait_until(Duration::from_secs(5), || {
        (fds_of(supervisor.process.id()) == fds_before).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "supervisor fds before {fds_before:?}, after {:?}",
            fds_of(supervisor.process.id())
        )
    });
    let status = supervisor.status().unwrap();
    let upgrades = status["upgrades"].as_array().unwrap();
    assert_eq!(upgrades.len(), 2);
    assert!(upgrades.iter().all(|u| u["ok"] == false));

    // The good version is back: the next upgrade works.
    let output = supervisor.client("upgrade", &[]);
    assert!(output.status.success(), "{}", text(&output));
    assert_ne!(supervisor.current_pid(), old);
}

#[test]
fn a_child_that_crashes_while_serving_is_restarted_and_no_connection_is_refused() {
    let supervisor = Supervisor::start(
        "crash",
        &["--ready", "notify"],
        &[
            "python3",
            fixture("notify_server.py").to_str().unwrap(),
            "--startup-delay",
            "0.5",
        ],
    );
    let crashed = supervisor.current_pid();
    let load = load(&supervisor, Mode::Close);
    signal(crashed, rustix::process::Signal::KILL);
    let restarted = wait_until("a restarted child", Duration::from_secs(20), || {
        let pid = supervisor.status()?["current"]["pid"].as_u64()? as u32;
        (pid != crashed).then_some(pid)
    });
    let before = load.stats().successes();
    assert!(load
        .stats()
        .wait_for_successes(before + 50, Duration::from_secs(20)));
    let report = load.stop();
    assert_eq!(
        report.count_of(&handover_loadgen::FailureKind::Refused),
        0,
        "{}",
        report.summary()
    );
    assert!(report.distinct_pids().contains(&restarted.to_string()));
    let status = supervisor.status().unwrap();
    let crash = &status["crashes"][0]["message"];
    assert!(
        crash
            .as_str()
            .unwrap()
            .contains(&format!("pid {crashed} was killed by signal 9")),
        "{crash}"
    );
    assert!(supervisor.log_text().contains("restarting the child"));
}

/// The old child dies while the new one is starting: clients that connect
/// after that wait for the new child instead of queueing on a socket nobody will
/// ever accept from. Only the requests the dead child had in hand fail, and
/// those that arrived before the supervisor heard of its death.
#[test]
fn a_child_that_crashes_during_an_upgrade_hands_its_clients_to_the_new_one() {
    let supervisor = Supervisor::start(
        "crash-upgrade",
        &["--ready", "notify"],
        &[
            "python3",
            fixture("notify_server.py").to_str().unwrap(),
            "--startup-delay",
            "1.5",
        ],
    );
    let crashed = supervisor.current_pid();
    let load = load(&supervisor, Mode::Close);
    let upgrade = supervisor.upgrade_in_background();
    let new = wait_until("the new child", Duration::from_secs(10), || {
        supervisor.status()?["starting"]["pid"].as_u64()
    }) as u32;
    signal(crashed, rustix::process::Signal::KILL);
    let output = upgrade.join().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(supervisor.current_pid(), new);
    let before = load.stats().successes();
    assert!(load
        .stats()
        .wait_for_successes(before + 50, Duration::from_secs(20)));
    let report = load.stop();
    assert_eq!(
        report.count_of(&handover_loadgen::FailureKind::Refused),
        0,
        "{}",
        report.summary()
    );
    // The requests the dead child had in hand fail at once. A client parked
    // on the dead child's socket would fail only when the new child is ready,
    // after waiting out its start-up (1.5 s): none may.
    let parked: Vec<String> = report
        .failures()
        .iter()
        .filter(|f| f.latency > Duration::from_millis(500))
        .map(|f| format!("{f:?}"))
        .collect();
    assert!(parked.is_empty(), "{parked:#?}\n{}", report.summary());
    assert!(report.distinct_pids().contains(&new.to_string()));
    assert!(supervisor
        .log_text()
        .contains(&format!("new connections wait for new pid {new}")));
}

#[test]
fn max_draining_bounds_old_children() {
    let supervisor = Supervisor::start(
        "draining",
        &["--ready", "notify", "--max-draining", "1"],
        &["python3", fixture("notify_server.py").to_str().unwrap()],
    );
    // A slow request keeps the old child draining for 3 s.
    let mut slow = std::net::TcpStream::connect(supervisor.addr).unwrap();
    slow.write_all(b"GET /slow?ms=3000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let first = std::thread::spawn({
        let pid_file = supervisor.pid_file.clone();
        move || {
            std::process::Command::new(HANDOVER)
                .args(["upgrade", "--pid-file"])
                .arg(pid_file)
                .output()
                .unwrap()
        }
    });
    wait_until("the old child to drain", Duration::from_secs(20), || {
        supervisor
            .status()
            .filter(|s| !s["draining"].as_array().unwrap().is_empty())
    });
    let output = supervisor.client("upgrade", &[]);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(
        said.contains("still draining") && said.contains("--max-draining is 1"),
        "{said}"
    );
    let mut response = String::new();
    slow.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let first = first.join().unwrap();
    let said = text(&first);
    for step in ["started", "ready after", "draining", "exited"] {
        assert!(
            said.contains(step),
            "`handover upgrade` shows {step:?}: {said}"
        );
    }
}

#[test]
fn malformed_control_requests_get_an_error_reply() {
    let supervisor = Supervisor::start(
        "control",
        &["--ready", "notify"],
        &["python3", fixture("notify_server.py").to_str().unwrap()],
    );
    let control = supervisor.scratch.path("handover.pid.control");
    let client = |mode: &str| {
        let output = std::process::Command::new("python3")
            .arg(wire_client())
            .arg(&control)
            .arg(mode)
            .output()
            .unwrap();
        text(&output)
    };
    for (mode, expect) in [
        ("garbage", "malformed"),
        ("huge", "oversized"),
        ("wrong-version", "version"),
        ("bad-command", "unknown command"),
        ("takeover", "this is a supervisor's control socket"),
    ] {
        let reply = client(mode);
        assert!(reply.contains("\"error\""), "{mode}: {reply}");
        assert!(reply.contains(expect), "{mode}: {reply}");
    }
    // A client that connects and says nothing does not block others.
    let _silent = handover_wire::channel::Channel::connect(&control).unwrap();
    assert!(
        supervisor.status().is_some(),
        "the supervisor still answers"
    );
    let mode = std::fs::metadata(&control)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
        .unwrap();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn another_user_may_not_control_the_supervisor() {
    if rustix::process::getuid().as_raw() != 0 {
        eprintln!("skipped: needs root to act as another uid");
        return;
    }
    let supervisor = Supervisor::start(
        "stranger",
        &["--ready", "notify"],
        &["python3", fixture("notify_server.py").to_str().unwrap()],
    );
    let control = supervisor.scratch.path("handover.pid.control");
    // The scratch directory must be reachable by the other user.
    std::fs::set_permissions(
        &supervisor.scratch.0,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let as_nobody = |path: &std::path::Path| {
        let output = std::process::Command::new("python3")
            .arg(wire_client())
            .arg(path)
            .args(["stop", "65534"])
            .output()
            .unwrap();
        text(&output)
    };
    // The socket is 0600: the kernel refuses the connection.
    assert!(as_nobody(&control).contains("connect failed: Permission denied"));
    // Even if its mode were loosened, the peer's uid is checked.
    std::fs::set_permissions(
        &control,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let reply = as_nobody(&control);
    assert!(
        reply.contains("not_allowed") && reply.contains("uid 65534"),
        "{reply}"
    );
    assert!(
        supervisor.status().unwrap()["stopping"] == false,
        "the stop was not obeyed"
    );
}

#[test]
fn systemd_hears_ready_reloading_and_stopping_from_the_supervisor() {
    let scratch = Scratch::new("systemd");
    let socket_path = scratch.path("notify.sock");
    let systemd = FakeNotifySocket::bind(socket_path.clone());
    let next = || systemd.next();
    let supervisor = Supervisor::start_with_env(
        "systemd",
        &["--ready", "notify"],
        &["python3", fixture("notify_server.py").to_str().unwrap()],
        &[("NOTIFY_SOCKET", &socket_path)],
    );
    assert_eq!(next(), "READY=1\n");
    assert!(supervisor.client("upgrade", &[]).status.success());
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(next(), "READY=1\n");
    let stop = supervisor.client("stop", &[]);
    assert!(stop.status.success(), "{}", text(&stop));
    assert_eq!(next(), "STOPPING=1\n");
    assert!(
        !supervisor.pid_file.exists(),
        "the PID file is removed at exit"
    );
}
