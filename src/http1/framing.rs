//! Body framing: the [`BodyFraming`] enum and the RFC 9112 §6 rules that pick
//! it from a parsed head (Content-Length / Transfer-Encoding validation).

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, Method, StatusCode, Version};

use super::parse::HeadError;

/// How the body of a message is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all (e.g. GET without length, HEAD response, 204, 304, 1xx).
    Empty,
    /// Content-Length bytes (Length(0) is allowed and distinct from Empty only in what the head said).
    Length(u64),
    /// Transfer-Encoding: chunked.
    Chunked,
    /// Response body delimited by connection close (RFC 9112 §6.3 rule 8). Never produced for requests.
    CloseDelimited,
}

/// What a Transfer-Encoding list says about framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TeKind {
    /// Exactly `chunked`.
    Chunked,
    /// Other codings, then `chunked` last (e.g. `gzip, chunked`).
    ChunkedAfterOthers,
    /// The final coding is not `chunked`.
    FinalNotChunked,
}

/// Framing of a request body (RFC 9112 §6.3 rules 3–6).
///
/// A request is never close-delimited: without Content-Length or
/// Transfer-Encoding it has no body (rule 6).
pub(crate) fn request_framing(headers: &HeaderMap, version: Version) -> Result<BodyFraming, HeadError> {
    reject_lookalikes(headers)?;
    if headers.contains_key(TRANSFER_ENCODING) {
        // §6.1: a message with both is the classic smuggling vector; a server
        // MAY reject it, and in front of upstreams we must.
        if headers.contains_key(CONTENT_LENGTH) {
            return Err(HeadError::malformed("both Content-Length and Transfer-Encoding present"));
        }
        // §6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty.
        if version == Version::HTTP_10 {
            return Err(HeadError::malformed("Transfer-Encoding in an HTTP/1.0 request"));
        }
        return match classify_te(headers)? {
            TeKind::Chunked => Ok(BodyFraming::Chunked),
            TeKind::ChunkedAfterOthers => Err(HeadError::UnsupportedTransferCoding),
            // §6.3 rule 4: the length cannot be determined -> 400 and close.
            TeKind::FinalNotChunked => Err(HeadError::malformed("final transfer coding is not chunked")),
        };
    }
    // RFC 9110 §8.6 lets identical values be merged, but nginx and other
    // parsers behind us refuse them: a proxy that merges would be the one
    // place two parsers disagree. One Content-Length, one value.
    if headers.get_all(CONTENT_LENGTH).iter().nth(1).is_some() {
        return Err(HeadError::malformed("more than one Content-Length field"));
    }
    if headers.get(CONTENT_LENGTH).is_some_and(|v| v.as_bytes().contains(&b',')) {
        return Err(HeadError::malformed("a Content-Length list"));
    }
    Ok(match content_length(headers)? {
        Some(n) => BodyFraming::Length(n),
        None => BodyFraming::Empty,
    })
}

/// Framing of a response body (RFC 9112 §6.3 rules 1–8).
///
/// The boolean is true when the framing is suspect enough that the
/// connection must not be reused afterwards (§6.1: Transfer-Encoding together
/// with Content-Length, or Transfer-Encoding in an HTTP/1.0 message).
pub(crate) fn response_framing(
    status: StatusCode,
    request_method: &Method,
    headers: &HeaderMap,
    version: Version,
) -> Result<(BodyFraming, bool), HeadError> {
    reject_lookalikes(headers)?;
    // Rule 1: responses that never carry content, whatever the head says.
    if !has_content(request_method, status) {
        return Ok((BodyFraming::Empty, false));
    }
    // Rule 2: a 2xx to CONNECT switches to a tunnel right after the head.
    if *request_method == Method::CONNECT && status.is_success() {
        return Ok((BodyFraming::Empty, false));
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        // Rule 3: Transfer-Encoding overrides Content-Length.
        let suspect = headers.contains_key(CONTENT_LENGTH) || version == Version::HTTP_10;
        let framing = match classify_te(headers)? {
            TeKind::Chunked | TeKind::ChunkedAfterOthers => BodyFraming::Chunked,
            TeKind::FinalNotChunked => BodyFraming::CloseDelimited,
        };
        return Ok((framing, suspect));
    }
    // Rules 5 and 8. An invalid Content-Length is rule 5's unrecoverable error.
    Ok(match content_length(headers)? {
        Some(n) => (BodyFraming::Length(n), false),
        None => (BodyFraming::CloseDelimited, false),
    })
}

/// Whether a response to `method` with `status` carries content at all: never
/// for HEAD, 1xx, 204 and 304 (RFC 9110 §6.4.1, RFC 9112 §6.3 rule 1). The one
/// rule every reader and writer of responses uses, HTTP/1.1 and HTTP/2 alike.
pub fn has_content(method: &Method, status: StatusCode) -> bool {
    !(*method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// How a response we send is framed, from what is known of its body: none for
/// a bodiless answer, its length when known, else chunked, or close-delimited
/// for a client that cannot read chunks (HTTP/1.0). HTTP/2 reads `Chunked` as
/// "no content-length, end the stream when the body ends".
pub fn response_body_framing(method: &Method, status: StatusCode, len: Option<u64>, chunks: bool) -> BodyFraming {
    if !has_content(method, status) {
        return BodyFraming::Empty;
    }
    match len {
        Some(n) => BodyFraming::Length(n),
        None if chunks => BodyFraming::Chunked,
        None => BodyFraming::CloseDelimited,
    }
}

/// How a request body we send is framed: its length when known (none for an
/// empty one), else chunked.
pub fn request_body_framing(len: Option<u64>) -> BodyFraming {
    match len {
        Some(0) => BodyFraming::Empty,
        Some(n) => BodyFraming::Length(n),
        None => BodyFraming::Chunked,
    }
}

/// Rejects `transfer_encoding` / `content_length`: servers behind CGI-style
/// gateways map `_` to `-`, and would then frame the message differently
/// from us. No legitimate client sends these names.
fn reject_lookalikes(headers: &HeaderMap) -> Result<(), HeadError> {
    let lookalike = |name: &HeaderName| {
        let n = name.as_str().as_bytes();
        n.contains(&b'_')
            && [CONTENT_LENGTH, TRANSFER_ENCODING].iter().any(|f| {
                let f = f.as_str().as_bytes();
                f.len() == n.len() && f.iter().zip(n).all(|(&a, &b)| a == b || (a == b'-' && b == b'_'))
            })
    };
    match headers.keys().any(lookalike) {
        true => Err(HeadError::malformed("framing field name spelt with '_'")),
        false => Ok(()),
    }
}

/// Validates every Content-Length field (RFC 9110 §8.6): each value, and
/// each element of a comma list, must be 1*DIGIT and all must be equal.
/// Returns None when there is no Content-Length field.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, HeadError> {
    let mut found: Option<u64> = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        // No empty elements here: `5,` is not something a sane sender emits.
        for item in value.as_bytes().split(|&b| b == b',') {
            let n = parse_decimal(trim_ows(item)).ok_or_else(|| HeadError::malformed("invalid Content-Length"))?;
            match found {
                Some(prev) if prev != n => {
                    return Err(HeadError::malformed("conflicting Content-Length values"));
                }
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

/// 1*DIGIT as a u64; None on anything else, including overflow.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        if d.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

/// Reads the whole Transfer-Encoding list (all fields, RFC 9110 §5.3).
fn classify_te(headers: &HeaderMap) -> Result<TeKind, HeadError> {
    let mut count = 0usize;
    let mut chunked_count = 0usize;
    let mut last_chunked = false;
    for item in list_items(headers, TRANSFER_ENCODING) {
        let name = trim_ows(item.split(|&b| b == b';').next().unwrap_or_default());
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(HeadError::malformed("invalid transfer coding"));
        }
        let is_chunked = item.eq_ignore_ascii_case(b"chunked");
        // RFC 9112 §7.1: chunked takes no parameters.
        if !is_chunked && name.eq_ignore_ascii_case(b"chunked") {
            return Err(HeadError::malformed("parameters on the chunked coding"));
        }
        count += 1;
        chunked_count += usize::from(is_chunked);
        last_chunked = is_chunked;
    }
    if count == 0 {
        return Err(HeadError::malformed("empty Transfer-Encoding"));
    }
    // RFC 9112 §6.1: a sender MUST NOT apply chunked more than once.
    if chunked_count > 1 {
        return Err(HeadError::malformed("chunked applied more than once"));
    }
    Ok(match (last_chunked, count) {
        (false, _) => TeKind::FinalNotChunked,
        (true, 1) => TeKind::Chunked,
        (true, _) => TeKind::ChunkedAfterOthers,
    })
}

/// The non-empty, OWS-trimmed elements of every `name` field, in order
/// (RFC 9110 §5.6.1: recipients ignore empty list elements).
pub(crate) fn list_items(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(trim_ows)
        .filter(|item| !item.is_empty())
}

/// Strips optional whitespace (SP / HTAB, RFC 9110 §5.6.3) from both ends.
pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// tchar (RFC 9110 §5.6.2).
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    use super::super::parse::{parse_request_head, parse_response_head, RequestHead, ResponseHead};

    fn req_ok(s: &[u8]) -> (RequestHead, usize) {
        match parse_request_head(s, 8192) {
            Ok(Some(h)) => h,
            other => panic!("expected a head for {:?}, got {other:?}", String::from_utf8_lossy(s)),
        }
    }

    fn req_err(s: &[u8]) -> HeadError {
        match parse_request_head(s, 8192) {
            Err(e) => e,
            other => panic!("expected an error for {:?}, got {other:?}", String::from_utf8_lossy(s)),
        }
    }

    fn res_ok(s: &[u8], method: &Method) -> ResponseHead {
        match parse_response_head(s, 8192, method) {
            Ok(Some((h, n))) if n == s.len() => h,
            other => panic!("expected a whole head, got {other:?}"),
        }
    }

    fn map(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in fields {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn decimal_parsing() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(parse_decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal(b"18446744073709551616"), None);
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"+1"), None);
        assert_eq!(parse_decimal(b"1 "), None);
    }

    #[test]
    fn trims_only_ows() {
        assert_eq!(trim_ows(b" \tabc\t "), b"abc");
        assert_eq!(trim_ows(b"   "), b"");
        assert_eq!(trim_ows(b"a b"), b"a b");
    }

    #[test]
    fn request_framing_rules() {
        let v11 = Version::HTTP_11;
        assert_eq!(request_framing(&map(&[]), v11), Ok(BodyFraming::Empty));
        let m = map(&[("content-length", "7")]);
        assert_eq!(request_framing(&m, v11), Ok(BodyFraming::Length(7)));
        let m = map(&[("transfer-encoding", "Chunked")]);
        assert_eq!(request_framing(&m, v11), Ok(BodyFraming::Chunked));
        let m = map(&[("transfer-encoding", "gzip"), ("transfer-encoding", "chunked")]);
        assert_eq!(request_framing(&m, v11), Err(HeadError::UnsupportedTransferCoding));
        let m = map(&[("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")]);
        assert!(matches!(request_framing(&m, v11), Err(HeadError::Malformed(_))));
    }

    #[test]
    fn response_framing_rules() {
        let v11 = Version::HTTP_11;
        let get = Method::GET;
        let r = |code: u16, m: &Method, h: &HeaderMap| {
            let status = StatusCode::from_u16(code).map_err(|_| HeadError::TooLarge)?;
            response_framing(status, m, h, v11)
        };
        let cl = map(&[("content-length", "3")]);
        assert_eq!(r(200, &get, &cl), Ok((BodyFraming::Length(3), false)));
        assert_eq!(r(200, &Method::HEAD, &cl), Ok((BodyFraming::Empty, false)));
        assert_eq!(r(304, &get, &cl), Ok((BodyFraming::Empty, false)));
        assert_eq!(r(204, &get, &cl), Ok((BodyFraming::Empty, false)));
        assert_eq!(r(101, &get, &cl), Ok((BodyFraming::Empty, false)));
        assert_eq!(r(200, &Method::CONNECT, &cl), Ok((BodyFraming::Empty, false)));
        assert_eq!(r(407, &Method::CONNECT, &cl), Ok((BodyFraming::Length(3), false)));
        assert_eq!(r(200, &get, &map(&[])), Ok((BodyFraming::CloseDelimited, false)));
        let both = map(&[("content-length", "3"), ("transfer-encoding", "chunked")]);
        assert_eq!(r(200, &get, &both), Ok((BodyFraming::Chunked, true)));
        let gz = map(&[("transfer-encoding", "gzip")]);
        assert_eq!(r(200, &get, &gz), Ok((BodyFraming::CloseDelimited, false)));
    }

    #[test]
    fn content_length_rules() {
        let with_cl = |v: &str| format!("POST / HTTP/1.1\r\nHost: h\r\n{v}\r\n\r\n").into_bytes();
        for bad in [
            "Content-Length: abc",
            "Content-Length: -1",
            "Content-Length: +5",
            "Content-Length: 0x10",
            "Content-Length: 1.0",
            "Content-Length: 5 5",
            "Content-Length:",
            "Content-Length: 5,",
            "Content-Length: 5, 6",
            "Content-Length: 5\r\nContent-Length: 6",
            "Content-Length: 18446744073709551616",
        ] {
            assert!(matches!(req_err(&with_cl(bad)), HeadError::Malformed(_)), "{bad}");
        }
        // Identical repeats may be merged (RFC 9110 §8.6), but not in front of
        // other parsers: refused, as nginx does.
        for bad in
            ["Content-Length: 5, 5", "Content-Length: 5\r\nContent-Length: 5", "Content-Length: 1\r\ncontent-length: 1"]
        {
            assert!(matches!(req_err(&with_cl(bad)), HeadError::Malformed(_)), "{bad}");
        }
        for (ok, n) in [("Content-Length:  7 ", 7), ("Content-Length: 18446744073709551615", u64::MAX)] {
            assert_eq!(req_ok(&with_cl(ok)).0.framing, BodyFraming::Length(n), "{ok}");
        }
    }

    #[test]
    fn transfer_encoding_rules() {
        let with = |v: &str| format!("POST / HTTP/1.1\r\nHost: h\r\n{v}\r\n\r\n").into_bytes();
        for bad in [
            "Transfer-Encoding: chunked\r\nContent-Length: 5",
            "Content-Length: 5\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: gzip",
            "Transfer-Encoding: chunked, gzip",
            "Transfer-Encoding: chunked, chunked",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: chunked;foo=bar",
            "Transfer-Encoding:",
            "Transfer-Encoding: chunked\x0b",
            "Transfer-Encoding: \"chunked\"",
        ] {
            assert!(matches!(req_err(&with(bad)), HeadError::Malformed(_)), "{bad:?}");
        }
        for unsupported in ["Transfer-Encoding: gzip, chunked", "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked"]
        {
            assert_eq!(req_err(&with(unsupported)), HeadError::UnsupportedTransferCoding);
        }
        for ok in [
            "Transfer-Encoding: chunked",
            "Transfer-Encoding: CHUNKED",
            "Transfer-Encoding:  chunked\t",
            "Transfer-Encoding: , chunked",
        ] {
            assert_eq!(req_ok(&with(ok)).0.framing, BodyFraming::Chunked, "{ok:?}");
        }
        for lookalike in ["Transfer_Encoding: chunked", "Content_Length: 5"] {
            assert!(matches!(req_err(&with(lookalike)), HeadError::Malformed(_)));
        }
        assert_eq!(req_ok(&with("X_Custom: 5")).0.framing, BodyFraming::Empty);
        let old = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(req_err(old), HeadError::Malformed(_)));
    }

    #[test]
    fn parses_responses() {
        let get = Method::GET;
        let h = res_ok(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", &get);
        assert_eq!((h.status, h.framing), (StatusCode::OK, BodyFraming::Length(3)));
        assert!(h.keep_alive);
        let h = res_ok(b"HTTP/1.1 599 \r\nTransfer-Encoding: chunked\r\n\r\n", &get);
        assert_eq!((h.status.as_u16(), h.framing), (599, BodyFraming::Chunked));
        let h = res_ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", &get);
        assert_eq!(h.framing, BodyFraming::Chunked);
        assert!(!h.keep_alive);
        let h = res_ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", &get);
        assert_eq!((h.framing, h.keep_alive), (BodyFraming::CloseDelimited, false));
        let h = res_ok(b"HTTP/1.1 200 OK\r\n\r\n", &get);
        assert_eq!((h.framing, h.keep_alive), (BodyFraming::CloseDelimited, false));
        let h = res_ok(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", &get);
        assert_eq!((h.version, h.keep_alive), (Version::HTTP_10, false));
        let h = res_ok(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n", &get);
        assert!(!h.keep_alive);
    }

    #[test]
    fn bodiless_responses() {
        let cases: [(&[u8], Method); 6] = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", Method::HEAD),
            (b"HTTP/1.1 204 No Content\r\n\r\n", Method::GET),
            (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", Method::GET),
            (b"HTTP/1.1 100 Continue\r\n\r\n", Method::POST),
            (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", Method::GET),
            (b"HTTP/1.1 200 Connection established\r\n\r\n", Method::CONNECT),
        ];
        for (buf, method) in cases {
            let h = res_ok(buf, &method);
            assert_eq!(h.framing, BodyFraming::Empty, "{method}");
            assert!(h.keep_alive);
        }
        let h = res_ok(b"HTTP/1.1 407 Auth\r\nContent-Length: 2\r\n\r\n", &Method::CONNECT);
        assert_eq!(h.framing, BodyFraming::Length(2));
    }
}
