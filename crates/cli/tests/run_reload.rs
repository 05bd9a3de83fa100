//! `handover reload` under `handover run`: the current child is sent the
//! reload signal (`--reload-signal`), and is not replaced.

mod run_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

use run_support::fresh::FreshLoad;
use run_support::*;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The body of `GET /`.
fn body(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or(response)
}

/// gunicorn reloads on SIGHUP (new workers that import the app again, the old
/// ones retired gracefully): under load, the greeting changes, the same
/// gunicorn keeps serving, and no request fails.
#[test]
fn reload_sends_gunicorn_its_signal_and_the_new_configuration_serves_with_no_failed_request() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new("reload-gunicorn");
    let greeting = scratch.path("greeting.txt");
    std::fs::write(&greeting, "hello").unwrap();
    let dir = fixture("");
    let supervisor = Supervisor::start_with_env(
        "reload-gunicorn",
        &["--ready", "http:/", "--reload-signal", "HUP"],
        &[
            "gunicorn",
            "--workers",
            "2",
            "--chdir",
            dir.to_str().unwrap(),
            "wsgi_greeting_app:app",
        ],
        &[("GREETING_FILE", greeting.as_path())],
    );
    let child = supervisor.current_pid();
    assert!(body(supervisor.addr).starts_with("hello from gunicorn"));
    let load = FreshLoad::start(supervisor.addr, 2);
    wait_until("the load to run", Duration::from_secs(20), || {
        (load.answered() >= 50).then_some(())
    });

    std::fs::write(&greeting, "bonjour").unwrap();
    let output = supervisor.client("reload", &[]);
    let said = text(&output);
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains(&format!("sent SIGHUP to pid {child}")),
        "{said}"
    );
    wait_until("the new greeting", Duration::from_secs(30), || {
        body(supervisor.addr)
            .starts_with("bonjour from gunicorn")
            .then_some(())
    });
    let before = load.answered();
    wait_until(
        "more load after the reload",
        Duration::from_secs(20),
        || (load.answered() >= before + 50).then_some(()),
    );
    let answers = load.stop();
    let failed: Vec<&String> = answers
        .iter()
        .filter_map(|a| a.pid.as_ref().err())
        .collect();
    assert!(failed.is_empty(), "{failed:#?}\n{}", supervisor.log_text());
    // Reloaded, not replaced: the same child serves, no upgrade was recorded.
    let status = supervisor.status().unwrap();
    assert_eq!(status["current"]["pid"], child, "{status:#}");
    assert_eq!(
        status["upgrades"].as_array().map_or(0, Vec::len),
        0,
        "{status:#}"
    );
}

/// While an upgrade is under way there are two children: a reload is refused
/// (exit 1, with the reason) rather than sent to one of them.
#[test]
fn reload_during_an_upgrade_is_refused_with_the_reason() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let supervisor = Supervisor::start(
        "reload-busy",
        &["--ready", "notify"],
        &[
            "python3",
            fixture("notify_server.py").to_str().unwrap(),
            "--startup-delay",
            "2",
        ],
    );
    let upgrade = supervisor.upgrade_in_background();
    wait_until("the upgrade to start", Duration::from_secs(10), || {
        (supervisor.status()?["slot"] == "upgrading").then_some(())
    });
    let output = supervisor.client("reload", &[]);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(
        said.contains("reload refused: an upgrade is under way"),
        "{said}"
    );
    assert!(upgrade.join().unwrap().status.success());
}
