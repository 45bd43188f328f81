//! The HTTP/1.1 client-connection driver: read heads through a buffer, turn
//! each request into a neutral [`RequestHead`] + [`Body`], hand it to the
//! proxy handler, and write the response while the request body streams on
//! to the upstream. Requests on one connection are handled strictly one
//! after another.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::{Method, Uri, Version};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::h1_write::{write_response, Written};
use super::halves::{ReadSide, Split};
use super::tunnel;
use super::Shutdown;
use crate::body::{Body, BodyError, CopyError, Frame, FrameSender, SendStall};
use crate::error::{ErrorStyle, ProxyError};
use crate::http1::{self, BodyDecoder, BodyFraming, DecodeEvent, HeadError, RequestHead as H1Head, MAX_TRAILERS};
use crate::message::{RequestHead, Response};
use crate::proxy::log::AccessLog;
use crate::proxy::{self, Admitted};
use crate::state::{App, Limits};

/// Request-body frames in flight between the socket and the upstream.
const BODY_CHANNEL: usize = 4;
const READ_SIZE: usize = 16 * 1024;
/// Room for a request head (and a small body with it) in one read; larger
/// heads take more reads. Kept small: every waiting connection holds it.
const HEAD_READ: usize = 4 * 1024;
/// How long a connection waits for its next request with a full-size buffer.
const IDLE_SHRINK: Duration = Duration::from_secs(1);
/// What an idle connection reserves to read with after that.
const IDLE_READ: usize = 1024;
/// How long an idle connection stays open once shutdown began, for a
/// request already on its way: it is answered (with `Connection: close`)
/// instead of being cut off by the close. Only a request sent exactly as
/// this ends can still meet a closed connection, as with any idle close.
const DRAIN_LINGER: Duration = Duration::from_secs(1);
/// Pipelined bytes we buffer while a request is in flight.
const PIPELINE_LIMIT: usize = 64 * 1024;

struct Reader<R> {
    rd: R,
    buf: BytesMut,
}

/// Both halves of a client connection.
struct Conn<S: Split> {
    reader: Reader<S::Read>,
    wr: S::Write,
    /// The TCP socket, for what the client acknowledged (`SendStall`).
    socket: Option<std::os::fd::RawFd>,
}

/// A request body about to stream: what the handler reads, and the sending
/// end the driver fills from the socket (`None` when the body is in memory).
struct Upload {
    body: Body,
    tx: Option<FrameSender>,
}

enum Next {
    Head(Box<H1Head>),
    Bad(HeadError),
    Closed,
}

/// Serves one client connection until it closes, errs, or shutdown is signalled.
pub async fn serve<S: Split>(
    io: S,
    app: Arc<App>,
    default_port: u16,
    peer: Option<std::net::SocketAddr>,
    mut shutdown: Shutdown,
) {
    let _open = crate::metrics::metrics().connection("http1");
    let socket = io.tcp_fd();
    let (rd, wr) = io.split_io();
    let mut conn = Conn::<S> { reader: Reader { rd, buf: BytesMut::new() }, wr, socket };
    loop {
        let limits = app.snapshot.load().limits;
        match next_head(&mut conn.reader, &limits, &mut shutdown).await {
            Next::Closed => break,
            Next::Bad(err) => {
                tracing::debug!(error = %err, "rejected request head");
                let resp = ProxyError::from(err).into_response(ErrorStyle::Plain);
                crate::proxy::log::rejected(resp.status.as_u16(), peer);
                let stall = SendStall { after: limits.client_send_timeout, socket: conn.socket };
                // Boxed: a cold path, which inline would size every
                // connection's task for a response write.
                let _ = Box::pin(write_response(&mut conn.wr, resp, &Method::GET, Version::HTTP_11, true, stall)).await;
                break;
            }
            Next::Head(head) => {
                let mut req = ReqFacts::new(&head, &shutdown, &limits, default_port, peer);
                req.socket = conn.socket;
                // Boxed: a request's state is large and lives only while it
                // runs; inline, every idle connection would carry it.
                match Box::pin(exchange(&mut conn, &app, *head, req, &shutdown)).await {
                    After::Next(true) => {}
                    After::Next(false) => break,
                    // Boxed on its own, once the request's state is gone: a
                    // tunnel may stay open for hours.
                    After::Tunnel(upstream, log) => {
                        Box::pin(tunnel(&mut conn, *upstream, log, &limits)).await;
                        break;
                    }
                }
            }
        }
    }
    let _ = conn.wr.shutdown().await;
}

/// Waits for and parses the next request head.
async fn next_head<R: ReadSide>(reader: &mut Reader<R>, limits: &Limits, shutdown: &mut Shutdown) -> Next {
    let started = Instant::now();
    // When the head's first byte came: its clock starts there, not at idle.
    let mut head_started: Option<Instant> = None;
    // Set once shutdown began: an idle connection closes then, a head on its
    // way gets one linger more.
    let mut closing_at: Option<Instant> = None;
    loop {
        if !reader.buf.is_empty() {
            match http1::take_request_head(&mut reader.buf, limits.max_header_size) {
                Ok(Some(head)) => return Next::Head(Box::new(head)),
                Ok(None) => {}
                Err(e) => return Next::Bad(e),
            }
        }
        let idle = reader.buf.is_empty();
        let limit = if idle {
            limits.client_idle_timeout.saturating_sub(started.elapsed())
        } else {
            let head_started = *head_started.get_or_insert_with(Instant::now);
            limits.client_header_timeout.saturating_sub(head_started.elapsed())
        };
        // A connection idle for a while gives its read buffer back (nginx does
        // the same); over plain TCP it then waits with none at all, so
        // thousands of idle keep-alive clients cost little. A busy one keeps
        // its buffer and reads in one go.
        let shrink = idle && started.elapsed() >= IDLE_SHRINK;
        if shrink && reader.buf.capacity() > 0 {
            reader.buf = BytesMut::new();
        }
        let mut wait = if idle && !shrink { limit.min(IDLE_SHRINK) } else { limit };
        if let Some(at) = closing_at {
            let at = if idle { at } else { at + DRAIN_LINGER };
            wait = wait.min(at.saturating_duration_since(Instant::now()));
        }
        let room = if shrink { IDLE_READ } else { HEAD_READ };
        let read = tokio::select! {
            read = tokio::time::timeout(wait, reader.rd.read_into(&mut reader.buf, room)) => read,
            _ = shutdown.signalled(), if closing_at.is_none() => {
                closing_at = Some(Instant::now() + DRAIN_LINGER);
                continue;
            }
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return Next::Closed,
            Ok(Ok(_)) => {}
            Err(_) if idle && closing_at.is_some_and(|at| at <= Instant::now()) => return Next::Closed,
            Err(_) if idle && wait < limit => {} // time to shrink the buffer
            Err(_) if idle => return Next::Closed,
            Err(_) => return Next::Bad(HeadError::Malformed("request head not completed in time".into())),
        }
    }
}

/// What the response side needs to know of the request it answers.
struct ReqFacts {
    method: Method,
    version: Version,
    framing: BodyFraming,
    keep_alive: bool,
    expect_continue: bool,
    default_port: u16,
    peer: Option<std::net::SocketAddr>,
    limits: Limits,
    socket: Option<std::os::fd::RawFd>,
}

impl ReqFacts {
    fn stall(&self) -> SendStall {
        SendStall { after: self.limits.client_send_timeout, socket: self.socket }
    }

    fn new(
        h1: &H1Head,
        shutdown: &Shutdown,
        limits: &Limits,
        default_port: u16,
        peer: Option<std::net::SocketAddr>,
    ) -> Self {
        ReqFacts {
            method: h1.method.clone(),
            version: h1.version,
            framing: h1.framing,
            // After CONNECT anything more on the connection would be tunnel bytes.
            keep_alive: h1.keep_alive && !shutdown.is_signalled() && h1.method != Method::CONNECT,
            expect_continue: h1.expect_continue,
            default_port,
            peer,
            limits: *limits,
            socket: None,
        }
    }

    fn has_body(&self) -> bool {
        !matches!(self.framing, BodyFraming::Empty | BodyFraming::Length(0))
    }
}

/// Handles one request: what becomes of the connection after it.
async fn exchange<S: Split>(
    conn: &mut Conn<S>,
    app: &App,
    h1: H1Head,
    mut req: ReqFacts,
    shutdown: &Shutdown,
) -> After {
    let head = match neutral_head(h1, req.default_port, req.peer) {
        Ok(head) => head,
        Err(err) => {
            req.keep_alive = false;
            let response = err.into_response(ErrorStyle::Plain);
            crate::proxy::log::rejected(response.status.as_u16(), req.peer);
            return After::Next(refuse(conn, &req, response).await);
        }
    };
    let admitted = match proxy::admit(app, head) {
        Ok(admitted) => admitted,
        Err(refusal) => return After::Next(refuse(conn, &req, *refusal).await),
    };
    let buffered = matches!(req.framing, BodyFraming::Length(n) if conn.reader.buf.len() as u64 >= n);
    if req.expect_continue && req.has_body() && !buffered {
        let mut out = BytesMut::new();
        http1::encode_continue(&mut out);
        if conn.wr.write_all(&out).await.is_err() {
            return After::Next(false);
        }
    }
    let (body, tx) = match req.framing {
        BodyFraming::Length(n) if buffered => (Body::Full(conn.reader.buf.split_to(n as usize).freeze()), None),
        _ if !req.has_body() => (Body::Empty, None),
        BodyFraming::Length(n) => split(Body::channel(BODY_CHANNEL, Some(n))),
        _ => split(Body::channel(BODY_CHANNEL, None)),
    };
    relay(conn, app, admitted, Upload { body, tx }, &req, shutdown).await
}

/// Carries the tunnel a `101` or a CONNECT's `200` opened, until it ends.
async fn tunnel<S: Split>(
    conn: &mut Conn<S>,
    upstream: crate::net::Conn,
    mut log: Option<Box<AccessLog>>,
    limits: &Limits,
) {
    let leftover = std::mem::take(&mut conn.reader.buf);
    let idle = limits.tunnel_idle_timeout;
    // The log holds the counters: if this is dropped (shutdown), its line still has them.
    let carried = log.as_mut().map(|log| log.tunnel_counters()).unwrap_or_default();
    // Over TCP the read side sees the client go: nothing else to watch.
    let gone = std::future::pending();
    tunnel::bridge(&mut conn.reader.rd, leftover, &mut conn.wr, upstream, idle, &carried, gone).await;
    drop(log);
}

fn split((tx, body): (FrameSender, Body)) -> (Body, Option<FrameSender>) {
    (body, Some(tx))
}

/// What became of a connection after an exchange.
enum After {
    /// Whether it may carry another request.
    Next(bool),
    /// It carries a tunnel to this upstream connection from now on.
    Tunnel(Box<crate::net::Conn>, Option<Box<AccessLog>>),
}

/// Runs the upstream exchange and writes its answer while the request body is
/// pumped in and the client watched for hanging up.
async fn relay<S: Split>(
    conn: &mut Conn<S>,
    app: &App,
    admitted: Admitted,
    upload: Upload,
    req: &ReqFacts,
    shutdown: &Shutdown,
) -> After {
    let Conn { reader, wr, .. } = conn;
    let Upload { body, tx } = upload;
    let streaming = tx.is_some();
    let body_done = AtomicBool::new(!streaming);
    let answered = AtomicBool::new(false);
    let client = async {
        if let Some(tx) = tx {
            if !pump_body(reader, req.framing, tx, req.limits.client_body_timeout).await {
                return ClientSide::Unusable;
            }
            body_done.store(true, Ordering::Relaxed);
        }
        watch_for_close(reader).await
    };
    let respond = async {
        let reply = admitted.respond(app, body).await;
        // A shutdown that began while this request ran closes the connection, and
        // so does an answer that came before the whole upload was read, or an
        // error that may have left the body half read.
        let close = !req.keep_alive
            || shutdown.is_signalled()
            || !body_done.load(Ordering::Relaxed)
            || (!reply.from_upstream && streaming);
        answered.store(true, Ordering::Relaxed);
        let stall = req.stall();
        (write_response(wr, reply.response, &req.method, req.version, close, stall).await, reply.tunnel_log)
    };
    tokio::pin!(respond);
    let (written, tunnel_log) = tokio::select! {
        biased; // a finished response wins over a hang-up noticed at the same time
        written = &mut respond => written,
        side = client => match side {
            ClientSide::Unusable => respond.await,
            // Once the answer has begun, let it run out: a client that only
            // half-closed still reads it, and one that left makes the write fail.
            ClientSide::Gone if answered.load(Ordering::Relaxed) => {
                let _ = respond.await;
                return After::Next(false);
            }
            // Still waiting on the upstream: dropping `respond` cancels the upstream
            // request and logs 499 (as nginx does by default, the client's EOF
            // counts as leaving, half-close included).
            ClientSide::Gone => return After::Next(false),
        },
    };
    After::Next(match written {
        Ok(Written::Complete) => body_done.load(Ordering::Relaxed),
        Ok(Written::CompleteClose) => false,
        Ok(Written::Upgraded(upstream)) => return After::Tunnel(upstream, tunnel_log.map(Box::new)),
        Err(CopyError::Sink(e)) => {
            tracing::debug!(error = %e, "client went away mid-response");
            false
        }
        Err(CopyError::Source(e)) => {
            tracing::warn!(error = %e, "upstream body broke mid-response; closing the client connection");
            false
        }
    })
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
async fn watch_for_close<R: ReadSide>(reader: &mut Reader<R>) -> ClientSide {
    // A long answer (a stream) gives the read buffer back after a while, as
    // an idle connection does: every open stream would hold it, and what a
    // client sends meanwhile is rare (a pipelined request) or nothing at all.
    if reader.buf.is_empty() {
        match tokio::time::timeout(IDLE_SHRINK, reader.rd.read_into(&mut reader.buf, IDLE_READ)).await {
            Ok(Ok(0) | Err(_)) => return ClientSide::Gone,
            Ok(Ok(_)) => {}
            Err(_) => reader.buf = BytesMut::new(),
        }
    }
    while reader.buf.len() < PIPELINE_LIMIT {
        match reader.rd.read_into(&mut reader.buf, IDLE_READ).await {
            Ok(0) | Err(_) => return ClientSide::Gone,
            Ok(_) => {}
        }
    }
    std::future::pending().await
}

/// Answers a request the proxy will not forward. The connection stays usable
/// only when the refused body was already fully buffered (then it is skipped).
async fn refuse<S: Split>(conn: &mut Conn<S>, req: &ReqFacts, resp: Response) -> bool {
    let skipped = match req.framing {
        BodyFraming::Empty => true,
        BodyFraming::Length(n) if conn.reader.buf.len() as u64 >= n => {
            conn.reader.buf.advance(n as usize);
            true
        }
        _ => false,
    };
    let close = !(req.keep_alive && skipped);
    let written = write_response(&mut conn.wr, resp, &req.method, req.version, close, req.stall());
    matches!(written.await, Ok(Written::Complete))
}

/// Reads the request body off the socket into the channel. Returns true when
/// the body was read to its end (so the next request can follow).
async fn pump_body<R: ReadSide>(
    reader: &mut Reader<R>,
    framing: BodyFraming,
    tx: FrameSender,
    stall: std::time::Duration,
) -> bool {
    let mut decoder = BodyDecoder::new(framing, MAX_TRAILERS);
    loop {
        let frame = match decoder.decode(&mut reader.buf) {
            Ok(DecodeEvent::Data(data)) => Frame::Data(data),
            Ok(DecodeEvent::Trailers(trailers)) => Frame::Trailers(trailers),
            Ok(DecodeEvent::End) => return tx.send(Ok(None)).await.is_ok(),
            Ok(DecodeEvent::NeedMore) => {
                let read = tokio::time::timeout(stall, reader.rd.read_into(&mut reader.buf, READ_SIZE)).await;
                let failure = match read {
                    Ok(Ok(0)) => BodyError::Incomplete,
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => BodyError::Io(e),
                    Err(_) => BodyError::Stalled,
                };
                let _ = tx.send(Err(failure)).await;
                return false;
            }
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return false;
            }
        };
        if tx.send(Ok(Some(frame))).await.is_err() {
            return false; // nobody wants the rest: the connection cannot be reused
        }
    }
}

/// The neutral head: absolute-form targets carry the authority (RFC 9112 §3.2.2),
/// origin-form ones take it from `Host`, and CONNECT's authority-form target is
/// its authority.
fn neutral_head(h1: H1Head, default_port: u16, peer: Option<std::net::SocketAddr>) -> Result<RequestHead, ProxyError> {
    let H1Head { method, target, headers, version, .. } = h1;
    let protocol = if version == Version::HTTP_10 { "HTTP/1.0" } else { "HTTP/1.1" };
    if method == Method::CONNECT {
        // Credentials in the authority would end up in logs.
        if target.contains('@') {
            return Err(ProxyError::BadRequest("user information in the request target is not allowed".into()));
        }
        let authority = Some(target);
        return Ok(RequestHead { method, authority, target: String::new(), headers, default_port, peer, protocol });
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
    Ok(RequestHead { method, authority, target, headers, default_port, peer, protocol })
}
