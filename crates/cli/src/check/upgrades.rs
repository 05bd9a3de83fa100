//! Running one upgrade command: `sh -c CMD` in its own process group, stdin
//! from /dev/null, stdout and stderr captured (the last lines are kept), timed
//! on the run's clock, bounded by `--upgrade-timeout`.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};

/// Output bytes kept per command (the end of it).
const KEEP_BYTES: usize = 16 * 1024;
/// Lines of output shown for a command.
pub const TAIL_LINES: usize = 10;
/// After the command exits, how long its output pipes may stay open (a
/// background process it started may hold them) before reading stops.
const OUTPUT_GRACE: Duration = Duration::from_millis(200);

/// How an upgrade command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
    /// It ran past `--upgrade-timeout` and was killed.
    TimedOut,
    /// It could not be started.
    SpawnFailed(String),
}

impl Status {
    /// Exit status 0.
    pub fn ok(&self) -> bool {
        *self == Status::Exited(0)
    }
}

/// One upgrade command, on the run's clock.
#[derive(Debug, Clone)]
pub struct UpgradeRun {
    /// 1-based.
    pub index: u32,
    /// When it started, from the start of the run.
    pub started: Duration,
    /// When it ended (exit, kill or spawn failure), from the start of the run.
    pub finished: Duration,
    pub status: Status,
    /// The last lines of its stdout and stderr (one pipe, so in order).
    pub output: Vec<String>,
}

impl UpgradeRun {
    pub fn duration(&self) -> Duration {
        self.finished.saturating_sub(self.started)
    }
}

/// Runs `command` with `sh -c` now; `origin` is the start of the run.
/// The environment gets `HANDOVER_CHECK_UPGRADE=<index>`.
pub async fn run(command: &str, index: u32, origin: Instant, timeout: Duration) -> UpgradeRun {
    let started = origin.elapsed();
    let (output_pipe, mut child) = match spawn(command, index) {
        Ok(spawned) => spawned,
        Err(error) => {
            return UpgradeRun {
                index,
                started,
                finished: origin.elapsed(),
                status: Status::SpawnFailed(format!("cannot run sh -c: {error}")),
                output: Vec::new(),
            }
        }
    };
    let output = Arc::new(Mutex::new(Vec::new()));
    let mut reader = collect(output_pipe, Arc::clone(&output));
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => {
            use std::os::unix::process::ExitStatusExt as _;
            match (status.code(), status.signal()) {
                (Some(code), _) => Status::Exited(code),
                (None, Some(signal)) => Status::Signaled(signal),
                (None, None) => Status::SpawnFailed(format!("unknown exit status {status}")),
            }
        }
        Ok(Err(error)) => Status::SpawnFailed(format!("cannot wait for the command: {error}")),
        Err(_) => {
            kill_group(child.id());
            let _ = child.kill().await;
            Status::TimedOut
        }
    };
    let finished = origin.elapsed();
    if tokio::time::timeout(OUTPUT_GRACE, &mut reader)
        .await
        .is_err()
    {
        reader.abort();
    }
    let bytes = output.lock().map(|b| b.clone()).unwrap_or_default();
    UpgradeRun {
        index,
        started,
        finished,
        status,
        output: last_lines(&bytes, TAIL_LINES),
    }
}

/// Starts `sh -c COMMAND` in a new process group, stdin from /dev/null,
/// stdout and stderr into one new pipe (so their lines stay in order);
/// returns the pipe's read end and the child.
fn spawn(command: &str, index: u32) -> std::io::Result<(pipe::Receiver, Child)> {
    let (write, read) = pipe::pipe()?;
    let stdout = write.into_blocking_fd()?;
    let stderr = stdout.try_clone()?;
    // The `Command` (dropped at the end of this function) holds our copies of
    // the write end, so the pipe ends when the command and whatever it
    // started have closed theirs.
    let child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("HANDOVER_CHECK_UPGRADE", index.to_string())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    Ok((read, child))
}

/// Reads `pipe` to its end into `into`, keeping the last [`KEEP_BYTES`].
fn collect(
    mut pipe: impl AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
            if let Ok(mut kept) = into.lock() {
                kept.extend_from_slice(&chunk[..n]);
                if kept.len() > KEEP_BYTES {
                    let excess = kept.len() - KEEP_BYTES;
                    kept.drain(..excess);
                }
            }
        }
    })
}

/// Kills the process group the command leads (it was started with
/// `process_group(0)`, so the group id is its pid).
fn kill_group(pid: Option<u32>) {
    let pid = pid
        .and_then(|pid| i32::try_from(pid).ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// The last `n` non-empty lines of `bytes`.
pub fn last_lines(bytes: &[u8], n: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines() {
        assert_eq!(last_lines(b"a\n\nb\nc\n", 2), ["b", "c"]);
        assert_eq!(last_lines(b"", 2), Vec::<String>::new());
    }

    #[tokio::test]
    async fn exit_status_output_and_timeout() {
        let origin = Instant::now();
        let second = Duration::from_secs(5);
        let run1 = run(
            "echo out; echo err >&2; echo out2; exit 3",
            1,
            origin,
            second,
        )
        .await;
        assert_eq!(run1.status, Status::Exited(3));
        assert!(!run1.status.ok());
        assert_eq!(run1.output, ["out", "err", "out2"], "in order");
        let ok = run("test \"$HANDOVER_CHECK_UPGRADE\" = 2", 2, origin, second).await;
        assert!(ok.status.ok(), "{ok:?}");
        let slow = run("sleep 5", 3, origin, Duration::from_millis(100)).await;
        assert_eq!(slow.status, Status::TimedOut);
        assert!(slow.duration() < Duration::from_secs(2), "{slow:?}");
        // A background process holding the pipes does not hold the report.
        let started = Instant::now();
        let bg = run("sleep 3 & echo started", 4, origin, second).await;
        assert!(bg.status.ok());
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(bg.output, ["started"]);
    }
}
