//! A blocking handle that runs a load run on its own thread and runtime,
//! for synchronous tests.

use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::config::LoadConfig;
use crate::report::Report;
use crate::stats::LiveStats;

/// A load run executing on a dedicated std thread with its own tokio runtime.
///
/// Dropping the handle without calling [`LoadThread::stop`] or
/// [`LoadThread::join`] stops the run early and detaches the thread.
///
/// ```no_run
/// use std::time::Duration;
/// use handover_loadgen::{LoadConfig, LoadThread};
///
/// let load = LoadThread::start(LoadConfig::new("127.0.0.1:8080".parse().unwrap()));
/// assert!(load.stats().wait_for_successes(100, Duration::from_secs(5)));
/// // ... upgrade the server here ...
/// let report = load.stop();
/// assert_eq!(report.failure_count(), 0, "{}", report.summary());
/// ```
#[derive(Debug)]
pub struct LoadThread {
    handle: JoinHandle<Report>,
    stop: oneshot::Sender<()>,
    stats: LiveStats,
}

impl LoadThread {
    /// Starts the run in a new thread and returns immediately.
    ///
    /// # Panics
    ///
    /// Panics if the tokio runtime or the thread cannot be created.
    pub fn start(config: LoadConfig) -> LoadThread {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("handover-loadgen-rt")
            .enable_all()
            .build()
            .expect("failed to build tokio runtime for the load thread");
        let (stop, stopped) = oneshot::channel::<()>();
        let stats = LiveStats::new();
        let thread_stats = stats.clone();
        let handle = std::thread::Builder::new()
            .name("handover-loadgen".to_owned())
            .spawn(move || {
                // A dropped sender also counts as a stop request.
                let stop = async {
                    let _ = stopped.await;
                };
                runtime.block_on(crate::run_observed(config, stop, thread_stats))
            })
            .expect("failed to spawn the load thread");
        LoadThread {
            handle,
            stop,
            stats,
        }
    }

    /// Live counters of the run.
    pub fn stats(&self) -> LiveStats {
        self.stats.clone()
    }

    /// Stops the run early (in-flight attempts finish and are counted),
    /// waits for the thread and returns the report.
    pub fn stop(self) -> Report {
        let _ = self.stop.send(());
        join_thread(self.handle)
    }

    /// Waits for the run to end by itself (duration or `max_requests`) and
    /// returns the report.
    pub fn join(self) -> Report {
        let LoadThread { handle, stop, .. } = self;
        let report = join_thread(handle);
        drop(stop);
        report
    }
}

fn join_thread(handle: JoinHandle<Report>) -> Report {
    match handle.join() {
        Ok(report) => report,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
