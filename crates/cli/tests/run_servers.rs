//! `handover run` with real servers in other languages, each written the plain
//! way its documentation shows and upgraded ten times under load measured by
//! `handover check` in mixed mode (keep-alive clients and clients that open a
//! connection per request, none of which retries): no request may fail. Most of
//! these servers close idle keep-alive connections when told to stop; the
//! keep-alive rescue is what saves those clients, and the last test shows it.

mod run_support;

use run_support::servers::{go_server, node_command, puma_activated_command};
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
/// `shutdown`), idle keep-alive ones included; the rescue answers their next
/// request.
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
    ten_upgrades(&supervisor, "mixed", true);
}

/// Go `net/http` with the listener from fd 3 and `http.Server.Shutdown` on
/// SIGTERM, which closes idle keep-alive connections at once.
#[test]
fn go_net_http_with_shutdown() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let build = Scratch::new("go-build");
    let binary = go_server(&build);
    let supervisor = Supervisor::start("go", &["--ready", "http:/"], &[binary.to_str().unwrap()]);
    ten_upgrades(&supervisor, "mixed", true);
}

/// Node `http` with `server.listen({ fd: 3 })` and `server.close()` on SIGTERM,
/// which closes the connections idle at that moment.
#[test]
fn node_http_with_close() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let command = node_command();
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let supervisor = Supervisor::start("node", &["--ready", "http:/"], &command);
    ten_upgrades(&supervisor, "mixed", true);
}

/// puma adopts the socket from LISTEN_FDS (`--bind-to-activated-sockets only`,
/// its systemd support). With its default of at most 5 threads, 8 keep-alive
/// clients starve each other even without any upgrade (puma holds a thread per
/// keep-alive connection), so it gets 16.
#[test]
fn puma_through_listen_fds() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut command = puma_activated_command();
    command.splice(1..1, ["--threads".to_owned(), "16:16".to_owned()]);
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let supervisor = Supervisor::start("puma", &["--ready", "http:/"], &command);
    ten_upgrades(&supervisor, "mixed", true);
}

/// The rescue really is what saves the Go and Node keep-alive clients: without
/// it, the same load and upgrades lose requests.
#[test]
fn without_rescue_go_and_node_keep_alive_clients_lose_requests() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let build = Scratch::new("go-build");
    let go = go_server(&build);
    let node = node_command();
    let servers: [(&str, Vec<&str>); 2] = [
        ("go", vec![go.to_str().unwrap()]),
        ("node", node.iter().map(String::as_str).collect()),
    ];
    for (label, command) in servers {
        let supervisor = Supervisor::start(label, &["--ready", "http:/", "--no-rescue"], &command);
        let report = ten_upgrades(&supervisor, "keepalive", false);
        let failed = report["failed"].as_u64().unwrap();
        eprintln!(
            "{label} without rescue: {failed} failed: {}",
            report["failures"]
        );
        assert!(
            failed > 0,
            "{label}: without the rescue, keep-alive clients should lose requests"
        );
    }
}
