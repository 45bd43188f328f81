//! A steady mixed load on a running proxy, for the zero-downtime tests:
//! keep-alive and new-connection HTTP/1.1 clients, HTTP/2 clients over TLS,
//! SSE streams and WebSocket sessions, each checking every answer byte for
//! byte. A failure is anything a client would see: an error status, a wrong
//! or cut body, a refused connection, a reset. What well-behaved clients do
//! on their own is not a failure but is counted: opening a new connection
//! when the previous one was closed between requests (HTTP/1.1
//! `Connection: close`, HTTP/2 GOAWAY) or retrying a stream the server
//! refused unprocessed (HTTP/2 REFUSED_STREAM, RFC 9113 §8.7).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::tls::TestCa;

/// Events an SSE answer carries, and the text each client must receive.
pub const SSE_EVENTS: usize = 20;

pub fn sse_text() -> String {
    let mut text: String = (0..SSE_EVENTS).map(|i| format!("data: {i}\n\n")).collect();
    text.push_str("data: [DONE]\n\n");
    text
}

/// Where the load goes: hosts are the routes of the config under test.
#[derive(Clone)]
pub struct Target {
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub ca: Arc<TestCa>,
    pub key: String,
}

#[derive(Default)]
pub struct Counts {
    pub keepalive: AtomicUsize,
    pub new_conn: AtomicUsize,
    pub h2: AtomicUsize,
    pub sse: AtomicUsize,
    pub ws_messages: AtomicUsize,
    pub ws_sessions: AtomicUsize,
    /// New connections opened because the server closed one between requests.
    pub reconnects: AtomicUsize,
    /// HTTP/2 streams refused unprocessed and sent again.
    pub refused_retried: AtomicUsize,
    pub failures: Mutex<Vec<String>>,
}

impl Counts {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }

    /// A refused connection once the load is stopping: the proxy may be gone.
    fn refused_while_stopping(&self, ctx: &Ctx, error: &str) -> bool {
        ctx.stopping() && error.starts_with("connect:")
    }

    pub fn summary(&self) -> String {
        let n = |c: &AtomicUsize| c.load(Ordering::SeqCst);
        format!(
            "keep-alive {} new-conn {} h2 {} sse {} ws sessions {} ({} messages); reconnects {} refused-and-retried {}; failures {}",
            n(&self.keepalive),
            n(&self.new_conn),
            n(&self.h2),
            n(&self.sse),
            n(&self.ws_sessions),
            n(&self.ws_messages),
            n(&self.reconnects),
            n(&self.refused_retried),
            self.failures.lock().unwrap().len()
        )
    }
}

/// The running load; [`Load::stop`] lets every client finish what it started.
pub struct Load {
    pub counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    ctx: Ctx,
    h2_started: bool,
}

impl Load {
    pub fn start(target: Target) -> Load {
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        let ctx = Ctx { target, counts: counts.clone(), stop: stop.clone() };
        for i in 0..3 {
            tasks.push(tokio::spawn(keepalive(ctx.clone(), i)));
        }
        for i in 0..2 {
            tasks.push(tokio::spawn(new_conn(ctx.clone(), i)));
            tasks.push(tokio::spawn(sse(ctx.clone())));
        }
        tasks.push(tokio::spawn(websocket(ctx.clone())));
        Load { counts, stop, tasks, ctx, h2_started: false }
    }

    /// Starts the HTTP/2 clients (once the HTTPS listener is there).
    pub fn start_h2(&mut self) {
        for i in 0..3 {
            self.tasks.push(tokio::spawn(h2(self.ctx.clone(), i)));
        }
        self.h2_started = true;
    }

    /// Waits (bounded) until every kind of client has finished `n` more
    /// operations than when called: the load flows.
    pub async fn progress(&self, n: usize) {
        let c = &self.counts;
        let mut kinds = vec![&c.keepalive, &c.new_conn, &c.sse, &c.ws_messages];
        if self.h2_started {
            kinds.push(&c.h2);
        }
        let start: Vec<usize> = kinds.iter().map(|k| k.load(Ordering::SeqCst)).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while kinds.iter().zip(&start).any(|(k, s)| k.load(Ordering::SeqCst) < s + n) {
            assert!(tokio::time::Instant::now() < deadline, "the load stalled: {}", c.summary());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops starting new work (a connection refused from now on is no
    /// failure: the proxy may be stopping), without waiting.
    pub fn stop_starting(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Stops starting new work and waits for what is in flight.
    pub async fn stop(self) -> Arc<Counts> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            match tokio::time::timeout(Duration::from_secs(30), task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.counts.fail(format!("a client panicked: {e}")),
                Err(e) => self.counts.fail(format!("a client did not finish: {e}")),
            }
        }
        self.counts
    }
}

#[derive(Clone)]
struct Ctx {
    target: Target,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
}

impl Ctx {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn request(&self, host: &str, path: &str, body: &str) -> hyper::Request<Full<Bytes>> {
        let method = if body.is_empty() { "GET" } else { "POST" };
        hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", host)
            .header("authorization", format!("Bearer {}", self.target.key))
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    }
}

type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn h1_connect(addr: SocketAddr) -> Result<H1, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Sends one request and checks the echo.
async fn echo_h1(ctx: &Ctx, sender: &mut H1, what: &str) -> Result<(), String> {
    let response = sender.send_request(ctx.request("localhost", "/v1/echo", what)).await.map_err(|e| e.to_string())?;
    check_echo(response, what).await
}

async fn check_echo(response: hyper::Response<hyper::body::Incoming>, sent: &str) -> Result<(), String> {
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
    if status != 200 || body != sent.as_bytes() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    Ok(())
}

/// Either kind of sender, as far as reuse goes.
trait Ready {
    async fn ready(&mut self) -> Result<(), hyper::Error>;
}

impl Ready for H1 {
    async fn ready(&mut self) -> Result<(), hyper::Error> {
        hyper::client::conn::http1::SendRequest::ready(self).await
    }
}

impl Ready for H2 {
    async fn ready(&mut self) -> Result<(), hyper::Error> {
        hyper::client::conn::http2::SendRequest::ready(self).await
    }
}

/// The previous connection if it can take another request; a connection the
/// server closed between requests is replaced (and counted).
async fn reuse<S: Ready>(sender: Option<S>, ctx: &Ctx) -> Option<S> {
    let mut sender = sender?;
    if sender.ready().await.is_ok() {
        return Some(sender);
    }
    ctx.counts.reconnects.fetch_add(1, Ordering::SeqCst);
    None
}

async fn keepalive(ctx: Ctx, id: usize) {
    let mut sender: Option<H1> = None;
    let mut i = 0;
    while !ctx.stopping() {
        let mut conn = match reuse(sender.take(), &ctx).await {
            Some(s) => s,
            None => match h1_connect(ctx.target.http).await {
                Ok(s) => s,
                Err(e) if ctx.counts.refused_while_stopping(&ctx, &e) => return,
                Err(e) => return ctx.counts.fail(format!("keep-alive {id}: {e}")),
            },
        };
        i += 1;
        match echo_h1(&ctx, &mut conn, &format!("keepalive-{id}-{i}")).await {
            Ok(()) => ctx.counts.keepalive.fetch_add(1, Ordering::SeqCst),
            Err(e) => return ctx.counts.fail(format!("keep-alive {id} request {i}: {e}")),
        };
        sender = Some(conn);
    }
}

async fn new_conn(ctx: Ctx, id: usize) {
    let mut i = 0;
    while !ctx.stopping() {
        i += 1;
        let result = async {
            let mut sender = h1_connect(ctx.target.http).await?;
            echo_h1(&ctx, &mut sender, &format!("new-{id}-{i}")).await
        };
        match result.await {
            Ok(()) => ctx.counts.new_conn.fetch_add(1, Ordering::SeqCst),
            Err(e) if ctx.counts.refused_while_stopping(&ctx, &e) => return,
            Err(e) => return ctx.counts.fail(format!("new-conn {id} request {i}: {e}")),
        };
    }
}

type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn h2_connect(target: &Target) -> Result<H2, String> {
    let tcp = TcpStream::connect(target.https).await.map_err(|e| format!("connect: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connector = tokio_rustls::TlsConnector::from(target.ca.client_config(&[b"h2"]));
    let tls = connector.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Whether an HTTP/2 request failed before the server processed it
/// (GOAWAY's last stream id, REFUSED_STREAM): safe to send again.
fn unprocessed(e: &hyper::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = err.source();
    }
    e.is_canceled()
}

async fn h2(ctx: Ctx, id: usize) {
    let mut sender: Option<H2> = None;
    let mut i = 0;
    while !ctx.stopping() {
        let mut conn = match reuse(sender.take(), &ctx).await {
            Some(s) => s,
            None => match h2_connect(&ctx.target).await {
                Ok(s) => s,
                Err(e) => return ctx.counts.fail(format!("h2 {id}: {e}")),
            },
        };
        i += 1;
        let what = format!("h2-{id}-{i}");
        let mut request = ctx.request("localhost", "/v1/echo", &what);
        *request.uri_mut() = "https://localhost/v1/echo".parse().unwrap();
        request.headers_mut().remove("host");
        match conn.send_request(request).await {
            Ok(response) => match check_echo(response, &what).await {
                Ok(()) => ctx.counts.h2.fetch_add(1, Ordering::SeqCst),
                Err(e) => return ctx.counts.fail(format!("h2 {id} request {i}: {e}")),
            },
            Err(e) if unprocessed(&e) => ctx.counts.refused_retried.fetch_add(1, Ordering::SeqCst),
            Err(e) => return ctx.counts.fail(format!("h2 {id} request {i}: {e}")),
        };
        sender = Some(conn);
    }
}

async fn sse(ctx: Ctx) {
    let expected = sse_text();
    while !ctx.stopping() {
        let result = async {
            let mut sender = h1_connect(ctx.target.http).await?;
            let response =
                sender.send_request(ctx.request("sse.local", "/v1/stream", "")).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| format!("cut: {e}"))?.to_bytes();
            if status != 200 || body != expected.as_bytes() {
                return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
            }
            Ok(())
        };
        match result.await {
            Ok(()) => ctx.counts.sse.fetch_add(1, Ordering::SeqCst),
            Err(e) if ctx.counts.refused_while_stopping(&ctx, &e) => return,
            Err(e) => return ctx.counts.fail(format!("sse: {e}")),
        };
    }
}

/// WebSocket sessions of 20 messages each, one after another.
async fn websocket(ctx: Ctx) {
    while !ctx.stopping() {
        let result = async {
            let mut request = "ws://ws.local/v1/realtime".into_client_request().unwrap();
            let auth = format!("Bearer {}", ctx.target.key).parse().unwrap();
            request.headers_mut().insert("authorization", auth);
            let stream = TcpStream::connect(ctx.target.http).await.map_err(|e| format!("connect: {e}"))?;
            let (mut ws, _) = tokio_tungstenite::client_async(request, stream).await.map_err(|e| e.to_string())?;
            for i in 0..20 {
                let text = format!("message {i}");
                ws.send(Message::text(text.clone())).await.map_err(|e| e.to_string())?;
                match ws.next().await {
                    Some(Ok(Message::Text(echo))) if echo.as_str() == text => {}
                    other => return Err(format!("message {i}: {other:?}")),
                }
                ctx.counts.ws_messages.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ws.close(None).await.map_err(|e| e.to_string())
        };
        match result.await {
            Ok(()) => ctx.counts.ws_sessions.fetch_add(1, Ordering::SeqCst),
            Err(e) if ctx.counts.refused_while_stopping(&ctx, &e) => return,
            Err(e) => return ctx.counts.fail(format!("websocket: {e}")),
        };
    }
}
