//! No process left behind when the benchmark itself is interrupted.
//!
//! Server chains run in process groups of their own (so that a misbehaving
//! one can be killed as a whole), which also means a Ctrl-C in the terminal
//! does not reach them. So the groups in use are registered here, and a
//! SIGINT, SIGTERM or SIGQUIT kills them, reaps them, and exits.

use std::sync::Mutex;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::procs;

/// Process groups started and not yet finished.
static GROUPS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn groups() -> std::sync::MutexGuard<'static, Vec<u32>> {
    GROUPS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the thread that cleans up on SIGINT, SIGTERM or SIGQUIT.
pub fn install() -> Result<(), String> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGQUIT])
        .map_err(|e| format!("cannot handle signals: {e}"))?;
    std::thread::Builder::new()
        .name("cleanup".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let pending: Vec<u32> = groups().clone();
                eprintln!("handover-bench: signal {signal}; killing process groups {pending:?}");
                for pgid in pending {
                    procs::kill_group(pgid);
                }
                procs::reap_all(Duration::from_secs(5));
                std::process::exit(128 + signal);
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start the cleanup thread: {e}"))
}

/// Registers a process group this benchmark started.
pub fn register(pgid: u32) {
    groups().push(pgid);
}

/// Forgets a group whose processes have all been reaped.
pub fn unregister(pgid: u32) {
    groups().retain(|&g| g != pgid);
}
