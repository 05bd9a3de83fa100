//! Every failure mode is classified as exactly one kind, and never retried.

mod common;

use std::time::Duration;

use common::{assert_all_failed, canned_server, capped, dead_addr, serve};
use handover_loadgen::{run, FailureKind, Mode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_2xx_is_bad_status_and_connection_is_not_reused() {
    let server = canned_server(
        "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\nx-generation: 2\r\n\r\nboom",
        true,
    )
    .await;
    let report = run(capped(server.addr, 2, 10)).await;
    assert_all_failed(&report, FailureKind::BadStatus(500), 10);
    assert_eq!(
        report
            .distinct_generations()
            .into_iter()
            .collect::<Vec<_>>(),
        ["2"]
    );
    // After a failure the next attempt uses a new connection.
    assert_eq!(report.fresh_connections(), 10);
    assert_eq!(server.accepted(), 10);
    assert_eq!(server.requests(), 10, "no retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_without_response_is_eof() {
    let server = serve(|mut stream, ctx| async move {
        ctx.read_request(&mut stream).await;
        // Dropping the stream with nothing unread sends FIN.
    })
    .await;
    let report = run(capped(server.addr, 2, 6).mode(Mode::Close)).await;
    assert_all_failed(&report, FailureKind::Eof, 6);
    let detail = &report.failures()[0].failure().unwrap().detail;
    assert!(detail.contains("before any response byte"), "{detail}");
    assert_eq!(server.requests(), 6, "no retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_responses_are_eof() {
    for partial in [
        "HTTP/1.1 200 OK\r\ncontent-le",
        "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly a few bytes",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ] {
        let server = canned_server(partial, false).await;
        let report = run(capped(server.addr, 1, 3)).await;
        assert_all_failed(&report, FailureKind::Eof, 3);
        let detail = &report.failures()[0].failure().unwrap().detail;
        assert!(
            detail.contains(&format!("after {} response bytes", partial.len())),
            "{detail}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rst_is_reset() {
    let server = serve(|mut stream, ctx| async move {
        ctx.read_request(&mut stream).await;
        let sock = socket2::SockRef::from(&stream);
        sock.set_linger(Some(Duration::ZERO)).unwrap();
        drop(stream); // SO_LINGER 0: close sends RST
    })
    .await;
    let report = run(capped(server.addr, 2, 6)).await;
    assert_all_failed(&report, FailureKind::Reset, 6);
    assert_eq!(server.requests(), 6, "no retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_refused() {
    let report = run(capped(dead_addr(), 2, 5)).await;
    assert_all_failed(&report, FailureKind::Refused, 5);
    assert_eq!(report.fresh_connections(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_server_is_timeout() {
    let server = serve(|mut stream, ctx| async move {
        ctx.read_request(&mut stream).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(stream);
    })
    .await;
    let timeout = Duration::from_millis(200);
    let report = run(capped(server.addr, 1, 3).request_timeout(timeout)).await;
    assert_all_failed(&report, FailureKind::Timeout, 3);
    for sample in &report.samples {
        assert!(sample.latency >= timeout && sample.latency < Duration::from_secs(1));
        assert!(
            sample.fresh_connection,
            "a timed-out connection is not reused"
        );
    }
    assert_eq!(server.requests(), 3, "no retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparseable_responses_are_malformed() {
    for garbage in [
        "garbage\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: lots\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
    ] {
        let server = canned_server(garbage, true).await;
        let report = run(capped(server.addr, 1, 2)).await;
        assert_all_failed(&report, FailureKind::Malformed, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_head_is_malformed() {
    let server = serve(|mut stream, ctx| async move {
        use tokio::io::AsyncWriteExt;
        ctx.read_request(&mut stream).await;
        let mut head = String::from("HTTP/1.1 200 OK\r\n");
        while head.len() <= handover_loadgen::MAX_HEAD_BYTES {
            head.push_str("x-filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let _ = stream.write_all(head.as_bytes()).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let report = run(capped(server.addr, 1, 1)).await;
    assert_all_failed(&report, FailureKind::Malformed, 1);
}
