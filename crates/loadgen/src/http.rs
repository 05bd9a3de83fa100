//! Minimal hand-written HTTP/1.1 client over a plain [`TcpStream`].
//!
//! Written by hand (instead of using an HTTP library) so that every way a
//! request can fail is observed directly and classified exactly: there is no
//! connection pool, no hidden retry and no liveness probe before reusing a
//! connection.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::identity::{self, BODY_SCAN_BYTES};
use crate::outcome::{Failure, FailureKind};

/// Upper bound on the size of a response head (status line + headers).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Upper bound on one chunk-size or trailer line of a chunked body.
const MAX_LINE_BYTES: usize = 8 * 1024;

/// The parts of a complete response the load generator cares about.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub status: u16,
    pub pid: Option<String>,
    pub generation: Option<String>,
    /// Whether another request may be sent on the same connection.
    pub reusable: bool,
}

/// A parsed response head.
#[derive(Debug, Default)]
struct Head {
    status: u16,
    http10: bool,
    content_length: Option<u64>,
    transfer_encoding: bool,
    chunked: bool,
    close: bool,
    keep_alive: bool,
    pid: Option<String>,
    generation: Option<String>,
}

/// Builds the bytes of a `GET` request.
pub(crate) fn request_bytes(path: &str, host: &str, close: bool) -> Vec<u8> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{connection}\r\n").into_bytes()
}

fn malformed(detail: impl Into<String>) -> Failure {
    Failure::new(FailureKind::Malformed, detail)
}

/// One client connection plus the bytes read from it but not yet consumed.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes received for the response currently being read.
    received: usize,
    /// The start of the current body, kept to find `pid=N` / `generation=N`
    /// when the headers do not tell.
    body: Vec<u8>,
    /// How many more body bytes to keep in `body`.
    capture: usize,
}

/// Opens a TCP connection with `TCP_NODELAY`, bounded by `timeout`; failures
/// classified (refused, timeout, …). Shared by the HTTP and line clients.
pub(crate) async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Failure> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => {
            let detail = format!("connect to {addr} timed out after {timeout:?}");
            return Err(Failure::new(FailureKind::Timeout, detail));
        }
        Ok(result) => result.map_err(|e| Failure::from_io(&e, "connect"))?,
    };
    stream
        .set_nodelay(true)
        .map_err(|e| Failure::from_io(&e, "set TCP_NODELAY"))?;
    Ok(stream)
}

/// Whether the peer has closed ([`FailureKind::Eof`]) or reset
/// ([`FailureKind::Reset`]) `stream`, seen within `wait`, without writing or
/// consuming anything. Used at the end of a run, so that a connection the
/// server closed after its last exchange is not reported as kept. Bytes
/// waiting to be read, or nothing within `wait`, mean it is open (so does
/// any other error, which is not the server's doing as far as we can tell).
pub(crate) async fn peer_closed(stream: &TcpStream, wait: Duration) -> Option<FailureKind> {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(wait, stream.peek(&mut byte)).await {
        Ok(Ok(0)) => Some(FailureKind::Eof),
        Ok(Err(e)) if Failure::from_io(&e, "peek").kind == FailureKind::Reset => {
            Some(FailureKind::Reset)
        }
        Ok(_) | Err(_) => None,
    }
}

impl Conn {
    /// Whether the server has closed or reset the connection, seen within
    /// `wait` (see [`peer_closed`]).
    pub async fn peer_closed(&self, wait: Duration) -> Option<FailureKind> {
        peer_closed(&self.stream, wait).await
    }

    /// Opens a connection, bounded by `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, Failure> {
        let stream = connect_tcp(addr, timeout).await?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(8 * 1024),
            received: 0,
            body: Vec::new(),
            capture: 0,
        })
    }

    /// Writes `request` and reads one complete response (head and body).
    ///
    /// The request is written straight onto the connection, without checking
    /// first whether the peer has closed it.
    pub async fn exchange(&mut self, request: &[u8]) -> Result<Response, Failure> {
        self.received = self.buf.len();
        self.stream
            .write_all(request)
            .await
            .map_err(|e| Failure::from_io(&e, "write request"))?;
        let head = loop {
            let head = self.read_head().await?;
            // Skip interim responses (100 Continue, 103 Early Hints, ...).
            if !(100..200).contains(&head.status) || head.status == 101 {
                break head;
            }
        };
        self.body.clear();
        self.capture = if head.pid.is_none() || head.generation.is_none() {
            BODY_SCAN_BYTES
        } else {
            0
        };
        let delimited = self.read_body(&head).await?;
        let (mut pid, mut generation) = (head.pid, head.generation);
        if !self.body.is_empty() {
            pid = pid.or_else(|| identity::scan(&self.body, "pid"));
            generation = generation.or_else(|| identity::scan(&self.body, "generation"));
        }
        let persistent = if head.http10 {
            head.keep_alive && !head.close
        } else {
            !head.close
        };
        Ok(Response {
            status: head.status,
            pid,
            generation,
            reusable: delimited && persistent,
        })
    }

    /// Reads more bytes into the buffer; a closed connection is an [`FailureKind::Eof`].
    async fn fill(&mut self, reading: &str) -> Result<(), Failure> {
        self.buf.reserve(8 * 1024);
        let n = self
            .stream
            .read_buf(&mut self.buf)
            .await
            .map_err(|e| Failure::from_io(&e, &format!("read {reading}")))?;
        if n == 0 {
            let detail = match self.received {
                0 => "connection closed before any response byte".to_owned(),
                got => format!("connection closed after {got} response bytes, in {reading}"),
            };
            return Err(Failure::new(FailureKind::Eof, detail));
        }
        self.received += n;
        Ok(())
    }

    async fn read_head(&mut self) -> Result<Head, Failure> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = parse_head(&self.buf[..end]);
                self.buf.drain(..end + 4);
                return head;
            }
            if self.buf.len() >= MAX_HEAD_BYTES {
                return Err(malformed(format!(
                    "response head exceeds {MAX_HEAD_BYTES} bytes"
                )));
            }
            self.fill("response head").await?;
        }
    }

    /// Reads the body; returns whether it was delimited (as opposed to
    /// ending with the connection).
    async fn read_body(&mut self, head: &Head) -> Result<bool, Failure> {
        if matches!(head.status, 204 | 304) {
            Ok(true)
        } else if head.chunked {
            self.read_chunked().await.map(|()| true)
        } else if let (Some(len), false) = (head.content_length, head.transfer_encoding) {
            self.skip(len, "body").await.map(|()| true)
        } else {
            // No framing: the body extends to the end of the connection.
            self.keep_body(self.buf.len());
            self.buf.clear();
            loop {
                match self.fill("body until close").await {
                    Ok(()) => {
                        self.keep_body(self.buf.len());
                        self.buf.clear();
                    }
                    Err(failure) if failure.kind == FailureKind::Eof => return Ok(false),
                    Err(failure) => return Err(failure),
                }
            }
        }
    }

    async fn read_chunked(&mut self) -> Result<(), Failure> {
        loop {
            let line = self.read_line("chunk size").await?;
            let digits = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(digits, 16)
                .ok()
                .filter(|_| digits.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| malformed(format!("invalid chunk size line {line:?}")))?;
            if size == 0 {
                // Trailer section, terminated by an empty line.
                while !self.read_line("trailers").await?.is_empty() {}
                return Ok(());
            }
            self.skip(size, "chunk data").await?;
            if !self.read_line("chunk data").await?.is_empty() {
                return Err(malformed("chunk data not followed by CRLF"));
            }
        }
    }

    /// Consumes exactly `len` bytes.
    async fn skip(&mut self, mut len: u64, reading: &str) -> Result<(), Failure> {
        loop {
            let take = self
                .buf
                .len()
                .min(usize::try_from(len).unwrap_or(usize::MAX));
            self.keep_body(take);
            self.buf.drain(..take);
            len -= take as u64;
            if len == 0 {
                return Ok(());
            }
            self.fill(reading).await?;
        }
    }

    /// Keeps up to `len` bytes from the start of the buffer as body bytes to
    /// scan for an identity.
    fn keep_body(&mut self, len: usize) {
        let keep = len.min(self.capture);
        self.body.extend_from_slice(&self.buf[..keep]);
        self.capture -= keep;
    }

    /// Consumes one CRLF-terminated line and returns it without the CRLF.
    async fn read_line(&mut self, reading: &str) -> Result<String, Failure> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 2);
                return Ok(line);
            }
            if self.buf.len() > MAX_LINE_BYTES {
                return Err(malformed(format!("{reading} line too long")));
            }
            self.fill(reading).await?;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses a status line and headers (without the terminating empty line).
fn parse_head(raw: &[u8]) -> Result<Head, Failure> {
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let bad_status_line = || malformed(format!("invalid status line {status_line:?}"));
    let mut parts = status_line.splitn(3, ' ');
    let mut head = Head {
        http10: match parts.next() {
            Some("HTTP/1.1") => false,
            Some("HTTP/1.0") => true,
            _ => return Err(bad_status_line()),
        },
        status: parts
            .next()
            .filter(|code| code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|code| code.parse().ok())
            .ok_or_else(bad_status_line)?,
        ..Head::default()
    };
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| malformed(format!("invalid header line {line:?}")))?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            let len = Some(value)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| malformed(format!("invalid Content-Length {value:?}")))?;
            if head.content_length.is_some_and(|prev| prev != len) {
                return Err(malformed("conflicting Content-Length headers"));
            }
            head.content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.transfer_encoding = true;
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            head.chunked = last.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                head.close |= token.eq_ignore_ascii_case("close");
                head.keep_alive |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if name.eq_ignore_ascii_case("x-pid") {
            head.pid = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("x-generation") {
            head.generation = Some(value.to_owned());
        }
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_head_fields() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-Pid: 42\r\n\
                    x-generation: 3\r\nConnection: Keep-Alive, CLOSE";
        let head = parse_head(raw).unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.content_length, Some(12));
        assert!(head.close && head.keep_alive && !head.http10);
        assert_eq!(head.pid.as_deref(), Some("42"));
        assert_eq!(head.generation.as_deref(), Some("3"));
    }

    #[test]
    fn rejects_malformed_heads() {
        for raw in [
            &b"garbage"[..],
            b"HTTP/2 200 OK",
            b"HTTP/1.1 20 OK",
            b"HTTP/1.1 200 OK\r\nno colon here",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2",
        ] {
            let err = parse_head(raw).unwrap_err();
            assert_eq!(err.kind, FailureKind::Malformed, "{raw:?}");
        }
    }

    #[test]
    fn request_has_close_header_only_in_close_mode() {
        let keep = request_bytes("/x", "127.0.0.1:80", false);
        assert_eq!(keep, b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n");
        let close = String::from_utf8(request_bytes("/", "localhost:80", true)).unwrap();
        assert!(close.ends_with("Connection: close\r\n\r\n"));
    }
}
