//! The only module with `unsafe` code.
//!
//! Three things here have no safe API:
//!
//! 1. **Adopting inherited descriptors.** LISTEN_FDS says "fds 3, 4, … are yours";
//!    turning such a number into an [`OwnedFd`] is an ownership claim the compiler
//!    cannot check. [`adopt_inherited_fd`] checks that the number is open and makes
//!    sure each number is adopted at most once per process.
//! 2. **Starting the successor.** The successor must find its sockets at fds 3, 4, …
//!    and `LISTEN_PID` must equal *its own* pid, which exists only after `fork`.
//!    `std::process::Command` cannot write the child's pid into its environment, so
//!    [`fork_exec`] forks and execs itself. Between `fork` and `execve` the child
//!    runs only async-signal-safe calls on memory prepared before the fork.
//! 3. **Linux socket options no crate wraps**: attaching a classic BPF
//!    program to a SO_REUSEPORT group (for [`crate::sockets::reuseport`]) or
//!    as a socket filter, and detaching it (for [`crate::sockets::hold`]), and
//!    reading `TCP_INFO` (a listener's accept-queue length, a connection's byte
//!    counters: [`crate::sockets::tcp_info`]).

use std::collections::BTreeSet;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use rustix::io::FdFlags;
use rustix::process::Pid;

/// Fd numbers already adopted by this process, so that two readers of the same
/// environment cannot both close the same number.
static ADOPTED: Mutex<BTreeSet<RawFd>> = Mutex::new(BTreeSet::new());

/// Takes ownership of an fd number handed to this process (LISTEN_FDS convention)
/// and marks it close-on-exec, as `sd_listen_fds(3)` does.
///
/// Fails if the number is not an open descriptor, was adopted before, or is
/// close-on-exec (then it was not inherited: something in this process opened it).
pub(crate) fn adopt_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    let mut adopted = ADOPTED.lock().unwrap_or_else(|e| e.into_inner());
    if fd < 0 || adopted.contains(&fd) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: F_GETFD only reads the descriptor flags; any integer is a valid argument.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags == -1 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::FD_CLOEXEC != 0 {
        // An fd that crossed execve cannot be close-on-exec: this one was opened
        // by this process after it started, and belongs to someone else.
        return Err(io::Error::other(
            "it is close-on-exec, so this process opened it after start (create the Handover \
             before anything opens files, such as an async runtime)",
        ));
    }
    // SAFETY: the number is open (F_GETFD succeeded), the process was told by its
    // starter that it owns it, and `ADOPTED` guarantees no second OwnedFd for it
    // is ever created by this crate.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    adopted.insert(fd);
    rustix::io::fcntl_setfd(&owned, FdFlags::CLOEXEC)?;
    Ok(owned)
}

/// What the successor is started with.
pub(crate) struct ExecRequest<'a> {
    /// Path of the executable.
    pub program: &'a CStr,
    /// Full argv, including argv[0].
    pub argv: &'a [CString],
    /// Full environment as `KEY=VALUE`, without `LISTEN_PID`.
    pub envp: &'a [CString],
    /// Descriptors that become fds 3, 4, … in the child, in order.
    pub fds: &'a [BorrowedFd<'a>],
    /// Whether to add `LISTEN_PID=<child pid>` to the environment.
    pub set_listen_pid: bool,
    /// A replacement for fd 2, if any.
    pub stderr: Option<BorrowedFd<'a>>,
}

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";

/// Forks and execs `req.program`. Returns the child's pid once `execve` succeeded,
/// or the error `execve` (or an fd move) gave, after reaping the failed child.
pub(crate) fn fork_exec(req: &ExecRequest<'_>) -> io::Result<Pid> {
    let first_free = 3 + req.fds.len() as RawFd;
    // Every fd the child still needs after the moves lives at or above `first_free`,
    // so moving fd k to 3 + k can never overwrite one of them.
    let sources = req
        .fds
        .iter()
        .map(|fd| Ok(rustix::io::fcntl_dupfd_cloexec(fd, first_free)?))
        .collect::<io::Result<Vec<OwnedFd>>>()?;
    let (report_read, low_report_write) = cloexec_pipe()?;
    let report_write = rustix::io::fcntl_dupfd_cloexec(&low_report_write, first_free)?;
    // Only the copy above `first_free` may stay open, or the parent's read below
    // would never see end-of-file.
    drop(low_report_write);

    // All memory the child touches is prepared here, before the fork.
    let mut pid_entry = LISTEN_PID_PREFIX.to_vec();
    pid_entry.resize(LISTEN_PID_PREFIX.len() + 24, 0);
    let mut envp: Vec<*const libc::c_char> = req.envp.iter().map(|e| e.as_ptr()).collect();
    if req.set_listen_pid {
        envp.push(pid_entry.as_ptr().cast());
    }
    envp.push(std::ptr::null());
    let mut argv: Vec<*const libc::c_char> = req.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let source_raw: Vec<RawFd> = sources.iter().map(|fd| fd.as_raw_fd()).collect();
    let stderr = req
        .stderr
        .map(|fd| rustix::io::fcntl_dupfd_cloexec(fd, first_free))
        .transpose()?;
    let stderr_raw = stderr.as_ref().map_or(-1, |fd| fd.as_raw_fd());
    let pid_digits = pid_entry[LISTEN_PID_PREFIX.len()..].as_mut_ptr();
    let report_raw = report_write.as_raw_fd();

    // SAFETY: fork has no memory-safety preconditions of its own; what matters is
    // what the child does before execve, see `child_after_fork`.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: we are the child of a fork; every pointer was built above, is
        // alive (this is a copy of the parent's memory) and NUL-terminated.
        unsafe {
            child_after_fork(
                &source_raw,
                stderr_raw,
                pid_digits,
                req.program.as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
                report_raw,
            )
        }
    }
    drop(report_write);
    drop(sources);
    drop(stderr);
    let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::other("fork returned pid 0"))?;
    let mut errno = [0u8; 4];
    let mut got = 0;
    while got < errno.len() {
        match rustix::io::read(&report_read, &mut errno[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    if got == 0 {
        // The write end was closed by a successful execve (it is close-on-exec).
        return Ok(pid);
    }
    // The child failed before or in execve and exits at once: reap it.
    let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
    Err(io::Error::from_raw_os_error(i32::from_ne_bytes(errno)))
}

/// A pipe whose both ends are close-on-exec.
fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    #[cfg(not(target_vendor = "apple"))]
    let ends = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // macOS has no pipe2: set the flag right after (another thread's fork in
    // between could inherit the pipe, which is harmless here).
    #[cfg(target_vendor = "apple")]
    let ends = {
        let ends = rustix::pipe::pipe()?;
        rustix::io::fcntl_setfd(&ends.0, FdFlags::CLOEXEC)?;
        rustix::io::fcntl_setfd(&ends.1, FdFlags::CLOEXEC)?;
        ends
    };
    Ok(ends)
}

/// Runs in the forked child: moves the fds into place, writes LISTEN_PID, resets
/// the signal state Rust changed, and execs. Never returns.
///
/// # Safety
///
/// Must only be called in a freshly forked child, with pointers prepared by
/// [`fork_exec`]. Only async-signal-safe functions are called and nothing allocates.
unsafe fn child_after_fork(
    sources: &[RawFd],
    stderr: RawFd,
    pid_digits: *mut u8,
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    report: RawFd,
) -> ! {
    fn fail(report: RawFd) -> ! {
        let errno = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        let bytes = errno.to_ne_bytes();
        // SAFETY: writing a local buffer to an fd we own; then leaving without
        // running any destructor or atexit handler of the parent's copy.
        unsafe {
            libc::write(report, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127)
        }
    }
    // SAFETY: dup2 onto fd 2 from a number we own above every target.
    if stderr >= 0 && unsafe { libc::dup2(stderr, 2) } == -1 {
        fail(report);
    }
    for (k, &source) in sources.iter().enumerate() {
        // SAFETY: dup2 on numbers we own in this child; the target is below every
        // source (see fork_exec), and dup2 clears FD_CLOEXEC on the target.
        if unsafe { libc::dup2(source, 3 + k as RawFd) } == -1 {
            fail(report);
        }
    }
    // Belt and braces against fds some library opened without O_CLOEXEC: mark
    // everything above the handed-over sockets close-on-exec (Linux >= 5.11;
    // older kernels say ENOSYS/EINVAL and we rely on O_CLOEXEC discipline alone).
    #[cfg(target_os = "linux")]
    // SAFETY: close_range with CLOEXEC only changes flags; no fd is closed.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 + sources.len() as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
    // SAFETY: getpid is async-signal-safe; pid_digits points at 24 writable bytes.
    unsafe {
        let mut pid = libc::getpid() as u64;
        let mut digits = [0u8; 20];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (pid % 10) as u8;
            n += 1;
            pid /= 10;
            if pid == 0 {
                break;
            }
        }
        for i in 0..n {
            *pid_digits.add(i) = digits[n - 1 - i];
        }
        *pid_digits.add(n) = 0;
    }
    // SAFETY: resetting the signal mask and SIGPIPE (ignored by the Rust runtime,
    // and ignored dispositions survive execve) to what a fresh program expects.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::execve(program, argv, envp);
    }
    fail(report)
}

/// Blocks (`block`) or unblocks `signals` for the calling thread. The mask
/// survives `execve`, which is why a process that re-executes itself blocks
/// the signals it handles first: the new image has no handler yet, and a
/// signal with its default action would end it.
pub(crate) fn mask_signals(signals: &[i32], block: bool) -> io::Result<()> {
    // SAFETY: a zeroed sigset_t is a valid value for sigemptyset to fill.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a local sigset_t; sigemptyset/sigaddset only write it.
    unsafe {
        libc::sigemptyset(&mut set);
        for &signal in signals {
            if libc::sigaddset(&mut set, signal) == -1 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    let how = if block {
        libc::SIG_BLOCK
    } else {
        libc::SIG_UNBLOCK
    };
    // SAFETY: `set` is initialised; the old mask is not asked for (null).
    let result = unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(result))
    }
}

/// Attaches the classic BPF `program` to `fd` as socket `option`:
/// `SO_ATTACH_REUSEPORT_CBPF` (Linux >= 4.5: the program of `fd`'s SO_REUSEPORT
/// group, replacing it) or `SO_ATTACH_FILTER` (a filter on what `fd` receives).
#[cfg(target_os = "linux")]
pub(crate) fn attach_cbpf(
    fd: BorrowedFd<'_>,
    option: libc::c_int,
    program: &[libc::sock_filter],
) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(program.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"))?,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `program`, which outlives the call; the kernel
    // copies the instructions and keeps no pointer into our memory.
    let result = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            std::ptr::addr_of!(fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Removes the socket filter of `fd` (`SO_DETACH_FILTER`).
#[cfg(target_os = "linux")]
pub(crate) fn detach_filter(fd: BorrowedFd<'_>) -> io::Result<()> {
    let unused: libc::c_int = 0;
    // SAFETY: the option takes an int the kernel ignores; `unused` outlives the call.
    let result = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_DETACH_FILTER,
            std::ptr::addr_of!(unused).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `getsockopt(fd, IPPROTO_TCP, TCP_INFO)`: what the kernel knows about one
/// TCP socket. Fields a kernel older than this `libc` does not fill stay zero.
#[cfg(target_os = "linux")]
pub(crate) fn tcp_info(fd: BorrowedFd<'_>) -> io::Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain old data, valid when zeroed.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info` and updates `len`.
    let result = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::addr_of_mut!(info).cast(),
            &mut len,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}
