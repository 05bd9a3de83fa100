//! HTTP serving whose upgrade never fails a client (feature `hyper`).
//!
//! [`serve`] accepts on a listener until the drain order, tracks every
//! connection, and ends them the way clients expect:
//!
//! - **HTTP/1.1 keep-alive, upgraded to a successor that migrates**: each
//!   connection moves to the successor between two requests (a request in
//!   flight first finishes here), with the bytes hyper had read ahead; the
//!   client keeps its TCP connection and never sees `Connection: close`. The
//!   successor's `serve` on the same listener name serves it on. See
//!   [`crate::migration`].
//! - **HTTP/1.1 otherwise** (a stop, migration off, a connection the successor
//!   did not take): an idle connection is *not* closed — closing it could
//!   cross a request the client is sending at that moment, which the client
//!   then sees fail (the nginx and tableflip failure). Instead the next
//!   response on it carries `Connection: close`, and the connection closes
//!   after it.
//! - **HTTP/2**: GOAWAY; streams in flight finish. Its connections do not
//!   migrate: HPACK tables and stream states live inside hyper and cannot be
//!   moved to another process.
//! - At the deadline, connections still open are closed and counted.
//! - **HTTPS** ([`serve_tls`], feature `tls`): the same, after a rustls
//!   handshake; HTTP/2 is chosen by ALPN; nothing migrates. See [`tls`].
//!
//! The handler is an async closure (below) or any tower `Service`, such as an
//! axum `Router` — see [`HttpService`]:
//!
//! ```ignore
//! let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello\n" }));
//! let server = tokio::spawn(http::serve(listener, &handover, app));
//! ```
//!
//! Unlike axum's own `serve(…).with_graceful_shutdown(…)`, which closes idle
//! keep-alive connections when the shutdown begins (racing a request the
//! client may be sending on one), a drain here never closes a connection
//! between two requests without telling the client first.
//!
//! ```no_run
//! use handover::{http, Handover};
//! use hyper::{Request, Response};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let handover = Handover::new()?;
//! let listener = handover.tokio_tcp_listener("web", "127.0.0.1:8080")?;
//! let server = tokio::spawn({
//!     let handover = handover.clone();
//!     async move {
//!         http::serve(listener, &handover, |_req: Request<hyper::body::Incoming>| async {
//!             Ok::<_, std::convert::Infallible>(Response::new(String::from("hello\n")))
//!         })
//!         .await
//!     }
//! });
//! handover.ready()?;
//! let summary = server.await?; // returns when drained
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::migration::Arrivals;
use crate::{DrainReason, Handover};

mod connection;
mod io;
mod service;
#[cfg(feature = "tls")]
pub mod tls;

use service::{BoxError, Handler};
pub use service::{Closure, HttpService, Tower};
#[cfg(feature = "tls")]
pub use tls::serve_tls;

/// How a [`serve`] call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Why it drained.
    pub reason: DrainReason,
    /// Connections still open at the deadline, closed then (0 in a clean drain).
    pub closed_at_deadline: usize,
}

/// Serves HTTP/1.1 and HTTP/2 on `listener` with `service` (an async closure
/// or a tower `Service`: [`HttpService`]) until `handover`
/// drains; resolves when every connection has ended, moved to the successor,
/// or been closed at the deadline, and the successor's probation is over. If
/// the successor dies on probation, it accepts on `listener` again (see
/// [`crate::probation`]).
///
/// Also serves the connections migrated to this process for the listener's
/// name (see [`Handover::name_of`]): it asks for them when called, so call it
/// (spawning the future is enough) before [`Handover::ready`].
pub fn serve<S, M>(
    listener: TcpListener,
    handover: &Handover,
    service: S,
) -> impl Future<Output = Summary> + Send + 'static
where
    S: HttpService<M>,
{
    let name = handover.name_of(&listener);
    // Now, not at the first poll: before ready(), so none is refused.
    let arrivals = name.as_deref().map(|name| handover.migrated(name));
    let shared = Arc::new(connection::Shared {
        handler: service.into_handler(),
        drain: handover.drain_signal(),
        handover: handover.clone(),
        listener: name,
        transport: connection::Transport::Plain,
    });
    run(listener, shared, arrivals)
}

async fn run<H: Handler>(
    listener: TcpListener,
    shared: Arc<connection::Shared<H>>,
    mut arrivals: Option<Arrivals>,
) -> Summary {
    let mut connections = JoinSet::new();
    loop {
        let summary = accept_then_drain(&listener, &shared, &mut arrivals, &mut connections).await;
        // The listener is kept (not accepting) while the successor is on
        // probation; if it dies, this process accepts on it again.
        match shared.handover.after_drain_async().await {
            crate::AfterDrain::Resume { successor, how } => {
                tracing::warn!(successor, %how, "the successor died on probation; accepting again");
            }
            _ => return summary,
        }
    }
}

/// Accepts until the drain order, then drains: one round of [`serve`].
async fn accept_then_drain<H: Handler>(
    listener: &TcpListener,
    shared: &Arc<connection::Shared<H>>,
    arrivals: &mut Option<Arrivals>,
    connections: &mut JoinSet<()>,
) -> Summary {
    let drain = shared.drain.clone();
    let tracker = shared.handover.tracker();
    let order = loop {
        tokio::select! {
            biased;
            order = drain.recv() => break order,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection::accepted(Arc::clone(shared), stream, tracker.track()));
                }
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            arrived = next_arrival(arrivals), if arrivals.is_some() => match arrived {
                Some(migrant) => {
                    if let Some(task) = migrated(shared, migrant, &tracker) {
                        connections.spawn(task);
                    }
                }
                None => *arrivals = None,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    };
    // Connections that arrived but were not started yet are served (and
    // handed on, or drained) like the others.
    while let Some(migrant) = arrivals.as_ref().and_then(Arrivals::try_next) {
        if let Some(task) = migrated(shared, migrant, &tracker) {
            connections.spawn(task);
        }
    }
    tracing::info!(reason = %order.reason, active = tracker.active(), "stopped accepting; draining");
    let left = loop {
        let deadline = drain.get().map_or(order.deadline, |o| o.deadline);
        tokio::select! {
            left = tracker.idle(deadline) => break left,
            () = drain.shortened(deadline) => continue,
            // The successor died on probation: accept again at once; the
            // connections told to close go on closing meanwhile.
            () = drain.withdrawn() => return Summary { reason: order.reason, closed_at_deadline: 0 },
        }
    };
    if left > 0 {
        tracing::warn!(
            connections = left,
            "drain deadline reached; closing the remaining connections"
        );
        connections.abort_all();
    } else {
        tracing::info!("drained: no connection left");
    }
    while connections.join_next().await.is_some() {}
    Summary {
        reason: order.reason,
        closed_at_deadline: left,
    }
}

async fn next_arrival(arrivals: &Option<Arrivals>) -> Option<crate::migration::Migrant> {
    match arrivals {
        Some(arrivals) => arrivals.recv().await,
        None => std::future::pending().await,
    }
}

/// The task serving a migrated connection, unread bytes first.
fn migrated<H: Handler>(
    shared: &Arc<connection::Shared<H>>,
    migrant: crate::migration::Migrant,
    tracker: &crate::ConnectionTracker,
) -> Option<impl Future<Output = ()> + Send + 'static> {
    let stream = migrant
        .stream
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpStream::from_std(migrant.stream));
    match stream {
        Ok(stream) => Some(connection::serve(
            Arc::clone(shared),
            stream,
            migrant.unread,
            false,
            tracker.track(),
        )),
        Err(error) => {
            tracing::warn!(%error, "a migrated connection cannot be served");
            None
        }
    }
}

/// The handler's error, as a concrete type: hyper's bounds on a boxed error type
/// do not resolve inside the spawned connection task.
struct HandlerError(BoxError);
