//! The event loop's transitions, one event at a time, each test in
//! milliseconds.
//!
//! The children are stand-ins: `sleep 30`, which serves nothing, dies of the
//! stop signal, and can be killed at will. Readiness is the fake part: the
//! readiness mode is a delay of an hour, so no verdict comes by itself, and a
//! test hands the loop `Event::Ready(…)` when it wants the child ready (or
//! not). Everything else is the real thing: the handlers, the sockets, the
//! signals, the reaping. A test that needs a child gone kills it and waits
//! until the kernel shows it a zombie, then hands the loop `ChildExited`, as
//! SIGCHLD would.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::{Event, Parts, Receivers, Request, Slot, Stage, Supervisor};
use crate::config::{Config, ReadyMode};
use crate::control::{Answers, Reply};
use crate::error::NotReady;
use crate::fdstore::FdStore;
use crate::listeners::Listeners;
use handover_mechanism::notify::Upstream;

/// A supervisor of `sleep 30` children on a loopback socket.
struct Harness {
    supervisor: Supervisor,
    receivers: Receivers,
    dir: std::path::PathBuf,
}

fn harness(probation: Duration) -> Harness {
    harness_with(probation, None)
}

fn harness_with(probation: Duration, rescue: Option<crate::rescue::Settings>) -> Harness {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "handover-transitions-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = Config {
        listen: vec!["web=127.0.0.1:0".parse().unwrap()],
        ready: ReadyMode::Delay(Duration::from_secs(3600)),
        ready_timeout: Duration::from_secs(3600),
        stop_signal: libc::SIGTERM,
        reload_signal: libc::SIGHUP,
        drain_timeout: Duration::from_secs(3600),
        probation,
        max_draining: 1,
        pid_file: None,
        control: dir.join("control.sock"),
        command: vec!["sleep".into(), "30".into()],
        rescue,
    };
    let mut fdstore = FdStore::new(Upstream(None), None, Vec::new());
    let listeners = Listeners::bind(&config.listen, 1, &mut fdstore).unwrap();
    let control_fd: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    let parts = Parts {
        listeners,
        fdstore,
        orphans: Vec::new(),
        control_fd,
        image: super::reexec::Image::current(),
    };
    let (mut supervisor, receivers) = Supervisor::new(config, parts);
    supervisor.upstream = Upstream(None);
    Harness {
        supervisor,
        receivers,
        dir,
    }
}

impl Harness {
    /// The first child, started and (by the fake verdict) ready.
    fn serving(probation: Duration) -> Harness {
        let mut h = harness(probation);
        h.supervisor.start(super::Purpose::First).unwrap();
        assert!(matches!(h.slot(), Slot::Starting { .. }));
        h.supervisor.handle(Event::Ready(Ok(())));
        assert_eq!(h.slot(), Slot::Serving);
        h
    }

    fn slot(&self) -> Slot {
        self.supervisor.slot()
    }

    fn current(&self) -> u32 {
        self.supervisor.current.as_ref().unwrap().pid()
    }

    fn starting(&self) -> u32 {
        self.supervisor.starting.as_ref().unwrap().generation.pid()
    }

    /// Sends a control order; the receiver of its replies.
    fn order(&mut self, request: Request) -> Answers {
        let (send, receive) = crate::control::replies();
        self.supervisor.handle(Event::Order(request, send));
        receive
    }

    /// `pid` killed and seen exited, as SIGCHLD would tell.
    fn kill(&mut self, pid: u32) {
        signal(pid, libc::SIGKILL);
        self.exited(pid);
    }

    /// Waits until `pid` is a zombie, then hands the loop `ChildExited`.
    fn exited(&mut self, pid: u32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !is_zombie(pid) {
            assert!(Instant::now() < deadline, "pid {pid} did not exit");
            std::thread::sleep(Duration::from_millis(1));
        }
        self.supervisor.handle(Event::ChildExited);
    }

    /// The rescue capture's report (it reads /proc on a blocking task).
    async fn captured(&mut self) {
        let done = tokio::time::timeout(Duration::from_secs(5), self.receivers.captures.recv())
            .await
            .unwrap()
            .unwrap();
        self.supervisor.handle(Event::Captured(done));
    }

    /// The failed start's report (its stderr is read by a task).
    async fn start_failed(&mut self) {
        let failed = tokio::time::timeout(Duration::from_secs(5), self.receivers.failures.recv())
            .await
            .unwrap()
            .unwrap();
        self.supervisor.handle(Event::StartFailed(failed));
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let s = &mut self.supervisor;
        for generation in s
            .current
            .take()
            .into_iter()
            .chain(s.starting.take().map(|s| s.generation))
        {
            generation.child.kill_and_reap();
        }
        s.cleanup();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn signal(pid: u32, signal: i32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    let _ = rustix::process::kill_process(
        pid,
        rustix::process::Signal::from_named_raw(signal).unwrap(),
    );
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Every reply so far; the last one says how the request ended.
fn replies(receive: &mut Answers) -> Vec<Reply> {
    std::iter::from_fn(|| receive.try_recv()).collect()
}

fn last_done(receive: &mut Answers) -> (bool, String) {
    match replies(receive).pop() {
        Some(Reply::Done { ok, message }) => (ok, message),
        other => panic!("no final reply: {other:?}"),
    }
}

#[tokio::test]
async fn an_upgrade_commits_on_ready_and_stops_the_old_child_once_handed_off() {
    let mut h = Harness::serving(Duration::ZERO);
    let old = h.current();
    let mut client = h.order(Request::Upgrade);
    let new = h.starting();
    assert_eq!(h.slot(), Slot::Upgrading { new });
    h.supervisor.handle(Event::Ready(Ok(())));
    assert_eq!((h.slot(), h.current()), (Slot::Serving, new));
    // No probation, nothing queued, no rescue: told to stop at once.
    assert_eq!(h.supervisor.draining[0].stage, Stage::Stopped);
    h.exited(old);
    assert!(h.supervisor.draining.is_empty());
    let (ok, message) = last_done(&mut client);
    assert!(ok, "{message}");
    assert!(message.contains(&old.to_string()), "{message}");
    assert!(h.supervisor.upgrades.back().unwrap().ok);
}

#[tokio::test]
async fn a_second_upgrade_while_one_is_under_way_is_refused() {
    let mut h = Harness::serving(Duration::ZERO);
    let _first = h.order(Request::Upgrade);
    let new = h.starting();
    let (ok, message) = last_done(&mut h.order(Request::Upgrade));
    assert!(!ok);
    assert!(message.contains(&format!("new pid {new}")), "{message}");
    assert_eq!(h.starting(), new, "the first goes on");
}

#[tokio::test]
async fn a_new_child_that_exits_before_ready_fails_the_upgrade_and_the_old_serves_on() {
    let mut h = Harness::serving(Duration::ZERO);
    let old = h.current();
    let mut client = h.order(Request::Upgrade);
    let new = h.starting();
    h.kill(new);
    assert_eq!((h.slot(), h.current()), (Slot::Serving, old));
    h.start_failed().await;
    let (ok, message) = last_done(&mut client);
    assert!(!ok);
    assert!(
        message.contains("before it was ready") && message.contains("keeps serving"),
        "{message}"
    );
    assert!(!h.supervisor.upgrades.back().unwrap().ok);
}

#[tokio::test]
async fn a_not_ready_verdict_kills_the_new_child_and_fails_the_upgrade() {
    let mut h = Harness::serving(Duration::ZERO);
    let old = h.current();
    let mut client = h.order(Request::Upgrade);
    let new = h.starting();
    h.supervisor
        .handle(Event::Ready(Err(NotReady::Notify("broken".into()))));
    assert!(is_zombie(new), "killed and reaped");
    assert_eq!((h.slot(), h.current()), (Slot::Serving, old));
    h.start_failed().await;
    let (ok, message) = last_done(&mut client);
    assert!(!ok && message.contains("broken"), "{message}");
}

#[tokio::test]
async fn on_probation_the_old_child_is_kept_and_a_crash_of_the_new_one_rolls_back() {
    let mut h = Harness::serving(Duration::from_secs(3600));
    let old = h.current();
    let mut client = h.order(Request::Upgrade);
    let new = h.starting();
    h.supervisor.handle(Event::Ready(Ok(())));
    assert!(matches!(
        h.supervisor.draining[0].stage,
        Stage::Probation { .. }
    ));
    assert!(!is_zombie(old), "not told to stop during the window");
    h.kill(new);
    assert_eq!((h.slot(), h.current()), (Slot::Serving, old));
    assert!(h.supervisor.draining.is_empty());
    let (ok, message) = last_done(&mut client);
    assert!(!ok && message.contains("rolled back"), "{message}");
    assert_eq!(h.supervisor.crashes.len(), 1);
}

#[tokio::test]
async fn a_crash_of_the_only_child_backs_off_then_restarts() {
    let mut h = Harness::serving(Duration::ZERO);
    let first = h.current();
    h.kill(first);
    let Slot::Backoff { until: Some(at) } = h.slot() else {
        panic!("{:?}", h.slot())
    };
    assert_eq!(h.supervisor.crashes.len(), 1);
    // Not before its time...
    h.supervisor.handle(Event::Tick);
    if Instant::now() < at {
        assert!(matches!(h.slot(), Slot::Backoff { .. }));
    }
    // ...and at it (the time is set, not waited for).
    h.supervisor.respawn_at = Some(Instant::now());
    h.supervisor.handle(Event::Tick);
    let Slot::Starting { new } = h.slot() else {
        panic!("{:?}", h.slot())
    };
    assert_ne!(new, first);
    h.supervisor.handle(Event::Ready(Ok(())));
    assert_eq!(h.slot(), Slot::Serving);
}

#[tokio::test]
async fn a_stop_signals_the_child_and_nothing_starts_after_it() {
    let mut h = Harness::serving(Duration::ZERO);
    let child = h.current();
    let _stop = h.order(Request::Stop);
    assert_eq!(h.slot(), Slot::Stopping);
    h.exited(child); // SIGTERM killed `sleep`
    assert!(h.supervisor.current.is_none());
    let (ok, message) = last_done(&mut h.order(Request::Upgrade));
    assert!(!ok && message.contains("stopping"), "{message}");
    h.supervisor.handle(Event::Tick);
    assert!(h.supervisor.starting.is_none(), "no restart while stopping");
}

#[tokio::test]
async fn reload_signals_a_child_that_serves_alone_and_is_refused_during_an_upgrade() {
    let mut h = Harness::serving(Duration::ZERO);
    let child = h.current();
    let _upgrade = h.order(Request::Upgrade);
    let (ok, message) = last_done(&mut h.order(Request::Reload));
    assert!(!ok && message.contains("upgrade is under way"), "{message}");
    assert!(!is_zombie(child), "not signalled");
    let new = h.starting();
    h.kill(new);
    h.start_failed().await;
    let (ok, message) = last_done(&mut h.order(Request::Reload));
    assert!(ok, "{message}");
    assert_eq!(message, format!("sent SIGHUP to pid {child} (reload)"));
    h.exited(child); // `sleep` dies of SIGHUP: the signal arrived
}

#[tokio::test]
async fn with_the_rescue_on_the_old_child_is_stopped_once_its_capture_reports() {
    let rescue = crate::rescue::Settings {
        max: 100,
        idle: Duration::from_secs(1),
        hold: Duration::ZERO,
    };
    let mut h = harness_with(Duration::ZERO, Some(rescue));
    h.supervisor.start(super::Purpose::First).unwrap();
    h.supervisor.handle(Event::Ready(Ok(())));
    let old = h.current();
    let _client = h.order(Request::Upgrade);
    h.supervisor.handle(Event::Ready(Ok(())));
    // The capture runs off the loop; the stop signal waits for it.
    assert_eq!(h.supervisor.draining[0].stage, Stage::Capturing);
    assert!(!is_zombie(old));
    h.captured().await;
    // `sleep` holds no connection: nothing to rescue, stopped at once.
    assert_eq!(h.supervisor.draining[0].stage, Stage::Stopped);
    h.exited(old);
    assert!(h.supervisor.draining.is_empty());
}

#[tokio::test]
async fn a_self_upgrade_asked_for_during_an_upgrade_waits_until_the_old_child_is_gone() {
    let mut h = Harness::serving(Duration::ZERO);
    let old = h.current();
    let _upgrade = h.order(Request::Upgrade);
    let mut client = h.order(Request::UpgradeSupervisor);
    let said = format!("{:?}", replies(&mut client));
    assert!(
        said.contains("waiting") && said.contains("upgrading"),
        "{said}"
    );
    h.supervisor.handle(Event::Ready(Ok(())));
    let said = format!("{:?}", replies(&mut client));
    assert!(
        h.supervisor.self_upgrade_waiting.is_some(),
        "the old child drains: {said}"
    );
    h.exited(old);
    // Simply serving now: the binary (this test's) is checked, and refused
    // since it is no supervisor.
    assert!(h.supervisor.self_upgrade_waiting.is_none());
    let said = format!("{:?}", replies(&mut client));
    assert!(said.contains("checking"), "{said}");
    let checked = tokio::time::timeout(Duration::from_secs(10), h.receivers.checks.recv())
        .await
        .unwrap()
        .unwrap();
    h.supervisor.handle(Event::SelfChecked(checked));
    let (ok, message) = last_done(&mut client);
    assert!(
        !ok && message.contains("cannot read this state"),
        "{message}"
    );
}

#[tokio::test]
async fn a_waiting_self_upgrade_gives_up_at_its_bound_and_a_second_one_is_refused() {
    let mut h = Harness::serving(Duration::from_secs(3600));
    let _upgrade = h.order(Request::Upgrade);
    let mut client = h.order(Request::UpgradeSupervisor);
    let (ok, message) = last_done(&mut h.order(Request::UpgradeSupervisor));
    assert!(
        !ok && message.contains("another supervisor upgrade is waiting"),
        "{message}"
    );
    h.supervisor.handle(Event::Tick);
    assert!(replies(&mut client)
        .iter()
        .all(|r| !matches!(r, Reply::Done { .. })));
    h.supervisor.self_upgrade_waiting.as_mut().unwrap().until = Instant::now();
    h.supervisor.handle(Event::Tick);
    let (ok, message) = last_done(&mut client);
    assert!(!ok && message.contains("still after waiting"), "{message}");
    assert!(
        message.contains("upgrading"),
        "what it waited for: {message}"
    );
}

#[tokio::test]
async fn a_waiting_self_upgrade_is_refused_when_the_supervisor_stops() {
    let mut h = Harness::serving(Duration::ZERO);
    let _upgrade = h.order(Request::Upgrade);
    let mut client = h.order(Request::UpgradeSupervisor);
    let _stop = h.order(Request::Stop);
    let (ok, message) = last_done(&mut client);
    assert!(!ok && message.contains("stopping"), "{message}");
}
