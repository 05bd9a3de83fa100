//! A new version that crashes, hangs or is missing: the old process keeps serving
//! with no failed request, reports why, and leaks no process and no fd.

mod support;

use std::time::Duration;

use handover_loadgen::{LoadConfig, LoadThread, Mode};
use rustix::process::Signal;
use support::*;

#[test]
fn failing_successors_roll_back_without_losing_a_request() {
    let mut server = Server::start(
        "rollback",
        &["--startup-delay", "100ms", "--ready-timeout", "2s"],
    );
    let pid = server.current_pid().unwrap();
    let listener = listener_inode(server.addr.port());
    let fds_before = stable_fds(pid);
    let load = LoadThread::start(
        LoadConfig::new(server.addr)
            .connections(8)
            .mode(Mode::Mixed)
            .duration(Duration::from_secs(120)),
    );
    assert!(load
        .stats()
        .wait_for_successes(100, Duration::from_secs(20)));

    // 1. The new binary crashes during initialisation.
    server.install_script("echo 'new version: cannot start' >&2; exit 1");
    let mark = server.log_text().len();
    signal(pid, Signal::HUP);
    let line = server.wait_log("upgrade failed", mark, Duration::from_secs(20));
    assert!(
        line.contains("exited with status 1 before it was ready"),
        "{line}"
    );
    assert!(line.contains("rolled back, still serving"), "{line}");
    assert_eq!(
        children_of(pid),
        Vec::<u32>::new(),
        "the crashed successor was reaped"
    );

    // 2. The new binary never becomes ready. While it waits, it holds exactly
    //    stdin/out/err, the one named socket, the state hello hands over
    //    (its boot history, in a sealed memfd) and its end of the migration
    //    channel: no client connection, no pipe.
    server.install_script("exec sleep 30");
    let mark = server.log_text().len();
    signal(pid, Signal::HUP);
    let successor = wait_until(
        "the hanging successor to exec sleep",
        Duration::from_secs(10),
        || {
            children_of(pid).into_iter().find(|&child| {
                std::fs::read_to_string(format!("/proc/{child}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
            })
        },
    );
    let held = fds_of(successor);
    let numbers: Vec<u32> = held.iter().map(|(fd, _)| *fd).collect();
    assert_eq!(numbers, [0, 1, 2, 3, 4, 5], "successor fds: {held:?}");
    assert_eq!(held[3].1, listener, "fd 3 is the very listening socket");
    assert!(
        held[4].1.starts_with("/memfd:handover-state"),
        "fd 4: {held:?}"
    );
    assert!(
        held[5].1.starts_with("socket:") && held[5].1 != listener,
        "fd 5, the migration channel: {held:?}"
    );
    assert!(
        fds_of(pid).len() > fds_before.len(),
        "the parent had client connections open at that moment, and none was passed on"
    );
    let line = server.wait_log("upgrade failed", mark, Duration::from_secs(20));
    assert!(
        line.contains("was not ready within 2s and was killed"),
        "{line}"
    );
    assert!(exited(successor), "the hanging successor is gone");
    assert_eq!(children_of(pid), Vec::<u32>::new(), "and reaped");

    // 3. The binary is missing altogether.
    std::fs::remove_file(&server.exe).unwrap();
    let mark = server.log_text().len();
    signal(pid, Signal::HUP);
    let line = server.wait_log("upgrade failed", mark, Duration::from_secs(20));
    assert!(
        line.contains("cannot start successor") && line.contains("No such file"),
        "{line}"
    );

    let report = load.stop();
    assert_eq!(
        report.failure_count(),
        0,
        "{}\n{:#?}",
        report.summary(),
        report.first_failures(10)
    );
    assert_eq!(
        report.distinct_pids().into_iter().collect::<Vec<_>>(),
        [pid.to_string()]
    );
    assert_eq!(
        server.current_pid(),
        Some(pid),
        "the PID file still names the old process"
    );
    // Once the clients are gone, the old process holds what it held before:
    // no notify socket, pipe or directory was left behind by the three failures.
    let settled = try_wait_until(Duration::from_secs(10), || {
        (stable_fds(pid) == fds_before).then_some(())
    });
    assert!(
        settled.is_some(),
        "fds before: {fds_before:?}\nfds after: {:?}",
        stable_fds(pid)
    );

    // 4. The good binary is back: the next upgrade succeeds.
    server.install(env!("CARGO_BIN_EXE_hello").as_ref());
    let (old, new) = server.upgrade();
    assert_eq!(old, pid);
    server.wait_exit(old, Duration::from_secs(10));
    assert_eq!(server.live_processes(), [new]);
}
