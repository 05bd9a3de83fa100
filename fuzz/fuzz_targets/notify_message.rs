//! `handover_mechanism::protocol::message::Message::parse`: every `sd_notify`
//! datagram a child (or anything that can write to the notify socket) sends.
//!
//! Invariants beyond "never panics": a parsed message re-encodes to a datagram
//! that parses to the same message (unless the re-encoding, which ends every
//! assignment with a newline, is longer than `MAX_MESSAGE_LEN`); errors are
//! consistent with the input (length, UTF-8, a 1-based line of at most 64
//! characters).
#![no_main]

use handover_mechanism::protocol::message::{Message, MessageError, MAX_MESSAGE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Message::parse(data) {
        Ok(message) => {
            assert!(data.len() <= MAX_MESSAGE_LEN);
            let text = std::str::from_utf8(data).expect("parsed, so UTF-8");
            let ready = text.split('\n').rfind(|l| l.starts_with("READY="));
            assert_eq!(message.is_ready(), ready == Some("READY=1"));
            let encoded = message.encode();
            match Message::parse(&encoded) {
                Ok(again) => {
                    assert_eq!(again, message);
                    assert_eq!(again.encode(), encoded);
                }
                Err(MessageError::TooLong(n)) => {
                    assert!(n > MAX_MESSAGE_LEN && n == encoded.len())
                }
                Err(error) => panic!("{message:?} re-encoded does not parse: {error}"),
            }
        }
        Err(MessageError::TooLong(n)) => assert!(n == data.len() && n > MAX_MESSAGE_LEN),
        Err(MessageError::NotUtf8) => assert!(std::str::from_utf8(data).is_err()),
        Err(MessageError::BadLine { line, text }) => {
            assert!(line >= 1);
            assert!(text.chars().count() <= 64);
            let source = std::str::from_utf8(data).unwrap();
            let bad = source.split('\n').nth(line - 1).expect("the line exists");
            assert!(bad.starts_with(&text));
            assert!(!bad.is_empty() && !bad.split_once('=').is_some_and(|(k, _)| !k.is_empty()));
        }
    }
});
