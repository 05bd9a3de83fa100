//! Support for the `handover run` tests: start a supervisor, talk to it, find
//! its children, and end everything by pid.

#![allow(dead_code)]

pub mod fresh;
pub mod http;
pub mod servers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use handover_testkit::*;
use rustix::process::Signal;

pub const HANDOVER: &str = env!("CARGO_BIN_EXE_handover");

/// The test fixtures (Python servers and apps).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// How to start a supervisor: [`Launch::new`], then change what differs.
pub struct Launch<'a> {
    pub label: &'a str,
    /// The first `--listen` (default `web=127.0.0.1:0`).
    pub listen: &'a str,
    pub options: &'a [&'a str],
    pub command: &'a [&'a str],
    pub env: &'a [(&'a str, &'a Path)],
    /// Run the supervisor as this uid (the test must be root to switch).
    pub as_user: Option<u32>,
}

impl<'a> Launch<'a> {
    pub fn new(label: &'a str, options: &'a [&'a str], command: &'a [&'a str]) -> Launch<'a> {
        Launch {
            label,
            listen: "web=127.0.0.1:0",
            options,
            command,
            env: &[],
            as_user: None,
        }
    }
}

/// A running `handover run`.
pub struct Supervisor {
    pub scratch: Scratch,
    pub process: Child,
    pub pid_file: PathBuf,
    pub log: PathBuf,
    pub addr: SocketAddr,
}

/// A short probation unless the test chooses one: the default (5 s) keeps
/// every old child that much longer, which adds up over a test suite.
fn short_probation(options: &[&str]) -> &'static [&'static str] {
    if options.contains(&"--probation") {
        &[]
    } else {
        &["--probation", "100ms"]
    }
}

impl Supervisor {
    /// `handover run --listen web=127.0.0.1:0 --pid-file … OPTIONS -- COMMAND`,
    /// waiting until its first child is current.
    pub fn start(label: &str, options: &[&str], command: &[&str]) -> Supervisor {
        Supervisor::start_with_env(label, options, command, &[])
    }

    pub fn start_with_env(
        label: &str,
        options: &[&str],
        command: &[&str],
        env: &[(&str, &Path)],
    ) -> Supervisor {
        Supervisor::launch(Launch {
            env,
            ..Launch::new(label, options, command)
        })
    }

    /// [`Supervisor::start`] with another `--listen` for the first socket.
    pub fn start_listening(
        label: &str,
        listen: &str,
        options: &[&str],
        command: &[&str],
    ) -> Supervisor {
        Supervisor::launch(Launch {
            listen,
            ..Launch::new(label, options, command)
        })
    }

    /// Starts `handover run` as `launch` says, waiting until its first child is
    /// current.
    pub fn launch(launch: Launch<'_>) -> Supervisor {
        let scratch = Scratch::new(launch.label);
        let pid_file = scratch.path("handover.pid");
        let log = scratch.path("handover.log");
        let mut command = match launch.as_user {
            Some(uid) => {
                // Another user must be able to write its PID file and socket.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o777))
                    .unwrap();
                let mut command = Command::new("python3");
                command.args([
                    "-c",
                    "import os, sys\nuid = int(sys.argv[1])\nos.setgroups([]); os.setgid(uid); os.setuid(uid)\nos.execv(sys.argv[2], sys.argv[2:])",
                    &uid.to_string(),
                    HANDOVER,
                ]);
                command
            }
            None => Command::new(HANDOVER),
        };
        let process = command
            .args(["run", "--listen", launch.listen, "--pid-file"])
            .arg(&pid_file)
            .args(short_probation(launch.options))
            .args(launch.options)
            .arg("--")
            .args(launch.command)
            .env("NO_COLOR", "1")
            .envs(launch.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(scratch.path("stdout")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut supervisor = Supervisor {
            scratch,
            process,
            pid_file,
            log,
            addr: "127.0.0.1:1".parse().unwrap(),
        };
        let status = wait_until(
            "the first child to be ready",
            Duration::from_secs(30),
            || {
                if let Ok(Some(exit)) = supervisor.process.try_wait() {
                    panic!("handover run exited {exit}:\n{}", supervisor.log_text());
                }
                supervisor.status().filter(|s| s["current"].is_object())
            },
        );
        supervisor.addr = status["sockets"][0]["address"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        supervisor
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `handover SUBCOMMAND --pid-file … ARGS`.
    pub fn client(&self, subcommand: &str, args: &[&str]) -> Output {
        Command::new(HANDOVER)
            .arg(subcommand)
            .arg("--pid-file")
            .arg(&self.pid_file)
            .args(args)
            .output()
            .unwrap()
    }

    /// `handover status --json`, if the supervisor answers.
    pub fn status(&self) -> Option<serde_json::Value> {
        let output = self.client("status", &["--json"]);
        if !output.status.success() {
            return None;
        }
        serde_json::from_slice(&output.stdout).ok()
    }

    pub fn current_pid(&self) -> u32 {
        self.status().unwrap()["current"]["pid"].as_u64().unwrap() as u32
    }

    /// Runs `handover upgrade` on another thread; join it for its output.
    pub fn upgrade_in_background(&self) -> std::thread::JoinHandle<Output> {
        let pid_file = self.pid_file.clone();
        std::thread::spawn(move || {
            Command::new(HANDOVER)
                .arg("upgrade")
                .arg("--pid-file")
                .arg(pid_file)
                .output()
                .unwrap()
        })
    }

    /// The upgrade command for `handover check --upgrade`.
    pub fn upgrade_command(&self) -> String {
        format!("{HANDOVER} upgrade --pid-file {}", self.pid_file.display())
    }

    /// Runs `handover check --json` against this supervisor's socket.
    pub fn check(&self, args: &[&str]) -> (Output, serde_json::Value) {
        let output = Command::new(HANDOVER)
            .args(["check", "--json", "--target"])
            .arg(format!("http://{}/", self.addr))
            .args(args)
            .output()
            .unwrap();
        let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "check printed no JSON ({e}):\n{}\n{}\nsupervisor log:\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                self.log_text()
            )
        });
        (output, report)
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let children = descendants(self.process.id());
        signal(self.process.id(), Signal::INT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.process.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !matches!(self.process.try_wait(), Ok(Some(_))) {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
        for pid in children {
            if !exited(pid) {
                signal(pid, Signal::KILL);
            }
        }
    }
}

/// The text of a client's output, both streams.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Asserts that a `handover check --json` report shows no failure at all.
pub fn assert_clean(report: &serde_json::Value, supervisor: &Supervisor) {
    assert_eq!(
        report["failed"],
        0,
        "failures: {}\nfirst failures: {}\nupgrades: {}\nsupervisor log:\n{}",
        report["failures"],
        report["first_failures"],
        report["upgrades"],
        supervisor.log_text()
    );
}
