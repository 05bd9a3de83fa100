//! `hello-axum`: an axum `Router` served by handover. `kill -HUP $(cat
//! hello-axum.pid)` upgrades it with no failed request; keep-alive
//! connections move to the new version between two requests.
//!
//! It differs from the plain axum server in `examples/plain-axum.rs` by the
//! lines marked `// handover`: a [`Handover`] (which re-executes this binary
//! on SIGHUP), the listener by name (inherited after an upgrade), handover's
//! `http::serve` instead of `axum::serve`, and the readiness report.
//!
//! ```text
//! ADDR=127.0.0.1:3000 PID_FILE=hello-axum.pid hello-axum
//! ```
use axum::{routing::get, Router};
use handover::{http, Handover}; // handover

async fn hello() -> ([(&'static str, String); 1], String) {
    let pid = std::process::id();
    (
        [("x-pid", pid.to_string())],
        format!("hello from pid {pid}\n"),
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let app = Router::new().route("/", get(hello));
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let pid_file = std::env::var("PID_FILE").unwrap_or_else(|_| "hello-axum.pid".into()); // handover
    let handover = Handover::builder().pid_file(pid_file).build()?; // handover
    let listener = handover.tokio_tcp_listener("web", &addr)?; // handover
    println!("listening on http://{}", listener.local_addr()?);
    let server = tokio::spawn(http::serve(listener, &handover, app)); // handover
    handover.ready()?; // handover
    server.await?; // handover
    Ok(())
}
