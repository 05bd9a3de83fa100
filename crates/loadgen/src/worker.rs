//! The per-worker request loop of the HTTP protocol, and what all workers share.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::LoadConfig;
use crate::connections::{note_pid, ConnectionEnd, KeepAliveConnection, LineConnection};
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

/// How long a connection still open at the end of a run is watched for a
/// close by the server that no request has seen yet.
pub(crate) const END_CHECK: Duration = Duration::from_millis(20);

/// What one worker returns at the end of the run.
#[derive(Debug, Default)]
pub(crate) struct WorkerOutput {
    pub samples: Vec<Sample>,
    /// The long-lived worker's connection.
    pub line_connection: Option<LineConnection>,
    /// The connections of an HTTP keep-alive worker, in the order opened.
    pub keep_alive: Vec<KeepAliveConnection>,
}

/// Runs worker number `index` until the run is over; returns its samples
/// (and, for a keep-alive worker, how each of its connections ended).
///
/// Each attempt is recorded exactly once and never retried. In keep-alive
/// mode the connection is kept only after a successful, reusable response;
/// after any failure the next attempt opens a new connection.
pub(crate) async fn worker(shared: &Shared, index: usize) -> WorkerOutput {
    let config = &shared.config;
    let keep_alive = config.mode.keep_alive_for(index);
    let host = config
        .host
        .clone()
        .unwrap_or_else(|| config.addr.to_string());
    let request = http::request_bytes(&config.path, &host, !keep_alive);
    let mut out = WorkerOutput::default();
    let mut kept: Option<Conn> = None;
    // The keep-alive connection in use, while it is (its record).
    let mut current: Option<KeepAliveConnection> = None;
    while shared.claim() {
        let start = Instant::now();
        let existing = kept.take();
        let fresh_connection = existing.is_none();
        let mut opened = false;
        let attempt = async {
            let mut conn = match existing {
                Some(conn) => conn,
                None => {
                    let conn = Conn::connect(config.addr, config.connect_timeout).await?;
                    opened = true;
                    conn
                }
            };
            let response = conn.exchange(&request).await?;
            Ok::<_, Failure>((response, conn))
        };
        let result = tokio::time::timeout(config.request_timeout, attempt).await;
        let latency = start.elapsed();
        if keep_alive && opened {
            current = Some(KeepAliveConnection {
                worker: index,
                opened_at: start.duration_since(shared.started),
                responses: 0,
                end: ConnectionEnd::Kept,
                pids: Vec::new(),
            });
        }
        // How the connection in use ended, if it did.
        let mut ended = None;
        let (outcome, pid, generation) = match result {
            Err(_) => {
                let detail = format!("no complete response within {:?}", config.request_timeout);
                ended = Some(ConnectionEnd::DroppedAfterFailure);
                (
                    Outcome::Failure(Failure::new(FailureKind::Timeout, detail)),
                    None,
                    None,
                )
            }
            Ok(Err(failure)) => {
                ended = Some(match failure.kind {
                    FailureKind::Eof | FailureKind::Reset => ConnectionEnd::ClosedUnannounced,
                    _ => ConnectionEnd::DroppedAfterFailure,
                });
                (Outcome::Failure(failure), None, None)
            }
            Ok(Ok((response, conn))) => {
                if let Some(record) = &mut current {
                    record.responses += 1;
                    note_pid(&mut record.pids, response.pid.as_ref());
                }
                let success = (200..300).contains(&response.status);
                if !response.reusable {
                    ended = Some(ConnectionEnd::ClosedAnnounced);
                } else if !success {
                    ended = Some(ConnectionEnd::DroppedAfterFailure);
                } else if keep_alive {
                    kept = Some(conn);
                }
                let outcome = if success {
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
        if let Some(end) = ended {
            // `current` is `None` when no connection was opened (connect
            // failed) or in close mode.
            if let Some(mut record) = current.take() {
                record.end = end;
                out.keep_alive.push(record);
            }
        }
        let sample = Sample {
            worker: index,
            start: start.duration_since(shared.started),
            latency,
            outcome,
            fresh_connection,
            pid,
            generation,
        };
        out.samples.push(shared.finish(sample));
    }
    if let Some(mut record) = current.take() {
        let closed = match &kept {
            Some(conn) => conn.peer_closed(END_CHECK).await.is_some(),
            None => false,
        };
        if closed {
            record.end = ConnectionEnd::ClosedUnannounced;
        }
        out.keep_alive.push(record);
    }
    out
}
