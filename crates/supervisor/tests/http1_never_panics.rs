//! Short, bounded property tests of the rescue relay's HTTP/1.1 framing
//! (bytes from any client on the network). The long coverage-guided run is
//! the `http1` fuzz target in `fuzz/` (docs/FUZZING.md); these run in every
//! `cargo test` (proptest's default of 256 cases each).

use handover_supervisor::rescue::http1::{
    parse_request, parse_response, starts_a_request, with_connection_close, Body, Chunked,
    Malformed, KNOWN_METHODS, MAX_HEAD,
};
use proptest::prelude::*;

/// Heads that are often valid, so the properties reach past the first byte.
fn head() -> impl Strategy<Value = Vec<u8>> {
    let start = prop_oneof![
        "(GET|HEAD|POST|PUT|CONNECT) /[a-z?=]{0,8} HTTP/1\\.[01]",
        "HTTP/1\\.[01] [1-5][0-9][0-9]( [A-Za-z ]{0,10})?",
        "[ -~]{0,20}",
    ];
    let header = prop_oneof![
        Just("Content-Length: 5".to_owned()),
        Just("Content-Length: 1".to_owned()),
        Just("Transfer-Encoding: chunked".to_owned()),
        Just("Transfer-Encoding: gzip, chunked".to_owned()),
        Just("Connection: close".to_owned()),
        Just("Connection: keep-alive".to_owned()),
        Just("Keep-Alive: timeout=5".to_owned()),
        Just("Expect: 100-continue".to_owned()),
        "[A-Za-z-]{1,12}: ?[ -~]{0,20}",
    ];
    let eol = prop_oneof![Just("\r\n"), Just("\n")];
    (
        start,
        proptest::collection::vec((header, eol.clone()), 0..8),
        eol,
        "[ -~\r\n]{0,20}",
    )
        .prop_map(|(start, headers, end, rest)| {
            let mut head = start.into_bytes();
            head.extend_from_slice(b"\r\n");
            for (header, eol) in headers {
                head.extend_from_slice(header.as_bytes());
                head.extend_from_slice(eol.as_bytes());
            }
            head.extend_from_slice(end.as_bytes());
            head.extend_from_slice(rest.as_bytes());
            head
        })
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..512), head()]
}

fn prefix_is_incomplete<T: std::fmt::Debug>(result: Result<Option<T>, Malformed>, len: usize) {
    match result {
        Ok(None) => assert!(len <= MAX_HEAD),
        Err(Malformed::TooLong) => assert!(len > MAX_HEAD),
        other => panic!("a {len}-byte prefix of a valid head: {other:?}"),
    }
}

/// The empty lines (`\r\n` or `\n`) httparse skips before a start line.
fn leading_empty_lines(mut head: &[u8]) -> usize {
    let mut count = 0;
    while let [b'\r', b'\n', rest @ ..] | [b'\n', rest @ ..] = head {
        head = rest;
        count += 1;
    }
    count
}

proptest! {
    #[test]
    fn starts_a_request_never_panics(data in bytes(), split in any::<usize>()) {
        let known = |m: &&str| data.starts_with(format!("{m} ").as_bytes());
        let short = |m: &&str| format!("{m} ").as_bytes().starts_with(&data);
        let expected = if KNOWN_METHODS.iter().any(known) {
            Some(true)
        } else if KNOWN_METHODS.iter().any(short) {
            None
        } else {
            Some(false)
        };
        prop_assert_eq!(starts_a_request(&data), expected);
        if let Some(answer) = starts_a_request(&data[..split % (data.len() + 1)]) {
            prop_assert_eq!(expected, Some(answer));
        }
    }

    #[test]
    fn parse_request_never_panics(data in bytes(), split in any::<usize>()) {
        if let Ok(Some(request)) = parse_request(&data) {
            let n = request.head_len;
            prop_assert!(n >= 1 && n <= data.len());
            prop_assert_eq!(parse_request(&data[..n]), Ok(Some(request.clone())));
            prefix_is_incomplete(parse_request(&data[..split % n]), split % n);
            prop_assert_ne!(request.body, Body::UntilClose);
        }
    }

    #[test]
    fn parse_response_never_panics(data in bytes(), to_head in any::<bool>(), split in any::<usize>()) {
        if let Ok(Some(response)) = parse_response(&data, to_head) {
            let n = response.head_len;
            prop_assert!(n >= 1 && n <= data.len());
            prop_assert_eq!(parse_response(&data[..n], to_head), Ok(Some(response.clone())));
            prefix_is_incomplete(parse_response(&data[..split % n], to_head), split % n);
            if to_head {
                prop_assert_eq!(response.body, Body::Empty);
            }
            if response.body == Body::UntilClose {
                prop_assert!(response.closes);
            }
        }
    }

    #[test]
    fn with_connection_close_never_panics(data in bytes()) {
        let rewritten = with_connection_close(&data);
        prop_assert!(rewritten.ends_with(b"connection: close\r\n\r\n"));
        prop_assert!(rewritten.len() <= data.len() + 21);
        if let Ok(Some(response)) = parse_response(&data, false) {
            let head = &data[..response.head_len];
            // A head after two or more empty lines is a known exception
            // (fuzz/artifacts-kept/http1/connection-close-drops-status-line).
            if leading_empty_lines(head) < 2 {
                let rewritten = parse_response(&with_connection_close(head), false).unwrap().unwrap();
                prop_assert!(rewritten.closes);
                prop_assert_eq!(rewritten.status, response.status);
            }
        }
    }

    #[test]
    fn chunked_feed_never_panics(data in bytes(), split in any::<usize>()) {
        let split = split % (data.len() + 1);
        let whole = Chunked::default().feed(&data);
        let mut chunked = Chunked::default();
        let pieces = match chunked.feed(&data[..split]) {
            Ok(None) => chunked.feed(&data[split..]).map(|end| end.map(|end| split + end)),
            other => other,
        };
        if let (Ok(whole), Ok(pieces)) = (&whole, &pieces) {
            prop_assert_eq!(whole, pieces);
        }
        if let Ok(Some(end)) = whole {
            prop_assert!(end >= 1 && end <= data.len() && data[end - 1] == b'\n');
        }
    }

    #[test]
    fn a_chunked_body_ends_where_it_ends_however_it_is_split(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..6),
        trailers in proptest::collection::vec("[A-Za-z-]{1,8}: [a-z]{0,8}", 0..3),
        split in any::<usize>(),
    ) {
        let mut body = Vec::new();
        for chunk in &chunks {
            body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            body.extend_from_slice(chunk);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n");
        for trailer in &trailers {
            body.extend_from_slice(trailer.as_bytes());
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"\r\n");
        let end = body.len();
        body.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
        let split = split % (body.len() + 1);
        let mut chunked = Chunked::default();
        let found = match chunked.feed(&body[..split]).unwrap() {
            Some(n) => n,
            None => split + chunked.feed(&body[split..]).unwrap().unwrap(),
        };
        prop_assert_eq!(found, end);
    }
}
