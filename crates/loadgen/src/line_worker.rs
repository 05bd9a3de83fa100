//! Workers of the line protocols: [`Protocol::Tcp`] (one connection per
//! attempt) and [`Protocol::LongLived`] (one connection per worker, an
//! exchange every interval, reopened after a break).
//!
//! An exchange writes [`LoadConfig::lines_per_exchange`] lines at once and
//! reads as many reply lines, checking each as it arrives (with
//! [`LoadConfig::echo_check`], against the numbered line it answers), so an
//! out-of-order echo fails at once instead of waiting for the timeout.
//!
//! [`Protocol::Tcp`]: crate::Protocol::Tcp
//! [`Protocol::LongLived`]: crate::Protocol::LongLived
//! [`LoadConfig::lines_per_exchange`]: crate::LoadConfig::lines_per_exchange
//! [`LoadConfig::echo_check`]: crate::LoadConfig::echo_check

use std::time::Instant;

use crate::connections::{note_pid, LineConnection};
use crate::echo::{self, Numbering};
use crate::identity;
use crate::line::LineConn;
use crate::outcome::{Failure, FailureKind, Outcome, Sample};
use crate::worker::{Shared, WorkerOutput, END_CHECK};

/// Status recorded in [`Outcome::Success`] by the line protocols, which have
/// no status code.
pub const LINE_STATUS: u16 = 0;

/// The lines of one exchange: each as sent (without `\n`), and the bytes
/// written.
fn batch(shared: &Shared, numbering: &mut Numbering) -> (Vec<String>, Vec<u8>) {
    let config = &shared.config;
    let n = config.lines_per_exchange.max(1);
    if config.echo_check {
        let lines: Vec<String> = (0..n).map(|_| numbering.next_line()).collect();
        let mut bytes = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for line in &lines {
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
        }
        (lines, bytes)
    } else {
        // The message as configured, verbatim; the line it holds, for telling
        // an echo's pid prefix.
        let text = String::from_utf8_lossy(&config.message);
        let line = text.trim_end_matches(['\r', '\n']).to_owned();
        (vec![line; n], config.message.repeat(n))
    }
}

/// Runs one exchange on `existing` (or a new connection) within the request
/// timeout, adding what happened to `record`; returns the sample and the
/// connection if it may be used again.
async fn attempt(
    shared: &Shared,
    index: usize,
    existing: Option<LineConn>,
    numbering: &mut Numbering,
    record: &mut LineConnection,
) -> (Sample, Option<LineConn>) {
    let config = &shared.config;
    let start = Instant::now();
    let fresh_connection = existing.is_none();
    let (lines, bytes) = batch(shared, numbering);
    // Updated by the exchange as it goes, so that they hold even when it
    // times out halfway.
    let (mut opened, mut sent, mut verified) = (false, 0, 0);
    let mut pids = Vec::new();
    let exchange = async {
        let mut conn = match existing {
            Some(conn) => conn,
            None => {
                let conn = LineConn::connect(config.addr, config.connect_timeout).await?;
                opened = true;
                conn
            }
        };
        conn.send(&bytes).await?;
        sent = bytes.len() as u64;
        let mut generation = None;
        for (k, line) in lines.iter().enumerate() {
            let reply = conn.read_line().await.map_err(|failure| {
                if lines.len() == 1 {
                    failure
                } else {
                    let detail = format!(
                        "reply line {} of {}: {}",
                        k + 1,
                        lines.len(),
                        failure.detail
                    );
                    Failure::new(failure.kind, detail)
                }
            })?;
            let pid = if config.echo_check {
                let pid = echo::verify(line, &reply)?;
                verified += line.len() as u64 + 1;
                Some(pid)
            } else {
                identity::line_pid(&reply, line)
            };
            pids.push(pid);
            generation = identity::scan(reply.as_bytes(), "generation");
        }
        conn.expect_no_more(lines.len())?;
        Ok::<_, Failure>((generation, conn))
    };
    let result = tokio::time::timeout(config.request_timeout, exchange).await;
    let latency = start.elapsed();
    let had_connection = opened || !fresh_connection;
    record.exchanges += 1;
    record.opened += u64::from(opened);
    record.bytes_sent += sent;
    record.bytes_verified += verified;
    for pid in &pids {
        note_pid(&mut record.pids, pid.as_ref());
    }
    let (outcome, conn, generation) = match result {
        Err(_) => {
            let detail = match lines.len() {
                1 => format!("no reply line within {:?}", config.request_timeout),
                n => format!(
                    "{} of {n} reply lines within {:?}",
                    pids.len(),
                    config.request_timeout
                ),
            };
            let failure = Failure::new(FailureKind::Timeout, detail);
            (Outcome::Failure(failure), None, None)
        }
        Ok(Err(failure)) => (Outcome::Failure(failure), None, None),
        Ok(Ok((generation, conn))) => (
            Outcome::Success {
                status: LINE_STATUS,
            },
            Some(conn),
            generation,
        ),
    };
    if let Outcome::Failure(failure) = &outcome {
        record.failures += 1;
        if had_connection && matches!(failure.kind, FailureKind::Eof | FailureKind::Reset) {
            record.closed_by_server = true;
        }
    }
    let sample = Sample {
        worker: index,
        start: start.duration_since(shared.started),
        latency,
        outcome,
        fresh_connection,
        // The last answer's: the process serving the connection now.
        pid: conn.as_ref().and_then(|_| pids.last().cloned().flatten()),
        generation,
    };
    (shared.finish(sample), conn)
}

/// [`Protocol::Tcp`](crate::Protocol::Tcp): every attempt connects, writes
/// the message, reads one line and closes.
pub(crate) async fn tcp_worker(shared: &Shared, index: usize) -> WorkerOutput {
    let mut out = WorkerOutput::default();
    let mut numbering = Numbering::new(index, &shared.config.message);
    // Each attempt is its own connection: there is nothing to follow.
    let mut unused = LineConnection::new(index);
    while shared.claim() {
        let (sample, _closed_on_drop) =
            attempt(shared, index, None, &mut numbering, &mut unused).await;
        out.samples.push(sample);
    }
    out
}

/// [`Protocol::LongLived`](crate::Protocol::LongLived): one connection kept
/// for the whole run, an exchange every interval (the first at once). After a
/// failure the connection is dropped and the next exchange opens a new one.
/// At the end the connection still open is watched briefly for a close by
/// the server that no exchange has seen yet.
pub(crate) async fn long_lived_worker(shared: &Shared, index: usize) -> WorkerOutput {
    let interval = shared.config.interval;
    let mut out = WorkerOutput::default();
    let mut numbering = Numbering::new(index, &shared.config.message);
    let mut record = LineConnection::new(index);
    let mut conn = None;
    let mut next = Instant::now();
    while shared.sleep_until(next).await && shared.claim() {
        let (sample, kept) = attempt(shared, index, conn.take(), &mut numbering, &mut record).await;
        out.samples.push(sample);
        conn = kept;
        // If an exchange took longer than the interval, the next one starts
        // at once rather than in a burst of catch-up exchanges.
        next = (next + interval).max(Instant::now());
    }
    if let Some(conn) = &conn {
        if conn.peer_closed(END_CHECK).await.is_some() {
            record.closed_by_server = true;
            record.closed_after_last_exchange = true;
        }
    }
    out.line_connection = Some(record);
    out
}
