//! `handover run --probation`: a new child that dies soon after it was ready
//! hands its traffic back to the old child at once — which was kept, not
//! stopped — instead of leaving clients to wait for a restart; and with the
//! probation off, the same crash does leave them waiting.

mod run_support;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use run_support::fresh::{Answer, FreshLoad};
use run_support::*;

/// Both tests put load on two cores: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Upgrades, waits until the new child is current and has answered, and
/// SIGKILLs it: returns (old pid, new pid, when it was killed, the upgrade).
fn upgrade_then_kill_the_new_child(
    supervisor: &Supervisor,
    load: &FreshLoad,
) -> (
    u32,
    u32,
    Instant,
    std::thread::JoinHandle<std::process::Output>,
) {
    let old = supervisor.current_pid();
    let upgrade = supervisor.upgrade_in_background();
    let new = wait_until(
        "the new child to be current",
        Duration::from_secs(30),
        || {
            supervisor
                .status()
                .and_then(|s| s["current"]["pid"].as_u64())
                .map(|pid| pid as u32)
                .filter(|pid| *pid != old)
        },
    );
    wait_until("the new child to answer", Duration::from_secs(10), || {
        load.any(|a| a.pid == Ok(new)).then_some(())
    });
    let killed = Instant::now();
    signal(new, rustix::process::Signal::KILL);
    (old, new, killed, upgrade)
}

#[test]
fn a_new_child_killed_on_probation_hands_back_to_the_old_one_under_load() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let supervisor = Supervisor::start(
        "probation",
        &["--ready", "notify", "--probation", "3s"],
        &["python3", fixture("notify_server.py").to_str().unwrap()],
    );
    let fds_before = fds_at_rest(supervisor.process.id());
    const WORKERS: usize = 4;
    let load = FreshLoad::start(supervisor.addr, WORKERS);
    let (old, new, killed, upgrade) = upgrade_then_kill_the_new_child(&supervisor, &load);

    let output = upgrade.join().unwrap();
    let said = text(&output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(
        said.contains("on probation") && said.contains("rolled back"),
        "{said}"
    );
    let rolled_back = Instant::now();
    let status = supervisor.status().unwrap();
    assert_eq!(status["current"]["pid"], old, "{status:#}");
    assert!(
        status["draining"].as_array().unwrap().is_empty(),
        "{status:#}"
    );
    load.wait_for_answers_after(rolled_back, 200);
    let answers = load.stop();

    // Every request begun after the crash was handled was answered, by the old
    // child (and quickly: nobody waited for a start-up).
    let after: Vec<&Answer> = answers.iter().filter(|a| a.started > rolled_back).collect();
    assert!(after.len() >= 200);
    for answer in &after {
        assert_eq!(answer.pid, Ok(old), "a request after the rollback");
    }
    // Lost at most: the requests the new child had accepted when it was
    // killed, one per client (each has one request at a time).
    let failed: Vec<&String> = answers
        .iter()
        .filter_map(|a| a.pid.as_ref().err())
        .collect();
    assert!(failed.len() <= WORKERS, "{failed:#?}");
    let old_again = answers
        .iter()
        .filter(|a| a.started > killed && a.pid == Ok(old))
        .map(|a| a.started + a.took - killed)
        .min();
    eprintln!(
        "{} requests, {} failed (inside the killed child), {} after the rollback; \
         kill → first answer by the old child {old_again:?}",
        answers.len(),
        failed.len(),
        after.len()
    );
    let slowest_after_kill = answers
        .iter()
        .filter(|a| a.started > killed && a.pid.is_ok())
        .map(|a| a.took)
        .max()
        .unwrap();
    assert!(
        slowest_after_kill < Duration::from_secs(1),
        "answers after the kill waited {slowest_after_kill:?}"
    );

    // The crash is recorded, nothing leaked, and the next upgrade works
    // (its verdict comes once its own probation is over).
    assert!(
        supervisor.log_text().contains(&format!(
            "new pid {new} was killed by signal 9 on probation"
        )),
        "{}",
        supervisor.log_text()
    );
    assert!(exited(new), "the killed child was reaped");
    let output = supervisor.client("upgrade", &[]);
    let said = text(&output);
    assert!(output.status.success(), "{said}");
    assert!(said.contains(&format!("old pid {old}")), "{said}");
    let newest = supervisor.current_pid();
    assert!(newest != old && newest != new);
    let settled = try_wait_until(Duration::from_secs(10), || {
        (fds_of(supervisor.process.id()).len() == fds_before.len()).then_some(())
    });
    assert!(
        settled.is_some(),
        "supervisor fds before {fds_before:?}, after {:?}\n{}",
        fds_of(supervisor.process.id()),
        supervisor.log_text()
    );
    assert_eq!(descendants(supervisor.process.id()), vec![newest]);
}

#[test]
fn without_probation_the_same_crash_leaves_clients_waiting_for_a_restart() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The proof that the probation is what serves them above: with it off, the
    // old child has been stopped by the time the new one dies, and every
    // request after the crash waits for a restarted child's start-up (1 s).
    let supervisor = Supervisor::start(
        "no-probation",
        &["--ready", "notify", "--probation", "0"],
        &[
            "python3",
            fixture("notify_server.py").to_str().unwrap(),
            "--startup-delay",
            "1",
        ],
    );
    let load = FreshLoad::start(supervisor.addr, 2);
    let (old, new, killed, upgrade) = upgrade_then_kill_the_new_child(&supervisor, &load);
    let restarted = wait_until("a restarted child", Duration::from_secs(30), || {
        supervisor
            .status()
            .and_then(|s| s["current"]["pid"].as_u64())
            .map(|pid| pid as u32)
            .filter(|pid| *pid != new)
    });
    load.wait_for_answers_after(Instant::now(), 20);
    let answers = load.stop();
    let _ = upgrade.join().unwrap();
    assert_ne!(restarted, old);
    let after_kill: Vec<&Answer> = answers.iter().filter(|a| a.started > killed).collect();
    assert!(
        after_kill.iter().all(|a| a.pid != Ok(old)),
        "the old child was stopped: it cannot serve again"
    );
    // Counted from every request still open at the kill: one queued then waits
    // as long as one begun after it.
    let waited = answers
        .iter()
        .filter(|a| a.started + a.took > killed)
        .map(|a| a.took)
        .max()
        .unwrap();
    assert!(
        waited >= Duration::from_millis(900),
        "a request after the crash waited only {waited:?}"
    );
}
