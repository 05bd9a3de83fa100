//! A `hello` that serves takeovers, and the same command run again to take
//! over from it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::*;

/// A `hello` that serves takeovers at `takeover.sock` in its scratch dir.
pub struct Takeover {
    pub server: Server,
    pub path: PathBuf,
    /// A command the new versions run under (`prlimit …`), empty by default.
    pub wrapper: Vec<String>,
}

impl Takeover {
    pub fn start(label: &str, extra: &[&str]) -> Takeover {
        let dir =
            std::env::temp_dir().join(format!("handover-takeover-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("run").join("takeover.sock");
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--takeover",
            path.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let server = Server::start_with_args(label, &args);
        Takeover {
            server,
            path,
            wrapper: Vec::new(),
        }
    }

    /// Runs the same command again in a session of its own; returns its child
    /// handle (not waited for).
    pub fn launch(&self, extra: &[&str]) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.server.log)
            .unwrap();
        spawn(
            Command::new("setsid")
                .args(&self.wrapper)
                .arg(&self.server.exe)
                .args(["--listen", "127.0.0.1:0", "--takeover"])
                .arg(&self.path)
                .arg("--pid-file")
                .arg(&self.server.pid_file)
                .args(short_probation(extra))
                .args(extra)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        )
    }

    /// A takeover that must succeed: returns (old pid, new pid) once the old
    /// process has exited.
    pub fn take_over(&mut self, extra: &[&str]) -> (u32, u32) {
        let old = self.server.current_pid().unwrap();
        let child = self.launch(extra);
        let launched = child.id();
        drop(child); // reaped through `exited`
        self.server.pids.push(launched);
        // The PID file names whoever took over (setsid execs in place, but
        // would fork if it were a process-group leader: trust the file).
        let new = try_wait_until(Duration::from_secs(30), || {
            self.server.current_pid().filter(|&pid| pid != old)
        })
        .unwrap_or_else(|| {
            panic!(
                "pid {launched} never took over from {old} (exited: {}); log:\n{}",
                exited(launched),
                self.server.log_text()
            )
        });
        if new != launched {
            self.server.pids.push(new);
        }
        self.server.wait_exit(old, Duration::from_secs(30));
        (old, new)
    }

    /// `GET /history`, one pid per line.
    pub fn history(&self) -> Vec<u32> {
        let text = get(self.server.addr, "/history");
        text.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// A wire client of `mode` (see [`wire_client`]), its line.
    pub fn client(&self, mode: &str, uid: Option<u32>) -> String {
        let mut command = Command::new("python3");
        command.arg(wire_client()).arg(&self.path).arg(mode);
        if let Some(uid) = uid {
            command.arg(uid.to_string());
        }
        let output = command.output().unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for Takeover {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent().and_then(|d| d.parent()) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// One GET on a new connection; the body.
pub fn get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}
