//! One HTTP/1.1 exchange with an upstream: write the head (one write, with a
//! small body folded in), stream the request body while watching for the
//! response head, then hand back a body that reads on demand and returns the
//! connection to the pool when it ends cleanly.

use std::sync::Arc;

use bytes::BytesMut;
use http::{HeaderMap, Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::pool::Pools;
use super::{Settings, UpstreamError, UpstreamRequest};
use crate::body::h1::{head_buffer, inline_small, write_body};
use crate::body::{Body, CopyError, H1Body, Progress};
use crate::http1::{self, BodyFraming, ResponseHead};
use crate::message::Response;
use crate::net::{Conn, Recycle, Stream};

/// Sends `req` with `body` on `conn` and waits for the response head.
pub async fn exchange(
    pools: &Arc<Pools>,
    mut conn: Conn,
    req: UpstreamRequest<'_>,
    body: Body,
    settings: Settings,
) -> Result<Response, UpstreamError> {
    let framing = body.request_framing();
    let mut out = head_buffer(&body);
    http1::encode_request_head(req.method, req.target, req.headers, framing, &mut out);
    let body = inline_small(&mut out, body);
    let wire = Wire { head: &out, framing, method: req.method, upgrade: req.upgrade, settings };
    let (head, sent_ok) = send_and_receive(&mut conn, wire, body).await?;
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        // What follows the head (already in `conn.buf`, perhaps) is the new protocol.
        return Ok(Response { status: head.status, headers: head.headers, body: Body::Upgraded(Box::new(conn)) });
    }
    let reusable = sent_ok && head.keep_alive && !req.upgrade;
    let body = match head.framing {
        BodyFraming::Empty => {
            if reusable {
                pools.put(conn);
            }
            Body::Empty
        }
        framing => {
            let home = reusable.then(|| pools.clone() as Arc<dyn Recycle>);
            let body = H1Body::new(conn, framing, home).with_idle(settings.timeouts.stream_idle);
            Body::H1(Box::new(body))
        }
    };
    Ok(Response { status: head.status, headers: head.headers, body })
}

/// The request as it goes on the wire.
struct Wire<'a> {
    /// The encoded head, with a small body folded in.
    head: &'a [u8],
    framing: BodyFraming,
    method: &'a Method,
    upgrade: bool,
    settings: Settings,
}

/// Writes the head and body while reading the response head, so an upstream
/// that answers before the upload ends is heard. Returns the head and whether
/// the whole request was sent (if not, the connection cannot be reused). The
/// first-byte timeout runs from the last request-body frame taken, so a slow
/// upload is not cut while an upstream that stops reading it is.
async fn send_and_receive(conn: &mut Conn, wire: Wire<'_>, body: Body) -> Result<(ResponseHead, bool), UpstreamError> {
    let Wire { head, framing, method, upgrade, settings } = wire;
    let first_byte = settings.timeouts.first_byte;
    let progress = Progress::new();
    let body = body.watched(progress.clone());
    let Conn { stream, buf, .. } = conn;
    // Over TLS one write can put a whole record on the wire before failing, so
    // only plain TCP can vouch that a failed first write sent nothing.
    let plain = matches!(stream, Stream::Plain(_));
    let (mut rd, mut wr) = stream.split();
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
        write_body(&mut wr, body, framing == BodyFraming::Chunked, BytesMut::new(), None).await.map_err(
            |e| match e {
                CopyError::Source(e) => UpstreamError::ClientBody(e),
                CopyError::Sink(e) => UpstreamError::Write(e),
            },
        )?;
        wr.flush().await.map_err(UpstreamError::Write)
    };
    let recv = read_head(&mut rd, buf, settings.max_head, method, upgrade);
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
            _ = progress.quiet_for(first_byte) => return Err(UpstreamError::FirstByteTimeout(first_byte)),
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
    // A success means it is still reading (RFC 9112 §9.3): finish the upload,
    // unless the upstream stops taking it.
    let sent = tokio::select! {
        sent = send => sent,
        _ = progress.quiet_for(settings.timeouts.stream_idle) => return Ok((head, false)),
    };
    match sent {
        Err(UpstreamError::ClientBody(e)) => Err(UpstreamError::ClientBody(e)),
        sent => Ok((head, sent.is_ok())),
    }
}

/// Room for a response head (and a small body with it) in one read; kept
/// small because pooled connections hold it while they wait.
const HEAD_READ: usize = 4 * 1024;

/// Reads until a final response head (skipping 100 Continue and 103 Early Hints).
async fn read_head<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max_head: usize,
    method: &Method,
    upgrade: bool,
) -> Result<ResponseHead, UpstreamError> {
    loop {
        if !buf.is_empty() {
            match http1::take_response_head(buf, max_head, method) {
                Ok(Some(head)) => {
                    if head.status == StatusCode::SWITCHING_PROTOCOLS {
                        return match upgrade {
                            true if switches_to_websocket(&head.headers) => Ok(head),
                            true => {
                                Err(UpstreamError::BadResponse("101 to a protocol other than the websocket asked for"))
                            }
                            false => Err(UpstreamError::BadResponse("unsolicited 101 Switching Protocols")),
                        };
                    }
                    if head.status.is_informational() {
                        continue;
                    }
                    if has_other_transfer_coding(&head.headers) {
                        // We re-frame bodies; passing gzip through as chunked would corrupt them.
                        return Err(UpstreamError::BadResponse("unsupported transfer-coding"));
                    }
                    return Ok(head);
                }
                Ok(None) => {}
                Err(e) => return Err(UpstreamError::BadHead(e)),
            }
        }
        buf.reserve(HEAD_READ);
        let n = rd.read_buf(buf).await.map_err(UpstreamError::Read)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                UpstreamError::ClosedBeforeResponse
            } else {
                UpstreamError::BadResponse("connection closed inside the response head")
            });
        }
    }
}

/// A 101 that names `websocket` as the protocol it switches to (RFC 6455 §4.1).
fn switches_to_websocket(headers: &HeaderMap) -> bool {
    headers.get_all(http::header::UPGRADE).iter().any(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"))
}

fn has_other_transfer_coding(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|coding| !coding.trim_ascii().is_empty() && !coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}
