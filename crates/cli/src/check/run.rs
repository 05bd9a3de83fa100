//! The run: load, the upgrade schedule and the progress line on one clock,
//! and Ctrl-C (stop starting requests and upgrades, finish what is under way,
//! report as usual; a second Ctrl-C exits at once with status 130).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use handover_loadgen::{LiveStats, Report};
use tokio::sync::watch;

use super::args::Plan;
use super::progress::Progress;
use super::upgrades::{self, UpgradeRun};

/// What happened.
#[derive(Debug)]
pub struct RunOutcome {
    /// Every attempt; sample offsets count from the run's start.
    pub report: Report,
    /// Every upgrade command that ran, in order.
    pub upgrades: Vec<UpgradeRun>,
    /// Whether Ctrl-C ended the run early.
    pub interrupted: bool,
}

/// Runs load for the planned duration while the upgrade commands run on
/// schedule; returns when both are over.
pub async fn execute(plan: &Plan) -> RunOutcome {
    let stats = LiveStats::new();
    let done = Arc::new(AtomicU32::new(0));
    let (stop, stopped) = watch::channel(false);
    let origin = Instant::now();

    let load = tokio::spawn(handover_loadgen::run_from(
        origin,
        plan.load.clone(),
        until_stopped(stopped.clone()),
        stats.clone(),
    ));
    let upgrades = tokio::spawn(schedule(
        plan.clone(),
        origin,
        Arc::clone(&done),
        stopped.clone(),
    ));
    let progress = plan
        .progress
        .then(|| Progress::start(plan, origin, stats, Arc::clone(&done)))
        .flatten();

    let both = async { tokio::join!(load, upgrades) };
    tokio::pin!(both);
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let mut interrupted = false;
    let (load, upgrades) = tokio::select! {
        results = &mut both => results,
        () = ctrl_c => {
            interrupted = true;
            stop.send_replace(true);
            tokio::spawn(async {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("handover: interrupted again, exiting without a report");
                    std::process::exit(130);
                }
            });
            both.await
        }
    };
    if let Some(progress) = progress {
        progress.finish().await;
    }
    RunOutcome {
        report: load.unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic())),
        upgrades: upgrades.unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic())),
        interrupted,
    }
}

/// Completes once `stop` says so (never if the sender is gone first).
async fn until_stopped(mut stopped: watch::Receiver<bool>) {
    if stopped.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs the upgrade command at `origin + k × every` for k = 1, 2, … as the
/// plan says. Commands never overlap: one that is late starts when the
/// previous one is over.
async fn schedule(
    plan: Plan,
    origin: Instant,
    done: Arc<AtomicU32>,
    mut stopped: watch::Receiver<bool>,
) -> Vec<UpgradeRun> {
    let mut runs = Vec::new();
    let Some(command) = &plan.upgrade else {
        return runs;
    };
    for index in 1..=plan.planned_upgrades() {
        let at = origin + plan.every * index;
        tokio::select! {
            () = tokio::time::sleep_until(at.into()) => {}
            _ = stopped.wait_for(|stop| *stop) => break,
        }
        if *stopped.borrow() {
            break;
        }
        runs.push(upgrades::run(command, index, origin, plan.upgrade_timeout).await);
        done.fetch_add(1, Ordering::Relaxed);
    }
    runs
}

/// Offsets are shown with millisecond precision.
pub fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}
