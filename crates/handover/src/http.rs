//! HTTP serving whose drain never fails a client (feature `hyper`).
//!
//! [`serve`] accepts on a listener until the drain order, tracks every
//! connection, and drains them the way clients expect:
//!
//! - **HTTP/1.1 keep-alive**: an idle connection is *not* closed — closing it
//!   could cross a request the client is sending at that moment, which the client
//!   then sees fail (the nginx and tableflip failure). Instead the next response on
//!   it carries `Connection: close`, and the connection closes after it.
//! - **HTTP/2**: GOAWAY; streams in flight finish.
//! - At the deadline, connections still open are closed and counted.
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

use std::error::Error as StdError;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, CONNECTION};
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::{ConnectionGuard, DrainReason, DrainSignal, Handover};

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// How a [`serve`] call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Why it drained.
    pub reason: DrainReason,
    /// Connections still open at the deadline, closed then (0 in a clean drain).
    pub closed_at_deadline: usize,
}

/// Serves HTTP/1.1 and HTTP/2 on `listener` with `handler` until `handover`
/// drains; returns when every connection has ended or the deadline closed it.
pub async fn serve<F, Fut, B, E>(listener: TcpListener, handover: &Handover, handler: F) -> Summary
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    E: Into<BoxError> + 'static,
{
    let drain = handover.drain_signal();
    let tracker = handover.tracker();
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut connections = JoinSet::new();
    let order = loop {
        tokio::select! {
            biased;
            order = drain.recv() => break order,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let guard = tracker.track();
                    let task = connection(builder.clone(), stream, handler.clone(), drain.clone(), guard);
                    connections.spawn(task);
                }
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    };
    drop(listener);
    tracing::info!(reason = %order.reason, active = tracker.active(), "stopped accepting; draining");
    let left = loop {
        let deadline = drain.get().map_or(order.deadline, |o| o.deadline);
        tokio::select! {
            left = tracker.idle(deadline) => break left,
            () = drain.shortened(deadline) => continue,
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

async fn connection<F, Fut, B, E>(
    builder: auto::Builder<TokioExecutor>,
    stream: TcpStream,
    handler: F,
    drain: DrainSignal,
    _guard: ConnectionGuard,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    E: Into<BoxError> + 'static,
{
    // HTTP/2 is known from the first request; the drain may come before it.
    let http2 = Arc::new(Http2Seen::default());
    let service = {
        let (drain, http2) = (drain.clone(), Arc::clone(&http2));
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let http1 = request.version() < Version::HTTP_2;
            if !http1 {
                http2.mark();
            }
            let response = handler(request);
            let drain = drain.clone();
            async move {
                let mut response = response.await.map_err(|e| HandlerError(e.into()))?;
                // Decided when the response is ready, so a request that was in
                // flight when the drain began also closes its connection.
                if http1 && drain.is_draining() {
                    response
                        .headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, HandlerError>(response)
            }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = async { drain.recv().await; http2.wait().await } => {
            // GOAWAY: streams in flight finish, no new one starts.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// Whether a connection turned out to be HTTP/2, as something to wait for.
#[derive(Default)]
struct Http2Seen {
    seen: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Http2Seen {
    fn mark(&self) {
        if !self.seen.swap(true, Ordering::Relaxed) {
            // notify_one keeps a permit if nobody waits yet.
            self.notify.notify_one();
        }
    }

    async fn wait(&self) {
        if !self.seen.load(Ordering::Relaxed) {
            self.notify.notified().await;
        }
    }
}

/// The handler's error, as a concrete type: hyper's bounds on a boxed error type
/// do not resolve inside the spawned connection task.
#[derive(Debug)]
struct HandlerError(BoxError);

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl StdError for HandlerError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}
