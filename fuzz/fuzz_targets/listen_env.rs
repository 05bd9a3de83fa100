//! `handover_mechanism::protocol::env::parse_listen_env`: `LISTEN_PID`,
//! `LISTEN_FDS` and `LISTEN_FDNAMES` as inherited from whatever started the
//! process.
//!
//! Input layout: byte 0 holds flags (bits 0-2: each variable set or unset;
//! bit 3: take `my_pid` from `LISTEN_PID` when it is a `u32`, so the fuzzer
//! reaches the code after the pid check), bytes 1-4 a little-endian `my_pid`,
//! the rest the three values separated by NUL bytes (as environment values
//! never contain NUL), each made UTF-8 lossily (the caller reports non-UTF-8
//! values before parsing).
//!
//! Invariants beyond "never panics": `Ok(Some)` only for this pid, with as many
//! names as `LISTEN_FDS` says (1 to `MAX_INHERITED_FDS`), the names being
//! `LISTEN_FDNAMES` split on `:` or all `unknown`; errors cut values to 64
//! characters.
#![no_main]

use std::borrow::Cow;

use handover_mechanism::protocol::env::{parse_listen_env, EnvError, MAX_INHERITED_FDS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (pid_bytes, rest) = rest.split_at(rest.len().min(4));
    let mut pid = [0u8; 4];
    pid[..pid_bytes.len()].copy_from_slice(pid_bytes);
    let mut my_pid = u32::from_le_bytes(pid);
    let mut parts = rest.splitn(3, |&b| b == 0).map(String::from_utf8_lossy);
    let mut next = |bit: u8| {
        let part = parts.next().unwrap_or(Cow::Borrowed(""));
        (flags & (1 << bit) != 0).then_some(part)
    };
    let (listen_pid, listen_fds, listen_fdnames) = (next(0), next(1), next(2));
    if flags & 8 != 0 {
        if let Some(pid) = listen_pid.as_deref().and_then(|p| p.trim().parse().ok()) {
            my_pid = pid;
        }
    }
    let result = parse_listen_env(
        listen_pid.as_deref(),
        listen_fds.as_deref(),
        listen_fdnames.as_deref(),
        my_pid,
    );
    match result {
        Ok(Some(env)) => {
            let listen_pid = listen_pid.as_deref().unwrap().trim();
            assert_eq!(listen_pid.parse::<u64>().ok(), Some(u64::from(my_pid)));
            let count: u64 = listen_fds.as_deref().unwrap().trim().parse().unwrap();
            assert!((1..=MAX_INHERITED_FDS).contains(&count));
            assert_eq!(env.names.len() as u64, count);
            match listen_fdnames.as_deref() {
                Some(names) => assert_eq!(env.names.join(":"), names),
                None => assert!(env.names.iter().all(|n| n == "unknown")),
            }
        }
        Ok(None) => {
            let this_pid = listen_pid
                .as_deref()
                .is_some_and(|p| p.trim().parse::<u64>().ok() == Some(u64::from(my_pid)));
            let no_fds = listen_fds.as_deref().map(|n| n.trim().parse::<u64>().ok());
            assert!(!this_pid || matches!(no_fds, None | Some(Some(0))));
        }
        Err(EnvError::NotANumber { value, .. }) => assert!(value.chars().count() <= 64),
        Err(EnvError::TooManyFds(n)) => assert!(n > MAX_INHERITED_FDS),
        Err(EnvError::NamesMismatch { names, fds }) => {
            assert_ne!(names, fds);
            assert!(fds >= 1 && fds as u64 <= MAX_INHERITED_FDS);
        }
        Err(other) => panic!("parsing touched a descriptor: {other:?}"),
    }
});
