//! Stop signals and the drain: in-flight work finishes, the drain ends as soon as
//! the last connection does (never by sleeping), and the deadline is enforced.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use support::*;

/// Sends a request and returns the stream, with the request on the wire.
fn send(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    stream
}

/// Reads one response with a Content-Length body.
fn read_response(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return Ok(text);
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits() {
    let server = Server::start("term", &[]);
    let pid = server.current_pid().unwrap();
    // Long enough that the response is built after SIGTERM even on a busy machine.
    let mut slow = send(server.addr, "/slow?ms=3000");
    wait_until(
        "the request to reach the server",
        Duration::from_secs(5),
        || (fds_of(pid).len() > stable_fds(pid).len()).then_some(()),
    );
    signal(pid, Signal::TERM);
    let response = read_response(&mut slow).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
    server.wait_exit(pid, Duration::from_secs(5));
    assert!(!server.pid_file.exists(), "the PID file is removed on stop");
    assert_eq!(
        TcpStream::connect(server.addr).unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
}

#[test]
fn sigint_exits_at_once() {
    let server = Server::start("int", &[]);
    let pid = server.current_pid().unwrap();
    let mut slow = send(server.addr, "/slow?ms=10000");
    wait_until(
        "the request to reach the server",
        Duration::from_secs(5),
        || (fds_of(pid).len() > stable_fds(pid).len()).then_some(()),
    );
    let started = Instant::now();
    signal(pid, Signal::INT);
    server.wait_exit(pid, Duration::from_secs(5));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "fast exit took {:?}",
        started.elapsed()
    );
    assert!(
        read_response(&mut slow).is_err(),
        "the in-flight request is cut"
    );
}

#[test]
fn drain_ends_when_the_last_connection_ends_not_at_the_deadline() {
    let mut server = Server::start("quick", &["--drain-timeout", "30s"]);
    let mut slow = send(server.addr, "/slow?ms=500");
    let sent = Instant::now();
    let (old, _) = server.upgrade();
    assert!(read_response(&mut slow)
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    server.wait_exit(old, Duration::from_secs(10));
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "the old process lingered: {:?}",
        sent.elapsed()
    );
}

#[test]
fn an_idle_keepalive_connection_is_closed_at_the_deadline() {
    // Without migration (with it, the connection would move to the successor:
    // tests/migration.rs).
    let mut server = Server::start("deadline", &["--drain-timeout", "700ms", "--no-migration"]);
    let mut idle = send(server.addr, "/");
    assert!(read_response(&mut idle)
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    let mark = server.log_text().len();
    let (old, _) = server.upgrade();
    let committed = Instant::now();
    // The client stays idle: the old process waits for it until the deadline.
    let mut rest = Vec::new();
    assert_eq!(
        idle.read_to_end(&mut rest).unwrap(),
        0,
        "closed without a byte"
    );
    let waited = committed.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "closed after only {waited:?}"
    );
    server.wait_exit(old, Duration::from_secs(10));
    let line = server.wait_log("drain deadline reached", mark, Duration::from_secs(5));
    assert!(line.contains("connections=1"), "{line}");
}

#[test]
fn systemd_hears_ready_reloading_mainpid_and_stopping() {
    let scratch = Scratch::new("notify");
    let socket_path = scratch.path("notify.sock");
    let systemd = FakeNotifySocket::bind(socket_path.clone());
    let next = || systemd.next();
    let args = ["--listen", "127.0.0.1:0"];
    let mut server = Server::start_with_env("notify", &args, &[("NOTIFY_SOCKET", &socket_path)]);
    let first = server.current_pid().unwrap();
    assert_eq!(next(), "READY=1\n");
    for _ in 0..2 {
        let (_, new) = server.upgrade();
        let reloading = next();
        assert!(
            reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{reloading}"
        );
        assert_eq!(next(), format!("MAINPID={new}\nREADY=1\n"));
    }
    assert_ne!(server.current_pid(), Some(first));
    signal(server.current_pid().unwrap(), Signal::TERM);
    assert_eq!(next(), "STOPPING=1\n");
}

type H2Sender = hyper::client::conn::http2::SendRequest<String>;
type H2Connection = tokio::task::JoinHandle<hyper::Result<()>>;

/// Opens an HTTP/2 (prior knowledge) connection; its driver runs on `runtime`.
fn http2_connect(runtime: &tokio::runtime::Runtime, addr: SocketAddr) -> (H2Sender, H2Connection) {
    let (sender, connection) = runtime.block_on(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap()
    });
    (sender, runtime.spawn(connection))
}

#[test]
fn http2_connections_get_goaway_and_finish_their_streams() {
    // The successor's start-up delay gives the slow stream time to reach the old
    // process before the commit.
    let mut server = Server::start("h2", &["--startup-delay", "300ms"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let addr = server.addr;
    let request = move |path: &str| {
        hyper::Request::get(format!("http://{addr}{path}"))
            .body(String::new())
            .unwrap()
    };
    let old = server.current_pid().unwrap();
    let (mut sender, connection) = http2_connect(&runtime, addr);
    let first = runtime.block_on(sender.send_request(request("/"))).unwrap();
    assert_eq!(first.version(), hyper::Version::HTTP_2);
    let slow = runtime.spawn(sender.send_request(request("/slow?ms=1000")));
    let (old_again, _) = server.upgrade();
    assert_eq!(old, old_again);
    runtime.block_on(async {
        let response = slow.await.unwrap().expect("the stream in flight finishes");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-pid"], old.to_string().as_str());
        // GOAWAY: the connection ends cleanly, long before the 30 s drain deadline.
        let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
        assert!(
            matches!(ended, Ok(Ok(Ok(())))),
            "connection ended: {ended:?}"
        );
        assert!(sender.send_request(request("/")).await.is_err());
    });
    server.wait_exit(old, Duration::from_secs(10));
}

#[test]
fn http2_connection_idle_at_drain_gets_goaway_after_its_first_request() {
    let mut server = Server::start("h2-late", &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let addr = server.addr;
    let (mut sender, connection) = http2_connect(&runtime, addr);
    let (old, _) = server.upgrade();
    runtime.block_on(async {
        let request = hyper::Request::get(format!("http://{addr}/"))
            .body(String::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.headers()["x-pid"], old.to_string().as_str());
        let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
        assert!(
            matches!(ended, Ok(Ok(Ok(())))),
            "connection ended: {ended:?}"
        );
    });
    server.wait_exit(old, Duration::from_secs(10));
}
