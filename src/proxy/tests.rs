//! The neutral handler on its own: refusals in each provider's shape, what
//! goes upstream, how upstream failures map to statuses, and the access line
//! (499 when the handler is dropped unfinished). Upstreams are tiny loopback
//! listeners; the access log is captured from tracing.

use std::cell::RefCell;
use std::io::Write;
use std::sync::Once;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::{admit, handle};
use crate::body::Body;
use crate::message::{RequestHead, Response};
use crate::state::App;

const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}";

fn config(endpoint: &str) -> String {
    format!(
        "http_port: 1\nauth_keys: [\"client-key\"]\nproviders:\n  - type: openai\n    host: \"h.local/openai\"\n    endpoint: \"{endpoint}\"\n    tls: false\n    api_key: \"sk-real\"\n  - type: anthropic\n    host: \"a.local\"\n    endpoint: \"{endpoint}\"\n    tls: false\n    api_key: \"sk-ant\"\n"
    )
}

fn head(method: Method, host: &str, target: &str, headers: &[(&'static str, &str)]) -> RequestHead {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(*name, HeaderValue::from_str(value).unwrap());
    }
    RequestHead {
        method,
        authority: Some(host.into()),
        target: target.into(),
        headers: map,
        default_port: 80,
        peer: None,
        protocol: "HTTP/1.1",
    }
}

async fn text(resp: Response) -> (u16, String) {
    let status = resp.status.as_u16();
    let body = resp.body.collect(1 << 20).await.unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A loopback upstream that answers `answer` to each request and reports the head it read.
async fn upstream(answer: &'static [u8]) -> (String, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
                let _ = stream.write_all(answer).await;
                // Hold the connection until the proxy lets it go.
                let _ = stream.read(&mut chunk).await;
            });
        }
    });
    (addr, rx)
}

thread_local! {
    static CAPTURED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Writes into the current thread's capture buffer.
struct ThreadBuffer;

impl Write for ThreadBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURED.with(|c| c.borrow_mut().extend_from_slice(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts capturing what tracing writes on this thread (a current-thread
/// runtime runs the whole test here). The subscriber is global, installed
/// once: a scoped one misses events whose callsites another test thread saw
/// first with no subscriber.
fn capture_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(|| ThreadBuffer).finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
    CAPTURED.with(|c| c.borrow_mut().clear());
}

fn captured_logs() -> String {
    CAPTURED.with(|c| String::from_utf8_lossy(&c.borrow()).into_owned())
}

#[tokio::test]
async fn refusals_take_the_route_shape() {
    let app = App::from_yaml(&config("127.0.0.1:9"));
    let bearer = [("authorization", "Bearer client-key")];
    let cases = [
        (head(Method::GET, "nowhere.local", "/v1/x", &bearer), 404, r#""error":"#, "unknown_host"),
        (head(Method::GET, "h.local", "/other", &bearer), 404, r#""type":"no_route""#, "no provider"),
        (
            head(Method::GET, "h.local", "/openai/v1", &[("authorization", "Bearer nope")]),
            401,
            "invalid_api_key",
            r#""code":"#,
        ),
        (head(Method::GET, "a.local", "/v1/messages", &[]), 401, r#""type":"error","error":"#, "authentication_error"),
        (head(Method::CONNECT, "h.local:443", "", &bearer), 403, "CONNECT tunnels are not enabled", "forbidden"),
    ];
    for (request, status, shape, cause) in cases {
        let (got, body) = text(handle(&app, request, Body::Empty).await).await;
        assert_eq!(got, status, "{body}");
        assert!(body.contains(shape) && body.contains(cause), "{body}");
    }
    let mut missing = head(Method::GET, "h.local", "/openai/v1", &bearer);
    missing.authority = None;
    assert_eq!(text(handle(&app, missing, Body::Empty).await).await.0, 400);
}

#[tokio::test]
async fn the_upstream_sees_the_rewritten_request() {
    let (addr, mut seen) = upstream(ANSWER).await;
    let app = App::from_yaml(&config(&addr));
    let request = head(Method::POST, "h.local", "/openai/v1/chat?x=1", &[("authorization", "Bearer client-key")]);
    let (status, body) = text(handle(&app, request, Body::Full(Bytes::from_static(b"hello"))).await).await;
    assert_eq!((status, body.as_str()), (200, "{}"));
    let got = seen.recv().await.unwrap().to_ascii_lowercase();
    assert!(got.starts_with("post /v1/chat?x=1 http/1.1\r\n"), "{got}");
    assert!(got.contains("authorization: bearer sk-real\r\n"), "{got}");
    assert!(!got.contains("client-key"), "{got}");
    assert!(got.contains(&format!("host: {addr}\r\n")), "{got}");
}

#[tokio::test]
async fn upstream_failures_map_to_precise_statuses() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
    let app = App::from_yaml(&config(&closed));
    let request = || head(Method::GET, "h.local", "/openai/v1/models", &[("authorization", "Bearer client-key")]);
    let (status, body) = text(handle(&app, request(), Body::Empty).await).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("upstream request failed: connect to 127.0.0.1:") && body.contains("refused"), "{body}");
    let (hole, _held) = blackhole();
    let app = App::from_yaml(&format!("connect_timeout: 0.2\n{}", config(&hole)));
    let started = std::time::Instant::now();
    let (status, body) = text(handle(&app, request(), Body::Empty).await).await;
    assert!(started.elapsed() < Duration::from_secs(5), "connect_timeout not applied");
    assert_eq!(status, 504, "{body}");
    assert!(body.contains(r#""code":"upstream_timeout""#) && body.contains("timed out"), "{body}");
}

/// A loopback address whose connects hang: a listener with a full accept
/// queue drops new SYNs, so a connect only ends by timing out.
fn blackhole() -> (String, (socket2::Socket, Vec<std::net::TcpStream>)) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut held = Vec::new();
    // Fill the queue; each of these completes the handshake without an accept.
    while held.len() < 8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(stream) => held.push(stream),
            Err(_) => break,
        }
    }
    (addr.to_string(), (socket, held))
}

#[tokio::test]
async fn a_broken_client_body_is_the_clients_fault() {
    let (addr, _seen) = upstream(ANSWER).await;
    let app = App::from_yaml(&config(&addr));
    let (tx, body) = Body::channel(1, Some(10));
    tx.send(Err(crate::body::BodyError::Incomplete)).await.unwrap();
    let request = head(Method::POST, "h.local", "/openai/v1/chat", &[("authorization", "Bearer client-key")]);
    let (status, body) = text(handle(&app, request, body).await).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("the request body could not be read"), "{body}");
}

#[tokio::test]
async fn every_request_gets_one_access_line_and_abandoned_ones_say_499() {
    capture_logs();
    // An upstream that never answers: the handler waits until it is dropped.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        seen_tx.send(()).unwrap();
        let _hold = stream;
        std::future::pending::<()>().await;
    });
    let app = App::from_yaml(&config(&addr));
    let refused = head(Method::GET, "h.local", "/openai/v1?key=secret", &[("authorization", "Bearer nope")]);
    let _ = handle(&app, refused, Body::Empty).await;
    let request = head(Method::GET, "h.local", "/openai/v1/models", &[("authorization", "Bearer client-key")]);
    let admitted = admit(&app, request).unwrap();
    let respond = admitted.respond(&app, Body::Empty);
    tokio::select! {
        _ = respond => panic!("the stalled upstream answered"),
        _ = seen.recv() => {} // the request reached the upstream; now the client leaves
    }
    let log = captured_logs();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("openproxy::access")).collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines[0].contains("status=401") && lines[0].contains("path=/openai/v1 "), "{log}");
    assert!(!log.contains("secret"), "the query reached the log: {log}");
    assert!(lines[1].contains("status=499") && lines[1].contains("provider=0"), "{log}");
    let ms =
        lines.iter().map(|line| line.split(" ms=").nth(1).unwrap_or_default().split(' ').next().unwrap_or_default());
    assert!(
        ms.clone().all(|ms| ms.split_once('.').is_some_and(|(_, frac)| frac.len() == 3)),
        "milliseconds, 3 decimals: {log}"
    );
}
