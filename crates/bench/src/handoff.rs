//! `handoff`: how long a whole `upgrade()` takes when it hands over N named
//! TCP listeners — fork + exec of the successor, the successor claiming all N
//! by name, its `READY=1`, and the commit — measured in the old process around
//! the `upgrade()` call. Run for N (default 1000) and for N = 1 as a baseline,
//! so the cost of the sockets themselves is visible.
//!
//! Each generation also records `CLOCK_MONOTONIC` timestamps at the top of
//! `main`, after `Handover::build` and just before `ready()`, which split the
//! total into phases.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use handover::Handover;

use crate::clock::{between, now_ns};
use crate::results::{self, Records};
use crate::scratch::Scratch;
use crate::stats::{ms, verdict, Spread};
use crate::{chain, procs};

/// Target for the median upgrade with 1000 sockets (issue 2).
const TARGET: Duration = Duration::from_millis(10);

/// Options of `handover-bench handoff`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Named TCP listeners handed over at each upgrade.
    #[arg(long, default_value_t = 1000)]
    pub sockets: usize,
    /// Upgrades measured (for N sockets, and again for 1 socket).
    #[arg(long, default_value_t = 20)]
    pub runs: u64,
}

/// Options of a chain process (hidden subcommand `chain-handoff`).
#[derive(Debug, Clone, clap::Args)]
pub struct ChainArgs {
    #[arg(long)]
    sockets: usize,
    #[arg(long)]
    runs: u64,
    #[arg(long)]
    results: PathBuf,
}

/// One upgrade, split into phases.
#[derive(Debug, Clone, Copy)]
struct Upgrade {
    total: Duration,
    spawn: Duration,
    init: Duration,
    claim: Duration,
    commit: Duration,
}

/// Runs the benchmark; returns its Markdown section.
pub fn run(args: &Args) -> Result<String, String> {
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    let mut counts = vec![args.sockets];
    if args.sockets != 1 {
        counts.push(1);
    }
    let mut totals = String::new();
    let mut phases = String::new();
    let mut first_median = None;
    for &sockets in &counts {
        eprintln!("handoff: {} upgrades with {sockets} sockets...", args.runs);
        let upgrades = measure(sockets, args.runs)?;
        let total = spread(&upgrades, |u| u.total)?;
        first_median.get_or_insert(total.median);
        totals.push_str(&format!(
            "| {sockets} | {} | {} | {} | {} | {} |\n",
            total.count,
            ms(total.min),
            ms(total.median),
            ms(total.p90),
            ms(total.max)
        ));
        let median = |f: fn(&Upgrade) -> Duration| spread(&upgrades, f).map(|s| ms(s.median));
        phases.push_str(&format!(
            "| {sockets} | {} | {} | {} | {} |\n",
            median(|u| u.spawn)?,
            median(|u| u.init)?,
            median(|u| u.claim)?,
            median(|u| u.commit)?
        ));
    }
    let median = first_median.unwrap_or_default();
    Ok(format!(
        "### Hand-off of {n} named sockets\n\n\
         `handover-bench handoff --sockets {n} --runs {runs}`: the full `upgrade()` call \
         (exec + successor claiming every socket by name + READY=1 + commit), measured \
         in the old process; each upgrade starts once the previous old process has exited.\n\n\
         | sockets | upgrades | min | median | p90 | max |\n|---|---|---|---|---|---|\n{totals}\n\
         Median of each phase (CLOCK_MONOTONIC stamps taken in both processes):\n\n\
         | sockets | fork+exec → successor `main` | `main` → `Handover` built | claiming the sockets | \
         `ready()` → `upgrade()` returns |\n|---|---|---|---|---|\n{phases}\n\
         Target: median < {target} with {n} sockets — {} (median {}).\n",
        verdict(median < TARGET),
        ms(median),
        n = args.sockets,
        runs = args.runs,
        target = ms(TARGET),
    ))
}

fn spread(upgrades: &[Upgrade], field: fn(&Upgrade) -> Duration) -> Result<Spread, String> {
    Spread::of(upgrades.iter().map(field).collect()).ok_or_else(|| "no upgrade measured".into())
}

fn measure(sockets: usize, runs: u64) -> Result<Vec<Upgrade>, String> {
    // Each process holds its listeners, the registry's copies, and transiently
    // one more copy of each while forking the successor.
    procs::ensure_fd_limit(3 * sockets as u64 + 256)?;
    let scratch = Scratch::new("handoff")?;
    let results = scratch.path("results");
    let args = [
        "chain-handoff".to_owned(),
        format!("--sockets={sockets}"),
        format!("--runs={runs}"),
        format!("--results={}", results.display()),
    ];
    let records = chain::run(&args, &results, Duration::from_secs(30 + 5 * runs))?;
    analyse(&records, runs)
}

fn analyse(records: &Records, runs: u64) -> Result<Vec<Upgrade>, String> {
    let claimed = |generation| {
        records
            .get("claimed", generation)
            .filter(|r| r.numbers.len() == 6)
            .map(|r| r.numbers.as_slice())
            .ok_or_else(|| format!("generation {generation} recorded no claim"))
    };
    let ports = &claimed(0)?[4..6];
    let mut upgrades = Vec::new();
    for generation in 0..runs {
        let upgrade = records
            .get("upgrade", generation)
            .filter(|r| r.numbers.len() == 3)
            .ok_or_else(|| format!("generation {generation} recorded no upgrade"))?;
        let &[before, after, successor] = upgrade.numbers.as_slice() else {
            unreachable!("length checked")
        };
        let &[started, built, ready, pid, first, last] = claimed(generation + 1)? else {
            unreachable!("length checked")
        };
        if pid != successor || [first, last] != ports {
            return Err(format!(
                "generation {} is pid {pid} on ports {first}..{last}, expected pid {successor} \
                 on ports {}..{}: the sockets were not inherited",
                generation + 1,
                ports[0],
                ports[1]
            ));
        }
        upgrades.push(Upgrade {
            total: between(before, after),
            spawn: between(before, started),
            init: between(started, built),
            claim: between(built, ready),
            commit: between(ready, after),
        });
    }
    Ok(upgrades)
}

/// A generation of the chain: claim, ready, wait for the parent to go, upgrade.
pub fn chain(args: &ChainArgs, started: u64) -> ExitCode {
    let parent = rustix::process::getppid();
    // Before anything else opens a file: inherited sockets are at fds 3, 4, …
    let handover = match Handover::builder()
        .no_signals()
        .ready_timeout(Duration::from_secs(30))
        .build()
    {
        Ok(handover) => handover,
        Err(e) => return chain::fail(&args.results, e),
    };
    let built = now_ns();
    let generation = handover.generation();
    let mut listeners = Vec::with_capacity(args.sockets);
    for i in 0..args.sockets {
        match handover.tcp_listener(&format!("s{i}"), (Ipv4Addr::LOCALHOST, 0)) {
            Ok(listener) => listeners.push(listener),
            Err(e) => return chain::fail(&args.results, e),
        }
    }
    let ready = now_ns();
    if let Err(e) = handover.ready() {
        return chain::fail(&args.results, e);
    }
    let port = |l: Option<&std::net::TcpListener>| {
        l.and_then(|l| l.local_addr().ok())
            .map_or(0, |a| u64::from(a.port()))
    };
    let numbers = [
        started,
        built,
        ready,
        u64::from(std::process::id()),
        port(listeners.first()),
        port(listeners.last()),
    ];
    if let Err(e) = results::append(&args.results, "claimed", generation, &numbers) {
        return chain::fail(&args.results, e);
    }
    if handover.is_successor() && !chain::wait_parent_gone(parent, Duration::from_secs(10)) {
        return chain::fail(&args.results, "the old generation did not exit within 10 s");
    }
    if generation >= args.runs {
        return match results::append(&args.results, "done", generation, &[]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => chain::fail(&args.results, e),
        };
    }
    let before = now_ns();
    let upgraded = handover.upgrade();
    let after = now_ns();
    let successor = match upgraded {
        Ok(pid) => pid,
        Err(e) => return chain::fail(&args.results, e),
    };
    if !handover.drain_signal().is_draining() {
        return chain::fail(&args.results, "upgrade() returned but no drain order");
    }
    let numbers = [before, after, u64::from(successor)];
    if let Err(e) = results::append(&args.results, "upgrade", generation, &numbers) {
        return chain::fail(&args.results, e);
    }
    drop(listeners);
    ExitCode::SUCCESS
}
