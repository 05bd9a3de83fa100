//! Test support shared by the workspace's end-to-end tests.
//!
//! Tests start real processes; these helpers give each test a private directory,
//! wait for conditions (polling with a bound, never sleeping in place of a
//! condition), and look at processes and their fds through /proc so that tests
//! can end what they started by pid and check that nothing leaked.
//!
//! Executables are written by a child process ([`copy_executable`],
//! [`write_executable`]), never through an fd of the test process: a file open
//! for writing while another thread forks is inherited by that child until it
//! execs, and exec'ing the file meanwhile fails with ETXTBSY ("Text file
//! busy"). A lock around writes and forks cannot cover the forks the standard
//! library makes for `Command::output` in other tests of the same binary.

#![forbid(unsafe_code)]
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions};

/// A private directory under the temporary directory, removed at drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh, empty directory whose name contains `label` and this test
    /// process's pid.
    pub fn new(label: &str) -> Scratch {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "handover-test-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a scratch directory");
        Scratch(dir)
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The wire-protocol test client (`fixtures/wire_client.py`): speaks, or fails
/// to speak, handover's protocol to a takeover or control socket in one of its
/// modes and prints what it got back.
pub fn wire_client() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/wire_client.py"
    ))
}

/// Waits for `condition` to return `Some`, checking every 5 ms, up to
/// `timeout`; panics with `what` if it never does.
pub fn wait_until<T>(what: &str, timeout: Duration, condition: impl FnMut() -> Option<T>) -> T {
    try_wait_until(timeout, condition)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Like [`wait_until`], but `None` on timeout.
pub fn try_wait_until<T>(timeout: Duration, mut condition: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = condition() {
            return Some(value);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `signal` to `pid` (errors ignored: it may be gone).
pub fn signal(pid: u32, signal: Signal) {
    if let Some(pid) = Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Whether `pid` is gone, reaping it if it is this process's zombie child.
pub fn exited(pid: u32) -> bool {
    let Some(raw) = Pid::from_raw(pid as i32) else {
        return true;
    };
    match rustix::process::waitpid(Some(raw), WaitOptions::NOHANG) {
        Ok(Some(_)) => return true,
        Ok(None) => return false,
        Err(_) => {} // not our child: look at /proc
    }
    !matches!(state(pid), Some(s) if s != 'Z')
}

/// The state letter of `pid` (R, S, Z, …), if it exists.
pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// The parent pid of `pid`.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every pid on the machine.
pub fn processes() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Children of `pid`, zombies included.
pub fn children_of(pid: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|&p| parent_of(p) == Some(pid))
        .collect()
}

/// Everything below `root` (children, their children, …), not `root` itself.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut found = vec![root];
    let mut index = 0;
    while index < found.len() {
        let children = children_of(found[index]);
        found.extend(
            children
                .into_iter()
                .filter(|c| !found.contains(c))
                .collect::<Vec<_>>(),
        );
        index += 1;
    }
    found.remove(0);
    found
}

/// fd number → link target (`socket:[123]`, `pipe:[9]`, `/dev/null`, …).
pub fn fds_of(pid: u32) -> Vec<(u32, String)> {
    let mut fds: Vec<(u32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| {
                let e = e.ok()?;
                let fd = e.file_name().to_str()?.parse().ok()?;
                let target = std::fs::read_link(e.path()).ok()?;
                Some((fd, target.to_string_lossy().into_owned()))
            })
            .collect()
        })
        .unwrap_or_default();
    fds.sort();
    fds
}

/// Copies an executable. The copy is written by `cp`, a child process, so that
/// no fd of this process is ever open for writing on it (see the crate docs).
pub fn copy_executable(from: &std::path::Path, to: &std::path::Path) {
    let status = std::process::Command::new("cp")
        .arg("--")
        .arg(from)
        .arg(to)
        .status()
        .expect("starting cp");
    assert!(status.success(), "cp {from:?} {to:?}: {status}");
}

/// Writes an executable file with `contents` (mode 0755). The file is written
/// by `sh`, a child process, fed through a pipe, so that no fd of this process
/// is ever open for writing on it (see the crate docs).
pub fn write_executable(path: &std::path::Path, contents: &str) {
    use std::io::Write;
    let mut writer = std::process::Command::new("sh")
        .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("starting sh");
    let mut stdin = writer.stdin.take().expect("a pipe to sh");
    stdin.write_all(contents.as_bytes()).expect("writing to sh");
    drop(stdin);
    let status = writer.wait().expect("waiting for sh");
    assert!(status.success(), "writing {path:?}: {status}");
}

/// Starts `command`, panicking with a plain message if it cannot start.
pub fn spawn(command: &mut std::process::Command) -> std::process::Child {
    command.spawn().expect("starting a process")
}

/// A stand-in for systemd's notify socket: a datagram socket that records what
/// a service sends with `sd_notify`.
pub struct FakeNotifySocket {
    socket: std::os::unix::net::UnixDatagram,
    /// The path to give the service as `NOTIFY_SOCKET`.
    pub path: PathBuf,
}

impl FakeNotifySocket {
    /// Binds `path`.
    pub fn bind(path: PathBuf) -> FakeNotifySocket {
        let socket =
            std::os::unix::net::UnixDatagram::bind(&path).expect("binding the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("setting a read timeout");
        FakeNotifySocket { socket, path }
    }

    /// The next message (waits up to 30 s, then panics).
    pub fn next(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self
            .socket
            .recv(&mut buf)
            .expect("a notify message within 30 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

/// The lowest soft fd limit under which `room` fd numbers are free, given the
/// fds open (`fds_of`): a new fd takes the lowest free number, and must be
/// below the limit.
pub fn limit_leaving(fds: &[(u32, String)], room: u64) -> u64 {
    (1..)
        .find(|&limit: &u64| {
            let used = fds.iter().filter(|(fd, _)| u64::from(*fd) < limit).count() as u64;
            limit - used == room
        })
        .expect("some limit leaves that room")
}

/// Sets the soft open-file limit of `pid` (`None`: unlimited); the hard one
/// stays, so it can be raised back.
pub fn set_soft_fd_limit(pid: u32, soft: Option<u64>) {
    use rustix::process::{Resource, Rlimit};
    let hard = rustix::process::getrlimit(Resource::Nofile).maximum;
    rustix::process::prlimit(
        Pid::from_raw(pid as i32),
        Resource::Nofile,
        Rlimit {
            current: soft,
            maximum: hard,
        },
    )
    .expect("prlimit");
}

/// The fds of `pid` once they have not changed for 200 ms (nothing under way).
pub fn fds_at_rest(pid: u32) -> Vec<(u32, String)> {
    wait_until("the process at rest", Duration::from_secs(10), || {
        let before = fds_of(pid);
        std::thread::sleep(Duration::from_millis(200));
        (fds_of(pid) == before).then_some(before)
    })
}

/// Parses the Prometheus text format (what `handover status --format
/// prometheus` prints) into `name{labels}` → value. Comments and `# EOF` are
/// skipped; any other line that is not a sample panics, so a test that reads
/// metrics also checks their syntax.
pub fn parse_prometheus(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut samples = std::collections::BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a value: {line:?}"));
        assert!(
            series
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_'),
            "not a metric name: {line:?}"
        );
        samples.insert(series.to_owned(), value);
    }
    samples
}

/// Builds the `hello` example server into the directory of `binary` (a
/// `CARGO_BIN_EXE_…` path of the same workspace and profile) and returns its
/// path: for tests outside the `hello` crate, which cargo does not build it
/// for.
pub fn build_hello(binary: &std::path::Path) -> PathBuf {
    let profile_dir = binary.parent().expect("the binary's directory");
    let release = profile_dir
        .file_name()
        .is_some_and(|name| name == "release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        .args(["build", "--quiet", "-p", "hello", "--bin", "hello"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        build.arg("--release");
    }
    if let Some(target_dir) = profile_dir.parent() {
        build.env("CARGO_TARGET_DIR", target_dir);
    }
    let status = build.status().expect("run cargo build -p hello");
    assert!(status.success(), "cargo build -p hello failed: {status}");
    let hello = profile_dir.join("hello");
    assert!(hello.exists(), "no hello binary at {}", hello.display());
    hello
}
