//! Just enough HTTP/1.1 framing to relay one request and its response without
//! understanding either: where a head ends, how long the body is, and how to
//! say `Connection: close` (RFC 9112 §6, §9.6). Heads are parsed with
//! `httparse`; bodies are passed through byte for byte.

/// How a message's body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`, up to the last chunk and its trailers.
    Chunked,
    /// Until the sender closes (a response without length).
    UntilClose,
}

/// A request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Bytes of the head, blank line included.
    pub head_len: usize,
    pub body: Body,
    /// A HEAD request: its response has no body whatever its headers say.
    pub is_head: bool,
    /// `Expect: 100-continue`: the client waits for an interim answer before
    /// it sends the body.
    pub expects_continue: bool,
}

/// A response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Bytes of the head, blank line included.
    pub head_len: usize,
    pub status: u16,
    pub body: Body,
    /// The server will close the connection after it (`Connection: close`,
    /// HTTP/1.0 without keep-alive).
    pub closes: bool,
}

impl Response {
    /// 1xx other than 101: a final response follows on the same connection.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// Why bytes are not HTTP/1.x.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("not an HTTP/1.x message: {0}")]
    Syntax(String),
    #[error("the head is longer than {MAX_HEAD} bytes")]
    TooLong,
    #[error("invalid Content-Length")]
    Length,
    #[error("invalid chunked encoding")]
    Chunk,
}

/// Longest head accepted (hyper's default is 400 KiB; servers use 8–64 KiB).
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;

/// The methods a rescued connection's first request may start with. A
/// rescued connection's bytes start where the old child stopped reading: if
/// that is not a request's start (say `ET / HTTP/1.1`, its first byte gone
/// with the child), relaying them would get a wrong answer, so such a request
/// is refused instead. Extension methods are legal HTTP, but not what a
/// client sends on a keep-alive connection it reuses.
pub const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT",
];

/// Whether `buf` (at least a few bytes of it) can be the start of a request
/// with a [`KNOWN_METHODS`] method: `None` while too short to tell.
pub fn starts_a_request(buf: &[u8]) -> Option<bool> {
    let mut undecided = false;
    for method in KNOWN_METHODS {
        let want = format!("{method} ");
        let n = want.len().min(buf.len());
        if buf[..n] == want.as_bytes()[..n] {
            if buf.len() >= want.len() {
                return Some(true);
            }
            undecided = true;
        }
    }
    (!undecided).then_some(false)
}

/// Parses the request head at the start of `buf`: `Ok(None)` until it is whole.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, Malformed> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let Some(head_len) = head_len(request.parse(buf), buf)? else {
        return Ok(None);
    };
    let headers = request.headers;
    let body = match framing(headers)? {
        Some(body) => body,
        None => Body::Empty, // a request without length has no body (§6.3 rule 6)
    };
    Ok(Some(Request {
        head_len,
        body,
        is_head: request.method == Some("HEAD"),
        expects_continue: has_token(headers, "expect", "100-continue"),
    }))
}

/// Parses the response head at the start of `buf` to a request that was a HEAD
/// request or not: `Ok(None)` until it is whole.
pub fn parse_response(buf: &[u8], to_head: bool) -> Result<Option<Response>, Malformed> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let Some(head_len) = head_len(response.parse(buf), buf)? else {
        return Ok(None);
    };
    let status = response.code.unwrap_or(0);
    let headers = response.headers;
    let body = if to_head || (100..200).contains(&status) || status == 204 || status == 304 {
        Body::Empty
    } else {
        framing(headers)?.unwrap_or(Body::UntilClose)
    };
    let http10 = response.version == Some(0);
    let closes = has_token(headers, "connection", "close")
        || (http10 && !has_token(headers, "connection", "keep-alive"))
        || body == Body::UntilClose;
    Ok(Some(Response {
        head_len,
        status,
        body,
        closes,
    }))
}

/// The length of a parsed head, `None` while it is incomplete (and short
/// enough to wait for).
fn head_len(parsed: httparse::Result<usize>, buf: &[u8]) -> Result<Option<usize>, Malformed> {
    match parsed {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Err(Malformed::TooLong),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(error) => Err(Malformed::Syntax(error.to_string())),
    }
}

/// The body framing the headers declare, if they declare one.
fn framing(headers: &[httparse::Header<'_>]) -> Result<Option<Body>, Malformed> {
    let chunked = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .last()
        .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
    if chunked {
        return Ok(Some(Body::Chunked));
    }
    let mut length = None;
    for header in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        let value: u64 = std::str::from_utf8(header.value)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or(Malformed::Length)?;
        if length.is_some_and(|l| l != value) {
            return Err(Malformed::Length); // two different lengths: smuggling
        }
        length = Some(value);
    }
    Ok(length.map(|n| if n == 0 { Body::Empty } else { Body::Length(n) }))
}

fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The response head `head` with `Connection: close` in place of any
/// `Connection` and `Keep-Alive` headers it had.
pub fn with_connection_close(head: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len() + 19);
    // httparse accepts empty lines before the status line: skip them too.
    let mut lines = head
        .split_inclusive(|&b| b == b'\n')
        .skip_while(|line| line.trim_ascii().is_empty());
    if let Some(status_line) = lines.next() {
        out.extend_from_slice(status_line);
    }
    for line in lines {
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        let name = name.trim_ascii();
        if line.trim_ascii().is_empty() {
            break; // the blank line: added back below
        }
        if name.eq_ignore_ascii_case(b"connection") || name.eq_ignore_ascii_case(b"keep-alive") {
            continue;
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out
}

/// Follows a chunked body through the bytes fed to it, to find where it ends.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    /// A size or trailer line read so far.
    line: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailer,
    Done,
}

impl Chunked {
    /// Consumes `bytes`; returns how many of them belong to the body once its
    /// end is among them (`None`: the body goes on).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, Malformed> {
        let mut at = 0;
        while at < bytes.len() {
            match self.state {
                ChunkState::Size | ChunkState::DataEnd | ChunkState::Trailer => {
                    let Some(newline) = bytes[at..].iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(&bytes[at..]);
                        if self.line.len() > 4096 {
                            return Err(Malformed::Chunk);
                        }
                        return Ok(None);
                    };
                    self.line.extend_from_slice(&bytes[at..at + newline + 1]);
                    at += newline + 1;
                    let line = std::mem::take(&mut self.line);
                    self.state = self.after_line(&line)?;
                    if self.state == ChunkState::Done {
                        return Ok(Some(at));
                    }
                }
                ChunkState::Data(left) => {
                    let take = left.min((bytes.len() - at) as u64);
                    at += take as usize;
                    self.state = match left - take {
                        0 => ChunkState::DataEnd,
                        left => ChunkState::Data(left),
                    };
                }
                ChunkState::Done => return Ok(Some(at)),
            }
        }
        Ok((self.state == ChunkState::Done).then_some(at))
    }

    fn after_line(&self, line: &[u8]) -> Result<ChunkState, Malformed> {
        Ok(match self.state {
            ChunkState::Size => match httparse::parse_chunk_size(line) {
                Ok(httparse::Status::Complete((_, 0))) => ChunkState::Trailer,
                Ok(httparse::Status::Complete((_, size))) => ChunkState::Data(size),
                _ => return Err(Malformed::Chunk),
            },
            ChunkState::DataEnd if line.trim_ascii().is_empty() => ChunkState::Size,
            ChunkState::DataEnd => return Err(Malformed::Chunk),
            ChunkState::Trailer if line.trim_ascii().is_empty() => ChunkState::Done,
            ChunkState::Trailer => ChunkState::Trailer,
            state => state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_their_bodies() {
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        let get = parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next").unwrap();
        assert_eq!(get.map(|r| (r.head_len, r.body)), Some((27, Body::Empty)));
        let post = parse_request(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(post.body, Body::Length(5));
        let chunked = parse_request(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(chunked.body, Body::Chunked);
        assert!(chunked.expects_continue);
        assert!(parse_request(b"\x16\x03\x01 tls hello\r\n\r\n").is_err());
        assert_eq!(
            parse_request(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(Malformed::Length)
        );
        assert_eq!(
            parse_request(&[b'a'; MAX_HEAD + 1]).err(),
            Some(Malformed::TooLong)
        );
    }

    #[test]
    fn a_request_start_is_told_from_the_rest_of_one() {
        assert_eq!(starts_a_request(b"GET / HTTP/1.1\r\n"), Some(true));
        assert_eq!(starts_a_request(b"PO"), None);
        assert_eq!(starts_a_request(b"ET / HTTP/1.1\r\n"), Some(false));
        assert_eq!(starts_a_request(b"st: t\r\n\r\n"), Some(false));
    }

    #[test]
    fn responses_and_how_they_end() {
        let ok = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", false)
            .unwrap()
            .unwrap();
        assert_eq!(
            (ok.status, ok.body, ok.closes),
            (200, Body::Length(3), false)
        );
        let head = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true);
        assert_eq!(head.unwrap().unwrap().body, Body::Empty);
        let eof = parse_response(b"HTTP/1.1 200 OK\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!((eof.body, eof.closes), (Body::UntilClose, true));
        let old = parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false);
        assert!(old.unwrap().unwrap().closes);
        let interim = parse_response(b"HTTP/1.1 100 Continue\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(interim.is_interim() && interim.body == Body::Empty);
        let close = parse_response(b"HTTP/1.1 204 No\r\nConnection: close\r\n\r\n", false);
        assert!(close.unwrap().unwrap().closes);
    }

    #[test]
    fn connection_close_replaces_keep_alive() {
        let head = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\n";
        let rewritten = with_connection_close(head);
        assert_eq!(
            String::from_utf8(rewritten).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nconnection: close\r\n\r\n"
        );
        // Empty lines before the status line (found by fuzzing) are dropped.
        let leading = with_connection_close(b"\n\nHTTP/1.1 200\n\n");
        assert_eq!(
            String::from_utf8(leading).unwrap(),
            "HTTP/1.1 200\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn a_chunked_body_ends_after_its_trailers_however_it_is_split() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..body.len() {
            let mut chunked = Chunked::default();
            let first = chunked.feed(&body[..split]).unwrap();
            let found = match first {
                Some(n) => n,
                None => split + chunked.feed(&body[split..]).unwrap().unwrap(),
            };
            assert_eq!(found, end, "split at {split}");
        }
        assert!(Chunked::default().feed(b"zz\r\n").is_err());
    }
}
