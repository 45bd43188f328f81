//! The HTTP/2 client-connection driver on the `h2` crate: every stream becomes
//! a neutral [`RequestHead`] + [`Body`] and runs through the same pipeline as
//! HTTP/1.1, in a task of its own, so streams are independent of each other.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use http::header::{CONTENT_LENGTH, COOKIE, HOST};
use http::{HeaderMap, HeaderValue, Method, Request};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Shutdown;
use crate::body::h2::send_body;
use crate::body::{Body, CopyError, H2Body, SendStall};
use crate::http1::{self, BodyFraming};
use crate::message::{RequestHead, Response};
use crate::proxy;
use crate::state::{App, Limits};

/// Per-stream and per-connection receive windows: enough for fast uploads,
/// small enough that a stalled upstream pins little memory per stream.
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
const CLOSING_POLL: Duration = Duration::from_millis(100);
const CLOSING_LINGER: Duration = Duration::from_secs(1);
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
const SEND_BUFFER: usize = 256 * 1024;

/// Who is at the other end of a connection: its address, and its TCP socket
/// (to ask the kernel what it acknowledged; see `SendStall`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Client {
    pub peer: Option<SocketAddr>,
    pub socket: Option<std::os::fd::RawFd>,
}

pub async fn serve<S>(io: S, app: Arc<App>, client: Client, mut shutdown: Shutdown)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let limits = app.snapshot.load().limits;
    let mut conn = match tokio::time::timeout(limits.handshake_timeout, handshake(io, &limits)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return tracing::debug!(error = %e, "HTTP/2 handshake failed"),
        Err(_) => return tracing::debug!("HTTP/2 handshake timed out"),
    };
    let _open = crate::metrics::metrics().connection("http2");
    let streams = Arc::new(Streams::default());
    let mut closing = false;
    // Set while no stream is open: the connection closes `client_idle_timeout` later.
    let mut idle_since = Some(Instant::now());
    let mut quiet_since: Option<Instant> = None;
    loop {
        let idle_at = idle_since.unwrap_or_else(Instant::now) + limits.client_idle_timeout;
        let next = tokio::select! {
            next = conn.accept() => next,
            _ = shutdown.signalled(), if !closing => {
                // GOAWAY: no new streams, the ones in flight finish.
                conn.graceful_shutdown();
                closing = true;
                continue;
            }
            // GOAWAY is followed by a PING whose answer an idle client may never
            // send: once no stream is left (and frames had time to flush), close.
            _ = tokio::time::sleep(CLOSING_POLL), if closing => {
                if streams.open() > 0 {
                    quiet_since = None;
                } else if quiet_since.get_or_insert_with(Instant::now).elapsed() >= CLOSING_LINGER {
                    break;
                }
                continue;
            }
            _ = streams.last_ended.notified(), if !closing => {
                if streams.open() == 0 {
                    idle_since = Some(Instant::now());
                }
                continue;
            }
            _ = tokio::time::sleep_until(idle_at), if !closing && idle_since.is_some() => {
                // Idle for the whole timeout: close, as HTTP/1.1 does.
                conn.graceful_shutdown();
                closing = true;
                continue;
            }
        };
        match next {
            Some(Ok((request, respond))) => {
                idle_since = None;
                let guard = OpenStream::new(&streams);
                let app = app.clone();
                tokio::spawn(async move {
                    handle_stream(request, respond, app, client).await;
                    drop(guard);
                });
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "HTTP/2 connection error");
                break;
            }
            None => break,
        }
    }
}

fn handshake<S>(io: S, limits: &Limits) -> h2::server::Handshake<S, Bytes>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    h2::server::Builder::new()
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(limits.h2_max_header_list_size)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        // Rapid-reset defences (CVE-2023-44487), stated rather than implied: a
        // client that resets many streams before we accept them, or provokes
        // many stream errors, gets GOAWAY.
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        // Bound what a slow reader can make us buffer per stream.
        .max_send_buffer_size(SEND_BUFFER)
        // RFC 8441: WebSockets over HTTP/2 (extended CONNECT).
        .enable_connect_protocol()
        .handshake::<_, Bytes>(io)
}

/// The streams of one connection still running, and a signal when the last ends.
#[derive(Default)]
struct Streams {
    open: AtomicUsize,
    last_ended: Notify,
}

impl Streams {
    fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// Counts a running stream for as long as it lives.
struct OpenStream(Arc<Streams>);

impl OpenStream {
    fn new(streams: &Arc<Streams>) -> Self {
        streams.open.fetch_add(1, Ordering::Relaxed);
        OpenStream(streams.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            // A stored permit if the driver is busy: it sees it on its next turn.
            self.0.last_ended.notify_one();
        }
    }
}

async fn handle_stream(
    request: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    app: Arc<App>,
    client: Client,
) {
    let peer = client.peer;
    let (mut parts, recv) = request.into_parts();
    if parts.method == Method::CONNECT {
        let protocol = parts.extensions.remove::<h2::ext::Protocol>();
        return super::h2_tunnel::serve(parts, protocol, recv, respond, app, peer).await;
    }
    let head = neutral_head(parts.method, &parts.uri, parts.headers, peer);
    let is_head = head.method == Method::HEAD;
    // A request whose stream already ended has nothing to stream: an empty
    // body keeps it eligible for a replay on a fresh upstream connection.
    let body = if recv.is_end_stream() {
        Body::Empty
    } else {
        let stall = app.snapshot.load().limits.client_body_timeout;
        Body::H2(Box::new(H2Body::new(recv, &head.headers).with_idle(stall)))
    };
    let response = tokio::select! {
        response = proxy::handle(&app, head, body) => response,
        // The client reset the stream (cancelled, or a rapid-reset flood): drop
        // the handler, which stops the upstream request and logs 499.
        _ = poll_fn(|cx| respond.poll_reset(cx)) => return,
    };
    let stall = SendStall { after: app.snapshot.load().limits.client_send_timeout, socket: client.socket };
    if let Err(e) = send_response(&mut respond, response, is_head, stall).await {
        tracing::debug!(error = %e, "HTTP/2 response not completed");
    }
}

/// The neutral head: `:authority` is the routing host, `Host` when absent
/// (RFC 9113 §8.3.1); split `cookie` fields are joined for HTTP/1.1 (§8.2.3).
pub(super) fn neutral_head(
    method: Method,
    uri: &http::Uri,
    mut headers: HeaderMap,
    peer: Option<SocketAddr>,
) -> RequestHead {
    let authority = match uri.authority() {
        Some(a) => Some(a.as_str().to_string()),
        None => headers.get(HOST).and_then(|v| v.to_str().ok()).map(String::from),
    };
    if headers.get_all(COOKIE).iter().count() > 1 {
        let joined: Vec<&[u8]> = headers.get_all(COOKIE).iter().map(|v| v.as_bytes()).collect();
        if let Ok(value) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
            headers.insert(COOKIE, value);
        }
    }
    let target = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    RequestHead { method, authority, target, headers, default_port: 443, peer, protocol: "HTTP/2" }
}

/// Sends the head, then the body; a body that breaks after the head left
/// resets the stream, so the client never takes a cut body for a whole one.
pub(super) async fn send_response(
    respond: &mut SendResponse<Bytes>,
    resp: Response,
    is_head: bool,
    stall: SendStall,
) -> Result<(), CopyError> {
    let Response { status, mut headers, body } = resp;
    let method = if is_head { Method::HEAD } else { Method::GET };
    let framing = http1::response_body_framing(&method, status, body.exact_len(), true);
    match framing {
        BodyFraming::Length(len) => {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
        BodyFraming::Chunked | BodyFraming::CloseDelimited => {
            headers.remove(CONTENT_LENGTH);
        }
        BodyFraming::Empty => {}
    }
    // A zero-length body still gets read to its end, so its upstream
    // connection can go back to the pool.
    let end_now = framing == BodyFraming::Empty || matches!(body, Body::Empty);
    let mut head = http::Response::new(());
    *head.status_mut() = status;
    *head.headers_mut() = headers;
    let mut send = respond.send_response(head, end_now).map_err(|e| CopyError::Sink(std::io::Error::other(e)))?;
    if end_now {
        return Ok(());
    }
    let result = send_body(&mut send, body, Some(stall)).await;
    match &result {
        Err(CopyError::Source(e)) => {
            tracing::warn!(error = %e, "upstream body broke mid-response; resetting the stream");
            send.send_reset(h2::Reason::INTERNAL_ERROR);
        }
        // A client that stopped taking the answer (or already reset it).
        Err(CopyError::Sink(_)) => send.send_reset(h2::Reason::CANCEL),
        Ok(()) => {}
    }
    result
}
