//! HTTP/1.1 codec: pure bytes-in / heads-and-body-frames-out, no IO.
//!
//! `parse` turns a buffered head into a [`RequestHead`] / [`ResponseHead`]
//! (strict RFC 9112 syntax, so that request smuggling through this proxy is
//! impossible), `framing` decides how the body is delimited (RFC 9112 §6),
//! `decode` incrementally splits a body out of a caller-owned buffer and
//! `encode` writes heads and chunk framing for a single write to the socket.

pub mod decode;
pub mod encode;
mod fields;
pub mod framing;
pub mod parse;

pub use decode::{BodyDecoder, BodyError, DecodeEvent};
pub use encode::{
    encode_chunk_prefix, encode_continue, encode_last_chunk, encode_request_head, encode_response_head, CHUNK_SUFFIX,
};
pub use framing::BodyFraming;
pub use parse::{parse_request_head, parse_response_head, HeadError, RequestHead, ResponseHead, MAX_HEADERS};
