//! Workers of the line protocols: [`Protocol::Tcp`] (one connection per
//! attempt) and [`Protocol::LongLived`] (one connection per worker, an
//! exchange every interval, reopened after a break).
//!
//! [`Protocol::Tcp`]: crate::Protocol::Tcp
//! [`Protocol::LongLived`]: crate::Protocol::LongLived

use std::time::Instant;

use crate::identity;
use crate::line::LineConn;
use crate::outcome::{Failure, FailureKind, Outcome, Sample};
use crate::worker::Shared;

/// Status recorded in [`Outcome::Success`] by the line protocols, which have
/// no status code.
pub const LINE_STATUS: u16 = 0;

/// Runs one attempt on `existing` (or a new connection) within the request
/// timeout; returns the sample and the connection if it may be used again.
async fn attempt(
    shared: &Shared,
    index: usize,
    existing: Option<LineConn>,
) -> (Sample, Option<LineConn>) {
    let config = &shared.config;
    let start = Instant::now();
    let fresh_connection = existing.is_none();
    let exchange = async {
        let mut conn = match existing {
            Some(conn) => conn,
            None => LineConn::connect(config.addr, config.connect_timeout).await?,
        };
        let line = conn.exchange(&config.message).await?;
        Ok::<_, Failure>((line, conn))
    };
    let result = tokio::time::timeout(config.request_timeout, exchange).await;
    let latency = start.elapsed();
    let (outcome, conn, pid, generation) = match result {
        Err(_) => {
            let detail = format!("no reply line within {:?}", config.request_timeout);
            let failure = Failure::new(FailureKind::Timeout, detail);
            (Outcome::Failure(failure), None, None, None)
        }
        Ok(Err(failure)) => (Outcome::Failure(failure), None, None, None),
        Ok(Ok((line, conn))) => (
            Outcome::Success {
                status: LINE_STATUS,
            },
            Some(conn),
            identity::scan(line.as_bytes(), "pid"),
            identity::scan(line.as_bytes(), "generation"),
        ),
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
    (shared.finish(sample), conn)
}

/// [`Protocol::Tcp`](crate::Protocol::Tcp): every attempt connects, writes
/// the message, reads one line and closes.
pub(crate) async fn tcp_worker(shared: &Shared, index: usize) -> Vec<Sample> {
    let mut samples = Vec::new();
    while shared.claim() {
        let (sample, _closed_on_drop) = attempt(shared, index, None).await;
        samples.push(sample);
    }
    samples
}

/// [`Protocol::LongLived`](crate::Protocol::LongLived): one connection kept
/// for the whole run, an exchange every interval (the first at once). After a
/// failure the connection is dropped and the next exchange opens a new one.
pub(crate) async fn long_lived_worker(shared: &Shared, index: usize) -> Vec<Sample> {
    let interval = shared.config.interval;
    let mut samples = Vec::new();
    let mut conn = None;
    let mut next = Instant::now();
    while shared.sleep_until(next).await && shared.claim() {
        let (sample, kept) = attempt(shared, index, conn.take()).await;
        samples.push(sample);
        conn = kept;
        // If an exchange took longer than the interval, the next one starts
        // at once rather than in a burst of catch-up exchanges.
        next = (next + interval).max(Instant::now());
    }
    samples
}
