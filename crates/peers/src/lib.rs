//! Shared parts of the peer servers that `bench/compare.sh` compares handover with.
//!
//! Every peer answers like `hello`: `GET` anything → `200`, body
//! `hello from pid=N`, header `x-pid: N`, on hyper 1 + tokio (HTTP/1.1). What
//! differs between the peers is only how a new version takes over:
//!
//! | binary | upgrade |
//! |---|---|
//! | `peer-plain` | naive restart: stop the old process, start a new one |
//! | `peer-holder` | a parent holds the socket and restarts its child sequentially (systemfd / catflap style) |
//! | `peer-reuseport` | the new process binds its own `SO_REUSEPORT` socket, then the old one closes its socket |
//! | `peer-ecdysis` | cloudflare's `ecdysis` crate: fork/exec with the socket inherited, old stops on the child's readiness |
//!
//! The servers stop the way hyper users usually do it: stop accepting, then
//! [`GracefulShutdown`] — idle keep-alive connections are closed at once,
//! requests in flight are finished (up to a drain timeout).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use socket2::{Domain, Socket, Type};
use tokio::net::TcpStream;
use tokio_stream::{Stream, StreamExt};

/// Options every serving peer takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Simulated initialisation time before the server serves.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub startup_delay: Duration,
    /// Write this process's pid here (atomically) once it serves.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// How long in-flight requests may take to finish once stopping.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub drain_timeout: Duration,
}

/// Binds a listening TCP socket (`SO_REUSEADDR`, optionally `SO_REUSEPORT`,
/// backlog 1024, non-blocking, close-on-exec).
pub fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Writes `pid` to `path` atomically (temporary file in the same directory, then
/// rename), so a reader never sees a partial file.
pub fn write_pid_file(path: &Path, pid: u32) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{pid}"));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Removes the PID file if it still holds `pid` (a successor may own it now).
pub fn remove_pid_file_if_holds(path: &Path, pid: u32) {
    if let Ok(text) = std::fs::read_to_string(path) {
        if text.trim() == pid.to_string() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The answer of every peer: 200, `hello from pid=N`, `x-pid: N`.
pub async fn respond(_request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let pid = std::process::id();
    Ok(Response::builder()
        .header("x-pid", pid)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(format!("hello from pid={pid}\n"))))
        .expect("static headers are valid"))
}

/// How a [`serve`] call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// False if connections were still open at the drain timeout (they were dropped).
    pub clean: bool,
}

/// Serves HTTP/1.1 on `incoming` until it ends or `stop` completes; then drops
/// `incoming` (closing the listening socket, if it owns it), shuts the
/// connections down gracefully (idle ones at once, busy ones after their
/// response) and waits for them up to `drain_timeout`.
pub async fn serve<S>(
    incoming: S,
    stop: impl Future<Output = ()>,
    drain_timeout: Duration,
) -> Drained
where
    S: Stream<Item = io::Result<TcpStream>> + Unpin,
{
    let graceful = GracefulShutdown::new();
    let mut incoming = incoming;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            next = incoming.next() => match next {
                Some(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    let connection = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service_fn(respond));
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        // A client that goes away is not this server's error.
                        let _ = connection.await;
                    });
                }
                Some(Err(error)) => {
                    // EMFILE and friends: back off instead of spinning.
                    eprintln!("peer: accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                None => break,
            },
            () = &mut stop => break,
        }
    }
    drop(incoming);
    let clean = tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_ok();
    Drained { clean }
}

/// Completes on the first SIGTERM, SIGQUIT or SIGINT.
///
/// # Errors
///
/// If the signal handlers cannot be installed.
pub fn stop_signal() -> io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = quit.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// The whole of a peer that binds its own socket after its start-up — `peer-plain`
/// (naive restart) and, with `reuse_port`, `peer-reuseport`: wait out the
/// start-up, bind, write the PID file, serve until SIGTERM, drain, exit.
pub fn main_binding_own_socket(
    name: &str,
    args: ServerArgs,
    reuse_port: bool,
) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{name}: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_own_socket(name, args, reuse_port)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run_own_socket(name: &str, args: ServerArgs, reuse_port: bool) -> io::Result<()> {
    let pid = std::process::id();
    let stop = stop_signal()?;
    tokio::time::sleep(args.startup_delay).await;
    let listener = tokio::net::TcpListener::from_std(bind(args.listen, reuse_port)?)?;
    if let Some(path) = &args.pid_file {
        write_pid_file(path, pid)?;
    }
    eprintln!("{name}: pid {pid} serving on http://{}", args.listen);
    let listener = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let drained = serve(listener, stop, args.drain_timeout).await;
    if let Some(path) = &args.pid_file {
        remove_pid_file_if_holds(path, pid);
    }
    eprintln!("{name}: pid {pid} stopped (clean drain: {})", drained.clean);
    Ok(())
}
