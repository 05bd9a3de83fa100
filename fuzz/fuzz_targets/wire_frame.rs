//! `handover_wire::Message::decode`: every frame read from a control or
//! hand-over socket (control requests are wire frames too).
//!
//! Invariants beyond "never panics":
//! - a decoded message fits the bounds (`fds() <= MAX_FDS`, input `<= MAX_FRAME`);
//! - it re-encodes to a frame that decodes to the same message, unless the
//!   re-encoding is longer than `MAX_FRAME` (JSON numbers may be spelled
//!   longer, e.g. `1e15` becomes `1000000000000000.0`), and encoding that
//!   message again gives the same bytes. The one exception: a floating-point
//!   number in a `status` object may come back a few ULP off, because
//!   serde_json's default float parser (without its `float_roundtrip`
//!   feature) is not correctly rounded (reproducer:
//!   `fuzz/artifacts-kept/wire_frame/float-not-round-tripped`,
//!   `{"type":"status","status":{"":1888888000000021883393}}`); such numbers
//!   are compared with a relative tolerance of 4 ε;
//! - the error reply to a frame that does not decode is itself a valid frame.
#![no_main]

use handover_wire::{Error, Message, MAX_FDS, MAX_FRAME};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    match Message::decode(data) {
        Ok(message) => {
            assert!(data.len() <= MAX_FRAME);
            assert!(message.fds() <= MAX_FDS);
            let encoded = message.encode();
            match Message::decode(&encoded) {
                Ok(again) => match (&again, &message) {
                    (Message::Status { status: a }, Message::Status { status: b }) => assert!(
                        same_object(a, b),
                        "{a:?} != {b:?}, re-encoded as {:?}",
                        String::from_utf8_lossy(&encoded)
                    ),
                    _ => {
                        assert_eq!(
                            again,
                            message,
                            "re-encoded as {:?}",
                            String::from_utf8_lossy(&encoded)
                        );
                        assert_eq!(again.encode(), encoded);
                    }
                },
                Err(Error::Oversized) => assert!(encoded.len() > MAX_FRAME),
                Err(error) => panic!(
                    "{message:?} re-encoded as {:?} does not decode: {error}",
                    String::from_utf8_lossy(&encoded)
                ),
            }
        }
        Err(error) => {
            match &error {
                Error::Oversized => assert!(data.len() > MAX_FRAME),
                Error::UnknownType(kind) => assert!(kind.len() <= handover_wire::message::MAX_NAME),
                Error::Malformed(_) => {}
                other => panic!("decode returned a non-decoding error: {other:?}"),
            }
            let reply = Message::error(&error);
            let encoded = reply.encode();
            assert_eq!(Message::decode(&encoded).ok(), Some(reply));
        }
    }
});

fn same_object(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|(key, x)| b.get(key).is_some_and(|y| same(x, y)))
}

/// Equal, but floats only to within 4 ε (relative).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (Some(x), Some(y)) = (x.as_f64(), y.as_f64()) else {
                return false;
            };
            x == y || (x - y).abs() <= x.abs().max(y.abs()) * 4.0 * f64::EPSILON
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => same_object(x, y),
        _ => a == b,
    }
}
