//! `supervisor-footprint`: does `handover run` keep its footprint over many
//! upgrades (issue 10)?
//!
//! A release `handover run --ready notify --probation 0` supervises the Python
//! notify server of the tests (`crates/cli/tests/fixtures/notify_server.py`)
//! while `--connections` keep-alive clients send `GET /` on their connection
//! every `--interval`. `--upgrades` upgrades run back to back, each one a
//! `handover upgrade` that returns once the old child is gone (so the default
//! `--max-draining 1` never refuses one). A client whose connection the old
//! child or the supervisor's rescue answers with `Connection: close` opens a
//! new one at once, so `--connections` are open all the time, always to the
//! current child.
//!
//! Measured, never asserted:
//!
//! - before the first upgrade and after every `--every`-th one (once
//!   `handover upgrade` returned and `--settle` passed): the supervisor's open
//!   descriptors (`/proc/PID/fd`, each one's `readlink` target, sockets looked
//!   up in `/proc/PID/net/*`), `VmRSS`, `VmHWM` and `Threads` of
//!   `/proc/PID/status`;
//! - all along, every 2 ms, on a thread of its own: the supervisor's children
//!   (`/proc/PID/task/*/children`, zombies counted apart) and its descriptor
//!   count. At most one child is current or starting, so `children − 1` is an
//!   upper bound on the old children still draining: it must never exceed
//!   `--max-draining`;
//! - each upgrade's time and what `handover upgrade` said about the old
//!   child's connections (released / rescued / lost);
//! - the clients' requests and failures (they never retry).
//!
//! Every process is reaped, every wait is bounded (`--upgrade-timeout` per
//! upgrade, `--time-limit` for the whole run).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::machine;
use crate::procs;
use crate::rescue::client::Conn;
use crate::rescue::meter;
use crate::rescue::subject::{self, Supervised};
use crate::scratch::Scratch;
use crate::stats::Spread;

/// Options of `handover-bench supervisor-footprint`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Upgrades, back to back.
    #[arg(long, default_value_t = 1000)]
    pub upgrades: usize,
    /// Sample the supervisor after every this many upgrades.
    #[arg(long, default_value_t = 50)]
    pub every: usize,
    /// Keep-alive client connections open all along.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// Time between two requests on one connection.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100ms")]
    pub interval: Duration,
    /// `--max-draining` of the supervisor.
    #[arg(long, default_value_t = 1)]
    pub max_draining: usize,
    /// Wait after an upgrade returned before a sample is taken.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "200ms")]
    pub settle: Duration,
    /// Bound on one upgrade (`handover upgrade` is killed after it).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub upgrade_timeout: Duration,
    /// Bound on the whole run: no upgrade starts after it.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2h")]
    pub time_limit: Duration,
    /// The `handover` binary (default: next to this one).
    #[arg(long)]
    pub handover: Option<PathBuf>,
    /// The child server (default: crates/cli/tests/fixtures/notify_server.py, run by python3).
    #[arg(long)]
    pub server: Option<PathBuf>,
}

/// Runs the benchmark; returns its Markdown section.
pub fn run(args: &Args) -> Result<String, String> {
    if args.upgrades == 0 || args.every == 0 || args.connections == 0 || args.max_draining == 0 {
        return Err(
            "--upgrades, --every, --connections and --max-draining must be positive".into(),
        );
    }
    // Before anything is opened: what this process inherited (the supervisor
    // inherits those of them that are not close-on-exec too).
    let inherited: Vec<String> = describe_fds(std::process::id())
        .into_iter()
        .map(|(_, target)| target)
        .collect();
    procs::become_subreaper()?;
    procs::raise_fd_limit(args.connections as u64 + 256)?;
    let handover = subject::locate_handover(args.handover.as_deref())?;
    let server = match &args.server {
        Some(path) => path.clone(),
        None => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../cli/tests/fixtures/notify_server.py")
        }
    };
    if !server.is_file() {
        return Err(format!(
            "{}: no such file (pass --server)",
            server.display()
        ));
    }
    let scratch = Scratch::new("footprint")?;
    let machine = machine::describe();
    let meter = machine::CpuMeter::start();
    let max_draining = args.max_draining.to_string();
    let supervised = Supervised::launch(
        &handover,
        scratch.dir(),
        &[
            "--ready",
            "notify",
            "--probation",
            "0",
            "--max-draining",
            &max_draining,
        ],
        &["python3".as_ref(), server.as_os_str()],
    )?;
    let sup = supervised.pid;
    let load = Load::start(supervised.addr, args.connections, args.interval);
    let watch = Watch::start(sup, 1 + args.max_draining);
    let outcome = upgrades(args, &supervised, &load, &watch, &scratch);
    let load = load.stop();
    let watch = watch.stop();
    let log = supervised.log_text();
    let stopped = supervised.stop();
    let mut outcome = outcome?;
    stopped?;
    outcome.refused = log.matches("upgrade refused").count();
    outcome.inherited = inherited;
    Ok(report(
        args,
        &machine,
        meter.others(),
        &outcome,
        &load,
        &watch,
    ))
}

/// The supervisor at one moment.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// Upgrades done when it was taken.
    upgrades: usize,
    /// fd number → readlink target (sockets described, see [`describe_fds`]).
    fds: Vec<(u32, String)>,
    memory: meter::Memory,
    threads: u64,
    /// Since the previous sample: the most children seen at once, and fds.
    children_max: usize,
    fds_max: usize,
    /// Since the previous sample: upgrade times, and the clients' counts.
    times: Vec<Duration>,
    requests: u64,
    failed: u64,
}

/// What the upgrades did.
#[derive(Debug, Default)]
struct Outcome {
    samples: Vec<Sample>,
    done: usize,
    failed: Vec<String>,
    /// Summed from `handover upgrade`'s last line.
    released: u64,
    rescued: u64,
    lost: u64,
    took: Duration,
    stopped_early: Option<String>,
    /// `upgrade refused` lines in the supervisor's log.
    refused: usize,
    /// The fd targets this benchmark inherited (and may have passed on).
    inherited: Vec<String>,
}

fn upgrades(
    args: &Args,
    supervised: &Supervised,
    load: &Load,
    watch: &Watch,
    scratch: &Scratch,
) -> Result<Outcome, String> {
    let sup = supervised.pid;
    if !load.wait_for_requests(args.connections as u64 * 2, Duration::from_secs(30)) {
        return Err(format!(
            "the clients got no answers: {}",
            load.totals().first_failures.join("; ")
        ));
    }
    std::thread::sleep(args.settle);
    let mut out = Outcome::default();
    let mut times = Vec::new();
    let mut counted = (0, 0);
    let mut sample = |upgrades: usize, times: &mut Vec<Duration>| {
        let totals = load.totals();
        let (children_max, fds_max) = watch.take_max();
        let status = std::fs::read_to_string(format!("/proc/{sup}/status")).unwrap_or_default();
        let taken = Sample {
            upgrades,
            fds: describe_fds(sup),
            memory: meter::memory(sup),
            threads: crate::rescue::meter::status_field(&status, "Threads:"),
            children_max,
            fds_max,
            times: std::mem::take(times),
            requests: totals.requests - counted.0,
            failed: totals.failed - counted.1,
        };
        counted = (totals.requests, totals.failed);
        eprintln!(
            "supervisor-footprint: {upgrades} upgrades: {} fds, VmRSS {} kB, children ≤ {children_max}",
            taken.fds.len(),
            taken.memory.rss_kib
        );
        taken
    };
    out.samples.push(sample(0, &mut times));
    let output = scratch.path("upgrade.out");
    let started = Instant::now();
    let mut failed_in_a_row = 0;
    for number in 1..=args.upgrades {
        if started.elapsed() > args.time_limit {
            out.stopped_early = Some(format!(
                "--time-limit {} reached after {} upgrades",
                humantime::format_duration(args.time_limit),
                number - 1
            ));
            break;
        }
        if procs::has_exited(sup) {
            out.stopped_early = Some(format!(
                "the supervisor exited after {} upgrades; {}",
                number - 1,
                supervised.log_tail()
            ));
            break;
        }
        let file = std::fs::File::create(&output).map_err(|e| format!("{e}"))?;
        let errors = file.try_clone().map_err(|e| format!("{e}"))?;
        let began = Instant::now();
        let child = supervised.upgrade_with_output(Stdio::from(file), Stdio::from(errors))?;
        let status = subject::wait_child(child, args.upgrade_timeout);
        let took = began.elapsed();
        let said = std::fs::read_to_string(&output).unwrap_or_default();
        match status {
            Ok(status) if status.success() => {
                failed_in_a_row = 0;
                out.done += 1;
                times.push(took);
                let (released, rescued, lost) = connection_counts(&said);
                out.released += released;
                out.rescued += rescued;
                out.lost += lost;
            }
            other => {
                failed_in_a_row += 1;
                let why = match other {
                    Ok(status) => status.to_string(),
                    Err(e) => e,
                };
                out.failed.push(format!(
                    "upgrade {number}: {why}: {}",
                    said.trim().replace('\n', " / ")
                ));
                if failed_in_a_row >= 10 {
                    out.stopped_early = Some(format!("10 upgrades in a row failed at {number}"));
                    break;
                }
            }
        }
        if number % args.every == 0 || number == args.upgrades {
            std::thread::sleep(args.settle);
            out.samples.push(sample(number, &mut times));
        }
    }
    out.took = started.elapsed();
    Ok(out)
}

/// The numbers in "its connections: 3 released, 5 rescued, 0 lost mid-request".
fn connection_counts(said: &str) -> (u64, u64, u64) {
    let Some(line) = said.lines().rev().find(|l| l.contains("its connections:")) else {
        return (0, 0, 0);
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let before = |key: &str| {
        words
            .windows(2)
            .find(|w| w[1].trim_end_matches(',') == key)
            .and_then(|w| w[0].parse().ok())
            .unwrap_or(0)
    };
    (before("released"), before("rescued"), before("lost"))
}

/// The fds of `pid` with their `readlink` targets; a socket's target gets
/// what `/proc/PID/net` says of it, e.g. `socket:[123] tcp LISTEN
/// 127.0.0.1:4000` or `socket:[124] unix /tmp/x.control`.
fn describe_fds(pid: u32) -> Vec<(u32, String)> {
    let sockets = socket_table(pid);
    let mut fds: Vec<(u32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|entry| {
                let entry = entry.ok()?;
                let fd = entry.file_name().to_str()?.parse().ok()?;
                let target = std::fs::read_link(entry.path()).ok()?;
                let target = target.to_string_lossy().into_owned();
                let described = target
                    .strip_prefix("socket:[")
                    .and_then(|rest| rest.strip_suffix(']'))
                    .and_then(|inode| sockets.get(inode))
                    .map_or_else(|| target.clone(), |what| format!("{target} {what}"));
                Some((fd, described))
            })
            .collect()
        })
        .unwrap_or_default();
    fds.sort();
    fds
}

/// Socket inode → what it is, from `/proc/PID/net/{tcp,tcp6,udp,udp6,unix}`.
fn socket_table(pid: u32) -> BTreeMap<String, String> {
    let mut table = BTreeMap::new();
    for proto in ["tcp", "tcp6", "udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{proto}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                continue;
            }
            let state = match cols[3] {
                "0A" => "LISTEN",
                "01" => "ESTABLISHED",
                "06" => "TIME_WAIT",
                "08" => "CLOSE_WAIT",
                "07" => "CLOSE",
                other => other,
            };
            table.insert(
                cols[9].to_owned(),
                format!("{proto} {state} {}", hex_address(cols[1])),
            );
        }
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).unwrap_or_default();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() >= 7 {
            let path = cols.get(7).copied().unwrap_or("(unnamed)");
            table.insert(cols[6].to_owned(), format!("unix {path}"));
        }
    }
    table
}

/// `0100007F:1F90` → `127.0.0.1:8080` (IPv4; IPv6 left as it is).
fn hex_address(hex: &str) -> String {
    let Some((ip, port)) = hex.split_once(':') else {
        return hex.to_owned();
    };
    let port = u16::from_str_radix(port, 16).unwrap_or(0);
    match u32::from_str_radix(ip, 16) {
        Ok(ip) if ip_is_v4(hex) => {
            let [a, b, c, d] = ip.to_le_bytes();
            format!("{a}.{b}.{c}.{d}:{port}")
        }
        _ => format!("[{ip}]:{port}"),
    }
}

fn ip_is_v4(hex: &str) -> bool {
    hex.split_once(':').is_some_and(|(ip, _)| ip.len() == 8)
}

/// What kind of descriptor a described target is: `tcp LISTEN`, `unix`,
/// `pipe`, `anon_inode:[eventpoll]`, a file path…
fn kind(target: &str) -> String {
    if let Some((_, what)) = target.split_once("] ") {
        let mut words = what.split_whitespace();
        return match (words.next(), words.next()) {
            (Some("unix"), _) => "unix".into(),
            (Some(proto), Some(state)) => format!("{proto} {state}"),
            _ => what.to_owned(),
        };
    }
    if target.starts_with("socket:") {
        return "other socket".into();
    }
    if target.starts_with("pipe:") {
        return "pipe".into();
    }
    if let Some(name) = target
        .strip_prefix("anon_inode:[")
        .and_then(|rest| rest.strip_suffix(']'))
    {
        return name.to_owned();
    }
    if target == "/dev/null" {
        return "null".into();
    }
    if target.starts_with('/') {
        return "file".into();
    }
    target.to_owned()
}

fn kinds(fds: &[(u32, String)]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, target) in fds {
        *counts.entry(kind(target)).or_insert(0) += 1;
    }
    counts
}

/// The clients' running totals.
#[derive(Debug, Default, Clone)]
struct Totals {
    requests: u64,
    failed: u64,
    opened: u64,
    /// Responses with `Connection: close` (from the draining child or a rescue).
    closes: u64,
    first_failures: Vec<String>,
}

/// `connections` keep-alive clients on one thread, each sending `GET /` every
/// `interval` and reopening at once after `Connection: close`, EOF or an error.
struct Load {
    stop: Arc<AtomicBool>,
    totals: Arc<Mutex<Totals>>,
    thread: std::thread::JoinHandle<()>,
}

impl Load {
    fn start(addr: SocketAddr, connections: usize, interval: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let totals = Arc::new(Mutex::new(Totals::default()));
        let thread = std::thread::spawn({
            let (stop, totals) = (Arc::clone(&stop), Arc::clone(&totals));
            move || clients(addr, connections, interval, &stop, &totals)
        });
        Load {
            stop,
            totals,
            thread,
        }
    }

    fn totals(&self) -> Totals {
        self.totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn wait_for_requests(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.totals().requests >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn stop(self) -> Totals {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        totals.clone()
    }
}

fn clients(
    addr: SocketAddr,
    connections: usize,
    interval: Duration,
    stop: &AtomicBool,
    totals: &Mutex<Totals>,
) {
    let mut conns: Vec<Option<Conn>> = (0..connections).map(|_| None).collect();
    let record = |update: &dyn Fn(&mut Totals)| {
        update(&mut totals.lock().unwrap_or_else(|e| e.into_inner()));
    };
    let fail = |what: String| {
        record(&|t: &mut Totals| {
            t.failed += 1;
            if t.first_failures.len() < 10 {
                t.first_failures.push(what.clone());
            }
        });
    };
    while !stop.load(Ordering::Relaxed) {
        let round = Instant::now();
        for slot in conns.iter_mut() {
            if slot.is_none() {
                match Conn::open(addr) {
                    Ok(conn) => {
                        *slot = Some(conn);
                        record(&|t: &mut Totals| t.opened += 1);
                    }
                    Err(e) => {
                        fail(e);
                        continue;
                    }
                }
            }
            let Some(conn) = slot.as_mut() else { continue };
            match conn.get() {
                Ok(response) => {
                    record(&|t: &mut Totals| {
                        t.requests += 1;
                        t.closes += u64::from(response.closes);
                    });
                    if response.status != 200 {
                        fail(format!("status {}", response.status));
                    }
                    if response.closes {
                        *slot = None; // reopened at once, below
                        if let Ok(conn) = Conn::open(addr) {
                            *slot = Some(conn);
                            record(&|t: &mut Totals| t.opened += 1);
                        }
                    }
                }
                Err(e) => {
                    record(&|t: &mut Totals| t.requests += 1);
                    fail(e);
                    *slot = None;
                }
            }
        }
        if let Some(rest) = interval.checked_sub(round.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

/// Polls the supervisor's children and fd count every 2 ms.
struct Watch {
    stop: Arc<AtomicBool>,
    /// Since the last [`Watch::take_max`].
    children_max: Arc<AtomicUsize>,
    fds_max: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<Watched>,
}

/// What the watch saw over the whole run.
#[derive(Debug, Default)]
struct Watched {
    polls: u64,
    children_max: usize,
    /// Polls that saw more than one child, and a zombie.
    with_two_or_more: u64,
    with_zombie: u64,
    /// Children that appeared between two polls (pids are reused, so not a
    /// set of pids).
    appeared: u64,
    fds_max: usize,
    /// The first polls that saw more children than `1 + --max-draining`.
    over_bound: Vec<String>,
}

impl Watch {
    /// `bound`: the most children there may be (1 + `--max-draining`).
    fn start(sup: u32, bound: usize) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let children_max = Arc::new(AtomicUsize::new(0));
        let fds_max = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::spawn({
            let (stop, children_max, fds_max) = (
                Arc::clone(&stop),
                Arc::clone(&children_max),
                Arc::clone(&fds_max),
            );
            move || {
                let mut watched = Watched::default();
                let mut previous: Vec<u32> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let children = children_of(sup);
                    let zombies = children
                        .iter()
                        .filter(|&&pid| state(pid) == Some('Z'))
                        .count();
                    let fds = meter::open_fds(sup);
                    watched.polls += 1;
                    watched.children_max = watched.children_max.max(children.len());
                    watched.with_two_or_more += u64::from(children.len() >= 2);
                    watched.with_zombie += u64::from(zombies > 0);
                    watched.fds_max = watched.fds_max.max(fds);
                    watched.appeared +=
                        children.iter().filter(|c| !previous.contains(c)).count() as u64;
                    if children.len() > bound && watched.over_bound.len() < 5 {
                        let states: Vec<String> = children
                            .iter()
                            .map(|&pid| format!("{pid} {}", state(pid).unwrap_or('?')))
                            .collect();
                        watched.over_bound.push(states.join(", "));
                    }
                    children_max.fetch_max(children.len(), Ordering::Relaxed);
                    fds_max.fetch_max(fds, Ordering::Relaxed);
                    previous = children;
                    std::thread::sleep(Duration::from_millis(2));
                }
                watched
            }
        });
        Watch {
            stop,
            children_max,
            fds_max,
            thread,
        }
    }

    /// The most children, and fds, seen at once since the last call.
    fn take_max(&self) -> (usize, usize) {
        (
            self.children_max.swap(0, Ordering::Relaxed),
            self.fds_max.swap(0, Ordering::Relaxed),
        )
    }

    fn stop(self) -> Watched {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// The children of `pid` (any thread's), zombies included.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut children: Vec<u32> = tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    children.sort_unstable();
    children.dedup();
    children
}

fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

fn seconds(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn report(
    args: &Args,
    machine: &str,
    others: f64,
    out: &Outcome,
    load: &Totals,
    watched: &Watched,
) -> String {
    let mut text = format!(
        "## `handover run`: {} upgrades, footprint (issue 10)\n\nMachine:\n\n{machine}\
         - load average at the end: {}\n\
         - CPU time used by other processes during the run: {:.0} % of the machine\n\n\
         ```sh\ncargo build --release -p handover-cli -p handover-bench\n\
         target/release/handover-bench supervisor-footprint --upgrades {} --every {} \
         --connections {} --interval {} --max-draining {}\n```\n\n\
         `handover run --ready notify --probation 0 --max-draining {}` with \
         `python3 crates/cli/tests/fixtures/notify_server.py`; {} keep-alive clients, \
         each sending `GET /` every {} and reconnecting at once after `Connection: close`; \
         the upgrades back to back. Sampled once `handover upgrade` had returned and {} \
         had passed; \"since the previous row\": the 2 ms watch of the supervisor's \
         children and fd count, the upgrades' times, the clients' requests.\n\n\
         | upgrades | fds | fds by kind | VmRSS | VmHWM | threads | children, most at once | fds, most at once | upgrade p50 / max | requests / failed |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        args.upgrades,
        machine::load_average(),
        others * 100.0,
        args.upgrades,
        args.every,
        args.connections,
        humantime::format_duration(args.interval),
        args.max_draining,
        args.max_draining,
        args.connections,
        humantime::format_duration(args.interval),
        humantime::format_duration(args.settle),
    );
    for sample in &out.samples {
        let by_kind: Vec<String> = kinds(&sample.fds)
            .into_iter()
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect();
        let times = Spread::of(sample.times.clone()).map_or("–".into(), |s| {
            format!("{} / {}", seconds(s.median), seconds(s.max))
        });
        text.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |\n",
            sample.upgrades,
            sample.fds.len(),
            by_kind.join(", "),
            meter::mib(sample.memory.rss_kib),
            meter::mib(sample.memory.hwm_kib),
            sample.threads,
            sample.children_max,
            sample.fds_max,
            times,
            sample.requests,
            sample.failed,
        ));
    }
    let (first, last) = (out.samples.first(), out.samples.last());
    let grown = match (first, last) {
        (Some(first), Some(last)) => fd_growth(&first.fds, &last.fds),
        _ => "no samples".into(),
    };
    let all: Vec<Duration> = out
        .samples
        .iter()
        .flat_map(|s| s.times.iter().copied())
        .collect();
    let spread = Spread::of(all).map_or("–".into(), |s| {
        format!(
            "min {}, p50 {}, p99 {}, max {}",
            seconds(s.min),
            seconds(s.median),
            seconds(s.p99),
            seconds(s.max)
        )
    });
    let refused = out.refused;
    text.push_str(&format!(
        "\n- upgrades: {} of {} succeeded in {} ({spread}); failed: {}{}\n\
         - children of the supervisor (polled every 2 ms, {} polls): at most {} at once \
         (bound: 1 current or starting + {} draining = {}); polls with two: {}; with a \
         zombie: {}; above the bound: {}; children that appeared: {}\n\
         - upgrades refused by the supervisor (`upgrade refused` in its log): {refused}\n\
         - fds at most at once over the run: {}\n\
         - the old children's connections (`handover upgrade`): {} released, {} rescued, \
         {} lost mid-request\n\
         - clients: {} requests, {} failed{}; {} connections opened, {} `Connection: close` \
         answers\n\
         - fds, first sample → last: {grown}\n",
        out.done,
        args.upgrades,
        seconds(out.took),
        if out.failed.is_empty() {
            "none".to_owned()
        } else {
            format!(
                "**{}** (first: {})",
                out.failed.len(),
                out.failed[..out.failed.len().min(3)].join("; ")
            )
        },
        out.stopped_early
            .as_ref()
            .map_or(String::new(), |why| format!("; **stopped early**: {why}")),
        watched.polls,
        watched.children_max,
        args.max_draining,
        1 + args.max_draining,
        watched.with_two_or_more,
        watched.with_zombie,
        if watched.over_bound.is_empty() {
            "none".to_owned()
        } else {
            format!("**{}**", watched.over_bound.join("; "))
        },
        watched.appeared,
        watched.fds_max,
        out.released,
        out.rescued,
        out.lost,
        load.requests,
        load.failed,
        if load.first_failures.is_empty() {
            String::new()
        } else {
            format!(" (first: {})", load.first_failures.join("; "))
        },
        load.opened,
        load.closes,
    ));
    if let Some(last) = last {
        let listing: Vec<String> = last
            .fds
            .iter()
            .map(|(fd, target)| {
                // Pipes and sockets only: their inodes are unique, paths are not.
                let unique = target.starts_with("pipe:") || target.starts_with("socket:");
                if unique && out.inherited.contains(target) {
                    format!(
                        "{fd} → {target} (also open in handover-bench since its start: inherited)"
                    )
                } else {
                    format!("{fd} → {target}")
                }
            })
            .collect();
        text.push_str(&format!(
            "\nThe supervisor's fds after upgrade {}:\n\n```text\n{}\n```\n",
            last.upgrades,
            listing.join("\n")
        ));
    }
    text
}

/// What changed between two fd listings, by kind (numbers of fds), and the
/// targets of fds that were not there at the start.
fn fd_growth(first: &[(u32, String)], last: &[(u32, String)]) -> String {
    let (before, after) = (kinds(first), kinds(last));
    let every: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let changes: Vec<String> = every
        .into_iter()
        .filter_map(|kind| {
            let b = before.get(kind).copied().unwrap_or(0);
            let a = after.get(kind).copied().unwrap_or(0);
            (a != b).then(|| format!("{kind}: {b} → {a}"))
        })
        .collect();
    if changes.is_empty() {
        format!(
            "{} → {}, the same kinds in the same numbers (the listening socket of each \
             upgrade's epoch is a new one, so socket inodes differ)",
            first.len(),
            last.len()
        )
    } else {
        let new: Vec<String> = last
            .iter()
            .filter(|(_, target)| !first.iter().any(|(_, t)| t == target))
            .map(|(fd, target)| format!("{fd} → {target}"))
            .collect();
        format!(
            "**{} → {}**: {}; not there at the start: {}",
            first.len(),
            last.len(),
            changes.join(", "),
            new.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_connection_counts_and_socket_addresses() {
        let said = "new pid 7 started (generation 2)\nold pid 6 exited with status 0 after \
                    draining 0.05s; its connections: 3 released, 5 rescued, 1 lost mid-request\n";
        assert_eq!(connection_counts(said), (3, 5, 1));
        assert_eq!(connection_counts("nothing"), (0, 0, 0));
        assert_eq!(hex_address("0100007F:1F90"), "127.0.0.1:8080");
        assert_eq!(kind("socket:[12] tcp LISTEN 127.0.0.1:80"), "tcp LISTEN");
        assert_eq!(kind("socket:[13] unix /tmp/x"), "unix");
        assert_eq!(kind("pipe:[14]"), "pipe");
        assert_eq!(kind("anon_inode:[eventpoll]"), "eventpoll");
        assert_eq!(kind("/dev/null"), "null");
        assert_eq!(kind("/tmp/handover.log"), "file");
    }
}
