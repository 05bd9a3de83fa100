//! `handover check` follows connections, not only requests: long-lived
//! connections with `--echo-check` against a pid-echo server on threads of
//! the test process (survived, bytes verified in order, the pids that served
//! each), and how HTTP keep-alive connections ended (`keep_alive`).

mod check_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use check_support::{check, Fault, HttpServer, Scratch};

/// How often server threads look at their stop flag.
const POLL: Duration = Duration::from_millis(50);

/// A server on threads of the test process, stopped and joined on drop.
struct TestServer {
    addr: SocketAddr,
    trigger: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Accepts connections and runs `serve(stream, generation, stop)` for
    /// each on its own thread. Creating the trigger file bumps `generation`.
    fn start(dir: &Path, serve: fn(TcpStream, &AtomicU64, &AtomicBool)) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let trigger = dir.join("trigger");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, trigger) = (Arc::clone(&stop), trigger.clone());
            std::thread::spawn(move || {
                let generation = Arc::new(AtomicU64::new(0));
                let mut threads = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    if std::fs::remove_file(&trigger).is_ok() {
                        generation.fetch_add(1, Ordering::SeqCst);
                    }
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (generation, stop) = (Arc::clone(&generation), Arc::clone(&stop));
                            threads.push(std::thread::spawn(move || {
                                stream.set_nonblocking(false).unwrap();
                                stream.set_read_timeout(Some(POLL)).unwrap();
                                serve(stream, &generation, &stop);
                            }));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
                for thread in threads {
                    let _ = thread.join();
                }
            })
        };
        TestServer {
            addr,
            trigger,
            stop,
            thread: Some(thread),
        }
    }

    fn upgrade_command(&self) -> String {
        format!("touch '{}'", self.trigger.display())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Like hello's `--echo` listener: each line is answered `<pid> <line>`,
/// the pid being 1000 + the generation, so an "upgrade" hands every open
/// connection to a new pid without closing it.
fn pid_echo(stream: TcpStream, generation: &AtomicU64, stop: &AtomicBool) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::SeqCst) {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) if line.ends_with('\n') => {
                let pid = 1000 + generation.load(Ordering::SeqCst);
                if writer
                    .write_all(format!("{pid} {line}").as_bytes())
                    .is_err()
                {
                    return;
                }
                line.clear();
            }
            Ok(_) => {}
            Err(e) if timed_out(&e) => {}
            Err(_) => return,
        }
    }
}

/// An HTTP/1.1 server that answers every third response on a connection
/// with `Connection: close` and closes it.
fn closes_every_third(mut stream: TcpStream, _: &AtomicU64, stop: &AtomicBool) {
    let mut buf = Vec::new();
    let mut answered = 0;
    while !stop.load(Ordering::SeqCst) {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            answered += 1;
            let last = answered == 3;
            let close = if last { "connection: close\r\n" } else { "" };
            let response =
                format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-pid: 77\r\n{close}\r\nok");
            if stream.write_all(response.as_bytes()).is_err() || last {
                return;
            }
            continue;
        }
        let mut chunk = [0u8; 2048];
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if timed_out(&e) => {}
            Err(_) => return,
        }
    }
}

#[test]
fn two_hundred_echo_checked_long_lived_connections_survive_and_every_byte_is_verified() {
    let dir = Scratch::new("echo200");
    let server = TestServer::start(&dir.0, pid_echo);
    let run = check(&[
        "--target",
        &format!("tcp://{}", server.addr),
        "--protocol",
        "long-lived",
        "--echo-check",
        "--connections",
        "200",
        "--interval",
        "20ms",
        "--duration",
        "1s",
        "--json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.n(&["failed"]), 0, "{run:?}");
    let json = run.json();
    let long_lived = &json["long_lived"];
    assert_eq!(long_lived["echo_check"], true);
    assert_eq!(run.n(&["long_lived", "connections"]), 200);
    assert_eq!(run.n(&["long_lived", "survived"]), 200, "{run:?}");
    assert_eq!(run.n(&["long_lived", "reopened"]), 0);
    let sent = run.n(&["long_lived", "bytes_sent"]);
    assert!(sent > 0);
    assert_eq!(run.n(&["long_lived", "bytes_verified"]), sent);
    let per_connection = long_lived["per_connection"].as_array().unwrap();
    assert_eq!(per_connection.len(), 200);
    for conn in per_connection {
        assert_eq!(conn["survived"], true, "{conn}");
        assert_eq!(conn["opened"], 1, "{conn}");
        assert_eq!(conn["pids"], serde_json::json!(["1000"]), "{conn}");
    }
    assert!(json["keep_alive"].is_null());
}

#[test]
fn connections_handed_to_a_new_pid_by_an_upgrade_survive_and_are_served_by_two_pids() {
    let dir = Scratch::new("handed");
    let server = TestServer::start(&dir.0, pid_echo);
    let upgrade = server.upgrade_command();
    let run = check(&[
        "--target",
        &format!("tcp://{}", server.addr),
        "--protocol",
        "long-lived",
        "--echo-check",
        "--lines",
        "3",
        "--connections",
        "4",
        "--interval",
        "20ms",
        "--upgrade",
        &upgrade,
        "--every",
        "500ms",
        "--upgrade-count",
        "1",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("long-lived connections: "))
        .unwrap_or_else(|| panic!("no long-lived line: {run:?}"));
    assert_eq!(
        line.split("; bytes verified").next(),
        Some(
            "long-lived connections: 4, survived every upgrade (never reopened, no failure): 4; \
             served by more than one pid: 4"
        ),
        "{run:?}"
    );
}

#[test]
fn keep_alive_connections_are_reported_closed_with_connection_close_or_kept() {
    let dir = Scratch::new("keepalive");
    let closing = TestServer::start(&dir.0, closes_every_third);
    let run = check(&[
        "--target",
        &format!("http://{}/", closing.addr),
        "--connections",
        "2",
        "--duration",
        "500ms",
        "--json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let json = run.json();
    let opened = run.n(&["keep_alive", "opened"]);
    let announced = run.n(&["keep_alive", "closed_announced"]);
    assert!(announced >= 2, "{run:?}");
    assert_eq!(run.n(&["keep_alive", "closed_by_server"]), announced);
    assert_eq!(run.n(&["keep_alive", "closed_unannounced"]), 0, "{run:?}");
    // Each worker's last connection may still be open at the end.
    assert_eq!(
        announced + run.n(&["keep_alive", "kept"]),
        opened,
        "{run:?}"
    );
    let first = &json["keep_alive"]["per_connection"][0];
    assert_eq!(first["end"], "closed_announced");
    assert_eq!(first["responses"], 3);
    assert_eq!(first["pids"], serde_json::json!(["77"]));
    assert!(json["long_lived"].is_null());

    let keeping = HttpServer::start(Fault::None, &dir.0);
    let run = check(&[
        "--target",
        &keeping.url(),
        "--connections",
        "3",
        "--duration",
        "300ms",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(
            "keep-alive connections: opened 3, closed by the server 0 (announced with \
             Connection: close: 0, without: 0), kept to the end: 3, dropped by the client \
             after a failure: 0"
        ),
        "{run:?}"
    );
}

#[test]
fn echo_check_and_lines_need_a_line_protocol() {
    for args in [
        &["--target", "http://127.0.0.1:1/", "--echo-check"][..],
        &["--target", "http://127.0.0.1:1/", "--lines", "2"],
        &["--target", "tcp://127.0.0.1:1", "--lines", "0"],
    ] {
        let run = check(args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
    }
}
