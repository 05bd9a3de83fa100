//! A line-protocol client over a plain [`TcpStream`]: write lines, read
//! `\n`-terminated lines back. Used by [`Protocol::Tcp`] and
//! [`Protocol::LongLived`](crate::Protocol::LongLived).
//!
//! Like the HTTP client it never probes a connection before using it and
//! never retries; every failure is classified.
//!
//! [`Protocol::Tcp`]: crate::Protocol::Tcp

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::outcome::{Failure, FailureKind};

/// Upper bound on the length of one reply line.
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// One connection plus the bytes read from it but not yet consumed.
#[derive(Debug)]
pub(crate) struct LineConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl LineConn {
    /// Opens a connection, bounded by `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<LineConn, Failure> {
        let stream = crate::http::connect_tcp(addr, timeout).await?;
        Ok(LineConn {
            stream,
            buf: Vec::with_capacity(1024),
        })
    }

    /// Writes `bytes` (one or more lines).
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| Failure::from_io(&e, "write message"))
    }

    /// Reads one line and returns it without its line ending; bytes after it
    /// stay buffered for the next call.
    pub async fn read_line(&mut self) -> Result<String, Failure> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line = &self.buf[..end];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                let line = String::from_utf8_lossy(line).into_owned();
                self.buf.drain(..=end);
                return Ok(line);
            }
            if self.buf.len() >= MAX_REPLY_BYTES {
                let detail = format!("reply line longer than {MAX_REPLY_BYTES} bytes");
                return Err(Failure::new(FailureKind::Malformed, detail));
            }
            self.buf.reserve(1024);
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| Failure::from_io(&e, "read reply"))?;
            if n == 0 {
                let detail = match self.buf.len() {
                    0 => "connection closed before any reply byte".to_owned(),
                    got => format!("connection closed after {got} bytes of an unfinished line"),
                };
                return Err(Failure::new(FailureKind::Eof, detail));
            }
        }
    }

    /// After the replies to `lines` lines were read: bytes already received
    /// beyond them mean the server answered with more lines than it was sent,
    /// a [`FailureKind::Malformed`] failure ("wrong count"), since the
    /// connection is then out of step.
    pub fn expect_no_more(&self, lines: usize) -> Result<(), Failure> {
        let extra = self.buf.len();
        if extra == 0 {
            return Ok(());
        }
        let detail = if lines == 1 {
            format!("wrong count: {extra} more bytes after the reply line to one message")
        } else {
            format!("wrong count: {extra} more bytes after the reply lines to {lines} lines")
        };
        Err(Failure::new(FailureKind::Malformed, detail))
    }

    /// Whether the server has closed or reset the connection, seen within
    /// `wait`, without writing anything (for the end of a run).
    pub async fn peer_closed(&self, wait: Duration) -> Option<FailureKind> {
        crate::http::peer_closed(&self.stream, wait).await
    }
}
