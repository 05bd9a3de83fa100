//! `handover status --format prometheus` under `handover run`: the counters
//! a user alerts on, after a known sequence of upgrades, a failure, a
//! refusal, a rollback and a crash, parsed as the Prometheus text format.

mod run_support;

use std::collections::BTreeMap;
use std::time::Duration;

use run_support::*;

fn metrics(supervisor: &Supervisor) -> BTreeMap<String, f64> {
    let output = supervisor.client("status", &["--format", "prometheus"]);
    assert!(output.status.success(), "{}", text(&output));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    parse_prometheus(&text)
}

/// The current child's pid, if there is one (there is none while it is
/// being restarted or an upgrade is rolling back).
fn current(supervisor: &Supervisor) -> Option<u32> {
    Some(supervisor.status()?["current"]["pid"].as_u64()? as u32)
}

/// Waits for a current child and returns its pid.
fn serving_pid(supervisor: &Supervisor) -> u32 {
    wait_until("a current child", Duration::from_secs(20), || {
        current(supervisor)
    })
}

fn replace(path: &std::path::Path, code: &str) {
    let staging = path.with_extension("new");
    std::fs::write(&staging, code).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

#[test]
fn the_supervisors_counters_say_what_happened() {
    let scratch = Scratch::new("metrics");
    let server = scratch.path("server.py");
    std::fs::copy(fixture("notify_server.py"), &server).unwrap();
    let original = std::fs::read_to_string(&server).unwrap();
    let supervisor = Supervisor::start(
        "metrics",
        &[
            "--ready",
            "notify",
            "--probation",
            "1s",
            "--max-draining",
            "1",
        ],
        &["python3", server.to_str().unwrap()],
    );
    let before = metrics(&supervisor);
    assert_eq!(
        before.get("handover_upgrades_total{result=\"ok\",reason=\"ready\"}"),
        None
    );
    assert_eq!(before["handover_rollbacks_total"], 0.0);

    // 1. An upgrade that commits; while its old child is on probation, a
    //    second one is refused (--max-draining 1).
    let upgrade = supervisor.upgrade_in_background();
    wait_until(
        "the old child on probation",
        Duration::from_secs(20),
        || (!supervisor.status()?["draining"].as_array()?.is_empty()).then_some(()),
    );
    assert_eq!(supervisor.client("upgrade", &[]).status.code(), Some(1));
    assert!(upgrade.join().unwrap().status.success());

    // 2. A new version that exits at once: failed.
    replace(&server, "import sys\nsys.exit(1)\n");
    assert_eq!(supervisor.client("upgrade", &[]).status.code(), Some(1));
    replace(&server, &original);

    // 3. A committed upgrade whose new child dies on probation: rolled back.
    let first = serving_pid(&supervisor);
    let upgrade = supervisor.upgrade_in_background();
    let new = wait_until("the new child current", Duration::from_secs(20), || {
        current(&supervisor).filter(|&pid| pid != first)
    });
    signal(new, rustix::process::Signal::KILL);
    assert_eq!(upgrade.join().unwrap().status.code(), Some(1));

    // 4. The current child crashes: restarted.
    let serving = serving_pid(&supervisor);
    assert_eq!(serving, first, "rolled back to it");
    signal(serving, rustix::process::Signal::KILL);
    wait_until("the restart", Duration::from_secs(20), || {
        current(&supervisor).filter(|&pid| pid != serving)
    });

    let after = metrics(&supervisor);
    let n = |series: &str| after.get(series).copied().unwrap_or(0.0);
    assert_eq!(
        n("handover_upgrades_total{result=\"ok\",reason=\"ready\"}"),
        2.0,
        "{after:#?}"
    );
    assert_eq!(
        n("handover_upgrades_total{result=\"failed\",reason=\"exited\"}"),
        1.0,
        "{after:#?}"
    );
    assert_eq!(
        n("handover_upgrades_total{result=\"refused\",reason=\"max_draining\"}"),
        1.0,
        "{after:#?}"
    );
    assert_eq!(n("handover_rollbacks_total"), 1.0, "{after:#?}");
    assert_eq!(n("handover_child_restarts_total"), 1.0, "{after:#?}");
    assert_eq!(
        n("handover_upgrade_duration_seconds_count"),
        2.0,
        "{after:#?}"
    );
    // The first upgrade's old child drained and exited.
    assert!(
        n("handover_drain_duration_seconds_count") >= 1.0,
        "{after:#?}"
    );
    assert_eq!(
        n("handover_children_killed_at_deadline_total"),
        0.0,
        "{after:#?}"
    );
}
