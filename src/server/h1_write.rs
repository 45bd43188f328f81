//! Writing responses to an HTTP/1.1 client: the framing the client can read
//! (decided by the one response-framing rule), the head in one write with a
//! small body folded in, then the body frame by frame.

use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Method, Version};
use tokio::io::AsyncWrite;

use crate::body::h1::{head_buffer, inline_small, write_body};
use crate::body::{Body, CopyError, SendStall};
use crate::http1::{self, BodyFraming};
use crate::message::Response;
use crate::net::Conn;

/// How a response ended on the wire.
#[derive(Debug)]
pub enum Written {
    /// Complete; the connection may carry another request if both sides agree.
    Complete,
    /// Complete, but framed by closing the connection.
    CompleteClose,
    /// The head of a `101` or a CONNECT's `200` went out: the connection now
    /// belongs to a tunnel to this upstream connection.
    Upgraded(Box<Conn>),
}

/// Writes `resp` for a request made with `method` by a client speaking `version`.
/// A [`CopyError::Source`] means the response body broke after the head left:
/// the caller must close the connection so the client sees a cut body. A
/// client that takes nothing of a write for `stall` is given up on.
pub async fn write_response<W: AsyncWrite + Unpin>(
    wr: &mut W,
    resp: Response,
    method: &Method,
    version: Version,
    close: bool,
    stall: SendStall,
) -> Result<Written, CopyError> {
    let Response { status, mut headers, body } = resp;
    let (body, upgraded) = match body {
        Body::Upgraded(conn) => (Body::Empty, Some(conn)),
        body => (body, None),
    };
    // A tunnel's head says nothing of closing: the connection lives on as the tunnel.
    let close = close && upgraded.is_none();
    let len = body.exact_len();
    let framing = match upgraded {
        // No body and no framing fields: what follows is the tunnel (RFC 9110 §9.3.6).
        Some(_) => BodyFraming::Empty,
        None => http1::response_body_framing(method, status, len, version != Version::HTTP_10),
    };
    let body = if framing == BodyFraming::Empty {
        // A HEAD answer says how long the body would have been (RFC 9110 §9.3.2).
        if *method == Method::HEAD && !headers.contains_key(CONTENT_LENGTH) {
            if let Some(len) = len.filter(|n| *n > 0) {
                headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
            }
        }
        Body::Empty
    } else {
        body
    };
    let close = close || framing == BodyFraming::CloseDelimited;
    if version == Version::HTTP_10 && !close && upgraded.is_none() {
        // HTTP/1.0 persistence is opt-in on both sides (RFC 9112 §C.2.2).
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("keep-alive"));
    }
    let mut out = head_buffer(&body);
    http1::encode_response_head(status, &headers, framing, close, &mut out);
    // Field values share the upstream's read buffer: let it go before a
    // long body (an SSE stream) instead of holding it to the end.
    drop(headers);
    let body = inline_small(&mut out, body);
    write_body(wr, body, framing == BodyFraming::Chunked, out, Some(stall)).await?;
    Ok(match upgraded {
        Some(conn) => Written::Upgraded(conn),
        None if close => Written::CompleteClose,
        None => Written::Complete,
    })
}
