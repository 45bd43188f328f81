//! Writing a neutral [`Body`] onto an HTTP/1.1 byte stream, shared by the
//! client side (responses) and the upstream side (request bodies). Each frame
//! is flushed as it goes so SSE events and streamed uploads never sit in a buffer.

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::body::{Body, BodyError, Frame};
use crate::http1;

/// Chunks below this size are copied next to their framing: one write per chunk.
const COALESCE: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WriteBodyError {
    /// The body being copied failed (its source broke).
    #[error(transparent)]
    Source(BodyError),
    /// The stream being written to failed.
    #[error(transparent)]
    Sink(#[from] std::io::Error),
}

/// Copies `body` to `wr`, chunk-encoded when `chunked` (trailers kept), raw
/// otherwise (trailers dropped: a length-framed message cannot carry them).
pub async fn write_body<W: AsyncWrite + Unpin>(
    wr: &mut W,
    mut body: Body,
    chunked: bool,
) -> Result<(), WriteBodyError> {
    let mut out = BytesMut::new();
    let mut ended = false;
    while let Some(frame) = body.next_frame().await {
        match frame.map_err(WriteBodyError::Source)? {
            Frame::Data(data) if data.is_empty() => continue,
            Frame::Data(data) if !chunked => wr.write_all(&data).await?,
            Frame::Data(data) => {
                out.clear();
                http1::encode_chunk_prefix(data.len(), &mut out);
                if data.len() < COALESCE {
                    out.extend_from_slice(&data);
                    out.extend_from_slice(http1::CHUNK_SUFFIX);
                    wr.write_all(&out).await?;
                } else {
                    wr.write_all(&out).await?;
                    wr.write_all(&data).await?;
                    wr.write_all(http1::CHUNK_SUFFIX).await?;
                }
            }
            Frame::Trailers(mut trailers) if chunked => {
                crate::proxy::headers::strip_trailer_fields(&mut trailers);
                out.clear();
                http1::encode_last_chunk(Some(&trailers), &mut out);
                wr.write_all(&out).await?;
                ended = true;
            }
            Frame::Trailers(_) => continue,
        }
        wr.flush().await?;
    }
    if chunked && !ended {
        out.clear();
        http1::encode_last_chunk(None, &mut out);
        wr.write_all(&out).await?;
    }
    wr.flush().await?;
    Ok(())
}
