//! The examples in `deploy/` do what docs/DEPLOY.md says. Docker and
//! Kubernetes are not on this machine, so the commands they would run are run
//! here, the same way: the Dockerfile's `ENTRYPOINT` and `CMD` (hello under
//! `handover run`), upgraded under load and stopped with its `STOPSIGNAL`
//! within the Deployment's grace period; and the takeover pod's two
//! containers, started together and then restarted in turn as `kubectl set
//! image` restarts one, handing the server over under load. The manifests are
//! parsed (python3's yaml) and their numbers checked against each other.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use handover_loadgen::{LoadConfig, LoadThread, Mode, Report};
use handover_testkit::*;
use rustix::process::Signal;
use serde_json::Value;

const HANDOVER: &str = env!("CARGO_BIN_EXE_handover");

/// One test at a time: each runs a load (two cores).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A file of the repository.
fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// The YAML documents of a manifest, as JSON.
fn manifest(path: &str) -> Vec<Value> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\njson.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
        ])
        .arg(repo(path))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{path} is not YAML: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The argument of a Dockerfile instruction (`STOPSIGNAL SIGTERM`).
fn instruction<'a>(dockerfile: &'a str, name: &str) -> &'a str {
    dockerfile
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in the Dockerfile"))
        .trim()
}

/// An exec-form instruction's words (`CMD ["hello", "--x"]`).
fn words(dockerfile: &str, name: &str) -> Vec<String> {
    serde_json::from_str(instruction(dockerfile, name))
        .unwrap_or_else(|e| panic!("{name} is not in exec form: {e}"))
}

/// Strings of a JSON array.
fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|word| word.as_str().unwrap().to_owned())
        .collect()
}

/// The value after the first `flag` in `args`.
fn flag<'a>(args: &'a [String], flag: &str) -> &'a str {
    let at = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    &args[at + 1]
}

fn seconds(text: &str) -> f64 {
    humantime::parse_duration(text).unwrap().as_secs_f64()
}

/// A container's command made to run on this machine: the shared volume is
/// `dir`, and the listener is on loopback at a free port.
fn localise(args: &[String], dir: &Path) -> Vec<String> {
    let dir = dir.to_str().unwrap();
    args.iter()
        .map(|arg| {
            arg.replace("/run/handover", dir)
                .replace("0.0.0.0:8080", "127.0.0.1:0")
        })
        .collect()
}

/// Runs `args` as a container would: its programs found on PATH (the
/// workspace's binaries and deploy/kubernetes first), its output in `log`.
fn container(args: &[String], bin: &Path, dir: &Path, log: &Path) -> Child {
    let path = format!(
        "{}:{}:{}",
        bin.display(),
        repo("deploy/kubernetes").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    spawn(
        Command::new(&args[0])
            .args(&args[1..])
            .env("PATH", path)
            .env("HANDOVER_SLOT_DIR", dir)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    )
}

/// Mixed load (4 clients a connection per request, 4 keep-alive), none of
/// which retries, once it has 100 answers.
fn load(addr: std::net::SocketAddr) -> LoadThread {
    let load = LoadThread::start(
        LoadConfig::new(addr)
            .connections(8)
            .mode(Mode::Mixed)
            .duration(Duration::from_secs(120))
            .request_timeout(Duration::from_secs(10)),
    );
    assert!(
        load.stats()
            .wait_for_successes(100, Duration::from_secs(20)),
        "load did not start"
    );
    load
}

/// Lets the load run on for `n` more answers.
fn answers(load: &LoadThread, n: u64) {
    let stats = load.stats();
    let now = stats.successes();
    assert!(stats.wait_for_successes(now + n, Duration::from_secs(20)));
}

fn assert_no_failure(report: &Report, log: &Path) {
    assert!(
        report.failures().is_empty(),
        "{} failed: {:?}\nlog:\n{}",
        report.failures().len(),
        report.first_failures(5),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Waits for `child` to exit within `timeout`; its exit code.
fn exit_code(child: &mut Child, timeout: Duration) -> Option<i32> {
    let status = wait_until("the container to exit", timeout, || {
        child.try_wait().unwrap()
    });
    status.code()
}

/// The processes a test started (containers, and the servers in them);
/// at drop, even after a failed assertion, each is killed with every
/// descendant and reaped.
#[derive(Default)]
struct Started(Vec<u32>);

impl Drop for Started {
    fn drop(&mut self) {
        let mut all = Vec::new();
        for &pid in &self.0 {
            all.extend(descendants(pid));
            all.push(pid);
        }
        for &pid in &all {
            if !exited(pid) {
                signal(pid, Signal::KILL);
            }
        }
        for &pid in &all {
            let _ = try_wait_until(Duration::from_secs(5), || exited(pid).then_some(()));
        }
    }
}

#[test]
fn the_images_command_upgrades_hello_under_load_and_stops_within_the_deployments_grace_period() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dockerfile = std::fs::read_to_string(repo("deploy/docker/Dockerfile")).unwrap();
    let entrypoint = words(&dockerfile, "ENTRYPOINT");
    assert_eq!(entrypoint[..2], ["tini", "--"], "tini is pid 1");
    let command: Vec<String> = entrypoint[2..]
        .iter()
        .chain(&words(&dockerfile, "CMD"))
        .cloned()
        .collect();
    assert_eq!(instruction(&dockerfile, "STOPSIGNAL"), "SIGTERM");
    assert_eq!(flag(&command, "--listen"), "web=0.0.0.0:8080");
    assert_eq!(instruction(&dockerfile, "EXPOSE"), "8080");

    // The Deployment keeps the image's command; its numbers fit its drain.
    let deployment = &manifest("deploy/kubernetes/deployment.yaml")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    let hello = &pod["containers"][0];
    assert!(hello.get("command").is_none() && hello.get("args").is_none());
    let supervisor_drain = seconds(flag(&command, "--drain-timeout"));
    let separator = command.iter().position(|a| a == "--").unwrap();
    let child_drain = seconds(flag(&command[separator..], "--drain-timeout"));
    assert!(
        child_drain < supervisor_drain,
        "the child drains within the supervisor's patience"
    );
    let pre_stop = strings(&hello["lifecycle"]["preStop"]["exec"]["command"]);
    assert_eq!(pre_stop[0], "sleep");
    let pre_stop: f64 = pre_stop[1].parse().unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_f64().unwrap();
    assert!(
        grace > pre_stop + supervisor_drain,
        "grace {grace} s ≤ preStop {pre_stop} s + --drain-timeout {supervisor_drain} s: killed mid-drain"
    );
    assert_eq!(hello["readinessProbe"]["httpGet"]["port"], "http");
    assert_eq!(hello["ports"][0]["name"], "http");
    assert_eq!(hello["ports"][0]["containerPort"], 8080);
    assert_eq!(
        hello["volumeMounts"][0]["mountPath"], "/run/handover",
        "the PID file's directory is writable"
    );

    // Run it.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
    let scratch = Scratch::new("deploy-image");
    let bin = build_hello(HANDOVER.as_ref()).parent().unwrap().to_owned();
    let log = scratch.path("container.log");
    let mut supervisor = container(&localise(&command, &scratch.0), &bin, &scratch.0, &log);
    let mut pids = Started(vec![supervisor.id()]);
    let pid_file = scratch.path("app.pid");
    let status = || -> Option<Value> {
        let output = Command::new(HANDOVER)
            .args(["status", "--json", "--pid-file"])
            .arg(&pid_file)
            .output()
            .ok()?;
        serde_json::from_slice(&output.stdout).ok()
    };
    let current = || {
        status()
            .and_then(|s| s["current"]["pid"].as_u64())
            .map(|p| p as u32)
    };
    let first = wait_until("the first child ready", Duration::from_secs(30), current);
    pids.0.push(first);
    let addr = status().unwrap()["sockets"][0]["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let load = load(addr);
    let mut serving = first;
    for _ in 0..3 {
        let upgrade = Command::new(HANDOVER)
            .args(["upgrade", "--pid-file"])
            .arg(&pid_file)
            .output()
            .unwrap();
        assert!(upgrade.status.success(), "{upgrade:?}");
        let new = current().unwrap();
        assert_ne!(new, serving);
        pids.0.push(new);
        serving = new;
        answers(&load, 200);
    }
    let report = load.stop();
    assert_no_failure(&report, &log);

    // The kubelet's SIGTERM, through tini.
    let asked = Instant::now();
    signal(supervisor.id(), Signal::TERM);
    let code = exit_code(&mut supervisor, Duration::from_secs_f64(grace));
    assert_eq!(code, Some(0));
    assert!(asked.elapsed().as_secs_f64() < grace - pre_stop);
    for &pid in &pids.0 {
        assert!(
            exited(pid),
            "pid {pid} outlived the container's main process"
        );
    }
}

/// One of the takeover pod's slots, as its container runs it.
struct Slot {
    command: Vec<String>,
    child: Child,
}

#[test]
fn the_takeover_pods_two_slots_hand_the_server_over_to_each_other_under_load() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let pod = &manifest("deploy/kubernetes/takeover-pod.yaml")[0];
    assert_eq!(pod["kind"], "Pod", "only a Pod's image changes in place");
    let spec = &pod["spec"];
    assert_eq!(spec["shareProcessNamespace"], true);
    let commands: Vec<Vec<String>> = ["slot-a", "slot-b"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let container = &spec["containers"][i];
            assert_eq!(container["name"], *name);
            assert_eq!(container["volumeMounts"][0]["mountPath"], "/run/handover");
            strings(&container["command"])
        })
        .collect();
    let server = |command: &[String]| {
        let at = command.iter().position(|a| a == "--").unwrap();
        command[at..].to_vec()
    };
    assert_eq!(
        server(&commands[0]),
        server(&commands[1]),
        "the same server"
    );
    let grace = spec["terminationGracePeriodSeconds"].as_f64().unwrap();
    let drain = seconds(flag(&commands[0], "--drain-timeout"));
    assert!(grace > drain);

    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
    let scratch = Scratch::new("deploy-takeover");
    let bin = build_hello(HANDOVER.as_ref()).parent().unwrap().to_owned();
    let log = scratch.path("pod.log");
    let pid_file = scratch.path("hello.pid");
    let mut pids = Started::default();
    // The pod starts: both containers at once.
    let mut slots: Vec<Slot> = commands
        .iter()
        .map(|command| {
            let command = localise(command, &scratch.0);
            let child = container(&command, &bin, &scratch.0, &log);
            pids.0.push(child.id());
            Slot { command, child }
        })
        .collect();
    let serving =
        || -> Option<u32> { std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok() };
    let idle = |name: &str| scratch.path(&format!("idle-{name}")).exists();
    let first = wait_until("slot-a's server", Duration::from_secs(30), || {
        serving().filter(|&pid| parent_of(pid) == Some(slots[0].child.id()))
    });
    pids.0.push(first);
    wait_until("slot-b idle", Duration::from_secs(10), || {
        idle("slot-b").then_some(())
    });
    let addr: std::net::SocketAddr = wait_until("the address", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).ok()?;
        let at = text.find("listening on http://")? + "listening on http://".len();
        text[at..].split_whitespace().next()?.parse().ok()
    });
    let load = load(addr);

    // Two upgrades: `kubectl set image` on the idle slot restarts its
    // container, whose server takes over; the other's drains, its slot idles.
    let mut servers = vec![first];
    for (idle_slot, busy_slot) in [(1, 0), (0, 1)] {
        let names = ["slot-a", "slot-b"];
        let slot = &mut slots[idle_slot];
        signal(slot.child.id(), Signal::TERM);
        assert_eq!(
            exit_code(&mut slot.child, Duration::from_secs(5)),
            Some(0),
            "an idle slot stops at once"
        );
        slot.child = container(&slot.command, &bin, &scratch.0, &log);
        pids.0.push(slot.child.id());
        let old = *servers.last().unwrap();
        let new = wait_until(
            "the restarted slot's server",
            Duration::from_secs(30),
            || {
                serving().filter(|&pid| {
                    pid != old && parent_of(pid) == Some(slots[idle_slot].child.id())
                })
            },
        );
        pids.0.push(new);
        servers.push(new);
        wait_until(
            &format!("{} idle", names[busy_slot]),
            Duration::from_secs(60),
            || idle(names[busy_slot]).then_some(()),
        );
        assert!(exited(old), "the old server is gone");
        answers(&load, 200);
    }
    let report = load.stop();
    assert_no_failure(&report, &log);
    for pid in &servers {
        assert!(
            report
                .samples
                .iter()
                .any(|s| s.pid.as_deref() == Some(&pid.to_string())),
            "server {pid} answered"
        );
    }

    // slot-a serves again; its server crashing ends its container (the
    // kubelet restarts it) instead of idling.
    let last = *servers.last().unwrap();
    signal(last, Signal::KILL);
    assert_eq!(
        exit_code(&mut slots[0].child, Duration::from_secs(10)),
        Some(137)
    );
    // The pod stops: the idle slot at once.
    signal(slots[1].child.id(), Signal::TERM);
    assert_eq!(
        exit_code(&mut slots[1].child, Duration::from_secs(5)),
        Some(0)
    );
}
