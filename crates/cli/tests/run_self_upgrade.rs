//! `handover upgrade --supervisor`: the supervisor re-executes its own binary
//! in place under load — same pid, the child untouched, nobody refused — ten
//! times in a row; a broken new binary is refused before the switch and the
//! supervisor runs on.

mod run_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use run_support::fresh::FreshLoad;
use run_support::*;

/// Puts a binary at a staging path.
type Install = dyn Fn(&Path);

/// `handover run` from a copy of the binary that the test can replace.
struct Running {
    scratch: Scratch,
    exe: PathBuf,
    pid_file: PathBuf,
    process: Child,
    /// Every child pid seen, ended at drop even if the supervisor died first.
    seen: std::sync::Mutex<Vec<u32>>,
}

impl Running {
    fn start() -> Running {
        Running::start_with_env(&[])
    }

    fn start_with_env(env: &[(&str, &str)]) -> Running {
        let scratch = Scratch::new("self-upgrade");
        let exe = scratch.path("handover");
        copy_executable(Path::new(HANDOVER), &exe);
        let pid_file = scratch.path("handover.pid");
        let process = Command::new(&exe)
            .args(["run", "--listen", "web=127.0.0.1:0", "--pid-file"])
            .arg(&pid_file)
            .args(["--ready", "notify", "--", "python3"])
            .arg(fixture("notify_server.py"))
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(scratch.path("handover.log")).unwrap())
            .spawn()
            .unwrap();
        let running = Running {
            scratch,
            exe,
            pid_file,
            process,
            seen: std::sync::Mutex::new(Vec::new()),
        };
        wait_until("the first child", Duration::from_secs(30), || {
            running.status().filter(|s| s["current"].is_object())
        });
        running
    }

    fn client(&self, args: &[&str]) -> Output {
        Command::new(HANDOVER)
            .args(args)
            .arg("--pid-file")
            .arg(&self.pid_file)
            .output()
            .unwrap()
    }

    fn status(&self) -> Option<serde_json::Value> {
        let output = self.client(&["status", "--json"]);
        output
            .status
            .success()
            .then(|| serde_json::from_slice(&output.stdout).ok())
            .flatten()
    }

    /// `handover status --format prometheus`, parsed.
    fn metrics(&self) -> std::collections::BTreeMap<String, f64> {
        let output = self.client(&["status", "--format", "prometheus"]);
        assert!(output.status.success(), "{}", text(&output));
        parse_prometheus(&String::from_utf8(output.stdout).unwrap())
    }

    fn current(&self) -> u32 {
        let pid = self.status().unwrap()["current"]["pid"].as_u64().unwrap() as u32;
        self.seen.lock().unwrap().push(pid);
        pid
    }

    /// Puts `install` at the binary's path the way a deployment does.
    fn install(&self, install: impl FnOnce(&Path)) {
        let staging = self.scratch.path("handover.new");
        install(&staging);
        std::fs::rename(&staging, &self.exe).unwrap();
    }

    /// `workers` clients that never retry, a fresh connection per request,
    /// once they have had `answers` answers.
    fn load(&self, workers: usize, answers: usize) -> FreshLoad {
        let addr = self.status().unwrap()["sockets"][0]["address"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let began = Instant::now();
        let load = FreshLoad::start(addr, workers);
        load.wait_for_answers_after(began, answers);
        load
    }

    /// Waits until the upgrade a SIGUSR2 asked for has replaced `child`, in
    /// the same supervisor.
    fn wait_for_the_usr2_upgrade(&self, child: u32) {
        let replaced = wait_until(
            "the child upgrade USR2 asked for",
            Duration::from_secs(30),
            || {
                let status = self.status()?;
                (status["current"]["pid"] != child && status["upgrades"].as_array()?.len() == 1)
                    .then_some(status)
            },
        );
        assert_eq!(
            replaced["supervisor_pid"],
            self.process.id(),
            "the same, living, supervisor"
        );
        self.current(); // the new child, ended at drop
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.scratch.path("handover.log")).unwrap_or_default()
    }
}

/// Stops `load`; its answers, none of them a failure.
fn none_failed(load: FreshLoad) -> Vec<run_support::fresh::Answer> {
    let answers = load.stop();
    let failed: Vec<_> = answers.iter().filter(|a| a.pid.is_err()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    answers
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut children = descendants(self.process.id());
        children.extend(self.seen.lock().unwrap().iter().copied());
        let _ = self.process.kill();
        let _ = self.process.wait();
        for pid in children {
            signal(pid, rustix::process::Signal::KILL);
        }
    }
}

#[test]
fn the_supervisor_upgrades_itself_ten_times_under_load_and_refuses_broken_binaries() {
    let running = Running::start();
    let supervisor = running.process.id();
    let child = running.current();
    let load = running.load(3, 30);

    let mut took = Vec::new();
    for round in 0..10 {
        running.install(|staging| copy_executable(Path::new(HANDOVER), staging));
        let started = Instant::now();
        let output = running.client(&["upgrade", "--supervisor"]);
        took.push(started.elapsed());
        let said = text(&output);
        assert!(
            output.status.success(),
            "round {round}: {said}\n{}",
            running.log()
        );
        assert!(said.contains("re-executed"), "{said}");
        let status = running.status().unwrap();
        assert_eq!(status["supervisor_pid"], supervisor, "the same pid");
        assert_eq!(status["current"]["pid"], child, "the child is not replaced");
        assert_eq!(status["self_upgrades"].as_array().unwrap().len(), round + 1);
    }
    took.sort();
    eprintln!(
        "self-upgrade, command to the new image answering: median {:?}, max {:?}",
        took[took.len() / 2],
        took[took.len() - 1]
    );

    // Broken new binaries: refused before the switch, the old image runs on.
    let broken: [(&str, &Install); 3] = [
        ("not executable", &|staging: &Path| {
            use std::os::unix::fs::PermissionsExt;
            copy_executable(Path::new(HANDOVER), staging);
            std::fs::set_permissions(staging, std::fs::Permissions::from_mode(0o644)).unwrap();
        }),
        ("another program", &|staging: &Path| {
            write_executable(staging, "#!/bin/sh\necho 'some other program'\n")
        }),
        ("exits at once", &|staging: &Path| {
            write_executable(staging, "#!/bin/sh\nexit 3\n")
        }),
    ];
    for (what, install) in broken {
        running.install(install);
        let output = running.client(&["upgrade", "--supervisor"]);
        let said = text(&output);
        assert_eq!(output.status.code(), Some(1), "{what}: {said}");
        assert!(said.contains("refused before the switch"), "{what}: {said}");
        let status = running.status().unwrap();
        assert_eq!(status["supervisor_pid"], supervisor, "{what}");
        assert_eq!(status["current"]["pid"], child, "{what}");
    }
    // This image's counters: the switch that started it, and the three
    // refusals since (each image counts from its start).
    let metrics = running.metrics();
    assert_eq!(
        metrics["handover_self_upgrades_total{result=\"ok\"}"], 1.0,
        "{metrics:#?}"
    );
    assert_eq!(
        metrics["handover_self_upgrades_total{result=\"refused\"}"], 3.0,
        "{metrics:#?}"
    );

    // The supervisor still upgrades its child as before.
    running.install(|staging| copy_executable(Path::new(HANDOVER), staging));
    let output = running.client(&["upgrade"]);
    assert!(output.status.success(), "{}", text(&output));
    assert_ne!(running.current(), child, "replaced when asked");

    let answers = none_failed(load);
    assert!(answers.len() > 100);
    let output = running.client(&["stop"]);
    assert!(output.status.success(), "{}", text(&output));
}

/// A new image that cannot take the state over (a fail point in its restore:
/// the tests' build of `handover` has them, a release has not) runs the
/// previous image again, which takes the state, serves on and records why:
/// the command exits 1 with the reason, the pid, child and sockets are the
/// same, and no request fails. The previous image is the file that was
/// running, pinned before the switch, even though another file is at its
/// path by then.
#[test]
fn a_new_image_that_cannot_take_the_state_hands_back_to_the_previous_one() {
    let running = Running::start_with_env(&[(
        "FAILPOINTS",
        "supervisor-restore=return(the new image is broken)",
    )]);
    let supervisor = running.process.id();
    let child = running.current();
    let load = running.load(2, 20);

    for round in 0..3 {
        running.install(|staging| copy_executable(Path::new(HANDOVER), staging));
        let output = running.client(&["upgrade", "--supervisor"]);
        let said = text(&output);
        assert_eq!(output.status.code(), Some(1), "round {round}: {said}");
        assert!(
            said.contains("the new image could not go on (the new image is broken)")
                && said.contains("this one runs again"),
            "{said}\n{}",
            running.log()
        );
        let status = running.status().unwrap();
        assert_eq!(status["supervisor_pid"], supervisor);
        assert_eq!(status["current"]["pid"], child);
        let records = status["self_upgrades"].as_array().unwrap();
        assert_eq!(records.len(), round + 1);
        assert_eq!(records[round]["ok"], false);
        // The previous image, run again, counts the failed switch.
        let metrics = running.metrics();
        assert_eq!(
            metrics["handover_self_upgrades_total{result=\"failed\"}"], 1.0,
            "{metrics:#?}"
        );
    }
    let after = Instant::now();
    load.wait_for_answers_after(after, 20);
    none_failed(load);
    // A child upgrade still works.
    let output = running.client(&["upgrade"]);
    assert!(output.status.success(), "{}", text(&output));
    assert_ne!(running.current(), child);
}

/// A signal that reaches the new image before it has its handlers (held
/// here by a 500 ms fail point at the very start of the new image) does not
/// end it by its default action: the old image held the signals across the
/// exec, and the new one takes them once it handles them. SIGUSR2 (upgrade)
/// sent then is carried out afterwards: the child is replaced.
#[test]
fn a_signal_during_the_exec_waits_for_the_new_image() {
    let running = Running::start_with_env(&[("FAILPOINTS", "supervisor-restore-start=sleep(500)")]);
    let supervisor = running.process.id();
    let child = running.current();
    running.install(|staging| copy_executable(Path::new(HANDOVER), staging));
    let upgrade = {
        let (handover, pid_file) = (HANDOVER, running.pid_file.clone());
        std::thread::spawn(move || {
            Command::new(handover)
                .args(["upgrade", "--supervisor", "--pid-file"])
                .arg(pid_file)
                .output()
                .unwrap()
        })
    };
    // The old image's file was replaced at its path ("… (deleted)"); the new
    // image's is not.
    let exe = format!("/proc/{supervisor}/exe");
    wait_until("the new image to start", Duration::from_secs(10), || {
        let target = std::fs::read_link(&exe).ok()?;
        (!target.to_string_lossy().ends_with(" (deleted)")).then_some(())
    });
    signal(supervisor, rustix::process::Signal::USR2);
    let output = upgrade.join().unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        text(&output),
        running.log()
    );
    running.wait_for_the_usr2_upgrade(child);
}

/// A signal that reaches the old image once it has decided to re-execute —
/// held here by a 500 ms fail point just before the exec, after its handler
/// for the signal has run — is not lost with the old image: the streams'
/// unhandled signals are raised again under the held mask, wait pending
/// across the exec, and the new image handles them. Without that step the
/// SIGUSR2 below is lost and no child upgrade ever happens.
#[test]
fn a_signal_just_before_the_exec_is_handled_by_the_new_image() {
    use std::io::BufRead;
    let running = Running::start_with_env(&[("FAILPOINTS", "supervisor-before-exec=sleep(500)")]);
    let supervisor = running.process.id();
    let child = running.current();
    running.install(|staging| copy_executable(Path::new(HANDOVER), staging));
    let mut upgrade = Command::new(HANDOVER)
        .args(["upgrade", "--supervisor", "--pid-file"])
        .arg(&running.pid_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut progress = std::io::BufReader::new(upgrade.stdout.take().unwrap());
    let mut said = String::new();
    while !said.contains("re-executing") {
        let before = said.len();
        progress.read_line(&mut said).unwrap();
        assert!(
            said.len() > before,
            "the upgrade ended early: {said}\n{}",
            running.log()
        );
    }
    // The old image is in the fail point now, its decision taken.
    signal(supervisor, rustix::process::Signal::USR2);
    std::io::Read::read_to_string(&mut progress, &mut said).unwrap();
    let status = upgrade.wait().unwrap();
    assert!(status.success(), "{said}\n{}", running.log());
    running.wait_for_the_usr2_upgrade(child);
}

/// Only the event loop's thread takes signals: every other thread of the
/// supervisor (the control server's, the blocking pool's) holds them, so that
/// a signal sent while the event loop holds them for an exec stays pending for
/// the process instead of reaching a handler on another thread and dying with
/// the old image. Checked in /proc before and after a self-upgrade.
#[test]
fn only_the_event_loops_thread_takes_signals() {
    let running = Running::start();
    let supervisor = running.process.id();
    let check = |when: &str| {
        let threads = thread_masks(supervisor);
        assert!(
            threads.len() >= 2,
            "{when}: the control thread too: {threads:?}"
        );
        for (tid, blocked) in &threads {
            for number in [1, 2, 3, 12, 15, 17] {
                let held = blocked & (1 << (number - 1)) != 0;
                assert_eq!(
                    held,
                    *tid != supervisor,
                    "{when}: thread {tid} and signal {number}: {threads:?}"
                );
            }
        }
    };
    check("fresh");
    running.install(|staging| copy_executable(Path::new(HANDOVER), staging));
    let output = running.client(&["upgrade", "--supervisor"]);
    assert!(output.status.success(), "{}", text(&output));
    running.status().expect("the new image answers");
    check("after a self-upgrade");
}

/// Each thread of `pid` with its mask of blocked signals (SigBlk).
fn thread_masks(pid: u32) -> Vec<(u32, u64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|task| {
            let task = task.ok()?;
            let tid: u32 = task.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            let mask = status.lines().find_map(|l| l.strip_prefix("SigBlk:"))?;
            Some((tid, u64::from_str_radix(mask.trim(), 16).ok()?))
        })
        .collect()
}

/// A supervisor upgrade asked for while the child is being upgraded waits
/// until that upgrade is over — the old child gone after its probation —
/// instead of being refused, then re-executes. The child upgrade's client
/// gets its answer, though a fail point makes every control thread take
/// 300 ms to write a final answer: the exec waits for the replies already
/// sent (without that, this answer dies with the old image). The clients
/// under load see nothing of either.
#[test]
fn a_supervisor_upgrade_during_a_child_upgrade_waits_for_it_then_goes_ahead() {
    let running =
        Running::start_with_env(&[("FAILPOINTS", "control-before-final-reply=sleep(300)")]);
    let supervisor = running.process.id();
    let first = running.current();
    let load = running.load(3, 30);
    let child_upgrade = {
        let (handover, pid_file) = (HANDOVER, running.pid_file.clone());
        std::thread::spawn(move || {
            Command::new(handover)
                .arg("upgrade")
                .arg("--pid-file")
                .arg(pid_file)
                .output()
                .unwrap()
        })
    };
    wait_until(
        "the old child on probation",
        Duration::from_secs(20),
        || {
            let status = running.status()?;
            (status["draining"].as_array()?.len() == 1).then_some(())
        },
    );
    running.install(|staging| copy_executable(Path::new(HANDOVER), staging));
    let output = running.client(&["upgrade", "--supervisor"]);
    let said = text(&output);
    assert!(output.status.success(), "{said}\n{}", running.log());
    assert!(
        said.contains("waiting until the supervisor is simply serving"),
        "{said}"
    );
    assert!(said.contains("re-executed"), "{said}");
    let child_upgrade = child_upgrade.join().unwrap();
    assert!(
        child_upgrade.status.success(),
        "the child upgrade's answer: {}",
        text(&child_upgrade)
    );
    let status = running.status().unwrap();
    assert_eq!(status["supervisor_pid"], supervisor, "the same pid");
    assert_ne!(
        status["current"]["pid"], first,
        "the child upgrade happened"
    );
    assert_eq!(status["draining"].as_array().unwrap().len(), 0, "{status}");
    assert_eq!(status["self_upgrades"].as_array().unwrap().len(), 1);
    running.current(); // the new child, ended at drop
    none_failed(load);
}

/// More self-upgrades than the status history holds (it keeps the last 20):
/// each one's command still tells that the new image answers, and how it
/// went (it used to count the history's records, which stop growing at 20,
/// and then waited 30 s and failed).
#[test]
fn more_self_upgrades_than_the_history_holds_each_report_their_outcome() {
    let running = Running::start();
    for round in 0..25 {
        running.install(|staging| copy_executable(Path::new(HANDOVER), staging));
        let started = Instant::now();
        let output = running.client(&["upgrade", "--supervisor"]);
        let said = text(&output);
        assert!(output.status.success(), "round {round}: {said}");
        assert!(said.contains("re-executed"), "round {round}: {said}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "round {round} took {:?}",
            started.elapsed()
        );
    }
    let status = running.status().unwrap();
    assert_eq!(status["self_upgrades"].as_array().unwrap().len(), 20);
}
