//! Child processes: start them in their own process group, reap every
//! generation, and make sure none is left behind.
//!
//! The benchmark makes itself a *child subreaper*: a server generation is the
//! child of the previous one, and when that one exits the orphan is re-parented
//! to us instead of init. So every process a benchmark starts is, sooner or
//! later, our child: we can reap it, and "no child left" means "nothing left".
//! Each server chain is also its own process group (successors inherit it), so
//! a chain that misbehaves can be ended with one `kill(-pgid)` — only processes
//! this benchmark started.

use std::io;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use handover_mechanism::protocol;
use rustix::process::{Pid, Signal, WaitOptions};

/// Makes this process the reaper of its orphaned descendants.
pub fn become_subreaper() -> Result<(), String> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|e| format!("cannot become a child subreaper: {e}"))
}

fn pid(raw: u32) -> Option<Pid> {
    Pid::from_raw(i32::try_from(raw).ok()?)
}

/// Spawns `command` as the leader of a new process group, with no inherited
/// hand-off variables (a benchmark started under systemd must not pass its
/// sockets or notify socket on). The returned child's pid is also the group id.
pub fn spawn_group(command: &mut Command) -> Result<Child, String> {
    use std::os::unix::process::CommandExt;
    for variable in [
        protocol::LISTEN_FDS,
        protocol::LISTEN_FDNAMES,
        protocol::LISTEN_PID,
        protocol::NOTIFY_SOCKET,
        protocol::HANDOVER_PARENT_PID,
        protocol::HANDOVER_GENERATION,
        protocol::HANDOVER_UPSTREAM_NOTIFY_SOCKET,
    ] {
        command.env_remove(variable);
    }
    let child = command
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", command.get_program()))?;
    crate::cleanup::register(child.id());
    Ok(child)
}

/// Sends `signal` to process `raw`.
pub fn signal(raw: u32, signal: Signal) -> io::Result<()> {
    let target = pid(raw).ok_or_else(|| io::Error::other(format!("invalid pid {raw}")))?;
    rustix::process::kill_process(target, signal).map_err(io::Error::from)
}

/// Kills every process of group `pgid` (one we started), if any is left.
pub fn kill_group(pgid: u32) {
    if let Some(group) = pid(pgid) {
        let _ = rustix::process::kill_process_group(group, Signal::KILL);
    }
}

/// Whether process `raw` has exited. Reaps it if it is our child; otherwise
/// (someone else's child) a zombie or a missing `/proc` entry counts as exited.
pub fn has_exited(raw: u32) -> bool {
    let Some(target) = pid(raw) else { return true };
    match rustix::process::waitpid(Some(target), WaitOptions::NOHANG) {
        Ok(Some(_)) => true,
        Ok(None) => false,
        Err(_) => match std::fs::read_to_string(format!("/proc/{raw}/stat")) {
            // The state follows the parenthesised command name.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => true,
        },
    }
}

/// Reaps children that have exited, without waiting. Returns `false` once no
/// child (hence, as subreaper, no descendant) is left.
pub fn reap_exited() -> bool {
    loop {
        match rustix::process::wait(WaitOptions::NOHANG) {
            Ok(Some(_)) => continue,
            Ok(None) => return true,
            Err(_) => return false, // ECHILD: nobody left
        }
    }
}

/// Reaps until no child is left or `timeout` passes; `true` if none is left.
pub fn reap_all(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while reap_exited() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// Ends group `pgid`: gives its processes `grace` to exit by themselves, then
/// kills what is left, and reaps everything. `true` if nothing had to be killed.
pub fn finish_group(pgid: u32, grace: Duration) -> bool {
    let clean = reap_all(grace);
    if !clean {
        kill_group(pgid);
        if !reap_all(Duration::from_secs(10)) {
            eprintln!("warning: processes of group {pgid} survived SIGKILL for 10 s");
            return false;
        }
    }
    crate::cleanup::unregister(pgid);
    clean
}

/// Makes sure this process (and so its children) may have `needed` open files.
pub fn ensure_fd_limit(needed: u64) -> Result<(), String> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    match limit.current {
        Some(current) if current < needed => {}
        _ => return Ok(()), // enough, or unlimited
    }
    if limit.maximum.is_some_and(|maximum| maximum < needed) {
        return Err(format!(
            "need {needed} open files but the hard limit is {:?} (raise it with ulimit -Hn)",
            limit.maximum
        ));
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(needed),
            maximum: limit.maximum,
        },
    )
    .map_err(|e| format!("cannot raise the open-file limit to {needed}: {e}"))
}

/// Makes sure this process (and so its children) may have `needed` open
/// files, raising the soft limit to the hard one if it is lower.
pub fn raise_fd_limit(needed: u64) -> Result<(), String> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    match limit.current {
        Some(current) if current < needed => {}
        _ => return Ok(()), // enough, or unlimited
    }
    if limit.maximum.is_some_and(|maximum| maximum < needed) {
        return Err(format!(
            "need {needed} open files but the hard limit is {:?} (raise it with ulimit -Hn)",
            limit.maximum
        ));
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum.or(Some(needed)),
            maximum: limit.maximum,
        },
    )
    .map_err(|e| format!("cannot raise the open-file limit: {e}"))
}
