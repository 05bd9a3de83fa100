//! Real TCP test servers on 127.0.0.1:0 (no mocks).
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running test server and its counters.
pub struct Server {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Requests read so far (via [`read_request`] on the [`Ctx`]).
    pub requests: Arc<AtomicUsize>,
}

impl Server {
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Per-connection context handed to a handler.
#[derive(Clone)]
pub struct Ctx {
    pub requests: Arc<AtomicUsize>,
}

impl Ctx {
    /// Reads one request head; `None` when the client closed the connection.
    pub async fn read_request(&self, stream: &mut TcpStream) -> Option<String> {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return None,
            }
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
        Some(String::from_utf8(head).expect("request head is UTF-8"))
    }
}

/// Starts a server that runs `handler` for every accepted connection.
pub async fn serve<F, Fut>(handler: F) -> Server
where
    F: Fn(TcpStream, Ctx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server {
        addr: listener.local_addr().unwrap(),
        accepted: Arc::default(),
        requests: Arc::default(),
    };
    let (accepted, ctx) = (
        server.accepted.clone(),
        Ctx {
            requests: server.requests.clone(),
        },
    );
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(handler(stream, ctx.clone()));
        }
    });
    server
}

/// A correct keep-alive server: Content-Length bodies, `x-pid` and
/// `x-generation` headers, honours `Connection: close` from the client.
pub async fn keep_alive_server() -> Server {
    serve(|mut stream, ctx| async move {
        while let Some(request) = ctx.read_request(&mut stream).await {
            let close = request.to_ascii_lowercase().contains("connection: close");
            let body = "pid=4242 generation=7\n";
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-pid: 4242\r\nx-generation: 7\r\n{}\r\n{body}",
                body.len(),
                if close { "connection: close\r\n" } else { "" },
            );
            if stream.write_all(response.as_bytes()).await.is_err() || close {
                return;
            }
        }
    })
    .await
}

/// Server that reads each request and answers it with `response`, then
/// either keeps the connection (`keep`) or closes it.
pub async fn canned_server(response: &'static str, keep: bool) -> Server {
    serve(move |mut stream, ctx| async move {
        while ctx.read_request(&mut stream).await.is_some() {
            if stream.write_all(response.as_bytes()).await.is_err() || !keep {
                return;
            }
        }
    })
    .await
}

/// An address where nothing listens (bound, then released).
pub fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Generous bound for a whole test run.
pub const RUN_LIMIT: Duration = Duration::from_secs(5);

/// A config capped at `max` requests over `connections` workers.
pub fn capped(addr: SocketAddr, connections: usize, max: u64) -> handover_loadgen::LoadConfig {
    handover_loadgen::LoadConfig::new(addr)
        .connections(connections)
        .max_requests(max)
        .duration(RUN_LIMIT)
}

/// Asserts that the report holds exactly `n` attempts, all failed with `kind`.
pub fn assert_all_failed(
    report: &handover_loadgen::Report,
    kind: handover_loadgen::FailureKind,
    n: usize,
) {
    assert_eq!(report.total(), n, "{}", report.summary());
    assert_eq!(report.successes(), 0, "{}", report.summary());
    assert_eq!(report.count_of(&kind), n, "{}", report.summary());
    let expected = [(kind.to_string(), n as u64)].into_iter().collect();
    assert_eq!(report.failure_counts(), expected);
}
