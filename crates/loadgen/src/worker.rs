//! The per-worker request loop.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::watch;

use crate::config::LoadConfig;
use crate::http::{self, Conn};
use crate::outcome::{Failure, FailureKind, Outcome, Sample};
use crate::stats::LiveStats;

/// State shared by all workers of one run.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: LoadConfig,
    /// Instant the run started; sample offsets are relative to it.
    pub started: Instant,
    /// No attempt starts at or after this instant (`None`: too far away to represent).
    pub deadline: Option<Instant>,
    /// Set when the run is stopped early.
    pub stop: AtomicBool,
    /// Also set when the run is stopped early, to wake sleeping workers.
    pub stopped: watch::Sender<bool>,
    /// Number of attempts started so far, to enforce `max_requests` exactly.
    pub issued: AtomicU64,
    pub stats: LiveStats,
}

impl Shared {
    /// Claims the right to start one more attempt, or returns `false` when
    /// the run is over (stopped, past its deadline, or out of requests).
    pub fn claim(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        let issued = self.issued.fetch_add(1, Ordering::Relaxed);
        self.config.max_requests.map_or(true, |max| issued < max)
    }

    /// Stops the run early: no attempt starts after this.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.stopped.send_replace(true);
    }

    /// Sleeps until `when`; returns `false` (possibly early) if the run is
    /// stopped or its deadline comes first.
    pub async fn sleep_until(&self, when: Instant) -> bool {
        if self.deadline.is_some_and(|d| when >= d) {
            return false;
        }
        let mut stopped = self.stopped.subscribe();
        tokio::select! {
            () = tokio::time::sleep_until(when.into()) => !self.stop.load(Ordering::Relaxed),
            _ = stopped.wait_for(|stopped| *stopped) => false,
        }
    }

    /// Records a finished attempt in the live counters and returns its sample.
    pub fn finish(&self, sample: Sample) -> Sample {
        self.stats.record(sample.is_success());
        sample
    }
}

/// Runs worker number `index` until the run is over; returns its samples.
///
/// Each attempt is recorded exactly once and never retried. In keep-alive
/// mode the connection is kept only after a successful, reusable response;
/// after any failure the next attempt opens a new connection.
pub(crate) async fn worker(shared: &Shared, index: usize) -> Vec<Sample> {
    let config = &shared.config;
    let keep_alive = config.mode.keep_alive_for(index);
    let host = config
        .host
        .clone()
        .unwrap_or_else(|| config.addr.to_string());
    let request = http::request_bytes(&config.path, &host, !keep_alive);
    let mut samples = Vec::new();
    let mut kept: Option<Conn> = None;
    while shared.claim() {
        let start = Instant::now();
        let existing = kept.take();
        let fresh_connection = existing.is_none();
        let attempt = async {
            let mut conn = match existing {
                Some(conn) => conn,
                None => Conn::connect(config.addr, config.connect_timeout).await?,
            };
            let response = conn.exchange(&request).await?;
            Ok::<_, Failure>((response, conn))
        };
        let result = tokio::time::timeout(config.request_timeout, attempt).await;
        let latency = start.elapsed();
        let (outcome, pid, generation) = match result {
            Err(_) => {
                let detail = format!("no complete response within {:?}", config.request_timeout);
                (
                    Outcome::Failure(Failure::new(FailureKind::Timeout, detail)),
                    None,
                    None,
                )
            }
            Ok(Err(failure)) => (Outcome::Failure(failure), None, None),
            Ok(Ok((response, conn))) => {
                let outcome = if (200..300).contains(&response.status) {
                    if keep_alive && response.reusable {
                        kept = Some(conn);
                    }
                    Outcome::Success {
                        status: response.status,
                    }
                } else {
                    let detail = format!("server answered status {}", response.status);
                    Outcome::Failure(Failure::new(
                        FailureKind::BadStatus(response.status),
                        detail,
                    ))
                };
                (outcome, response.pid, response.generation)
            }
        };
        let sample = Sample {
            worker: index,
            start: start.duration_since(shared.started),
            latency,
            outcome,
            fresh_connection,
            pid,
            generation,
        };
        samples.push(shared.finish(sample));
    }
    samples
}
