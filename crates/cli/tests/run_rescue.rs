//! Keep-alive rescue: the connections an old child drops at shutdown are served
//! by the new child through the supervisor, on the client's own connection.
//!
//! The Go server is the subject: `http.Server.Shutdown`, as its documentation
//! shows, closes idle keep-alive connections at once, which is exactly the
//! behaviour that loses requests without rescue.

mod run_support;

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use run_support::http::{fnv1a64, Connection};
use run_support::servers::go_server;
use run_support::*;

/// One supervisor under test at a time: the machine has two cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// `handover run` of the Go server (built in `build`).
fn go_supervisor(label: &str, build: &Scratch, options: &[&str]) -> Supervisor {
    let binary = go_server(build);
    let mut all = vec!["--ready", "http:/"];
    all.extend_from_slice(options);
    Supervisor::start(label, &all, &[binary.to_str().unwrap()])
}

/// Starts an upgrade and waits until its old child is gone; returns the old
/// pid, the new pid, and the `handover upgrade` output thread.
fn upgrade_until_old_gone(
    supervisor: &Supervisor,
) -> (u32, u32, std::thread::JoinHandle<std::process::Output>) {
    let old = supervisor.current_pid();
    let upgrade = supervisor.upgrade_in_background();
    wait_until("the old child to exit", Duration::from_secs(20), || {
        exited(old).then_some(())
    });
    let new = supervisor.current_pid();
    assert_ne!(old, new);
    (old, new, upgrade)
}

/// The last upgrade's connection counts, once reported.
fn last_counts(supervisor: &Supervisor) -> serde_json::Value {
    wait_until("the rescue's counts", Duration::from_secs(20), || {
        let status = supervisor.status()?;
        let counts = status["upgrades"].as_array()?.last()?["connections"].clone();
        counts.is_object().then_some(counts)
    })
}

fn upgrade_output(upgrade: std::thread::JoinHandle<std::process::Output>) -> String {
    let output = upgrade.join().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    text(&output)
}

#[test]
fn an_idle_connection_the_old_child_closed_is_answered_by_the_new_child() {
    let _turn = turn();
    let build = Scratch::new("go-build");
    let supervisor = go_supervisor("rescue-idle", &build, &[]);
    let mut client = Connection::open(supervisor.addr);
    let first = client.get("/").unwrap();
    let (old, new, upgrade) = upgrade_until_old_gone(&supervisor);
    assert_eq!(first.pid(), Some(old));
    // The old child closed this connection at its shutdown; the supervisor
    // held it open and relays the next request.
    let second = client
        .get("/")
        .expect("the next request on the same connection");
    assert_eq!((second.status, second.pid()), (200, Some(new)));
    assert!(second.closes(), "the relayed answer says Connection: close");
    client.expect_clean_close().unwrap();
    let counts = last_counts(&supervisor);
    assert_eq!(counts["rescued"], 1, "{counts}");
    assert_eq!(counts["lost"], 0, "{counts}");
    let said = upgrade_output(upgrade);
    assert!(said.contains("1 rescued"), "{said}");
}

#[test]
fn two_pipelined_requests_after_the_old_child_let_go_are_both_answered_in_order() {
    let _turn = turn();
    let build = Scratch::new("go-build");
    let supervisor = go_supervisor("rescue-pipelined", &build, &[]);
    let mut client = Connection::open(supervisor.addr);
    client.get("/").unwrap();
    let (_, new, upgrade) = upgrade_until_old_gone(&supervisor);
    let post = |body: &str| {
        format!(
            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    client.send(format!("{}{}", post("first"), post("second!")).as_bytes());
    let one = client.response().unwrap();
    let two = client.response().unwrap();
    assert_eq!(
        one.text(),
        format!("len=5 sum={} pid={new}\n", fnv1a64(b"first"))
    );
    assert_eq!(
        two.text(),
        format!("len=7 sum={} pid={new}\n", fnv1a64(b"second!"))
    );
    assert!(
        !one.closes(),
        "the second request was already sent: keep going"
    );
    assert!(two.closes(), "the last answer says Connection: close");
    client.expect_clean_close().unwrap();
    upgrade_output(upgrade);
}

#[test]
fn a_request_sent_in_two_parts_after_the_old_child_let_go_is_relayed_whole() {
    let _turn = turn();
    let build = Scratch::new("go-build");
    let supervisor = go_supervisor("rescue-halves", &build, &[]);
    let mut client = Connection::open(supervisor.addr);
    client.get("/").unwrap();
    let (_, new, upgrade) = upgrade_until_old_gone(&supervisor);
    client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Le");
    std::thread::sleep(Duration::from_millis(100)); // the client is slow
    client.send(b"ngth: 4\r\n\r\nab");
    std::thread::sleep(Duration::from_millis(100));
    client.send(b"cd");
    let answer = client.response().unwrap();
    assert_eq!(
        answer.text(),
        format!("len=4 sum={} pid={new}\n", fnv1a64(b"abcd"))
    );
    upgrade_output(upgrade);
}

/// The unread bytes of the server side of `client`'s connection to `server`,
/// from /proc/net/tcp (column rx_queue).
fn server_unread(server: SocketAddr, client: SocketAddr) -> Option<u64> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => unreachable!("IPv4 only here"),
    };
    let (local, remote) = (hex(server), hex(client));
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str()))
            .then(|| u64::from_str_radix(fields[4].split(':').nth(1)?, 16).ok())
            .flatten()
    })
}

#[test]
fn a_request_the_old_child_had_read_part_of_is_closed_and_counted_lost() {
    let _turn = turn();
    let build = Scratch::new("go-build");
    let supervisor = go_supervisor("rescue-lost", &build, &[]);
    let mut client = Connection::open(supervisor.addr);
    client.get("/").unwrap();
    client.send(b"GET / HTTP/1.1\r\nHo");
    let local = client.stream.local_addr().unwrap();
    wait_until(
        "the old child to read the half request",
        Duration::from_secs(5),
        || (server_unread(supervisor.addr, local) == Some(0)).then_some(()),
    );
    let (_, _, upgrade) = upgrade_until_old_gone(&supervisor);
    // The rest of the request reaches the supervisor, which cannot make a
    // request of it (its start went with the old child): nobody can answer.
    client.send(b"st: t\r\n\r\n");
    assert!(
        client.response().is_err(),
        "a half-read request cannot be answered"
    );
    let counts = last_counts(&supervisor);
    assert_eq!(counts["lost"], 1, "{counts}");
    assert_eq!(counts["rescued"], 0, "{counts}");
    upgrade_output(upgrade);
}

/// A POST of 1 MiB sent in 64 KiB pieces, one every 20 ms, on `client`;
/// `between` runs after the first piece.
fn slow_post(client: &mut Connection, body: &[u8], between: impl FnOnce()) {
    client.send(
        format!(
            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let mut pieces = body.chunks(64 * 1024);
    client.send(pieces.next().unwrap());
    between();
    for piece in pieces {
        std::thread::sleep(Duration::from_millis(20));
        client.send(piece);
    }
}

#[test]
fn a_slow_post_in_flight_at_the_upgrade_completes_in_exactly_one_child() {
    let _turn = turn();
    let build = Scratch::new("go-build");
    // No probation: the old child gets its stop signal while the POST is
    // still arriving, which is the case under test.
    let supervisor = go_supervisor("rescue-post", &build, &["--probation", "0"]);
    let body: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let expected = |pid: u32| format!("len={} sum={} pid={pid}\n", body.len(), fnv1a64(&body));

    // Sent while the old child is reading it: the old child answers it whole.
    let mut client = Connection::open(supervisor.addr);
    let old = supervisor.current_pid();
    let mut upgrade = None;
    slow_post(&mut client, &body, || {
        upgrade = Some(supervisor.upgrade_in_background())
    });
    let answer = client.response().unwrap();
    assert_eq!(answer.text(), expected(old), "answered by the old child");
    assert!(answer.closes());
    upgrade_output(upgrade.unwrap());

    // Sent on a connection the old child had left idle: the rescue relays it
    // whole to the new child.
    let mut client = Connection::open(supervisor.addr);
    client.get("/").unwrap();
    let (_, new, upgrade) = upgrade_until_old_gone(&supervisor);
    slow_post(&mut client, &body, || {});
    let answer = client.response().unwrap();
    assert_eq!(answer.text(), expected(new), "answered by the new child");
    upgrade_output(upgrade);
}

#[test]
fn a_raw_tcp_connection_the_old_child_dropped_is_relayed_byte_for_byte() {
    let _turn = turn();
    let server = fixture("line_server.py");
    let supervisor = Supervisor::launch(Launch {
        listen: "lines=tcp://127.0.0.1:0",
        ..Launch::new(
            "rescue-raw",
            &["--ready", "tcp"],
            &["python3", server.to_str().unwrap()],
        )
    });
    let mut client = std::net::TcpStream::connect(supervisor.addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut lines = std::io::BufReader::new(client.try_clone().unwrap());
    let mut say = |line: &str| {
        client.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        std::io::BufRead::read_line(&mut lines, &mut answer).unwrap();
        answer
    };
    let old = supervisor.current_pid();
    assert_eq!(say("one"), format!("{old} one\n"));
    let (_, new, upgrade) = upgrade_until_old_gone(&supervisor);
    assert_eq!(say("two"), format!("{new} two\n"));
    assert_eq!(say("three"), format!("{new} three\n"));
    drop((client, lines)); // both descriptors: the client closes
    let counts = last_counts(&supervisor);
    assert_eq!(counts["rescued"], 1, "{counts}");
    upgrade_output(upgrade);
}

#[test]
fn a_child_the_supervisor_may_not_read_is_upgraded_without_rescue_and_the_log_says_why() {
    let _turn = turn();
    // Non-dumpable: pidfd_getfd needs ptrace access, which a non-dumpable
    // process grants only to CAP_SYS_PTRACE — so the supervisor runs as an
    // ordinary user (as root, it would have the capability).
    let server = fixture("notify_server.py");
    let wrapper = "import ctypes, runpy, sys\nctypes.CDLL(None).prctl(4, 0)  # PR_SET_DUMPABLE\nsys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')";
    let root = rustix::process::geteuid().is_root();
    let supervisor = Supervisor::launch(Launch {
        as_user: root.then_some(65534),
        ..Launch::new(
            "rescue-refused",
            &["--ready", "notify"],
            &["python3", "-c", wrapper, server.to_str().unwrap()],
        )
    });
    // This server drains keep-alive connections itself: each client closes.
    Connection::open(supervisor.addr).get("/").unwrap();
    for _ in 0..2 {
        let (_, new, upgrade) = upgrade_until_old_gone(&supervisor);
        upgrade_output(upgrade);
        assert_eq!(
            Connection::open(supervisor.addr).get("/").unwrap().pid(),
            Some(new)
        );
    }
    let log = supervisor.log_text();
    assert!(log.contains("no keep-alive rescue"), "{log}");
    assert!(log.contains("is not permitted"), "{log}");
    assert_eq!(
        log.matches("no keep-alive rescue").count(),
        1,
        "logged once, not at every upgrade:\n{log}"
    );
}

fn fd_count(pid: u32) -> usize {
    fds_of(pid).len()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn a_thousand_idle_keep_alive_connections_are_all_rescued_or_released_and_nothing_leaks() {
    let _turn = turn();
    let build = Scratch::new("go-build");
    let supervisor = go_supervisor("rescue-thousand", &build, &[]);
    let sup = supervisor.process.id();
    // Warm up: one upgrade with a rescued connection, so that what the
    // supervisor allocates once is in the baseline.
    let mut warm = Connection::open(supervisor.addr);
    warm.get("/").unwrap();
    let (_, _, upgrade) = upgrade_until_old_gone(&supervisor);
    warm.get("/").unwrap();
    upgrade_output(upgrade);
    drop(warm);
    wait_until("the warm-up to settle", Duration::from_secs(10), || {
        supervisor.status()?["draining"]
            .as_array()?
            .is_empty()
            .then_some(())
    });
    let (fds_before, rss_before) = (fd_count(sup), rss_kib(sup));

    let mut clients: Vec<Connection> = (0..1000)
        .map(|_| {
            let mut c = Connection::open(supervisor.addr);
            c.get("/").unwrap();
            c
        })
        .collect();
    let started = Instant::now();
    let (_, new, upgrade) = upgrade_until_old_gone(&supervisor);
    // Half of them send their next request; the others stay silent and are
    // closed cleanly after the rescue's idle timeout.
    for client in clients.iter_mut().step_by(2) {
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    for (i, client) in clients.iter_mut().enumerate() {
        if i % 2 == 0 {
            let answer = client.response().expect("a rescued request is answered");
            assert_eq!((answer.status, answer.pid()), (200, Some(new)));
            assert!(answer.closes());
        }
        client
            .expect_clean_close()
            .expect("closed cleanly, not reset");
    }
    let said = upgrade_output(upgrade);
    assert!(said.contains("500 released, 500 rescued, 0 lost"), "{said}");
    eprintln!("1000 connections settled in {:?}", started.elapsed());
    drop(clients);
    let fds_after = wait_until(
        "the supervisor's fds to be back",
        Duration::from_secs(10),
        || {
            let now = fd_count(sup);
            (now <= fds_before).then_some(now)
        },
    );
    let rss_after = rss_kib(sup);
    eprintln!("supervisor fds {fds_before} → {fds_after}, RSS {rss_before} → {rss_after} KiB");
    assert!(
        rss_after <= rss_before + 4096,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}

/// A server that, at its stop signal, reads the start of whatever arrived on an
/// idle connection and closes it: the request a client sends in that moment is
/// lost — unless the rescue holds the idle connections' data back while the
/// child decides (`--rescue-hold`). Without the hold, the same test fails.
fn request_in_the_closing_moment(
    hold: &str,
) -> (
    std::io::Result<run_support::http::Response>,
    serde_json::Value,
) {
    let marker_dir = Scratch::new("hasty-marker");
    let marker = marker_dir.path("stopping");
    let server = fixture("hasty_server.py");
    let supervisor = Supervisor::start(
        "rescue-hold",
        &["--ready", "tcp", "--rescue-hold", hold],
        &[
            "python3",
            server.to_str().unwrap(),
            marker.to_str().unwrap(),
        ],
    );
    let mut client = Connection::open(supervisor.addr);
    client.get("/").unwrap();
    let upgrade = supervisor.upgrade_in_background();
    wait_until(
        "the old child's stop signal",
        Duration::from_secs(20),
        || marker.exists().then_some(()),
    );
    // The old child got its stop signal and will look at its connections in
    // 50 ms: a request now is the one that races it.
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let answer = client.response();
    upgrade_output(upgrade);
    (answer, last_counts(&supervisor))
}

#[test]
fn a_request_racing_the_old_childs_close_is_held_back_and_rescued() {
    let _turn = turn();
    let (answer, counts) = request_in_the_closing_moment("100ms");
    let answer = answer.expect("the request is answered");
    assert_eq!(answer.status, 200);
    assert!(answer.closes());
    assert_eq!(counts["rescued"], 1, "{counts}");
    assert_eq!(counts["lost"], 0, "{counts}");
    // Without the hold, the child reads half of it: lost.
    let (answer, counts) = request_in_the_closing_moment("0s");
    assert!(
        answer.is_err(),
        "without the hold the request is lost: {answer:?}"
    );
    assert_eq!(counts["lost"], 1, "{counts}");
}
