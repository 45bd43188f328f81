//! Writing responses to an HTTP/1.1 client: choose the framing the client can
//! read, send the head in one write (with a small body folded in), then stream
//! the body frame by frame.

use bytes::BytesMut;
use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Method, StatusCode, Version};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::body::Body;
use crate::http1::{self, BodyFraming};
use crate::proxy::Response;
use crate::wire::{write_body, WriteBodyError};

/// Bodies up to this size travel in the same write as the head.
const INLINE_BODY: usize = 16 * 1024;

/// How a response ended on the wire.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// Complete; the connection may carry another request if both sides agree.
    Complete,
    /// Complete, but framed by closing the connection.
    CompleteClose,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("client connection failed: {0}")]
    Client(#[from] std::io::Error),
    #[error("upstream body failed mid-response: {0}")]
    Upstream(crate::body::BodyError),
}

/// Writes `resp` for a request made with `method` by a client speaking `version`.
pub async fn write_response<W: AsyncWrite + Unpin>(
    wr: &mut W,
    resp: Response,
    method: &Method,
    version: Version,
    close: bool,
) -> Result<Written, WriteError> {
    let Response { status, mut headers, mut body } = resp;
    let bodiless = *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        if *method == Method::HEAD && !headers.contains_key(CONTENT_LENGTH) {
            if let Some(len) = body.exact_len().filter(|n| *n > 0) {
                headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
            }
        }
        body = Body::Empty;
        BodyFraming::Empty
    } else {
        headers.remove(CONTENT_LENGTH);
        match body.exact_len() {
            Some(n) => BodyFraming::Length(n),
            None if version == Version::HTTP_10 => BodyFraming::CloseDelimited,
            None => BodyFraming::Chunked,
        }
    };
    let close = close || framing == BodyFraming::CloseDelimited;
    if version == Version::HTTP_10 && !close {
        // HTTP/1.0 persistence is opt-in on both sides (RFC 9112 §C.2.2).
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("keep-alive"));
    }
    let mut out = BytesMut::with_capacity(512);
    http1::encode_response_head(status, "", &headers, framing, close, &mut out);
    if let Body::Full(bytes) = &body {
        if bytes.len() <= INLINE_BODY {
            out.extend_from_slice(bytes);
            body = Body::Empty;
        }
    }
    wr.write_all(&out).await?;
    wr.flush().await?;
    write_body(wr, body, framing == BodyFraming::Chunked).await.map_err(|e| match e {
        WriteBodyError::Source(e) => WriteError::Upstream(e),
        WriteBodyError::Sink(e) => WriteError::Client(e),
    })?;
    Ok(if close { Written::CompleteClose } else { Written::Complete })
}
