//! A minimal blocking HTTP/1.1 client: one connection, one `GET /` at a time,
//! every read and write bounded by [`IO_TIMEOUT`]. Just enough to time a
//! request and see who answered it (`x-pid`) and whether the connection is
//! to close (`Connection: close`).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Bound on connecting and on each read or write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: handover-bench\r\n\r\n";

/// One client connection.
#[derive(Debug)]
pub struct Conn {
    pub stream: TcpStream,
    /// Bytes read past the last response (none, for a server that does not
    /// answer unasked).
    buf: Vec<u8>,
}

/// What a response said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The `x-pid` header: the process that answered.
    pub pid: Option<u32>,
    /// `Connection: close`.
    pub closes: bool,
}

impl Conn {
    /// Connects to `addr` (no request sent).
    pub fn open(addr: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
            .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
            .map_err(|e| format!("socket options: {e}"))?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends `GET /` and reads the whole response.
    pub fn get(&mut self) -> Result<Response, String> {
        self.stream
            .write_all(REQUEST)
            .map_err(|e| format!("send request: {e}"))?;
        self.response()
    }

    fn response(&mut self) -> Result<Response, String> {
        loop {
            if let Some(head_end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
                let (response, length) = parse_head(&head)?;
                let total = head_end + 4 + length;
                while self.buf.len() < total {
                    self.fill("response body")?;
                }
                self.buf.drain(..total);
                return Ok(response);
            }
            self.fill("response head")?;
        }
    }

    /// Reads more into the buffer; EOF or a timeout is an error.
    fn fill(&mut self, what: &str) -> Result<(), String> {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(format!("EOF before the {what}")),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if is_timeout(&e) => Err(format!("no {what} within {IO_TIMEOUT:?}")),
            Err(e) => Err(format!("read {what}: {e}")),
        }
    }

    /// Waits for the server's FIN: `Ok` at EOF, `Err` on data, reset or timeout.
    pub fn read_eof(&mut self) -> Result<(), String> {
        if !self.buf.is_empty() {
            return Err(format!("{} unexpected bytes", self.buf.len()));
        }
        let mut chunk = [0u8; 512];
        match self.stream.read(&mut chunk) {
            Ok(0) => Ok(()),
            Ok(n) => Err(format!("{n} unexpected bytes instead of EOF")),
            Err(e) if is_timeout(&e) => Err(format!("no EOF within {IO_TIMEOUT:?}")),
            Err(e) => Err(format!("instead of EOF: {e}")),
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The status, `x-pid`, `Connection: close` and body length of a response
/// head (without its final blank line). Only `Content-Length` bodies: the Go
/// server sends nothing else to a `GET /`.
fn parse_head(head: &str) -> Result<(Response, usize), String> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut response = Response {
        status,
        pid: None,
        closes: false,
    };
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse().ok(),
            "x-pid" => response.pid = value.parse().ok(),
            "connection" => {
                response.closes = value
                    .split(',')
                    .any(|token| token.trim().eq_ignore_ascii_case("close"));
            }
            "transfer-encoding" => return Err("chunked responses are not supported".into()),
            _ => {}
        }
    }
    let length = length.ok_or_else(|| format!("no Content-Length in {head:?}"))?;
    Ok((response, length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_go_response_head() {
        let head = "HTTP/1.1 200 OK\r\nX-Pid: 4242\r\nConnection: close\r\n\
                    Content-Length: 25\r\nContent-Type: text/plain";
        let (response, length) = parse_head(head).unwrap();
        assert_eq!(
            response,
            Response {
                status: 200,
                pid: Some(4242),
                closes: true
            }
        );
        assert_eq!(length, 25);
        let (response, _) = parse_head("HTTP/1.1 405 Nope\r\nContent-Length: 0").unwrap();
        assert_eq!((response.status, response.closes), (405, false));
        assert!(parse_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked").is_err());
    }
}
