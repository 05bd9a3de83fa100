//! Connections followed over a run, against real servers on 127.0.0.1: the
//! echo check and the per-connection report of long-lived connections
//! (survived, bytes verified, pids), and how HTTP keep-alive connections
//! ended (closed by the server with or without `Connection: close`, kept).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{canned_server, capped, keep_alive_server, serve};
use handover_loadgen::{run, ConnectionEnd, FailureKind, LoadConfig, Protocol, Report};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// What an [`echo_server`] does wrong, on every connection, counting the
/// lines it receives on that connection from 0.
#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    /// Never answers line `n`.
    Drop(usize),
    /// Answers line `n` twice.
    Duplicate(usize),
    /// Answers line `n + 1` before line `n`.
    Swap(usize),
    /// Closes the first connection it accepted after `n` answers.
    CloseFirstAfter(usize),
    /// Closes every connection after `n` answers.
    CloseAfter(usize),
}

/// A server like hello's `--echo` listener: answers each line with
/// `<pid> <line>\n`, where the pid is 100 on the first connection it accepted
/// and 200 on later ones, misbehaving as `fault` says.
async fn echo_server(fault: Fault) -> common::Server {
    let accepted = Arc::new(AtomicUsize::new(0));
    serve(move |stream, _ctx| {
        let nth = accepted.fetch_add(1, Ordering::SeqCst);
        async move {
            let pid = if nth == 0 { 100 } else { 200 };
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let mut held = None;
            let mut index = 0;
            while let Ok(Some(line)) = lines.next_line().await {
                let echo = format!("{pid} {line}\n");
                let reply = match fault {
                    Fault::Drop(n) if index == n => String::new(),
                    Fault::Duplicate(n) if index == n => echo.repeat(2),
                    Fault::Swap(n) if index == n => {
                        held = Some(echo);
                        String::new()
                    }
                    Fault::Swap(n) if index == n + 1 => echo + &held.take().unwrap_or_default(),
                    _ => echo,
                };
                index += 1;
                if write.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
                let close_after = match fault {
                    Fault::CloseFirstAfter(n) if nth == 0 => Some(n),
                    Fault::CloseAfter(n) => Some(n),
                    _ => None,
                };
                if close_after == Some(index) {
                    return;
                }
            }
        }
    })
    .await
}

/// Long-lived load with the echo check: `connections` workers, `exchanges`
/// exchanges in all, `lines` lines each, 5 ms apart.
fn echo_load(addr: std::net::SocketAddr, connections: usize, exchanges: u64) -> LoadConfig {
    capped(addr, connections, exchanges)
        .protocol(Protocol::LongLived)
        .echo_check(true)
        .interval(Duration::from_millis(5))
}

fn first_failure(report: &Report) -> String {
    report
        .first_failures(1)
        .pop()
        .unwrap_or_else(|| panic!("no failure: {}", report.summary()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echo_server_answering_correctly_has_every_byte_verified_and_one_pid() {
    let server = echo_server(Fault::None).await;
    let report = run(echo_load(server.addr, 1, 20).message("ping\n")).await;
    assert_eq!(report.failure_count(), 0, "{}", report.summary());
    assert_eq!(report.total(), 20);
    let [conn] = &report.line_connections[..] else {
        panic!("one connection per worker: {:?}", report.line_connections);
    };
    assert!(conn.survived(), "{conn:?}");
    assert_eq!((conn.opened, conn.exchanges, conn.failures), (1, 20, 0));
    // Lines c0-1 … c0-20, each "c0-N ping\n".
    let expected: u64 = (1..=20)
        .map(|n| format!("c0-{n} ping\n").len() as u64)
        .sum();
    assert_eq!((conn.bytes_sent, conn.bytes_verified), (expected, expected));
    assert_eq!(conn.pids, ["100"]);
    assert_eq!(
        report.distinct_pids().into_iter().collect::<Vec<_>>(),
        ["100"]
    );
    let totals = report.long_lived_totals().unwrap();
    assert_eq!(
        totals.to_string(),
        format!(
            "long-lived connections: 1, survived every upgrade (never reopened, no failure): 1; \
             served by more than one pid: 0; bytes verified in order: {expected}"
        )
    );
    assert!(report.summary().contains(&totals.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_lines_per_exchange_are_all_verified() {
    let server = echo_server(Fault::None).await;
    let config = echo_load(server.addr, 2, 10).lines_per_exchange(4);
    let report = run(config).await;
    assert_eq!(report.failure_count(), 0, "{}", report.summary());
    assert_eq!(server.accepted(), 2);
    for conn in &report.line_connections {
        assert!(conn.survived(), "{conn:?}");
        assert!(conn.bytes_verified > 0);
        assert_eq!(conn.bytes_verified, conn.bytes_sent, "{conn:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_line_is_malformed_naming_the_expected_and_received_seq() {
    // Three lines per exchange; the server never answers the second one.
    let server = echo_server(Fault::Drop(1)).await;
    let report = run(echo_load(server.addr, 1, 1).lines_per_exchange(3)).await;
    assert_eq!(
        report.count_of(&FailureKind::Malformed),
        1,
        "{}",
        report.summary()
    );
    let failure = first_failure(&report);
    assert!(
        failure.contains("expected seq 2, received seq 3"),
        "{failure}"
    );
    assert!(failure.contains("lost"), "{failure}");
    let conn = &report.line_connections[0];
    assert!(!conn.survived());
    assert!(!conn.closed_by_server, "a wrong echo is not a close");
    // Only the first line came back in order.
    assert_eq!(conn.bytes_verified, "c0-1 ping\n".len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_line_is_malformed_naming_the_expected_and_received_seq() {
    let server = echo_server(Fault::Duplicate(0)).await;
    let report = run(echo_load(server.addr, 1, 1).lines_per_exchange(2)).await;
    let failure = first_failure(&report);
    assert!(failure.starts_with("Malformed"), "{failure}");
    assert!(
        failure.contains("expected seq 2, received seq 1"),
        "{failure}"
    );
    assert!(failure.contains("duplicated"), "{failure}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_lines_are_malformed_naming_the_expected_and_received_seq() {
    let server = echo_server(Fault::Swap(0)).await;
    let report = run(echo_load(server.addr, 1, 1).lines_per_exchange(2)).await;
    let failure = first_failure(&report);
    assert!(failure.starts_with("Malformed"), "{failure}");
    assert!(
        failure.contains("expected seq 1, received seq 2"),
        "{failure}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_duplicated_across_exchanges_shows_in_the_next_exchange() {
    // One line per exchange: the duplicate answer of line 3 is read as the
    // answer to line 4 (unless it arrived with the first copy: a wrong count).
    let server = echo_server(Fault::Duplicate(2)).await;
    let report = run(echo_load(server.addr, 1, 5)).await;
    assert_eq!(report.count_of(&FailureKind::Malformed), 1);
    let failure = first_failure(&report);
    assert!(
        failure.contains("expected seq 4, received seq 3") || failure.contains("wrong count"),
        "{failure}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_closes_once_is_counted_as_reopened_and_not_survived() {
    // The first connection is closed after three answers; the new one is
    // served by another pid.
    let server = echo_server(Fault::CloseFirstAfter(3)).await;
    let report = run(echo_load(server.addr, 1, 8)).await;
    assert_eq!(report.failure_count(), 1, "{}", report.summary());
    let kind = &report.failures()[0].failure().unwrap().kind;
    assert!(
        matches!(kind, FailureKind::Eof | FailureKind::Reset),
        "{kind}"
    );
    let conn = &report.line_connections[0];
    assert_eq!((conn.opened, conn.exchanges, conn.failures), (2, 8, 1));
    assert!(conn.closed_by_server && !conn.closed_after_last_exchange);
    assert!(!conn.survived());
    assert_eq!(conn.pids, ["100", "200"], "in the order seen");
    assert!(conn.bytes_verified < conn.bytes_sent, "{conn:?}");
    let totals = report.long_lived_totals().unwrap();
    assert_eq!(
        (
            totals.survived,
            totals.reopened,
            totals.served_by_more_than_one_pid
        ),
        (0, 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_after_its_last_exchange_did_not_survive() {
    let server = echo_server(Fault::CloseAfter(3)).await;
    let report = run(echo_load(server.addr, 1, 3)).await;
    assert_eq!(report.failure_count(), 0, "{}", report.summary());
    let conn = &report.line_connections[0];
    assert!(conn.closed_after_last_exchange, "{conn:?}");
    assert!(conn.closed_by_server && !conn.survived());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_echo_check_any_line_passes_and_an_echo_prefix_still_gives_the_pid() {
    let server = echo_server(Fault::None).await;
    let long_lived = |addr| {
        capped(addr, 1, 5)
            .protocol(Protocol::LongLived)
            .interval(Duration::from_millis(5))
    };
    let report = run(long_lived(server.addr)).await;
    assert_eq!(report.failure_count(), 0, "{}", report.summary());
    let conn = &report.line_connections[0];
    assert_eq!(conn.pids, ["100"], "from the `100 ping` replies");
    assert_eq!(
        conn.bytes_verified, 0,
        "nothing is verified without the check"
    );
    assert_eq!(conn.bytes_sent, 5 * "ping\n".len() as u64);

    // A server that does not echo: fine without the check, not with it.
    let pong = serve(|stream, _ctx| async move {
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        while let Ok(Some(_)) = lines.next_line().await {
            if write.write_all(b"pong\n").await.is_err() {
                return;
            }
        }
    })
    .await;
    let report = run(long_lived(pong.addr)).await;
    assert_eq!(report.failure_count(), 0, "{}", report.summary());
    assert!(report.line_connections[0].pids.is_empty());
    let report = run(long_lived(pong.addr).echo_check(true)).await;
    assert_eq!(report.count_of(&FailureKind::Malformed), 5);
    let failure = first_failure(&report);
    assert!(
        failure.contains("expected \"<pid> c0-1 ping\", received \"pong\""),
        "{failure}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_connections_each_exchanging_every_20ms_all_survive() {
    let server = echo_server(Fault::None).await;
    let config = LoadConfig::new(server.addr)
        .protocol(Protocol::LongLived)
        .echo_check(true)
        .connections(200)
        .interval(Duration::from_millis(20))
        .duration(Duration::from_millis(600));
    let started = Instant::now();
    let report = run(config).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(report.failure_count(), 0, "{}", report.summary());
    let totals = report.long_lived_totals().unwrap();
    assert_eq!((totals.connections, totals.survived), (200, 200));
    assert_eq!(totals.bytes_verified, totals.bytes_sent);
    // At least a few exchanges per connection, even on a slow machine.
    assert!(report.total() >= 200 * 5, "{}", report.summary());
}

/// A keep-alive server that answers `per_connection` requests on each
/// connection, the last one with `Connection: close` if `announce`, then
/// closes; the pid in `x-pid` goes from 1 to 2 after the first response.
async fn closing_server(per_connection: usize, announce: bool) -> common::Server {
    serve(move |mut stream, ctx| async move {
        for answered in 0..per_connection {
            if ctx.read_request(&mut stream).await.is_none() {
                return;
            }
            let last = answered + 1 == per_connection;
            let close = if last && announce {
                "connection: close\r\n"
            } else {
                ""
            };
            let pid = if answered == 0 { 1 } else { 2 };
            let response =
                format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-pid: {pid}\r\n{close}\r\nok");
            if stream.write_all(response.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_closed_with_connection_close_is_counted_as_announced() {
    let server = closing_server(2, true).await;
    let report = run(capped(server.addr, 1, 6)).await;
    assert_eq!(report.failure_count(), 0, "{}", report.summary());
    let ends: Vec<_> = report
        .keep_alive_connections
        .iter()
        .map(|c| c.end)
        .collect();
    assert_eq!(ends, [ConnectionEnd::ClosedAnnounced; 3]);
    for conn in &report.keep_alive_connections {
        assert_eq!(conn.responses, 2);
        assert_eq!(conn.pids, ["1", "2"], "in the order seen");
    }
    let totals = report.keep_alive_totals().unwrap();
    assert_eq!(
        totals.to_string(),
        "keep-alive connections: opened 3, closed by the server 3 (announced with \
         Connection: close: 3, without: 0), kept to the end: 0, dropped by the client \
         after a failure: 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_closed_without_announcement_is_counted_as_unannounced() {
    // Two answers, then the connection is closed: the third request fails.
    let server = closing_server(2, false).await;
    let report = run(capped(server.addr, 1, 6)).await;
    assert_eq!(report.failure_count(), 2, "{}", report.summary());
    let ends: Vec<_> = report
        .keep_alive_connections
        .iter()
        .map(|c| c.end)
        .collect();
    assert_eq!(ends, [ConnectionEnd::ClosedUnannounced; 2]);
    let totals = report.keep_alive_totals().unwrap();
    assert_eq!(
        (
            totals.closed_by_server,
            totals.closed_unannounced,
            totals.kept
        ),
        (2, 2, 0)
    );

    // Closed after the last request of the run: found at the end.
    let report = run(capped(server.addr, 1, 2)).await;
    assert_eq!(report.failure_count(), 0, "{}", report.summary());
    let ends: Vec<_> = report
        .keep_alive_connections
        .iter()
        .map(|c| c.end)
        .collect();
    assert_eq!(ends, [ConnectionEnd::ClosedUnannounced]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_the_server_keeps_is_counted_as_kept() {
    let server = keep_alive_server().await;
    let report = run(capped(server.addr, 2, 20)).await;
    assert_eq!(report.failure_count(), 0, "{}", report.summary());
    assert_eq!(report.keep_alive_connections.len(), 2);
    for conn in &report.keep_alive_connections {
        assert_eq!(conn.end, ConnectionEnd::Kept);
        assert_eq!(conn.pids, ["4242"]);
    }
    let responses: u64 = report
        .keep_alive_connections
        .iter()
        .map(|c| c.responses)
        .sum();
    assert_eq!(responses, 20);
    let totals = report.keep_alive_totals().unwrap();
    assert_eq!(
        (totals.opened, totals.kept, totals.closed_by_server),
        (2, 2, 0)
    );
    assert!(report.summary().contains("kept to the end: 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_given_up_after_a_bad_status_is_counted_as_dropped() {
    let server = canned_server(
        "HTTP/1.1 503 Busy\r\ncontent-length: 0\r\nx-pid: 3\r\n\r\n",
        true,
    )
    .await;
    let report = run(capped(server.addr, 1, 2)).await;
    let ends: Vec<_> = report
        .keep_alive_connections
        .iter()
        .map(|c| c.end)
        .collect();
    assert_eq!(ends, [ConnectionEnd::DroppedAfterFailure; 2]);
    assert_eq!(report.keep_alive_connections[0].pids, ["3"]);
    // Close mode opens a connection per request: nothing to follow.
    let close = capped(server.addr, 1, 2).mode(handover_loadgen::Mode::Close);
    let report = run(close).await;
    assert!(report.keep_alive_connections.is_empty());
    assert_eq!(report.keep_alive_totals(), None);
}
