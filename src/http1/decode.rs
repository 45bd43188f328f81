//! Incremental body decoder: splits a message body (RFC 9112 §6.3 framing,
//! §7.1 chunked coding, §7.1.2 trailers) off the front of a caller-owned
//! `BytesMut` without copying and without ever waiting for a whole chunk.

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;

use super::fields::{build_header_map, scan_section, Scan};
use super::framing::BodyFraming;
use super::parse::MAX_HEADERS;

/// Largest trailer section accepted on a chunked body, request or response.
pub const MAX_TRAILERS: usize = 16 * 1024;
/// Longest chunk-size line (size + extensions) accepted, without its CRLF.
/// Extensions are skipped, so anything longer is only a way to make us buffer.
const MAX_CHUNK_SIZE_LINE: usize = 4096;
/// 16 hex digits is the most a u64 can hold.
const MAX_HEX_DIGITS: usize = 16;

/// What [`BodyDecoder::decode`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeEvent {
    /// Body bytes (zero-copy `split_to(..).freeze()` from the buffer; at most what is buffered, never waits to fill a chunk).
    Data(Bytes),
    /// Trailer fields after the last chunk (only emitted when there were any).
    Trailers(HeaderMap),
    /// The body is complete; bytes after it in the buffer belong to the next message.
    End,
    /// Need more bytes: read from the socket, append to buf, call decode again.
    NeedMore,
}

/// Why a body could not be decoded. The connection cannot be reused after any of them.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("connection closed before the body was complete")]
    Incomplete,
    #[error("invalid chunk size line")]
    InvalidChunkSize,
    #[error("invalid chunk: {0}")]
    InvalidChunk(String),
    #[error("trailer section too large")]
    TrailersTooLarge,
    #[error("invalid trailer section: {0}")]
    InvalidTrailers(String),
}

/// Where the decoder is in the body.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Content-Length body with this many bytes still to come (never 0).
    Length { remaining: u64 },
    /// Close-delimited body: everything until EOF.
    Close,
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Inside a chunk's data with this many bytes still to come (never 0).
    ChunkData { remaining: u64 },
    /// Expecting the CRLF that ends a chunk's data.
    ChunkDataEnd,
    /// After the last chunk: expecting trailer fields and the final CRLF.
    Trailers,
    /// The body is complete.
    Done,
    /// A previous call failed; the error is sticky.
    Failed(DecodeError),
}

/// Incremental decoder for one message body.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    state: State,
    max_trailer_size: usize,
}

impl BodyDecoder {
    /// `max_trailer_size` bounds the trailer section of a chunked body in bytes.
    pub fn new(framing: BodyFraming, max_trailer_size: usize) -> Self {
        let state = match framing {
            BodyFraming::Empty | BodyFraming::Length(0) => State::Done,
            BodyFraming::Length(remaining) => State::Length { remaining },
            BodyFraming::Chunked => State::ChunkSize,
            BodyFraming::CloseDelimited => State::Close,
        };
        BodyDecoder { state, max_trailer_size }
    }

    /// Consumes from the front of `buf`. After End, always returns End.
    /// After an error, always returns that error.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<DecodeEvent, DecodeError> {
        let result = self.step(buf);
        if let Err(e) = &result {
            self.state = State::Failed(e.clone());
        }
        result
    }

    /// The peer closed the connection: Ok(End) for CloseDelimited, Err(DecodeError::Incomplete) if a Length/Chunked body was cut short.
    /// Call it only once `decode` has returned NeedMore, so that buffered bytes were drained.
    pub fn eof(&mut self) -> Result<DecodeEvent, DecodeError> {
        match &self.state {
            State::Done => Ok(DecodeEvent::End),
            State::Failed(e) => Err(e.clone()),
            State::Close => {
                self.state = State::Done;
                Ok(DecodeEvent::End)
            }
            _ => {
                self.state = State::Failed(DecodeError::Incomplete);
                Err(DecodeError::Incomplete)
            }
        }
    }

    #[cfg(test)]
    fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Advances through framing bytes until there is an event to report.
    fn step(&mut self, buf: &mut BytesMut) -> Result<DecodeEvent, DecodeError> {
        loop {
            match &mut self.state {
                State::Done => return Ok(DecodeEvent::End),
                State::Failed(e) => return Err(e.clone()),
                State::Close if buf.is_empty() => return Ok(DecodeEvent::NeedMore),
                State::Close => return Ok(DecodeEvent::Data(buf.split().freeze())),
                State::Length { remaining } => {
                    let Some(data) = take(remaining, buf) else {
                        return Ok(DecodeEvent::NeedMore);
                    };
                    if *remaining == 0 {
                        self.state = State::Done;
                    }
                    return Ok(DecodeEvent::Data(data));
                }
                State::ChunkData { remaining } => {
                    let Some(data) = take(remaining, buf) else {
                        return Ok(DecodeEvent::NeedMore);
                    };
                    if *remaining == 0 {
                        self.state = State::ChunkDataEnd;
                    }
                    return Ok(DecodeEvent::Data(data));
                }
                State::ChunkSize => {
                    let Some((size, consumed)) = parse_chunk_size(buf)? else {
                        return Ok(DecodeEvent::NeedMore);
                    };
                    buf.advance(consumed);
                    self.state = match size {
                        0 => State::Trailers,
                        remaining => State::ChunkData { remaining },
                    };
                }
                State::ChunkDataEnd => {
                    // RFC 9112 §7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF.
                    match buf.get(..2) {
                        Some(b"\r\n") => {}
                        Some(_) => return Err(missing_crlf()),
                        None if buf.first().is_none_or(|&b| b == b'\r') => return Ok(DecodeEvent::NeedMore),
                        None => return Err(missing_crlf()),
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => return self.trailers(buf),
            }
        }
    }

    /// trailer-section = *( field-line CRLF ), then the final CRLF (RFC 9112 §7.1.2).
    fn trailers(&mut self, buf: &mut BytesMut) -> Result<DecodeEvent, DecodeError> {
        // The lone final CRLF is always accepted, whatever the limit.
        let limit = self.max_trailer_size.max(2);
        let view = &buf[..buf.len().min(limit)];
        let end = match scan_section(view, 0).map_err(invalid_trailers)? {
            Scan::Complete(end) => end,
            Scan::Partial { .. } if buf.len() > limit => return Err(DecodeError::TrailersTooLarge),
            Scan::Partial { .. } => return Ok(DecodeEvent::NeedMore),
        };
        let fields = if end == 2 {
            HeaderMap::new()
        } else {
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match httparse::parse_headers(&buf[..end], &mut slots) {
                Ok(httparse::Status::Complete((n, fields))) if n == end => {
                    build_header_map(fields, None).map_err(invalid_trailers)?
                }
                Ok(_) => return Err(invalid_trailers("section does not end where expected")),
                Err(httparse::Error::TooManyHeaders) => return Err(DecodeError::TrailersTooLarge),
                Err(e) => return Err(DecodeError::InvalidTrailers(e.to_string())),
            }
        };
        buf.advance(end);
        self.state = State::Done;
        Ok(if fields.is_empty() { DecodeEvent::End } else { DecodeEvent::Trailers(fields) })
    }
}

/// Splits off up to `*remaining` buffered bytes; None when nothing is buffered.
fn take(remaining: &mut u64, buf: &mut BytesMut) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let n = usize::try_from(*remaining).map_or(buf.len(), |r| r.min(buf.len()));
    // n <= *remaining, and usize -> u64 is lossless on supported targets.
    *remaining -= n as u64;
    Some(buf.split_to(n).freeze())
}

fn missing_crlf() -> DecodeError {
    DecodeError::InvalidChunk("chunk data not followed by CRLF".to_owned())
}

fn invalid_trailers(what: &str) -> DecodeError {
    DecodeError::InvalidTrailers(what.to_owned())
}

/// Parses `chunk-size [ chunk-ext ] CRLF` at the front of `buf`.
/// Ok(None) = line incomplete; Some((size, bytes up to and including CRLF)).
fn parse_chunk_size(buf: &[u8]) -> Result<Option<(u64, usize)>, DecodeError> {
    let view = &buf[..buf.len().min(MAX_CHUNK_SIZE_LINE)];
    let Some(at) = view.iter().position(|&b| b == b'\r' || b == b'\n') else {
        if buf.len() >= MAX_CHUNK_SIZE_LINE {
            return Err(DecodeError::InvalidChunkSize);
        }
        // Reject garbage early rather than after buffering a whole line.
        check_size_line(view, false)?;
        return Ok(None);
    };
    // A bare LF (or a CR not followed by LF) is not a line end we accept.
    if view[at] == b'\n' {
        return Err(DecodeError::InvalidChunkSize);
    }
    match buf.get(at + 1) {
        Some(b'\n') => {}
        Some(_) => return Err(DecodeError::InvalidChunkSize),
        None => {
            check_size_line(&view[..at], false)?;
            return Ok(None);
        }
    }
    let size = check_size_line(&view[..at], true)?;
    Ok(Some((size, at + 2)))
}

/// Validates a chunk-size line without its CRLF and returns the size.
/// `complete` is false for a line whose end has not arrived yet: then only
/// what is already there is judged.
///
/// chunk-size = 1*HEXDIG; chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] )
/// (RFC 9112 §7.1, §7.1.1). Extensions are ignored, so only their bytes are checked.
fn check_size_line(line: &[u8], complete: bool) -> Result<u64, DecodeError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits > MAX_HEX_DIGITS || (digits == 0 && (complete || !line.is_empty())) {
        return Err(DecodeError::InvalidChunkSize);
    }
    let size = line[..digits].iter().fold(0u64, |acc, &d| {
        // At most 16 hex digits, so the shift never loses bits.
        (acc << 4) | u64::from(hex_value(d))
    });
    let rest = &line[digits..];
    let ext = super::framing::trim_ows(rest);
    let ext_ok = match ext.first() {
        Some(b';') => true,
        // Whitespace may only precede ';' (BWS), never end the line.
        Some(_) => false,
        None => rest.is_empty() || !complete,
    };
    let bytes_ok = rest.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f));
    if ext_ok && bytes_ok {
        Ok(size)
    } else {
        Err(DecodeError::InvalidChunkSize)
    }
}

fn hex_value(d: u8) -> u8 {
    match d {
        b'0'..=b'9' => d - b'0',
        b'a'..=b'f' => d - b'a' + 10,
        b'A'..=b'F' => d - b'A' + 10,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything one decode pass yields from `input`: data, trailers, whether it ended.
    #[derive(Debug, Default, PartialEq)]
    struct Outcome {
        data: Vec<u8>,
        trailers: Option<HeaderMap>,
        ended: bool,
    }

    /// Feeds `input` in pieces cut at `cuts`, draining after each piece.
    fn feed(framing: BodyFraming, input: &[u8], cuts: &[usize]) -> Result<(Outcome, BytesMut), DecodeError> {
        let mut dec = BodyDecoder::new(framing, 1024);
        let mut buf = BytesMut::new();
        let mut out = Outcome::default();
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&input.len())) {
            buf.extend_from_slice(&input[from..to]);
            from = to;
            loop {
                match dec.decode(&mut buf)? {
                    DecodeEvent::Data(d) => {
                        assert!(!d.is_empty(), "empty data event");
                        out.data.extend_from_slice(&d);
                    }
                    DecodeEvent::Trailers(t) => out.trailers = Some(t),
                    DecodeEvent::End => {
                        out.ended = true;
                        // Bytes not fed yet belong after the body too.
                        buf.extend_from_slice(&input[from..]);
                        return Ok((out, buf));
                    }
                    DecodeEvent::NeedMore => break,
                }
            }
        }
        Ok((out, buf))
    }

    fn chunked_err(input: &[u8]) -> DecodeError {
        match feed(BodyFraming::Chunked, input, &[]) {
            Err(e) => e,
            Ok(o) => panic!("expected an error for {:?}, got {o:?}", String::from_utf8_lossy(input)),
        }
    }

    const BODY: &[u8] = b"5;name=value;x\r\nhello\r\n7 ; q=\"a b\"\r\n, world\r\nA\r\n0123456789\r\n0;last\r\nX-Checksum: abc\r\nx-checksum: def\r\nX-Other: \xff\r\n\r\nNEXT";

    #[test]
    fn chunked_with_extensions_and_trailers_at_every_split() {
        let (whole, rest) = feed(BodyFraming::Chunked, BODY, &[]).expect("whole");
        assert_eq!(whole.data, b"hello, world0123456789");
        assert!(whole.ended);
        assert_eq!(&rest[..], b"NEXT");
        let trailers = whole.trailers.clone().expect("trailers");
        let sums: Vec<_> = trailers.get_all("x-checksum").iter().collect();
        assert_eq!(sums, ["abc", "def"]);
        for i in 0..=BODY.len() {
            let (two, rest) = feed(BodyFraming::Chunked, BODY, &[i]).expect("two reads");
            assert_eq!((&two, &rest[..]), (&whole, &b"NEXT"[..]), "split at {i}");
        }
        let every: Vec<usize> = (1..BODY.len()).collect();
        let (bytewise, rest) = feed(BodyFraming::Chunked, BODY, &every).expect("bytewise");
        assert_eq!((&bytewise, &rest[..]), (&whole, &b"NEXT"[..]));
    }

    #[test]
    fn emits_partial_chunks_without_waiting() {
        let mut dec = BodyDecoder::new(BodyFraming::Chunked, 64);
        let mut buf = BytesMut::from(&b"10\r\nabc"[..]);
        assert_eq!(dec.decode(&mut buf), Ok(DecodeEvent::Data(Bytes::from_static(b"abc"))));
        assert_eq!(dec.decode(&mut buf), Ok(DecodeEvent::NeedMore));
        buf.extend_from_slice(b"defghijklmnop\r\n0\r\n\r\n");
        assert_eq!(dec.decode(&mut buf), Ok(DecodeEvent::Data(Bytes::from_static(b"defghijklmnop"))));
        assert_eq!(dec.decode(&mut buf), Ok(DecodeEvent::End));
        assert_eq!(dec.decode(&mut buf), Ok(DecodeEvent::End));
        assert!(dec.is_done() && buf.is_empty());
    }

    #[test]
    fn rejects_bad_chunk_sizes() {
        let long_ext = [&b"1;"[..], &[b'a'; MAX_CHUNK_SIZE_LINE], b"\r\nx\r\n0\r\n\r\n"].concat();
        let cases: [&[u8]; 17] = [
            b"\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"g\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"10000000000000000\r\n",
            b"00000000000000001\r\nx\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\rhello\r\n0\r\n\r\n",
            b"5;a\x00b\r\nhello\r\n0\r\n\r\n",
            b"5;a\rb\r\nhello\r\n0\r\n\r\n",
            b"5;a\x7f\r\nhello\r\n0\r\n\r\n",
            b"0\n\r\n",
            &long_ext,
        ];
        for case in cases {
            assert_eq!(chunked_err(case), DecodeError::InvalidChunkSize, "{:?}", String::from_utf8_lossy(case));
        }
        // Garbage is reported before a line end arrives.
        assert_eq!(chunked_err(b"zz"), DecodeError::InvalidChunkSize);
        let max = b"ffffffffffffffff\r\nabc";
        let mut dec = BodyDecoder::new(BodyFraming::Chunked, 64);
        let mut buf = BytesMut::from(&max[..]);
        assert_eq!(dec.decode(&mut buf), Ok(DecodeEvent::Data(Bytes::from_static(b"abc"))));
    }

    #[test]
    fn rejects_bad_chunk_ends() {
        for case in [
            &b"5\r\nhelloX\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r0\r\n\r\n",
            b"5\r\nhello\n",
            b"5\r\nhello\r\r",
        ] {
            assert!(matches!(chunked_err(case), DecodeError::InvalidChunk(_)), "{:?}", String::from_utf8_lossy(case));
        }
    }

    #[test]
    fn trailer_rules() {
        for case in [
            &b"0\r\nX: a\r\n b\r\n\r\n"[..],
            b"0\r\nX: a\n\r\n",
            b"0\r\nX: a\r\n\n",
            b"0\r\n\n",
            b"0\r\nX : a\r\n\r\n",
            b"0\r\nX: a\x00\r\n\r\n",
            b"0\r\n\rX\r\n",
        ] {
            assert!(
                matches!(chunked_err(case), DecodeError::InvalidTrailers(_)),
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
        let big = [&b"0\r\nX: "[..], &[b'a'; 2000], b"\r\n\r\n"].concat();
        assert_eq!(chunked_err(&big), DecodeError::TrailersTooLarge);
        let mut many = b"0\r\n".to_vec();
        for _ in 0..=MAX_HEADERS {
            many.extend_from_slice(b"a:\r\n");
        }
        many.extend_from_slice(b"\r\n");
        let mut dec = BodyDecoder::new(BodyFraming::Chunked, 1 << 16);
        assert_eq!(dec.decode(&mut BytesMut::from(&many[..])), Err(DecodeError::TrailersTooLarge));
        // A zero limit still accepts an empty trailer section.
        let mut dec = BodyDecoder::new(BodyFraming::Chunked, 0);
        assert_eq!(dec.decode(&mut BytesMut::from(&b"0\r\n\r\n"[..])), Ok(DecodeEvent::End));
    }

    #[test]
    fn errors_are_sticky() {
        let mut dec = BodyDecoder::new(BodyFraming::Chunked, 64);
        let mut buf = BytesMut::from(&b"x\r\n"[..]);
        assert_eq!(dec.decode(&mut buf), Err(DecodeError::InvalidChunkSize));
        let mut good = BytesMut::from(&b"0\r\n\r\n"[..]);
        assert_eq!(dec.decode(&mut good), Err(DecodeError::InvalidChunkSize));
        assert_eq!(dec.eof(), Err(DecodeError::InvalidChunkSize));
    }

    #[test]
    fn length_framing() {
        let mut dec = BodyDecoder::new(BodyFraming::Length(5), 0);
        let mut buf = BytesMut::new();
        assert_eq!(dec.decode(&mut buf), Ok(DecodeEvent::NeedMore));
        buf.extend_from_slice(b"he");
        assert_eq!(dec.decode(&mut buf), Ok(DecodeEvent::Data(Bytes::from_static(b"he"))));
        assert_eq!(dec.state, State::Length { remaining: 3 });
        buf.extend_from_slice(b"lloGET /");
        assert_eq!(dec.decode(&mut buf), Ok(DecodeEvent::Data(Bytes::from_static(b"llo"))));
        assert_eq!(dec.decode(&mut buf), Ok(DecodeEvent::End));
        assert_eq!((&buf[..], dec.is_done()), (&b"GET /"[..], true));
        assert_eq!(dec.eof(), Ok(DecodeEvent::End));
        for i in 0..=10 {
            let (out, rest) = feed(BodyFraming::Length(7), b"abcdefgXYZ", &[i]).expect("length");
            assert_eq!((out.data.as_slice(), out.ended, &rest[..]), (&b"abcdefg"[..], true, &b"XYZ"[..]));
        }
    }

    #[test]
    fn empty_and_zero_length_end_at_once() {
        for framing in [BodyFraming::Empty, BodyFraming::Length(0)] {
            let mut dec = BodyDecoder::new(framing, 0);
            assert!(dec.is_done());
            let mut buf = BytesMut::from(&b"next"[..]);
            assert_eq!(dec.decode(&mut buf), Ok(DecodeEvent::End));
            assert_eq!(&buf[..], b"next");
        }
    }

    #[test]
    fn close_delimited_ends_only_at_eof() {
        let mut dec = BodyDecoder::new(BodyFraming::CloseDelimited, 0);
        let mut buf = BytesMut::from(&b"abc"[..]);
        assert_eq!(dec.decode(&mut buf), Ok(DecodeEvent::Data(Bytes::from_static(b"abc"))));
        assert_eq!(dec.decode(&mut buf), Ok(DecodeEvent::NeedMore));
        assert!(!dec.is_done());
        assert_eq!(dec.eof(), Ok(DecodeEvent::End));
        assert_eq!(dec.decode(&mut buf), Ok(DecodeEvent::End));
    }

    #[test]
    fn eof_cuts_short_length_and_chunked() {
        let mut dec = BodyDecoder::new(BodyFraming::Length(3), 0);
        assert_eq!(dec.decode(&mut BytesMut::from(&b"ab"[..])).map(|_| ()), Ok(()));
        assert_eq!(dec.eof(), Err(DecodeError::Incomplete));
        let mut dec = BodyDecoder::new(BodyFraming::Chunked, 64);
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\n"[..]);
        while dec.decode(&mut buf) != Ok(DecodeEvent::NeedMore) {}
        assert_eq!(dec.eof(), Err(DecodeError::Incomplete));
    }
}
