//! The chunked body decoder on arbitrary bytes, fed whole, in two pieces and
//! in small pieces. Every way of feeding must give the same outcome (data,
//! trailers, end, error and the bytes left for the next message); the data
//! is never longer than the input; a decoded body re-encoded with our chunk
//! encoder decodes to the same data and trailers.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use openproxy::http1::{encode_chunk_prefix, encode_last_chunk, BodyFraming, CHUNK_SUFFIX};
use openproxy_fuzz::{decode_in_pieces, split_point, split_point_salted, Outcome};

fuzz_target!(|data: &[u8]| {
    // Vary the trailer limit with the input so both sides of it get reached.
    let max_trailers = 16 + split_point_salted(data, 1) * 4;
    let whole = decode_in_pieces(BodyFraming::Chunked, data, max_trailers, &[]);
    if let Ok(out) = &whole {
        assert!(out.data.len() <= data.len());
        if out.ended {
            // "0\r\n\r\n" at the least was framing, not data.
            assert!(out.data.len() + out.rest.len() + 5 <= data.len());
            assert!(data.ends_with(&out.rest));
        }
    }
    let at = split_point(data);
    assert_eq!(decode_in_pieces(BodyFraming::Chunked, data, max_trailers, &[at]), whole, "split at {at}");
    // Pieces of 1 to 7 bytes; longer inputs get longer pieces, as each call
    // may rescan a partial size line and byte-at-a-time would be quadratic.
    let step = data.len() / 256 + 1 + split_point_salted(data, 2) % 7;
    let cuts: Vec<usize> = (step..data.len()).step_by(step).collect();
    assert_eq!(decode_in_pieces(BodyFraming::Chunked, data, max_trailers, &cuts), whole, "pieces of {step}");

    if let Ok(Outcome { data: body, trailers, ended: true, .. }) = &whole {
        let mut again = BytesMut::new();
        if !body.is_empty() {
            encode_chunk_prefix(body.len(), &mut again);
            again.extend_from_slice(body);
            again.extend_from_slice(CHUNK_SUFFIX);
        }
        encode_last_chunk(trailers.as_ref(), &mut again);
        let limit = again.len();
        let round = decode_in_pieces(BodyFraming::Chunked, &again, limit, &[]);
        match round {
            Ok(Outcome { data: d, trailers: t, ended: true, rest }) => {
                assert_eq!((&d, &t), (body, trailers));
                assert!(rest.is_empty());
            }
            other => panic!("re-encoded body: {other:?}"),
        }
    }
});
