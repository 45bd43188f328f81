//! The HTTP/1.1 client-connection driver: read heads through a buffer, turn
//! each request into a neutral [`RequestHead`] + [`Body`], run the pipeline, and
//! write the response, while the request body streams on to the upstream.
//! Requests on one connection are handled strictly one after another.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http::{Method, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use super::h1_write::{write_response, WriteError, Written};
use super::{Shutdown, CLIENT_CLOSED};
use crate::body::{Body, BodyError, Frame};
use crate::error::{ErrorStyle, ProxyError};
use crate::http1::{self, BodyDecoder, BodyFraming, DecodeEvent, HeadError, RequestHead as H1Head};
use crate::proxy::{Proxy, RequestHead, Response};

/// How long a kept-alive connection may sit idle before its next request.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client may take to send a whole head once it has started.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request body may stall between two reads.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Request-body frames in flight between the socket and the upstream.
const BODY_CHANNEL: usize = 4;
const READ_SIZE: usize = 16 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;
/// Pipelined bytes we buffer while a request is in flight.
const PIPELINE_LIMIT: usize = 64 * 1024;

struct Reader<S> {
    rd: ReadHalf<S>,
    buf: BytesMut,
}

enum Next {
    Head(Box<H1Head>),
    Bad(HeadError),
    Closed,
}

/// Serves one client connection until it closes, errs, or shutdown is signalled.
pub async fn serve<S>(io: S, proxy: Arc<Proxy>, default_port: u16, mut shutdown: Shutdown)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (rd, mut wr) = tokio::io::split(io);
    let mut reader = Reader { rd, buf: BytesMut::with_capacity(8 * 1024) };
    loop {
        let max_head = proxy.snapshot.load().max_header_size;
        match next_head(&mut reader, max_head, &mut shutdown).await {
            Next::Closed => break,
            Next::Bad(err) => {
                tracing::debug!(error = %err, "rejected request head");
                let err = head_error(err);
                let resp = Response::from_error(&err, ErrorStyle::Plain);
                let _ = write_response(&mut wr, resp, &Method::GET, Version::HTTP_11, true).await;
                break;
            }
            Next::Head(head) => {
                if !exchange(&mut reader, &mut wr, &proxy, *head, default_port, &shutdown).await {
                    break;
                }
            }
        }
    }
    let _ = wr.shutdown().await;
}

/// Waits for and parses the next request head.
async fn next_head<S: AsyncRead>(reader: &mut Reader<S>, max_head: usize, shutdown: &mut Shutdown) -> Next {
    let started = Instant::now();
    loop {
        if !reader.buf.is_empty() {
            match http1::parse_request_head(&reader.buf, max_head) {
                Ok(Some((head, used))) => {
                    reader.buf.advance(used);
                    return Next::Head(Box::new(head));
                }
                Ok(None) => {}
                Err(e) => return Next::Bad(e),
            }
        }
        let idle = reader.buf.is_empty();
        let limit = if idle { IDLE_TIMEOUT } else { HEAD_TIMEOUT.saturating_sub(started.elapsed()) };
        reader.buf.reserve(READ_SIZE);
        let read = tokio::select! {
            read = tokio::time::timeout(limit, reader.rd.read_buf(&mut reader.buf)) => read,
            // Between requests a shutdown closes the connection at once.
            _ = shutdown.signalled(), if idle => return Next::Closed,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return Next::Closed,
            Ok(Ok(_)) => {}
            Err(_) if idle => return Next::Closed,
            Err(_) => return Next::Bad(HeadError::Malformed("request head not completed in time".into())),
        }
    }
}

/// Handles one request; returns whether the connection may carry another.
async fn exchange<S>(
    reader: &mut Reader<S>,
    wr: &mut WriteHalf<S>,
    proxy: &Proxy,
    h1: H1Head,
    default_port: u16,
    shutdown: &Shutdown,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let mut req = ReqFacts {
        method: h1.method.clone(),
        version: h1.version,
        framing: h1.framing,
        keep_alive: h1.keep_alive && !shutdown.is_signalled(),
    };
    let (framing, keep_alive) = (req.framing, req.keep_alive);
    let has_body = !matches!(framing, BodyFraming::Empty | BodyFraming::Length(0));
    let expect_continue = h1.expect_continue;
    let head = match neutral_head(h1, default_port) {
        Ok(head) => head,
        Err(err) => {
            req.keep_alive = false;
            return refuse(reader, wr, &req, err, ErrorStyle::Plain).await;
        }
    };
    let (log_method, log_authority, log_target) = (head.method.clone(), head.authority.clone(), head.target.clone());
    let log = |status: u16, provider: Option<usize>| {
        super::access_log(&log_method, log_authority.as_deref(), &log_target, status, provider, started)
    };
    let plan = match proxy.prepare(&head) {
        Ok(plan) => plan,
        Err(refusal) => {
            log(refusal.error.status().as_u16(), None);
            return refuse(reader, wr, &req, refusal.error, refusal.style).await;
        }
    };
    let buffered = matches!(framing, BodyFraming::Length(n) if reader.buf.len() as u64 >= n);
    if expect_continue && has_body && !buffered {
        let mut out = BytesMut::new();
        http1::encode_continue(&mut out);
        if wr.write_all(&out).await.is_err() {
            return false;
        }
    }
    let (tx, rx) = mpsc::channel(BODY_CHANNEL);
    let body = match framing {
        BodyFraming::Length(n) if buffered => Body::Full(reader.buf.split_to(n as usize).freeze()),
        _ if !has_body => Body::Empty,
        BodyFraming::Length(n) => Body::Channel { rx, len: Some(n) },
        _ => Body::Channel { rx, len: None },
    };
    let streaming = matches!(body, Body::Channel { .. });
    let body_done = AtomicBool::new(!streaming);
    let answered = AtomicBool::new(false);
    // Reads the request body on, then watches for the client hanging up.
    let client = async {
        if streaming {
            if !pump_body(reader, framing, tx).await {
                return ClientSide::Unusable;
            }
            body_done.store(true, Ordering::Relaxed);
        } else {
            drop(tx);
        }
        watch_for_close(reader).await
    };
    let respond = async {
        let (resp, close) = match proxy.forward(&plan, head, body).await {
            // A shutdown that began while this request ran closes the connection,
            // and so does an answer that came before the whole upload was read.
            Ok(resp) => (resp, !keep_alive || shutdown.is_signalled() || !body_done.load(Ordering::Relaxed)),
            // The body may be half read: only a fresh connection is safe after this.
            Err(err) => (Response::from_error(&err, plan.style), !keep_alive || streaming),
        };
        log(resp.status.as_u16(), Some(plan.provider.index));
        answered.store(true, Ordering::Relaxed);
        write_response(wr, resp, &req.method, req.version, close).await
    };
    tokio::pin!(respond);
    let written = tokio::select! {
        biased; // a finished response wins over a hang-up noticed at the same time
        written = &mut respond => written,
        side = client => match side {
            ClientSide::Unusable => respond.await,
            // Once the answer has begun, let it run out: a client that only
            // half-closed still reads it, and one that left makes the write fail.
            ClientSide::Gone if answered.load(Ordering::Relaxed) => {
                let _ = respond.await;
                return false;
            }
            // Still waiting on the upstream: drop `respond`, which cancels the
            // upstream request (as nginx does by default, the client's EOF counts
            // as leaving, half-close included).
            ClientSide::Gone => {
                log(CLIENT_CLOSED, Some(plan.provider.index));
                return false;
            }
        },
    };
    match written {
        Ok(Written::Complete) => body_done.load(Ordering::Relaxed),
        Ok(Written::CompleteClose) => false,
        Err(WriteError::Client(e)) => {
            tracing::debug!(error = %e, "client went away mid-response");
            false
        }
        Err(WriteError::Upstream(e)) => {
            tracing::warn!(error = %e, "upstream body broke mid-response; closing the client connection");
            false
        }
    }
}

/// How the client side of an exchange ended before the response did.
enum ClientSide {
    /// The request body broke or was abandoned: answer, then close.
    Unusable,
    /// The client closed its connection.
    Gone,
}

/// Resolves when the client closes the connection (EOF or error). Bytes it
/// pipelines meanwhile stay buffered for the next request; past a bound we
/// stop reading, and never resolve.
///
/// # Cancel safety
/// Cancel safe: `read_buf` loses nothing when dropped.
async fn watch_for_close<S: AsyncRead>(reader: &mut Reader<S>) -> ClientSide {
    while reader.buf.len() < PIPELINE_LIMIT {
        reader.buf.reserve(READ_SIZE);
        match reader.rd.read_buf(&mut reader.buf).await {
            Ok(0) | Err(_) => return ClientSide::Gone,
            Ok(_) => {}
        }
    }
    std::future::pending().await
}

/// What the response side needs to know of the request it answers.
struct ReqFacts {
    method: Method,
    version: Version,
    framing: BodyFraming,
    keep_alive: bool,
}

/// Answers a request the proxy will not forward. The connection stays usable
/// only when the refused body was already fully buffered (then it is skipped).
async fn refuse<S>(
    reader: &mut Reader<S>,
    wr: &mut WriteHalf<S>,
    req: &ReqFacts,
    err: ProxyError,
    style: ErrorStyle,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let skipped = match req.framing {
        BodyFraming::Empty => true,
        BodyFraming::Length(n) if reader.buf.len() as u64 >= n => {
            reader.buf.advance(n as usize);
            true
        }
        _ => false,
    };
    let close = !(req.keep_alive && skipped);
    let resp = Response::from_error(&err, style);
    matches!(write_response(wr, resp, &req.method, req.version, close).await, Ok(Written::Complete))
}

/// Reads the request body off the socket into the channel. Returns true when
/// the body was read to its end (so the next request can follow).
async fn pump_body<S: AsyncRead>(
    reader: &mut Reader<S>,
    framing: BodyFraming,
    tx: mpsc::Sender<Result<Frame, BodyError>>,
) -> bool {
    let mut decoder = BodyDecoder::new(framing, MAX_TRAILERS);
    loop {
        let frame = match decoder.decode(&mut reader.buf) {
            Ok(DecodeEvent::Data(data)) => Frame::Data(data),
            Ok(DecodeEvent::Trailers(trailers)) => Frame::Trailers(trailers),
            Ok(DecodeEvent::End) => return true,
            Ok(DecodeEvent::NeedMore) => {
                reader.buf.reserve(READ_SIZE);
                let read = tokio::time::timeout(BODY_READ_TIMEOUT, reader.rd.read_buf(&mut reader.buf)).await;
                let failure = match read {
                    Ok(Ok(0)) => BodyError::Incomplete,
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => BodyError::Io(e),
                    Err(_) => BodyError::Malformed("request body stalled".into()),
                };
                let _ = tx.send(Err(failure)).await;
                return false;
            }
            Err(e) => {
                let _ = tx.send(Err(BodyError::Malformed(e.to_string()))).await;
                return false;
            }
        };
        if tx.send(Ok(frame)).await.is_err() {
            return false; // nobody wants the rest: the connection cannot be reused
        }
    }
}

/// The neutral head: absolute-form targets carry the authority (RFC 9112 §3.2.2),
/// origin-form ones take it from `Host`.
fn neutral_head(h1: H1Head, default_port: u16) -> Result<RequestHead, ProxyError> {
    let H1Head { method, target, headers, .. } = h1;
    if method == Method::CONNECT {
        return Err(ProxyError::Method("CONNECT tunnels are not enabled on this proxy".into()));
    }
    let host = match headers.get(http::header::HOST) {
        Some(v) => Some(v.to_str().map_err(|_| ProxyError::BadRequest("Host header is not valid".into()))?.to_string()),
        None => None,
    };
    let (authority, target) = if target.starts_with('/') {
        (host, target)
    } else {
        let uri: Uri = target.parse().map_err(|_| ProxyError::BadRequest("request target is not valid".into()))?;
        match (uri.scheme_str(), uri.authority()) {
            (Some("http" | "https"), Some(authority)) => {
                // Credentials in the authority would end up in logs and routing keys.
                if authority.as_str().contains('@') {
                    return Err(ProxyError::BadRequest("user information in the request target is not allowed".into()));
                }
                let path = uri.path_and_query().map_or("", |p| p.as_str());
                let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
                (Some(authority.as_str().to_string()), path)
            }
            _ => return Err(ProxyError::BadRequest("request target must be a path or an http URL".into())),
        }
    };
    Ok(RequestHead { method, authority, target, headers, default_port })
}

fn head_error(err: HeadError) -> ProxyError {
    match err {
        HeadError::TooLarge => ProxyError::HeadersTooLarge,
        HeadError::UriTooLong => ProxyError::UriTooLong,
        HeadError::Expectation => ProxyError::Expectation,
        HeadError::UnsupportedTransferCoding => {
            ProxyError::NotImplemented("only the chunked transfer-coding is supported".into())
        }
        HeadError::Malformed(why) => ProxyError::BadRequest(format!("malformed request: {why}")),
    }
}
