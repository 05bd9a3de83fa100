//! Commands for the third-party servers under `handover run`: a Go server
//! (built here from `fixtures/go_server.go`), a Node server and puma. Each
//! panics with what to install when its tool is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{fixture, Scratch};

/// The path of `tool` in `PATH`, or a panic saying what to install.
fn require(tool: &str, install: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(tool))
        .find(|path| is_executable(path))
        .unwrap_or_else(|| panic!("`{tool}` is not in PATH; this test needs it ({install})"))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Builds `fixtures/go_server.go` into `scratch` and returns the binary.
///
/// The Go build cache lives under the temporary directory and is shared by
/// every test run (it is safe for concurrent builds), so only the first build
/// on a machine compiles net/http; the others take a fraction of a second.
/// GOCACHE, GOPATH and HOME are set here, so a clean CI machine running as
/// root with no home directory needs nothing else. CGO is off: the server uses
/// nothing from C, and the build then needs no C compiler.
pub fn go_server(scratch: &Scratch) -> PathBuf {
    let go = require("go", "Debian: apt-get install golang-go");
    let cache = std::env::temp_dir().join("handover-test-go");
    let output = scratch.path("go_server");
    let build = Command::new(go)
        .arg("build")
        .arg("-o")
        .arg(&output)
        .arg(fixture("go_server.go"))
        .current_dir(&scratch.0)
        .env("GOCACHE", cache.join("cache"))
        .env("GOPATH", cache.join("path"))
        .env("HOME", cache.join("home"))
        .env("CGO_ENABLED", "0")
        .env("GOTOOLCHAIN", "local")
        .env_remove("GOFLAGS")
        .output()
        .expect("running go build");
    assert!(
        build.status.success(),
        "go build of go_server.go failed ({}):\n{}",
        build.status,
        super::text(&build)
    );
    output
}

/// `node fixtures/node_server.js` (it listens on fd 3).
pub fn node_command() -> Vec<String> {
    let node = require("node", "Node.js 18 or later");
    vec![
        node.to_string_lossy().into_owned(),
        fixture("node_server.js").to_string_lossy().into_owned(),
    ]
}

fn puma() -> String {
    require("puma", "Debian: apt-get install puma")
        .to_string_lossy()
        .into_owned()
}

/// `puma -b tcp://127.0.0.1:PORT fixtures/puma/config.ru`: puma adopts the
/// socket from `LISTEN_FDS` whose address is exactly that of a bind URL, so the
/// supervisor must listen on the same fixed port
/// (`Supervisor::start_listening(…, "web=127.0.0.1:PORT", …)`).
pub fn puma_command(port: u16) -> Vec<String> {
    vec![
        puma(),
        "-b".into(),
        format!("tcp://127.0.0.1:{port}"),
        fixture("puma/config.ru").to_string_lossy().into_owned(),
    ]
}

/// `puma --bind-to-activated-sockets only fixtures/puma/config.ru`: puma binds
/// to whatever sockets `LISTEN_FDS` hands it, so any port works, `:0` too.
pub fn puma_activated_command() -> Vec<String> {
    vec![
        puma(),
        "--bind-to-activated-sockets".into(),
        "only".into(),
        fixture("puma/config.ru").to_string_lossy().into_owned(),
    ]
}
