//! One HTTP/1.1 exchange with an upstream: write the head (one write, with a
//! small body folded in), stream the request body while watching for the
//! response head, then hand back a body that reads on demand and returns the
//! connection to the pool when it ends cleanly.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use http::{HeaderMap, Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::connect::Stream;
use super::pool::{Conn, Pools};
use super::UpstreamError;
use crate::body::{Body, BodyError, Frame};
use crate::http1::{self, BodyDecoder, BodyFraming, DecodeEvent, ResponseHead};
use crate::wire::{write_body, WriteBodyError};

/// Bodies up to this size travel in the same write as the head.
const INLINE_BODY: usize = 16 * 1024;
/// Trailer sections larger than this are refused.
const MAX_TRAILERS: usize = 16 * 1024;

/// What goes upstream: the head already rewritten by the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamRequest<'a> {
    pub method: &'a Method,
    /// Origin-form target: path and query.
    pub target: &'a str,
    pub headers: &'a HeaderMap,
}

#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Body,
}

/// Sends `req` with `body` on `conn` and waits for the response head.
pub async fn exchange(
    pools: &Arc<Pools>,
    mut conn: Conn,
    req: UpstreamRequest<'_>,
    mut body: Body,
    max_head: usize,
) -> Result<UpstreamResponse, UpstreamError> {
    let framing = match body.exact_len() {
        Some(0) => BodyFraming::Empty,
        Some(n) => BodyFraming::Length(n),
        None => BodyFraming::Chunked,
    };
    let mut out = BytesMut::with_capacity(512);
    http1::encode_request_head(req.method, req.target, req.headers, framing, &mut out);
    if let Body::Full(bytes) = &body {
        if bytes.len() <= INLINE_BODY {
            out.extend_from_slice(bytes);
            body = Body::Empty;
        }
    }
    let (head, sent_ok) = send_and_receive(&mut conn, &out, body, framing, max_head, req.method).await?;
    let reusable = sent_ok && head.keep_alive;
    let body = match head.framing {
        BodyFraming::Empty => {
            if reusable {
                pools.put(conn);
            }
            Body::Empty
        }
        framing => Body::UpstreamH1(Box::new(H1ResponseBody {
            conn: Some(conn),
            decoder: BodyDecoder::new(framing, MAX_TRAILERS),
            len: match framing {
                BodyFraming::Length(n) => Some(n),
                _ => None,
            },
            pools: pools.clone(),
            reusable,
        })),
    };
    Ok(UpstreamResponse { status: head.status, headers: head.headers, body })
}

/// Writes the head and body while reading the response head, so an upstream
/// that answers before the upload ends is heard. Returns the head and whether
/// the whole request was sent (if not, the connection cannot be reused).
async fn send_and_receive(
    conn: &mut Conn,
    head: &[u8],
    body: Body,
    framing: BodyFraming,
    max_head: usize,
    method: &Method,
) -> Result<(ResponseHead, bool), UpstreamError> {
    let Conn { stream, buf, .. } = conn;
    // Over TLS one write can put a whole record on the wire before failing, so
    // only plain TCP can vouch that a failed first write sent nothing.
    let plain = matches!(stream, Stream::Plain(_));
    let (mut rd, mut wr) = tokio::io::split(stream);
    let send = async {
        let first = wr.write(head).await.map_err(|e| {
            if plain {
                UpstreamError::NothingWritten(e)
            } else {
                UpstreamError::Write(e)
            }
        })?;
        if first == 0 {
            return Err(UpstreamError::Write(std::io::ErrorKind::WriteZero.into()));
        }
        wr.write_all(&head[first..]).await.map_err(UpstreamError::Write)?;
        write_body(&mut wr, body, framing == BodyFraming::Chunked).await.map_err(|e| match e {
            WriteBodyError::Source(e) => UpstreamError::ClientBody(e),
            WriteBodyError::Sink(e) => UpstreamError::Write(e),
        })?;
        wr.flush().await.map_err(UpstreamError::Write)
    };
    let recv = read_head(&mut rd, buf, max_head, method);
    tokio::pin!(send, recv);
    let mut sent = None;
    let head = loop {
        tokio::select! {
            result = &mut send, if sent.is_none() => match result {
                // A client body that broke is the client's failure, and the upstream,
                // still waiting for the rest, would never answer: give up now.
                Err(UpstreamError::ClientBody(e)) => return Err(UpstreamError::ClientBody(e)),
                other => sent = Some(other),
            },
            head = &mut recv => break head,
        }
    };
    let head = match (head, sent) {
        // The read side only saw the closed connection; the write side knows
        // whether anything of ours went out.
        (Err(_), Some(Err(e @ UpstreamError::NothingWritten(_)))) => return Err(e),
        (head, Some(sent)) => return Ok((head?, sent.is_ok())),
        (head, None) => head?,
    };
    // The upstream answered while the upload is still going.
    if head.status.as_u16() >= 300 || !head.keep_alive {
        // It does not want the rest (an early 413, say): answer the client now
        // rather than wait on an upload the upstream may never read. The rest
        // of the body is dropped, so neither connection can be reused.
        return Ok((head, false));
    }
    // A success means it is still reading (RFC 9112 §9.3): finish the upload.
    let sent = send.await;
    match sent {
        Err(UpstreamError::ClientBody(e)) => Err(UpstreamError::ClientBody(e)),
        sent => Ok((head, sent.is_ok())),
    }
}

/// Reads until a final response head (skipping 100 Continue and 103 Early Hints).
async fn read_head<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max_head: usize,
    method: &Method,
) -> Result<ResponseHead, UpstreamError> {
    loop {
        if !buf.is_empty() {
            match http1::parse_response_head(buf, max_head, method) {
                Ok(Some((head, used))) => {
                    buf.advance(used);
                    if head.status == StatusCode::SWITCHING_PROTOCOLS {
                        // We never forward Upgrade, so a switch is unsolicited.
                        return Err(UpstreamError::BadResponse("unsolicited 101 Switching Protocols".into()));
                    }
                    if head.status.is_informational() {
                        continue;
                    }
                    if has_other_transfer_coding(&head.headers) {
                        // We re-frame bodies; passing gzip through as chunked would corrupt them.
                        return Err(UpstreamError::BadResponse("unsupported transfer-coding".into()));
                    }
                    return Ok(head);
                }
                Ok(None) => {}
                Err(e) => return Err(UpstreamError::BadResponse(e.to_string())),
            }
        }
        buf.reserve(8 * 1024);
        let n = rd.read_buf(buf).await.map_err(UpstreamError::Read)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                UpstreamError::ClosedBeforeResponse
            } else {
                UpstreamError::BadResponse("connection closed inside the response head".into())
            });
        }
    }
}

fn has_other_transfer_coding(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|coding| !coding.trim_ascii().is_empty() && !coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// A response body still on its upstream connection.
#[derive(Debug)]
pub struct H1ResponseBody {
    /// `None` once the body has ended or failed.
    conn: Option<Conn>,
    decoder: BodyDecoder,
    len: Option<u64>,
    pools: Arc<Pools>,
    reusable: bool,
}

impl H1ResponseBody {
    pub fn exact_len(&self) -> Option<u64> {
        self.len
    }

    /// # Cancel safety
    /// Dropping the future mid-read loses nothing already decoded; dropping the
    /// body closes the connection rather than pooling it half-read.
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
                    return Some(Err(BodyError::Malformed(format!("upstream body: {e}"))));
                }
            }
            conn.buf.reserve(16 * 1024);
            match conn.stream.read_buf(&mut conn.buf).await {
                Ok(0) => {
                    self.reusable = false;
                    return match self.decoder.eof() {
                        Ok(DecodeEvent::Data(data)) => Some(Ok(Frame::Data(data))),
                        Ok(_) => {
                            self.conn = None;
                            None
                        }
                        Err(_) => {
                            self.conn = None;
                            Some(Err(BodyError::Incomplete))
                        }
                    };
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Some(Err(BodyError::Io(e)));
                }
            }
        }
    }

    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.reusable {
                self.pools.put(conn);
            }
        }
    }
}
