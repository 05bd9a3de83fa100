//! A `SIGHUP` upgrade that cannot get the descriptors it needs: it fails with
//! one log line naming the cause, and the old process serves on — its
//! keep-alive connections and new ones — with no successor left and no fd
//! leaked; once descriptors are to be had again, an upgrade works.
//!
//! The limit is the process's soft `RLIMIT_NOFILE`, set on the running
//! server (`prlimit(2)` on its pid) from the fds it holds at rest, measured
//! here: the lowest limit that leaves `room` fd numbers free. (Started under
//! such a limit, hello would have no room for its runtime and clients.)

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use rustix::process::Signal;
use support::clients::read_response;
use support::*;

/// A keep-alive HTTP connection.
struct KeepAlive {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl KeepAlive {
    fn open(server: &Server) -> KeepAlive {
        let stream = TcpStream::connect(server.addr).expect("connecting");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        KeepAlive {
            stream,
            pending: Vec::new(),
        }
    }

    /// `GET /`: the pid that answered.
    fn answered_by(&mut self) -> u32 {
        self.stream
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            .expect("sending a request");
        let response = read_response(&mut self.stream, &mut self.pending).expect("an answer");
        assert_eq!(response.status, 200, "{}", response.body);
        assert!(!response.close, "the connection stays open");
        response.pid
    }
}

#[test]
fn a_sighup_upgrade_under_a_low_fd_limit_fails_with_a_clear_log_line_and_the_old_process_serves_on()
{
    let mut server = Server::start("fd-limit", &[]);
    let pid = server.current_pid().unwrap();
    let mut kept = KeepAlive::open(&server);
    assert_eq!(kept.answered_by(), pid);
    // 1: room for a client's connection, none for the upgrade's second fd
    // (the notify socket takes the one; the state's memfd fails). 3: the
    // upgrade gets that far, and fails at the successor's spawn.
    for room in [1, 3] {
        let rest = fds_at_rest(pid);
        let limit = limit_leaving(&rest, room);
        set_soft_fd_limit(pid, Some(limit));
        let mark = server.log_text().len();
        signal(pid, Signal::HUP);
        let line = server.wait_log("upgrade failed", mark, Duration::from_secs(20));
        let context = format!(
            "room {room} (limit {limit}, fds at rest {rest:?}): {line}\nlog:\n{}",
            server.log_text()
        );
        assert!(
            line.contains("Too many open files") || line.contains("EMFILE"),
            "the cause is named: {context}"
        );
        assert!(
            line.contains("still serving"),
            "and what was kept: {context}"
        );
        assert_eq!(server.current_pid(), Some(pid), "{context}");
        assert_eq!(kept.answered_by(), pid, "{context}");
        assert_eq!(KeepAlive::open(&server).answered_by(), pid, "{context}");
        assert_eq!(
            server.live_processes(),
            [pid],
            "no successor is left: {context}"
        );
        assert_eq!(children_of(pid), Vec::<u32>::new(), "{context}");
        let left = try_wait_until(Duration::from_secs(5), || {
            (fds_at_rest(pid) == rest).then_some(())
        });
        assert!(
            left.is_some(),
            "the failed upgrade left no fd behind: before {rest:?}, after {:?}; {context}",
            fds_of(pid)
        );
        set_soft_fd_limit(
            pid,
            rustix::process::getrlimit(rustix::process::Resource::Nofile).current,
        );
    }
    // Descriptors to be had again: the next upgrade works.
    let (old, new) = server.upgrade();
    assert_eq!(old, pid);
    assert_eq!(KeepAlive::open(&server).answered_by(), new);
    server.wait_exit(old, Duration::from_secs(30));
}
