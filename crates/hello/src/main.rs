//! `hello`: an example HTTP server on the handover library.
//!
//! `GET /` answers 200 with the serving process's pid and generation (also in the
//! `x-pid` and `x-generation` headers); `GET /slow?ms=N` answers the same after N
//! milliseconds; `GET /history` answers the pid of every generation so far,
//! oldest first, one per line — state each version hands to the next.
//! `kill -HUP $(cat hello.pid)` upgrades it with no failed request;
//! `--startup-delay` simulates a server that needs seconds to start. With
//! `--takeover PATH`, running the same command again, from any shell, replaces
//! the running one with no failed request. `--echo [NAME=]ADDR` adds a
//! line-echo listener (each line answered with `<pid> <line>`). Keep-alive
//! HTTP connections and echo connections migrate to the new version at each
//! upgrade and never close, unless `--no-migration`. `--tls-cert FILE
//! --tls-key FILE` serves HTTPS instead (each version reads the files when it
//! starts, so an upgrade rotates the certificate; TLS connections drain).
//!
//! ```text
//! hello --listen 127.0.0.1:8080 --startup-delay 2s --pid-file hello.pid --takeover /tmp/hello/takeover.sock
//! ```

#![forbid(unsafe_code)]
mod echo;

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use handover::{http, Handover, SignalAction};

mod greeting;
use greeting::Greeting;

/// Example HTTP server that upgrades itself on SIGHUP with zero failed requests.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to serve on, as ADDR or NAME=ADDR (the name defaults to "web");
    /// repeat for several sockets.
    #[arg(
        long = "listen",
        value_name = "[NAME=]ADDR",
        default_value = "127.0.0.1:8080"
    )]
    listen: Vec<String>,
    /// Simulated initialisation time before the server is ready.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    startup_delay: Duration,
    /// Keep the current process's pid in this file.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// How long a new version may take to become ready before it is rolled back.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    ready_timeout: Duration,
    /// How long draining connections may take before they are closed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    drain_timeout: Duration,
    /// How long a new version is on probation once ready: this process keeps
    /// its sockets meanwhile and serves again if the new one dies.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    probation: Duration,
    /// Serve takeovers at this Unix socket path; if a running hello serves it,
    /// take over from it instead of binding.
    #[arg(long, value_name = "PATH")]
    takeover: Option<PathBuf>,
    /// A line-echo listener, as ADDR or NAME=ADDR (the name defaults to
    /// "echo"); repeat for several.
    #[arg(long = "echo", value_name = "[NAME=]ADDR")]
    echo: Vec<String>,
    /// Drain connections at an upgrade instead of migrating them to the new
    /// version.
    #[arg(long)]
    no_migration: bool,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key). Each
    /// version reads it at start-up: replace the files and upgrade to rotate
    /// a certificate. TLS connections are drained, not migrated.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Greet with the text in this file instead of "hello" (one line, at
    /// most 256 bytes). Read again, in place, on SIGUSR1 or `handover
    /// reload --socket …`; a file that is not valid keeps the old text.
    #[arg(long, value_name = "FILE")]
    greeting_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // First, before the runtime opens any fd: inherited sockets live at fds 3, 4, …
    let handover = match handover_from(&args) {
        Ok(handover) => handover,
        Err(error) => {
            eprintln!("hello: {error}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hello: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, handover)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hello: {error}");
            ExitCode::FAILURE
        }
    }
}

fn handover_from(args: &Args) -> Result<Handover, handover::Error> {
    let mut builder = Handover::builder()
        .ready_timeout(args.ready_timeout)
        .drain_timeout(args.drain_timeout)
        .probation(args.probation);
    if let Some(path) = &args.pid_file {
        builder = builder.pid_file(path);
    }
    if let Some(path) = &args.takeover {
        builder = builder.takeover(path);
    }
    if args.no_migration {
        builder = builder.no_migration("*");
    }
    // hello's reload signal; SIGHUP stays the upgrade.
    let usr1 = tokio::signal::unix::SignalKind::user_defined1().as_raw_value();
    builder.signal(usr1, SignalAction::Reload).build()
}

/// The boot history: the pids of every generation so far, oldest first,
/// inherited from the previous version with this one's appended; the state
/// each version hands to the next.
fn boot_history(handover: &Handover) -> Arc<String> {
    let mut history = handover
        .inherited_state()
        .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
        .unwrap_or_default();
    history.push_str(&format!("{}\n", std::process::id()));
    let history = Arc::new(history);
    let handed = Arc::clone(&history);
    handover.set_state(move || handed.as_bytes().to_vec());
    history
}

async fn run(args: Args, handover: Handover) -> Result<(), handover::Error> {
    let pid = std::process::id();
    let generation = handover.generation();
    let _span = tracing::info_span!("hello", pid, generation).entered();
    let history = boot_history(&handover);
    // Read before anything is served: a successor with a bad certificate
    // never gets ready, and the running version serves on.
    let tls =
        match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(http::tls::server_config(cert, key).map_err(
                |error| handover::Error::Io {
                    context: "loading the TLS certificate".into(),
                    source: std::io::Error::other(error),
                },
            )?),
            _ => None,
        };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let greeting =
        Greeting::load(args.greeting_file.clone()).map_err(|error| handover::Error::Io {
            context: "reading the greeting".into(),
            source: std::io::Error::other(error),
        })?;
    greeting.reload_on(&handover);

    let mut listeners = Vec::new();
    for spec in &args.listen {
        let (name, addr) = spec.split_once('=').unwrap_or(("web", spec));
        listeners.push(listen(&handover, name, addr, scheme)?);
    }
    let mut echoes = Vec::new();
    for spec in &args.echo {
        let (name, addr) = spec.split_once('=').unwrap_or(("echo", spec));
        echoes.push((name.to_owned(), listen(&handover, name, addr, "tcp")?));
    }

    if !args.startup_delay.is_zero() {
        tracing::info!(delay = ?args.startup_delay, "initialising");
        tokio::time::sleep(args.startup_delay).await;
    }

    // Each server asks for its migrated connections when it is created, so
    // all of them are before ready().
    let servers: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            let (history, greeting) = (Arc::clone(&history), greeting.clone());
            let handler = move |request| {
                let text = greeting.text();
                respond(request, pid, generation, Arc::clone(&history), text)
            };
            match &tls {
                Some(config) => tokio::spawn(http::serve_tls(
                    listener,
                    &handover,
                    Arc::clone(config),
                    handler,
                )),
                None => tokio::spawn(http::serve(listener, &handover, handler)),
            }
        })
        .collect();
    let echo_servers: Vec<_> = echoes
        .into_iter()
        .map(|(name, listener)| tokio::spawn(echo::serve(listener, &handover, &name)))
        .collect();
    let mut outcome = Ok(());
    if let Err(error) = handover.ready() {
        if handover.took_over() {
            // The old version keeps serving: finish what we accepted, then
            // exit non-zero with the reason.
            tracing::error!(%error, "takeover failed; draining and exiting");
            handover.stop();
            outcome = Err(error);
        } else {
            tracing::error!(%error, "could not report readiness; serving anyway");
        }
    }
    for server in servers {
        match server.await {
            Ok(summary) => tracing::info!(reason = %summary.reason,
                closed_at_deadline = summary.closed_at_deadline, "server finished"),
            Err(error) => tracing::error!(%error, "server task failed"),
        }
    }
    for server in echo_servers {
        if let Err(error) = server.await {
            tracing::error!(%error, "echo task failed");
        }
    }
    outcome
}

/// Claims the listener `name` (inherited, or bound at `addr`) and says where
/// it listens, in the line tests read.
fn listen(
    handover: &Handover,
    name: &str,
    addr: &str,
    scheme: &str,
) -> Result<tokio::net::TcpListener, handover::Error> {
    let listener = handover.tokio_tcp_listener(name, addr)?;
    let local = listener.local_addr().map_err(|e| handover::Error::Io {
        context: "reading the local address".into(),
        source: e,
    })?;
    let (pid, generation) = (std::process::id(), handover.generation());
    // Not println!: a successor inherits stdout, and if whoever read it is
    // gone, a write error must not end a server that is otherwise fine.
    let line =
        format!("listening on {scheme}://{local} name={name} pid={pid} generation={generation}\n");
    let _ = std::io::Write::write_all(&mut std::io::stdout(), line.as_bytes());
    Ok(listener)
}

async fn respond(
    request: Request<Incoming>,
    pid: u32,
    generation: u64,
    history: Arc<String>,
    greeting: Arc<str>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() == "/history" {
        return Ok(Response::builder()
            .header("x-pid", pid)
            .header("x-generation", generation)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(history.as_bytes().to_vec())))
            .expect("static headers are valid"));
    }
    let status = match request.uri().path() {
        "/" => StatusCode::OK,
        "/slow" => {
            let ms = query_ms(request.uri().query()).unwrap_or(1000).min(60_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            StatusCode::OK
        }
        _ => StatusCode::NOT_FOUND,
    };
    let body = format!("{greeting} from pid={pid} generation={generation}\n");
    Ok(Response::builder()
        .status(status)
        .header("x-pid", pid)
        .header("x-generation", generation)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body)))
        .expect("static headers are valid"))
}

fn query_ms(query: Option<&str>) -> Option<u64> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("ms="))
        .and_then(|ms| ms.parse().ok())
}
