//! Shared support of the `handover check` tests: run the `handover` binary
//! with a time bound, and small servers on threads of the test process —
//! correct or deliberately broken — whose "upgrade" is triggered by the upgrade
//! command creating a file (`touch TRIGGER`).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use handover_testkit::Scratch;

/// Bound on one `handover check` run in these tests.
pub const RUN_LIMIT: Duration = Duration::from_secs(25);

/// What a `handover check` run printed and returned.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The `--json` report.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// A fractional number of the report.
    pub fn f(&self, path: &[&str]) -> f64 {
        let json = self.json();
        let mut value = &json;
        for key in path {
            value = &value[key];
        }
        value
            .as_f64()
            .unwrap_or_else(|| panic!("{path:?} is not a number in\n{}", self.stdout))
    }

    /// A count of the report, e.g. `run.n(&["failures", "refused"])`.
    pub fn n(&self, path: &[&str]) -> u64 {
        let json = self.json();
        let mut value = &json;
        for key in path {
            value = &value[key];
        }
        value
            .as_u64()
            .unwrap_or_else(|| panic!("{path:?} is not a count in\n{}", self.stdout))
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `handover check ARGS`, killing it (by its pid) past [`RUN_LIMIT`].
pub fn check(args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_handover"))
        .arg("check")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start handover");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("handover check {args:?} ran longer than {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// How a [`HttpServer`] misbehaves for a while after each "upgrade".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Always correct.
    None,
    /// Closes its listening socket, binds it again after the time.
    CloseListener(Duration),
    /// Resets (SO_LINGER 0) every connection that sends a request.
    Reset(Duration),
    /// Answers 500.
    Status500(Duration),
}

/// State shared by a test server's threads.
struct Shared {
    stop: AtomicBool,
    generation: AtomicU64,
    /// Until when the current fault lasts (ms since `epoch`).
    faulty_until_ms: AtomicU64,
    epoch: Instant,
    fault: Fault,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn faulty(&self) -> bool {
        self.now_ms() < self.faulty_until_ms.load(Ordering::SeqCst)
    }
}

/// An HTTP/1.1 server on threads of the test process: keep-alive, `x-generation`
/// header; when the trigger file appears it bumps its generation, deletes the
/// file and misbehaves as its [`Fault`] says.
pub struct HttpServer {
    pub addr: SocketAddr,
    pub trigger: PathBuf,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl HttpServer {
    pub fn start(fault: Fault, dir: &Path) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let trigger = dir.join("upgrade-trigger");
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            faulty_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            fault,
        });
        let accept = {
            let shared = Arc::clone(&shared);
            let trigger = trigger.clone();
            std::thread::spawn(move || accept_loop(listener, addr, &trigger, &shared))
        };
        HttpServer {
            addr,
            trigger,
            shared,
            threads: vec![accept],
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The upgrade command that triggers this server.
    pub fn upgrade_command(&self) -> String {
        format!("touch '{}'", self.trigger.display())
    }

    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::SeqCst)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Polls `trigger`; on seeing it, removes it and returns `true`.
fn triggered(trigger: &Path) -> bool {
    std::fs::remove_file(trigger).is_ok()
}

fn accept_loop(listener: TcpListener, addr: SocketAddr, trigger: &Path, shared: &Arc<Shared>) {
    let mut listener = Some(listener);
    let mut reopen_at = None;
    let mut connections = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        if triggered(trigger) {
            shared.generation.fetch_add(1, Ordering::SeqCst);
            let fault_for = match shared.fault {
                Fault::None => Duration::ZERO,
                Fault::CloseListener(d) | Fault::Reset(d) | Fault::Status500(d) => d,
            };
            let until = shared.now_ms() + fault_for.as_millis() as u64;
            shared.faulty_until_ms.store(until, Ordering::SeqCst);
            if let Fault::CloseListener(d) = shared.fault {
                listener = None;
                reopen_at = Some(Instant::now() + d);
            }
        }
        if reopen_at.is_some_and(|at| Instant::now() >= at) {
            let reopened = TcpListener::bind(addr).expect("bind the same port again");
            reopened.set_nonblocking(true).unwrap();
            listener = Some(reopened);
            reopen_at = None;
        }
        let Some(open) = &listener else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        match open.accept() {
            Ok((stream, _)) => {
                let shared = Arc::clone(shared);
                connections.push(std::thread::spawn(move || serve_http(stream, &shared)));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    for connection in connections {
        let _ = connection.join();
    }
}

/// Reads one request head into `buf` (keeping any bytes after it); `None`
/// when the client is gone or the server stops.
fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>, shared: &Shared) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 2048];
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if is_timeout(&e) => {
                if shared.stop.load(Ordering::SeqCst) {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn serve_http(mut stream: TcpStream, shared: &Shared) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = Vec::new();
    while let Some(request) = read_head(&mut stream, &mut buf, shared) {
        let faulty = shared.faulty();
        if faulty && matches!(shared.fault, Fault::Reset(_)) {
            socket2::SockRef::from(&stream)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            return; // dropped with linger 0: RST
        }
        let status = if faulty && matches!(shared.fault, Fault::Status500(_)) {
            "500 Internal Server Error"
        } else {
            "200 OK"
        };
        let close = request.to_ascii_lowercase().contains("connection: close");
        let generation = shared.generation.load(Ordering::SeqCst);
        let body = format!("test server generation={generation}\n");
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nx-generation: {generation}\r\n{}\r\n{body}",
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        if stream.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// A line echo server on threads of the test process. With `drop_one`, the
/// trigger file makes it shut down one open connection.
pub struct LineServer {
    pub addr: SocketAddr,
    pub trigger: PathBuf,
    stop: Arc<AtomicBool>,
    /// Connections shut down by the server.
    pub dropped: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl LineServer {
    pub fn start(drop_one: bool, dir: &Path) -> LineServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let trigger = dir.join("line-trigger");
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, dropped, trigger) =
                (Arc::clone(&stop), Arc::clone(&dropped), trigger.clone());
            std::thread::spawn(move || {
                let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
                let mut threads = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    if triggered(&trigger) && drop_one {
                        if let Some(victim) = open.lock().unwrap().pop() {
                            let _ = victim.shutdown(std::net::Shutdown::Both);
                            dropped.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    match listener.accept() {
                        Ok((stream, _)) => {
                            open.lock().unwrap().push(stream.try_clone().unwrap());
                            let stop = Arc::clone(&stop);
                            threads.push(std::thread::spawn(move || echo_lines(stream, &stop)));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
                for thread in threads {
                    let _ = thread.join();
                }
            })
        };
        LineServer {
            addr,
            trigger,
            stop,
            dropped,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    pub fn upgrade_command(&self) -> String {
        format!("touch '{}'", self.trigger.display())
    }
}

impl Drop for LineServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn echo_lines(stream: TcpStream, stop: &AtomicBool) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) if line.ends_with('\n') => {
                if writer.write_all(line.as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}
