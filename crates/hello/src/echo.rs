//! The line-echo listener (`--echo [NAME=]ADDR`): each line received is
//! answered with `<pid> <line>`. Its connections migrate to the next version
//! at line boundaries; a partial line already read travels as unread bytes,
//! so a client's connection lives through every upgrade.

use std::future::Future;
use std::time::Duration;

use handover::migration::{Arrivals, Migrant};
use handover::{AfterDrain, DrainReason, Handover};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Longest line kept while waiting for its end; a longer one ends the
/// connection.
const MAX_LINE: usize = 16 * 1024;

/// Serves `listener` (named `name`) until the drain order, then hands each
/// connection on (or keeps serving it until the drain deadline). Asks for
/// migrated connections when called: call it before `ready()`.
pub fn serve(
    listener: TcpListener,
    handover: &Handover,
    name: &str,
) -> impl Future<Output = ()> + Send + 'static {
    let arrivals = handover.migrated(name);
    let (handover, name) = (handover.clone(), name.to_owned());
    async move {
        let drain = handover.drain_signal();
        let mut connections = JoinSet::new();
        let mut open = true;
        loop {
            let order = loop {
                tokio::select! {
                    biased;
                    order = drain.recv() => break order,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            connections.spawn(connection(handover.clone(), name.clone(), stream, Vec::new()));
                        }
                        Err(error) => {
                            tracing::warn!(%error, "echo: accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    },
                    arrived = arrivals.recv(), if open => match arrived {
                        Some(migrant) => start_migrated(&mut connections, &handover, migrant),
                        None => open = false,
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            };
            sweep(&arrivals, &mut connections, &handover);
            let deadline = tokio::time::Instant::from_std(order.deadline);
            let all_done = async { while connections.join_next().await.is_some() {} };
            if tokio::time::timeout_at(deadline, all_done).await.is_err() {
                tracing::warn!(listener = %name, "echo: drain deadline; closing what is left");
            }
            // The listener is kept while the successor is on probation: if it
            // dies, accept again.
            if handover.after_drain_async().await == AfterDrain::Exit {
                break;
            }
        }
    }
}

/// Connections that arrived but were not started are served (and handed on).
fn sweep(arrivals: &Arrivals, connections: &mut JoinSet<()>, handover: &Handover) {
    while let Some(migrant) = arrivals.try_next() {
        start_migrated(connections, handover, migrant);
    }
}

fn start_migrated(connections: &mut JoinSet<()>, handover: &Handover, migrant: Migrant) {
    let stream = migrant
        .stream
        .set_nonblocking(true)
        .and_then(|()| TcpStream::from_std(migrant.stream));
    match stream {
        Ok(stream) => {
            connections.spawn(connection(
                handover.clone(),
                migrant.listener,
                stream,
                migrant.unread,
            ));
        }
        Err(error) => tracing::warn!(%error, "echo: a migrated connection is unusable"),
    }
}

/// One connection: answers every whole line, and once the drain order came,
/// migrates at the next line boundary (if the successor takes it).
async fn connection(handover: Handover, listener: String, mut stream: TcpStream, unread: Vec<u8>) {
    let _guard = handover.tracker().track();
    let drain = handover.drain_signal();
    let pid = std::process::id();
    let mut buf = unread;
    let mut may_migrate = true;
    let mut heard = false;
    loop {
        if answer_lines(&mut stream, &mut buf, pid).await.is_err() {
            return;
        }
        let upgraded = matches!(
            drain.get().map(|o| o.reason),
            Some(DrainReason::Upgraded { .. })
        );
        if upgraded && may_migrate {
            if let Some(migration) = handover.migration().filter(|m| m.accepts(&listener)) {
                let Ok(std_stream) = stream.into_std() else {
                    return;
                };
                let migrant = Migrant {
                    listener: listener.clone(),
                    stream: std_stream,
                    unread: std::mem::take(&mut buf),
                    state: Vec::new(),
                };
                match migration.hand_over_async(migrant).await {
                    Ok(()) => return,
                    Err(kept) => {
                        tracing::debug!(why = %kept.why, "echo: connection kept");
                        buf = kept.migrant.unread;
                        may_migrate = false;
                        match TcpStream::from_std(kept.migrant.stream) {
                            Ok(back) => stream = back,
                            Err(_) => return,
                        }
                        continue;
                    }
                }
            }
        }
        if buf.len() > MAX_LINE {
            return;
        }
        tokio::select! {
            read = stream.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            // Once: the drain order wakes an idle connection to migrate it.
            _ = drain.recv(), if !heard => heard = true,
        }
    }
}

/// Answers every whole line in `buf` with `<pid> <line>`; leaves the partial
/// rest in `buf`.
async fn answer_lines(stream: &mut TcpStream, buf: &mut Vec<u8>, pid: u32) -> std::io::Result<()> {
    let Some(last) = buf.iter().rposition(|&b| b == b'\n') else {
        return Ok(());
    };
    let mut reply = Vec::with_capacity(last + 16);
    for line in buf[..last].split(|&b| b == b'\n') {
        reply.extend_from_slice(format!("{pid} ").as_bytes());
        reply.extend_from_slice(line);
        reply.push(b'\n');
    }
    buf.drain(..=last);
    stream.write_all(&reply).await
}
