//! `handover-loadgen`: a load generator that counts every failure.
//!
//! It drives a server from a number of concurrent workers while the server is
//! being upgraded, and records one [`Sample`] per attempt. An attempt is an
//! HTTP/1.1 `GET` ([`Protocol::Http`]), a line exchanged on a new TCP
//! connection ([`Protocol::Tcp`]) or a line exchanged on a long-lived
//! connection ([`Protocol::LongLived`]).
//! It is built to *detect* dropped requests, so:
//!
//! * it never retries: every attempt is counted exactly once, as a success or
//!   as one [`FailureKind`] (`Refused`, `Reset`, `Eof`, `Timeout`,
//!   `BadStatus`, `Malformed`, `Other`);
//! * the HTTP/1.1 client is hand-written over a plain TCP stream, so failures
//!   are observed directly, not through a pool that may hide them;
//! * a keep-alive worker writes its next request straight onto its existing
//!   connection without probing it first, so a server closing an idle
//!   keep-alive connection shows up as a failure;
//! * the server's identity is recorded when it tells it: `x-pid` /
//!   `x-generation` headers, or `pid=N` / `generation=N` in the body (first
//!   1 KiB) or the reply line, or the `<pid>` of a `<pid> <line sent>` echo.
//!
//! Besides the attempts, the report follows connections:
//!
//! * [`Protocol::LongLived`]: per worker, a [`LineConnection`] — how many
//!   times it was opened (1 = never reopened), whether the server closed or
//!   reset it, bytes sent and bytes whose echo was verified in order, and the
//!   distinct pids that served it, in order ([`Report::long_lived_totals`]);
//! * HTTP keep-alive workers: per TCP connection, a [`KeepAliveConnection`]
//!   — closed by the server with `Connection: close`, closed without it (EOF
//!   or reset between requests), kept to the end, or given up after another
//!   failure, and the pids that answered on it ([`Report::keep_alive_totals`]).
//!
//! For servers that echo, [`LoadConfig::echo_check`] makes the line
//! protocols number each line (`c<worker>-<seq> <message>`) and require the
//! reply `<pid> <that line>`: a line lost, duplicated or reordered is a
//! `Malformed` failure naming the expected and the received seq.
//! [`LoadConfig::lines_per_exchange`] writes several lines per exchange.
//!
//! Runs are bounded by [`LoadConfig::duration`] and optionally
//! [`LoadConfig::max_requests`]; attempts in flight when the run stops are
//! allowed to finish (bounded by the request timeout) and are counted.
//!
//! Use [`run`] / [`run_until`] from async code, or [`LoadThread`] from
//! synchronous tests.
//!
//! ```no_run
//! # async fn demo() {
//! use std::time::Duration;
//! use handover_loadgen::{run, LoadConfig, Mode};
//!
//! let config = LoadConfig::new("127.0.0.1:8080".parse().unwrap())
//!     .connections(4)
//!     .mode(Mode::Mixed)
//!     .duration(Duration::from_secs(2));
//! let report = run(config).await;
//! assert_eq!(report.failure_count(), 0, "{:?}", report.first_failures(5));
//! println!("{}", report.summary());
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod connections;
mod echo;
mod http;
mod identity;
mod line;
mod line_worker;
mod outcome;
mod report;
mod stats;
mod thread;
mod worker;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;

pub use config::{LoadConfig, Mode, Protocol};
pub use connections::{
    ConnectionEnd, KeepAliveConnection, KeepAliveTotals, LineConnection, LongLivedTotals,
};
pub use http::MAX_HEAD_BYTES;
pub use line_worker::LINE_STATUS;
pub use outcome::{Failure, FailureKind, Outcome, Sample};
pub use report::Report;
pub use stats::LiveStats;
pub use thread::LoadThread;

/// Runs load until the configured duration or request cap is reached.
pub async fn run(config: LoadConfig) -> Report {
    run_observed(config, std::future::pending(), LiveStats::new()).await
}

/// Like [`run`], but also stops (early) as soon as `stop` completes.
pub async fn run_until(config: LoadConfig, stop: impl Future<Output = ()>) -> Report {
    run_observed(config, stop, LiveStats::new()).await
}

/// Like [`run_until`], additionally updating `stats` as attempts complete,
/// so progress can be observed while the run is in progress.
///
/// # Panics
///
/// Must be called within a tokio runtime (workers are spawned as tasks).
pub async fn run_observed(
    config: LoadConfig,
    stop: impl Future<Output = ()>,
    stats: LiveStats,
) -> Report {
    run_from(Instant::now(), config, stop, stats).await
}

/// Like [`run_observed`], with the run's time origin given: sample offsets
/// ([`Sample::start`]) are relative to `started`, and the duration counts
/// from it. Lets a caller put its own events (e.g. upgrade commands) on the
/// same clock as the samples.
///
/// # Panics
///
/// Must be called within a tokio runtime (workers are spawned as tasks).
pub async fn run_from(
    started: Instant,
    config: LoadConfig,
    stop: impl Future<Output = ()>,
    stats: LiveStats,
) -> Report {
    let shared = Arc::new(worker::Shared {
        deadline: started.checked_add(config.duration),
        config,
        started,
        stop: AtomicBool::new(false),
        stopped: tokio::sync::watch::Sender::new(false),
        issued: AtomicU64::new(0),
        stats,
    });
    let mut workers = JoinSet::new();
    for index in 0..shared.config.connections {
        let shared = Arc::clone(&shared);
        workers.spawn(async move {
            match shared.config.protocol {
                Protocol::Http => worker::worker(&shared, index).await,
                Protocol::Tcp => line_worker::tcp_worker(&shared, index).await,
                Protocol::LongLived => line_worker::long_lived_worker(&shared, index).await,
            }
        });
    }
    let mut stop = std::pin::pin!(stop);
    let mut stopping = false;
    let mut samples = Vec::new();
    let mut line_connections = Vec::new();
    let mut keep_alive_connections = Vec::new();
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                Some(Ok(output)) => {
                    samples.extend(output.samples);
                    line_connections.extend(output.line_connection);
                    keep_alive_connections.extend(output.keep_alive);
                }
                Some(Err(err)) => match err.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    Err(err) => panic!("load worker task failed: {err}"),
                },
                None => break,
            },
            () = &mut stop, if !stopping => {
                stopping = true;
                shared.request_stop();
            }
        }
    }
    samples.sort_by_key(|s| s.start);
    line_connections.sort_by_key(|c: &LineConnection| c.worker);
    keep_alive_connections.sort_by_key(|c: &KeepAliveConnection| (c.opened_at, c.worker));
    Report {
        config: shared.config.clone(),
        elapsed: started.elapsed(),
        samples,
        line_connections,
        keep_alive_connections,
    }
}
