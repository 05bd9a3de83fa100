//! The axum example (`src/bin/hello-axum.rs`): an axum `Router` served by
//! handover, upgraded under load.

mod support;

use std::time::Duration;

use support::*;

/// 8 clients that never retry (4 opening a connection per request, 4 on
/// keep-alive connections) and 4 more keep-alive connections that must never
/// be closed, while the axum server is upgraded 5 times: no request fails,
/// every version answers, and the keep-alive connections move to each new
/// version (migration) instead of closing.
#[test]
fn an_axum_router_is_upgraded_under_keep_alive_load_with_no_failed_request() {
    let mut server = Server::launch(
        "axum",
        env!("CARGO_BIN_EXE_hello-axum").as_ref(),
        &[],
        &[("ADDR", "127.0.0.1:0".as_ref())],
        PidFileBy::Env("PID_FILE"),
    );
    let (load, stats) = mixed_load(server.addr);
    let kept = clients::keep_alive_clients(server.addr, 4);
    for round in 0..5 {
        let before = stats.successes();
        server.upgrade();
        assert!(
            stats.wait_for_successes(before + 50, Duration::from_secs(20)),
            "round {round}: load stalled"
        );
    }
    let report = load.stop();
    let seen = kept.stop();
    assert_eq!(
        report.failure_count(),
        0,
        "{}\nfirst failures: {:#?}\nserver log:\n{}",
        report.summary(),
        report.first_failures(10),
        server.log_text()
    );
    assert_eq!(report.distinct_pids().len(), 6, "{}", report.summary());
    for connection in &seen {
        assert_eq!(
            connection.broken,
            None,
            "{seen:#?}\nserver log:\n{}",
            server.log_text()
        );
        assert!(connection.pids.len() >= 2, "it moved: {seen:#?}");
    }
    let current = server.current_pid().unwrap();
    for &pid in &server.pids {
        if pid != current {
            server.wait_exit(pid, Duration::from_secs(30));
        }
    }
    assert_eq!(server.live_processes(), vec![current]);
}

/// The bound: handover costs a plain axum server at most 10 changed
/// lines (module docs aside).
#[test]
fn axum_example_differs_from_plain_axum_by_at_most_ten_lines() {
    let code = |path: &str| -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter(|line| !line.starts_with("//!"))
            .map(|line| line.split(" // handover").next().unwrap().to_owned())
            .collect()
    };
    let plain = code(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/plain-axum.rs"
    ));
    let ours = code(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/bin/hello-axum.rs"
    ));
    // Longest common subsequence: what is left of each file is what changed.
    let mut table = vec![vec![0usize; ours.len() + 1]; plain.len() + 1];
    for (i, a) in plain.iter().enumerate() {
        for (j, b) in ours.iter().enumerate() {
            table[i + 1][j + 1] = if a == b {
                table[i][j] + 1
            } else {
                table[i][j + 1].max(table[i + 1][j])
            };
        }
    }
    let common = table[plain.len()][ours.len()];
    let changed = (plain.len() - common) + (ours.len() - common);
    assert!(changed <= 10, "{changed} lines differ");
    assert!(
        changed > 0,
        "the files are the same: the test compares the wrong files"
    );
}
