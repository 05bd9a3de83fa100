//! A short description of the machine the numbers were taken on.

/// `nproc`, CPU model, kernel release and build profile, as Markdown list items.
pub fn describe() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let profile = if cfg!(debug_assertions) {
        "debug (numbers from a debug build are not representative)"
    } else {
        "release"
    };
    format!(
        "- CPUs (nproc): {cpus}\n- CPU model: {model}\n- kernel: {kernel}\n\
         - build profile: {profile}\n- load average at start: {}\n",
        load_average()
    )
}

/// The 1, 5 and 15 minute load averages (other work on the machine skews
/// every number here).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Measures how much of the machine's CPU time *other* processes used while
/// a benchmark ran: all CPU time (`/proc/stat`) minus this process's and its
/// reaped descendants' (`/proc/self/stat`). Every server generation a
/// benchmark starts is reaped before [`CpuMeter::others`] is read.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    start: CpuTicks,
}

#[derive(Debug, Clone, Copy, Default)]
struct CpuTicks {
    /// All CPUs, busy and idle.
    total: u64,
    /// All CPUs, busy.
    busy: u64,
    /// This process and its reaped children, user + system.
    ours: u64,
}

impl CpuTicks {
    fn now() -> CpuTicks {
        let machine: Vec<u64> = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| s.lines().next().map(str::to_owned))
            .map(|line| {
                line.split_whitespace()
                    .skip(1)
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        // user nice system idle iowait irq softirq steal (guest is inside user).
        let field = |i: usize| machine.get(i).copied().unwrap_or(0);
        let total: u64 = (0..8).map(field).sum();
        let busy = total - field(3) - field(4);
        let ours = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                let (_, rest) = s.rsplit_once(')')?;
                // Fields after the command: state is field 3, utime field 14.
                let fields: Vec<u64> = rest
                    .split_whitespace()
                    .skip(11)
                    .take(4)
                    .filter_map(|n| n.parse().ok())
                    .collect();
                Some(fields.iter().sum())
            })
            .unwrap_or(0);
        CpuTicks { total, busy, ours }
    }
}

impl CpuMeter {
    pub fn start() -> CpuMeter {
        CpuMeter {
            start: CpuTicks::now(),
        }
    }

    /// Share (0–1) of the machine's CPU time used by other processes since
    /// the start.
    pub fn others(&self) -> f64 {
        let end = CpuTicks::now();
        let total = end.total.saturating_sub(self.start.total);
        let others = end
            .busy
            .saturating_sub(self.start.busy)
            .saturating_sub(end.ours.saturating_sub(self.start.ours));
        if total == 0 {
            0.0
        } else {
            others as f64 / total as f64
        }
    }
}
