//! What a connection needs to be detached from hyper without losing a byte:
//! an IO that reads given bytes first ([`Io`]) and tells whether a write is
//! pending, and a response body that tells when a response is over
//! ([`Tracked`]).
//!
//! hyper has no "detach while idle" call. What it has is
//! `poll_without_shutdown` + `into_parts`, which hand back the IO and the
//! bytes it read but did not process once the connection is done, and
//! `graceful_shutdown`, which on an idle HTTP/1.1 connection makes it done at
//! once. Two things must hold when we call it:
//!
//! - no response is under way: a response whose head is not yet written would
//!   get `Connection: close` (keep-alive is off by then), and one whose body
//!   is not yet written would be cut short. [`Watch::in_flight`] counts
//!   requests from the service call until hyper drops the response body,
//!   which it does after writing its last byte into its buffer;
//! - that buffer is flushed: `into_parts` does not return it. hyper flushes in
//!   the same poll in which it finishes a body; if the socket was full, the
//!   flush returned `Pending` through [`Io`], which then says so until a later
//!   write goes through.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A connection's progress, as seen from outside hyper.
#[derive(Default)]
pub(super) struct Watch {
    in_flight: AtomicUsize,
    /// Requests that reached the service, ever.
    asked: AtomicUsize,
    write_pending: AtomicBool,
    /// Whether the connection goes to the successor once idle.
    pub(super) migrating: AtomicBool,
    changed: tokio::sync::Notify,
}

impl Watch {
    /// No response under way and nothing left unwritten.
    pub(super) fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && !self.write_pending.load(Ordering::Acquire)
    }

    /// Resolves after the next change (a permit is kept if nobody waits).
    pub(super) fn changed(&self) -> impl Future<Output = ()> + '_ {
        self.changed.notified()
    }

    /// A request has reached the service: the guard ends it.
    pub(super) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.asked.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }

    /// Resolves once a request has reached the service.
    pub(super) async fn wait_asked(&self) {
        loop {
            let changed = self.changed();
            if self.asked.load(Ordering::Acquire) > 0 {
                return;
            }
            changed.await;
        }
    }

    fn set_write_pending(&self, pending: bool) {
        if self.write_pending.swap(pending, Ordering::AcqRel) != pending && !pending {
            self.changed.notify_one();
        }
    }
}

/// One request under way, from the service call until its response body is
/// dropped (or the handler failed).
pub(super) struct InFlight(Arc<Watch>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

/// A stream (TCP, or TLS over TCP) that first yields `prefix` (bytes a
/// previous owner read), and reports pending writes to its [`Watch`].
pub(super) struct Io<S = TcpStream> {
    prefix: Vec<u8>,
    at: usize,
    stream: S,
    watch: Arc<Watch>,
}

/// What a connection can be served on.
pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for S {}

impl<S: Stream> Io<S> {
    pub(super) fn new(prefix: Vec<u8>, stream: S, watch: Arc<Watch>) -> Io<S> {
        Io {
            prefix,
            at: 0,
            stream,
            watch,
        }
    }

    /// The same IO, reporting to `watch` from now on.
    pub(super) fn new_watched(io: Io<S>, watch: Arc<Watch>) -> Io<S> {
        Io { watch, ..io }
    }

    /// The prefix bytes not yet read, and the stream.
    pub(super) fn into_parts(mut self) -> (Vec<u8>, S) {
        let rest = self.prefix.split_off(self.at);
        (rest, self.stream)
    }

    /// Reads more into the prefix (for looking at the first bytes before
    /// choosing a protocol); `Ok(0)` at end of stream.
    pub(super) async fn fill(&mut self) -> io::Result<usize> {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 64];
        let n = self.stream.read(&mut chunk).await?;
        self.prefix.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The prefix bytes not yet read.
    pub(super) fn pending_prefix(&self) -> &[u8] {
        &self.prefix[self.at..]
    }

    fn track<T>(&self, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.watch.set_write_pending(poll.is_pending());
        poll
    }
}

impl<S: Stream> AsyncRead for Io<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.at);
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl<S: Stream> AsyncWrite for Io<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.track(poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.track(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.stream).poll_flush(cx);
        self.track(poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A response body that ends its request's [`InFlight`] when hyper drops it.
pub(super) struct Tracked<B> {
    body: Pin<Box<B>>,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub(super) fn new(body: B, in_flight: InFlight) -> Tracked<B> {
        Tracked {
            body: Box::pin(body),
            _in_flight: in_flight,
        }
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.body.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
