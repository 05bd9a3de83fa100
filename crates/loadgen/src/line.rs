//! A line-protocol client over a plain [`TcpStream`]: write a message, read
//! one `\n`-terminated line back. Used by [`Protocol::Tcp`] and
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

    /// Writes `message` and reads exactly one line back (returned without its
    /// line ending).
    ///
    /// Bytes after the line that arrived in the same read mean the server
    /// answered with more than one line: a [`FailureKind::Malformed`] failure
    /// ("wrong count"), since the connection is then out of step.
    pub async fn exchange(&mut self, message: &[u8]) -> Result<String, Failure> {
        self.stream
            .write_all(message)
            .await
            .map_err(|e| Failure::from_io(&e, "write message"))?;
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let extra = self.buf.len() - end - 1;
                if extra > 0 {
                    let detail = format!(
                        "wrong count: {extra} more bytes after the reply line to one message"
                    );
                    return Err(Failure::new(FailureKind::Malformed, detail));
                }
                let mut line = &self.buf[..end];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                let line = String::from_utf8_lossy(line).into_owned();
                self.buf.clear();
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
}
