//! `handover run` when an upgrade cannot get the descriptors it needs: the
//! upgrade fails with the cause, the current child serves on, the supervisor
//! stays and upgrades again once descriptors are to be had.
//!
//! The limit is the supervisor's soft `RLIMIT_NOFILE`, set on the running
//! supervisor (`prlimit(2)` on its pid) from the fds it holds at rest,
//! measured here: the lowest limit that leaves `room` fd numbers free. A
//! supervisor *started* that tight never gets going: its first child needs the
//! very descriptors an upgrade's child needs (the start-up fails with
//! "cannot start python3: Too many open files").

mod run_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use run_support::http::Connection;
use run_support::*;

/// `handover upgrade`, killed (by pid) if it has not returned within 20 s:
/// its exit code (`None`: killed) and what it said.
fn bounded_upgrade(supervisor: &Supervisor) -> (Option<i32>, String) {
    let out = supervisor.scratch.path("upgrade.out");
    let file = std::fs::File::create(&out).unwrap();
    let mut child = spawn(
        Command::new(HANDOVER)
            .arg("upgrade")
            .arg("--pid-file")
            .arg(&supervisor.pid_file)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status.code().unwrap_or(-1));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (code, std::fs::read_to_string(&out).unwrap_or_default())
}

/// The pid that answered `GET /` on `connection`.
fn answered_by(connection: &mut Connection) -> u32 {
    let response = connection.get("/").expect("an answer");
    assert_eq!(response.status, 200);
    response
        .header("x-pid")
        .and_then(|pid| pid.parse().ok())
        .expect("an x-pid header")
}

fn start() -> Supervisor {
    Supervisor::start(
        "fd-limit",
        &["--ready", "notify", "--probation", "0"],
        &["python3", fixture("notify_server.py").to_str().unwrap()],
    )
}

/// With `room` free fd numbers under the supervisor's limit, `handover
/// upgrade` fails naming the cause, and nothing else changes: the same child
/// answers on an old and on a new connection, no new child is left, the
/// supervisor runs, answers `status` and holds the fds it held before.
fn upgrade_fails_for_lack_of_fds(supervisor: &mut Supervisor, room: u64) {
    let sup = supervisor.process.id();
    let current = supervisor.current_pid();
    let mut kept = Connection::open(supervisor.addr);
    assert_eq!(answered_by(&mut kept), current);
    let rest = fds_at_rest(sup);
    let limit = limit_leaving(&rest, room);
    set_soft_fd_limit(sup, Some(limit));

    let (code, said) = bounded_upgrade(supervisor);
    let context = format!(
        "room {room} (limit {limit}, fds at rest {rest:?}): `handover upgrade` exited {code:?} \
         and said:\n{said}\nsupervisor log:\n{}",
        supervisor.log_text()
    );
    assert!(code.is_some(), "no answer within 20 s: {context}");
    assert_ne!(code, Some(0), "{context}");
    assert!(
        said.contains("Too many open files") || said.contains("EMFILE"),
        "the cause is named: {context}"
    );
    assert!(said.contains("the old child keeps serving"), "{context}");

    assert_eq!(answered_by(&mut kept), current, "{context}");
    assert_eq!(
        answered_by(&mut Connection::open(supervisor.addr)),
        current,
        "{context}"
    );
    assert!(
        matches!(supervisor.process.try_wait(), Ok(None)),
        "the supervisor still runs: {context}"
    );
    assert!(
        supervisor.status().is_some(),
        "the supervisor answers `status` under the limit: {context}"
    );
    assert_eq!(supervisor.current_pid(), current, "{context}");
    assert_eq!(
        descendants(sup),
        [current],
        "no new child is left: {context}"
    );
    let after = try_wait_until(Duration::from_secs(5), || {
        let now = fds_at_rest(sup);
        (now == rest).then_some(())
    });
    assert!(
        after.is_some(),
        "the failed upgrade left no fd behind: before {rest:?}, after {:?}; {context}",
        fds_of(sup)
    );
    set_soft_fd_limit(
        sup,
        rustix::process::getrlimit(rustix::process::Resource::Nofile).current,
    );
}

/// Once descriptors are to be had again, an upgrade works.
fn upgrade_works_again(supervisor: &mut Supervisor) {
    assert!(
        matches!(supervisor.process.try_wait(), Ok(None)),
        "the supervisor still runs"
    );
    let old = supervisor.current_pid();
    let (code, said) = bounded_upgrade(supervisor);
    assert_eq!(code, Some(0), "{said}\n{}", supervisor.log_text());
    let new = supervisor.current_pid();
    assert_ne!(new, old);
    assert_eq!(answered_by(&mut Connection::open(supervisor.addr)), new);
}

/// The limit just above what the supervisor holds at rest: room for the
/// `handover upgrade` client's connection, none for the upgrade (its new
/// epoch's listening socket). Until c2673f5 the supervisor deadlocked here:
/// `Listeners::open_epoch` called `release` while still holding the group's
/// mutex, and nothing answered any more.
#[test]
fn an_upgrade_under_a_low_fd_limit_fails_clearly_and_the_old_child_serves_on() {
    let mut supervisor = start();
    upgrade_fails_for_lack_of_fds(&mut supervisor, 1);
    upgrade_works_again(&mut supervisor);
}

/// A little more room: the new epoch's socket is opened, the new child's
/// notify socket, pipes or fork cannot be.
#[test]
fn an_upgrade_that_cannot_start_its_child_for_lack_of_fds_fails_clearly_and_the_old_child_serves_on(
) {
    let mut supervisor = start();
    for room in [3, 6] {
        upgrade_fails_for_lack_of_fds(&mut supervisor, room);
    }
    upgrade_works_again(&mut supervisor);
}
