//! The chain technique shared by `handoff` and `ready-to-stop`.
//!
//! The driver (the process the user runs) starts generation 0 of a small server
//! — this very binary, with a hidden `chain-*` subcommand — as a child in its own
//! process group, and waits for a `done` record in the results file. Each
//! generation claims its sockets, calls `ready()`, waits until its parent (the
//! previous generation) has exited so that nothing else runs during the next
//! measurement, then calls `upgrade()`, which re-executes the same argv; the
//! successor detects `is_successor()` and carries on. The last generation
//! writes `done`. Every process records what it measured in the results file.

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Pid;

use crate::procs;
use crate::results::{self, Records};

/// Runs a chain: `args` after the program name, `results` the file it writes.
/// Returns its records once one says `done`; ends every process of the chain
/// whatever happens.
pub fn run(args: &[String], results: &Path, timeout: Duration) -> Result<Records, String> {
    procs::become_subreaper()?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let child = procs::spawn_group(
        Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    )?;
    let pgid = child.id();
    drop(child); // reaped through `procs`, like every later generation
    let outcome = wait_done(results, timeout);
    let clean = procs::finish_group(pgid, Duration::from_secs(10));
    let records = outcome?;
    if !clean {
        return Err("chain processes did not exit by themselves and were killed".into());
    }
    Ok(records)
}

fn wait_done(results: &Path, timeout: Duration) -> Result<Records, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let records = Records::read(results);
        if let Some(error) = records.errors.first() {
            return Err(format!("the chain failed: {error}"));
        }
        if records.has("done") {
            return Ok(records);
        }
        // Check the file once more after the last process is gone: it may have
        // written `done` just before exiting.
        if !procs::reap_exited() && !Records::read(results).has("done") {
            return Err("every chain process exited before the chain was done".into());
        }
        if Instant::now() >= deadline {
            return Err(format!("the chain was not done within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// In a chain process: records `error` and returns a failure exit code.
pub fn fail(results: &Path, error: impl std::fmt::Display) -> ExitCode {
    let text = format!("pid {}: {error}", std::process::id());
    eprintln!("handover-bench chain: {text}");
    results::append_error(results, &text);
    ExitCode::FAILURE
}

/// In a successor: waits until `parent` (the pid it had at start) has exited,
/// which re-parents this process. `false` if it did not within `timeout`.
pub fn wait_parent_gone(parent: Option<Pid>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while rustix::process::getppid() == parent {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    true
}
