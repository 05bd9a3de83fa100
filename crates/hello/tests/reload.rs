//! Reload in place (`hello --greeting-file`): the reload hook runs on the
//! signal hello chose (SIGUSR1) and on the wire protocol's `reload` command;
//! the same process serves on, its connections untouched.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use handover_wire::control::{request, Reply, Request};
use rustix::process::Signal;
use support::takeover::get;
use support::*;

fn start(label: &str, greeting: &Path, socket: &Path, extra: &[&str]) -> Server {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--greeting-file",
        greeting.to_str().unwrap(),
        "--takeover",
        socket.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Server::start_with_args(label, &args)
}

/// `reload` over the takeover socket: the final reply.
fn reload(socket: &Path) -> Reply {
    request(socket, Request::Reload, Duration::from_secs(30), |_| {}).unwrap()
}

fn files(label: &str) -> (Scratch, PathBuf, PathBuf) {
    let scratch = Scratch::new(label);
    let (greeting, socket) = (scratch.path("greeting.txt"), scratch.path("takeover.sock"));
    std::fs::write(&greeting, "hello").unwrap();
    (scratch, greeting, socket)
}

/// Under mixed load and with keep-alive connections open, a reload by
/// command and one by SIGUSR1 each change the greeting in place: the same
/// process answers, no request fails, no connection is closed or told to.
#[test]
fn a_reload_changes_the_greeting_in_place_under_load_with_no_failed_request() {
    let (_files, greeting, socket) = files("reload-load");
    let server = start("reload-load", &greeting, &socket, &[]);
    let pid = server.current_pid().unwrap();
    let (load, stats) = mixed_load(server.addr);
    let kept = clients::keep_alive_clients(server.addr, 4);

    std::fs::write(&greeting, "bonjour").unwrap();
    let reply = reload(&socket);
    let Reply::Done { ok: true, message } = &reply else {
        panic!("{reply:?}")
    };
    assert!(
        message.contains(r#"greeting "hello" → "bonjour""#),
        "{message}"
    );
    assert!(get(server.addr, "/").starts_with(&format!("bonjour from pid={pid}")));

    std::fs::write(&greeting, "hola").unwrap();
    let mark = server.log_text().len();
    signal(pid, Signal::USR1);
    server.wait_log("reloaded", mark, Duration::from_secs(10));
    assert!(get(server.addr, "/").starts_with(&format!("hola from pid={pid}")));

    let before = stats.successes();
    assert!(stats.wait_for_successes(before + 100, Duration::from_secs(20)));
    let report = load.stop();
    assert_eq!(report.failure_count(), 0, "{}", report.summary());
    assert_eq!(report.distinct_pids().len(), 1, "{}", report.summary());
    for connection in kept.stop() {
        assert_eq!(connection.broken, None, "{connection:?}");
        assert_eq!(connection.told_to_close, 0, "{connection:?}");
        assert_eq!(connection.pids, vec![pid]);
    }
    assert_eq!(server.current_pid(), Some(pid));
}

/// A new configuration the hook refuses changes nothing, and the caller
/// learns why.
#[test]
fn a_refused_reload_keeps_the_old_greeting_and_says_why() {
    let (_files, greeting, socket) = files("reload-refused");
    let server = start("reload-refused", &greeting, &socket, &[]);
    std::fs::write(&greeting, "two\nlines").unwrap();
    let reply = reload(&socket);
    let Reply::Done { ok: false, message } = &reply else {
        panic!("{reply:?}")
    };
    assert!(
        message.contains("refused, the old one is kept")
            && message.contains("one line of 1 to 256 bytes"),
        "{message}"
    );
    assert!(get(server.addr, "/").starts_with("hello from pid="));
}

/// systemd hears `RELOADING=1` (with `MONOTONIC_USEC`, as `Type=notify-reload`
/// wants) then `READY=1` around a reload, refused or not.
#[test]
fn systemd_hears_reloading_then_ready_around_a_reload() {
    let (files, greeting, socket) = files("reload-notify");
    let notify = files.path("notify.sock");
    let systemd = FakeNotifySocket::bind(notify.clone());
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--greeting-file",
        greeting.to_str().unwrap(),
        "--takeover",
        socket.to_str().unwrap(),
    ];
    let _server = Server::start_with_env("reload-notify", &args, &[("NOTIFY_SOCKET", &notify)]);
    assert_eq!(systemd.next(), "READY=1\n");
    for (text, ok) in [("bonjour", true), ("", false)] {
        std::fs::write(&greeting, text).unwrap();
        assert!(matches!(reload(&socket), Reply::Done { ok: o, .. } if o == ok));
        let reloading = systemd.next();
        assert!(
            reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{reloading}"
        );
        assert_eq!(systemd.next(), "READY=1\n");
    }
}

/// During an upgrade a reload is refused (the successor reads the new
/// configuration as it starts); once the upgrade is over, the successor
/// reloads.
#[test]
fn a_reload_during_an_upgrade_is_refused_and_the_successor_reloads_after() {
    let (_files, greeting, socket) = files("reload-busy");
    let mut server = start(
        "reload-busy",
        &greeting,
        &socket,
        &["--startup-delay", "1s"],
    );
    let old = server.current_pid().unwrap();
    let mark = server.log_text().len();
    signal(old, Signal::HUP);
    server.wait_log("upgrade: starting successor", mark, Duration::from_secs(10));
    let reply = reload(&socket);
    let Reply::Done { ok: false, message } = &reply else {
        panic!("{reply:?}")
    };
    assert!(
        message.contains("reload refused: this process is Upgrading"),
        "{message}"
    );
    let new = wait_until("the successor", Duration::from_secs(30), || {
        server.current_pid().filter(|&pid| pid != old)
    });
    server.pids.push(new);
    server.wait_exit(old, Duration::from_secs(30));
    std::fs::write(&greeting, "bonjour").unwrap();
    assert!(matches!(reload(&socket), Reply::Done { ok: true, .. }));
    assert!(get(server.addr, "/").starts_with(&format!("bonjour from pid={new}")));
}
