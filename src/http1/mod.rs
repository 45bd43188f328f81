//! HTTP/1.1 codec: pure bytes-in / heads-and-body-frames-out, no IO.
//!
//! `parse` turns a buffered head into a [`RequestHead`] / [`ResponseHead`]
//! (strict RFC 9112 syntax, so that request smuggling through this proxy is
//! impossible), `framing` decides how the body is delimited (RFC 9112 §6),
//! `decode` incrementally splits a body out of a caller-owned buffer and
//! `encode` writes heads and chunk framing for a single write to the socket.
//! It knows bytes and RFC 9112, nothing of bodies in flight, providers or I/O.

pub mod decode;
pub mod encode;
mod fields;
pub mod framing;
pub mod parse;
#[cfg(test)]
mod roundtrip_tests;

pub use decode::{BodyDecoder, DecodeError, DecodeEvent, MAX_TRAILERS};
pub use encode::{
    encode_chunk_prefix, encode_continue, encode_last_chunk, encode_request_head, encode_response_head, CHUNK_SUFFIX,
};
pub use framing::{has_content, request_body_framing, response_body_framing, BodyFraming};
pub use parse::{
    parse_request_head, parse_response_head, take_request_head, take_response_head, HeadError, RequestHead,
    ResponseHead, MAX_HEADERS,
};
