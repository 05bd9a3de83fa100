//! `handover run` under a service manager with a file descriptor store: the
//! supervisor and its children all SIGKILLed, the supervisor started again
//! with the stored sockets (as systemd's `Restart=` does), and no client is
//! refused — those who connected meanwhile are answered once the new child is
//! ready. And the proof: started again without them, clients are refused.

mod run_support;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use handover_mechanism::child::{self, Child, Program};
use run_support::fresh::{self, Answer, FreshLoad};
use run_support::*;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

/// What [`crash_and_restart`] saw: the load's answers, the answer of the
/// client that connected while nothing ran, when everything was killed, when
/// the new supervisor was ready, and the service manager.
struct Outage {
    answers: Vec<Answer>,
    meanwhile: Answer,
    killed: Instant,
    ready: Instant,
    manager: ServiceManager,
}

/// One load test at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A stand-in for systemd: a notify socket that keeps what is stored with
/// `FDSTORE=1` under its `FDNAME`, drops what `FDSTOREREMOVE=1` names, and
/// counts `READY=1`.
struct ServiceManager {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    store: BTreeMap<String, OwnedFd>,
    ready: usize,
}

impl ServiceManager {
    fn new(scratch: &Scratch) -> ServiceManager {
        let path = scratch.path("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        ServiceManager {
            socket,
            path,
            store: BTreeMap::new(),
            ready: 0,
        }
    }

    /// Handles one message, if one comes within 100 ms; whether one came.
    fn handle_one(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let Ok(received) = rustix::net::recvmsg(
            &self.socket,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) else {
            return false;
        };
        let mut fds: Vec<OwnedFd> = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        let text = String::from_utf8_lossy(&buf[..received.bytes]).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        let name = lines
            .iter()
            .find_map(|l| l.strip_prefix("FDNAME="))
            .unwrap_or("stored");
        if lines.contains(&"FDSTORE=1") {
            if let Some(fd) = fds.pop() {
                self.store.insert(name.to_owned(), fd);
            }
        }
        if lines.contains(&"FDSTOREREMOVE=1") {
            self.store.remove(name);
        }
        if lines.contains(&"READY=1") {
            self.ready += 1;
        }
        true
    }

    /// Handles messages until `READY=1` number `n` has come.
    fn wait_ready(&mut self, n: usize, log: &std::path::Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ready < n {
            assert!(
                Instant::now() < deadline,
                "no READY=1; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            self.handle_one();
        }
    }

    /// Starts `handover run …` as systemd would: `NOTIFY_SOCKET`, `FDSTORE`,
    /// and, if `with_store`, the stored fds as `LISTEN_FDS`.
    fn start(&self, args: &[String], log: &std::path::Path, with_store: bool) -> Child {
        let mut program = Program::new(HANDOVER);
        program.args = std::iter::once(OsString::from(HANDOVER))
            .chain(args.iter().map(OsString::from))
            .collect();
        let stored: Vec<(&str, std::os::fd::BorrowedFd<'_>)> = if with_store {
            self.store
                .iter()
                .map(|(name, fd)| (name.as_str(), fd.as_fd()))
                .collect()
        } else {
            Vec::new()
        };
        let env = [
            ("NOTIFY_SOCKET", self.path.as_os_str().to_owned()),
            ("FDSTORE", OsString::from("16")),
            ("NO_COLOR", OsString::from("1")),
        ];
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        child::spawn_with_stderr(&program, &stored, &env, Some(stderr.as_fd())).unwrap()
    }
}

/// A free port below the ephemeral range (a load generator's client sockets
/// cannot hold it), so that a supervisor started without the stored socket
/// binds the same address.
fn free_low_port() -> u16 {
    let seed = std::process::id() as u16;
    (0..2000)
        .map(|i| 20_000 + (seed.wrapping_mul(7).wrapping_add(i * 13) % 10_000))
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port")
}

/// SIGKILLs the supervisor and every process below it; waits until all are
/// gone. Returns when that was.
fn kill_everything(supervisor: &Child) -> Instant {
    let mut all = descendants(supervisor.pid());
    all.push(supervisor.pid());
    for &pid in &all {
        signal(pid, rustix::process::Signal::KILL);
    }
    let killed = Instant::now();
    supervisor.kill_and_reap();
    for pid in all {
        wait_until("a killed process to go", Duration::from_secs(10), || {
            exited(pid).then_some(())
        });
    }
    killed
}

/// Starts, kills everything under load, starts again (`with_store`: with the
/// stored sockets). One client connects after every process is gone and
/// before the new supervisor starts: the load alone may happen to have none
/// then (a CI run saw all three clients waiting in the accept queue through
/// the whole outage).
fn crash_and_restart(label: &str, with_store: bool) -> Outage {
    let scratch = Scratch::new(label);
    let mut manager = ServiceManager::new(&scratch);
    let port = free_low_port();
    let log = scratch.path("handover.log");
    let args: Vec<String> = [
        "run",
        "--listen",
        &format!("web=127.0.0.1:{port}"),
        "--pid-file",
        scratch.path("handover.pid").to_str().unwrap(),
        "--ready",
        "notify",
        "--",
        "python3",
        fixture("notify_server.py").to_str().unwrap(),
        "--startup-delay",
        "0.5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let first = manager.start(&args, &log, false);
    manager.wait_ready(1, &log);
    assert!(
        manager.store.keys().any(|name| name.starts_with("web@")),
        "the socket is stored: {:?}",
        manager.store.keys()
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let began = Instant::now();
    let load = FreshLoad::start(addr, 3);
    load.wait_for_answers_after(began, 30);
    let killed = kill_everything(&first);
    // What the dead sent and nobody read yet: a message in the queue holds
    // the fds it carries open.
    while manager.handle_one() {}
    if !with_store {
        // As without a store: the last holder of the socket is gone.
        manager.store.clear();
    }
    let (connected, sent) = std::sync::mpsc::channel();
    let meanwhile = std::thread::spawn(move || {
        fresh::ask_then(addr, || {
            let _ = connected.send(());
        })
    });
    // The client has connected (or been refused) before anything runs again.
    sent.recv_timeout(Duration::from_secs(10))
        .expect("the client connects or is refused");
    let second = manager.start(&args, &log, with_store);
    manager.wait_ready(2, &log);
    let ready = Instant::now();
    load.wait_for_answers_after(ready, 100);
    let answers = load.stop();
    let meanwhile = meanwhile.join().unwrap();
    kill_everything(&second);
    Outage {
        answers,
        meanwhile,
        killed,
        ready,
        manager,
    }
}

#[test]
fn a_supervisor_restarted_with_its_stored_sockets_refuses_nobody() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Outage {
        answers,
        meanwhile,
        killed,
        ready,
        manager,
    } = crash_and_restart("fdstore", true);
    // Lost: only the requests the killed child was serving (one per client at
    // most). Refused: none. Every request begun after the kill answered.
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.pid.is_err()).collect();
    assert!(failed.len() <= 3, "{failed:?}");
    for answer in &failed {
        assert!(answer.started < killed, "begun after the kill: {answer:?}");
    }
    assert!(answers
        .iter()
        .filter(|a| a.started > killed)
        .all(|a| a.pid.is_ok()));
    // The client that connected while nothing ran was answered by the new
    // child.
    assert!(meanwhile.started > killed && meanwhile.started < ready);
    assert!(meanwhile.pid.is_ok(), "{meanwhile:?}");
    assert!(
        manager.store.keys().all(|name| name.starts_with("web@")) && manager.store.len() == 1,
        "one socket stored, under a fresh name: {:?}",
        manager.store.keys()
    );
}

#[test]
fn without_the_stored_sockets_clients_are_refused_meanwhile() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Nothing keeps the socket: the address is closed from the kill until
    // the new supervisor binds it again.
    let outage = crash_and_restart("no-fdstore", false);
    assert!(
        outage
            .meanwhile
            .pid
            .as_ref()
            .is_err_and(|e| e.starts_with("connect")),
        "the client that connected while nothing ran was not refused: {:?}",
        outage.meanwhile
    );
}
