//! Another process's CPU time, memory and open descriptors, from `/proc`.

use std::time::Duration;

/// CPU time `pid` has used (all its threads, exited ones too: utime + stime
/// of `/proc/PID/stat`), in clock ticks; `None` once it is gone.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // After the command: field 3 (state) is the first; utime is 14, stime 15.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks as a duration (the resolution of [`cpu_ticks`]).
pub fn ticks(n: u64) -> Duration {
    let per_second = rustix::param::clock_ticks_per_second().max(1);
    Duration::from_nanos(n.saturating_mul(1_000_000_000) / per_second)
}

/// One tick: the resolution of every CPU time measured here.
pub fn tick() -> Duration {
    ticks(1)
}

/// The on-CPU time of each thread of `pid` (`se.sum_exec_runtime` of
/// `/proc/PID/task/TID/sched`, nanosecond resolution), by thread id; empty
/// where the kernel does not provide it.
pub fn thread_times(pid: u32) -> Vec<(u32, Duration)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| {
            let task = task.ok()?;
            let tid = task.file_name().to_str()?.parse().ok()?;
            let sched = std::fs::read_to_string(task.path().join("sched")).ok()?;
            let ms: f64 = sched
                .lines()
                .find_map(|line| line.strip_prefix("se.sum_exec_runtime"))?
                .trim_start_matches([' ', ':'])
                .trim()
                .parse()
                .ok()?;
            Some((tid, Duration::from_secs_f64(ms / 1e3)))
        })
        .collect()
}

/// A snapshot of a process's CPU time, both ways.
#[derive(Debug, Clone, Default)]
pub struct Cpu {
    ticks: u64,
    threads: Vec<(u32, Duration)>,
}

/// CPU time used between two snapshots.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUsed {
    /// utime + stime, clock-tick resolution.
    pub ticks: Duration,
    /// Sum over threads of their on-CPU time; `None` if the kernel has no
    /// per-thread figure, or a thread ended in between (its time is unknown).
    pub exact: Option<Duration>,
}

impl CpuUsed {
    /// The exact figure if there is one, else the tick-based one.
    pub fn best(&self) -> Duration {
        self.exact.unwrap_or(self.ticks)
    }
}

impl Cpu {
    /// `None` once `pid` is gone.
    pub fn of(pid: u32) -> Option<Cpu> {
        Some(Cpu {
            ticks: cpu_ticks(pid)?,
            threads: thread_times(pid),
        })
    }

    /// What was used from `self` to `later`.
    pub fn until(&self, later: &Cpu) -> CpuUsed {
        let ended = self
            .threads
            .iter()
            .any(|(tid, _)| !later.threads.iter().any(|(t, _)| t == tid));
        let exact = (!ended && !later.threads.is_empty()).then(|| {
            later
                .threads
                .iter()
                .map(|(tid, now)| {
                    let before = self
                        .threads
                        .iter()
                        .find(|(t, _)| t == tid)
                        .map_or(Duration::ZERO, |(_, d)| *d);
                    now.saturating_sub(before)
                })
                .sum()
        });
        CpuUsed {
            ticks: ticks(later.ticks.saturating_sub(self.ticks)),
            exact,
        }
    }
}

/// `VmRSS` and `VmHWM` (peak RSS) of `pid`, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// The number after `name` in a `/proc/PID/status` text (0 if absent).
pub(crate) fn status_field(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The memory figures of `pid` (zeros if it is gone).
pub fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| status_field(&status, name);
    Memory {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
    }
}

/// How many descriptors `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// KiB as MiB with one decimal and the exact figure, e.g. `4.7 MiB (4852 kB)`.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB ({kib} kB)", kib as f64 / 1024.0)
}
