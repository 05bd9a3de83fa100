//! Probation: a successor that dies after it was ready, inside the window,
//! leaves the old process serving — in a re-exec upgrade and in a takeover —
//! and a later upgrade works; one that dies after the window finds the old
//! process gone, as without probation.

mod support;

use std::time::{Duration, Instant};

use handover_loadgen::{LoadConfig, LoadThread, Mode, Report};
use rustix::process::Signal;
use support::*;

/// The load tests one at a time: two cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// 8 clients that never retry (4 a connection per request, 4 keep-alive),
/// and when the run started.
fn load(addr: std::net::SocketAddr) -> (LoadThread, Instant) {
    let started = Instant::now();
    let load = LoadThread::start(
        LoadConfig::new(addr)
            .connections(8)
            .mode(Mode::Mixed)
            .duration(Duration::from_secs(120))
            .request_timeout(Duration::from_secs(10)),
    );
    assert!(
        load.stats()
            .wait_for_successes(100, Duration::from_secs(20)),
        "load did not start"
    );
    (load, started)
}

/// Asserts what a successor killed on probation may cost: only requests that
/// were inside it (at most one per client), none begun after `resumed`, and
/// answers by the old process after it.
fn assert_only_the_dead_successors_requests_failed(
    report: &Report,
    started: Instant,
    resumed: Instant,
    old: u32,
) {
    let failures = report.failures();
    assert!(
        failures.len() <= 8,
        "{} failures: {:?}",
        failures.len(),
        report.first_failures(10)
    );
    let after: Vec<_> = report
        .samples
        .iter()
        .filter(|s| started + s.start > resumed)
        .collect();
    assert!(
        after.len() >= 100,
        "{} requests after the resume",
        after.len()
    );
    for sample in &after {
        assert!(sample.is_success(), "after the resume: {sample:?}");
    }
    assert!(
        after
            .iter()
            .any(|s| s.pid.as_deref() == Some(&old.to_string())),
        "the old process answered after the resume"
    );
}

#[test]
fn a_successor_killed_on_probation_leaves_the_old_process_serving_under_load() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut server = Server::start("probation", &["--probation", "3s"]);
    let (load, started) = load(server.addr);
    let (old, dead) = server.upgrade();
    let stats = load.stats();
    let before = stats.successes();
    assert!(stats.wait_for_successes(before + 50, Duration::from_secs(10)));
    let mark = server.log_text().len();
    signal(dead, Signal::KILL);

    // The old process is current again: PID file, accepting.
    wait_until(
        "the PID file to name the old process",
        Duration::from_secs(5),
        || (server.current_pid() == Some(old)).then_some(()),
    );
    let resumed = Instant::now();
    let line = server.wait_log("died on probation", mark, Duration::from_secs(5));
    assert!(line.contains("was killed by signal 9"), "{line}");
    let now = stats.successes();
    assert!(stats.wait_for_successes(now + 300, Duration::from_secs(20)));

    // A later upgrade works, and this time the old process goes once the
    // window is over.
    let (from, newest) = server.upgrade();
    assert_eq!(from, old);
    server.wait_exit(old, Duration::from_secs(20));
    let now = stats.successes();
    assert!(stats.wait_for_successes(now + 100, Duration::from_secs(20)));
    let report = load.stop();
    assert_only_the_dead_successors_requests_failed(&report, started, resumed, old);
    assert!(exited(dead));
    assert_eq!(server.live_processes(), vec![newest]);
}

#[test]
fn a_successor_that_took_over_and_died_on_probation_hands_back_under_load() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut takeover = Takeover::start("probation-takeover", &["--probation", "3s"]);
    let old = takeover.server.current_pid().unwrap();
    let (load, started) = load(takeover.server.addr);
    let launched = takeover.launch(&[]);
    let dead = launched.id();
    drop(launched);
    takeover.server.pids.push(dead);
    wait_until(
        "the new process to take over",
        Duration::from_secs(30),
        || (takeover.server.current_pid() == Some(dead)).then_some(()),
    );
    let stats = load.stats();
    let before = stats.successes();
    assert!(stats.wait_for_successes(before + 50, Duration::from_secs(10)));
    let mark = takeover.server.log_text().len();
    signal(dead, Signal::KILL);

    wait_until(
        "the PID file to name the old process",
        Duration::from_secs(5),
        || (takeover.server.current_pid() == Some(old)).then_some(()),
    );
    let resumed = Instant::now();
    let line = takeover
        .server
        .wait_log("died on probation", mark, Duration::from_secs(5));
    assert!(line.contains("status is unknown"), "{line}");
    let now = stats.successes();
    assert!(stats.wait_for_successes(now + 300, Duration::from_secs(20)));

    // It serves the takeover socket again: the next takeover succeeds.
    let (from, newest) = takeover.take_over(&[]);
    assert_eq!(from, old);
    let report = load.stop();
    assert_only_the_dead_successors_requests_failed(&report, started, resumed, old);
    assert_eq!(takeover.server.current_pid(), Some(newest));
}

#[test]
fn a_successor_killed_after_the_window_finds_the_old_process_gone() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut server = Server::start("probation-over", &["--probation", "200ms"]);
    let (old, new) = server.upgrade();
    // The old process exits once its window is over (and it has drained)...
    server.wait_exit(old, Duration::from_secs(10));
    let log = server.log_text();
    assert!(log.contains("probation over"), "{log}");
    // ...so a crash now is a crash: nothing comes back.
    signal(new, Signal::KILL);
    server.wait_exit(new, Duration::from_secs(5));
    assert!(server.live_processes().is_empty());
    assert!(std::net::TcpStream::connect(server.addr).is_err());
}

/// A stop of the successor inside the window is a stop, not a crash: it
/// drains and exits 0, and the old process does not come back (with
/// `KillMode=mixed`, `systemctl stop` signals only the main process).
#[test]
fn a_successor_stopped_on_probation_is_not_taken_for_a_crash() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut server = Server::start("probation-stop", &["--probation", "3s"]);
    let (old, new) = server.upgrade();
    signal(new, Signal::TERM);
    server.wait_exit(new, Duration::from_secs(10));
    server.wait_exit(old, Duration::from_secs(10));
    let log = server.log_text();
    assert!(log.contains("exited cleanly"), "{log}");
    assert!(!log.contains("serving again"), "{log}");
    assert!(server.live_processes().is_empty());
    assert!(std::net::TcpStream::connect(server.addr).is_err());
}
