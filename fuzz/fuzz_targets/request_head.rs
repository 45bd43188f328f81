//! The request-head parser on arbitrary bytes. Beyond "never panics":
//! - reading the same bytes in two pieces gives the result of reading them
//!   at once (a head that parses whole never fails on a prefix, and an error
//!   on a prefix stands for the whole), which is what makes incremental
//!   reads from a socket safe;
//! - `take_request_head` agrees with `parse_request_head`;
//! - a head we accept, written back out by our encoder as we send it
//!   upstream, parses to the same method, target, fields and framing: what
//!   the upstream sees is what we judged.
//!
//! The response parser runs on the same bytes for the first two checks.
#![no_main]

use bytes::BytesMut;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Version};
use libfuzzer_sys::fuzz_target;
use openproxy::http1::{
    encode_request_head, parse_request_head, parse_response_head, take_request_head, BodyFraming, MAX_HEADERS,
};
use openproxy_fuzz::split_point;

const MAX_HEAD: usize = 8192;

fuzz_target!(|data: &[u8]| {
    let whole = parse_request_head(data, MAX_HEAD);
    let at = split_point(data);
    let prefix = parse_request_head(&data[..at], MAX_HEAD);
    match (&whole, &prefix) {
        (_, Ok(None)) => {}
        (Ok(Some((_, n))), _) if at < *n => panic!("prefix of {at} bytes did not wait for a head of {n}: {prefix:?}"),
        _ => assert_eq!(whole, prefix, "prefix of {at} bytes"),
    }
    if let Ok(Some((head, n))) = &whole {
        assert!(*n <= data.len() && *n <= MAX_HEAD);
        assert_eq!(parse_request_head(&data[..n - 1], MAX_HEAD), Ok(None));
        // A smaller limit only turns the answer into a size error.
        match parse_request_head(data, *n - 1) {
            Err(openproxy::http1::HeadError::TooLarge | openproxy::http1::HeadError::UriTooLong) => {}
            other => panic!("head of {n} bytes under a limit of {}: {other:?}", n - 1),
        }
        let mut buf = BytesMut::from(data);
        assert_eq!(take_request_head(&mut buf, MAX_HEAD).as_ref().ok().and_then(Option::as_ref), Some(head));
        assert_eq!(&buf[..], &data[*n..]);
        reencode(head);
    }

    for method in [Method::GET, Method::HEAD, Method::CONNECT] {
        let whole = parse_response_head(data, MAX_HEAD, &method);
        let prefix = parse_response_head(&data[..at], MAX_HEAD, &method);
        match (&whole, &prefix) {
            (_, Ok(None)) => {}
            (Ok(Some((_, n))), _) if at < *n => panic!("response prefix of {at} bytes: {prefix:?}"),
            _ => assert_eq!(whole, prefix, "response prefix of {at} bytes"),
        }
    }
});

/// What the proxy forwards: the same head through `encode_request_head`.
fn reencode(head: &openproxy::http1::RequestHead) {
    // We always speak HTTP/1.1 upstream, where Host is required; a 1.0
    // request without one is given a Host elsewhere, before encoding.
    if head.version == Version::HTTP_10 && !head.headers.contains_key(http::header::HOST) {
        return;
    }
    let mut out = BytesMut::new();
    encode_request_head(&head.method, &head.target, &head.headers, head.framing, &mut out);
    let again = match parse_request_head(&out, out.len()) {
        Ok(Some((again, n))) if n == out.len() => again,
        // The encoder adds `content-length: 0` to a bodiless POST/PUT/PATCH,
        // which can take a full head one field past the limit.
        Err(openproxy::http1::HeadError::TooLarge) if head.headers.len() >= MAX_HEADERS => return,
        other => panic!("our own encoding of an accepted head: {other:?}\n{:?}", String::from_utf8_lossy(&out)),
    };
    assert_eq!((&again.method, &again.target), (&head.method, &head.target));
    assert_eq!(without_framing(&again.headers), without_framing(&head.headers));
    let expected = match head.framing {
        BodyFraming::Empty if matches!(head.method, Method::POST | Method::PUT | Method::PATCH) => {
            BodyFraming::Length(0)
        }
        other => other,
    };
    assert_eq!(again.framing, expected);
}

fn without_framing(headers: &HeaderMap) -> HeaderMap {
    let mut h = headers.clone();
    h.remove(CONTENT_LENGTH);
    h.remove(TRANSFER_ENCODING);
    h
}
