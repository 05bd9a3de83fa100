//! `handover run` steers new TCP connections: none reaches a new child before it
//! is ready, none reaches the old child once the new one is, even if the old one
//! keeps accepting while it drains; and a port someone else holds is an error.

mod run_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use run_support::*;

/// The two tests under load one at a time: the latency bound below is about
/// the supervisor, not about two Python servers sharing two cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One request on a new connection: the pid that answered, and how long it took.
fn pid_answering(addr: SocketAddr) -> (u32, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let pid = response
        .lines()
        .find_map(|line| line.strip_prefix("x-pid: "))
        .unwrap_or_else(|| panic!("no x-pid in {response:?}"))
        .trim()
        .parse()
        .unwrap();
    (pid, started.elapsed())
}

#[test]
fn new_connections_go_to_the_ready_child_and_only_to_it() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The old child keeps accepting for 3 s after its stop signal: with one
    // shared socket it would take about half the new connections meanwhile.
    let supervisor = Supervisor::start(
        "steering",
        &["--ready", "notify"],
        &[
            "python3",
            fixture("notify_server.py").to_str().unwrap(),
            "--startup-delay",
            "2",
            "--linger",
            "3",
        ],
    );
    let old = supervisor.current_pid();
    let fds_before = fds_at_rest(supervisor.process.id());
    let upgrade = supervisor.upgrade_in_background();
    // One client, one request at a time, until the old child is gone.
    let mut answers = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !upgrade.is_finished() {
        assert!(Instant::now() < deadline, "the upgrade did not finish");
        answers.push(pid_answering(supervisor.addr));
    }
    let output = upgrade.join().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let new = supervisor.current_pid();
    assert_ne!(new, old);

    let first_new = answers
        .iter()
        .position(|(pid, _)| *pid == new)
        .expect("the new child answered");
    assert!(
        first_new > 0,
        "the old child answered while the new one started"
    );
    assert!(
        answers[..first_new].iter().all(|(pid, _)| *pid == old),
        "{answers:?}"
    );
    let after = &answers[first_new..];
    let to_old = after.iter().filter(|(pid, _)| *pid == old).count();
    assert_eq!(
        to_old,
        0,
        "the old child got {to_old} of {} connections after the new one was ready",
        after.len()
    );
    assert!(
        after.len() > 10,
        "requests while the old child lingered: {}",
        after.len()
    );
    // Nobody waited in the new child's queue while it was starting: the first
    // client sent there would have waited out most of the 2 s start-up.
    let slowest = answers.iter().map(|(_, took)| *took).max().unwrap();
    assert!(
        slowest < Duration::from_secs(1),
        "a request took {slowest:?}"
    );
    assert!(
        exited(old),
        "the old child is gone once the upgrade reports it"
    );
    // The old child's socket was closed with it: one web socket, a new one.
    let settled = try_wait_until(Duration::from_secs(5), || {
        let now = fds_of(supervisor.process.id());
        (now.len() == fds_before.len()).then_some(now)
    });
    let after = settled.unwrap_or_else(|| {
        panic!(
            "supervisor fds before {fds_before:?}, after {:?}",
            fds_of(supervisor.process.id())
        )
    });
    assert_ne!(after, fds_before, "the web socket is the new child's");
}

#[test]
fn a_port_in_use_is_an_error_and_nothing_starts() {
    let scratch = Scratch::new("taken");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let marker = scratch.path("started");
    let output = Command::new(HANDOVER)
        .args(["run", "--listen", &format!("web={address}"), "--pid-file"])
        .arg(scratch.path("handover.pid"))
        .args(["--", "touch"])
        .arg(&marker)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = text(&output);
    assert!(!output.status.success(), "{said}");
    assert!(said.contains("cannot bind \"web\""), "{said}");
    assert!(said.contains("in use"), "{said}");
    assert!(!marker.exists(), "the command must not start");
    // The holder's socket is untouched.
    let _client = TcpStream::connect(address).unwrap();
    let (_accepted, _) = taken.accept().unwrap();
}

/// Over IPv6 the readiness probe is routed by its IPv6 source address and port.
#[test]
fn an_ipv6_listener_is_steered_and_probed_too() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let supervisor = Supervisor::start_listening(
        "steering-v6",
        "web=[::1]:0",
        &["--ready", "http:/"],
        &[
            "python3",
            fixture("notify_server.py").to_str().unwrap(),
            "--startup-delay",
            "0.5",
        ],
    );
    assert!(supervisor.addr.is_ipv6(), "{}", supervisor.addr);
    let old = supervisor.current_pid();
    let (output, report) = supervisor.check(&[
        "--upgrade",
        &supervisor.upgrade_command(),
        "--every",
        "1s",
        "--upgrade-count",
        "3",
        "--duration",
        "5s",
        "--connections",
        "4",
        "--mode",
        "mixed",
    ]);
    assert_clean(&report, &supervisor);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_ne!(supervisor.current_pid(), old);
    assert_eq!(
        report["upgrades"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|u| u["ok"] == true)
            .count(),
        3
    );
}
