//! The `hello` example server as a benchmark subject: located next to this
//! binary, started in its own process group with a PID file, and ended — with
//! every generation it spawned — when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::procs;

/// The `hello` binary in this binary's directory (same target dir and profile).
pub fn locate() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let hello = exe.with_file_name("hello");
    if hello.is_file() {
        Ok(hello)
    } else {
        Err(format!(
            "the `hello` server binary is missing: expected {} next to this program. \
             Build both with `cargo build --release -p hello -p handover-bench`.",
            hello.display()
        ))
    }
}

/// A running `hello` and its later generations.
#[derive(Debug)]
pub struct Hello {
    /// Process group of every generation (the first one's pid).
    pgid: u32,
    /// Where it serves.
    pub addr: SocketAddr,
    /// Its line-echo listener, if started with one (`start_with(…, true)`).
    pub echo: Option<SocketAddr>,
    /// Its PID file: always names the current generation.
    pub pid_file: PathBuf,
    log: PathBuf,
    /// Every generation has been reaped.
    finished: bool,
}

impl Hello {
    /// Starts `exe` on a fresh port in `dir` and waits until it is ready.
    pub fn start(exe: &Path, dir: &Path, startup_delay: Duration) -> Result<Hello, String> {
        Hello::start_with(exe, dir, startup_delay, false)
    }

    /// [`Hello::start`], with a line-echo listener too if `echo`.
    pub fn start_with(
        exe: &Path,
        dir: &Path,
        startup_delay: Duration,
        echo: bool,
    ) -> Result<Hello, String> {
        procs::become_subreaper()?;
        let pid_file = dir.join("hello.pid");
        let log = dir.join("hello.log");
        let _ = std::fs::remove_file(&pid_file);
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = procs::spawn_group(
            Command::new(exe)
                .args(["--listen", "127.0.0.1:0", "--drain-timeout", "5s"])
                .args(if echo {
                    &["--echo", "127.0.0.1:0"][..]
                } else {
                    &[]
                })
                .args(["--ready-timeout", "30s", "--startup-delay"])
                .arg(humantime::format_duration(startup_delay).to_string())
                .arg("--pid-file")
                .arg(&pid_file)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log_file),
        )?;
        let pgid = child.id();
        let stdout = child.stdout.take();
        drop(child); // reaped through `procs`, like every later generation
        let mut hello = Hello {
            pgid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            echo: None,
            pid_file,
            log,
            finished: false,
        };
        let lines = first_lines(stdout, 1 + usize::from(echo), Duration::from_secs(20));
        let find = |scheme: &str| {
            lines.iter().find_map(|line| {
                line.split_whitespace()
                    .find_map(|word| word.strip_prefix(scheme))
                    .and_then(|addr| addr.parse().ok())
            })
        };
        hello.addr = find("http://").ok_or_else(|| {
            format!(
                "unexpected lines from hello: {lines:?}; {}",
                hello.log_tail()
            )
        })?;
        if echo {
            hello.echo =
                Some(find("tcp://").ok_or_else(|| format!("no echo listener in {lines:?}"))?);
        }
        let deadline = Instant::now() + startup_delay + Duration::from_secs(20);
        while hello.current_pid() != Some(pgid) {
            if Instant::now() >= deadline || procs::has_exited(pgid) {
                return Err(format!("hello did not become ready; {}", hello.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(hello)
    }

    /// The current generation's pid, from the PID file.
    pub fn current_pid(&self) -> Option<u32> {
        read_pid(&self.pid_file)
    }

    /// The server log (every generation writes to it).
    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    /// The end of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!("last lines of {}:\n{tail}", self.log.display())
    }

    /// Stops it gracefully (SIGTERM to the current generation) and reaps every
    /// generation. `Err` if something had to be killed.
    pub fn stop(mut self) -> Result<(), String> {
        if let Some(pid) = self.current_pid() {
            let _ = procs::signal(pid, Signal::TERM);
        }
        let clean = procs::finish_group(self.pgid, Duration::from_secs(15));
        self.finished = true;
        if clean {
            Ok(())
        } else {
            Err(format!(
                "hello did not stop within 15 s and was killed; {}",
                self.log_tail()
            ))
        }
    }
}

impl Drop for Hello {
    /// On an error path: kill every generation at once and reap them.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        procs::kill_group(self.pgid);
        procs::finish_group(self.pgid, Duration::from_secs(5));
    }
}

/// Reads a pid from a PID file.
pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The first `count` lines of `stdout`, waiting up to `timeout` for each. A
/// thread keeps reading (and discarding) later lines, so that no generation
/// blocks on a full pipe; it ends when the last generation closes the pipe.
fn first_lines(
    stdout: Option<std::process::ChildStdout>,
    count: usize,
    timeout: Duration,
) -> Vec<String> {
    let Some(stdout) = stdout else {
        return Vec::new();
    };
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = send.send(line);
        }
    });
    (0..count)
        .map_while(|_| receive.recv_timeout(timeout).ok())
        .collect()
}
