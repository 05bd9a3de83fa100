//! Clients that never retry and open a new connection for every request,
//! recording when each began, how long it took and which pid answered: the
//! load of the crash and probation tests, where what matters is whether a
//! request begun at a given moment was answered.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handover_testkit::wait_until;

/// One request on a new connection.
#[derive(Debug, Clone)]
pub struct Answer {
    pub started: Instant,
    pub took: Duration,
    /// The pid that answered (`x-pid`), or why nothing did.
    pub pid: Result<u32, String>,
}

/// `GET /` on a new connection, waiting up to 30 s for the answer.
pub fn ask(addr: SocketAddr) -> Answer {
    ask_then(addr, || {})
}

/// [`ask`], calling `connected` once the connection is made or refused.
pub fn ask_then(addr: SocketAddr, connected: impl FnOnce()) -> Answer {
    let started = Instant::now();
    let pid = (|| {
        let stream = TcpStream::connect(addr);
        connected();
        let mut stream = stream.map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .map_err(|e| format!("write: {e}"))?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .map_err(|e| format!("read: {e}"))?;
        response
            .lines()
            .find_map(|line| line.strip_prefix("x-pid: "))
            .and_then(|pid| pid.trim().parse().ok())
            .ok_or_else(|| format!("no x-pid in {response:?}"))
    })();
    Answer {
        started,
        took: started.elapsed(),
        pid,
    }
}

/// `workers` clients asking one request after another until stopped (at most
/// 90 s and 20 000 requests each).
pub struct FreshLoad {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl FreshLoad {
    pub fn start(addr: SocketAddr, workers: usize) -> FreshLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let deadline = Instant::now() + Duration::from_secs(90);
        let workers = (0..workers)
            .map(|_| {
                let (stop, answers) = (Arc::clone(&stop), Arc::clone(&answers));
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                            break;
                        }
                        let answer = ask(addr);
                        answers.lock().unwrap().push(answer);
                    }
                })
            })
            .collect();
        FreshLoad {
            stop,
            answers,
            workers,
        }
    }

    /// Whether any answer so far satisfies `test`.
    pub fn any(&self, test: impl Fn(&Answer) -> bool) -> bool {
        self.answers.lock().unwrap().iter().any(test)
    }

    /// How many requests have ended so far (answered or failed).
    pub fn answered(&self) -> usize {
        self.answers.lock().unwrap().len()
    }

    /// Waits until `n` requests begun after `since` have ended.
    pub fn wait_for_answers_after(&self, since: Instant, n: usize) {
        wait_until("answers", Duration::from_secs(60), || {
            let answers = self.answers.lock().unwrap();
            (answers.iter().filter(|a| a.started > since).count() >= n).then_some(())
        });
    }

    /// Stops the clients; every answer, in the order they ended.
    pub fn stop(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.join().unwrap();
        }
        std::mem::take(&mut *self.answers.lock().unwrap())
    }
}
