//! The rescue relay's HTTP/1.1 framing (`handover_supervisor::rescue::http1`):
//! bytes from any client on the network, and from the new child.
//!
//! Input layout: byte 0 holds flags (bit 0: the response answers a HEAD
//! request), bytes 1-2 a little-endian split point (modulo the length), the
//! rest the message bytes.
//!
//! Invariants beyond "never panics":
//! - a parsed head is at most the input, ends with a newline, and parses the
//!   same from exactly its own bytes; every shorter prefix of it is
//!   "incomplete" (the relay reads heads in pieces), never an error;
//! - "too long" only beyond `MAX_HEAD`, "incomplete" only up to it;
//! - a response to HEAD, a 1xx, 204 or 304 has no body; a body until close
//!   means the connection closes; a request never has a body until close;
//! - `with_connection_close` of a parsed response head is a complete response
//!   head with the same status line and headers, minus `Connection` and
//!   `Keep-Alive`, plus one `connection: close` (except after two or more
//!   empty lines before the status line: a known bug, see below);
//! - `starts_a_request` says yes exactly for bytes starting with a known
//!   method and a space, "too short" exactly for a proper prefix of one, and
//!   an answer for a prefix stays the answer for all the bytes;
//! - a chunked body ends at the same byte however its bytes are split in two,
//!   and an end is always just after a newline within the bytes fed.
#![no_main]

use handover_supervisor::rescue::http1::{
    parse_request, parse_response, starts_a_request, with_connection_close, Body, Chunked,
    Malformed, KNOWN_METHODS, MAX_HEAD,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let to_head = flags & 1 != 0;
    let (split, data) = match rest {
        [a, b, data @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), data),
        _ => (0, &[][..]),
    };
    let split = if data.is_empty() {
        0
    } else {
        split % (data.len() + 1)
    };

    check_start(data, split);
    check_request(data, split);
    check_response(data, split, to_head);
    check_connection_close(data);
    check_chunked(data, split);
});

fn check_incomplete<T: PartialEq + std::fmt::Debug>(
    result: Result<Option<T>, Malformed>,
    len: usize,
) {
    match result {
        Ok(None) => assert!(len <= MAX_HEAD),
        Err(Malformed::TooLong) => assert!(len > MAX_HEAD),
        other => panic!("a prefix of {len} bytes of a valid head: {other:?}"),
    }
}

fn check_start(data: &[u8], split: usize) {
    let expected = if KNOWN_METHODS
        .iter()
        .any(|m| data.starts_with(format!("{m} ").as_bytes()))
    {
        Some(true)
    } else if KNOWN_METHODS
        .iter()
        .any(|m| format!("{m} ").as_bytes().starts_with(data))
    {
        None
    } else {
        Some(false)
    };
    assert_eq!(
        starts_a_request(data),
        expected,
        "{:?}",
        String::from_utf8_lossy(data)
    );
    if let Some(answer) = starts_a_request(&data[..split]) {
        assert_eq!(expected, Some(answer), "a prefix of {split} bytes");
    }
}

fn check_request(data: &[u8], split: usize) {
    match parse_request(data) {
        Ok(Some(request)) => {
            let n = request.head_len;
            assert!(n >= 1 && n <= data.len(), "head_len {n} of {}", data.len());
            assert_eq!(data[n - 1], b'\n');
            assert_eq!(parse_request(&data[..n]), Ok(Some(request.clone())));
            if split < n {
                check_incomplete(parse_request(&data[..split]), split);
            }
            assert_ne!(request.body, Body::UntilClose);
            assert_ne!(request.body, Body::Length(0));
            if request.is_head {
                assert!(data.windows(4).any(|w| w == b"HEAD"));
            }
        }
        Ok(None) => assert!(data.len() <= MAX_HEAD),
        Err(Malformed::TooLong) => assert!(data.len() > MAX_HEAD),
        Err(Malformed::Chunk) => panic!("a request head cannot be a chunk error"),
        Err(Malformed::Syntax(_) | Malformed::Length) => {}
    }
}

fn check_response(data: &[u8], split: usize, to_head: bool) {
    match parse_response(data, to_head) {
        Ok(Some(response)) => {
            let n = response.head_len;
            assert!(n >= 1 && n <= data.len(), "head_len {n} of {}", data.len());
            assert_eq!(data[n - 1], b'\n');
            assert_eq!(
                parse_response(&data[..n], to_head),
                Ok(Some(response.clone()))
            );
            if split < n {
                check_incomplete(parse_response(&data[..split], to_head), split);
            }
            let status = response.status;
            if to_head || (100..200).contains(&status) || status == 204 || status == 304 {
                assert_eq!(response.body, Body::Empty);
            }
            if response.body == Body::UntilClose {
                assert!(response.closes);
            }
            assert_ne!(response.body, Body::Length(0));
            assert_eq!(
                response.is_interim(),
                (100..200).contains(&status) && status != 101
            );
        }
        Ok(None) => assert!(data.len() <= MAX_HEAD),
        Err(Malformed::TooLong) => assert!(data.len() > MAX_HEAD),
        Err(Malformed::Chunk) => panic!("a response head cannot be a chunk error"),
        Err(Malformed::Syntax(_) | Malformed::Length) => {}
    }
}

fn check_connection_close(data: &[u8]) {
    let rewritten = with_connection_close(data);
    assert!(rewritten.ends_with(b"connection: close\r\n\r\n"));
    assert!(rewritten.len() <= data.len() + 21);

    // What the relay does: rewrite the head of a response it parsed.
    let Ok(Some(response)) = parse_response(data, false) else {
        return;
    };
    let head = &data[..response.head_len];
    // Known, reported, not fixed here: httparse skips any number of empty
    // lines before the status line, `with_connection_close` takes the first
    // line for the status line and stops at the next empty one, so a head
    // after two or more empty lines loses its status line and headers
    // (reproducer: fuzz/artifacts-kept/http1/connection-close-drops-status-line).
    if leading_empty_lines(head) >= 2 {
        return;
    }
    let rewritten = with_connection_close(head);
    let mut before = [httparse::EMPTY_HEADER; 256];
    let mut original = httparse::Response::new(&mut before);
    assert!(original.parse(head).unwrap().is_complete());
    let mut after = [httparse::EMPTY_HEADER; 256];
    let mut parsed = httparse::Response::new(&mut after);
    match parsed.parse(&rewritten) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, rewritten.len()),
        other => panic!(
            "{:?} rewritten as {:?}: {other:?}",
            String::from_utf8_lossy(head),
            String::from_utf8_lossy(&rewritten)
        ),
    }
    assert_eq!(
        (parsed.version, parsed.code, parsed.reason),
        (original.version, original.code, original.reason)
    );
    let kept: Vec<(&str, &[u8])> = original
        .headers
        .iter()
        .filter(|h| {
            !h.name.eq_ignore_ascii_case("connection") && !h.name.eq_ignore_ascii_case("keep-alive")
        })
        .map(|h| (h.name, h.value))
        .chain([("connection", &b"close"[..])])
        .collect();
    let got: Vec<(&str, &[u8])> = parsed.headers.iter().map(|h| (h.name, h.value)).collect();
    assert_eq!(got, kept, "{:?}", String::from_utf8_lossy(head));
}

fn check_chunked(data: &[u8], split: usize) {
    let whole = Chunked::default().feed(data);
    if let Ok(Some(end)) = whole {
        assert!(end >= 1 && end <= data.len());
        assert_eq!(data[end - 1], b'\n');
    }
    let (first, second) = data.split_at(split);
    let mut chunked = Chunked::default();
    let pieces = match chunked.feed(first) {
        Ok(Some(end)) => {
            assert!(end >= 1 && end <= first.len());
            Ok(Some(end))
        }
        Ok(None) => chunked.feed(second).map(|end| end.map(|end| split + end)),
        Err(error) => Err(error),
    };
    match (&whole, &pieces) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "split at {split}"),
        (Err(_), Err(_)) => {}
        (Err(error), Ok(_)) => panic!("whole: {error}, split at {split}: no error"),
        // Split in two, a line may be held over more than 4096 bytes, which
        // the state machine refuses; whole, the same line never waits.
        (Ok(_), Err(_)) => assert!(
            first
                .rsplit(|&b| b == b'\n')
                .next()
                .unwrap_or_default()
                .len()
                > 4096,
            "split at {split}: error, whole: {whole:?}"
        ),
    }
}

/// The empty lines (`\r\n` or `\n`) httparse skips before a start line.
fn leading_empty_lines(mut head: &[u8]) -> usize {
    let mut count = 0;
    loop {
        head = match head {
            [b'\r', b'\n', rest @ ..] | [b'\n', rest @ ..] => rest,
            _ => return count,
        };
        count += 1;
    }
}
