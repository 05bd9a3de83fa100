//! One child process of the supervisor: started with the sockets, its stderr
//! forwarded and its last lines kept for error reports.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handover_mechanism::child::{self, Child, Program};
use handover_mechanism::notify::NotifyReceiver;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;

/// Lines of a child's stderr kept for an error report.
const TAIL_LINES: usize = 20;

/// A child and what the supervisor knows about it.
pub struct Generation {
    /// 1 for the first child, then +1 per start.
    pub number: u64,
    /// Whose sockets it holds: its own number after an upgrade, the crashed
    /// child's after a restart (see [`crate::listeners`]).
    pub epoch: u64,
    pub child: Child,
    pub started: Instant,
    pub ready_at: Option<Instant>,
    /// The private notify socket (`--ready notify`).
    pub notify: Option<NotifyReceiver>,
    tail: Arc<Mutex<VecDeque<String>>>,
    forwarder: Option<JoinHandle<()>>,
    /// A copy of the read end of its stderr pipe, handed to the new image in a
    /// self-upgrade (the forwarder owns the other).
    pub stderr: Option<OwnedFd>,
}

impl Generation {
    /// Starts `command` (after `{fd:NAME}` substitution) with `sockets`, those of
    /// `epoch`.
    pub fn start(
        number: u64,
        epoch: u64,
        command: &[OsString],
        sockets: &[(&str, BorrowedFd<'_>)],
        with_notify: bool,
    ) -> io::Result<Generation> {
        let program = program(command, sockets)?;
        let notify = with_notify.then(NotifyReceiver::create).transpose()?;
        let mut env = Vec::new();
        if let Some(notify) = &notify {
            env.push((
                handover_mechanism::protocol::NOTIFY_SOCKET,
                notify.path().as_os_str().to_owned(),
            ));
        }
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let child = child::spawn_with_stderr(&program, sockets, &env, Some(write.as_fd()))?;
        drop(write);
        let stderr = read.try_clone().ok();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let forwarder = Some(tokio::spawn(forward_stderr(read, Arc::clone(&tail))));
        Ok(Generation {
            stderr,
            number,
            epoch,
            child,
            started: Instant::now(),
            ready_at: None,
            notify,
            tail,
            forwarder,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// A ready child started by this process before it re-executed itself,
    /// `age` ago, with the read end of its stderr pipe.
    pub fn adopt(
        number: u64,
        epoch: u64,
        pid: u32,
        age: Duration,
        stderr: Option<OwnedFd>,
    ) -> io::Result<Generation> {
        let child =
            Child::adopt(pid).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "pid 0"))?;
        let now = Instant::now();
        let started = now.checked_sub(age).unwrap_or(now);
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let copy = stderr.as_ref().and_then(|fd| fd.try_clone().ok());
        let forwarder = stderr.map(|read| tokio::spawn(forward_stderr(read, Arc::clone(&tail))));
        Ok(Generation {
            number,
            epoch,
            child,
            started,
            ready_at: Some(now),
            notify: None,
            tail,
            forwarder,
            stderr: copy,
        })
    }

    /// The last lines the child wrote to stderr, once it has closed it (waits up
    /// to half a second for the last ones to arrive).
    pub async fn stderr_tail(&mut self) -> Vec<String> {
        if let Some(forwarder) = self.forwarder.take() {
            let _ = tokio::time::timeout(Duration::from_millis(500), forwarder).await;
        }
        self.tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// Resolves the command: `{fd:NAME}` replaced in the arguments, the program looked
/// up in PATH now (so a new binary installed since the last start is used).
fn program(command: &[OsString], sockets: &[(&str, BorrowedFd<'_>)]) -> io::Result<Program> {
    let (first, rest) = command
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no command given"))?;
    let mut program = Program::new(resolve(first)?);
    program.args = std::iter::once(first.clone())
        .chain(rest.iter().map(|arg| substitute(arg, sockets)))
        .collect();
    Ok(program)
}

fn resolve(name: &OsString) -> io::Result<PathBuf> {
    let path = PathBuf::from(name);
    if path.components().count() > 1 {
        return Ok(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(&path))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} not found in PATH", path.display()),
            )
        })
}

fn substitute(arg: &OsString, sockets: &[(&str, BorrowedFd<'_>)]) -> OsString {
    let Some(text) = arg.to_str() else {
        return arg.clone();
    };
    let mut text = text.to_owned();
    for (index, (name, _)) in sockets.iter().enumerate() {
        text = text.replace(
            &format!("{{fd:{name}}}"),
            &(handover_mechanism::protocol::LISTEN_FDS_START + index as i32).to_string(),
        );
    }
    text.into()
}

async fn forward_stderr(read: OwnedFd, tail: Arc<Mutex<VecDeque<String>>>) {
    let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(read) else {
        return;
    };
    let mut lines = BufReader::new(pipe).lines();
    let mut stderr = tokio::io::stderr();
    while let Ok(Some(line)) = lines.next_line().await {
        let _ = stderr.write_all(format!("{line}\n").as_bytes()).await;
        let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_placeholders() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sockets = [("web", listener.as_fd()), ("admin", listener.as_fd())];
        let arg = OsString::from("--bind=fd://{fd:admin} {fd:web} {fd:other}");
        assert_eq!(substitute(&arg, &sockets), "--bind=fd://4 3 {fd:other}");
    }
}
