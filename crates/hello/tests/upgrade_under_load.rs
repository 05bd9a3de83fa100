//! Upgrades of `hello` under continuous load: no request may fail.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

/// 8 clients that never retry — 4 opening a connection per request, 4 reusing
/// keep-alive connections — while `hello` (300 ms start-up) is upgraded 20 times.
#[test]
fn twenty_upgrades_under_load_fail_no_request() {
    let mut server = Server::start("load", &["--startup-delay", "300ms"]);
    let (load, stats) = mixed_load(server.addr);
    for round in 0..20 {
        let before = stats.successes();
        let (old, _new) = server.upgrade();
        server.wait_exit(old, Duration::from_secs(30));
        // Every round must see traffic after the commit, served by the new process.
        assert!(
            stats.wait_for_successes(before + 50, Duration::from_secs(20)),
            "round {round}: load stalled"
        );
    }
    let report = load.stop();
    assert_eq!(
        report.failure_count(),
        0,
        "{}\nfirst failures: {:#?}\nserver log:\n{}",
        report.summary(),
        report.first_failures(10),
        server.log_text()
    );
    assert!(
        report.total() > 1000,
        "too little load to prove anything: {}",
        report.summary()
    );
    let generations = report.distinct_generations();
    assert_eq!(
        generations.len(),
        21,
        "responses came from generations {generations:?}"
    );
    let live = server.live_processes();
    assert_eq!(
        live,
        vec![server.current_pid().unwrap()],
        "exactly one server process remains"
    );
}

/// A 2-second request that started before an upgrade completes, answered by the
/// old process after its successor took over; then its connection moves to the
/// successor (or, without migration, is told to close).
fn slow_request_across_an_upgrade(migration: bool) {
    let extra: &[&str] = if migration { &[] } else { &["--no-migration"] };
    let mut server = Server::start("slow", extra);
    let first = server.current_pid().unwrap();
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(b"GET /slow?ms=2000 HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    // The request is on the wire to the only process there is; now upgrade.
    let sent = Instant::now();
    let (old, new) = server.upgrade();
    let committed = sent.elapsed();
    assert_eq!(old, first);
    assert!(
        committed < Duration::from_secs(2),
        "the upgrade took {committed:?}"
    );
    let mut pending = Vec::new();
    let response = clients::read_response(&mut stream, &mut pending).unwrap();
    let answered = sent.elapsed();
    assert_eq!(response.status, 200);
    assert_eq!(response.pid, old, "answered by the old process");
    assert!(
        answered > committed,
        "answered after the successor took over"
    );
    if migration {
        assert!(!response.close, "keep-alive intact: the connection moves");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let next = clients::read_response(&mut stream, &mut pending).unwrap();
        assert_eq!(next.pid, new, "the same connection, now the successor's");
    } else {
        assert!(
            response.close,
            "a draining process closes after the response"
        );
    }
    server.wait_exit(old, Duration::from_secs(10));
    // New requests now reach the successor.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.contains(&format!("x-pid: {new}")), "{response}");
}

#[test]
fn a_slow_request_finishes_in_the_old_process_then_its_connection_moves() {
    slow_request_across_an_upgrade(true);
}

#[test]
fn without_migration_a_slow_request_finishes_in_the_old_process_with_connection_close() {
    slow_request_across_an_upgrade(false);
}

/// A successor inherits stdout; if the reader of that pipe is gone, the
/// successor must still start (a write error is not a reason to die).
#[test]
fn upgrade_works_when_stdout_is_a_closed_pipe() {
    use std::io::BufRead;
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
    let scratch = Scratch::new("stdout");
    let pid_file = scratch.path("hello.pid");
    let mut child = spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_hello"))
            .args(["--listen", "127.0.0.1:0", "--pid-file"])
            .arg(&pid_file)
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(scratch.path("log")).unwrap()),
    );
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is dropped here: the pipe has no reader any more.
    let pid = child.id();
    let read_pid = || {
        std::fs::read_to_string(&pid_file)
            .ok()?
            .trim()
            .parse::<u32>()
            .ok()
    };
    wait_until("ready", Duration::from_secs(20), || {
        (read_pid() == Some(pid)).then_some(())
    });
    signal(pid, rustix::process::Signal::HUP);
    let new = wait_until("the successor to commit", Duration::from_secs(20), || {
        read_pid().filter(|&p| p != pid)
    });
    wait_until("the old process to exit", Duration::from_secs(10), || {
        child.try_wait().unwrap().map(|_| ())
    });
    signal(new, rustix::process::Signal::KILL);
    wait_until("the successor to exit", Duration::from_secs(10), || {
        exited(new).then_some(())
    });
}
