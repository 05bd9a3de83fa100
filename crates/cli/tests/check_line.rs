//! `handover check` with the line protocols against an echo server on
//! threads of the test process: plain TCP (connect, write a line, read a
//! line) and long-lived connections, one of which the server drops.

mod check_support;

use check_support::{check, LineServer, Scratch};

#[test]
fn tcp_mode_against_a_line_echo_server_passes() {
    let dir = Scratch::new("tcp");
    let server = LineServer::start(false, &dir.0);
    let upgrade = server.upgrade_command();
    let run = check(&[
        "--target",
        &server.url(),
        "--upgrade",
        &upgrade,
        "--every",
        "300ms",
        "--upgrade-count",
        "2",
        "--connections",
        "4",
        "--message",
        "hello there",
        "--json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let json = run.json();
    assert_eq!(
        (json["protocol"].as_str(), json["mode"].as_str()),
        (Some("tcp"), Some("close"))
    );
    assert_eq!(run.n(&["failed"]), 0, "{run:?}");
    assert!(run.n(&["requests"]) > 50, "{run:?}");
    assert_eq!(
        run.n(&["new_connections"]),
        run.n(&["requests"]),
        "one connection per attempt"
    );
    assert_eq!(json["upgrades"].as_array().unwrap().len(), 2);
}

#[test]
fn long_lived_connections_pass_when_nothing_breaks() {
    let dir = Scratch::new("long");
    let server = LineServer::start(false, &dir.0);
    let run = check(&[
        "--target",
        &server.url(),
        "--protocol",
        "long-lived",
        "--connections",
        "4",
        "--interval",
        "20ms",
        "--duration",
        "1s",
        "--json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["protocol"], "long-lived");
    assert_eq!(
        run.n(&["new_connections"]),
        4,
        "connections stay open: {run:?}"
    );
    // 4 connections × ~50 exchanges, with room for a slow machine.
    let requests = run.n(&["requests"]);
    assert!((80..=210).contains(&requests), "{run:?}");
}

#[test]
fn long_lived_connection_dropped_mid_run_is_counted_once_and_fails() {
    let dir = Scratch::new("drop");
    let server = LineServer::start(true, &dir.0);
    let upgrade = server.upgrade_command();
    let run = check(&[
        "--target",
        &server.url(),
        "--protocol",
        "long-lived",
        "--connections",
        "4",
        "--interval",
        "20ms",
        "--upgrade",
        &upgrade,
        "--every",
        "500ms",
        "--upgrade-count",
        "1",
        "--json",
    ]);
    assert_eq!(server.dropped.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.n(&["failed"]), 1, "{run:?}");
    assert_eq!(
        run.n(&["failures", "eof"]) + run.n(&["failures", "reset"]),
        1,
        "{run:?}"
    );
    assert_eq!(run.n(&["failed_upgrade"]) + run.n(&["failed_steady"]), 1);
    // The broken connection was opened again.
    assert_eq!(run.n(&["new_connections"]), 5, "{run:?}");
    assert_eq!(run.json()["upgrades"][0]["ok"], true);
}
