//! The protocol-neutral message body. HTTP/1.1 and HTTP/2 readers turn what
//! arrives into a [`Body`]; the pipeline passes it on without looking inside,
//! and writers pull [`Frame`]s from it as they arrive. Nothing here buffers a
//! whole stream: a `Channel` is bounded and an upstream body reads on demand.

use bytes::Bytes;
use http::HeaderMap;
use tokio::sync::mpsc;

use crate::http2::H2Body;
use crate::upstream::H1ResponseBody;

/// One piece of a body as it arrives.
#[derive(Debug)]
pub enum Frame {
    Data(Bytes),
    Trailers(HeaderMap),
}

/// Why a body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the client body is malformed: {0}")]
    Malformed(String),
    #[error("the connection closed before the body was complete")]
    Incomplete,
    #[error("i/o error while reading the body: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP/2 stream error: {0}")]
    Stream(String),
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
    /// A response body read from an upstream HTTP/1.1 connection.
    UpstreamH1(Box<H1ResponseBody>),
    /// A body arriving on an HTTP/2 stream (client request or upstream response).
    H2(Box<H2Body>),
}

impl Body {
    /// The next frame, `None` at the end.
    ///
    /// # Cancel safety
    /// Cancel safe for `Empty`, `Full` and `Channel`; an upstream body dropped mid-read
    /// simply closes its connection instead of returning it to the pool.
    pub async fn next_frame(&mut self) -> Option<Result<Frame, BodyError>> {
        match self {
            Body::Empty => None,
            Body::Full(bytes) => {
                if bytes.is_empty() {
                    *self = Body::Empty;
                    return None;
                }
                let data = std::mem::take(bytes);
                *self = Body::Empty;
                Some(Ok(Frame::Data(data)))
            }
            Body::Channel { rx, .. } => rx.recv().await,
            Body::UpstreamH1(up) => up.next_frame().await,
            Body::H2(h2) => h2.next_frame().await,
        }
    }

    /// The exact length when it is known before reading.
    pub fn exact_len(&self) -> Option<u64> {
        match self {
            Body::Empty => Some(0),
            Body::Full(bytes) => Some(bytes.len() as u64),
            Body::Channel { len, .. } => *len,
            Body::UpstreamH1(up) => up.exact_len(),
            Body::H2(h2) => h2.exact_len(),
        }
    }

    /// True when the body is known to have no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.exact_len() == Some(0)
    }

    /// Reads the whole body, refusing more than `limit` bytes. For small bodies only
    /// (health-check answers, tests): the proxy path streams instead.
    pub async fn collect(mut self, limit: usize) -> Result<Bytes, BodyError> {
        let mut out = bytes::BytesMut::new();
        while let Some(frame) = self.next_frame().await {
            if let Frame::Data(data) = frame? {
                if out.len() + data.len() > limit {
                    return Err(BodyError::Malformed(format!("body larger than {limit} bytes")));
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
            Body::UpstreamH1(_) => f.write_str("Body::UpstreamH1"),
            Body::H2(_) => f.write_str("Body::H2"),
        }
    }
}
