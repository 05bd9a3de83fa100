//! Serving a rescued client: what it sends next goes to the new child over a
//! fresh connection, and the answer comes back on the client's own connection.
//!
//! HTTP/1.1 ([`http`]): request by request. Each request is relayed whole (a
//! request the client had partly sent when the child let go is completed
//! first); the response head is rewritten to say `Connection: close` when no
//! further request is waiting, so the client opens its next connection to the
//! new child and the supervisor leaves the data path. Requests the client had
//! already pipelined are answered in order first. After the last response the
//! supervisor sends its FIN and reads what is left until the client closes
//! (a "lingering close": closing with unread bytes would reset the connection
//! and could destroy the response in flight). An interim `100 Continue` is
//! passed on; a `101 Switching Protocols` turns the relay into [`tcp`]'s.
//!
//! Raw TCP ([`tcp`]): byte for byte both ways until either side closes.
//!
//! Every wait is bounded: the first byte by the idle timeout, everything else
//! by the drain deadline.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout_at;

use super::http1::{self, Body, Chunked};

/// How a relayed connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The client sent nothing more (it closed, or the idle timeout passed):
    /// closed cleanly.
    Released,
    /// At least one request was answered (or bytes relayed) after the old child
    /// let go.
    Rescued,
    /// It broke before anything was answered (malformed request, the new child
    /// unreachable, the deadline).
    Lost,
}

/// Longest lingering close after the last response.
const LINGER: Duration = Duration::from_secs(2);
const CHUNK: usize = 8 * 1024;

/// The relay's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Until when the client may stay silent before it is closed.
    pub idle_until: Instant,
    /// Until when anything may take.
    pub deadline: Instant,
}

/// Relays HTTP/1.1 requests from `client` to `upstream`.
pub async fn http(client: TcpStream, upstream: SocketAddr, limits: Limits) -> Outcome {
    let mut relay = Http {
        client,
        buf: Vec::new(),
        upstream: None,
        address: upstream,
        limits,
        answered: 0,
    };
    match relay.run().await {
        Ok(outcome) => outcome,
        Err(error) => {
            tracing::debug!(%error, answered = relay.answered, "rescued connection ended");
            if relay.answered > 0 {
                Outcome::Rescued
            } else {
                Outcome::Lost
            }
        }
    }
}

struct Http {
    client: TcpStream,
    /// Bytes from the client not forwarded yet.
    buf: Vec<u8>,
    upstream: Option<Upstream>,
    address: SocketAddr,
    limits: Limits,
    answered: u32,
}

struct Upstream {
    stream: TcpStream,
    /// Bytes from the new child not forwarded yet.
    buf: Vec<u8>,
}

fn malformed(error: http1::Malformed) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the drain deadline passed")
}

/// Reads more from `stream` into `buf` before `until`; `Ok(0)` at its end.
///
/// The bytes land in a buffer on the stack first, never held across an await,
/// so a thousand silent connections cost no buffer each, and `buf` grows only
/// by what actually arrived.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, until: Instant) -> io::Result<usize> {
    loop {
        timeout_at(until.into(), stream.readable())
            .await
            .map_err(|_| timed_out())??;
        let mut bytes = [0u8; CHUNK];
        match stream.try_read(&mut bytes) {
            Ok(n) => {
                buf.extend_from_slice(&bytes[..n]);
                return Ok(n);
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        }
    }
}

async fn send(stream: &mut TcpStream, bytes: &[u8], until: Instant) -> io::Result<()> {
    timeout_at(until.into(), stream.write_all(bytes))
        .await
        .map_err(|_| timed_out())?
}

impl Http {
    async fn run(&mut self) -> io::Result<Outcome> {
        loop {
            let Some(request) = self.request_head().await? else {
                return Ok(if self.answered > 0 {
                    Outcome::Rescued
                } else {
                    Outcome::Released
                });
            };
            let deadline = self.limits.deadline;
            if self.upstream.is_none() {
                let stream = timeout_at(deadline.into(), TcpStream::connect(self.address))
                    .await
                    .map_err(|_| timed_out())??;
                stream.set_nodelay(true)?;
                self.upstream = Some(Upstream {
                    stream,
                    buf: Vec::new(),
                });
            }
            let head: Vec<u8> = self.buf.drain(..request.head_len).collect();
            let up = self.upstream.as_mut().expect("connected above");
            send(&mut up.stream, &head, deadline).await?;
            if request.expects_continue {
                // The client waits for "100 Continue" before it sends the body.
                let response = self.response_head(request.is_head).await?;
                if !response.is_interim() {
                    // Answered without the body: the connection cannot go on.
                    self.respond(response, true).await?;
                    return self.finish().await;
                }
                self.pass_interim(response).await?;
            }
            self.request_body(request.body).await?;
            let response = loop {
                let response = self.response_head(request.is_head).await?;
                if !response.is_interim() {
                    break response;
                }
                self.pass_interim(response).await?;
            };
            let more = !self.buf.is_empty() || self.client_sent_more()?;
            let last = !more || response.closes || response.status == 101;
            if response.status == 101 {
                return self.switch_protocols(response).await;
            }
            self.respond(response, last).await?;
            if last {
                return self.finish().await;
            }
        }
    }

    /// The next request head from the client, or `None` if it closed (or
    /// stayed silent past the idle timeout) before sending one.
    async fn request_head(&mut self) -> io::Result<Option<http1::Request>> {
        loop {
            if self.answered == 0 && http1::starts_a_request(&self.buf) == Some(false) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the bytes are not a request's start: the old child read part of it",
                ));
            }
            if let Some(request) = http1::parse_request(&self.buf).map_err(malformed)? {
                return Ok(Some(request));
            }
            let until = if self.buf.is_empty() {
                self.limits.idle_until.min(self.limits.deadline)
            } else {
                self.limits.deadline
            };
            match fill(&mut self.client, &mut self.buf, until).await {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) => return Err(io::Error::other("the client closed mid-request")),
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::TimedOut && self.buf.is_empty() => {
                    return Ok(None)
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Whatever the client has sent meanwhile, without waiting.
    fn client_sent_more(&mut self) -> io::Result<bool> {
        let mut bytes = [0u8; CHUNK];
        match self.client.try_read(&mut bytes) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.buf.extend_from_slice(&bytes[..n]);
                Ok(true)
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(error) => Err(error),
        }
    }

    async fn request_body(&mut self, body: Body) -> io::Result<()> {
        let deadline = self.limits.deadline;
        let up = self.upstream.as_mut().expect("connected");
        copy_body(
            body,
            &mut self.client,
            &mut self.buf,
            &mut up.stream,
            deadline,
        )
        .await
    }

    async fn response_head(&mut self, to_head: bool) -> io::Result<http1::Response> {
        let deadline = self.limits.deadline;
        let up = self.upstream.as_mut().expect("connected");
        loop {
            if let Some(response) = http1::parse_response(&up.buf, to_head).map_err(malformed)? {
                return Ok(response);
            }
            if fill(&mut up.stream, &mut up.buf, deadline).await? == 0 {
                return Err(io::Error::other("the new child closed before it answered"));
            }
        }
    }

    async fn pass_interim(&mut self, response: http1::Response) -> io::Result<()> {
        let up = self.upstream.as_mut().expect("connected");
        let head: Vec<u8> = up.buf.drain(..response.head_len).collect();
        send(&mut self.client, &head, self.limits.deadline).await
    }

    /// Sends the response to the client, its head saying `Connection: close`
    /// if `last`.
    async fn respond(&mut self, response: http1::Response, last: bool) -> io::Result<()> {
        let deadline = self.limits.deadline;
        let up = self.upstream.as_mut().expect("connected");
        let head: Vec<u8> = up.buf.drain(..response.head_len).collect();
        let head = if last {
            http1::with_connection_close(&head)
        } else {
            head
        };
        send(&mut self.client, &head, deadline).await?;
        copy_body(
            response.body,
            &mut up.stream,
            &mut up.buf,
            &mut self.client,
            deadline,
        )
        .await?;
        self.answered += 1;
        if response.closes {
            self.upstream = None;
        }
        Ok(())
    }

    async fn switch_protocols(&mut self, response: http1::Response) -> io::Result<Outcome> {
        let mut up = self.upstream.take().expect("connected");
        let head: Vec<u8> = up.buf.drain(..response.head_len).collect();
        let deadline = self.limits.deadline;
        send(&mut self.client, &head, deadline).await?;
        send(&mut self.client, &up.buf, deadline).await?;
        send(&mut up.stream, &self.buf, deadline).await?;
        self.answered += 1;
        let _ = timeout_at(
            deadline.into(),
            tokio::io::copy_bidirectional(&mut self.client, &mut up.stream),
        )
        .await;
        Ok(Outcome::Rescued)
    }

    /// The FIN after the last response, then what the client still sends is
    /// read and dropped until it closes.
    async fn finish(&mut self) -> io::Result<Outcome> {
        self.upstream = None;
        let _ = self.client.shutdown().await;
        let until = (Instant::now() + LINGER).min(self.limits.deadline);
        let mut sink = Vec::new();
        while let Ok(n) = fill(&mut self.client, &mut sink, until).await {
            sink.clear();
            if n == 0 {
                break;
            }
        }
        Ok(Outcome::Rescued)
    }
}

/// Copies one message body framed as `body` from `from` (bytes already read
/// first, from `pending`) to `to`; what follows the body stays in `pending`.
async fn copy_body(
    body: Body,
    from: &mut TcpStream,
    pending: &mut Vec<u8>,
    to: &mut TcpStream,
    deadline: Instant,
) -> io::Result<()> {
    let mut chunked = Chunked::default();
    let mut left = match body {
        Body::Empty => return Ok(()),
        Body::Length(n) => n,
        Body::Chunked | Body::UntilClose => u64::MAX,
    };
    loop {
        if !pending.is_empty() {
            let (take, ended) = match body {
                Body::Chunked => match chunked.feed(pending).map_err(malformed)? {
                    Some(end) => (end, true),
                    None => (pending.len(), false),
                },
                Body::Length(_) => {
                    let take = left.min(pending.len() as u64);
                    left -= take;
                    (take as usize, left == 0)
                }
                _ => (pending.len(), false),
            };
            send(to, &pending[..take], deadline).await?;
            pending.drain(..take);
            if ended {
                return Ok(());
            }
        }
        if fill(from, pending, deadline).await? == 0 {
            return if body == Body::UntilClose {
                Ok(())
            } else {
                Err(io::Error::other("closed in the middle of a body"))
            };
        }
    }
}

/// Relays bytes both ways between `client` and a new connection to `upstream`,
/// opened once the client sends something, until either side closes (the other
/// direction then gets [`LINGER`] to finish) or the deadline.
pub async fn tcp(mut client: TcpStream, upstream: SocketAddr, limits: Limits) -> Outcome {
    let mut first = [0u8; 1];
    match timeout_at(limits.deadline.into(), client.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return Outcome::Released,
    }
    let Ok(Ok(mut up)) = timeout_at(limits.deadline.into(), TcpStream::connect(upstream)).await
    else {
        return Outcome::Lost;
    };
    let (mut client_in, mut client_out) = client.split();
    let (mut up_in, mut up_out) = up.split();
    let to_child = async {
        let _ = tokio::io::copy(&mut client_in, &mut up_out).await;
        let _ = up_out.shutdown().await;
    };
    let to_client = async {
        let _ = tokio::io::copy(&mut up_in, &mut client_out).await;
        let _ = client_out.shutdown().await;
    };
    tokio::pin!(to_child, to_client);
    let deadline = limits.deadline;
    let linger = || (Instant::now() + LINGER).min(deadline).into();
    tokio::select! {
        () = &mut to_child => { let _ = timeout_at(linger(), to_client).await; }
        () = &mut to_client => { let _ = timeout_at(linger(), to_child).await; }
        () = tokio::time::sleep_until(deadline.into()) => {}
    }
    Outcome::Rescued
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A connected pair: (the test's client, the server side the relay gets).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    /// A new child that reads `expect` and answers `answer`, once per pair.
    async fn new_child(script: Vec<(&'static str, &'static str)>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            for (expect, answer) in script {
                let mut got = vec![0u8; expect.len()];
                conn.read_exact(&mut got).await.unwrap();
                assert_eq!(String::from_utf8_lossy(&got), expect);
                conn.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        address
    }

    fn limits() -> Limits {
        Limits {
            idle_until: Instant::now() + Duration::from_millis(300),
            deadline: Instant::now() + Duration::from_secs(5),
        }
    }

    async fn until_eof(client: &mut TcpStream) -> String {
        let mut all = Vec::new();
        client.read_to_end(&mut all).await.unwrap();
        String::from_utf8(all).unwrap()
    }

    #[tokio::test]
    async fn the_answer_says_connection_close_and_ends_with_a_fin() {
        let child = new_child(vec![(
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
        )])
        .await;
        let (mut client, rescued) = pair().await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let relay = tokio::spawn(http(rescued, child, limits()));
        let got = until_eof(&mut client).await;
        assert_eq!(
            got,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nconnection: close\r\n\r\nok"
        );
        drop(client);
        assert_eq!(relay.await.unwrap(), Outcome::Rescued);
    }

    #[tokio::test]
    async fn chunked_bodies_pass_whole_both_ways() {
        let request = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let child = new_child(vec![(
            request,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        )])
        .await;
        let (mut client, rescued) = pair().await;
        let relay = tokio::spawn(http(rescued, child, limits()));
        // Sent in pieces that split the chunk framing.
        for piece in request.as_bytes().chunks(7) {
            client.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let got = until_eof(&mut client).await;
        assert!(got.ends_with("\r\n\r\n2\r\nhi\r\n0\r\n\r\n"), "{got:?}");
        assert!(got.contains("connection: close"), "{got:?}");
        drop(client);
        assert_eq!(relay.await.unwrap(), Outcome::Rescued);
    }

    #[tokio::test]
    async fn a_100_continue_reaches_the_client_before_it_sends_the_body() {
        let head = "PUT / HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n";
        let child = new_child(vec![
            (head, "HTTP/1.1 100 Continue\r\n\r\n"),
            ("body", "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
        ])
        .await;
        let (mut client, rescued) = pair().await;
        let relay = tokio::spawn(http(rescued, child, limits()));
        client.write_all(head.as_bytes()).await.unwrap();
        let mut interim = vec![0u8; 25];
        client.read_exact(&mut interim).await.unwrap();
        assert_eq!(interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        client.write_all(b"body").await.unwrap();
        let got = until_eof(&mut client).await;
        assert!(got.starts_with("HTTP/1.1 201 Created\r\n"), "{got:?}");
        drop(client);
        assert_eq!(relay.await.unwrap(), Outcome::Rescued);
    }

    #[tokio::test]
    async fn a_silent_client_is_closed_cleanly_at_the_idle_timeout() {
        let (mut client, rescued) = pair().await;
        let nowhere = "127.0.0.1:1".parse().unwrap(); // never contacted
        let outcome = http(rescued, nowhere, limits()).await;
        assert_eq!(outcome, Outcome::Released);
        assert_eq!(until_eof(&mut client).await, "");
    }

    #[tokio::test]
    async fn a_new_child_that_closes_mid_answer_loses_the_request() {
        let child = new_child(vec![(
            "GET / HTTP/1.1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf",
        )])
        .await;
        let (mut client, rescued) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(http(rescued, child, limits()).await, Outcome::Lost);
        drop(client.read_to_end(&mut Vec::new()).await);
    }

    #[tokio::test]
    async fn bytes_that_are_not_a_request_lose_the_connection() {
        let (mut client, rescued) = pair().await;
        client.write_all(b"st: t\r\n\r\n").await.unwrap();
        let nowhere = "127.0.0.1:1".parse().unwrap();
        assert_eq!(http(rescued, nowhere, limits()).await, Outcome::Lost);
    }
}
