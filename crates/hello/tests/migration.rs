//! Live connection migration in `hello`: echo connections and keep-alive HTTP
//! connections move to each new version (re-exec and takeover alike) and
//! never close; and what happens when the successor dies, runs out of
//! descriptors, or the old one dies.

mod support;

use std::io::Write;
use std::time::Duration;

use rustix::process::Signal;
use support::clients::{echo_clients, keep_alive_clients, read_response, Seen};
use support::*;

/// One test at a time: they load the machine (2 cores).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A hello with an HTTP and an echo listener, serving takeovers; its echo address.
fn start(label: &str, extra: &[&str]) -> (Takeover, std::net::SocketAddr) {
    let mut args = vec!["--echo", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let takeover = Takeover::start(label, &args);
    let echo = takeover.server.listening("tcp");
    (takeover, echo)
}

/// Upgrade number `n`: a re-exec (SIGHUP) when even, a takeover when odd;
/// waits until the old process has exited. Returns the new pid.
fn upgrade(takeover: &mut Takeover, n: usize, extra: &[&str]) -> u32 {
    if n % 2 == 0 {
        let (old, new) = takeover.server.upgrade();
        takeover.server.wait_exit(old, Duration::from_secs(30));
        new
    } else {
        takeover.take_over(extra).1
    }
}

fn describe(seen: &[Seen]) -> String {
    let broken: Vec<_> = seen
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.broken.as_ref().map(|b| format!("#{i}: {b}")))
        .take(5)
        .collect();
    format!("{} connections; first broken: {broken:?}", seen.len())
}

#[test]
fn echo_connections_live_through_twenty_upgrades_in_order_and_served_by_every_version() {
    let _turn = turn();
    let (mut takeover, echo) = start("migrate-echo", &[]);
    let clients = echo_clients(echo, 200, Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(300));
    let mut pids = vec![takeover.server.current_pid().unwrap()];
    for n in 0..20 {
        pids.push(upgrade(&mut takeover, n, &["--echo", "127.0.0.1:0"]));
        std::thread::sleep(Duration::from_millis(150));
    }
    let seen = clients.stop();
    let summary = describe(&seen);
    assert!(
        seen.iter().all(|s| s.broken.is_none()),
        "{summary}\nlog:\n{}",
        takeover.server.log_text()
    );
    for (i, s) in seen.iter().enumerate() {
        assert!(s.verified > 20, "#{i} verified only {} replies", s.verified);
        assert!(
            s.pids.len() > 1,
            "#{i} was served by one pid only: {:?}",
            s.pids
        );
        assert!(
            s.pids.iter().all(|pid| pids.contains(pid)),
            "#{i}: {:?} not among {pids:?}",
            s.pids
        );
    }
    let most = seen.iter().map(|s| s.pids.len()).max().unwrap_or(0);
    assert!(most >= 15, "connections saw at most {most} of 21 versions");
    assert_eq!(
        takeover.history(),
        pids,
        "the history survived every upgrade"
    );
}

#[test]
fn keep_alive_http_connections_are_never_closed_and_are_answered_by_several_versions() {
    let _turn = turn();
    let (mut takeover, _) = start("migrate-http", &[]);
    let clients = keep_alive_clients(takeover.server.addr, 8);
    std::thread::sleep(Duration::from_millis(200));
    for n in 0..20 {
        upgrade(&mut takeover, n, &["--echo", "127.0.0.1:0"]);
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = clients.stop();
    let summary = describe(&seen);
    assert!(seen.iter().all(|s| s.broken.is_none()), "{summary}");
    assert!(seen.iter().all(|s| s.told_to_close == 0), "{summary}");
    for (i, s) in seen.iter().enumerate() {
        assert!(
            s.pids.len() >= 10,
            "#{i}: one connection, answered by only {:?}",
            s.pids
        );
    }
}

#[test]
fn without_migration_keep_alive_connections_are_told_to_close() {
    let _turn = turn();
    let (mut takeover, _) = start("migrate-off", &["--no-migration"]);
    let clients = keep_alive_clients(takeover.server.addr, 8);
    std::thread::sleep(Duration::from_millis(200));
    upgrade(&mut takeover, 0, &[]);
    let seen = clients.stop();
    // The clients never reconnect: each one ends at the Connection: close.
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.told_to_close, 1, "#{i}: {s:?}");
        assert_eq!(s.pids.len(), 1, "#{i}: {s:?}");
    }
}

#[test]
fn a_partly_read_pipelined_request_travels_with_its_connection() {
    let _turn = turn();
    let (mut takeover, _) = start("migrate-pipelined", &[]);
    let old = takeover.server.current_pid().unwrap();
    let mut stream = std::net::TcpStream::connect(takeover.server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let second = b"GET /history HTTP/1.1\r\nHost: t\r\n\r\n";
    let (first_half, second_half) = second.split_at(12);
    // A whole request, then the start of the next one, in one write: the
    // old process answers the first and has read part of the second.
    let mut bytes = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
    bytes.extend_from_slice(first_half);
    stream.write_all(&bytes).unwrap();
    let mut pending = Vec::new();
    let first = read_response(&mut stream, &mut pending).unwrap();
    assert_eq!((first.status, first.pid), (200, old));
    assert!(first.body.starts_with("hello from"), "{}", first.body);
    let new = upgrade(&mut takeover, 0, &[]);
    // The old process is gone: whatever it had read came with the connection.
    stream.write_all(second_half).unwrap();
    let answer = read_response(&mut stream, &mut pending).unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body.lines().collect::<Vec<_>>(),
        [old.to_string(), new.to_string()],
        "the second request, answered by the new version"
    );
    assert!(!answer.close);
}

#[test]
fn pipelined_requests_across_migrations_are_answered_in_order() {
    let _turn = turn();
    let (mut takeover, _) = start("migrate-pipeline-order", &[]);
    let addr = takeover.server.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || -> Result<(u64, Vec<u32>), String> {
            let mut stream = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            let (mut pending, mut pairs, mut pids) = (Vec::new(), 0u64, Vec::new());
            let started = std::time::Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(120)
            {
                stream
                    .write_all(
                        b"GET / HTTP/1.1\r\nHost: t\r\n\r\nGET /history HTTP/1.1\r\nHost: t\r\n\r\n",
                    )
                    .map_err(|e| e.to_string())?;
                let a = read_response(&mut stream, &mut pending)?;
                let b = read_response(&mut stream, &mut pending)?;
                if !a.body.starts_with("hello from") || b.body.starts_with("hello from") {
                    return Err(format!("out of order: {:?} then {:?}", a.body, b.body));
                }
                if a.close || b.close {
                    return Err("told to close".into());
                }
                if pids.last() != Some(&a.pid) {
                    pids.push(a.pid);
                }
                pairs += 1;
            }
            Ok((pairs, pids))
        })
    };
    for n in 0..10 {
        upgrade(&mut takeover, n, &["--echo", "127.0.0.1:0"]);
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (pairs, pids) = client.join().unwrap().expect("the pipelining client");
    assert!(pairs > 20, "{pairs} pairs");
    assert!(pids.len() >= 5, "answered by {pids:?}");
}

/// Starts the next version (with an echo listener) by takeover and waits for
/// `line` in the log; its pid.
fn launch_until(takeover: &mut Takeover, line: &str) -> u32 {
    let mark = takeover.server.log_text().len();
    let child = takeover.launch(&["--echo", "127.0.0.1:0"]);
    let new = child.id();
    drop(child);
    takeover.server.pids.push(new);
    takeover
        .server
        .wait_log(line, mark, Duration::from_secs(30));
    new
}

/// Starts 150 echo connections and waits until each has a reply.
fn settle_echo(echo: std::net::SocketAddr) -> support::clients::Clients {
    let clients = echo_clients(echo, 150, Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(500));
    clients
}

#[test]
fn a_successor_out_of_descriptors_takes_what_fits_and_the_old_one_keeps_the_rest() {
    let _turn = turn();
    let (mut takeover, echo) = start("migrate-fd-limit", &[]);
    let old = takeover.server.current_pid().unwrap();
    let http = keep_alive_clients(takeover.server.addr, 8);
    let clients = settle_echo(echo);
    // Room for some 40 more descriptors in the new process, not 158.
    takeover.wrapper = vec!["prlimit".into(), "--nofile=96:96".into()];
    let new = launch_until(&mut takeover, "no more connections migrate");
    std::thread::sleep(Duration::from_millis(500));
    let seen = clients.stop();
    let http = http.stop();
    assert!(
        seen.iter().all(|s| s.broken.is_none()),
        "{}",
        describe(&seen)
    );
    let moved = seen.iter().filter(|s| s.pids.last() == Some(&new)).count();
    let kept = seen.iter().filter(|s| s.pids.last() == Some(&old)).count();
    assert!(moved > 0 && kept > 0, "moved {moved}, kept {kept}");
    assert_eq!(moved + kept, seen.len());
    // HTTP keep-alive: migrated, or told to close by the old one; never failed.
    for s in &http {
        assert!(
            s.broken.is_none() || s.told_to_close == 1,
            "{s:?}\nlog:\n{}",
            takeover.server.log_text()
        );
    }
}

#[test]
fn connections_the_successor_took_die_with_it_and_the_others_stay_with_the_old_one() {
    let _turn = turn();
    let (mut takeover, echo) = start("migrate-successor-dies", &[]);
    let old = takeover.server.current_pid().unwrap();
    let clients = settle_echo(echo);
    takeover.wrapper = vec!["prlimit".into(), "--nofile=96:96".into()];
    let new = launch_until(&mut takeover, "no more connections migrate");
    std::thread::sleep(Duration::from_millis(200));
    signal(new, Signal::KILL);
    takeover.server.wait_exit(new, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let seen = clients.stop();
    for (i, s) in seen.iter().enumerate() {
        if s.pids.contains(&new) {
            assert!(
                s.broken.is_some(),
                "#{i} was taken and must die with {new}: {s:?}"
            );
        } else {
            assert!(
                s.broken.is_none(),
                "#{i} stayed with {old} and works: {s:?}"
            );
            assert_eq!(s.pids, [old]);
        }
    }
    let taken = seen.iter().filter(|s| s.pids.contains(&new)).count();
    assert!(taken > 0 && taken < seen.len(), "{taken} taken");
}

#[test]
fn connections_already_taken_live_on_when_the_old_process_is_killed() {
    let _turn = turn();
    let (mut takeover, echo) = start("migrate-old-dies", &[]);
    let old = takeover.server.current_pid().unwrap();
    // A slow request keeps the old one alive after its connections moved.
    let slow = std::thread::spawn({
        let addr = takeover.server.addr;
        move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            let _ = stream.write_all(b"GET /slow?ms=20000 HTTP/1.1\r\nHost: t\r\n\r\n");
            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
            let _ = read_response(&mut stream, &mut Vec::new());
        }
    });
    let clients = settle_echo(echo);
    let new = launch_until(&mut takeover, "migrated connections");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!exited(old), "the slow request keeps {old} alive");
    signal(old, Signal::KILL);
    takeover.server.wait_exit(old, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let seen = clients.stop();
    assert!(
        seen.iter().all(|s| s.broken.is_none()),
        "{}",
        describe(&seen)
    );
    assert!(seen.iter().all(|s| s.pids.last() == Some(&new)));
    slow.join().unwrap();
}
