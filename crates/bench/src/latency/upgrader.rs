//! Upgrades `hello` on a schedule while load runs, and records each upgrade
//! window: from the moment `SIGHUP` is sent to the moment the old process has
//! exited, plus the moment the commit became visible (the PID file names the
//! successor) in between. Both moments are waited for with `poll(2)` on a
//! pidfd and an inotify descriptor, not by polling in a loop.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
use rustix::io::Errno;
use rustix::process::{pidfd_open, Pid, PidfdFlags, Signal};

use super::hello::read_pid;
use crate::procs;

/// An upgrade that takes longer than this is a failure of the benchmark.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);

/// One upgrade, as instants.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// `SIGHUP` sent to the current process.
    pub signalled: Instant,
    /// The PID file was first seen naming the successor (written at commit).
    pub committed: Instant,
    /// The old process was first seen exited (drained).
    pub exited: Instant,
}

/// The schedule.
#[derive(Debug, Clone)]
pub struct Plan {
    pub pid_file: PathBuf,
    /// Time between signals.
    pub every: Duration,
    /// The load run's length; no upgrade starts unless it is expected to end
    /// (successor start-up plus `margin`) before the load does.
    pub duration: Duration,
    pub startup_delay: Duration,
    pub margin: Duration,
}

/// Upgrades at `start + every`, `start + 2 × every`, … (or as soon as the
/// previous upgrade ended, if later), waiting for each old process to exit.
pub fn run(plan: &Plan, start: Instant) -> Result<Vec<Window>, String> {
    let mut windows = Vec::new();
    let mut tick = start + plan.every;
    while tick + plan.startup_delay + plan.margin <= start + plan.duration {
        std::thread::sleep(tick.saturating_duration_since(Instant::now()));
        windows.push(upgrade_once(plan)?);
        tick = (tick + plan.every).max(Instant::now());
    }
    Ok(windows)
}

fn upgrade_once(plan: &Plan) -> Result<Window, String> {
    let old = read_pid(&plan.pid_file).ok_or("no pid in the PID file")?;
    let watch = Watch::new(old, &plan.pid_file)?;
    let signalled = Instant::now();
    procs::signal(old, Signal::HUP).map_err(|e| format!("cannot signal pid {old}: {e}"))?;
    let deadline = signalled + UPGRADE_TIMEOUT;
    let mut committed = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "pid {old} was still running {UPGRADE_TIMEOUT:?} after SIGHUP (committed: {})",
                committed.is_some()
            ));
        }
        let (pid_file_changed, exited) = watch.wait(left)?;
        let now = Instant::now();
        if pid_file_changed && committed.is_none() {
            committed = read_pid(&plan.pid_file)
                .filter(|pid| *pid != old)
                .map(|_| now);
        }
        if exited {
            procs::has_exited(old); // reaps it
            return match committed {
                Some(committed) => Ok(Window {
                    signalled,
                    committed,
                    exited: now,
                }),
                None => Err(format!("pid {old} exited but no successor took over")),
            };
        }
    }
}

/// Sleeps until the old process exits or the PID file's directory changes:
/// no polling, so the benchmark does not steal CPU inside the windows it
/// measures, and both moments are seen within microseconds.
struct Watch {
    /// Readable once the process has exited.
    process: OwnedFd,
    /// inotify on the PID file's directory (the file is replaced by rename).
    directory: OwnedFd,
}

impl Watch {
    fn new(pid: u32, pid_file: &Path) -> Result<Watch, String> {
        let process = Pid::from_raw(pid as i32)
            .ok_or_else(|| format!("invalid pid {pid}"))
            .and_then(|p| {
                pidfd_open(p, PidfdFlags::empty()).map_err(|e| format!("pidfd_open({pid}): {e}"))
            })?;
        let directory = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)
            .map_err(|e| format!("inotify_init: {e}"))?;
        let dir = pid_file.parent().unwrap_or(Path::new("."));
        inotify::add_watch(
            &directory,
            dir,
            WatchFlags::MOVED_TO | WatchFlags::CLOSE_WRITE,
        )
        .map_err(|e| format!("inotify_add_watch({}): {e}", dir.display()))?;
        Ok(Watch { process, directory })
    }

    /// Waits up to `timeout`; returns (directory changed, process exited).
    fn wait(&self, timeout: Duration) -> Result<(bool, bool), String> {
        let timeout = Timespec::try_from(timeout).map_err(|e| e.to_string())?;
        let mut fds = [
            PollFd::new(&self.directory, PollFlags::IN),
            PollFd::new(&self.process, PollFlags::IN),
        ];
        match poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        let changed = !fds[0].revents().is_empty();
        let exited = !fds[1].revents().is_empty();
        if changed {
            // Consume the events; which file changed does not matter.
            let mut buf = [0u8; 4096];
            while matches!(rustix::io::read(&self.directory, &mut buf), Ok(n) if n > 0) {}
        }
        Ok((changed, exited))
    }
}
