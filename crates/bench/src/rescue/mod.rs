//! `rescue`: the speed of `handover run`'s keep-alive rescue (issue 7), with
//! the Go `net/http` test server under a release `handover run`.
//!
//! 1. **Latency** (`--rounds` rounds of `--connections` connections): open the
//!    connections, one `GET` each (answered by the current child); run
//!    `handover upgrade`; once the old child has exited (pidfd) and
//!    `--settle` has passed, send one `GET` on each held connection — the
//!    supervisor relays it to the new child and answers with
//!    `Connection: close`. Interleaved with each rescued request, for the same
//!    moment: (a) a `GET` on an existing keep-alive connection to the new
//!    child, (b) a new connection + `GET` to the new child. Requests are sent
//!    one at a time, so each is timed alone.
//! 2. **Supervisor CPU and memory** (`--big-runs` runs, each on a fresh
//!    supervisor): one upgrade with no client connection (the baseline), then
//!    `--held` idle keep-alive connections, an upgrade that holds and rescues
//!    them: half send a request after the old child exited, half stay silent
//!    until the rescue's idle timeout closes them. CPU = the supervisor's
//!    threads' on-CPU time (`/proc/PID/task/*/sched`, nanoseconds; also
//!    utime + stime of `/proc/PID/stat`, clock ticks) from the start of
//!    `handover upgrade` until it returns (it waits for the rescue to end);
//!    memory = `VmRSS` / `VmHWM` before and after.
//! 3. **Time in the data path** (same runs): for each rescued request, from
//!    just before it is sent until the client sees EOF after the response (the
//!    supervisor's FIN); for the silent half, from the old child's exit until
//!    EOF; and the capture time the supervisor logs.
//!
//! Measured, never asserted; every process is reaped, every wait bounded.

// Also used by `footprint`.
pub(crate) mod client;
pub(crate) mod meter;
pub(crate) mod subject;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use crate::machine;
use crate::procs;
use crate::scratch::Scratch;
use crate::stats::{ms, us, verdict, Spread};
use client::Conn;
use meter::{Cpu, CpuUsed, Memory};
use subject::{Exit, Supervised};

/// Target for the latency a rescue adds (issue 7).
const TARGET: Duration = Duration::from_millis(1);
/// Bound on an upgrade: new child ready, old child exited.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of `handover-bench rescue`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Held connections per round of the latency measurement.
    #[arg(long, default_value_t = 200)]
    pub connections: usize,
    /// Rounds (upgrades) of the latency measurement.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Connections held in the CPU / memory / data-path runs.
    #[arg(long, default_value_t = 1000)]
    pub held: usize,
    /// Runs of the CPU / memory / data-path measurement (a fresh supervisor each).
    #[arg(long, default_value_t = 3)]
    pub big_runs: usize,
    /// Wait after the old child's exit before the rescued requests are sent
    /// (so that they time the relay, not the watcher noticing the exit).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "50ms")]
    pub settle: Duration,
    /// `--rescue-idle` of the supervisor.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub rescue_idle: Duration,
    /// The `handover` binary (default: next to this one).
    #[arg(long)]
    pub handover: Option<PathBuf>,
    /// A built crates/cli/tests/fixtures/go_server.go (default: build it with `go`).
    #[arg(long)]
    pub go_server: Option<PathBuf>,
}

/// Runs the benchmark; returns its Markdown section.
pub fn run(args: &Args) -> Result<String, String> {
    if args.connections == 0 || args.rounds == 0 || args.held < 2 || args.big_runs == 0 {
        return Err("--connections, --rounds and --big-runs must be positive, --held ≥ 2".into());
    }
    procs::become_subreaper()?;
    // Ours: the client ends. The supervisor (which inherits the limit) needs
    // two per rescued connection plus a margin, the old child one each.
    procs::raise_fd_limit(2 * args.held.max(args.connections) as u64 + 512)?;
    let handover = subject::locate_handover(args.handover.as_deref())?;
    let scratch = Scratch::new("rescue")?;
    let server = subject::go_server(args.go_server.as_deref(), scratch.dir())?;
    let machine = machine::describe();
    let meter = machine::CpuMeter::start();

    eprintln!(
        "rescue: latency, {} rounds of {} connections...",
        args.rounds, args.connections
    );
    let latency = latency(args, &handover, &server, &scratch)?;
    let mut big = Vec::new();
    for run in 1..=args.big_runs {
        eprintln!(
            "rescue: {} held connections, run {run} of {}...",
            args.held, args.big_runs
        );
        big.push(big_run(args, &handover, &server, &scratch)?);
    }
    Ok(report(args, &machine, meter.others(), &latency, &big))
}

/// Failed or unexpected requests, counted and the first few kept.
#[derive(Debug, Default)]
struct Problems {
    count: usize,
    first: Vec<String>,
}

impl Problems {
    fn add(&mut self, what: String) {
        self.count += 1;
        if self.first.len() < 5 {
            self.first.push(what);
        }
    }

    fn describe(&self) -> String {
        if self.count == 0 {
            "none".into()
        } else {
            format!("**{}** (first: {})", self.count, self.first.join("; "))
        }
    }
}

/// The latency measurement's samples.
#[derive(Debug, Default)]
struct Latency {
    rescued: Vec<Duration>,
    keep_alive: Vec<Duration>,
    fresh: Vec<Duration>,
    /// Rescued request sent → EOF after its response.
    rescued_to_eof: Vec<Duration>,
    /// Rescued responses with `Connection: close`, and answered by the new child.
    closes: usize,
    by_new_child: usize,
    problems: Problems,
    capture: Vec<Duration>,
    counts: Vec<serde_json::Value>,
}

fn latency(
    args: &Args,
    handover: &std::path::Path,
    server: &std::path::Path,
    scratch: &Scratch,
) -> Result<Latency, String> {
    let dir = scratch.path("latency");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let supervised = Supervised::start(handover, server, &dir, args.rescue_idle)?;
    let mut out = Latency::default();
    for _ in 0..args.rounds {
        let old = supervised.current_pid()?;
        let mut held = open_and_get(&supervised, args.connections, old)?;
        let exit = Exit::watch(old)?;
        let upgrade = supervised.upgrade()?;
        exit.wait(UPGRADE_TIMEOUT)
            .map_err(|e| format!("{e}; {}", supervised.log_tail()))?;
        std::thread::sleep(args.settle);
        let new = supervised.current_pid()?;
        let mut warm = Conn::open(supervised.addr)?;
        warm.get()?;
        for conn in &mut held {
            let sent = Instant::now();
            match conn.get() {
                Ok(response) => {
                    out.rescued.push(sent.elapsed());
                    out.closes += usize::from(response.closes);
                    out.by_new_child += usize::from(response.pid == Some(new));
                    if response.status != 200 {
                        out.problems
                            .add(format!("rescued request: status {}", response.status));
                    }
                    match conn.read_eof() {
                        Ok(()) => out.rescued_to_eof.push(sent.elapsed()),
                        Err(e) => out.problems.add(format!("after a rescued response: {e}")),
                    }
                }
                Err(e) => out.problems.add(format!("rescued request: {e}")),
            }
            let sent = Instant::now();
            match warm.get() {
                Ok(_) => out.keep_alive.push(sent.elapsed()),
                Err(e) => out.problems.add(format!("(a) keep-alive request: {e}")),
            }
            let sent = Instant::now();
            match Conn::open(supervised.addr).and_then(|mut c| c.get()) {
                Ok(_) => out.fresh.push(sent.elapsed()),
                Err(e) => out.problems.add(format!("(b) new-connection request: {e}")),
            }
        }
        drop(held);
        drop(warm);
        let status = subject::wait_child(upgrade, UPGRADE_TIMEOUT + args.rescue_idle)?;
        if !status.success() {
            out.problems.add(format!("handover upgrade: {status}"));
        }
        if let Some((_, took)) = subject::capture_line(&supervised.log_text(), old) {
            out.capture.push(took);
        }
        if let Some(counts) = supervised.counts(old)? {
            out.counts.push(counts);
        }
    }
    supervised.stop()?;
    Ok(out)
}

/// Opens `n` connections and sends one `GET` on each; each must be answered
/// by `pid`.
fn open_and_get(supervised: &Supervised, n: usize, pid: u32) -> Result<Vec<Conn>, String> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut conn = Conn::open(supervised.addr)?;
        let response = conn.get()?;
        if response.pid != Some(pid) {
            return Err(format!(
                "a new connection was answered by pid {:?}, not the current child {pid}",
                response.pid
            ));
        }
        conns.push(conn);
    }
    Ok(conns)
}

/// One run with `--held` connections.
#[derive(Debug, Default)]
struct Big {
    /// CPU of an upgrade with no client connection.
    cpu_baseline: CpuUsed,
    /// CPU from the start of the upgrade until it returned.
    cpu_total: CpuUsed,
    /// … of which until the old child had exited (capture and watch).
    cpu_to_exit: CpuUsed,
    /// … of which answering the requesting half.
    cpu_answering: CpuUsed,
    before: Memory,
    after: Memory,
    fds_before: usize,
    fds_held: usize,
    fds_after: usize,
    /// Rescued request sent → response read, and → EOF.
    response: Vec<Duration>,
    to_eof: Vec<Duration>,
    /// Silent connections: old child exited → EOF.
    silent_eof: Vec<Duration>,
    capture: Option<(u64, Duration)>,
    counts: Option<serde_json::Value>,
    upgrade_took: Duration,
    problems: Problems,
}

fn cpu(pid: u32) -> Result<Cpu, String> {
    Cpu::of(pid).ok_or_else(|| format!("the supervisor (pid {pid}) is gone"))
}

fn big_run(
    args: &Args,
    handover: &std::path::Path,
    server: &std::path::Path,
    scratch: &Scratch,
) -> Result<Big, String> {
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = scratch.path(&format!(
        "held-{}",
        RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let supervised = Supervised::start(handover, server, &dir, args.rescue_idle)?;
    let sup = supervised.pid;
    let mut out = Big::default();

    // Baseline: an upgrade with no client connection.
    let old = supervised.current_pid()?;
    let exit = Exit::watch(old)?;
    let start = cpu(sup)?;
    let upgrade = supervised.upgrade()?;
    exit.wait(UPGRADE_TIMEOUT)?;
    let status = subject::wait_child(upgrade, UPGRADE_TIMEOUT)?;
    out.cpu_baseline = start.until(&cpu(sup)?);
    if !status.success() {
        out.problems
            .add(format!("baseline handover upgrade: {status}"));
    }

    let old = supervised.current_pid()?;
    let mut conns = open_and_get(&supervised, args.held, old)?;
    // Let the supervisor settle (its status client, the connections' accepts
    // happen in the child) before the "before" figures.
    std::thread::sleep(Duration::from_millis(200));
    out.before = meter::memory(sup);
    out.fds_before = meter::open_fds(sup);
    let exit = Exit::watch(old)?;
    let started = Instant::now();
    let start = cpu(sup)?;
    let upgrade = supervised.upgrade()?;
    let exited = exit.wait(UPGRADE_TIMEOUT)?;
    let at_exit = cpu(sup)?;
    std::thread::sleep(args.settle);
    out.fds_held = meter::open_fds(sup);
    let (asking, silent) = conns.split_at_mut(args.held / 2);
    let answering = cpu(sup)?;
    for conn in asking.iter_mut() {
        let sent = Instant::now();
        match conn.get() {
            Ok(response) => {
                out.response.push(sent.elapsed());
                if response.status != 200 || !response.closes {
                    out.problems.add(format!(
                        "rescued response: status {}, Connection: close {}",
                        response.status, response.closes
                    ));
                }
                match conn.read_eof() {
                    Ok(()) => out.to_eof.push(sent.elapsed()),
                    Err(e) => out.problems.add(format!("after a rescued response: {e}")),
                }
            }
            Err(e) => out.problems.add(format!("rescued request: {e}")),
        }
    }
    let answered = cpu(sup)?;
    let deadline = exited + args.rescue_idle + Duration::from_secs(10);
    let (eofs, problems) = wait_for_eof(silent, exited, deadline);
    out.silent_eof = eofs;
    for problem in problems {
        out.problems.add(problem);
    }
    drop(conns);
    let status = subject::wait_child(upgrade, UPGRADE_TIMEOUT + args.rescue_idle)?;
    out.upgrade_took = started.elapsed();
    let end = cpu(sup)?;
    out.after = meter::memory(sup);
    out.fds_after = meter::open_fds(sup);
    if !status.success() {
        out.problems.add(format!("handover upgrade: {status}"));
    }
    out.cpu_total = start.until(&end);
    out.cpu_to_exit = start.until(&at_exit);
    out.cpu_answering = answering.until(&answered);
    out.capture = subject::capture_line(&supervised.log_text(), old);
    out.counts = supervised.counts(old)?;
    supervised.stop()?;
    Ok(out)
}

/// Waits until each of `conns` sees EOF (or `deadline`); the times from
/// `since`, and what went wrong.
fn wait_for_eof(
    conns: &mut [Conn],
    since: Instant,
    deadline: Instant,
) -> (Vec<Duration>, Vec<String>) {
    let mut pending: Vec<usize> = (0..conns.len()).collect();
    let mut eofs = Vec::new();
    let mut problems = Vec::new();
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            problems.push(format!(
                "{} silent connections still open at the deadline",
                pending.len()
            ));
            break;
        }
        let Ok(spec) = Timespec::try_from(left) else {
            break;
        };
        let mut fds: Vec<PollFd<'_>> = pending
            .iter()
            .map(|&i| PollFd::new(&conns[i].stream, PollFlags::IN | PollFlags::RDHUP))
            .collect();
        match poll(&mut fds, Some(&spec)) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => {
                problems.push(format!("poll: {e}"));
                break;
            }
        }
        let now = Instant::now();
        let ready: Vec<bool> = fds.iter().map(|fd| !fd.revents().is_empty()).collect();
        drop(fds);
        let mut still = Vec::with_capacity(pending.len());
        for (i, is_ready) in pending.into_iter().zip(ready) {
            if !is_ready {
                still.push(i);
                continue;
            }
            match conns[i].read_eof() {
                Ok(()) => eofs.push(now - since),
                Err(e) => problems.push(format!("silent connection: {e}")),
            }
        }
        pending = still;
    }
    (eofs, problems)
}

fn row(label: &str, values: &[Duration]) -> String {
    match Spread::of(values.to_vec()) {
        Some(s) => format!(
            "| {label} | {} | {} | {} | {} | {} |\n",
            s.count,
            us(s.min),
            us(s.median),
            us(s.p99),
            us(s.max)
        ),
        None => format!("| {label} | 0 | – | – | – | – |\n"),
    }
}

fn median(values: &[Duration]) -> Option<Duration> {
    Spread::of(values.to_vec()).map(|s| s.median)
}

fn counts_text(counts: &[serde_json::Value]) -> String {
    let sum = |key: &str| {
        counts
            .iter()
            .map(|c| c[key].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    format!(
        "{} rescued, {} released, {} lost, {} not held",
        sum("rescued"),
        sum("released"),
        sum("lost"),
        sum("not_held")
    )
}

/// `1.234 ms (10 ms)`: the exact figure, and utime + stime in brackets.
fn cpu_text(cpu: &CpuUsed) -> String {
    let ticks = format!("{} ms", cpu.ticks.as_millis());
    match cpu.exact {
        Some(exact) => format!("{} ({ticks})", ms(exact)),
        None => ticks,
    }
}

fn report(args: &Args, machine: &str, others: f64, lat: &Latency, big: &[Big]) -> String {
    let tick = meter::tick();
    let mut out = format!(
        "### Keep-alive rescue: speed\n\nMachine:\n\n{machine}- load average at the end: {}\n\
         - CPU time used by other processes during the run: {:.0} % of the machine\n\n\
         ```sh\ncargo build --release -p handover-cli -p handover-bench\n\
         target/release/handover-bench rescue --connections {} --rounds {} --held {} \
         --big-runs {} --settle {} --rescue-idle {}\n```\n",
        machine::load_average(),
        others * 100.0,
        args.connections,
        args.rounds,
        args.held,
        args.big_runs,
        humantime::format_duration(args.settle),
        humantime::format_duration(args.rescue_idle),
    );

    // 1. Latency.
    let added = match (median(&lat.rescued), median(&lat.fresh)) {
        (Some(r), Some(f)) => Some(r.as_secs_f64() - f.as_secs_f64()),
        _ => None,
    };
    let added_text = added.map_or("–".into(), |a| format!("{:.3} ms", a * 1e3));
    out.push_str(&format!(
        "\n#### 1. Latency of a rescued request\n\n\
         `handover run` with the Go server; {} rounds of {} keep-alive connections, each \
         used once, then `handover upgrade`; {} after the old child exited, one `GET` on \
         each held connection (relayed by the supervisor), interleaved with (a) and (b). \
         One request at a time.\n\n\
         | request | count | min | p50 | p99 | max |\n|---|---|---|---|---|---|\n{}{}{}{}\n\
         | figure | value | target | verdict |\n|---|---|---|---|\n\
         | added by rescue: rescued p50 − (b) p50 | {added_text} | < {} ms | {} |\n\n\
         Rescued responses with `Connection: close`: {} of {}; answered by the new child: {} \
         of {}. Failed or unexpected: {}. Supervisor's counts: {}. Capture of {} connections \
         (the supervisor's `took=`): median {}.\n",
        args.rounds,
        args.connections,
        humantime::format_duration(args.settle),
        row(
            "rescued: `GET` on a held connection (relayed)",
            &lat.rescued
        ),
        row(
            "(a) `GET` on a keep-alive connection to the new child",
            &lat.keep_alive
        ),
        row("(b) new connection + `GET` to the new child", &lat.fresh),
        row(
            "rescued: request sent → EOF after the response",
            &lat.rescued_to_eof
        ),
        TARGET.as_millis(),
        verdict(added.is_some_and(|a| a < TARGET.as_secs_f64())),
        lat.closes,
        lat.rescued.len(),
        lat.by_new_child,
        lat.rescued.len(),
        lat.problems.describe(),
        counts_text(&lat.counts),
        args.connections,
        median(&lat.capture).map_or("–".into(), ms),
    ));

    // 2. CPU and memory.
    let exact = big.iter().all(|b| {
        [b.cpu_baseline, b.cpu_total, b.cpu_to_exit, b.cpu_answering]
            .iter()
            .all(|c| c.exact.is_some())
    });
    out.push_str(&format!(
        "\n#### 2. Supervisor CPU and memory with {} held connections\n\n\
         Each run on a fresh supervisor: an upgrade with no client connection (baseline), \
         then {} idle keep-alive connections and an upgrade that holds and rescues them: \
         {} send a `GET` after the old child exited, {} stay silent until the {} idle \
         timeout. CPU of the supervisor from the start of `handover upgrade` until it \
         returned (the end of the rescue): {}; in brackets utime + stime of \
         `/proc/PID/stat` (resolution {}).\n\n\
         | run | CPU, upgrade without connections | CPU, upgrade with rescue | … until the old child exited | … answering {} | extra CPU per held connection | VmRSS before | VmHWM before | VmHWM after (peak) | VmRSS after | fds before / held / after | upgrade took |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        args.held,
        args.held,
        args.held / 2,
        args.held - args.held / 2,
        humantime::format_duration(args.rescue_idle),
        if exact {
            "the sum of its threads' on-CPU time (`se.sum_exec_runtime` of \
             `/proc/PID/task/*/sched`)"
        } else {
            "utime + stime (some per-thread figures were missing)"
        },
        ms(tick),
        args.held / 2,
    ));
    for (i, b) in big.iter().enumerate() {
        let extra = b.cpu_total.best().saturating_sub(b.cpu_baseline.best()) / args.held as u32;
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} |\n",
            i + 1,
            cpu_text(&b.cpu_baseline),
            cpu_text(&b.cpu_total),
            cpu_text(&b.cpu_to_exit),
            cpu_text(&b.cpu_answering),
            us(extra),
            meter::mib(b.before.rss_kib),
            meter::mib(b.before.hwm_kib),
            meter::mib(b.after.hwm_kib),
            meter::mib(b.after.rss_kib),
            b.fds_before,
            b.fds_held,
            b.fds_after,
            ms(b.upgrade_took),
        ));
    }

    // 3. Data path.
    let all = |pick: fn(&Big) -> &Vec<Duration>| -> Vec<Duration> {
        big.iter().flat_map(|b| pick(b).iter().copied()).collect()
    };
    let captures: Vec<String> = big
        .iter()
        .map(|b| match b.capture {
            Some((held, took)) => format!("{} ({held} held)", ms(took)),
            None => "not logged".into(),
        })
        .collect();
    let problems: Vec<String> = big
        .iter()
        .enumerate()
        .map(|(i, b)| format!("run {}: {}", i + 1, b.problems.describe()))
        .collect();
    let counts: Vec<serde_json::Value> = big.iter().filter_map(|b| b.counts.clone()).collect();
    out.push_str(&format!(
        "\n#### 3. Time in the data path, {} held connections\n\n\
         | per connection | count | min | p50 | p99 | max |\n|---|---|---|---|---|---|\n{}{}{}\n\
         Capture (`holding the old child's connections for rescue … took=`): {}. \
         Failed or unexpected: {}. Supervisor's counts over the runs: {}.\n",
        args.held,
        row(
            "rescued: request sent → response read",
            &all(|b| &b.response)
        ),
        row(
            "rescued: request sent → EOF (supervisor's FIN)",
            &all(|b| &b.to_eof)
        ),
        row("silent: old child exited → EOF", &all(|b| &b.silent_eof)),
        captures.join(", "),
        problems.join("; "),
        counts_text(&counts),
    ));
    out
}
