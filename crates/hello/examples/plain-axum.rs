//! A plain axum server, for comparison with `src/bin/hello-axum.rs`: the same
//! server on handover differs from this file by the lines marked
//! `// handover` there (the test `axum_example_differs_from_plain_axum_by_at_most_ten_lines`
//! counts them). Its `axum::serve(…)` cannot be upgraded without refusing
//! connections, and `with_graceful_shutdown` would close idle keep-alive
//! connections, racing the requests their clients are sending.
use axum::{routing::get, Router};

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
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
