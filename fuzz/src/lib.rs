//! Helpers shared by the fuzz targets.

/// A split point in `0..=data.len()` that depends on every byte, so the
/// fuzzer moves it by mutating the input while a seed stays a plain message
/// (no control bytes in front of it).
pub fn split_point(data: &[u8]) -> usize {
    split_point_salted(data, 0)
}

/// Like [`split_point`], a different point for each `salt`.
pub fn split_point_salted(data: &[u8], salt: u64) -> usize {
    // FNV-1a: cheap, and every byte moves the result.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ salt;
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let len = data.len() as u64 + 1;
    // The remainder is < len, which came from a usize.
    (h % len) as usize
}

use bytes::BytesMut;
use http::HeaderMap;
use openproxy::http1::{BodyDecoder, BodyFraming, DecodeError, DecodeEvent};

/// Everything one decoding of a body yields.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub data: Vec<u8>,
    pub trailers: Option<HeaderMap>,
    /// End was reached (else the decoder still wanted more).
    pub ended: bool,
    /// What was left in the buffer after End, with the input not yet fed.
    pub rest: Vec<u8>,
}

/// Decodes `input` appended to the buffer in pieces cut at `cuts`
/// (ascending), draining the decoder after each piece as the proxy does
/// after each read.
pub fn decode_in_pieces(
    framing: BodyFraming,
    input: &[u8],
    max_trailers: usize,
    cuts: &[usize],
) -> Result<Outcome, DecodeError> {
    let mut dec = BodyDecoder::new(framing, max_trailers);
    let mut buf = BytesMut::new();
    let mut out = Outcome { data: Vec::new(), trailers: None, ended: false, rest: Vec::new() };
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&input.len())) {
        buf.extend_from_slice(&input[from..to]);
        from = to;
        loop {
            let event = dec.decode(&mut buf);
            match event {
                Ok(DecodeEvent::Data(d)) => {
                    assert!(!d.is_empty(), "empty Data event");
                    out.data.extend_from_slice(&d);
                }
                Ok(DecodeEvent::Trailers(t)) => {
                    assert!(out.trailers.is_none() && !t.is_empty(), "second or empty trailers");
                    out.trailers = Some(t);
                }
                Ok(DecodeEvent::End) => {
                    assert_eq!(dec.decode(&mut buf), Ok(DecodeEvent::End), "End is not sticky");
                    out.ended = true;
                    out.rest = buf.to_vec();
                    out.rest.extend_from_slice(&input[from..]);
                    return Ok(out);
                }
                Ok(DecodeEvent::NeedMore) => break,
                Err(e) => {
                    assert_eq!(dec.decode(&mut buf), Err(e.clone()), "error is not sticky");
                    return Err(e);
                }
            }
        }
    }
    Ok(out)
}
