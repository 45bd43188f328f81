//! HTTP/1.1 message framing through the real binary: keep-alive and pooling,
//! request and response bodies byte for byte (lengths, chunks, trailers,
//! read-to-close), 100-continue, bodiless answers, HTTP/1.0 and upstream failures.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Notify};

use crate::support::wire::{Msg, Wire, READ_LIMIT};
use crate::support::*;

/// Route host and client credentials every good request carries.
const AUTH: &str = "Host: a.local\r\nAuthorization: Bearer client-key\r\n";

fn config(upstream: u16) -> String {
    one_provider("openai", "a.local", upstream, "")
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\n{AUTH}\r\n").into_bytes()
}

/// Deterministic binary data covering every byte value.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
}

/// A raw upstream that answers each request on a connection with `answer`,
/// and counts the connections it accepted.
async fn scripted(answer: impl Fn(&Msg) -> Vec<u8> + Send + Sync + 'static) -> (RawUpstream, Arc<AtomicUsize>) {
    let conns = Arc::new(AtomicUsize::new(0));
    let answer = Arc::new(answer);
    let counter = conns.clone();
    let up = RawUpstream::start(move |stream| {
        let answer = answer.clone();
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut w = Wire::patient(stream);
            while let Some(req) = w.request().await {
                let out = answer(&req);
                if w.stream.write_all(&out).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (up, conns)
}

#[tokio::test]
async fn fifty_requests_on_one_client_connection_reuse_one_upstream_connection() {
    let up = MockUpstream::start("a").await;
    let proxy = TestProxy::start(&config(up.port()));
    let mut client = Wire::connect(proxy.addr).await;
    for i in 0..50 {
        client.write(&get(&format!("/v1/models?i={i}"))).await;
        let resp = client.response("GET").await;
        assert_eq!(resp.status(), 200, "request {i}: {}", resp.raw_head);
        assert_eq!(resp.body_str(), r#"{"ok":true,"mock":"a"}"#, "request {i}");
        assert!(!resp.says_close(), "request {i}: {}", resp.raw_head);
    }
    let seen: Vec<String> = up.recorded().iter().map(|r| r.uri.clone()).collect();
    let expected: Vec<String> = (0..50).map(|i| format!("/v1/models?i={i}")).collect();
    assert_eq!(seen, expected);
    assert_eq!(up.connection_count(), 1, "sequential requests must reuse the pooled upstream connection");
}

#[tokio::test]
async fn content_length_body_is_forwarded_byte_exact() {
    let up = MockUpstream::start("a").await;
    let proxy = TestProxy::start(&config(up.port()));
    let mut client = Wire::connect(proxy.addr).await;
    // A small body (sent with the head) and a large one (streamed in pieces).
    let small = b"{\"model\":\"m\",\"x\":\"\xc3\xa9\\u0000\"}".to_vec();
    let large = pattern(300_000);
    for body in [&small, &large] {
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\n{AUTH}Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        client.write(head.as_bytes()).await;
        for piece in body.chunks(100_000) {
            client.write(piece).await;
            // A trickling client, not a wait: the pause makes the proxy's reads
            // end between pieces. Nothing depends on it; the assertions hold
            // however the pieces arrive.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let resp = client.response("POST").await;
        assert_eq!(resp.status(), 200, "{}", resp.raw_head);
    }
    let seen = up.recorded();
    assert_eq!(seen.len(), 2);
    for (rec, body) in seen.iter().zip([&small, &large]) {
        assert_eq!(rec.method, "POST");
        assert_eq!(rec.body.len(), body.len());
        assert!(rec.body[..] == body[..], "body differs");
        assert_eq!(rec.header("content-length"), Some(body.len().to_string().as_str()));
        assert_eq!(rec.header("transfer-encoding"), None);
        assert_eq!(rec.header("authorization"), Some("Bearer real-key"));
    }
}

#[tokio::test]
async fn chunked_request_body_with_extensions_and_trailers_is_forwarded() {
    let up = MockUpstream::start("a").await;
    let proxy = TestProxy::start(&config(up.port()));
    let mut client = Wire::connect(proxy.addr).await;
    let big = pattern(4096);
    let mut pieces: Vec<Vec<u8>> = vec![
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\n{AUTH}Transfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
        )
        .into_bytes(),
        b"5;name=value\r\nhel".to_vec(),
        b"lo\r\n6 ; q=\"a b\";flag\r\n world\r\n".to_vec(),
        b"1000;x=1\r\n".to_vec(),
    ];
    pieces.push(big[..1000].to_vec());
    let mut rest = big[1000..].to_vec();
    rest.extend_from_slice(b"\r\n0;last=yes\r\nX-Checksum: abc123\r\nX-Other: one, two\r\n\r\n");
    pieces.push(rest);
    for piece in &pieces {
        client.write(piece).await;
        // A trickling client, not a wait: the pause makes the proxy's reads end
        // inside chunk-size lines and chunk data, as the pieces are cut.
        // Nothing depends on it; the assertions hold however the pieces arrive.
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let resp = client.response("POST").await;
    assert_eq!(resp.status(), 200, "{}", resp.raw_head);
    // The connection is still in step: a second request follows the trailers.
    client.write(&get("/v1/after")).await;
    assert_eq!(client.response("GET").await.status(), 200);

    let seen = up.recorded();
    assert_eq!(seen.len(), 2);
    let rec = &seen[0];
    let mut expected = b"hello world".to_vec();
    expected.extend_from_slice(&big);
    assert_eq!(rec.body.len(), expected.len());
    assert!(rec.body[..] == expected[..], "chunked body differs");
    assert_eq!(rec.header("transfer-encoding"), Some("chunked"));
    assert_eq!(rec.header("content-length"), None);
    let trailers = rec.trailers.as_ref().expect("upstream got no trailers");
    assert_eq!(trailers.get("x-checksum").unwrap(), "abc123");
    assert_eq!(trailers.get("x-other").unwrap(), "one, two");
    assert_eq!(seen[1].uri, "/v1/after");
}

#[tokio::test]
async fn chunked_upstream_response_reaches_client_with_its_trailers() {
    let (up, _) = scripted(|_| {
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nTrailer: X-Usage\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Usage: 42\r\nX-Finish: stop\r\n\r\n"
            .to_vec()
    })
    .await;
    let proxy = TestProxy::start(&config(up.port()));
    let mut client = Wire::connect(proxy.addr).await;
    for round in 0..2 {
        client.write(&get("/v1/chat")).await;
        let resp = client.response("GET").await;
        assert_eq!(resp.status(), 200, "round {round}: {}", resp.raw_head);
        assert!(resp.chunked, "not chunked: {}", resp.raw_head);
        assert_eq!(resp.header("content-length"), None);
        assert_eq!(resp.body_str(), "hello world");
        assert_eq!(resp.trailer("x-usage"), Some("42"), "{:?}", resp.trailers);
        assert_eq!(resp.trailer("x-finish"), Some("stop"), "{:?}", resp.trailers);
    }
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_and_not_forwarded() {
    let up = MockUpstream::start("a").await;
    let proxy = TestProxy::start(&config(up.port()));
    let mut client = Wire::connect(proxy.addr).await;
    client
        .write(
            format!("POST /v1/chat/completions HTTP/1.1\r\n{AUTH}Expect: 100-continue\r\nContent-Length: 11\r\n\r\n")
                .as_bytes(),
        )
        .await;
    let interim = client.head().await.expect("no interim response");
    assert_eq!(interim.raw_head, "HTTP/1.1 100 Continue\r\n\r\n");
    client.write(b"hello world").await;
    let resp = client.response("POST").await;
    assert_eq!(resp.status(), 200, "{}", resp.raw_head);
    let seen = up.recorded();
    assert_eq!(seen.len(), 1);
    assert_eq!(&seen[0].body[..], b"hello world");
    assert_eq!(seen[0].header("expect"), None, "Expect was forwarded");

    // A wrong key is refused at once: no 100 Continue invites the body.
    let mut client = Wire::connect(proxy.addr).await;
    client
        .write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: a.local\r\nAuthorization: Bearer wrong-key\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n",
        )
        .await;
    let resp = client.response("POST").await;
    assert_eq!(resp.status(), 401, "{}", resp.raw_head);
    assert!(resp.body_str().contains("invalid_api_key"), "{}", resp.body_str());
    assert!(resp.says_close(), "unread body: the connection must close: {}", resp.raw_head);
    assert!(client.closes_within(Duration::from_secs(3)).await);
    assert!(client.buf.is_empty(), "bytes after the 401: {:?}", String::from_utf8_lossy(&client.buf));
    assert_eq!(up.recorded().len(), 1, "the refused request reached the upstream");
}

#[tokio::test]
async fn head_204_and_304_answers_have_no_body_and_keep_the_connection() {
    let (up, _) = scripted(|req| {
        let out: &[u8] = match (req.method(), req.target()) {
            ("HEAD", _) => b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1234\r\n\r\n",
            (_, "/nocontent") => b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
            (_, "/notmodified") => b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 50\r\n\r\n",
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        };
        out.to_vec()
    })
    .await;
    let proxy = TestProxy::start(&config(up.port()));
    let mut client = Wire::connect(proxy.addr).await;

    client.write(format!("HEAD /v1/models HTTP/1.1\r\n{AUTH}\r\n").as_bytes()).await;
    let resp = client.response("HEAD").await;
    assert_eq!(resp.status(), 200, "{}", resp.raw_head);
    assert_eq!(resp.header("content-length"), Some("1234"), "{}", resp.raw_head);
    assert_eq!(resp.header("transfer-encoding"), None, "{}", resp.raw_head);

    for (path, status) in [("/nocontent", 204), ("/notmodified", 304)] {
        // The answer before must not have left body bytes on the connection.
        client.write(&get("/x")).await;
        let ok = client.response("GET").await;
        assert_eq!((ok.status(), ok.body_str().as_str()), (200, "ok"));
        client.write(&get(path)).await;
        let resp = client.response("GET").await;
        assert_eq!(resp.status(), status, "{}", resp.raw_head);
        assert_eq!(resp.header("transfer-encoding"), None, "{}", resp.raw_head);
        assert!(!resp.says_close(), "{}", resp.raw_head);
        if status == 204 {
            assert_eq!(resp.header("content-length"), None, "{}", resp.raw_head);
            assert_eq!(resp.header("x-a"), Some("1"));
        } else {
            assert_eq!(resp.header("etag"), Some("\"v1\""));
            // A 304 keeps the length of the representation it stands for.
            assert_eq!(resp.header("content-length"), Some("50"), "{}", resp.raw_head);
        }
    }
    // Nothing stray followed the last answer either: the connection is still
    // open, and the next bytes on it are the next answer, and nothing more.
    for _ in 0..2 {
        client.write(&get("/x")).await;
        let ok = client.response("GET").await;
        assert_eq!((ok.status(), ok.body_str().as_str()), (200, "ok"));
    }
    assert!(client.buf.is_empty(), "{:?}", String::from_utf8_lossy(&client.buf));
}

#[tokio::test]
async fn read_to_close_upstream_body_is_rechunked_and_the_client_connection_survives() {
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = conns.clone();
    // The upstream sends part two once the client has part one.
    let part_one_seen = Arc::new(Notify::new());
    let go = part_one_seen.clone();
    let up = RawUpstream::start(move |stream| {
        counter.fetch_add(1, Ordering::SeqCst);
        let go = go.clone();
        async move {
            let mut w = Wire::patient(stream);
            if w.request().await.is_none() {
                return;
            }
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, ").await;
            go.notified().await;
            w.write(b"part two.").await;
            // Dropping the stream closes it: that ends the body.
        }
    })
    .await;
    let proxy = TestProxy::start(&config(up.port()));
    let mut client = Wire::connect(proxy.addr).await;
    for round in 0..2 {
        client.write(&get("/v1/stream")).await;
        let resp = client.head().await.expect("connection closed, no response");
        assert_eq!(resp.status(), 200, "round {round}: {}", resp.raw_head);
        let te = resp.header("transfer-encoding").map(str::to_ascii_lowercase);
        assert_eq!(te.as_deref(), Some("chunked"), "round {round}: not chunked: {}", resp.raw_head);
        assert!(!resp.says_close(), "round {round}: {}", resp.raw_head);
        let (mut body, mut trailers) = (Vec::new(), Vec::new());
        while !body.ends_with(b"part one, ") {
            body.extend(
                client
                    .chunk(&mut trailers)
                    .await
                    .unwrap_or_else(|| panic!("round {round}: the body ended before part one")),
            );
        }
        part_one_seen.notify_one();
        while let Some(data) = client.chunk(&mut trailers).await {
            body.extend(data);
        }
        assert_eq!(String::from_utf8_lossy(&body), "part one, part two.", "round {round}");
    }
    assert_eq!(conns.load(Ordering::SeqCst), 2, "a close-delimited upstream connection cannot be reused");
}

#[tokio::test]
async fn http10_client_gets_an_unchunked_response() {
    let (up, _) = scripted(|req| {
        let out: &[u8] = if req.target() == "/v1/length" {
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world"
        } else {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n"
        };
        out.to_vec()
    })
    .await;
    let proxy = TestProxy::start(&config(up.port()));
    for path in ["/v1/chunked", "/v1/length"] {
        let mut client = Wire::connect(proxy.addr).await;
        client
            .write(
                format!("GET {path} HTTP/1.0\r\nHost: a.local\r\nAuthorization: Bearer client-key\r\n\r\n").as_bytes(),
            )
            .await;
        let resp = client.response("GET").await;
        assert_eq!(resp.status(), 200, "{path}: {}", resp.raw_head);
        assert_eq!(resp.header("transfer-encoding"), None, "{path}: {}", resp.raw_head);
        assert!(!resp.chunked);
        assert_eq!(resp.body_str(), "hello world", "{path}");
        if path == "/v1/length" {
            assert_eq!(resp.header("content-length"), Some("11"));
        }
        // HTTP/1.0 without keep-alive: the proxy closes after the answer.
        assert!(client.closes_within(Duration::from_secs(3)).await, "{path}");
        assert!(client.buf.is_empty(), "{path}: {:?}", client.buf);
    }
}

#[tokio::test]
async fn unreachable_or_silent_upstreams_give_502_and_others_are_still_served() {
    let good = MockUpstream::start("good").await;
    let hangup = RawUpstream::start(|stream| async move { drop(stream) }).await;
    let dead = free_port();
    let provider = |host: &str, port: u16| {
        format!(
            "  - type: openai\n    host: \"{host}\"\n    endpoint: \"127.0.0.1:{port}\"\n    tls: false\n    api_key: \"real-key\"\n"
        )
    };
    let yaml = format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nauth_keys: [\"client-key\"]\nproviders:\n{}{}{}",
        provider("refused.local", dead),
        provider("hangup.local", hangup.port()),
        provider("good.local", good.port()),
    );
    let proxy = TestProxy::start(&yaml);
    for host in ["refused.local", "hangup.local", "refused.local", "hangup.local"] {
        let started = Instant::now();
        let (status, headers, body) = send(
            proxy.addr,
            "POST",
            "/v1/chat/completions",
            &[("host", host), ("authorization", "Bearer client-key")],
            "{}",
        )
        .await;
        let took = started.elapsed();
        assert_eq!(status, 502, "{host}: {body}");
        assert!(took < Duration::from_secs(2), "{host}: took {took:?}");
        assert_eq!(headers["content-type"], "application/json", "{host}");
        assert!(body.contains(r#""code":"upstream_error""#), "{host}: {body}");
        let (status, _, body) = send(
            proxy.addr,
            "GET",
            "/v1/models",
            &[("host", "good.local"), ("authorization", "Bearer client-key")],
            "",
        )
        .await;
        assert_eq!(status, 200, "after {host}: {body}");
    }
    assert_eq!(good.recorded().len(), 4);
}

/// An upstream that closes each connection right after its answer, without
/// saying so: the pooled connection is dead when the next request comes.
struct ClosingUpstream {
    up: RawUpstream,
    /// Connections accepted.
    conns: Arc<AtomicUsize>,
    /// Requests answered.
    requests: Arc<AtomicUsize>,
    /// The target of each request head, as soon as the head is in.
    heads: mpsc::UnboundedReceiver<String>,
    /// One message per connection the upstream has closed.
    closed: mpsc::UnboundedReceiver<()>,
}

async fn closing_upstream() -> ClosingUpstream {
    let conns = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (heads_tx, heads) = mpsc::unbounded_channel();
    let (closed_tx, closed) = mpsc::unbounded_channel();
    let (c, r) = (conns.clone(), requests.clone());
    let up = RawUpstream::start(move |stream| {
        c.fetch_add(1, Ordering::SeqCst);
        let (r, heads_tx, closed_tx) = (r.clone(), heads_tx.clone(), closed_tx.clone());
        async move {
            let mut w = Wire::patient(stream);
            if let Some(mut req) = w.head().await {
                let _ = heads_tx.send(req.target().to_string());
                w.body(&mut req, false, true).await;
                r.fetch_add(1, Ordering::SeqCst);
                let body = format!("{} {}", req.method(), req.target());
                let out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                w.write(out.as_bytes()).await;
            }
            // Closed without `Connection: close`.
            drop(w);
            let _ = closed_tx.send(());
        }
    })
    .await;
    ClosingUpstream { up, conns, requests, heads, closed }
}

#[tokio::test]
async fn pooled_connection_closed_by_upstream_while_idle_is_not_fatal() {
    let mut up = closing_upstream().await;
    let proxy = TestProxy::start(&config(up.up.port()));
    let mut client = Wire::connect(proxy.addr).await;
    // After the upstream has closed the last connection (the close has arrived
    // before the reuse) and right away (the close races the next request), for
    // a GET and for a POST with a body.
    let steps = [
        ("GET", "/v1/one", false),
        ("GET", "/v1/two", true),
        ("POST", "/v1/three", true),
        ("GET", "/v1/four", false),
        ("POST", "/v1/five", false),
    ];
    let mut closed = 0;
    for (i, (method, path, after_close)) in steps.into_iter().enumerate() {
        // Each answered request had a connection of its own, closed after it.
        while after_close && closed < i {
            tokio::time::timeout(READ_LIMIT, up.closed.recv()).await.expect("the upstream never closed").unwrap();
            closed += 1;
        }
        let req = if method == "POST" {
            format!("POST {path} HTTP/1.1\r\n{AUTH}Content-Length: 2\r\n\r\n{{}}")
        } else {
            format!("GET {path} HTTP/1.1\r\n{AUTH}\r\n")
        };
        client.write(req.as_bytes()).await;
        let resp = client.response(method).await;
        assert_eq!(resp.status(), 200, "{method} {path}: {} {}", resp.raw_head, resp.body_str());
        assert_eq!(resp.body_str(), format!("{method} {path}"));
    }
    // A body that is still arriving cannot be replayed: the proxy must pick
    // a live connection before sending the head.
    for i in 0..5 {
        let path = format!("/v1/streamed{i}");
        client.write(format!("POST {path} HTTP/1.1\r\n{AUTH}Content-Length: 2\r\n\r\n").as_bytes()).await;
        // The body follows once the head is upstream.
        loop {
            let target = tokio::time::timeout(READ_LIMIT, up.heads.recv())
                .await
                .unwrap_or_else(|_| panic!("{path}: the head never reached a live upstream connection"))
                .unwrap();
            if target == path {
                break;
            }
        }
        client.write(b"{}").await;
        let resp = client.response("POST").await;
        assert_eq!(resp.status(), 200, "{path}: {} {}", resp.raw_head, resp.body_str());
        assert_eq!(resp.body_str(), format!("POST {path}"));
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), steps.len() + 5);
    assert_eq!(up.conns.load(Ordering::SeqCst), steps.len() + 5);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let up = MockUpstream::with(|r| Reply::json(200, &format!("{{\"uri\":\"{}\"}}", r.uri))).await;
    let proxy = TestProxy::start(&config(up.port()));
    let mut client = Wire::connect(proxy.addr).await;
    // Five requests in one write, one of them with a body.
    let mut burst = Vec::new();
    for i in 0..5 {
        if i == 2 {
            burst.extend_from_slice(
                format!("POST /v1/p{i} HTTP/1.1\r\n{AUTH}Content-Length: 5\r\n\r\nhello").as_bytes(),
            );
        } else {
            burst.extend_from_slice(&get(&format!("/v1/p{i}")));
        }
    }
    client.write(&burst).await;
    for i in 0..5 {
        let method = if i == 2 { "POST" } else { "GET" };
        let resp = client.response(method).await;
        assert_eq!(resp.status(), 200, "{i}: {}", resp.raw_head);
        assert_eq!(resp.body_str(), format!("{{\"uri\":\"/v1/p{i}\"}}"));
    }
    let seen = up.recorded();
    let uris: Vec<&str> = seen.iter().map(|r| r.uri.as_str()).collect();
    assert_eq!(uris, ["/v1/p0", "/v1/p1", "/v1/p2", "/v1/p3", "/v1/p4"]);
    assert_eq!(&seen[2].body[..], b"hello");
    assert!(seen.iter().enumerate().all(|(i, r)| i == 2 || r.body.is_empty()));
}
