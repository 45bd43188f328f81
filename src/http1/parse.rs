//! Parsing of request and response heads (start line + header section,
//! RFC 9112 §2–§5) with the strictness a smuggling-proof proxy needs.
//! `httparse` does the tokenising; this file adds the checks it leaves out.

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, EXPECT, HOST};
use http::{HeaderMap, Method, StatusCode, Version};

use super::fields::{build_header_map, scan_section, Scan};
use super::framing::{self, list_items, BodyFraming};

/// Most header fields accepted in one head (or one trailer section).
pub const MAX_HEADERS: usize = 128;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    /// Request target exactly as sent (origin-form "/p?q", absolute-form "http://h/p", authority-form "h:443" for CONNECT, or "*").
    pub target: String,
    /// HTTP_10 or HTTP_11 only.
    pub version: Version,
    /// Every field, names lower-cased by HeaderMap, repeated fields kept.
    pub headers: HeaderMap,
    /// Empty, Length(n) or Chunked.
    pub framing: BodyFraming,
    /// Whether the client connection may be reused after this exchange: HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive` (RFC 9112 §9.3).
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent (case-insensitive). Any other Expect value -> HeadError::Expectation (417).
    pub expect_continue: bool,
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: BodyFraming,
    /// False if `Connection: close`, HTTP/1.0 without keep-alive, CloseDelimited
    /// framing, or suspect framing (Transfer-Encoding with Content-Length, or in HTTP/1.0).
    pub keep_alive: bool,
}

/// Why a head was rejected. Messages never include field values (they can hold keys).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    /// The head is larger than max_head, or has more than MAX_HEADERS fields.
    #[error("message head too large")]
    TooLarge,
    /// The request line alone is longer than max_head.
    #[error("request target too long")]
    UriTooLong,
    /// Anything malformed or ambiguous.
    #[error("malformed message head: {0}")]
    Malformed(String),
    /// Expect with something other than 100-continue.
    #[error("unsupported expectation")]
    Expectation,
    /// Transfer-Encoding with a coding we don't implement.
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
}

impl HeadError {
    pub(crate) fn malformed(what: &str) -> Self {
        HeadError::Malformed(what.to_owned())
    }
}

/// Ok(None) = head incomplete, read more. Ok(Some((head, n))) = head parsed from buf[..n]; the body starts at buf[n].
/// `max_head` is the limit on the head size in bytes (request line + all header lines + final CRLF).
pub fn parse_request_head(buf: &[u8], max_head: usize) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let Some(end) = find_head_end(buf, max_head, HeadError::UriTooLong)? else {
        return Ok(None);
    };
    Ok(Some((request_head(buf, end, None)?, end)))
}

/// Like [`parse_request_head`], taking the head off the front of `buf` once it
/// is complete. Field values then share the head's bytes instead of each
/// being copied into an allocation of its own.
pub fn take_request_head(buf: &mut BytesMut, max_head: usize) -> Result<Option<RequestHead>, HeadError> {
    let Some(end) = find_head_end(buf, max_head, HeadError::UriTooLong)? else {
        return Ok(None);
    };
    let head = buf.split_to(end).freeze();
    request_head(&head, end, Some(&head)).map(Some)
}

/// Parses the complete head `buf[..end]`; field values are slices of `shared`
/// (which holds `buf`) when it is given.
fn request_head(buf: &[u8], end: usize, shared: Option<&Bytes>) -> Result<RequestHead, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(&buf[..end]) {
        Ok(httparse::Status::Complete(n)) if n == end => {}
        Ok(_) => return Err(HeadError::malformed("head does not end where expected")),
        Err(e) => return Err(map_httparse_error(e)),
    }
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::malformed("invalid method"))?;
    let target = req.path.unwrap_or_default();
    check_target(&method, target)?;
    let version = map_version(req.version)?;
    let headers = build_header_map(req.headers, shared).map_err(HeadError::malformed)?;
    check_host(&headers, version)?;
    let framing = framing::request_framing(&headers, version)?;
    let keep_alive = connection_keep_alive(&headers, version);
    let expect_continue = expect_continue(&headers, version)?;
    Ok(RequestHead { method, target: target.to_owned(), version, headers, framing, keep_alive, expect_continue })
}

/// Same for responses. `request_method` decides bodiless responses (HEAD; and 2xx to CONNECT is Empty framing too).
/// 1xx responses are returned like any other (framing Empty); the caller skips 100/103 and handles 101 itself.
pub fn parse_response_head(
    buf: &[u8],
    max_head: usize,
    request_method: &Method,
) -> Result<Option<(ResponseHead, usize)>, HeadError> {
    let Some(end) = find_head_end(buf, max_head, HeadError::TooLarge)? else {
        return Ok(None);
    };
    Ok(Some((response_head(buf, end, request_method, None)?, end)))
}

/// [`take_request_head`] for responses.
pub fn take_response_head(
    buf: &mut BytesMut,
    max_head: usize,
    request_method: &Method,
) -> Result<Option<ResponseHead>, HeadError> {
    let Some(end) = find_head_end(buf, max_head, HeadError::TooLarge)? else {
        return Ok(None);
    };
    let head = buf.split_to(end).freeze();
    response_head(&head, end, request_method, Some(&head)).map(Some)
}

fn response_head(
    buf: &[u8],
    end: usize,
    request_method: &Method,
    shared: Option<&Bytes>,
) -> Result<ResponseHead, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut slots);
    match res.parse(&buf[..end]) {
        Ok(httparse::Status::Complete(n)) if n == end => {}
        Ok(_) => return Err(HeadError::malformed("head does not end where expected")),
        Err(e) => return Err(map_httparse_error(e)),
    }
    let version = map_version(res.version)?;
    // httparse yields exactly three digits; StatusCode rejects 000-099.
    let status =
        StatusCode::from_u16(res.code.unwrap_or_default()).map_err(|_| HeadError::malformed("invalid status code"))?;
    let headers = build_header_map(res.headers, shared).map_err(HeadError::malformed)?;
    let (framing, suspect) = framing::response_framing(status, request_method, &headers, version)?;
    let keep_alive = !suspect && framing != BodyFraming::CloseDelimited && connection_keep_alive(&headers, version);
    Ok(ResponseHead { status, version, headers, framing, keep_alive })
}

/// Finds the end of the head (index just past the empty line), enforcing
/// `max_head` on complete and incomplete input alike. `line_too_long` is the
/// error for a start line that alone exceeds the limit.
fn find_head_end(buf: &[u8], max_head: usize, line_too_long: HeadError) -> Result<Option<usize>, HeadError> {
    // RFC 9112 §2.2: ignore empty lines received before the start line
    // (they still count against max_head).
    let mut start = 0;
    while buf[start..].starts_with(b"\r\n") {
        start += 2;
    }
    // Only the first max_head bytes can belong to an acceptable head.
    let view = &buf[..buf.len().min(max_head)];
    if start >= view.len() {
        return if buf.len() > max_head { Err(HeadError::TooLarge) } else { Ok(None) };
    }
    match scan_section(view, start).map_err(HeadError::malformed)? {
        Scan::Complete(end) => Ok(Some(end)),
        Scan::Partial { .. } if buf.len() <= max_head => Ok(None),
        Scan::Partial { first_line_done: false } => Err(line_too_long),
        Scan::Partial { .. } => Err(HeadError::TooLarge),
    }
}

fn map_httparse_error(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooLarge,
        // httparse's messages name the part that failed, never its bytes.
        other => HeadError::Malformed(other.to_string()),
    }
}

fn map_version(v: Option<u8>) -> Result<Version, HeadError> {
    match v {
        Some(0) => Ok(Version::HTTP_10),
        Some(1) => Ok(Version::HTTP_11),
        _ => Err(HeadError::malformed("unsupported HTTP version")),
    }
}

/// RFC 9112 §3.2: the four request-target forms, each only where allowed.
/// httparse admits non-ASCII bytes; a URI is ASCII (RFC 3986 §2), and a
/// fragment is never sent (RFC 9110 §7.1).
fn check_target(method: &Method, target: &str) -> Result<(), HeadError> {
    let t = target.as_bytes();
    let ascii = t.iter().all(|&b| (0x21..=0x7e).contains(&b)) && !t.contains(&b'#');
    let form_ok = if *method == Method::CONNECT {
        is_authority_form(t)
    } else if t == b"*" {
        *method == Method::OPTIONS
    } else {
        t.first() == Some(&b'/') || is_absolute_form(t)
    };
    if ascii && form_ok {
        Ok(())
    } else {
        Err(HeadError::malformed("invalid request target"))
    }
}

/// authority-form = uri-host ":" port (RFC 9112 §3.2.3).
fn is_authority_form(t: &[u8]) -> bool {
    let Some(colon) = t.iter().rposition(|&b| b == b':') else {
        return false;
    };
    let (host, port) = (&t[..colon], &t[colon + 1..]);
    !host.is_empty() && is_host_chars(host) && !port.is_empty() && port.iter().all(u8::is_ascii_digit)
}

/// absolute-URI starts with scheme ":" (RFC 3986 §3.1). Only hierarchical
/// URIs ("scheme://...") make sense for HTTP, and requiring "//" keeps a
/// "host:port" target from passing as an absolute-form one.
fn is_absolute_form(t: &[u8]) -> bool {
    let Some(colon) = t.iter().position(|&b| b == b':') else {
        return false;
    };
    if !t[colon + 1..].starts_with(b"//") {
        return false;
    }
    let scheme = &t[..colon];
    scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// Characters of uri-host [":" port] (reg-name, IP-literal, IPv4), RFC 3986 §3.2.2.
fn is_host_chars(v: &[u8]) -> bool {
    v.iter().all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:[]".contains(&b))
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host; any request with
/// more than one is rejected. Host routes requests here, so its syntax is checked.
fn check_host(headers: &HeaderMap, version: Version) -> Result<(), HeadError> {
    let mut hosts = headers.get_all(HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(HeadError::malformed("more than one Host field"));
    }
    match first {
        None if version == Version::HTTP_11 => Err(HeadError::malformed("missing Host field")),
        None => Ok(()),
        Some(v) if is_host_chars(v.as_bytes()) => Ok(()),
        Some(_) => Err(HeadError::malformed("invalid Host field")),
    }
}

/// Persistence per RFC 9112 §9.3: `close` wins; HTTP/1.1 defaults to
/// persistent, HTTP/1.0 needs `keep-alive`.
fn connection_keep_alive(headers: &HeaderMap, version: Version) -> bool {
    let mut close = false;
    let mut keep_alive = false;
    for token in list_items(headers, CONNECTION) {
        close |= token.eq_ignore_ascii_case(b"close");
        keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
    }
    !close && (version == Version::HTTP_11 || keep_alive)
}

/// RFC 9110 §10.1.1: 100-continue is the only expectation; anything else
/// gets 417. A 100-continue in an HTTP/1.0 request MUST be ignored.
fn expect_continue(headers: &HeaderMap, version: Version) -> Result<bool, HeadError> {
    let mut seen = false;
    for item in list_items(headers, EXPECT) {
        if !item.eq_ignore_ascii_case(b"100-continue") {
            return Err(HeadError::Expectation);
        }
        seen = true;
    }
    Ok(seen && version == Version::HTTP_11)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 8192;

    fn req(s: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
        parse_request_head(s, MAX)
    }

    fn req_ok(s: &[u8]) -> (RequestHead, usize) {
        match req(s) {
            Ok(Some(h)) => h,
            other => panic!("expected a head for {:?}, got {other:?}", String::from_utf8_lossy(s)),
        }
    }

    fn req_err(s: &[u8]) -> HeadError {
        match req(s) {
            Err(e) => e,
            other => panic!("expected an error for {:?}, got {other:?}", String::from_utf8_lossy(s)),
        }
    }

    fn assert_malformed(cases: &[&[u8]]) {
        for case in cases {
            assert!(matches!(req_err(case), HeadError::Malformed(_)), "{:?}", String::from_utf8_lossy(case));
        }
    }

    fn res(s: &[u8], method: &Method) -> Result<Option<(ResponseHead, usize)>, HeadError> {
        parse_response_head(s, MAX, method)
    }

    const POST: &[u8] = b"POST /v1/chat?x=1 HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 5\r\nX-Multi: a\r\nx-multi: b\r\nX-Bin: caf\xc3\xa9\r\n\r\nhello";

    #[test]
    fn parses_a_request() {
        let (h, n) = req_ok(POST);
        assert_eq!(&POST[n..], b"hello");
        assert_eq!(h.method, Method::POST);
        assert_eq!(h.target, "/v1/chat?x=1");
        assert_eq!(h.version, Version::HTTP_11);
        assert_eq!(h.framing, BodyFraming::Length(5));
        assert!(h.keep_alive && !h.expect_continue);
        let multi: Vec<_> = h.headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a", "b"]);
        assert_eq!(h.headers["x-bin"].as_bytes(), "café".as_bytes());
    }

    #[test]
    fn every_split_parses_identically() {
        let (whole, n) = req_ok(POST);
        for i in 0..POST.len() {
            match req(&POST[..i]) {
                Ok(None) => assert!(i < n, "incomplete at {i} after head end {n}"),
                Ok(Some((h, m))) => assert!(i >= n && h == whole && m == n),
                Err(e) => panic!("error {e:?} at split {i}"),
            }
        }
    }

    #[test]
    fn pipelined_requests() {
        let buf = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n";
        let (a, n) = req_ok(buf);
        let (b, m) = req_ok(&buf[n..]);
        assert_eq!((a.target.as_str(), b.target.as_str()), ("/a", "/b"));
        assert_eq!(a.framing, BodyFraming::Empty);
        assert_eq!(n + m, buf.len());
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let buf = b"\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(req_ok(buf).1, buf.len());
    }

    #[test]
    fn rejects_bare_lf_and_bare_cr() {
        assert_malformed(&[
            b"GET / HTTP/1.1\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\nContent-Length: 5\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n\rx\r\n",
            b"\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
        ]);
        // Detected before the head is complete.
        assert_malformed(&[b"GET / HTTP/1.1\nHo"]);
    }

    #[test]
    fn rejects_obs_fold_and_space_before_colon() {
        assert_malformed(&[
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost\t: h\r\n\r\n",
            b"GET / HTTP/1.1\r\n Host: h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n: empty-name\r\n\r\n",
        ]);
    }

    #[test]
    fn host_rules() {
        assert_malformed(&[
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: user@evil\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: evil/x\r\n\r\n",
        ]);
        let (h, _) = req_ok(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(h.version, Version::HTTP_10);
        req_ok(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n");
        req_ok(b"GET / HTTP/1.1\r\nHost:\r\n\r\n");
    }

    #[test]
    fn start_line_rules() {
        assert_malformed(&[
            b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.2\r\nHost: h\r\n\r\n",
            b"GET / HTTP/0.9\r\nHost: h\r\n\r\n",
            b"GET /\r\nHost: h\r\n\r\n",
            b"G@T / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /\x01 HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /#frag HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET h:443 HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET relative HTTP/1.1\r\nHost: h\r\n\r\n",
            b"CONNECT / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"CONNECT h HTTP/1.1\r\nHost: h\r\n\r\n",
            b"CONNECT h:x HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x7fb\r\n\r\n",
        ]);
        let targets: [(&[u8], &str); 4] = [
            (b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", "*"),
            (b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", "h:443"),
            (b"GET http://h/p?q HTTP/1.1\r\nHost: h\r\n\r\n", "http://h/p?q"),
            (b"PURGE /x HTTP/1.1\r\nHost: h\r\n\r\n", "/x"),
        ];
        for (buf, target) in targets {
            assert_eq!(req_ok(buf).0.target, target);
        }
    }

    #[test]
    fn size_limits() {
        let buf = b"GET /0123456789 HTTP/1.1\r\nHost: h\r\n\r\n";
        assert!(parse_request_head(buf, buf.len()).is_ok_and(|r| r.is_some()));
        assert_eq!(parse_request_head(buf, buf.len() - 1), Err(HeadError::TooLarge));
        // Incomplete but already over the limit.
        assert_eq!(parse_request_head(&buf[..30], 29), Err(HeadError::TooLarge));
        assert_eq!(parse_request_head(&buf[..30], 30), Ok(None));
        // The request line alone is over the limit.
        assert_eq!(parse_request_head(buf, 20), Err(HeadError::UriTooLong));
        assert_eq!(parse_request_head(&buf[..21], 20), Err(HeadError::UriTooLong));
        assert_eq!(parse_request_head(&[b'\r', b'\n'].repeat(20), 10), Err(HeadError::TooLarge));
        let many = |n: usize| {
            let mut s = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
            for i in 1..n {
                s.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
            }
            s.extend_from_slice(b"\r\n");
            s
        };
        assert!(parse_request_head(&many(MAX_HEADERS), 1 << 16).is_ok_and(|r| r.is_some()));
        assert_eq!(parse_request_head(&many(MAX_HEADERS + 1), 1 << 16), Err(HeadError::TooLarge));
    }

    #[test]
    fn connection_and_expect() {
        let ka = |s: &[u8]| req_ok(s).0.keep_alive;
        assert!(ka(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Close\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"));
        let ec = |s: &[u8]| req_ok(s).0.expect_continue;
        assert!(ec(b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n"));
        assert!(!ec(b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"));
        let bad = b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue, foo\r\n\r\n";
        assert_eq!(req_err(bad), HeadError::Expectation);
        assert_eq!(req_err(b"GET / HTTP/1.1\r\nHost: h\r\nExpect: foo\r\n\r\n"), HeadError::Expectation);
    }

    #[test]
    fn error_messages_hold_no_field_values() {
        let e = req_err(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: sk-secret\r\n\r\n");
        assert!(!e.to_string().contains("sk-secret"), "{e}");
        let e = req_err(b"POST / HTTP/1.1\r\nHost: h\r\nAuthorization: sk-se\x00cret\r\n\r\n");
        assert!(!e.to_string().contains("sk-se"), "{e}");
    }

    #[test]
    fn malformed_responses() {
        let get = Method::GET;
        for bad in [
            &b"HTTP/1.1 200 OK\nContent-Length: 1\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length : 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
        ] {
            assert!(matches!(res(bad, &get), Err(HeadError::Malformed(_))), "{:?}", String::from_utf8_lossy(bad));
        }
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n";
        assert_eq!(parse_response_head(buf, 10, &get), Err(HeadError::TooLarge));
    }

    #[test]
    fn response_split_at_every_byte() {
        let buf = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n5\r\n";
        let get = Method::GET;
        let Ok(Some((whole, n))) = res(buf, &get) else { panic!("no head") };
        for i in 0..buf.len() {
            match res(&buf[..i], &get) {
                Ok(None) => assert!(i < n),
                Ok(Some((h, m))) => assert!(i >= n && h == whole && m == n),
                Err(e) => panic!("error {e:?} at split {i}"),
            }
        }
    }
}
