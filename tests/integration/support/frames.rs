//! HTTP/2 written frame by frame over TLS, for what the `h2` crate will not
//! send (floods, endless CONTINUATION, HPACK references that expand a small
//! block into a huge header list), and a reader that sees every frame the
//! proxy sends back, GOAWAY and RST_STREAM included.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::tls::{tls_connect, TestCa};

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const HEADER_TABLE_SIZE: u16 = 0x1;
pub const INITIAL_WINDOW_SIZE: u16 = 0x4;

pub const CANCEL: u32 = 0x8;
pub const REFUSED_STREAM: u32 = 0x7;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

pub type Tls = TlsStream<TcpStream>;

/// One frame: the 9-byte header, then `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    assert!(len < 1 << 24);
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> =
        pairs.iter().flat_map(|(id, value)| [&id.to_be_bytes()[..], &value.to_be_bytes()].concat()).collect();
    frame(SETTINGS, 0, 0, &payload)
}

pub fn ping(data: u64) -> Vec<u8> {
    frame(PING, 0, 0, &data.to_be_bytes())
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// An HPACK integer (RFC 7541 §5.1) with `prefix` bits in a first byte that
/// already carries `flags` in its high bits.
fn integer(out: &mut Vec<u8>, flags: u8, prefix: u32, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

fn string(out: &mut Vec<u8>, s: &str) {
    integer(out, 0, 7, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// A literal field, new name, not added to the proxy's dynamic table.
pub fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x00];
    string(&mut out, name);
    string(&mut out, value);
    out
}

/// A literal field, new name, that the proxy's decoder adds to its dynamic table.
pub fn literal_indexed(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x40];
    string(&mut out, name);
    string(&mut out, value);
    out
}

/// A reference to entry `index` of the static or dynamic table (dynamic starts at 62).
pub fn indexed(index: usize) -> Vec<u8> {
    let mut out = Vec::new();
    integer(&mut out, 0x80, 7, index);
    out
}

/// The header block of an authorized GET on the `localhost` route.
pub fn get_block(path: &str) -> Vec<u8> {
    [
        literal(":method", "GET"),
        literal(":scheme", "https"),
        literal(":authority", "localhost"),
        literal(":path", path),
        literal("authorization", "Bearer client-key"),
    ]
    .concat()
}

/// A whole GET request on `stream`, in one HEADERS frame.
pub fn get(stream: u32, path: &str) -> Vec<u8> {
    frame(HEADERS, END_HEADERS | END_STREAM, stream, &get_block(path))
}

#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a GOAWAY or RST_STREAM.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            GOAWAY => 4,
            RST_STREAM => 0,
            _ => return None,
        };
        Some(u32::from_be_bytes(self.payload.get(at..at + 4)?.try_into().ok()?))
    }

    /// The `:status` of a response HEADERS frame. The connection told the
    /// proxy's encoder to keep no dynamic table (see [`connect`]), so the
    /// status is always a static entry or a literal, never a reference.
    pub fn status(&self) -> Option<u16> {
        if self.kind != HEADERS {
            return None;
        }
        let mut block = &self.payload[..];
        // Padding and priority fields come before the block.
        if self.flags & 0x8 != 0 {
            let pad = *block.first()? as usize;
            block = block.get(1..block.len().checked_sub(pad)?)?;
        }
        if self.flags & 0x20 != 0 {
            block = block.get(5..)?;
        }
        // Dynamic table size updates (001xxxxx) may open the block.
        while block.first().is_some_and(|b| b & 0xe0 == 0x20) {
            block = skip_integer(block, 5)?;
        }
        let first = *block.first()?;
        if first & 0x80 != 0 {
            return match first & 0x7f {
                8 => Some(200),
                9 => Some(204),
                10 => Some(206),
                11 => Some(304),
                12 => Some(400),
                13 => Some(404),
                14 => Some(500),
                _ => None,
            };
        }
        // A literal whose name is static entry 8..14 (`:status`), with or
        // without indexing, or never indexed.
        let index = if first & 0xc0 == 0x40 { first & 0x3f } else { first & 0x0f };
        if !(8..=14).contains(&index) {
            return None;
        }
        let value = block.get(1..)?;
        let huffman = value.first()? & 0x80 != 0;
        let len = (value.first()? & 0x7f) as usize;
        let raw = value.get(1..1 + len)?;
        let digits = if huffman { huffman_digits(raw)? } else { String::from_utf8(raw.to_vec()).ok()? };
        digits.parse().ok()
    }
}

fn skip_integer(block: &[u8], prefix: u32) -> Option<&[u8]> {
    let max = (1u8 << prefix) - 1;
    let mut rest = block.get(1..)?;
    if block[0] & max == max {
        while rest.first()? & 0x80 != 0 {
            rest = &rest[1..];
        }
        rest = &rest[1..];
    }
    Some(rest)
}

/// Decodes a Huffman string made of digits only (RFC 7541 Appendix B: '0'-'2'
/// are the 5-bit codes 0-2, '3'-'9' the 6-bit codes 0x19-0x1f), as a status is.
fn huffman_digits(raw: &[u8]) -> Option<String> {
    let bits: Vec<u8> = raw.iter().flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1)).collect();
    let take = |at: usize, n: usize| -> Option<u8> {
        bits.get(at..at + n).map(|b| b.iter().fold(0u8, |acc, bit| acc << 1 | bit))
    };
    let mut out = String::new();
    let mut at = 0;
    // Fewer than 8 bits left, all ones, is the padding.
    while bits.len() - at >= 5 && !bits[at..].iter().all(|b| *b == 1) {
        match take(at, 5)? {
            code @ 0..=2 => {
                out.push((b'0' + code) as char);
                at += 5;
            }
            _ => {
                let code = take(at, 6)?;
                if !(0x19..=0x1f).contains(&code) {
                    return None;
                }
                out.push((b'0' + 3 + code - 0x19) as char);
                at += 6;
            }
        }
    }
    Some(out)
}

/// What came next on the connection.
#[derive(Debug)]
pub enum Read {
    Frame(Frame),
    /// The proxy closed the connection (EOF, or a reset).
    Closed,
    /// Nothing within the limit.
    Quiet,
}

pub struct FrameReader {
    rd: ReadHalf<Tls>,
    buf: Vec<u8>,
}

impl FrameReader {
    /// The next frame, or how the wait for it ended.
    pub async fn next(&mut self, limit: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let frame = Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes(self.buf[5..9].try_into().unwrap()) & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Read::Frame(frame);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.rd.read(&mut chunk)).await {
                Err(_) => return Read::Quiet,
                Ok(Ok(0)) | Ok(Err(_)) => return Read::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Frames until the connection closes, or until `limit` passes with
    /// nothing new (then the last element is not a close). Each frame
    /// `stop` approves ends the wait early, after it.
    pub async fn until(&mut self, limit: Duration, mut stop: impl FnMut(&Frame) -> bool) -> (Vec<Frame>, bool) {
        let mut frames = Vec::new();
        loop {
            match self.next(limit).await {
                Read::Frame(frame) => {
                    let done = stop(&frame);
                    frames.push(frame);
                    if done {
                        return (frames, false);
                    }
                }
                Read::Closed => return (frames, true),
                Read::Quiet => return (frames, false),
            }
        }
    }
}

/// An HTTP/2 connection to the proxy's TLS port, settings exchanged: our
/// SETTINGS (`pairs`, plus a header table size of 0 so every status the
/// proxy sends is readable without a dynamic table) went out, the proxy's
/// SETTINGS came and were acknowledged.
pub async fn connect(addr: SocketAddr, ca: &TestCa, pairs: &[(u16, u32)]) -> (FrameReader, WriteHalf<Tls>) {
    handshake(tls_connect(addr, ca.client_config(&[b"h2"])).await, pairs).await
}

/// [`connect`] with a small socket receive buffer: a client that stops
/// reading fills the proxy's send side within kilobytes, not megabytes, so
/// whether the proxy then stops reading too shows in a short flood.
pub async fn connect_tight(addr: SocketAddr, ca: &TestCa, pairs: &[(u16, u32)]) -> (FrameReader, WriteHalf<Tls>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(ca.client_config(&[b"h2"])).connect(name, tcp).await.unwrap();
    handshake(tls, pairs).await
}

async fn handshake(tls: Tls, pairs: &[(u16, u32)]) -> (FrameReader, WriteHalf<Tls>) {
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "the proxy must offer h2");
    let (rd, mut wr) = tokio::io::split(tls);
    let mut ours = vec![(HEADER_TABLE_SIZE, 0)];
    ours.extend_from_slice(pairs);
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(settings(&ours));
    wr.write_all(&hello).await.unwrap();
    let mut reader = FrameReader { rd, buf: Vec::new() };
    loop {
        match reader.next(Duration::from_secs(5)).await {
            Read::Frame(f) if f.kind == SETTINGS && f.flags & ACK == 0 => break,
            Read::Frame(_) => {}
            other => panic!("no SETTINGS from the proxy: {other:?}"),
        }
    }
    wr.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
    (reader, wr)
}

/// How much of a flood went out.
#[derive(Debug)]
pub struct Flooded {
    pub written: usize,
    /// A write failed: the proxy closed the connection.
    pub broken: bool,
}

/// Writes `bytes` `times` over, in pieces of at most 16 KiB, until all went
/// out, a write failed, or one made no progress for `stall` (the proxy no
/// longer reads).
pub async fn flood(wr: &mut WriteHalf<Tls>, bytes: &[u8], times: usize, stall: Duration) -> Flooded {
    let mut written = 0;
    for _ in 0..times {
        for piece in bytes.chunks(16 * 1024) {
            match tokio::time::timeout(stall, wr.write_all(piece)).await {
                Ok(Ok(())) => written += piece.len(),
                Ok(Err(_)) => return Flooded { written, broken: true },
                // The proxy stopped reading.
                Err(_) => return Flooded { written, broken: false },
            }
        }
    }
    let broken = matches!(tokio::time::timeout(stall, wr.flush()).await, Ok(Err(_)));
    Flooded { written, broken }
}
