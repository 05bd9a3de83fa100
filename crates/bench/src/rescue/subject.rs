//! The subject: `handover run` (the release binary next to this one) with the
//! Go `net/http` test server, in a process group of its own; its status by
//! `handover status --json`, upgrades by `handover upgrade`, and the moment an
//! old child exits by `poll(2)` on a pidfd.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::process::{pidfd_open, Pid, PidfdFlags, Signal};

use crate::{cleanup, procs};

/// The `handover` binary in this binary's directory, unless given.
pub fn locate_handover(given: Option<&Path>) -> Result<PathBuf, String> {
    let path = match given {
        Some(path) => path.to_owned(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this program: {e}"))?
            .with_file_name("handover"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "the `handover` binary is missing: expected {}. Build it with \
             `cargo build --release -p handover-cli -p handover-bench`, or pass --handover.",
            path.display()
        ))
    }
}

/// The Go test server of crates/cli/tests/fixtures, built into `dir` the way
/// the tests build it (crates/cli/tests/run_support/servers.rs), unless given.
pub fn go_server(given: Option<&Path>, dir: &Path) -> Result<PathBuf, String> {
    if let Some(path) = given {
        return if path.is_file() {
            Ok(path.to_owned())
        } else {
            Err(format!("--go-server {}: no such file", path.display()))
        };
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cli/tests/fixtures/go_server.go");
    if !source.is_file() {
        return Err(format!(
            "{} is missing: pass a built server with --go-server",
            source.display()
        ));
    }
    let output = dir.join("go_server");
    let cache = std::env::temp_dir().join("handover-test-go");
    let log = dir.join("go-build.log");
    let log_file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut command = Command::new("go");
    command
        .arg("build")
        .arg("-o")
        .arg(&output)
        .arg(&source)
        .current_dir(dir)
        .env("GOCACHE", cache.join("cache"))
        .env("GOPATH", cache.join("path"))
        .env("HOME", cache.join("home"))
        .env("CGO_ENABLED", "0")
        .env("GOTOOLCHAIN", "local")
        .env_remove("GOFLAGS")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
        .stderr(log_file);
    eprintln!("rescue: building {}", source.display());
    let child = procs::spawn_group(&mut command)
        .map_err(|e| format!("{e} (the Go toolchain is needed, or pass --go-server)"))?;
    let status =
        wait_child(child, Duration::from_secs(300)).map_err(|e| format!("go build: {e}"))?;
    if !status.success() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        return Err(format!("go build failed ({status}):\n{text}"));
    }
    Ok(output)
}

/// Waits up to `timeout` for `child` (started by [`procs::spawn_group`]);
/// kills its group when it takes longer.
pub fn wait_child(mut child: Child, timeout: Duration) -> Result<ExitStatus, String> {
    let deadline = Instant::now() + timeout;
    let pid = child.id();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                cleanup::unregister(pid);
                return Ok(status);
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                procs::kill_group(pid);
                let _ = child.wait();
                cleanup::unregister(pid);
                return Err(format!("pid {pid} still running after {timeout:?}: killed"));
            }
            Err(e) => return Err(format!("wait for pid {pid}: {e}")),
        }
    }
}

/// A running `handover run` with the Go server.
#[derive(Debug)]
pub struct Supervised {
    /// The supervisor's pid, also the process group of everything under it.
    pub pid: u32,
    /// Where it listens.
    pub addr: SocketAddr,
    handover: PathBuf,
    pid_file: PathBuf,
    log: PathBuf,
    finished: bool,
}

impl Supervised {
    /// `handover run --listen web=127.0.0.1:0 --ready http:/ --rescue-idle IDLE
    /// -- SERVER` (see [`Supervised::launch`]).
    pub fn start(
        handover: &Path,
        server: &Path,
        dir: &Path,
        idle: Duration,
    ) -> Result<Supervised, String> {
        let idle = humantime::format_duration(idle).to_string();
        Supervised::launch(
            handover,
            dir,
            // Measured: the rescue at the stop signal, not the probation before it.
            &[
                "--ready",
                "http:/",
                "--probation",
                "100ms",
                "--rescue-idle",
                &idle,
            ],
            &[server.as_os_str()],
        )
    }

    /// `handover run --listen web=127.0.0.1:0 --pid-file … OPTIONS -- COMMAND`,
    /// waiting (up to 30 s) until its first child is current.
    pub fn launch(
        handover: &Path,
        dir: &Path,
        options: &[&str],
        command: &[&std::ffi::OsStr],
    ) -> Result<Supervised, String> {
        let pid_file = dir.join("handover.pid");
        let log = dir.join("handover.log");
        let _ = std::fs::remove_file(&pid_file);
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = procs::spawn_group(
            Command::new(handover)
                .args(["run", "--listen", "web=127.0.0.1:0"])
                .args(options)
                .arg("--pid-file")
                .arg(&pid_file)
                .arg("--")
                .args(command)
                .env("NO_COLOR", "1")
                .env_remove("RUST_LOG")
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file),
        )?;
        let pid = child.id();
        drop(child); // reaped through `procs`
        let mut supervised = Supervised {
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            handover: handover.to_owned(),
            pid_file,
            log,
            finished: false,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if procs::has_exited(pid) {
                return Err(format!("handover run exited; {}", supervised.log_tail()));
            }
            if let Ok(status) = supervised.status() {
                if status["current"]["pid"].is_u64() {
                    break status;
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no child became ready within 30 s; {}",
                    supervised.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        supervised.addr = status["sockets"][0]["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("no socket address in the status: {status}"))?;
        Ok(supervised)
    }

    /// `handover status --json` (bounded: 10 s).
    pub fn status(&self) -> Result<serde_json::Value, String> {
        let out = self.log.with_file_name("status.json");
        let file = std::fs::File::create(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        let child = procs::spawn_group(
            Command::new(&self.handover)
                .args(["status", "--json", "--pid-file"])
                .arg(&self.pid_file)
                .stdin(Stdio::null())
                .stdout(file)
                .stderr(Stdio::null()),
        )?;
        let status = wait_child(child, Duration::from_secs(10))?;
        if !status.success() {
            return Err(format!("handover status: {status}"));
        }
        let text = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
        serde_json::from_str(&text).map_err(|e| format!("handover status printed {text:?}: {e}"))
    }

    /// The current child's pid.
    pub fn current_pid(&self) -> Result<u32, String> {
        let status = self.status()?;
        status["current"]["pid"]
            .as_u64()
            .map(|pid| pid as u32)
            .ok_or_else(|| format!("no current child: {status}"))
    }

    /// The connection counts of the upgrade that replaced `old_pid`, from the
    /// status (`None` if it has not reported yet).
    pub fn counts(&self, old_pid: u32) -> Result<Option<serde_json::Value>, String> {
        let status = self.status()?;
        Ok(status["upgrades"].as_array().and_then(|upgrades| {
            upgrades
                .iter()
                .rev()
                .find(|u| u["old_pid"].as_u64() == Some(u64::from(old_pid)))
                .map(|u| u["connections"].clone())
        }))
    }

    /// Starts `handover upgrade` (it returns once the old child's rescue is over).
    pub fn upgrade(&self) -> Result<Child, String> {
        self.upgrade_with_output(Stdio::null(), Stdio::null())
    }

    /// [`Supervised::upgrade`], its output going to `stdout` and `stderr`.
    pub fn upgrade_with_output(&self, stdout: Stdio, stderr: Stdio) -> Result<Child, String> {
        procs::spawn_group(
            Command::new(&self.handover)
                .args(["upgrade", "--pid-file"])
                .arg(&self.pid_file)
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr),
        )
    }

    /// The supervisor's log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The end of the log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!("last lines of {}:\n{tail}", self.log.display())
    }

    /// Asks it to stop (SIGTERM; it stops its children) and reaps everything;
    /// what is left after 15 s is killed.
    pub fn stop(mut self) -> Result<(), String> {
        let _ = procs::signal(self.pid, Signal::TERM);
        let clean = procs::finish_group(self.pid, Duration::from_secs(15));
        self.finished = true;
        if clean {
            Ok(())
        } else {
            Err(format!(
                "handover run did not stop within 15 s and was killed; {}",
                self.log_tail()
            ))
        }
    }
}

impl Drop for Supervised {
    /// On an error path: kill the whole group and reap it.
    fn drop(&mut self) {
        if !self.finished {
            procs::kill_group(self.pid);
            procs::finish_group(self.pid, Duration::from_secs(5));
        }
    }
}

/// Readable once a process (any, not only a child of ours) has exited.
pub struct Exit {
    pid: u32,
    fd: OwnedFd,
}

impl Exit {
    pub fn watch(pid: u32) -> Result<Exit, String> {
        let target = Pid::from_raw(pid as i32).ok_or_else(|| format!("invalid pid {pid}"))?;
        let fd = pidfd_open(target, PidfdFlags::empty())
            .map_err(|e| format!("pidfd_open({pid}): {e}"))?;
        Ok(Exit { pid, fd })
    }

    /// Waits up to `timeout`; the instant the exit was seen.
    pub fn wait(&self, timeout: Duration) -> Result<Instant, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("pid {} still running after {timeout:?}", self.pid));
            }
            let spec = Timespec::try_from(left).map_err(|e| e.to_string())?;
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match poll(&mut fds, Some(&spec)) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(format!("poll: {e}")),
            }
            if !fds[0].revents().is_empty() {
                return Ok(Instant::now());
            }
        }
    }
}

/// The `held=` and `took=` of the supervisor's log line
/// "holding the old child's connections for rescue pid=PID held=N took=D".
pub fn capture_line(log: &str, old_pid: u32) -> Option<(u64, Duration)> {
    let pid = format!(" pid={old_pid} ");
    let line = log.lines().find(|l| {
        l.contains("holding the old child's connections for rescue") && l.contains(&pid)
    })?;
    let value = |key: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key))
            .map(str::to_owned)
    };
    let held = value("held=")?.parse().ok()?;
    let took = debug_duration(&value("took=")?)?;
    Some((held, took))
}

/// Parses a `Duration`'s `Debug` form: `1.440333ms`, `950.2µs`, `12ns`, `1.5s`.
fn debug_duration(text: &str) -> Option<Duration> {
    let (number, scale) = [
        ("ns", 1e-9),
        ("µs", 1e-6),
        ("us", 1e-6),
        ("ms", 1e-3),
        ("s", 1.0),
    ]
    .iter()
    .find_map(|(unit, scale)| text.strip_suffix(unit).map(|n| (n, *scale)))?;
    let value: f64 = number.parse().ok()?;
    Some(Duration::from_secs_f64(value * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_capture_line() {
        let log = "2026-12-02T14:42:41.974570Z  INFO handover_supervisor::supervisor::upgrade: \
                   holding the old child's connections for rescue pid=27071 held=8 took=1.50562ms\n";
        let (held, took) = capture_line(log, 27071).unwrap();
        assert_eq!(held, 8);
        assert_eq!(took.as_nanos(), 1_505_620);
        assert!(capture_line(log, 2707).is_none());
        assert_eq!(debug_duration("950µs"), Some(Duration::from_micros(950)));
        assert_eq!(debug_duration("2s"), Some(Duration::from_secs(2)));
    }
}
