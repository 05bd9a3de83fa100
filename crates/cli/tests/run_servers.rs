//! `handover run` with real servers in another language, each upgraded ten times
//! under load measured by `handover check`: no request may fail.

mod run_support;

use run_support::*;

/// One server under load at a time: three at once on two cores would measure
/// the machine, not the supervisor.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs 10 upgrades under load; `strict` demands 0 failed requests of any kind.
fn ten_upgrades(supervisor: &Supervisor, mode: &str, strict: bool) -> serde_json::Value {
    let upgrade = supervisor.upgrade_command();
    let (output, report) = supervisor.check(&[
        "--upgrade",
        &upgrade,
        "--every",
        "2s",
        "--upgrade-count",
        "10",
        "--duration",
        "24s",
        "--connections",
        "8",
        "--mode",
        mode,
    ]);
    if strict {
        assert_clean(&report, supervisor);
        assert_eq!(output.status.code(), Some(0));
    }
    assert_eq!(
        report["failures"]["refused"], 0,
        "no connection is ever refused: {}",
        report["failures"]
    );
    assert_eq!(
        report["upgrades"].as_array().unwrap().len(),
        10,
        "{}",
        text(&output)
    );
    assert!(
        report["upgrades"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["ok"] == true),
        "an upgrade failed: {}\n{}",
        report["upgrades"],
        supervisor.log_text()
    );
    let answered = report["answered_by"].as_object().unwrap();
    assert!(
        answered.len() >= 10,
        "answered by {answered:?}\nupgrades: {}\n{}",
        report["upgrades"],
        supervisor.log_text()
    );
    report
}

/// Our own Python server: socket.fromfd on LISTEN_FDS, sd_notify READY=1, and a
/// keep-alive-safe drain on SIGTERM.
#[test]
fn python_server_with_sd_notify() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = fixture("notify_server.py");
    let supervisor = Supervisor::start(
        "python",
        &["--ready", "notify"],
        &[
            "python3",
            server.to_str().unwrap(),
            "--startup-delay",
            "0.3",
        ],
    );
    ten_upgrades(&supervisor, "mixed", true);
}

/// gunicorn takes LISTEN_FDS itself (its systemd support); readiness by probing
/// the new child over HTTP.
#[test]
fn gunicorn_through_listen_fds() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = fixture("");
    let supervisor = Supervisor::start(
        "gunicorn",
        &["--ready", "http:/"],
        &[
            "gunicorn",
            "--workers",
            "2",
            "--chdir",
            dir.to_str().unwrap(),
            "wsgi_app:app",
        ],
    );
    ten_upgrades(&supervisor, "mixed", true);
}

/// uvicorn is told its fd with `--fd {fd:web}`. At shutdown uvicorn closes every
/// connection it has accepted but not yet read a request from (h11_impl.py,
/// `shutdown`), idle keep-alive ones included: those clients see a reset that no
/// supervisor can prevent. So here: no refused connection, every upgrade
/// committed, and the losses uvicorn itself causes are printed, not hidden.
#[test]
fn uvicorn_through_fd_argument() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = fixture("");
    let supervisor = Supervisor::start(
        "uvicorn",
        &["--ready", "http:/"],
        &[
            "uvicorn",
            "--fd",
            "{fd:web}",
            "--app-dir",
            dir.to_str().unwrap(),
            "asgi_app:app",
        ],
    );
    let report = ten_upgrades(&supervisor, "close", true);
    eprintln!("uvicorn: {} failed", report["failed"]);
}
