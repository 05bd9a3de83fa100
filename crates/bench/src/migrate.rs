//! `migrate`: live connection migration at a re-exec upgrade of `hello`.
//!
//! `hello --echo` holds N idle echo connections (each answered once by the
//! first generation) and W watched ones that exchange a line every
//! millisecond. One `SIGHUP`; then:
//!
//! - **commit → last `taken`**: from the old process's log, its
//!   "hand-over committed" line to its last "migrated connections" line
//!   (tracing timestamps, µs), with the number of connections taken;
//! - **pause** per watched connection: its last reply from the old pid to its
//!   first from the new one;
//! - **memory**: RSS of the old process with the N + W connections less its
//!   RSS before any, per connection; the same for the new process after the
//!   migration, against the old one's start;
//! - that every connection then answers from the new pid.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::latency::hello::{self, Hello};
use crate::procs;
use crate::scratch::Scratch;
use crate::stats::{ms, verdict, Spread};

/// Options of `handover-bench migrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Idle connection counts, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub connections: Vec<usize>,
    /// Connections exchanging a line every millisecond through the upgrade.
    #[arg(long, default_value_t = 50)]
    pub watched: usize,
}

type Line = BufReader<TcpStream>;

/// Runs the benchmark; returns its Markdown section.
pub fn run(args: &Args) -> Result<String, String> {
    let exe = hello::locate()?;
    let most = args.connections.iter().max().copied().unwrap_or(0);
    procs::raise_fd_limit((most + args.watched + 256) as u64)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut table = String::from(
        "| idle + watched | commit → last taken | connections/s | taken | pause p50 / p99 / max | old RSS per conn | new RSS per conn | all answered by the new pid |\n|---|---|---|---|---|---|---|---|\n",
    );
    let mut verdicts = Vec::new();
    for &count in &args.connections {
        eprintln!(
            "migrate: {count} idle + {} watched connections...",
            args.watched
        );
        let scratch = Scratch::new("migrate")?;
        let server = Hello::start_with(&exe, scratch.dir(), Duration::ZERO, true)?;
        let outcome = runtime.block_on(one_run(&server, count, args.watched));
        let stopped = server.stop();
        let run = outcome?;
        stopped?;
        let pause = Spread::of(run.pauses.clone()).ok_or("no watched connection")?;
        table.push_str(&format!(
            "| {count} + {} | {} | {:.0} | {} | {} / {} / {} | {:.1} KiB | {:.1} KiB | {} |\n",
            args.watched,
            ms(run.window),
            run.taken as f64 / run.window.as_secs_f64().max(1e-9),
            run.taken,
            ms(pause.median),
            ms(pause.p99),
            ms(pause.max),
            run.old_kib_per_conn,
            run.new_kib_per_conn,
            if run.all_new { "yes" } else { "no" },
        ));
        if count >= 10_000 {
            verdicts.push(format!(
                "{count} idle connections, commit → last taken: {} (target < 1 s: {}); p99 pause {} (target < 5 ms: {})",
                ms(run.window),
                verdict(run.window < Duration::from_secs(1)),
                ms(pause.p99),
                verdict(pause.p99 < Duration::from_millis(5))
            ));
        }
    }
    Ok(format!(
        "### Connection migration at a re-exec upgrade\n\n\
         `handover-bench migrate --connections {} --watched {}`\n\n{table}\n{}\n",
        args.connections
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(","),
        args.watched,
        verdicts.join("\n\n")
    ))
}

struct Run {
    window: Duration,
    taken: usize,
    pauses: Vec<Duration>,
    old_kib_per_conn: f64,
    new_kib_per_conn: f64,
    all_new: bool,
}

async fn one_run(server: &Hello, count: usize, watched: usize) -> Result<Run, String> {
    let echo = server.echo.ok_or("hello has no echo listener")?;
    let old = server.current_pid().ok_or("no PID file")?;
    let base_rss = rss_kib(old)?;
    let mut idle = Vec::with_capacity(count);
    for index in 0..count {
        idle.push(open(echo, index).await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let watchers: Vec<_> = (0..watched)
        .map(|i| tokio::spawn(watch(echo, i, Arc::clone(&stop))))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old_rss = rss_kib(old)?;
    let log_mark = std::fs::metadata(server.log_path()).map_or(0, |m| m.len() as usize);
    procs::signal(old, Signal::HUP).map_err(|e| format!("SIGHUP: {e}"))?;
    let started = Instant::now();
    let new = loop {
        match server.current_pid() {
            Some(pid) if pid != old => break pid,
            _ if started.elapsed() > Duration::from_secs(30) => return Err("no successor".into()),
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    while !procs::has_exited(old) {
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!("the old process {old} did not exit"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut pauses = Vec::new();
    for watcher in watchers {
        let seen = watcher.await.map_err(|e| e.to_string())??;
        pauses.push(seen.pause(old, new)?);
    }
    let new_rss = rss_kib(new)?;
    let mut all_new = true;
    for (i, conn) in idle.iter_mut().enumerate() {
        all_new &= exchange(conn, &format!("again-{i}")).await? == new;
    }
    let (window, taken) = migration_window(&server.log_path(), log_mark)?;
    let conns = (count + watched) as f64;
    Ok(Run {
        window,
        taken,
        pauses,
        old_kib_per_conn: (old_rss - base_rss) as f64 / conns,
        new_kib_per_conn: (new_rss - base_rss) as f64 / conns,
        all_new,
    })
}

async fn open(addr: SocketAddr, index: usize) -> Result<Line, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect #{index}: {e}"))?;
    let mut conn = BufReader::new(stream);
    exchange(&mut conn, &format!("idle-{index}")).await?;
    Ok(conn)
}

/// Sends `line`, reads `<pid> <line>`; returns the pid.
async fn exchange(conn: &mut Line, line: &str) -> Result<u32, String> {
    conn.get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .await
        .map_err(|e| format!("write {line}: {e}"))?;
    let mut reply = String::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_line(&mut reply)).await;
    match read {
        Ok(Ok(n)) if n > 0 => {}
        other => return Err(format!("no reply to {line}: {other:?}")),
    }
    let (pid, echoed) = reply
        .trim_end()
        .split_once(' ')
        .ok_or_else(|| format!("reply {reply:?}"))?;
    if echoed != line {
        return Err(format!("reply {reply:?} to {line}"));
    }
    pid.parse().map_err(|_| format!("pid in {reply:?}"))
}

/// The replies one watched connection saw: (when, pid).
struct Seen(Vec<(Instant, u32)>);

impl Seen {
    /// Last reply from `old` → first from `new`.
    fn pause(&self, old: u32, new: u32) -> Result<Duration, String> {
        let last_old = self.0.iter().rev().find(|(_, p)| *p == old);
        let first_new = self.0.iter().find(|(_, p)| *p == new);
        match (last_old, first_new) {
            (Some((a, _)), Some((b, _))) if b >= a => Ok(*b - *a),
            _ => Err(format!(
                "a watched connection did not move from {old} to {new}"
            )),
        }
    }
}

async fn watch(addr: SocketAddr, index: usize, stop: Arc<AtomicBool>) -> Result<Seen, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect watched #{index}: {e}"))?;
    let mut conn = BufReader::new(stream);
    let mut seen = Vec::new();
    let started = Instant::now();
    for seq in 0u64.. {
        if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(120) {
            break;
        }
        let pid = exchange(&mut conn, &format!("w{index}-{seq}")).await?;
        seen.push((Instant::now(), pid));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(Seen(seen))
}

fn rss_kib(pid: u32) -> Result<i64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no VmRSS for {pid}"))
}

/// From the log after `mark`: "hand-over committed" to the last "migrated
/// connections" line, and the connections those lines say were taken.
fn migration_window(log: &Path, mark: usize) -> Result<(Duration, usize), String> {
    let text = std::fs::read_to_string(log).map_err(|e| e.to_string())?;
    let text = text.get(mark..).unwrap_or_default();
    let stamp = |line: &str| -> Option<f64> {
        // 2026-12-02T18:47:23.498409Z …: seconds of the day, to the µs.
        let time = line.split_whitespace().next()?.split('T').nth(1)?;
        let mut parts = time.trim_end_matches('Z').split(':');
        let (h, m, s): (f64, f64, f64) = (
            parts.next()?.parse().ok()?,
            parts.next()?.parse().ok()?,
            parts.next()?.parse().ok()?,
        );
        Some(h * 3600.0 + m * 60.0 + s)
    };
    let committed = text
        .lines()
        .find(|l| l.contains("hand-over committed"))
        .and_then(stamp)
        .ok_or("no commit line in the log")?;
    let mut last = committed;
    let mut taken = 0;
    for line in text.lines().filter(|l| l.contains("migrated connections")) {
        last = stamp(line).unwrap_or(last);
        taken += line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("taken="))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
    }
    Ok((Duration::from_secs_f64((last - committed).max(0.0)), taken))
}
