//! The line protocols (plain TCP, long-lived connections), identities in
//! bodies and lines, the `Host` header and `run_from`, against real servers.

mod common;

use std::time::{Duration, Instant};

use common::{canned_server, capped, serve};
use handover_loadgen::{
    run, run_from, run_until, FailureKind, LiveStats, LoadConfig, Protocol, LINE_STATUS,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A line server: answers each line with `reply(line)`; closes the
/// connection after `limit` replies if given.
async fn line_server(reply: fn(&str) -> String, limit: Option<usize>) -> common::Server {
    serve(move |stream, ctx| async move {
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let mut answered = 0;
        while let Ok(Some(line)) = lines.next_line().await {
            ctx.requests
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if write.write_all(reply(&line).as_bytes()).await.is_err() {
                return;
            }
            answered += 1;
            if limit.is_some_and(|limit| answered >= limit) {
                return;
            }
        }
    })
    .await
}

fn echo(line: &str) -> String {
    format!("{line}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_protocol_opens_a_connection_per_attempt_and_reads_identities() {
    let server = line_server(|_| "pong pid=31 generation=4\r\n".to_owned(), None).await;
    let config = capped(server.addr, 3, 30)
        .protocol(Protocol::Tcp)
        .message("ping\n");
    let report = run(config).await;
    assert_eq!(
        (report.total(), report.successes()),
        (30, 30),
        "{}",
        report.summary()
    );
    assert_eq!(report.fresh_connections(), 30);
    assert_eq!(server.accepted(), 30);
    assert!(report.samples.iter().all(|s| s.outcome
        == handover_loadgen::Outcome::Success {
            status: LINE_STATUS
        }));
    assert_eq!(
        report.distinct_pids().into_iter().collect::<Vec<_>>(),
        ["31"]
    );
    assert_eq!(
        report
            .distinct_generations()
            .into_iter()
            .collect::<Vec<_>>(),
        ["4"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lived_connections_exchange_every_interval() {
    let server = line_server(echo, None).await;
    let config = LoadConfig::new(server.addr)
        .protocol(Protocol::LongLived)
        .connections(2)
        .interval(Duration::from_millis(20))
        .duration(Duration::from_millis(300));
    let report = run(config).await;
    assert_eq!(report.failure_count(), 0, "{}", report.summary());
    assert_eq!((report.fresh_connections(), server.accepted()), (2, 2));
    for worker in 0..2 {
        let n = report.samples.iter().filter(|s| s.worker == worker).count();
        // One exchange at once, then one per 20 ms for 300 ms.
        assert!((8..=16).contains(&n), "worker {worker}: {n} exchanges");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_long_lived_connection_is_one_failure_then_reopened() {
    // The server closes each connection after three replies.
    let server = line_server(echo, Some(3)).await;
    let config = capped(server.addr, 1, 8)
        .protocol(Protocol::LongLived)
        .interval(Duration::from_millis(10));
    let report = run(config).await;
    let outcomes: Vec<(bool, bool)> = report
        .samples
        .iter()
        .map(|s| (s.is_success(), s.fresh_connection))
        .collect();
    let (ok, ok_fresh, failed) = ((true, false), (true, true), (false, false));
    assert_eq!(
        outcomes,
        [ok_fresh, ok, ok, failed, ok_fresh, ok, ok, failed],
        "{:#?}",
        report.first_failures(5)
    );
    for failure in report.failures() {
        let kind = &failure.failure().unwrap().kind;
        assert!(
            matches!(kind, FailureKind::Eof | FailureKind::Reset),
            "{kind}"
        );
    }
    assert_eq!(
        server.accepted(),
        2,
        "no retry: reopened only at the next exchange"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reply_lines_to_one_message_are_a_wrong_count() {
    let server = line_server(|line| format!("{line}\n{line}\n"), None).await;
    let report = run(capped(server.addr, 1, 3).protocol(Protocol::LongLived)).await;
    assert_eq!(
        report.count_of(&FailureKind::Malformed),
        3,
        "{}",
        report.summary()
    );
    assert!(report.first_failures(1)[0].contains("wrong count"));
    assert_eq!(report.fresh_connections(), 3, "each break reopens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_are_read_from_bodies_without_headers() {
    let plain = "HTTP/1.1 200 OK\r\ncontent-length: 32\r\n\r\nhello from pid=4242 generation=7";
    let server = canned_server(plain, true).await;
    let report = run(capped(server.addr, 1, 5)).await;
    assert_eq!(report.successes(), 5, "{}", report.summary());
    assert_eq!(
        report.distinct_pids().into_iter().collect::<Vec<_>>(),
        ["4242"]
    );
    assert_eq!(
        report
            .distinct_generations()
            .into_iter()
            .collect::<Vec<_>>(),
        ["7"]
    );

    // Chunked, the identity split across chunks; a header wins over the body.
    let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-pid: 9\r\n\r\n\
                   6\r\npid=1 \r\n8\r\ngenerati\r\n5\r\non=12\r\n0\r\n\r\n";
    let server = canned_server(chunked, true).await;
    let report = run(capped(server.addr, 1, 5)).await;
    assert_eq!(report.successes(), 5, "{}", report.summary());
    assert_eq!(server.accepted(), 1);
    assert_eq!(
        report.distinct_pids().into_iter().collect::<Vec<_>>(),
        ["9"]
    );
    assert_eq!(
        report
            .distinct_generations()
            .into_iter()
            .collect::<Vec<_>>(),
        ["12"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_is_configurable() {
    let server = serve(|mut stream, ctx| async move {
        while let Some(request) = ctx.read_request(&mut stream).await {
            let status = if request.contains("\r\nHost: app.test:8080\r\n") {
                200
            } else {
                400
            };
            let response = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
            if stream.write_all(response.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let report = run(capped(server.addr, 1, 2).host("app.test:8080")).await;
    assert_eq!(report.successes(), 2, "{}", report.summary());
    let report = run(capped(server.addr, 1, 2)).await;
    assert_eq!(report.count_of(&FailureKind::BadStatus(400)), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_from_uses_the_given_origin() {
    let server = line_server(echo, None).await;
    let origin = Instant::now() - Duration::from_millis(500);
    let config = LoadConfig::new(server.addr)
        .protocol(Protocol::Tcp)
        .duration(Duration::from_millis(700));
    let stop = std::future::pending();
    let report = run_from(origin, config, stop, LiveStats::new()).await;
    assert!(report.total() > 0);
    assert!(report
        .samples
        .iter()
        .all(|s| s.start >= Duration::from_millis(500)));
    assert!(report
        .samples
        .iter()
        .all(|s| s.start < Duration::from_millis(700)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_wakes_long_lived_workers_between_exchanges() {
    let server = line_server(echo, None).await;
    let config = LoadConfig::new(server.addr)
        .protocol(Protocol::LongLived)
        .connections(3)
        .interval(Duration::from_secs(10))
        .duration(Duration::from_secs(30));
    let started = Instant::now();
    let report = run_until(config, tokio::time::sleep(Duration::from_millis(100))).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!((report.total(), report.successes()), (3, 3));
}
