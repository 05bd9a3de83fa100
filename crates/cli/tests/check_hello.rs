//! `handover check` against the real example server, `hello`, upgraded by
//! SIGHUP three times: a correct zero-downtime server, so the verdict must be
//! a pass with every generation answering. And `handover reload --socket`
//! against hello's takeover socket: the exit status and message are its
//! reload hook's.
//!
//! `hello` is not a dependency of this crate, so its binary is taken from the
//! same target directory as `handover`, built there with `cargo build -p hello`
//! (quick when it is up to date). Each generation of hello is the child of the
//! previous one; this test process makes itself a child subreaper so every
//! generation ends up its child, and ends and reaps them all by pid.

mod check_support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use check_support::{check, Scratch};
use handover_testkit::parse_prometheus;
use rustix::process::{Pid, Signal, WaitOptions};

/// Builds `hello` next to the `handover` binary and returns its path.
fn hello_binary() -> PathBuf {
    handover_testkit::build_hello(env!("CARGO_BIN_EXE_handover").as_ref())
}

/// Every hello process this test started (directly or through upgrades);
/// killed and reaped at drop.
struct Pids(BTreeSet<u32>);

impl Pids {
    fn end_all(&mut self) {
        for &pid in &self.0 {
            if let Some(pid) = Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
        for &pid in &self.0 {
            let Some(pid) = Pid::from_raw(pid as i32) else {
                continue;
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            // Reaped once it is our (adopted) child and has exited.
            while Instant::now() < deadline {
                match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
    }
}

impl Drop for Pids {
    fn drop(&mut self) {
        self.end_all();
    }
}

#[test]
fn hello_upgraded_three_times_passes_with_every_generation_answering() {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
    let dir = Scratch::new("hello");
    let (mut pids, pid_file, lines) = start_hello(&dir, &["--startup-delay", "200ms"]);
    let addr = address(&lines, "http://");

    let upgrade = format!("kill -HUP $(cat '{}')", pid_file.display());
    let run = check(&[
        "--target",
        &format!("http://{addr}/"),
        "--upgrade",
        &upgrade,
        "--every",
        "1s",
        "--upgrade-count",
        "3",
        "--connections",
        "8",
        "--json",
    ]);
    let json = run.json();
    let answered_pids: Vec<u32> = json["answered_by_pid"]
        .as_object()
        .map(|pids| pids.keys().filter_map(|pid| pid.parse().ok()).collect())
        .unwrap_or_default();
    pids.0.extend(answered_pids);
    if let Some(current) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|text| text.trim().parse().ok())
    {
        pids.0.insert(current);
    }

    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(json["verdict"], "pass");
    assert_eq!(run.n(&["failed"]), 0, "{run:?}");
    assert!(run.n(&["requests"]) > 100, "{run:?}");
    let upgrades = json["upgrades"].as_array().unwrap();
    assert_eq!(upgrades.len(), 3, "{run:?}");
    assert!(
        upgrades
            .iter()
            .all(|u| u["ok"] == true && u["exit_status"] == 0),
        "{run:?}"
    );
    let generations = json["answered_by"].as_object().unwrap();
    assert!(
        generations.len() > 1,
        "more than one generation answered: {run:?}"
    );
    assert_eq!(
        generations.keys().collect::<Vec<_>>(),
        ["0", "1", "2", "3"],
        "every generation answered: {run:?}"
    );
    // Each upgrade's window closed on the new generation's first answer,
    // which comes after hello's 200 ms start-up.
    for (i, upgrade) in upgrades.iter().enumerate() {
        assert_eq!(
            upgrade["new_answered_by"]
                .as_str()
                .map(|who| who.starts_with(&format!("generation {}, pid", i + 1))),
            Some(true),
            "{run:?}"
        );
        let waited = upgrade["first_new_answer_s"].as_f64().unwrap()
            - upgrade["started_s"].as_f64().unwrap();
        assert!(waited >= 0.2, "{run:?}");
    }
    pids.end_all();
}

/// `hello --listen 127.0.0.1:0 EXTRA` with a PID file, its stdout in a file
/// (every generation inherits it and prints its addresses there; a closed
/// pipe would kill the successors); once ready: its pids, the PID file and
/// what it printed.
fn start_hello(dir: &Scratch, extra: &[&str]) -> (Pids, PathBuf, String) {
    let hello = hello_binary();
    let pid_file = dir.path("hello.pid");
    let out = dir.path("hello.out");
    let child = Command::new(&hello)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .arg("--pid-file")
        .arg(&pid_file)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hello");
    // Reaped through waitpid in `Pids`, like every later generation.
    let pids = Pids(BTreeSet::from([child.id()]));
    drop(child);
    let started = Instant::now();
    while !pid_file.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "hello never became ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let lines = std::fs::read_to_string(&out).unwrap();
    (pids, pid_file, lines)
}

fn address(lines: &str, scheme: &str) -> String {
    lines
        .split_whitespace()
        .find_map(|word| word.strip_prefix(scheme))
        .unwrap_or_else(|| panic!("no {scheme} address in {lines:?}"))
        .to_owned()
}

#[test]
fn check_reports_every_connection_kept_across_upgrades_of_a_migrating_hello() {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
    let dir = Scratch::new("hello-migrate");
    let (mut pids, pid_file, lines) = start_hello(&dir, &["--echo", "127.0.0.1:0"]);
    let upgrade = format!("kill -HUP $(cat '{}')", pid_file.display());
    let schedule = ["--every", "700ms", "--upgrade-count", "3", "--json"];
    let echo = address(&lines, "tcp://");
    let mut args = vec![
        "--target".to_owned(),
        format!("tcp://{echo}"),
        "--protocol".into(),
        "long-lived".into(),
        "--echo-check".into(),
        "--interval".into(),
        "20ms".into(),
        "--connections".into(),
        "20".into(),
        "--upgrade".into(),
        upgrade.clone(),
    ];
    args.extend(schedule.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = check(&args);
    let json = run.json();
    assert_eq!(run.code, 0, "{run:?}");
    let long_lived = &json["long_lived"];
    assert_eq!(long_lived["connections"], 20, "{run:?}");
    assert_eq!(
        long_lived["survived"], 20,
        "every connection survived: {run:?}"
    );
    assert_eq!(long_lived["served_by_more_than_one_pid"], 20, "{run:?}");
    assert!(
        long_lived["bytes_verified"].as_u64().unwrap() > 0,
        "{run:?}"
    );

    let http = address(&lines, "http://");
    let mut args = vec![
        "--target".to_owned(),
        format!("http://{http}/"),
        "--mode".into(),
        "keep-alive".into(),
        "--connections".into(),
        "4".into(),
        "--upgrade".into(),
        upgrade,
    ];
    args.extend(schedule.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = check(&args);
    let json = run.json();
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(json["keep_alive"]["closed_by_server"], 0, "{run:?}");
    assert_eq!(json["keep_alive"]["opened"], 4, "{run:?}");
    if let Some(current) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|text| text.trim().parse().ok())
    {
        pids.0.insert(current);
    }
    for line in std::fs::read_to_string(dir.path("hello.out"))
        .unwrap()
        .lines()
    {
        if let Some(pid) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("pid="))
            .and_then(|p| p.parse().ok())
        {
            pids.0.insert(pid);
        }
    }
    pids.end_all();
}

/// `handover reload --socket` runs a library process's reload hook and
/// reports it: exit 0 with its message, or exit 1 with why the new
/// configuration was refused (and the old one serves on); `handover status
/// --format prometheus --socket` counts both.
#[test]
fn handover_reload_reports_what_a_library_process_hook_said() {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
    let dir = Scratch::new("hello-reload");
    let greeting = dir.path("greeting.txt");
    std::fs::write(&greeting, "hello").unwrap();
    let socket = dir.path("takeover.sock");
    let (_pids, _, lines) = start_hello(
        &dir,
        &[
            "--greeting-file",
            greeting.to_str().unwrap(),
            "--takeover",
            socket.to_str().unwrap(),
        ],
    );
    let addr: std::net::SocketAddr = address(&lines, "http://").parse().unwrap();
    let reload = || {
        let output = Command::new(env!("CARGO_BIN_EXE_handover"))
            .arg("reload")
            .arg("--socket")
            .arg(&socket)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), said)
    };
    let greets = |word: &str| {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response.contains(&format!("\r\n\r\n{word} from pid="))
    };

    std::fs::write(&greeting, "bonjour").unwrap();
    let (code, said) = reload();
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains(r#"greeting "hello" → "bonjour""#), "{said}");
    assert!(greets("bonjour"));

    std::fs::write(&greeting, "").unwrap();
    let (code, said) = reload();
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("refused, the old one is kept") && said.contains("one line of 1 to 256"),
        "{said}"
    );
    assert!(greets("bonjour"), "the old greeting serves on");

    // And the process's counters saw both.
    let output = Command::new(env!("CARGO_BIN_EXE_handover"))
        .args(["status", "--format", "prometheus", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let samples = parse_prometheus(&text);
    assert_eq!(
        samples["handover_reloads_total{result=\"ok\"}"], 1.0,
        "{text}"
    );
    assert_eq!(
        samples["handover_reloads_total{result=\"refused\"}"], 1.0,
        "{text}"
    );
}
