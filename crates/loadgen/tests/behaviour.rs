//! Connection reuse, framing, bounds and the blocking API against real servers.

mod common;

use std::time::{Duration, Instant};

use common::{canned_server, capped, keep_alive_server, serve};
use handover_loadgen::{run, run_until, FailureKind, LoadConfig, LoadThread, Mode};
use tokio::io::AsyncWriteExt;

fn assert_no_failures(report: &handover_loadgen::Report) {
    assert_eq!(report.failure_count(), 0, "{:#?}", report.first_failures(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_reuses_connections_without_failures() {
    let server = keep_alive_server().await;
    let report = run(capped(server.addr, 4, 200)).await;
    assert_eq!(report.total(), 200);
    assert_no_failures(&report);
    assert_eq!(report.fresh_connections(), 4, "one connection per worker");
    assert_eq!(server.accepted(), 4);
    assert_eq!(server.requests(), 200);
    assert_eq!(
        report
            .distinct_generations()
            .into_iter()
            .collect::<Vec<_>>(),
        ["7"]
    );
    assert_eq!(
        report.distinct_pids().into_iter().collect::<Vec<_>>(),
        ["4242"]
    );
    let (p50, max) = (
        report.percentile(50.0).unwrap(),
        report.percentile(100.0).unwrap(),
    );
    assert!(p50 <= max && max < Duration::from_secs(1));
    assert_eq!(report.percentile(101.0), None);
    assert!(
        report.summary().contains("200 requests"),
        "{}",
        report.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_are_read_exactly() {
    let response = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-generation: 9\r\n\r\n\
                    5;ext=1\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: t\r\n\r\n";
    let server = canned_server(response, true).await;
    let report = run(capped(server.addr, 1, 20)).await;
    assert_eq!(report.total(), 20);
    assert_no_failures(&report);
    // If the body were mis-framed, the next response on the connection would break.
    assert_eq!(server.accepted(), 1);
    assert_eq!(
        report
            .distinct_generations()
            .into_iter()
            .collect::<Vec<_>>(),
        ["9"]
    );

    // The same response dribbled out in tiny segments.
    let server = serve(move |mut stream, ctx| async move {
        stream.set_nodelay(true).unwrap();
        while ctx.read_request(&mut stream).await.is_some() {
            for piece in response.as_bytes().chunks(3) {
                stream.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
    })
    .await;
    let report = run(capped(server.addr, 1, 5)).await;
    assert_eq!(report.total(), 5);
    assert_no_failures(&report);
    assert_eq!(server.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_response_means_new_connection_next() {
    for (response, what) in [
        (
            "HTTP/1.1 200 OK\r\nConnection: Close\r\ncontent-length: 2\r\n\r\nok",
            "close+length",
        ),
        (
            "HTTP/1.1 200 OK\r\nconnection: keep-alive, close\r\n\r\nbody to eof",
            "close+eof",
        ),
        ("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", "http/1.0"),
        (
            "HTTP/1.1 200 OK\r\n\r\nunframed body ends with the connection",
            "unframed",
        ),
    ] {
        let server = canned_server(response, false).await;
        let report = run(capped(server.addr, 1, 10)).await;
        assert_eq!(report.total(), 10, "{what}");
        assert_no_failures(&report);
        assert_eq!(report.fresh_connections(), 10, "{what}");
        assert_eq!(server.accepted(), 10, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_closing_kept_connection_is_a_failure_not_retried() {
    // Responds without `Connection: close`, then closes the connection anyway.
    let server = canned_server("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false).await;
    let report = run(capped(server.addr, 1, 10)).await;
    assert_eq!(report.total(), 10);
    for (i, sample) in report.samples.iter().enumerate() {
        if i % 2 == 0 {
            assert!(
                sample.is_success() && sample.fresh_connection,
                "{}",
                sample.describe()
            );
        } else {
            let kind = &sample
                .failure()
                .expect("reuse of a closed connection fails")
                .kind;
            assert!(
                matches!(kind, FailureKind::Eof | FailureKind::Reset),
                "{kind}"
            );
            assert!(!sample.fresh_connection, "{}", sample.describe());
        }
    }
    assert_eq!((report.successes(), report.failure_count()), (5, 5));
    assert_eq!(server.accepted(), 5, "no retry on a new connection");
    assert_eq!(server.requests(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_caps_total_exactly() {
    let server = keep_alive_server().await;
    let report = run(capped(server.addr, 8, 37)).await;
    assert_eq!(report.total(), 37);
    assert_no_failures(&report);
    assert_eq!(server.requests(), 37);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_and_mixed_modes_use_connections_as_configured() {
    let server = keep_alive_server().await;
    let report = run(capped(server.addr, 3, 12).mode(Mode::Close)).await;
    assert_no_failures(&report);
    assert_eq!((report.total(), report.fresh_connections()), (12, 12));
    assert_eq!(server.accepted(), 12);
    // Even if the server would keep the connection open.
    let server = canned_server("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", true).await;
    let report = run(capped(server.addr, 1, 5).mode(Mode::Close)).await;
    assert_no_failures(&report);
    assert_eq!((report.fresh_connections(), server.accepted()), (5, 5));

    let server = keep_alive_server().await;
    let report = run(capped(server.addr, 2, 40).mode(Mode::Mixed)).await;
    assert_no_failures(&report);
    let fresh = |w| {
        report
            .samples
            .iter()
            .filter(|s| s.worker == w && s.fresh_connection)
            .count()
    };
    let total = |w| report.samples.iter().filter(|s| s.worker == w).count();
    assert_eq!(fresh(0), 1, "even worker keeps its connection");
    assert_eq!(fresh(1), total(1), "odd worker opens one per request");
    assert_eq!(server.accepted(), 1 + total(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_bounds_the_run_and_in_flight_requests_are_counted() {
    let server = keep_alive_server().await;
    let duration = Duration::from_millis(300);
    let report = run(LoadConfig::new(server.addr)
        .connections(2)
        .duration(duration))
    .await;
    assert_no_failures(&report);
    assert!(report.total() > 10, "{}", report.summary());
    assert!(report.elapsed >= duration && report.elapsed < Duration::from_secs(2));
    assert!(report.samples.iter().all(|s| s.start < duration));

    // A request in flight at the deadline finishes and is counted.
    let slow = serve(|mut stream, ctx| async move {
        while ctx.read_request(&mut stream).await.is_some() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let ok = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
            if stream.write_all(ok.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let config = LoadConfig::new(slow.addr).duration(Duration::from_millis(100));
    let report = run(config).await;
    assert_eq!(
        (report.total(), report.successes()),
        (1, 1),
        "{}",
        report.summary()
    );
    assert!(report.samples[0].latency >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_until_stops_early() {
    let server = keep_alive_server().await;
    let config = LoadConfig::new(server.addr).duration(Duration::from_secs(30));
    let started = Instant::now();
    let report = run_until(config, tokio::time::sleep(Duration::from_millis(200))).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(report.total() > 0);
    assert_no_failures(&report);
}

#[test]
fn load_thread_stop_and_join() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(keep_alive_server());

    let load = LoadThread::start(LoadConfig::new(server.addr).connections(2));
    let stats = load.stats();
    assert!(stats.wait_for_successes(50, Duration::from_secs(5)));
    let report = load.stop();
    assert!(report.successes() >= 50);
    assert_no_failures(&report);
    assert_eq!(stats.attempts(), report.total() as u64);
    assert_eq!(stats.successes(), report.successes() as u64);
    assert_eq!(stats.failures(), 0);

    let load = LoadThread::start(capped(server.addr, 3, 25));
    let report = load.join();
    assert_eq!(report.total(), 25);
    assert_no_failures(&report);
}
