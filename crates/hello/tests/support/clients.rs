//! Clients that watch their own connection across upgrades: line-echo
//! connections that verify every reply, and keep-alive HTTP connections that
//! note who answered and whether the server closed them. Neither reconnects
//! or retries: a connection that breaks is recorded and ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest any client runs, whatever the test does.
const LIFETIME: Duration = Duration::from_secs(180);

/// What one connection saw.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Exchanges completed and verified.
    pub verified: u64,
    /// The pids that answered, in order, each once.
    pub pids: Vec<u32>,
    /// Why it ended before it was stopped, if it did.
    pub broken: Option<String>,
    /// HTTP: responses that carried `Connection: close`.
    pub told_to_close: u64,
}

impl Seen {
    pub fn answered_by(&mut self, pid: u32) {
        if self.pids.last() != Some(&pid) {
            self.pids.push(pid);
        }
    }
}

/// A set of client threads, stopped together.
pub struct Clients {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Seen>>,
}

impl Clients {
    /// Stops every client; what each saw, in order.
    pub fn stop(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("a client thread panicked"))
            .collect()
    }

    fn start(
        count: usize,
        run: impl Fn(usize, &AtomicBool) -> Seen + Send + Sync + 'static,
    ) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let run = Arc::new(run);
        let threads = (0..count)
            .map(|index| {
                let (stop, run) = (Arc::clone(&stop), Arc::clone(&run));
                std::thread::spawn(move || run(index, &stop))
            })
            .collect();
        Clients { stop, threads }
    }
}

/// `count` echo connections, each sending `c<index>-<seq>` every `every` and
/// checking the reply is `<pid> c<index>-<seq>`.
pub fn echo_clients(addr: SocketAddr, count: usize, every: Duration) -> Clients {
    Clients::start(count, move |index, stop| {
        let mut seen = Seen::default();
        let started = Instant::now();
        let outcome = (|| -> Result<(), String> {
            let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
            let mut reader = BufReader::new(stream);
            for seq in 0u64.. {
                if stop.load(Ordering::Relaxed) || started.elapsed() > LIFETIME {
                    return Ok(());
                }
                let line = format!("c{index}-{seq}");
                writer
                    .write_all(format!("{line}\n").as_bytes())
                    .map_err(|e| format!("write {line}: {e}"))?;
                let mut reply = String::new();
                match reader.read_line(&mut reply) {
                    Ok(0) => return Err(format!("closed by the server before {line}")),
                    Err(e) => return Err(format!("reading the reply to {line}: {e}")),
                    Ok(_) => {}
                }
                let (pid, echoed) = reply
                    .trim_end_matches('\n')
                    .split_once(' ')
                    .ok_or_else(|| format!("reply {reply:?} to {line}"))?;
                if echoed != line {
                    return Err(format!(
                        "reply {reply:?} to {line}: lost, repeated or out of order"
                    ));
                }
                seen.answered_by(pid.parse().map_err(|_| format!("pid in {reply:?}"))?);
                seen.verified += 1;
                std::thread::sleep(every);
            }
            Ok(())
        })();
        seen.broken = outcome.err();
        seen
    })
}

/// `count` keep-alive HTTP connections, each sending `GET /` in a loop (one
/// at a time) and never reconnecting: a `Connection: close` or an end of the
/// connection ends the client.
pub fn keep_alive_clients(addr: SocketAddr, count: usize) -> Clients {
    Clients::start(count, move |_, stop| {
        let mut seen = Seen::default();
        let started = Instant::now();
        let outcome = (|| -> Result<(), String> {
            let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            let mut pending = Vec::new();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < LIFETIME {
                stream
                    .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                    .map_err(|e| format!("write: {e}"))?;
                let response = read_response(&mut stream, &mut pending)?;
                seen.answered_by(response.pid);
                seen.verified += 1;
                if response.close {
                    seen.told_to_close += 1;
                    return Err("the server said Connection: close".into());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(())
        })();
        seen.broken = outcome.err();
        seen
    })
}

/// One parsed response.
pub struct Response {
    pub status: u16,
    pub pid: u32,
    pub close: bool,
    pub body: String,
}

/// Reads one response (with a `Content-Length`) from `stream`; `pending`
/// holds bytes read past the previous one.
pub fn read_response(stream: &mut impl Read, pending: &mut Vec<u8>) -> Result<Response, String> {
    let head_end = loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        fill(stream, pending)?;
    };
    let head = String::from_utf8_lossy(&pending[..head_end]).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            l.strip_prefix(&format!("{name}:"))
                .map(|v| v.trim().to_owned())
        })
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("a response head {head:?}"))?;
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no content-length in {head:?}"))?;
    while pending.len() < head_end + length {
        fill(stream, pending)?;
    }
    let body = String::from_utf8_lossy(&pending[head_end..head_end + length]).into_owned();
    pending.drain(..head_end + length);
    Ok(Response {
        status,
        pid: header("x-pid").and_then(|v| v.parse().ok()).unwrap_or(0),
        close: header("connection").is_some_and(|v| v.contains("close")),
        body,
    })
}

fn fill(stream: &mut impl Read, pending: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk) {
        Ok(0) => Err("closed by the server".into()),
        Ok(n) => {
            pending.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e) => Err(format!("read: {e}")),
    }
}
