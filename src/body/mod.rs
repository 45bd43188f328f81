//! The protocol-neutral message body. HTTP/1.1 and HTTP/2 readers turn what
//! arrives into a [`Body`]; the pipeline passes it on without looking inside,
//! and writers pull [`Frame`]s from it as they arrive. Nothing here buffers a
//! whole stream: a `Channel` is bounded and a connection body reads on demand.
//!
//! `h1` reads a body off an HTTP/1.1 connection and writes one with HTTP/1.1
//! framing; `h2` does both on HTTP/2 streams. This module sits on the codec
//! (`http1`, the `h2` crate) and `net`; it knows nothing of routes or pools.

pub mod h1;
pub mod h2;

use bytes::Bytes;
use http::HeaderMap;
use tokio::sync::mpsc;

pub use self::h1::H1Body;
pub use self::h2::H2Body;
use crate::http1::{self, BodyFraming, DecodeError};

/// One piece of a body as it arrives.
#[derive(Debug)]
pub enum Frame {
    Data(Bytes),
    Trailers(HeaderMap),
}

/// Why a body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is malformed")]
    Malformed(#[from] DecodeError),
    #[error("the connection closed before the body was complete")]
    Incomplete,
    #[error("i/o error while reading the body")]
    Io(#[from] std::io::Error),
    #[error("HTTP/2 stream error")]
    Stream(#[from] ::h2::Error),
    #[error("the body stalled: nothing arrived for too long")]
    Stalled,
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
}

/// Copying a body from its source to a sink failed; which side failed decides
/// who is to blame (and so the status, and whether the client sees a reset).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The body being copied broke.
    #[error(transparent)]
    Source(BodyError),
    /// The connection or stream being written to failed.
    #[error("the receiving side failed")]
    Sink(#[source] std::io::Error),
}

/// Frames pushed by a connection driver that reads the body off its socket.
pub type FrameReceiver = mpsc::Receiver<Result<Frame, BodyError>>;

pub enum Body {
    Empty,
    /// A body that is already complete in memory.
    Full(Bytes),
    /// A body still arriving on a client connection; `len` is its declared length.
    Channel {
        rx: FrameReceiver,
        len: Option<u64>,
    },
    /// A body read off an HTTP/1.1 connection as it is asked for.
    H1(Box<H1Body>),
    /// A body arriving on an HTTP/2 stream (client request or upstream response).
    H2(Box<H2Body>),
}

impl Body {
    /// The next frame, `None` at the end.
    ///
    /// # Cancel safety
    /// Cancel safe for `Empty`, `Full`, `Channel` and `H2`; an `H1` body dropped
    /// mid-read simply closes its connection instead of recycling it.
    pub async fn next_frame(&mut self) -> Option<Result<Frame, BodyError>> {
        match self {
            Body::Empty => None,
            Body::Full(bytes) => {
                let data = std::mem::take(bytes);
                *self = Body::Empty;
                (!data.is_empty()).then_some(Ok(Frame::Data(data)))
            }
            Body::Channel { rx, .. } => rx.recv().await,
            Body::H1(h1) => h1.next_frame().await,
            Body::H2(h2) => h2.next_frame().await,
        }
    }

    /// The exact length when it is known before reading.
    pub fn exact_len(&self) -> Option<u64> {
        match self {
            Body::Empty => Some(0),
            Body::Full(bytes) => Some(bytes.len() as u64),
            Body::Channel { len, .. } => *len,
            Body::H1(h1) => h1.exact_len(),
            Body::H2(h2) => h2.exact_len(),
        }
    }

    /// True when the body is known to have no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.exact_len() == Some(0)
    }

    /// How this body is framed when sent as a request.
    pub fn request_framing(&self) -> BodyFraming {
        http1::request_body_framing(self.exact_len())
    }

    /// A copy to send again, for bodies that are already in memory.
    pub fn replayable(&self) -> Option<Body> {
        match self {
            Body::Empty => Some(Body::Empty),
            Body::Full(bytes) => Some(Body::Full(bytes.clone())),
            _ => None,
        }
    }

    /// Reads the whole body, refusing more than `limit` bytes. For small bodies only
    /// (health-check answers, tests): the proxy path streams instead.
    pub async fn collect(mut self, limit: usize) -> Result<Bytes, BodyError> {
        let mut out = bytes::BytesMut::new();
        while let Some(frame) = self.next_frame().await {
            if let Frame::Data(data) = frame? {
                if out.len() + data.len() > limit {
                    return Err(BodyError::TooLarge(limit));
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(out.freeze())
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Empty => f.write_str("Body::Empty"),
            Body::Full(b) => write!(f, "Body::Full({} bytes)", b.len()),
            Body::Channel { len, .. } => write!(f, "Body::Channel(len {len:?})"),
            Body::H1(_) => f.write_str("Body::H1"),
            Body::H2(_) => f.write_str("Body::H2"),
        }
    }
}
