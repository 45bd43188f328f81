//! Serialisation of request/response heads and chunked framing (RFC 9112
//! §3, §4, §7.1) into a `BytesMut` that the caller sends with one write.

use bytes::{BufMut, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode};

use super::framing::BodyFraming;

/// Ends every chunk's data (RFC 9112 §7.1).
pub const CHUNK_SUFFIX: &[u8] = b"\r\n";

/// "METHOD target HTTP/1.1\r\n" + headers + the framing header + "\r\n".
///
/// `target` must come from a parsed [`RequestHead`](super::RequestHead) (or be
/// otherwise validated): it is written verbatim. This function owns the
/// framing fields: any Content-Length / Transfer-Encoding left in `headers`
/// is dropped, so the upstream can never see two conflicting lengths.
/// Empty framing writes `content-length: 0` for POST, PUT and PATCH (RFC 9110
/// §8.6: a user agent SHOULD send it when such a method has no content);
/// CloseDelimited is not valid for requests and is treated as Empty.
pub fn encode_request_head(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    framing: BodyFraming,
    dst: &mut BytesMut,
) {
    dst.reserve(method.as_str().len() + target.len() + fields_len(headers) + 64);
    dst.put_slice(method.as_str().as_bytes());
    dst.put_u8(b' ');
    dst.put_slice(target.as_bytes());
    dst.put_slice(b" HTTP/1.1\r\n");
    put_fields(headers, true, dst);
    match framing {
        BodyFraming::Length(n) => put_content_length(n, dst),
        BodyFraming::Chunked => dst.put_slice(b"transfer-encoding: chunked\r\n"),
        BodyFraming::Empty | BodyFraming::CloseDelimited => {
            if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
                put_content_length(0, dst);
            }
        }
    }
    dst.put_slice(b"\r\n");
}

/// "HTTP/1.1 <code> <canonical reason>\r\n" + headers + framing header + "\r\n".
/// An upstream's own reason phrase is never relayed: it is optional text
/// (RFC 9112 §4) and a place for control characters to hide.
///
/// Length(n) writes `content-length`, Chunked `transfer-encoding: chunked`,
/// CloseDelimited nothing; with those three any framing field in `headers`
/// is dropped. Empty leaves `headers` exactly as given (a HEAD or 304
/// response keeps the Content-Length the body would have had).
/// 1xx and 204 responses never get framing fields (RFC 9110 §8.6, RFC 9112 §6.1).
/// `close` adds `connection: close`.
pub fn encode_response_head(
    status: StatusCode,
    headers: &HeaderMap,
    framing: BodyFraming,
    close: bool,
    dst: &mut BytesMut,
) {
    let reason = status.canonical_reason().unwrap_or_default();
    dst.reserve(reason.len() + fields_len(headers) + 64);
    dst.put_slice(b"HTTP/1.1 ");
    dst.put_slice(status.as_str().as_bytes());
    dst.put_u8(b' ');
    dst.put_slice(reason.as_bytes());
    dst.put_slice(b"\r\n");
    // 1xx and 204 never carry framing fields; 304 and HEAD answers keep the
    // length the body would have had (RFC 9110 §8.6).
    let bodiless = status.is_informational() || status == StatusCode::NO_CONTENT;
    let keep_as_given = framing == BodyFraming::Empty && !bodiless;
    put_fields(headers, !keep_as_given, dst);
    if !bodiless {
        match framing {
            BodyFraming::Length(n) => put_content_length(n, dst),
            BodyFraming::Chunked => dst.put_slice(b"transfer-encoding: chunked\r\n"),
            BodyFraming::Empty | BodyFraming::CloseDelimited => {}
        }
    }
    if close {
        dst.put_slice(b"connection: close\r\n");
    }
    dst.put_slice(b"\r\n");
}

/// "{len:x}\r\n"
pub fn encode_chunk_prefix(len: usize, dst: &mut BytesMut) {
    // usize -> u64 is lossless on every target Rust supports today.
    put_hex(len as u64, dst);
    dst.put_slice(b"\r\n");
}

/// "0\r\n" + trailer fields + "\r\n"
pub fn encode_last_chunk(trailers: Option<&HeaderMap>, dst: &mut BytesMut) {
    dst.put_slice(b"0\r\n");
    if let Some(trailers) = trailers {
        dst.reserve(fields_len(trailers) + 2);
        put_fields(trailers, false, dst);
    }
    dst.put_slice(b"\r\n");
}

/// "HTTP/1.1 100 Continue\r\n\r\n"
pub fn encode_continue(dst: &mut BytesMut) {
    dst.put_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
}

/// Bytes `put_fields` will write, to reserve once.
fn fields_len(headers: &HeaderMap) -> usize {
    headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum()
}

/// Writes "name: value\r\n" for every field (HeaderValue cannot hold CR/LF).
fn put_fields(headers: &HeaderMap, skip_framing: bool, dst: &mut BytesMut) {
    for (name, value) in headers {
        if skip_framing && (name == CONTENT_LENGTH || name == TRANSFER_ENCODING) {
            continue;
        }
        dst.put_slice(name.as_str().as_bytes());
        dst.put_slice(b": ");
        dst.put_slice(value.as_bytes());
        dst.put_slice(b"\r\n");
    }
}

fn put_content_length(n: u64, dst: &mut BytesMut) {
    dst.put_slice(b"content-length: ");
    put_radix(n, 10, dst);
    dst.put_slice(b"\r\n");
}

fn put_hex(n: u64, dst: &mut BytesMut) {
    put_radix(n, 16, dst);
}

/// Formats `n` in base 10 or 16 without going through `fmt`.
fn put_radix(mut n: u64, radix: u64, dst: &mut BytesMut) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // u64::MAX has 20 decimal digits.
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = DIGITS[(n % radix) as usize];
        n /= radix;
        if n == 0 {
            break;
        }
    }
    dst.put_slice(&tmp[i..]);
}

#[cfg(test)]
mod tests {
    use super::super::{parse_request_head, parse_response_head, BodyDecoder, DecodeEvent};
    use super::*;
    use http::{HeaderValue, Version};

    fn headers(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in fields {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    fn req_bytes(method: Method, h: &HeaderMap, framing: BodyFraming) -> BytesMut {
        let mut dst = BytesMut::new();
        encode_request_head(&method, "/v1/x?y=1", h, framing, &mut dst);
        dst
    }

    #[test]
    fn request_heads() {
        let h = headers(&[("host", "h"), ("x-a", "1"), ("x-a", "2")]);
        let out = req_bytes(Method::GET, &h, BodyFraming::Empty);
        assert_eq!(&out[..], b"GET /v1/x?y=1 HTTP/1.1\r\nhost: h\r\nx-a: 1\r\nx-a: 2\r\n\r\n");
        let out = req_bytes(Method::POST, &h, BodyFraming::Empty);
        assert!(out.ends_with(b"x-a: 2\r\ncontent-length: 0\r\n\r\n"));
        let out = req_bytes(Method::PUT, &h, BodyFraming::CloseDelimited);
        assert!(out.ends_with(b"content-length: 0\r\n\r\n"));
        let out = req_bytes(Method::DELETE, &h, BodyFraming::CloseDelimited);
        assert!(out.ends_with(b"x-a: 2\r\n\r\n"));
        let sneaky = headers(&[("host", "h"), ("content-length", "99"), ("transfer-encoding", "chunked")]);
        let out = req_bytes(Method::POST, &sneaky, BodyFraming::Length(12345678901));
        assert_eq!(&out[..], b"POST /v1/x?y=1 HTTP/1.1\r\nhost: h\r\ncontent-length: 12345678901\r\n\r\n");
    }

    #[test]
    fn request_round_trips() {
        let h = headers(&[("host", "api.example.com"), ("x-bin", "v"), ("x-bin", "w")]);
        for framing in [BodyFraming::Empty, BodyFraming::Length(0), BodyFraming::Length(42), BodyFraming::Chunked] {
            for method in [Method::GET, Method::POST, Method::PATCH] {
                let out = req_bytes(method.clone(), &h, framing);
                let Ok(Some((head, n))) = parse_request_head(&out, 4096) else { panic!("no head") };
                assert_eq!(n, out.len());
                assert_eq!(
                    (head.method, head.target.as_str(), head.version),
                    (method.clone(), "/v1/x?y=1", Version::HTTP_11)
                );
                let expected = match framing {
                    BodyFraming::Empty if method != Method::GET => BodyFraming::Length(0),
                    other => other,
                };
                assert_eq!(head.framing, expected);
                assert_eq!(head.headers.get_all("x-bin").iter().count(), 2);
            }
        }
    }

    #[test]
    fn response_heads() {
        let h = headers(&[("content-type", "text/plain")]);
        let mut out = BytesMut::new();
        encode_response_head(StatusCode::NOT_FOUND, &h, BodyFraming::Length(3), true, &mut out);
        assert_eq!(
            &out[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 3\r\nconnection: close\r\n\r\n"
        );
        out.clear();
        encode_response_head(StatusCode::OK, &h, BodyFraming::Chunked, false, &mut out);
        assert_eq!(&out[..], b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n");
        out.clear();
        encode_response_head(StatusCode::OK, &h, BodyFraming::CloseDelimited, true, &mut out);
        assert_eq!(&out[..], b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n");
        out.clear();
        let unknown = StatusCode::from_u16(599).unwrap_or(StatusCode::OK);
        encode_response_head(unknown, &HeaderMap::new(), BodyFraming::Empty, false, &mut out);
        assert_eq!(&out[..], b"HTTP/1.1 599 \r\n\r\n");
    }

    #[test]
    fn bodiless_response_heads() {
        let h = headers(&[("content-length", "10"), ("etag", "\"x\"")]);
        let mut out = BytesMut::new();
        encode_response_head(StatusCode::OK, &h, BodyFraming::Empty, false, &mut out);
        assert_eq!(&out[..], b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\netag: \"x\"\r\n\r\n");
        let Ok(Some((head, _))) = parse_response_head(&out, 4096, &Method::HEAD) else { panic!("no head") };
        assert_eq!((head.framing, head.keep_alive), (BodyFraming::Empty, true));
        out.clear();
        encode_response_head(StatusCode::NO_CONTENT, &h, BodyFraming::Length(10), false, &mut out);
        assert_eq!(&out[..], b"HTTP/1.1 204 No Content\r\netag: \"x\"\r\n\r\n");
    }

    #[test]
    fn response_round_trips() {
        let h = headers(&[("x-request-id", "abc"), ("content-type", "application/json")]);
        let cases = [
            (BodyFraming::Length(7), false, BodyFraming::Length(7), true),
            (BodyFraming::Chunked, false, BodyFraming::Chunked, true),
            (BodyFraming::Length(7), true, BodyFraming::Length(7), false),
            (BodyFraming::CloseDelimited, true, BodyFraming::CloseDelimited, false),
        ];
        for (framing, close, parsed, keep_alive) in cases {
            let mut out = BytesMut::new();
            encode_response_head(StatusCode::CREATED, &h, framing, close, &mut out);
            let Ok(Some((head, n))) = parse_response_head(&out, 4096, &Method::POST) else { panic!("no head") };
            assert_eq!(n, out.len());
            assert_eq!(head.status, StatusCode::CREATED);
            assert!(out.starts_with(b"HTTP/1.1 201 Created\r\n"));
            assert_eq!((head.framing, head.keep_alive), (parsed, keep_alive));
            assert_eq!(head.headers["x-request-id"], "abc");
        }
    }

    #[test]
    fn chunk_framing_round_trips() {
        let mut out = BytesMut::new();
        for piece in [&b"hello"[..], &[b'z'; 300], b"!"] {
            encode_chunk_prefix(piece.len(), &mut out);
            out.put_slice(piece);
            out.put_slice(CHUNK_SUFFIX);
        }
        assert!(out.starts_with(b"5\r\nhello\r\n12c\r\n"));
        let trailers = headers(&[("x-usage", "42")]);
        encode_last_chunk(Some(&trailers), &mut out);
        assert!(out.ends_with(b"1\r\n!\r\n0\r\nx-usage: 42\r\n\r\n"));
        let mut dec = BodyDecoder::new(BodyFraming::Chunked, 1024);
        let mut data = Vec::new();
        let mut got = None;
        loop {
            match dec.decode(&mut out) {
                Ok(DecodeEvent::Data(d)) => data.extend_from_slice(&d),
                Ok(DecodeEvent::Trailers(t)) => got = Some(t),
                Ok(DecodeEvent::End) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(data.len(), 306);
        assert_eq!(got, Some(trailers));
        out.clear();
        encode_last_chunk(None, &mut out);
        assert_eq!(&out[..], b"0\r\n\r\n");
    }

    #[test]
    fn small_pieces() {
        let mut out = BytesMut::new();
        encode_continue(&mut out);
        assert_eq!(&out[..], b"HTTP/1.1 100 Continue\r\n\r\n");
        for (n, hex) in [(0usize, "0"), (15, "f"), (16, "10"), (0xdead_beef, "deadbeef")] {
            out.clear();
            encode_chunk_prefix(n, &mut out);
            assert_eq!(&out[..], format!("{hex}\r\n").as_bytes());
        }
        out.clear();
        put_content_length(u64::MAX, &mut out);
        assert_eq!(&out[..], b"content-length: 18446744073709551615\r\n");
    }
}
