//! HTTPS (`hello --tls-cert … --tls-key …`): upgrades under HTTPS load fail no
//! request, a handshake under way at the commit completes in the old process,
//! HTTP/2 chosen by ALPN gets GOAWAY, an upgrade rotates the certificate, and
//! a successor with a bad certificate is rolled back.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use support::tls::{connect, Certificate, HttpsLoad};
use support::*;

fn start(label: &str, cert: &Certificate, extra: &[&str]) -> Server {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.cert.to_str().unwrap(),
        "--tls-key",
        cert.key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Server::start_with_args(label, &args)
}

/// 6 HTTPS keep-alive clients and 2 opening a TLS connection per request,
/// none retrying, while hello (300 ms start-up) is upgraded 20 times: no
/// request fails, each version answers, and the keep-alive connections are
/// drained (told `Connection: close`) rather than migrated.
#[test]
fn twenty_upgrades_under_https_keep_alive_load_fail_no_request() {
    let scratch = Scratch::new("tls-certs");
    let cert = Certificate::generate(&scratch.0, "server");
    let mut server = start("tls-load", &cert, &["--startup-delay", "300ms"]);
    let load = HttpsLoad::start(server.addr, cert.client(&[b"http/1.1"]), 6, 2);
    assert!(
        load.wait_for(0, 100, Duration::from_secs(20)),
        "load did not start"
    );
    for round in 0..20 {
        let before = load.answered();
        let (old, _new) = server.upgrade();
        server.wait_exit(old, Duration::from_secs(30));
        assert!(
            load.wait_for(before, 50, Duration::from_secs(20)),
            "round {round}: load stalled"
        );
    }
    let seen = load.stop();
    let broken: Vec<_> = seen.iter().filter_map(|s| s.broken.as_ref()).collect();
    assert!(
        broken.is_empty(),
        "{broken:#?}\nserver log:\n{}",
        server.log_text()
    );
    let answered: u64 = seen.iter().map(|s| s.verified).sum();
    assert!(answered > 1000, "too little load: {answered}");
    for keep_alive in &seen[..6] {
        assert!(keep_alive.pids.len() >= 20, "{keep_alive:?}");
        assert!(keep_alive.told_to_close >= 19, "drained: {keep_alive:?}");
    }
    assert_eq!(server.live_processes(), vec![server.current_pid().unwrap()]);
}

/// A client whose handshake the old process is in the middle of when the
/// successor commits: it completes the handshake there, and its request is
/// answered there, with `Connection: close`.
#[test]
fn a_tls_handshake_under_way_at_the_commit_completes_in_the_old_process() {
    let scratch = Scratch::new("tls-certs");
    let cert = Certificate::generate(&scratch.0, "server");
    let mut server = start("tls-handshake", &cert, &[]);
    let old = server.current_pid().unwrap();

    // ClientHello out, the server's whole flight in (TLS 1.3: up to its
    // Finished); the client's Finished is held back, so the old process's
    // side of the handshake is not complete.
    let tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(cert.client(&[b"http/1.1"]), name).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    tls.conn.write_tls(&mut tls.sock).unwrap();
    while tls.conn.is_handshaking() {
        tls.conn.read_tls(&mut tls.sock).unwrap();
        tls.conn.process_new_packets().unwrap();
    }
    assert!(
        tls.conn.wants_write(),
        "the client's Finished is still to send"
    );

    let (_, new) = server.upgrade();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let response = clients::read_response(&mut tls, &mut Vec::new()).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.pid, old, "answered by the old process, not {new}");
    assert!(response.close, "and told to close: it is draining");
    server.wait_exit(old, Duration::from_secs(10));
}

/// Replacing the certificate files and upgrading is a certificate rotation:
/// new connections get the new certificate from the new version.
#[test]
fn an_upgrade_rotates_the_certificate() {
    let scratch = Scratch::new("tls-certs");
    let first = Certificate::generate(&scratch.0, "server");
    let second = Certificate::generate(&scratch.0, "next");
    let mut server = start("tls-rotate", &first, &[]);
    let addr = server.addr;
    let presented = |trusting: &Certificate| {
        let tls = connect(addr, &trusting.client(&[b"http/1.1"])).unwrap();
        tls.conn.peer_certificates().unwrap()[0].clone()
    };
    assert_eq!(presented(&first), first.der);

    second.install_as(&first);
    let (old, _) = server.upgrade();
    assert_eq!(presented(&second), second.der);
    server.wait_exit(old, Duration::from_secs(10));
}

/// A new version that cannot load its certificate never gets ready: the
/// upgrade rolls back and the old one serves on with the old certificate.
#[test]
fn a_successor_with_a_broken_certificate_is_rolled_back() {
    let scratch = Scratch::new("tls-certs");
    let cert = Certificate::generate(&scratch.0, "server");
    let server = start("tls-broken", &cert, &[]);
    let old = server.current_pid().unwrap();
    let client = cert.client(&[b"http/1.1"]);
    let mut kept = connect(server.addr, &client).unwrap();

    std::fs::write(&cert.cert, "not a certificate\n").unwrap();
    let mark = server.log_text().len();
    signal(old, rustix::process::Signal::HUP);
    let line = server.wait_log("upgrade failed", mark, Duration::from_secs(20));
    assert!(line.contains("rolled back, still serving"), "{line}");
    assert!(
        server.log_text()[mark..].contains("no certificate in"),
        "the successor said why:\n{}",
        server.log_text()
    );
    assert_eq!(server.current_pid(), Some(old));
    // The connection from before and a new one are both served by it.
    kept.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let response = clients::read_response(&mut kept, &mut Vec::new()).unwrap();
    assert_eq!((response.pid, response.close), (old, false));
    let tls = connect(server.addr, &client).unwrap();
    assert_eq!(tls.conn.peer_certificates().unwrap()[0], cert.der);
}

/// HTTP/2 over TLS, chosen by ALPN: a stream in flight at the upgrade
/// finishes in the old process, then the connection ends by GOAWAY.
#[test]
fn http2_chosen_by_alpn_gets_goaway_and_finishes_its_stream() {
    let scratch = Scratch::new("tls-certs");
    let cert = Certificate::generate(&scratch.0, "server");
    let mut server = start("tls-h2", &cert, &["--startup-delay", "300ms"]);
    let old = server.current_pid().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (addr, config) = (server.addr, cert.client(&[b"h2", b"http/1.1"]));
    let (mut sender, connection) = runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        (sender, tokio::spawn(connection))
    });
    let request = |path: &str| {
        hyper::Request::get(format!("https://localhost{path}"))
            .body(String::new())
            .unwrap()
    };
    let first = runtime.block_on(sender.send_request(request("/"))).unwrap();
    assert_eq!(first.version(), hyper::Version::HTTP_2);
    let slow = runtime.spawn(sender.send_request(request("/slow?ms=1000")));
    let (old_again, _) = server.upgrade();
    assert_eq!(old, old_again);
    runtime.block_on(async {
        let response = slow.await.unwrap().expect("the stream in flight finishes");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-pid"], old.to_string().as_str());
        let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
        assert!(
            matches!(ended, Ok(Ok(Ok(())))),
            "connection ended: {ended:?}"
        );
    });
    server.wait_exit(old, Duration::from_secs(10));
    // Read nothing more: a fresh HTTPS/1.1 request reaches the new version.
    let mut tls = connect(server.addr, &cert.client(&[b"http/1.1"])).unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = tls.read_to_string(&mut text);
    assert!(
        text.contains(&format!("x-pid: {}", server.current_pid().unwrap())),
        "{text}"
    );
}
