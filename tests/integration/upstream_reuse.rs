//! Reusing upstream connections safely: a recycled HTTP/2 connection is
//! replaced, and a request the upstream may have acted on is never sent twice
//! unless repeating it is harmless.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::tls::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recycled_h2_upstream_connection_is_replaced() {
    let ca = TestCa::new();
    let script = UpstreamScript { one_request_per_connection: true, ..Default::default() };
    let up = TlsUpstream::start(&ca, &[b"h2"], script).await;
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, _, _) = ca.write(dir.path());
    let yaml = format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nca_file: {}\nproviders:\n  - type: forward\n    host: h.local\n    endpoint: \"localhost:{}\"\n",
        ca_file.display(),
        up.addr.port()
    );
    let proxy = TestProxy::start(&yaml);
    for i in 0..6 {
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let (status, _, body) = send(proxy.addr, method, &format!("/v1/{i}"), &[("host", "h.local")], "x").await;
        assert_eq!(status, 200, "request {i} ({method}) after the upstream closed its connection: {body}");
    }
    let uris: Vec<String> = up.recorded().iter().map(|(r, _)| r.uri.clone()).collect();
    assert_eq!(uris.len(), 6, "each request reached the upstream exactly once: {uris:?}\n{}", proxy.logs());
    assert_eq!(*up.connections.lock().unwrap(), 6);
}

/// An upstream whose first connection answers one request, then reads the
/// next one whole and closes without answering; later connections answer.
///
/// The tests send their requests one after another on one client connection
/// (one HTTP/2 connection, reading each answer to its end): the proxy puts
/// the upstream connection back into its pool once it has read the answer to
/// its end, which it does before it reads the client's next request (ends the
/// HTTP/2 stream). A request on a new client connection races that and may
/// find the pool still empty, and so a fresh upstream connection.
async fn upstream_that_drops_the_second_request(log: Arc<Mutex<Vec<String>>>) -> RawUpstream {
    let conns = Arc::new(AtomicUsize::new(0));
    RawUpstream::start(move |mut stream| {
        let (log, n) = (log.clone(), conns.fetch_add(1, Ordering::SeqCst));
        async move {
            let answers = if n == 0 { 1 } else { usize::MAX };
            let mut served = 0;
            loop {
                let head = read_head(&mut stream).await;
                if head.is_empty() {
                    return;
                }
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                let already = head.split("\r\n\r\n").nth(1).map_or(0, str::len);
                let mut body = vec![0; len.saturating_sub(already)];
                stream.read_exact(&mut body).await.unwrap();
                log.lock().unwrap().push(head.lines().next().unwrap_or("").to_string());
                if served == answers {
                    return; // processed, then the connection dies: no answer
                }
                served += 1;
                stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_post_the_upstream_may_have_processed_is_not_sent_again() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let up = upstream_that_drops_the_second_request(log.clone()).await;
    let proxy = TestProxy::start(&one_provider("openai", "h.local", up.port(), ""));
    let auth = [("host", "h.local"), ("authorization", "Bearer client-key")];
    let mut client = Client::connect(proxy.addr).await;
    assert_eq!(client.send("POST", "/v1/charge/1", &auth, "{}").await.0, 200);
    let (status, _, body) = client.send("POST", "/v1/charge/2", &auth, "{}").await;
    assert_eq!(status, 502, "{body}");
    // The upstream logs a request before it answers or drops it, so a retry
    // would be in the log before the proxy could answer the client.
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen, vec!["POST /v1/charge/1 HTTP/1.1", "POST /v1/charge/2 HTTP/1.1"], "sent twice?");
}

#[tokio::test]
async fn an_idempotent_request_is_retried_on_a_new_connection() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let up = upstream_that_drops_the_second_request(log.clone()).await;
    let proxy = TestProxy::start(&one_provider("openai", "h.local", up.port(), ""));
    let auth = [("host", "h.local"), ("authorization", "Bearer client-key")];
    let mut client = Client::connect(proxy.addr).await;
    assert_eq!(client.send("GET", "/v1/models/1", &auth, "").await.0, 200);
    assert_eq!(client.send("GET", "/v1/models/2", &auth, "").await.0, 200, "GET is safe to repeat");
    assert_eq!(log.lock().unwrap().len(), 3, "the dropped GET was sent once more, on a new connection");
    // An Idempotency-Key does not make a POST repeatable: not every upstream dedupes on it.
    let with_key = [("host", "h.local"), ("authorization", "Bearer client-key"), ("idempotency-key", "abc")];
    let log2 = Arc::new(Mutex::new(Vec::new()));
    let up2 = upstream_that_drops_the_second_request(log2.clone()).await;
    let proxy2 = TestProxy::start(&one_provider("openai", "h.local", up2.port(), ""));
    let mut client2 = Client::connect(proxy2.addr).await;
    assert_eq!(client2.send("POST", "/v1/a", &with_key, "{}").await.0, 200);
    assert_eq!(client2.send("POST", "/v1/b", &with_key, "{}").await.0, 502);
    assert_eq!(log2.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_bodiless_http2_request_is_retried_like_an_http1_one() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let up = upstream_that_drops_the_second_request(log.clone()).await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = ca.write(dir.path());
    let yaml = one_provider("openai", "localhost", up.port(), "").replace(
        "http_port: {port}\nhttp_bind_address: 127.0.0.1",
        &format!(
            "https_port: {{port}}\nhttps_bind_address: 127.0.0.1\ncert_file: {}\nprivate_key_file: {}",
            cert.display(),
            key.display()
        ),
    );
    let proxy = TestProxy::start(&yaml);
    let mut client = h2_client(proxy.addr, &ca).await;
    for i in 0..2 {
        let req = hyper::Request::builder()
            .uri(format!("https://localhost/v1/models/{i}"))
            .header("authorization", "Bearer client-key")
            .body(TestBody::empty())
            .unwrap();
        let resp = client.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        resp.into_body().collect().await.unwrap();
    }
    assert_eq!(log.lock().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_upstream_answer_reaches_the_client_without_waiting_for_the_upload() {
    // The upstream refuses after the head, never reads the body, keeps the socket open.
    let up = RawUpstream::start(|mut stream| async move {
        read_head(&mut stream).await;
        let refusal = br#"{"error":"too large"}"#;
        let head = format!("HTTP/1.1 413 Payload Too Large\r\nContent-Length: {}\r\n\r\n", refusal.len());
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(refusal).await.unwrap();
        std::future::pending::<()>().await;
    })
    .await;
    let proxy = TestProxy::start(&one_provider("openai", "h.local", up.port(), ""));
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let size = 50 * 1024 * 1024;
    let head = format!("POST /v1/files HTTP/1.1\r\nHost: h.local\r\nAuthorization: Bearer client-key\r\nContent-Length: {size}\r\n\r\n");
    client.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = client.into_split();
    let upload = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..size / chunk.len() {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        while !String::from_utf8_lossy(&response).contains("too large") {
            let n = rd.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            response.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(answered.is_ok(), "the client never got the upstream's early answer");
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    upload.abort();
}
