//! `handover check` against HTTP servers on threads of the test process: a
//! correct one (pass, exit 0) and deliberately broken ones (failures of the
//! right kind, exit 1), a failing upgrade command, usage errors (exit 2) and
//! the SVG plot.

mod check_support;

use check_support::{check, Fault, HttpServer, Scratch};

#[test]
fn correct_server_passes_and_the_plot_marks_each_upgrade() {
    let dir = Scratch::new("correct");
    let server = HttpServer::start(Fault::None, &dir.0);
    let plot = dir.path("out.svg");
    let upgrade = server.upgrade_command();
    let run = check(&[
        "--target",
        &server.url(),
        "--upgrade",
        &upgrade,
        "--every",
        "400ms",
        "--upgrade-count",
        "2",
        "--connections",
        "4",
        "--mode",
        "mixed",
        "--json",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let json = run.json();
    assert_eq!(json["verdict"], "pass", "{run:?}");
    assert_eq!((run.n(&["failed"]), run.n(&["upgrade_failures"])), (0, 0));
    assert!(run.n(&["requests"]) > 100, "{run:?}");
    assert_eq!(run.n(&["requests"]), run.n(&["successes"]));
    assert_eq!(
        (json["protocol"].as_str(), json["mode"].as_str()),
        (Some("http"), Some("mixed"))
    );
    assert_eq!(json["duration_s"].as_f64(), Some(1.2));
    let upgrades = json["upgrades"].as_array().unwrap();
    assert_eq!(upgrades.len(), 2, "{run:?}");
    for (i, upgrade) in upgrades.iter().enumerate() {
        assert_eq!(upgrade["ok"], true);
        assert_eq!(upgrade["exit_status"], 0);
        let started = upgrade["started_s"].as_f64().unwrap();
        let expected = 0.4 * (i + 1) as f64;
        assert!((expected..expected + 0.5).contains(&started), "{run:?}");
        // The window lasts until the command exited and the new generation
        // answered, plus the 1 s tail.
        let first_new = upgrade["first_new_answer_s"]
            .as_f64()
            .expect("a new generation answered");
        assert!(first_new >= started, "{run:?}");
        assert_eq!(upgrade["new_answered_by"], format!("generation {}", i + 1));
        let exited = started + upgrade["duration_ms"].as_f64().unwrap() / 1000.0;
        let end = upgrade["window_end_s"].as_f64().unwrap();
        assert!((end - exited.max(first_new) - 1.0).abs() < 0.003, "{run:?}");
    }
    let generations: Vec<&String> = json["answered_by"].as_object().unwrap().keys().collect();
    assert_eq!(generations, ["0", "1", "2"], "{run:?}");
    assert_eq!(server.generation(), 2);
    let steady = &json["latency_ms"]["steady"];
    assert!(
        steady["count"].as_u64().unwrap() > 0
            && steady["p50"].as_f64().unwrap() <= steady["max"].as_f64().unwrap()
    );
    for key in ["p50", "p99", "p999", "max"] {
        assert!(
            json["latency_ms"]["upgrade"][key].is_number(),
            "{key}: {run:?}"
        );
    }
    assert!(json["throughput_rps"]["overall"].as_f64().unwrap() > 0.0);
    assert!(!json["throughput_rps"]["per_second"]
        .as_array()
        .unwrap()
        .is_empty());

    let svg = std::fs::read_to_string(&plot).expect("the plot was written");
    assert!(
        svg.starts_with("<svg") || svg.starts_with("<?xml"),
        "{}",
        &svg[..100.min(svg.len())]
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(
        svg.contains("upgrade 1") && svg.contains("upgrade 2"),
        "upgrade markers"
    );
    assert!(!svg.contains("upgrade 3"));
    assert!(svg.contains("<circle"), "latency points");
}

#[test]
fn steady_state_run_without_upgrades_passes() {
    let dir = Scratch::new("steady");
    let server = HttpServer::start(Fault::None, &dir.0);
    let run = check(&[
        "--target",
        &server.url(),
        "--duration",
        "500ms",
        "--connections",
        "2",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("PASS"), "{run:?}");
    assert!(run.stdout.contains("answered by generation 0"), "{run:?}");
    assert!(
        run.stderr.is_empty(),
        "no progress line when stderr is not a terminal: {run:?}"
    );
}

/// Runs a check with one upgrade against a server with `fault`.
fn faulty_run(fault: Fault, mode: &str) -> check_support::Run {
    let dir = Scratch::new("faulty");
    let server = HttpServer::start(fault, &dir.0);
    let upgrade = server.upgrade_command();
    check(&[
        "--target",
        &server.url(),
        "--upgrade",
        &upgrade,
        "--every",
        "500ms",
        "--upgrade-count",
        "1",
        "--connections",
        "4",
        "--mode",
        mode,
        "--json",
    ])
}

#[test]
fn listener_closed_for_300ms_gives_refused_failures() {
    let run = faulty_run(
        Fault::CloseListener(std::time::Duration::from_millis(300)),
        "close",
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.json()["verdict"], "fail");
    assert!(run.n(&["failures", "refused"]) > 0, "{run:?}");
    assert!(run.n(&["failed_upgrade"]) > 0, "{run:?}");
    assert_eq!(run.n(&["failures", "bad_status"]), 0);
    assert!(
        run.f(&["longest_gap_without_new_connection_ms"]) >= 250.0,
        "{run:?}"
    );
}

#[test]
fn connections_reset_during_upgrade_give_reset_failures() {
    let run = faulty_run(Fault::Reset(std::time::Duration::from_millis(300)), "mixed");
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.n(&["failures", "reset"]) > 0, "{run:?}");
    assert_eq!(run.n(&["failures", "refused"]), 0, "{run:?}");
    assert_eq!(run.n(&["failures", "bad_status"]), 0, "{run:?}");
}

#[test]
fn status_500_during_upgrade_gives_bad_status_failures() {
    let run = faulty_run(
        Fault::Status500(std::time::Duration::from_millis(300)),
        "keepalive",
    );
    assert_eq!(run.code, 1, "{run:?}");
    let bad = run.n(&["failures", "bad_status"]);
    assert!(bad > 0, "{run:?}");
    assert_eq!(run.n(&["bad_statuses", "500"]), bad);
    assert_eq!(run.n(&["failed"]), bad, "nothing else failed: {run:?}");
    // The 500s come after the command started, so (but for a request sent
    // just before it and answered late) they started inside its window.
    assert!(run.n(&["failed_upgrade"]) > 0, "{run:?}");
    assert_eq!(run.n(&["failed_upgrade"]) + run.n(&["failed_steady"]), bad);
}

#[test]
fn failing_upgrade_command_fails_the_check_and_shows_its_output() {
    let dir = Scratch::new("cmdfail");
    let server = HttpServer::start(Fault::None, &dir.0);
    let args = |json: bool| {
        let mut args = vec![
            "--target".to_owned(),
            server.url(),
            "--upgrade".to_owned(),
            "echo about to fail; echo details on stderr >&2; exit 3".to_owned(),
            "--every".to_owned(),
            "300ms".to_owned(),
            "--upgrade-count".to_owned(),
            "1".to_owned(),
            "--connections".to_owned(),
            "2".to_owned(),
        ];
        if json {
            args.push("--json".to_owned());
        }
        args
    };
    let table_args = args(false);
    let run = check(&table_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(run.code, 1, "{run:?}");
    for needle in [
        "exit 3",
        "| about to fail",
        "| details on stderr",
        "FAIL: 1 upgrade command(s) failed",
    ] {
        assert!(run.stdout.contains(needle), "{needle:?} in {run:?}");
    }
    let json_args = args(true);
    let run = check(&json_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(run.code, 1, "{run:?}");
    let json = run.json();
    assert_eq!((run.n(&["failed"]), run.n(&["upgrade_failures"])), (0, 1));
    assert_eq!(json["upgrades"][0]["exit_status"], 3);
    assert_eq!(json["upgrades"][0]["ok"], false);
    assert_eq!(json["verdict"], "fail");
}

#[test]
fn nothing_listening_is_refused_and_usage_errors_exit_2() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let run = check(&[
        "--target",
        &format!("http://{dead}/"),
        "--duration",
        "200ms",
        "--connections",
        "1",
        "--json",
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.n(&["failures", "refused"]) > 0);
    assert_eq!(run.n(&["successes"]), 0);

    for args in [
        &["--target", "127.0.0.1:80"][..],
        &["--target", "https://127.0.0.1/"],
        &["--target", "http://127.0.0.1:1/", "--plot", "out.png"],
        &["--target", "http://127.0.0.1:1/", "--upgrade-count", "2"],
        &[
            "--target",
            "http://127.0.0.1:1/",
            "--upgrade",
            "true",
            "--every",
            "5s",
            "--duration",
            "1s",
        ],
        &["--target", "tcp://127.0.0.1:1", "--protocol", "http"],
        &["--target", "http://127.0.0.1:1/", "--mode", "sometimes"],
    ] {
        let run = check(args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stdout.is_empty(), "{args:?}: {run:?}");
    }
}
