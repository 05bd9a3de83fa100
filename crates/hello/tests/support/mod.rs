//! Shared test support: start `hello` from a private copy of its binary, upgrade
//! it, find its processes and fds through /proc, and end everything by pid.
//!
//! The test process makes itself a child subreaper, so every generation of the
//! server (each one the child of the previous) ends up as our child once its parent
//! exits: we can reap them all and no zombie or stray process outlives a test.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use handover_testkit::*;
use rustix::process::Signal;

pub mod clients;
pub mod takeover;
pub mod tls;
// Not every test file uses it (each compiles this module on its own).
#[allow(unused_imports)]
pub use takeover::Takeover;

/// A short probation unless the test chooses one: the default (5 s) keeps
/// every old process that much longer, which adds up over a test suite.
pub fn short_probation(args: &[&str]) -> &'static [&'static str] {
    if args.contains(&"--probation") {
        &[]
    } else {
        &["--probation", "100ms"]
    }
}

/// How a server under test learns its PID file's path.
#[derive(Debug, Clone, Copy)]
pub enum PidFileBy {
    /// `--pid-file PATH` (hello).
    Flag,
    /// An environment variable (the axum example's `PID_FILE`).
    Env(&'static str),
}

/// A running `hello` and all the pids it has had.
pub struct Server {
    pub scratch: Scratch,
    pub exe: PathBuf,
    pub pid_file: PathBuf,
    pub log: PathBuf,
    pub addr: SocketAddr,
    pub pids: Vec<u32>,
    pub stdout: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `hello --listen 127.0.0.1:0 --pid-file … EXTRA` from a private copy of
    /// the binary and waits until it is ready (its PID file exists).
    pub fn start(label: &str, extra: &[&str]) -> Server {
        let mut args = vec!["--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Server::start_with_args(label, &args)
    }

    pub fn start_with_args(label: &str, args: &[&str]) -> Server {
        Server::start_with_env(label, args, &[])
    }

    /// Starts `hello ARGS --pid-file …` with extra environment variables.
    pub fn start_with_env(label: &str, args: &[&str], env: &[(&str, &Path)]) -> Server {
        let mut all = short_probation(args).to_vec();
        all.extend_from_slice(args);
        Server::launch(
            label,
            env!("CARGO_BIN_EXE_hello").as_ref(),
            &all,
            env,
            PidFileBy::Flag,
        )
    }

    /// Starts a private copy of the server binary `source` with `args` and
    /// `env`, telling it its PID file as `pid_file` says, and waits until it
    /// has printed where it listens and named itself in the PID file.
    pub fn launch(
        label: &str,
        source: &Path,
        args: &[&str],
        env: &[(&str, &Path)],
        pid_file_by: PidFileBy,
    ) -> Server {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
        let scratch = Scratch::new(label);
        let exe = scratch.path(source.file_name().unwrap().to_str().unwrap());
        copy_executable(source, &exe);
        let pid_file = scratch.path("server.pid");
        let log = scratch.path("server.log");
        let mut command = Command::new(&exe);
        command.args(args);
        match pid_file_by {
            PidFileBy::Flag => command.arg("--pid-file").arg(&pid_file),
            PidFileBy::Env(name) => command.env(name, &pid_file),
        };
        let mut child = spawn(
            command
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log).unwrap()),
        );
        let (send, stdout) = mpsc::channel();
        let pid = child.id();
        let pipe = child.stdout.take().unwrap();
        // Reaped through waitpid in `exited`, like every later generation.
        drop(child);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            scratch,
            exe,
            pid_file,
            log,
            addr: "127.0.0.1:1".parse().unwrap(),
            pids: vec![pid],
            stdout,
        };
        let first = server
            .stdout
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("hello printed nothing; log:\n{}", server.log_text()));
        server.addr = first
            .split_whitespace()
            .find_map(|word| {
                word.strip_prefix("http://")
                    .or_else(|| word.strip_prefix("https://"))
            })
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        wait_until(
            "the first process to be ready",
            Duration::from_secs(30),
            || (server.current_pid() == Some(pid)).then_some(()),
        );
        server
    }

    /// The address of the next listener the server announced with `scheme`
    /// (`tcp` for `--echo`), from its start-up lines.
    pub fn listening(&self, scheme: &str) -> SocketAddr {
        let prefix = format!("{scheme}://");
        loop {
            let line = self
                .stdout
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| {
                    panic!("no {scheme} listener announced; log:\n{}", self.log_text())
                });
            if let Some(addr) = line
                .split_whitespace()
                .find_map(|word| word.strip_prefix(prefix.as_str()))
                .and_then(|addr| addr.parse().ok())
            {
                return addr;
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn current_pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Sends SIGHUP to the current process and waits until the PID file names a
    /// new one; returns (old pid, new pid).
    pub fn upgrade(&mut self) -> (u32, u32) {
        let old = self.current_pid().expect("a current pid");
        signal(old, Signal::HUP);
        let new = try_wait_until(Duration::from_secs(60), || {
            self.current_pid().filter(|&pid| pid != old)
        })
        .unwrap_or_else(|| panic!("no successor committed; server log:\n{}", self.log_text()));
        self.pids.push(new);
        (old, new)
    }

    /// Waits until `pid` has exited (reaping it if it is our child).
    pub fn wait_exit(&self, pid: u32, timeout: Duration) {
        wait_until(&format!("pid {pid} to exit"), timeout, || {
            exited(pid).then_some(())
        });
    }

    /// Live (non-zombie) processes running this server's binary.
    pub fn live_processes(&self) -> Vec<u32> {
        processes()
            .into_iter()
            .filter(|&pid| state(pid).is_some_and(|s| s != 'Z'))
            .filter(|&pid| {
                std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == self.exe)
            })
            .collect()
    }

    /// Waits for a log line containing `needle` after byte `from`; returns it.
    pub fn wait_log(&self, needle: &str, from: usize, timeout: Duration) -> String {
        try_wait_until(timeout, || {
            let text = self.log_text();
            text.get(from..)?
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no log line with {needle:?} in:\n{}", self.log_text()))
    }

    /// Replaces the executable on disk the way a deployment does (write, rename).
    pub fn install(&self, source: &Path) {
        let staging = self.scratch.path("hello.new");
        copy_executable(source, &staging);
        std::fs::rename(&staging, &self.exe).unwrap();
    }

    /// Replaces the executable with a shell script.
    pub fn install_script(&self, body: &str) {
        install_script_at(&self.exe, body);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let mut all: BTreeSet<u32> = self.pids.iter().copied().collect();
        all.extend(self.live_processes());
        for &pid in &all {
            if !exited(pid) {
                signal(pid, Signal::KILL);
            }
        }
        for &pid in &all {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !exited(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// 8 clients that never retry — 4 opening a connection per request, 4 reusing
/// keep-alive connections — against `addr` for up to 4 minutes, once they have
/// 100 answers.
pub fn mixed_load(addr: SocketAddr) -> (handover_loadgen::LoadThread, handover_loadgen::LiveStats) {
    let load = handover_loadgen::LoadThread::start(
        handover_loadgen::LoadConfig::new(addr)
            .connections(8)
            .mode(handover_loadgen::Mode::Mixed)
            .duration(Duration::from_secs(240))
            .request_timeout(Duration::from_secs(10)),
    );
    let stats = load.stats();
    assert!(
        stats.wait_for_successes(100, Duration::from_secs(20)),
        "load did not start"
    );
    (load, stats)
}

/// Puts a shell script at `path` by write and rename, as a deployment would.
pub fn install_script_at(path: &Path, body: &str) {
    let staging = path.with_extension("staging");
    write_executable(&staging, &format!("#!/bin/sh\n{body}\n"));
    std::fs::rename(&staging, path).unwrap();
}

/// TCP socket inodes by state, from /proc/net/tcp and tcp6: (inode, local port,
/// state) with state "0A" for LISTEN and "01" for ESTABLISHED.
pub fn tcp_sockets() -> Vec<(String, u16, String)> {
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                continue;
            }
            let port = cols[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if let Some(port) = port {
                sockets.push((cols[9].to_owned(), port, cols[3].to_owned()));
            }
        }
    }
    sockets
}

/// The inode of the socket listening on `port`.
pub fn listener_inode(port: u16) -> String {
    tcp_sockets()
        .into_iter()
        .find(|(_, p, state)| *p == port && state == "0A")
        .map(|(inode, _, _)| format!("socket:[{inode}]"))
        .expect("a listening socket on the port")
}

/// The fds of `pid` that are not TCP connections (those come and go with load).
pub fn stable_fds(pid: u32) -> Vec<(u32, String)> {
    let connections: BTreeSet<String> = tcp_sockets()
        .into_iter()
        .filter(|(_, _, state)| state != "0A")
        .map(|(inode, _, _)| format!("socket:[{inode}]"))
        .collect();
    fds_of(pid)
        .into_iter()
        .filter(|(_, target)| !connections.contains(target))
        .collect()
}
