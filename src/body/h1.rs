//! Bodies over HTTP/1.1: [`H1Body`] reads one off a connection as it is asked
//! for and hands the connection back through [`Recycle`] when it ended
//! cleanly; [`write_body`] writes a neutral body with chunked or raw framing,
//! flushing each frame so SSE events and streamed uploads never sit in a
//! buffer; [`inline_small`] folds a small body into its head's write. Shared
//! by the client side (responses) and the upstream side (requests).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{within, Body, BodyError, CopyError, Frame};
use crate::headers::strip_trailer_fields;
use crate::http1::{self, BodyDecoder, BodyFraming, DecodeEvent, MAX_TRAILERS};
use crate::net::{Conn, Recycle};

/// Bodies up to this size travel in the same write as their head.
const INLINE_BODY: usize = 16 * 1024;
/// Chunks below this size are copied next to their framing: one write per chunk.
const COALESCE: usize = 8 * 1024;
const READ_SIZE: usize = 16 * 1024;

/// A body still on its HTTP/1.1 connection.
#[derive(Debug)]
pub struct H1Body {
    /// `None` once the body has ended or failed.
    conn: Option<Conn>,
    decoder: BodyDecoder,
    len: Option<u64>,
    /// Where the connection goes after a clean end, if it may carry another message.
    home: Option<Arc<dyn Recycle>>,
    /// Longest wait for the next bytes.
    idle: Option<Duration>,
}

impl H1Body {
    /// Reads a body framed as `framing` from `conn`. When `home` is given the
    /// connection is handed to it once the body has been read to its clean end.
    pub fn new(conn: Conn, framing: BodyFraming, home: Option<Arc<dyn Recycle>>) -> Self {
        let len = match framing {
            BodyFraming::Length(n) => Some(n),
            BodyFraming::Empty => Some(0),
            _ => None,
        };
        H1Body { conn: Some(conn), decoder: BodyDecoder::new(framing, MAX_TRAILERS), len, home, idle: None }
    }

    /// Fails the body with [`BodyError::Stalled`] when nothing arrives for `idle`.
    pub fn with_idle(mut self, idle: Duration) -> Self {
        self.idle = Some(idle);
        self
    }

    pub fn exact_len(&self) -> Option<u64> {
        self.len
    }

    /// # Cancel safety
    /// Dropping the future mid-read loses nothing already decoded; dropping the
    /// body closes the connection rather than recycling it half-read.
    pub async fn next_frame(&mut self) -> Option<Result<Frame, BodyError>> {
        let conn = self.conn.as_mut()?;
        loop {
            match self.decoder.decode(&mut conn.buf) {
                Ok(DecodeEvent::Data(data)) => return Some(Ok(Frame::Data(data))),
                Ok(DecodeEvent::Trailers(trailers)) => return Some(Ok(Frame::Trailers(trailers))),
                Ok(DecodeEvent::End) => {
                    self.finish();
                    return None;
                }
                Ok(DecodeEvent::NeedMore) => {}
                Err(e) => {
                    self.conn = None;
                    return Some(Err(e.into()));
                }
            }
            conn.buf.reserve(READ_SIZE);
            match within(self.idle, conn.stream.read_buf(&mut conn.buf)).await {
                Ok(Ok(0)) => return self.at_eof(),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    self.conn = None;
                    return Some(Err(BodyError::Io(e)));
                }
                Err(stalled) => {
                    self.conn = None;
                    return Some(Err(stalled));
                }
            }
        }
    }

    /// The peer closed: the end of a close-delimited body, else a cut one.
    fn at_eof(&mut self) -> Option<Result<Frame, BodyError>> {
        self.home = None;
        match self.decoder.eof() {
            Ok(DecodeEvent::Data(data)) => Some(Ok(Frame::Data(data))),
            Ok(_) => {
                self.conn = None;
                None
            }
            Err(_) => {
                self.conn = None;
                Some(Err(BodyError::Incomplete))
            }
        }
    }

    fn finish(&mut self) {
        if let (Some(conn), Some(home)) = (self.conn.take(), self.home.take()) {
            home.recycle(conn);
        }
    }
}

/// Moves a small in-memory body into `head`, so head and body leave in one
/// write; returns what is left to send after it.
pub fn inline_small(head: &mut BytesMut, body: Body) -> Body {
    match body {
        Body::Full(bytes) if bytes.len() <= INLINE_BODY => {
            head.extend_from_slice(&bytes);
            Body::Empty
        }
        other => other,
    }
}

/// Copies `body` to `wr`, chunk-encoded when `chunked` (trailers kept, minus
/// the fields a trailer may not carry), raw otherwise (trailers dropped: a
/// length-framed message cannot carry them).
pub async fn write_body<W: AsyncWrite + Unpin>(wr: &mut W, mut body: Body, chunked: bool) -> Result<(), CopyError> {
    let mut out = BytesMut::new();
    let mut ended = false;
    while let Some(frame) = body.next_frame().await {
        match frame.map_err(CopyError::Source)? {
            Frame::Data(data) if data.is_empty() => continue,
            Frame::Data(data) if !chunked => wr.write_all(&data).await.map_err(CopyError::Sink)?,
            Frame::Data(data) => {
                out.clear();
                http1::encode_chunk_prefix(data.len(), &mut out);
                if data.len() < COALESCE {
                    out.extend_from_slice(&data);
                    out.extend_from_slice(http1::CHUNK_SUFFIX);
                    wr.write_all(&out).await.map_err(CopyError::Sink)?;
                } else {
                    wr.write_all(&out).await.map_err(CopyError::Sink)?;
                    wr.write_all(&data).await.map_err(CopyError::Sink)?;
                    wr.write_all(http1::CHUNK_SUFFIX).await.map_err(CopyError::Sink)?;
                }
            }
            Frame::Trailers(mut trailers) if chunked => {
                strip_trailer_fields(&mut trailers);
                out.clear();
                http1::encode_last_chunk(Some(&trailers), &mut out);
                wr.write_all(&out).await.map_err(CopyError::Sink)?;
                ended = true;
            }
            Frame::Trailers(_) => continue,
        }
        wr.flush().await.map_err(CopyError::Sink)?;
    }
    if chunked && !ended {
        out.clear();
        http1::encode_last_chunk(None, &mut out);
        wr.write_all(&out).await.map_err(CopyError::Sink)?;
    }
    wr.flush().await.map_err(CopyError::Sink)
}
