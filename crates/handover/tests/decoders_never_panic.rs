//! Short, bounded property tests of the library's decoders of untrusted input:
//! the inherited `LISTEN_*` environment and `sd_notify` datagrams. The long
//! coverage-guided runs are the fuzz targets in `fuzz/` (docs/FUZZING.md);
//! these run in every `cargo test` (proptest's default of 256 cases each).

use handover_mechanism::protocol::env::{parse_listen_env, EnvError, MAX_INHERITED_FDS};
use handover_mechanism::protocol::message::{Message, MessageError, MAX_MESSAGE_LEN};
use proptest::prelude::*;

/// Values as a careless or hostile parent might set them: numbers with
/// spaces, signs, overflow, names with separators, anything at all.
fn env_value() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(prop_oneof![
        any::<String>(),
        "[ \t]{0,2}[+-]?[0-9]{0,22}[ \t]{0,2}",
        "[a-z:]{0,40}",
    ])
}

proptest! {
    #[test]
    fn parse_listen_env_never_panics(
        listen_pid in env_value(),
        listen_fds in env_value(),
        listen_fdnames in env_value(),
        my_pid in any::<u32>(),
    ) {
        let result = parse_listen_env(
            listen_pid.as_deref(),
            listen_fds.as_deref(),
            listen_fdnames.as_deref(),
            my_pid,
        );
        match result {
            Ok(Some(env)) => {
                prop_assert_eq!(
                    listen_pid.as_deref().map(|p| p.trim().parse::<u64>().ok()),
                    Some(Some(u64::from(my_pid)))
                );
                let count: u64 = listen_fds.as_deref().unwrap().trim().parse().unwrap();
                prop_assert!((1..=MAX_INHERITED_FDS).contains(&count));
                prop_assert_eq!(env.names.len() as u64, count);
            }
            Ok(None) => {}
            Err(EnvError::NotANumber { value, .. }) => prop_assert!(value.chars().count() <= 64),
            Err(EnvError::TooManyFds(n)) => prop_assert!(n > MAX_INHERITED_FDS),
            Err(EnvError::NamesMismatch { names, fds }) => prop_assert_ne!(names, fds),
            Err(other) => prop_assert!(false, "parsing touched a descriptor: {other:?}"),
        }
    }

    #[test]
    fn parse_listen_env_for_this_pid_finds_every_name(
        my_pid in any::<u32>(),
        names in proptest::collection::vec("[a-z]{0,8}", 1..20),
        pad in "[ \t]{0,2}",
    ) {
        let listen_pid = format!("{pad}{my_pid}{pad}");
        let listen_fds = names.len().to_string();
        let listen_fdnames = names.join(":");
        let env = parse_listen_env(Some(&listen_pid), Some(&listen_fds), Some(&listen_fdnames), my_pid);
        prop_assert_eq!(env.unwrap().unwrap().names, names.clone());
        let other = parse_listen_env(Some(&listen_pid), Some(&listen_fds), Some(&listen_fdnames), my_pid ^ 1);
        prop_assert_eq!(other, Ok(None));
    }

    #[test]
    fn notify_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..MAX_MESSAGE_LEN + 64)) {
        match Message::parse(&bytes) {
            Ok(message) => {
                let encoded = message.encode();
                if encoded.len() <= MAX_MESSAGE_LEN {
                    prop_assert_eq!(Message::parse(&encoded), Ok(message));
                }
            }
            Err(MessageError::TooLong(n)) => prop_assert!(n > MAX_MESSAGE_LEN),
            Err(MessageError::NotUtf8) => prop_assert!(std::str::from_utf8(&bytes).is_err()),
            Err(MessageError::BadLine { line, text }) => {
                prop_assert!(line >= 1 && text.chars().count() <= 64)
            }
        }
    }

    #[test]
    fn notify_parse_of_assignments_round_trips(
        text in "([A-Z_]{0,8}=?[ -~]{0,16}\n?){0,12}",
    ) {
        if let Ok(message) = Message::parse(text.as_bytes()) {
            prop_assert_eq!(Message::parse(&message.encode()), Ok(message.clone()));
            let ready = text.split('\n').rfind(|l| l.starts_with("READY="));
            prop_assert_eq!(message.is_ready(), ready == Some("READY=1"));
        }
    }
}
