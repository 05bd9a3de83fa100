//! The library's counters, as the takeover socket's `metrics` command serves
//! them (what `handover status --format prometheus --socket PATH` prints):
//! after a known sequence of reloads, a failed upgrade, a rollback and a
//! migrating takeover, they say what happened.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use handover_wire::control::{request, Reply, Request};
use rustix::process::Signal;
use support::clients::echo_clients;
use support::*;

/// The counters of the process serving the takeover socket at `socket`.
fn metrics(socket: &Path) -> BTreeMap<String, f64> {
    match request(socket, Request::Metrics, Duration::from_secs(10), |_| {}) {
        Ok(Reply::Metrics(text)) => {
            assert!(text.ends_with("# EOF\n"), "{text}");
            parse_prometheus(&text)
        }
        other => panic!("{other:?}"),
    }
}

fn reload(socket: &Path) -> bool {
    match request(socket, Request::Reload, Duration::from_secs(10), |_| {}) {
        Ok(Reply::Done { ok, .. }) => ok,
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_librarys_counters_say_what_happened_and_start_again_in_each_new_version() {
    let files = Scratch::new("metrics-files");
    let greeting = files.path("greeting.txt");
    std::fs::write(&greeting, "hello").unwrap();
    let greeting = greeting.to_str().unwrap();
    let common = ["--greeting-file", greeting, "--echo", "127.0.0.1:0"];
    let mut args = common.to_vec();
    args.extend(["--probation", "3s"]);
    let mut takeover = Takeover::start("metrics", &args);
    let socket = takeover.path.clone();
    let echo = takeover.server.listening("tcp");
    let first = takeover.server.current_pid().unwrap();
    let count =
        |samples: &BTreeMap<String, f64>, series: &str| samples.get(series).copied().unwrap_or(0.0);
    let before = metrics(&socket);
    assert_eq!(
        count(&before, "handover_rollbacks_total"),
        0.0,
        "{before:#?}"
    );

    // 1. A reload applied, one refused.
    std::fs::write(files.path("greeting.txt"), "bonjour").unwrap();
    assert!(reload(&socket));
    std::fs::write(files.path("greeting.txt"), "two\nlines").unwrap();
    assert!(!reload(&socket));
    std::fs::write(files.path("greeting.txt"), "hello").unwrap();

    // 2. A new version that cannot start: a failed re-exec upgrade.
    takeover
        .server
        .install_script("echo 'new version: cannot start' >&2; exit 1");
    let mark = takeover.server.log_text().len();
    signal(first, Signal::HUP);
    takeover
        .server
        .wait_log("upgrade failed", mark, Duration::from_secs(20));
    takeover
        .server
        .install(env!("CARGO_BIN_EXE_hello").as_ref());

    // 3. A committed re-exec upgrade whose successor dies on probation.
    let mark = takeover.server.log_text().len();
    let (old, dead) = takeover.server.upgrade();
    assert_eq!(old, first);
    signal(dead, Signal::KILL);
    takeover
        .server
        .wait_log("died on probation", mark, Duration::from_secs(10));
    wait_until(
        "the old process current again",
        Duration::from_secs(5),
        || (takeover.server.current_pid() == Some(first)).then_some(()),
    );

    let after = metrics(&socket);
    let n = |series: &str| count(&after, series);
    assert_eq!(
        n("handover_reloads_total{result=\"ok\"}"),
        1.0,
        "{after:#?}"
    );
    assert_eq!(
        n("handover_reloads_total{result=\"refused\"}"),
        1.0,
        "{after:#?}"
    );
    assert_eq!(
        n("handover_upgrades_total{mode=\"reexec\",result=\"failed\",reason=\"exited\"}"),
        1.0,
        "{after:#?}"
    );
    assert_eq!(
        n("handover_upgrades_total{mode=\"reexec\",result=\"ok\",reason=\"ready\"}"),
        1.0,
        "{after:#?}"
    );
    assert_eq!(n("handover_rollbacks_total"), 1.0, "{after:#?}");
    assert_eq!(
        n("handover_upgrade_duration_seconds_count{mode=\"reexec\"}"),
        1.0,
        "{after:#?}"
    );

    // 4. A takeover that migrates five live connections: the new version
    //    counts them in, and its counters started from 0.
    let clients = echo_clients(echo, 5, Duration::from_millis(20));
    wait_until("five echo connections", Duration::from_secs(10), || {
        (fds_of(first).len() >= stable_fds(first).len() + 5).then_some(())
    });
    takeover.take_over(&common);
    let taken = wait_until(
        "five connections counted in",
        Duration::from_secs(10),
        || {
            let samples = metrics(&socket);
            (count(
                &samples,
                "handover_connections_migrated_total{direction=\"in\"}",
            ) >= 5.0)
                .then_some(samples)
        },
    );
    let seen = clients.stop();
    assert!(
        seen.iter().all(|s| s.broken.is_none() && s.verified > 0),
        "every echo connection lived on: {seen:?}"
    );
    assert_eq!(
        count(
            &taken,
            "handover_connections_migrated_total{direction=\"in\"}"
        ),
        5.0,
        "{taken:#?}"
    );
    assert_eq!(count(&taken, "handover_rollbacks_total"), 0.0, "{taken:#?}");
    assert_eq!(
        count(&taken, "handover_reloads_total{result=\"ok\"}"),
        0.0,
        "{taken:#?}"
    );
}
