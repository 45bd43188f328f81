//! Property tests: what our encoder writes, the parser and the body decoder
//! read back unchanged, however the bytes are split across reads. The unit
//! tests beside each file pin single cases; these cover random heads and
//! bodies, including every split of a head one byte at a time.

use bytes::BytesMut;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode, Version};
use proptest::prelude::*;
use proptest::sample::Index;

use super::{
    encode_chunk_prefix, encode_last_chunk, encode_request_head, encode_response_head, parse_request_head,
    parse_response_head, take_request_head, BodyDecoder, BodyFraming, DecodeEvent, CHUNK_SUFFIX,
};

/// tchar (RFC 9110 §5.6.2).
const TCHAR: &[u8] = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
/// What may follow the "/" of an origin-form target: visible ASCII but '#'.
const PATH: &[u8] = b"!$&'()*+,-./0123456789:;=?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]_abcdefghijklmnopqrstuvwxyz~%";
/// Characters of a Host value (RFC 3986 §3.2.2), as the parser checks them.
const HOST_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=%:[]";
/// Bytes after the body, which must be left in the buffer.
const NEXT: &[u8] = b"NEXT";

fn bytes_from(alphabet: &'static [u8], len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(alphabet), len)
}

fn token(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    // TCHAR is ASCII, so the bytes are UTF-8.
    bytes_from(TCHAR, len).prop_map(|b| b.into_iter().map(char::from).collect())
}

fn method() -> impl Strategy<Value = Method> {
    let known = prop::sample::select(vec![
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
    ]);
    // CONNECT takes an authority-form target, which `target` does not make.
    let extension = token(1..12)
        .prop_filter_map("not a method", |t| Method::from_bytes(t.as_bytes()).ok())
        .prop_filter("CONNECT", |m| *m != Method::CONNECT);
    prop_oneof![4 => known, 1 => extension]
}

/// A target valid for `method`: origin-form, absolute-form, or `*` for OPTIONS.
fn target(method: Method) -> impl Strategy<Value = String> {
    let path = bytes_from(PATH, 0..40).prop_map(|p| format!("/{}", p.into_iter().map(char::from).collect::<String>()));
    let absolute = (token(1..10), bytes_from(PATH, 0..20)).prop_map(|(host, p)| {
        let host: String = host.chars().filter(char::is_ascii_alphanumeric).collect();
        format!("http://{host}x.example/{}", p.into_iter().map(char::from).collect::<String>())
    });
    let star = if method == Method::OPTIONS { 1 } else { 0 };
    prop_oneof![8 => path, 2 => absolute, star => Just("*".to_owned())]
}

/// A field value: visible ASCII, obs-text and inner spaces/tabs, never
/// starting or ending with whitespace (the parser trims it, RFC 9112 §5.1).
fn value() -> impl Strategy<Value = HeaderValue> {
    let byte = prop_oneof![8 => 0x21u8..=0x7e, 1 => Just(b' '), 1 => Just(b'\t'), 1 => 0x80u8..=0xff];
    prop::collection::vec(byte, 0..40).prop_filter_map("not a field value", |mut v| {
        while v.last().is_some_and(|b| matches!(b, b' ' | b'\t')) {
            v.pop();
        }
        while v.first().is_some_and(|b| matches!(b, b' ' | b'\t')) {
            v.remove(0);
        }
        HeaderValue::from_bytes(&v).ok()
    })
}

/// Names the encoder or the parser treat specially are left out: Host is
/// added once by the test, framing fields are the encoder's, `Expect` other
/// than 100-continue is a 417 and `_` spellings of framing fields are refused.
fn field_name() -> impl Strategy<Value = HeaderName> {
    token(1..16).prop_filter_map("special field", |t| {
        let name = HeaderName::from_bytes(t.as_bytes()).ok()?;
        let plain = name.as_str().replace('_', "-");
        let special = ["host", "content-length", "transfer-encoding", "expect"].contains(&plain.as_str());
        (!special).then_some(name)
    })
}

fn fields(max: usize) -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec((field_name(), value()), 0..max).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name, value);
        }
        map
    })
}

fn framing() -> impl Strategy<Value = BodyFraming> {
    prop_oneof![Just(BodyFraming::Empty), any::<u64>().prop_map(BodyFraming::Length), Just(BodyFraming::Chunked)]
}

/// A request as the proxy would hold it before sending it on.
fn request() -> impl Strategy<Value = (Method, String, HeaderMap, BodyFraming)> {
    method().prop_flat_map(|m| {
        let host = bytes_from(HOST_CHARS, 0..20).prop_filter_map("not a value", |h| HeaderValue::from_bytes(&h).ok());
        (Just(m.clone()), target(m), fields(24), host, framing()).prop_map(|(m, t, mut h, host, f)| {
            h.append(HOST, host);
            (m, t, h, f)
        })
    })
}

/// Sorted cut points in `0..=len` picked by `picks`.
fn cuts(picks: &[Index], len: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = picks.iter().map(|i| i.index(len + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// The headers the parser should see: the given ones plus what the encoder
/// writes for `framing`.
fn with_framing(headers: &HeaderMap, method: &Method, framing: BodyFraming) -> (HeaderMap, BodyFraming) {
    let mut h = headers.clone();
    match framing {
        BodyFraming::Length(n) => {
            h.append(CONTENT_LENGTH, HeaderValue::from(n));
        }
        BodyFraming::Chunked => {
            h.append(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        }
        BodyFraming::Empty | BodyFraming::CloseDelimited => {
            if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
                h.append(CONTENT_LENGTH, HeaderValue::from(0u32));
                return (h, BodyFraming::Length(0));
            }
            return (h, BodyFraming::Empty);
        }
    }
    (h, framing)
}

/// Appends `input` to a buffer piece by piece (cut at `cuts`) and asks
/// `take_request_head` after each piece, as the connection loop does.
fn take_in_pieces(input: &[u8], cuts: &[usize]) -> (super::RequestHead, BytesMut) {
    let mut buf = BytesMut::new();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&input.len())) {
        buf.extend_from_slice(&input[from..to]);
        from = to;
        match take_request_head(&mut buf, 1 << 16) {
            Ok(Some(head)) => {
                buf.extend_from_slice(&input[from..]);
                return (head, buf);
            }
            Ok(None) => {}
            Err(e) => panic!("{e:?} after {to} bytes"),
        }
    }
    panic!("no head in {} bytes", input.len())
}

#[derive(Debug, PartialEq)]
struct Body {
    data: Vec<u8>,
    trailers: Option<HeaderMap>,
    rest: Vec<u8>,
}

/// Decodes a chunked body fed in pieces cut at `cuts`, draining after each.
fn decode_in_pieces(input: &[u8], cuts: &[usize]) -> Body {
    let mut dec = BodyDecoder::new(BodyFraming::Chunked, 1 << 16);
    let mut buf = BytesMut::new();
    let mut body = Body { data: Vec::new(), trailers: None, rest: Vec::new() };
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&input.len())) {
        buf.extend_from_slice(&input[from..to]);
        from = to;
        loop {
            match dec.decode(&mut buf) {
                Ok(DecodeEvent::Data(d)) => body.data.extend_from_slice(&d),
                Ok(DecodeEvent::Trailers(t)) => body.trailers = Some(t),
                Ok(DecodeEvent::End) => {
                    body.rest = buf.to_vec();
                    body.rest.extend_from_slice(&input[from..]);
                    return body;
                }
                Ok(DecodeEvent::NeedMore) => break,
                Err(e) => panic!("{e:?} after {to} bytes"),
            }
        }
    }
    panic!("body not complete in {} bytes", input.len())
}

/// One chunk as some sender may write it: hex in either case, maybe with
/// leading zeros, maybe with extensions (RFC 9112 §7.1.1).
#[derive(Debug, Clone)]
struct ChunkStyle {
    upper: bool,
    zeros: usize,
    ext: Option<(String, Option<String>)>,
}

fn chunk_style() -> impl Strategy<Value = ChunkStyle> {
    let quoted = bytes_from(b"abc xyz=;,\t", 0..10)
        .prop_map(|v| format!("\"{}\"", v.into_iter().map(char::from).collect::<String>()));
    let ext_value = prop_oneof![token(1..8), quoted];
    let ext = prop::option::weighted(0.3, (token(1..8), prop::option::of(ext_value)));
    (any::<bool>(), 0usize..3, ext).prop_map(|(upper, zeros, ext)| ChunkStyle { upper, zeros, ext })
}

fn put_chunk(data: &[u8], style: &ChunkStyle, dst: &mut BytesMut) {
    match &style.ext {
        None if !style.upper && style.zeros == 0 => encode_chunk_prefix(data.len(), dst),
        ext => {
            let hex = if style.upper { format!("{:X}", data.len()) } else { format!("{:x}", data.len()) };
            dst.extend_from_slice("0".repeat(style.zeros).as_bytes());
            dst.extend_from_slice(hex.as_bytes());
            if let Some((name, value)) = ext {
                dst.extend_from_slice(format!(";{name}").as_bytes());
                if let Some(value) = value {
                    dst.extend_from_slice(format!("={value}").as_bytes());
                }
            }
            dst.extend_from_slice(b"\r\n");
        }
    }
    dst.extend_from_slice(data);
    dst.extend_from_slice(CHUNK_SUFFIX);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn request_heads_round_trip_in_any_pieces(
        (method, target, headers, framing) in request(),
        picks in prop::collection::vec(any::<Index>(), 0..6),
    ) {
        let mut wire = BytesMut::new();
        encode_request_head(&method, &target, &headers, framing, &mut wire);
        let head_len = wire.len();
        wire.extend_from_slice(NEXT);
        let (head, rest) = take_in_pieces(&wire, &cuts(&picks, wire.len()));
        let (expected_headers, expected_framing) = with_framing(&headers, &method, framing);
        prop_assert_eq!(&head.method, &method);
        prop_assert_eq!(&head.target, &target);
        prop_assert_eq!(head.version, Version::HTTP_11);
        prop_assert_eq!(&head.headers, &expected_headers);
        prop_assert_eq!(head.framing, expected_framing);
        prop_assert_eq!(&rest[..], NEXT);
        prop_assert_eq!(parse_request_head(&wire, 1 << 16), Ok(Some((head, head_len))));
    }

    #[test]
    fn response_heads_round_trip(
        code in 200u16..=599,
        headers in fields(24),
        framing in framing(),
        close in any::<bool>(),
    ) {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
        // Only Empty keeps framing fields as given; the generator has none.
        let framing = if framing == BodyFraming::Empty { BodyFraming::CloseDelimited } else { framing };
        let mut wire = BytesMut::new();
        encode_response_head(status, &headers, framing, close, &mut wire);
        let n = wire.len();
        let parsed = parse_response_head(&wire, 1 << 16, &Method::GET);
        let Ok(Some((head, m))) = parsed else {
            return Err(TestCaseError::fail(format!("{parsed:?}")));
        };
        prop_assert_eq!(m, n);
        prop_assert_eq!(head.status, status);
        let bodiless = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        let expected = if bodiless { BodyFraming::Empty } else { framing };
        prop_assert_eq!(head.framing, expected);
        for (name, value) in &headers {
            prop_assert!(head.headers.get_all(name).iter().any(|v| v == value));
        }
        for i in 0..n {
            prop_assert_eq!(parse_response_head(&wire[..i], 1 << 16, &Method::GET), Ok(None));
        }
    }

    #[test]
    fn chunked_bodies_round_trip_in_any_pieces(
        payload in prop::collection::vec(any::<u8>(), 0..2048),
        sizes in prop::collection::vec((1usize..600, chunk_style()), 1..12),
        last in chunk_style(),
        trailers in prop::option::of(fields(6)),
        picks in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let trailers = trailers.filter(|t| !t.is_empty());
        let mut wire = BytesMut::new();
        let mut rest = &payload[..];
        for (size, style) in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*size).min(rest.len()));
            put_chunk(chunk, style, &mut wire);
            rest = tail;
        }
        if let Some((name, value)) = &last.ext {
            // A last chunk with an extension: "0;name=value", then what
            // encode_last_chunk writes after its "0".
            let mut tail = BytesMut::new();
            encode_last_chunk(trailers.as_ref(), &mut tail);
            wire.extend_from_slice(format!("0;{name}").as_bytes());
            if let Some(value) = value {
                wire.extend_from_slice(format!("={value}").as_bytes());
            }
            wire.extend_from_slice(&tail[1..]);
        } else {
            encode_last_chunk(trailers.as_ref(), &mut wire);
        }
        wire.extend_from_slice(NEXT);
        let expected = Body { data: payload, trailers, rest: NEXT.to_vec() };
        prop_assert_eq!(&decode_in_pieces(&wire, &cuts(&picks, wire.len())), &expected);
        prop_assert_eq!(&decode_in_pieces(&wire, &[]), &expected);
    }
}

proptest! {
    // Byte-at-a-time is quadratic in the input; fewer and smaller cases.
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn request_heads_round_trip_byte_at_a_time((method, target, headers, framing) in request()) {
        let mut wire = BytesMut::new();
        encode_request_head(&method, &target, &headers, framing, &mut wire);
        wire.extend_from_slice(NEXT);
        let every: Vec<usize> = (1..wire.len()).collect();
        let (head, rest) = take_in_pieces(&wire, &every);
        let (expected_headers, expected_framing) = with_framing(&headers, &method, framing);
        prop_assert_eq!((&head.method, &head.target, &head.headers), (&method, &target, &expected_headers));
        prop_assert_eq!(head.framing, expected_framing);
        prop_assert_eq!(&rest[..], NEXT);
    }

    #[test]
    fn chunked_bodies_round_trip_byte_at_a_time(
        payload in prop::collection::vec(any::<u8>(), 0..300),
        size in 1usize..64,
        style in chunk_style(),
        trailers in prop::option::of(fields(4)),
    ) {
        let trailers = trailers.filter(|t| !t.is_empty());
        let mut wire = BytesMut::new();
        for chunk in payload.chunks(size) {
            put_chunk(chunk, &style, &mut wire);
        }
        encode_last_chunk(trailers.as_ref(), &mut wire);
        wire.extend_from_slice(NEXT);
        let every: Vec<usize> = (1..wire.len()).collect();
        let expected = Body { data: payload, trailers, rest: NEXT.to_vec() };
        prop_assert_eq!(&decode_in_pieces(&wire, &every), &expected);
    }
}
