//! `takeover`: the cost of the wire protocol's hand-over, measured in one
//! process over a real `SOCK_SEQPACKET` socket at a path.
//!
//! - sockets: from `connect` to every named socket received and acknowledged
//!   (the hello, the `takeover` command, the batches of ≤ 252 fds each acked),
//!   for N listening TCP sockets. Claiming them by name afterwards is the
//!   registry's O(n) lookup, measured by `handoff`.
//! - state: 64 MiB sent (sealed memfd) and received (checked: seals, size,
//!   CRC-32).
//!
//! Both sides run in this process, on two threads; where the fd limit does not
//! hold 2 N descriptors (10 000 under a limit of 20 000), the giver sends one
//! listener N times — the receiver still installs N descriptors.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use handover_wire::channel::{Channel, Listener};
use handover_wire::control::{self, Request};
use handover_wire::hello::Offer;
use handover_wire::peer::Allowed;
use handover_wire::{batch, state};

use crate::scratch::Scratch;
use crate::stats::{ms, verdict, Spread};

/// Options of `handover-bench takeover`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Takeovers measured per socket count.
    #[arg(long, default_value_t = 20)]
    pub runs: u32,
}

/// Runs the benchmark; returns its Markdown section.
pub fn run(args: &Args) -> Result<String, String> {
    raise_fd_limit();
    let scratch = Scratch::new("takeover")?;
    let mut table = String::from(
        "| sockets | runs | min | median | p90 | max | target | verdict |\n|---|---|---|---|---|---|---|---|\n",
    );
    for (count, target) in [(1000usize, 10u64), (10_000, 100)] {
        let limit = fd_limit().saturating_sub(256);
        if count > limit {
            table.push_str(&format!(
                "| {count} | – | not measured: the fd limit is {} | | | | < {target} ms | |\n",
                fd_limit()
            ));
            continue;
        }
        // Both sides in one process: if 2 N descriptors do not fit, the giver
        // sends one listener N times (the receiver still installs N fds).
        let distinct = if 2 * count <= limit { count } else { 1 };
        eprintln!(
            "takeover: {} runs with {count} sockets ({distinct} distinct)...",
            args.runs
        );
        let listeners: Vec<std::net::TcpListener> = (0..distinct)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("binding {distinct} listeners: {e}"))?;
        let names: Vec<String> = (0..count).map(|i| format!("s{i}")).collect();
        let sockets: Vec<(&str, BorrowedFd<'_>)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), listeners[i % distinct].as_fd()))
            .collect();
        let mut times = Vec::new();
        for run in 0..args.runs {
            let path = scratch.path(&format!("t-{count}-{run}.sock"));
            times.push(one_takeover(&path, &sockets)?);
        }
        let spread = Spread::of(times).ok_or("no run")?;
        table.push_str(&format!(
            "| {count} | {} | {} | {} | {} | {} | < {target} ms | {} |\n",
            spread.count,
            ms(spread.min),
            ms(spread.median),
            ms(spread.p90),
            ms(spread.max),
            verdict(spread.median < Duration::from_millis(target))
        ));
    }
    let state = state_times(args.runs.min(10))?;
    Ok(format!(
        "### Takeover over the wire protocol\n\n\
         From `connect` to every socket received and acknowledged (hello, command,\n\
         batches of ≤ 252 fds), both sides in one process:\n\n{table}\n\
         64 MiB of state, sent in a sealed memfd and received checked (seals, size,\n\
         CRC-32): median {} over {} runs (target < 100 ms: {}).\n",
        ms(state.median),
        state.count,
        verdict(state.median < Duration::from_millis(100))
    ))
}

/// One takeover of `sockets` through a listener at `path`: the time the
/// receiving side saw, from its connect to the last batch acknowledged.
fn one_takeover(
    path: &std::path::Path,
    sockets: &[(&str, BorrowedFd<'_>)],
) -> Result<Duration, String> {
    let listener = Listener::bind(path).map_err(|e| e.to_string())?;
    std::thread::scope(|scope| {
        let giver = scope.spawn(|| -> Result<(), String> {
            let channel = listener.accept().map_err(|e| e.to_string())?;
            control::accept(&channel, &Allowed::default(), Offer::this_version(&[]))
                .map_err(|e| e.to_string())?;
            batch::send(&channel, sockets).map_err(|e| e.to_string())
        });
        let started = Instant::now();
        let (channel, _) = control::connect(path, Request::Takeover, Offer::this_version(&[]))
            .map_err(|e| e.to_string())?;
        let received = batch::receive(&channel, sockets.len()).map_err(|e| e.to_string())?;
        let took = started.elapsed();
        giver.join().map_err(|_| "the giving thread panicked")??;
        if received.len() != sockets.len() {
            return Err(format!("{} of {} sockets", received.len(), sockets.len()));
        }
        drop(received);
        let _ = std::fs::remove_file(path);
        Ok(took)
    })
}

fn state_times(runs: u32) -> Result<Spread, String> {
    let bytes: Vec<u8> = (0..64 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut times = Vec::new();
    for _ in 0..runs.max(1) {
        let (a, b) = Channel::pair().map_err(|e| e.to_string())?;
        let started = Instant::now();
        let received = std::thread::scope(|scope| {
            let sender = scope.spawn(|| state::send(&a, &bytes));
            let received = state::receive(&b, state::DEFAULT_LIMIT);
            sender.join().map(|sent| (sent, received))
        })
        .map_err(|_| "the state thread panicked")?;
        times.push(started.elapsed());
        received.0.map_err(|e| e.to_string())?;
        if received.1.map_err(|e| e.to_string())?.len() != bytes.len() {
            return Err("state came back short".into());
        }
    }
    Spread::of(times).ok_or_else(|| "no run".into())
}

fn fd_limit() -> usize {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1024) as usize
}

fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
}
