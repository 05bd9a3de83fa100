//! One connection of [`super::serve`]: HTTP/2 or HTTP/1.1 (told by the
//! client's first bytes), served until it ends, drained, or — HTTP/1.1 after
//! an upgrade — detached between two requests and handed to the successor.
//!
//! | drain reason | HTTP/1.1, migration available for the listener | HTTP/1.1, otherwise | HTTP/2 |
//! |---|---|---|---|
//! | upgraded | once idle (a response in flight first finishes, keep-alive intact): detached with the bytes hyper read ahead, handed over; if kept, served on as in the next column | the next response carries `Connection: close` | GOAWAY; streams in flight finish |
//! | stop, exit | — | the next response carries `Connection: close` | GOAWAY |
//!
//! Over TLS ([`Transport::Tls`]) HTTP/1.1 is always in the "otherwise"
//! column (a TLS session cannot leave the process), and HTTP/2 is chosen by
//! ALPN rather than by the preface.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION};
use hyper::server::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::io::{Io, Stream, Tracked, Watch};
use super::service::Handler;
use super::HandlerError;
use crate::migration::Migrant;
use crate::{ConnectionGuard, DrainReason, DrainSignal, Handover};

/// The HTTP/2 connection preface a client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What every connection of one [`super::serve`] call shares.
pub(super) struct Shared<F> {
    pub(super) handler: F,
    pub(super) drain: DrainSignal,
    pub(super) handover: Handover,
    /// The listener's name, if it has one: connections migrate under it.
    pub(super) listener: Option<String>,
    /// What an accepted connection speaks first.
    pub(super) transport: Transport,
}

/// Plain TCP, or TLS first.
pub(super) enum Transport {
    /// HTTP straight on TCP: HTTP/2 told by its preface; HTTP/1.1 may migrate.
    Plain,
    /// A TLS handshake first; HTTP/2 told by ALPN; nothing migrates (the TLS
    /// session lives in this process: without kTLS it cannot be handed on).
    #[cfg(feature = "tls")]
    Tls(tokio_rustls::TlsAcceptor),
}

/// Serves a connection this process accepted.
pub(super) async fn accepted<H: Handler>(
    shared: Arc<Shared<H>>,
    stream: TcpStream,
    guard: ConnectionGuard,
) {
    match &shared.transport {
        Transport::Plain => serve(Arc::clone(&shared), stream, Vec::new(), true, guard).await,
        #[cfg(feature = "tls")]
        Transport::Tls(acceptor) => {
            // The guard is held from the accept on: a handshake under way
            // when the drain begins completes here, and its first response
            // then carries `Connection: close` (or it gets GOAWAY).
            let acceptor = acceptor.clone();
            let Some((tls, http2)) = super::tls::handshake(&acceptor, stream).await else {
                return;
            };
            let io = Io::new(Vec::new(), tls, Arc::default());
            if http2 {
                serve_http2(&shared, io).await;
            } else {
                serve_http1(&shared, io, false).await;
            }
            drop(guard);
        }
    }
}

impl<F> Shared<F> {
    /// Whether a connection that may migrate should, now: the drain is for a
    /// successor that takes this listener's connections.
    fn migration_wanted(&self) -> bool {
        let upgraded = matches!(
            self.drain.get().map(|o| o.reason),
            Some(DrainReason::Upgraded { .. })
        );
        upgraded
            && self.listener.as_deref().is_some_and(|name| {
                self.handover
                    .migration()
                    .is_some_and(|migration| migration.accepts(name))
            })
    }
}

/// Serves one connection: `unread` first (bytes a previous process read),
/// then the stream. `fresh`: accepted here, so it may be HTTP/2.
pub(super) async fn serve<H: Handler>(
    shared: Arc<Shared<H>>,
    stream: TcpStream,
    unread: Vec<u8>,
    fresh: bool,
    _guard: ConnectionGuard,
) {
    let mut io = Io::new(unread, stream, Arc::default());
    if fresh {
        match is_http2(&mut io).await {
            Some(true) => return serve_http2(&shared, io).await,
            Some(false) => {}
            None => return, // closed or failed before a request
        }
    }
    let mut may_migrate = true;
    loop {
        let Some((stream, unread)) = serve_http1(&shared, io, may_migrate).await else {
            return;
        };
        let (Some(name), Some(migration)) = (&shared.listener, shared.handover.migration()) else {
            return; // cannot happen: detached only when migration was wanted
        };
        let migrant = match stream.into_std() {
            Ok(stream) => Migrant {
                listener: name.clone(),
                stream,
                unread,
                state: Vec::new(),
            },
            Err(error) => return tracing::debug!(%error, "connection lost while detaching"),
        };
        match migration.hand_over_async(migrant).await {
            Ok(()) => return,
            Err(kept) => {
                tracing::debug!(why = %kept.why, "connection kept; drained here");
                let Ok(stream) = TcpStream::from_std(kept.migrant.stream) else {
                    return;
                };
                io = Io::new(kept.migrant.unread, stream, Arc::default());
                may_migrate = false;
            }
        }
    }
}

/// Reads until the first bytes tell HTTP/2's preface from anything else;
/// `None` if the connection ends first.
async fn is_http2<S: Stream>(io: &mut Io<S>) -> Option<bool> {
    loop {
        let seen = io.pending_prefix();
        let n = seen.len().min(H2_PREFACE.len());
        if seen[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
        match io.fill().await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn serve_http2<H: Handler, S: Stream>(shared: &Shared<H>, io: Io<S>) {
    let handler = shared.handler.clone();
    // A connection that has not sent a request yet gets its GOAWAY after the
    // first one: a GOAWAY before it would cross it, and a client that does
    // not retry would see that request fail.
    let asked: Arc<Watch> = Arc::default();
    let service = {
        let asked = Arc::clone(&asked);
        hyper::service::service_fn(move |request| {
            drop(asked.begin());
            let response = handler.call(request);
            async move { response.await.map_err(|e| HandlerError(e.into())) }
        })
    };
    let conn =
        http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = async { shared.drain.recv().await; asked.wait_asked().await } => {
            // GOAWAY: streams in flight finish, no new one starts.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "HTTP/2 connection ended with an error");
    }
}

type ResponseFuture<B> =
    Pin<Box<dyn Future<Output = Result<Response<Tracked<B>>, HandlerError>> + Send>>;

/// Serves HTTP/1.1 until the connection ends (`None`), or — if it may migrate
/// and migration is wanted — until it is idle, then detaches it: the stream
/// and the bytes read ahead, in order.
async fn serve_http1<H: Handler, S: Stream>(
    shared: &Arc<Shared<H>>,
    io: Io<S>,
    may_migrate: bool,
) -> Option<(S, Vec<u8>)> {
    let watch: Arc<Watch> = Arc::default();
    let io = Io::new_watched(io, Arc::clone(&watch));
    let service = {
        let (shared, watch) = (Arc::clone(shared), Arc::clone(&watch));
        hyper::service::service_fn(
            move |request: Request<Incoming>| -> ResponseFuture<H::Body> {
                let in_flight = watch.begin();
                let response = shared.handler.call(request);
                let (shared, watch) = (Arc::clone(&shared), Arc::clone(&watch));
                Box::pin(async move {
                    let mut response = response.await.map_err(|e| HandlerError(e.into()))?;
                    // Decided when the response is ready, so that a request in
                    // flight when the drain began also gets it right.
                    if shared.drain.is_draining() {
                        if may_migrate && shared.migration_wanted() {
                            watch.migrating.store(true, Ordering::Release);
                        } else {
                            response
                                .headers_mut()
                                .insert(CONNECTION, HeaderValue::from_static("close"));
                        }
                    }
                    Ok(response.map(|body| Tracked::new(body, in_flight)))
                })
            },
        )
    };
    let mut conn = http1::Builder::new().serve_connection(TokioIo::new(io), service);
    let mut heard = false;
    let mut detaching = false;
    let result = loop {
        tokio::select! {
            result = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break result,
            _ = shared.drain.recv(), if !heard => {
                heard = true;
                if may_migrate && shared.migration_wanted() {
                    watch.migrating.store(true, Ordering::Release);
                }
            }
            () = watch.changed(), if watch.migrating.load(Ordering::Acquire) && !detaching => {}
        }
        if watch.migrating.load(Ordering::Acquire) && !detaching && watch.idle() {
            // Idle and flushed: hyper closes it at once, without shutdown.
            Pin::new(&mut conn).graceful_shutdown();
            detaching = true;
        }
    };
    match result {
        Ok(()) if detaching => {
            let parts = conn.into_parts();
            let (rest, stream) = parts.io.into_inner().into_parts();
            // hyper read `read_buf` before the prefix's rest (the prefix comes
            // first), so it comes first again.
            let mut unread = parts.read_buf.to_vec();
            unread.extend_from_slice(&rest);
            Some((stream, unread))
        }
        Ok(()) => None,
        Err(error) => {
            tracing::debug!(%error, "connection ended with an error");
            None
        }
    }
}

impl std::fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

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
