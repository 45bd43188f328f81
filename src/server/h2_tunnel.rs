//! Tunnels over HTTP/2 streams: a CONNECT (RFC 9113 §8.5) and a WebSocket
//! opened by extended CONNECT (RFC 8441, `:protocol: websocket`). Both are
//! admitted by the one request handler like any request. A WebSocket becomes
//! the HTTP/1.1 Upgrade the upstream understands (its own key, version 13);
//! the upstream's `101` becomes the `200` an HTTP/2 client expects. Then the
//! stream's DATA frames and the upstream connection are bridged, with flow
//! control: capacity is released only as frames are taken, and nothing is
//! sent beyond the window the client grants.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use base64::Engine;
use bytes::{Buf, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::header::{CONTENT_LENGTH, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
use http::{HeaderValue, Method, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::h2::{neutral_head, send_response};
use super::halves::ReadSide;
use super::tunnel;
use crate::body::Body;
use crate::error::{ErrorStyle, ProxyError};
use crate::message::{RequestHead, Response};
use crate::proxy::{self, Reply};
use crate::state::App;
use crate::upstream::UpstreamError;

/// Largest piece sent in one DATA frame call.
const PIECE: usize = 16 * 1024;

/// Serves a CONNECT stream: `protocol` is its `:protocol`, if any.
pub async fn serve(
    parts: http::request::Parts,
    protocol: Option<h2::ext::Protocol>,
    recv: RecvStream,
    mut respond: SendResponse<Bytes>,
    app: Arc<App>,
    peer: Option<std::net::SocketAddr>,
) {
    let mut head = neutral_head(parts.method, &parts.uri, parts.headers, peer);
    let websocket = match protocol.as_ref().map(|p| p.as_str()) {
        None => false,
        Some(p) if p.eq_ignore_ascii_case("websocket") => true,
        Some(_) => {
            let unknown =
                ProxyError::NotImplemented("only the websocket protocol is supported for extended CONNECT".into());
            return finish(&app, &mut respond, unknown.into_response(ErrorStyle::Plain)).await;
        }
    };
    let accept = websocket.then(|| as_upgrade(&mut head));
    let admitted = match proxy::admit(&app, head) {
        Ok(admitted) => admitted,
        Err(refusal) => return finish(&app, &mut respond, *refusal).await,
    };
    let reply = tokio::select! {
        reply = admitted.respond(&app, Body::Empty) => reply,
        // Given up before the upstream answered: the handler is dropped (499).
        _ = poll_fn(|cx| respond.poll_reset(cx)) => return,
    };
    let Reply { response: Response { status, mut headers, body }, mut tunnel_log, .. } = reply;
    let Body::Upgraded(upstream) = body else {
        // A refusal (401, 426, an error of ours): an ordinary answer.
        return finish(&app, &mut respond, Response { status, headers, body }).await;
    };
    // We made the key, so we check the answer to it (RFC 6455 §4.1).
    if accept.is_some_and(|accept| headers.get(SEC_WEBSOCKET_ACCEPT).is_none_or(|v| v.as_bytes() != accept.as_bytes()))
    {
        let error = ProxyError::Upstream(UpstreamError::BadResponse("a wrong Sec-WebSocket-Accept in the 101"));
        let response = error.into_response(ErrorStyle::Plain);
        if let Some(log) = tunnel_log.as_mut() {
            log.set_status(response.status.as_u16());
        }
        return finish(&app, &mut respond, response).await;
    }
    crate::headers::strip_hop_by_hop(&mut headers);
    headers.remove(UPGRADE);
    headers.remove(SEC_WEBSOCKET_ACCEPT);
    // No body framing on a 2xx to CONNECT (RFC 9110 §8.6).
    headers.remove(CONTENT_LENGTH);
    if let Some(log) = tunnel_log.as_mut() {
        log.set_status(StatusCode::OK.as_u16());
    }
    let mut head = http::Response::new(());
    *head.status_mut() = StatusCode::OK;
    *head.headers_mut() = headers;
    let send = match respond.send_response(head, false) {
        Ok(send) => send,
        Err(e) => return tracing::debug!(error = %e, "HTTP/2 tunnel not opened"),
    };
    let idle = app.snapshot.load().limits.tunnel_idle_timeout;
    let carried = tunnel_log.as_mut().map(proxy::log::AccessLog::tunnel_counters).unwrap_or_default();
    // Shared with a watch for a reset: after the client's END_STREAM no read
    // would see one, and a reset stream must not keep its upstream connection.
    let send = Arc::new(Mutex::new(send));
    let (mut rd, mut wr) = (StreamReader::new(recv), StreamWriter { send: send.clone(), ended: false });
    let gone = poll_fn(|cx| lock(&send).poll_reset(cx).map(drop));
    tunnel::bridge(&mut rd, BytesMut::new(), &mut wr, *upstream, idle, &carried, gone).await;
    if !wr.ended {
        // Ended by an error or the idle timeout: the client must not take it for a clean end.
        lock(&send).send_reset(h2::Reason::CANCEL);
    }
    drop(tunnel_log);
}

/// The stream's sending half. Only this stream's task ever takes the lock,
/// so it is never contended; a panic while holding it cannot leave the
/// stream inconsistent in a way that matters to the ending tunnel.
fn lock(send: &Mutex<SendStream<Bytes>>) -> std::sync::MutexGuard<'_, SendStream<Bytes>> {
    send.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Answers a tunnel that did not open (a refusal or an upstream's error).
async fn finish(app: &App, respond: &mut SendResponse<Bytes>, response: Response) {
    // A refusal or an error answer is small: the window a client starts
    // with takes it, so bytes written are the only progress to watch.
    let stall = crate::body::SendStall { after: app.snapshot.load().limits.client_send_timeout, socket: None };
    if let Err(e) = send_response(respond, response, false, stall).await {
        tracing::debug!(error = %e, "HTTP/2 response not completed");
    }
}

/// Turns an RFC 8441 WebSocket request into the HTTP/1.1 opening handshake
/// (RFC 6455 §4.1) the upstream will see: GET, the upgrade fields, a fresh
/// key. The client's `Sec-WebSocket-Protocol` and `-Extensions` go as sent.
/// Returns the `Sec-WebSocket-Accept` the upstream must answer with.
fn as_upgrade(head: &mut RequestHead) -> String {
    head.method = Method::GET;
    let headers = &mut head.headers;
    crate::headers::restore_upgrade(headers);
    let nonce: [u8; 16] = rand::random();
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    if let Ok(key) = HeaderValue::from_str(&key) {
        headers.insert(SEC_WEBSOCKET_KEY, key);
    }
    if !headers.contains_key(SEC_WEBSOCKET_VERSION) {
        headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    }
    accept_for(&key)
}

/// RFC 6455 §4.2.2: base64 of the SHA-1 of the key and the protocol's GUID.
fn accept_for(key: &str) -> String {
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut context = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    context.update(key.as_bytes());
    context.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(context.finish())
}

/// The client's DATA frames as a byte stream.
struct StreamReader {
    recv: RecvStream,
    /// The rest of the frame last taken.
    pending: Bytes,
}

impl StreamReader {
    fn new(recv: RecvStream) -> Self {
        StreamReader { recv, pending: Bytes::new() }
    }
}

impl AsyncRead for StreamReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(out.remaining());
                out.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The frame is ours now: the client may send the next one.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.pending = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl ReadSide for StreamReader {
    async fn read_into(&mut self, buf: &mut BytesMut, room: usize) -> io::Result<usize> {
        use tokio::io::AsyncReadExt;
        buf.reserve(room);
        self.read_buf(buf).await
    }
}

/// DATA frames to the client, as the window allows.
struct StreamWriter {
    send: Arc<Mutex<SendStream<Bytes>>>,
    /// END_STREAM sent.
    ended: bool,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "HTTP/2 stream closed")
}

impl AsyncWrite for StreamWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut send = lock(&self.send);
        send.reserve_capacity(buf.len().min(PIECE));
        loop {
            let granted = send.capacity();
            if granted > 0 {
                let n = granted.min(buf.len());
                send.send_data(Bytes::copy_from_slice(&buf[..n]), false).map_err(io::Error::other)?;
                return Poll::Ready(Ok(n));
            }
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                None => return Poll::Ready(Err(gone())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection's driver writes frames out as they are queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.ended {
            self.ended = true;
            lock(&self.send).send_data(Bytes::new(), true).map_err(io::Error::other)?;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    #[test]
    fn a_websocket_request_becomes_an_upgrade_with_a_fresh_key() {
        let mut head = RequestHead {
            method: Method::CONNECT,
            authority: Some("h".into()),
            target: "/v1/realtime".into(),
            headers: HeaderMap::new(),
            default_port: 443,
            peer: None,
            protocol: "HTTP/2",
        };
        let accept = as_upgrade(&mut head);
        assert!(crate::headers::is_websocket_upgrade(&head.method, &head.headers));
        let key = head.headers[SEC_WEBSOCKET_KEY].to_str().unwrap().to_string();
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(&key).unwrap().len(), 16);
        assert_eq!(head.headers[SEC_WEBSOCKET_VERSION], "13");
        assert_eq!(accept, accept_for(&key));
        as_upgrade(&mut head);
        assert_ne!(head.headers[SEC_WEBSOCKET_KEY].to_str().unwrap(), key, "a new key each time");
    }

    #[test]
    fn the_accept_value_is_rfc_6455s() {
        // The example of RFC 6455 §1.3.
        assert_eq!(accept_for("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
