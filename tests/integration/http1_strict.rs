//! Strict HTTP/1.1 parsing through the real binary: every ambiguous or
//! malformed request is refused with its exact status, the connection is
//! closed, nothing reaches the upstream, and everyone else is still served.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::wire::Wire;
use crate::support::*;

/// Route host and client credentials every good request carries.
const AUTH: &str = "Host: a.local\r\nAuthorization: Bearer client-key\r\n";

/// Everything a [`Tap`] upstream received, in order.
#[derive(Default)]
struct Seen {
    /// Every request head, recorded as soon as it is complete.
    heads: Vec<String>,
    /// Requests whose body was complete too: (head, body).
    complete: Vec<(String, Vec<u8>)>,
    /// Connections the proxy opened to the upstream.
    connections: usize,
}

/// A raw upstream that records each head before waiting for its body, so a
/// request forwarded only in part is seen too; it answers `200 ok`.
struct Tap {
    up: RawUpstream,
    seen: Arc<Mutex<Seen>>,
}

impl Tap {
    async fn start() -> Tap {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let log = seen.clone();
        let up = RawUpstream::start(move |stream| {
            let log = log.clone();
            log.lock().unwrap().connections += 1;
            async move {
                let mut w = Wire::patient(stream);
                while let Some(mut head) = w.head().await {
                    log.lock().unwrap().heads.push(head.raw_head.clone());
                    w.body(&mut head, false, true).await;
                    log.lock().unwrap().complete.push((head.raw_head.clone(), head.body.clone()));
                    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if w.stream.write_all(ok).await.is_err() {
                        return;
                    }
                }
            }
        })
        .await;
        Tap { up, seen }
    }

    fn heads(&self) -> Vec<String> {
        self.seen.lock().unwrap().heads.clone()
    }

    fn complete(&self) -> Vec<(String, Vec<u8>)> {
        self.seen.lock().unwrap().complete.clone()
    }

    fn connections(&self) -> usize {
        self.seen.lock().unwrap().connections
    }
}

/// A proxy in front of a fresh [`Tap`], with `http_max_header_size: 1024`.
async fn setup() -> (Tap, TestProxy) {
    let tap = Tap::start().await;
    let proxy = TestProxy::start(&one_provider("openai", "a.local", tap.up.port(), "http_max_header_size: 1024\n"));
    (tap, proxy)
}

/// Sends `request` alone on a new connection and checks that the proxy answers
/// exactly `status` with `connection: close`, closes, and that the upstream
/// received nothing at all; then that a good request on a new connection works.
async fn assert_refused(tap: &Tap, proxy: &TestProxy, request: &[u8], status: u16) {
    let shown = String::from_utf8_lossy(request).into_owned();
    let (heads, conns) = (tap.heads().len(), tap.connections());
    let mut client = Wire::connect(proxy.addr).await;
    // The proxy may close before reading everything; what it answered still counts.
    let _ = client.stream.write_all(request).await;
    let resp = client.response("POST").await;
    assert_eq!(resp.status(), status, "{shown:?} got {}", resp.raw_head);
    assert!(resp.says_close(), "{shown:?}: no connection: close in {}", resp.raw_head);
    assert!(resp.header("content-type").is_some_and(|t| t == "application/json"), "{shown:?}: {}", resp.raw_head);
    assert!(client.closes_within(Duration::from_secs(3)).await, "{shown:?}: the proxy kept the connection open");
    assert!(client.buf.is_empty(), "{shown:?}: bytes after the refusal: {:?}", String::from_utf8_lossy(&client.buf));
    // The refusal is in and the connection closed: anything forwarded was
    // forwarded before that.
    assert_eq!(&tap.heads()[heads..], &[] as &[String], "{shown:?} reached the upstream");
    assert_eq!(tap.connections(), conns, "{shown:?}: the proxy dialled the upstream");
    assert_good_request_works(tap, proxy).await;
}

/// A well-formed request on a new connection reaches the upstream and is answered.
async fn assert_good_request_works(tap: &Tap, proxy: &TestProxy) {
    let before = tap.complete().len();
    let (status, _, body) =
        send(proxy.addr, "POST", "/v1/good", &[("host", "a.local"), ("authorization", "Bearer client-key")], "{}")
            .await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let complete = tap.complete();
    assert_eq!(complete.len(), before + 1);
    assert!(complete[before].0.starts_with("POST /v1/good HTTP/1.1\r\n"));
    assert_eq!(complete[before].1, b"{}");
}

fn post(fields: &str, body: &str) -> Vec<u8> {
    format!("POST /v1/chat/completions HTTP/1.1\r\n{AUTH}{fields}\r\n{body}").into_bytes()
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_400() {
    let (tap, proxy) = setup().await;
    for fields in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
    ] {
        assert_refused(&tap, &proxy, &post(fields, "0\r\n\r\n"), 400).await;
    }
}

#[tokio::test]
async fn conflicting_content_lengths_are_400() {
    let (tap, proxy) = setup().await;
    for fields in [
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: 5, 6\r\n",
        "Content-Length: 5\r\nContent-Length: 5, 7\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: 0x5\r\n",
        "Content_Length: 5\r\n",
    ] {
        assert_refused(&tap, &proxy, &post(fields, "hello!"), 400).await;
    }
}

#[tokio::test]
async fn unsupported_transfer_codings_are_400_or_501() {
    let (tap, proxy) = setup().await;
    // The final coding is not chunked: the length cannot be known (RFC 9112 §6.3).
    for fields in [
        "Transfer-Encoding: gzip\r\n",
        "Transfer-Encoding: chunked, gzip\r\n",
        "Transfer-Encoding: xchunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked;x=1\r\n",
        "Transfer-Encoding:\r\n",
    ] {
        assert_refused(&tap, &proxy, &post(fields, "5\r\nhello\r\n0\r\n\r\n"), 400).await;
    }
    // Chunked last after a coding the proxy does not implement.
    for fields in ["Transfer-Encoding: gzip, chunked\r\n", "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"]
    {
        assert_refused(&tap, &proxy, &post(fields, "5\r\nhello\r\n0\r\n\r\n"), 501).await;
    }
    // Transfer-Encoding in HTTP/1.0 is faulty framing.
    let old = b"POST /v1/chat/completions HTTP/1.0\r\nHost: a.local\r\nAuthorization: Bearer client-key\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_refused(&tap, &proxy, old, 400).await;
}

#[tokio::test]
async fn obs_fold_and_bare_line_feeds_are_400() {
    let (tap, proxy) = setup().await;
    let cases: [&[u8]; 6] = [
        b"GET /v1/models HTTP/1.1\r\nHost: a.local\r\nAuthorization: Bearer client-key\r\nX-Long: a\r\n b\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: a.local\r\nAuthorization: Bearer client-key\r\nX-Long: a\r\n\tb\r\n\r\n",
        b"GET /v1/models HTTP/1.1\nHost: a.local\nAuthorization: Bearer client-key\n\n",
        b"GET /v1/models HTTP/1.1\r\nHost: a.local\nAuthorization: Bearer client-key\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: a.local\r\nAuthorization: Bearer client-key\r\n\n",
        b"GET /v1/models HTTP/1.1\r\nHost: a.local\rAuthorization: Bearer client-key\r\n\r\n",
    ];
    for case in cases {
        assert_refused(&tap, &proxy, case, 400).await;
    }
}

#[tokio::test]
async fn missing_or_duplicate_host_is_400() {
    let (tap, proxy) = setup().await;
    let cases: [&[u8]; 3] = [
        b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer client-key\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: a.local\r\nHost: a.local\r\nAuthorization: Bearer client-key\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: a.local@evil\r\nAuthorization: Bearer client-key\r\n\r\n",
    ];
    for case in cases {
        assert_refused(&tap, &proxy, case, 400).await;
    }
}

#[tokio::test]
async fn oversized_heads_are_431_and_long_request_lines_414() {
    let (tap, proxy) = setup().await;
    // Fields push the head past http_max_header_size (1024).
    let big_field = format!("GET /v1/models HTTP/1.1\r\n{AUTH}X-Big: {}\r\n\r\n", "a".repeat(1100));
    assert_refused(&tap, &proxy, big_field.as_bytes(), 431).await;
    let many_fields: String = (0..100).map(|i| format!("X-F{i}: value\r\n")).collect();
    let many = format!("GET /v1/models HTTP/1.1\r\n{AUTH}{many_fields}\r\n");
    assert_refused(&tap, &proxy, many.as_bytes(), 431).await;
    // A head just under the limit still passes.
    let fits = format!("GET /v1/models HTTP/1.1\r\n{AUTH}X-Big: {}\r\n\r\n", "a".repeat(900));
    assert!(fits.len() < 1024);
    let mut client = Wire::connect(proxy.addr).await;
    client.write(fits.as_bytes()).await;
    assert_eq!(client.response("GET").await.status(), 200);
    // The request line alone is longer than the limit: 414 (the limit is on
    // the whole head, and a start line that cannot fit in it is a long URI).
    let long_line = format!("GET /v1/models?q={} HTTP/1.1\r\n{AUTH}\r\n", "a".repeat(1100));
    assert_refused(&tap, &proxy, long_line.as_bytes(), 414).await;
}

#[tokio::test]
async fn cl_te_smuggling_reaches_no_upstream() {
    let (tap, proxy) = setup().await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a.local\r\nAuthorization: Bearer client-key\r\n\r\n";
    // A front end using Content-Length and a back end using chunked would
    // see the second request as a new one.
    let body = format!("0\r\n\r\n{smuggled}");
    let fields = [
        format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", body.len()),
        format!("Content-Length: {}\r\nTransfer-Encoding : chunked\r\n", body.len()),
        format!("Content-Length: {}\r\nTransfer-Encoding:\tchunked\r\n", body.len()),
        format!("Content-Length: {}\r\nTransfer_Encoding: chunked\r\n", body.len()),
        format!("Content-Length: {}\r\nX: y\r\n Transfer-Encoding: chunked\r\n", body.len()),
        format!("Content-Length: {}\r\nTransfer-Encoding: identity, chunked\r\n", body.len()),
    ];
    for f in &fields {
        // Content-Length with any Transfer-Encoding is refused before the codings are read.
        assert_refused(&tap, &proxy, &post(f, &body), 400).await;
    }
    assert!(!tap.heads().iter().any(|h| h.contains("/smuggled")));
}

#[tokio::test]
async fn te_cl_smuggling_reaches_no_upstream() {
    let (tap, proxy) = setup().await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a.local\r\nAuthorization: Bearer client-key\r\n\r\n";
    // A front end using chunked and a back end using Content-Length would
    // see the chunk's data as a new request.
    let body = format!("{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len());
    for f in [
        "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 4\r\nContent-Length: 4\r\n",
        "Transfer-Encoding: chunked\r\ncontent-length: 4\r\n",
    ] {
        assert_refused(&tap, &proxy, &post(f, &body), 400).await;
    }
    assert!(!tap.heads().iter().any(|h| h.contains("/smuggled")));

    // Without the conflicting length the proxy re-frames the body itself: the
    // upstream gets one request carrying the would-be request as data.
    let before = tap.complete().len();
    let mut client = Wire::connect(proxy.addr).await;
    client.write(&post("Transfer-Encoding: chunked\r\n", &body)).await;
    let resp = client.response("POST").await;
    assert_eq!(resp.status(), 200, "{}", resp.raw_head);
    // The tap records a request before it answers it, so the 200 means it is in.
    let complete = tap.complete();
    assert_eq!(complete.len(), before + 1, "upstream saw more than one request");
    let (head, data) = &complete[before];
    assert!(head.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"), "{head}");
    assert_eq!(data, smuggled.as_bytes());
    assert!(!tap.heads().iter().any(|h| h.contains("/smuggled")));
}

/// Chunked bodies whose framing breaks after the head was accepted.
const BAD_CHUNKS: [&str; 5] = [
    "zz\r\nhello\r\n0\r\n\r\n",
    "-1\r\nhello\r\n0\r\n\r\n",
    "10000000000000005\r\nhello\r\n0\r\n\r\n",
    "5\r\nhello\r\nzz\r\n0\r\n\r\n",
    "5\r\nhelloXX0\r\n\r\n",
];

#[tokio::test]
async fn invalid_chunk_sizes_never_make_a_complete_upstream_request() {
    let (tap, proxy) = setup().await;
    for chunks in BAD_CHUNKS {
        let before = tap.complete().len();
        let mut client = Wire::connect(proxy.addr).await;
        let _ = client.stream.write_all(&post("Transfer-Encoding: chunked\r\n", chunks)).await;
        // Whatever the client sees, it must not be the upstream's 200.
        let closed = client.closes_within(Duration::from_secs(1)).await;
        let answer = String::from_utf8_lossy(&client.buf).into_owned();
        assert!(!answer.contains(" 200 "), "{chunks:?}: {answer}");
        assert!(closed || answer.is_empty() || answer.starts_with("HTTP/1.1 400 "), "{chunks:?}: {answer}");
        assert_eq!(tap.complete().len(), before, "{chunks:?}: the upstream got a complete request");
        drop(client);
        assert_good_request_works(&tap, &proxy).await;
    }
}

#[tokio::test]
async fn invalid_chunk_sizes_get_400_and_close() {
    let (tap, proxy) = setup().await;
    for chunks in BAD_CHUNKS {
        let mut client = Wire::connect(proxy.addr).await;
        let _ = client.stream.write_all(&post("Transfer-Encoding: chunked\r\n", chunks)).await;
        let resp = client.response("POST").await;
        assert_eq!(resp.status(), 400, "{chunks:?}: {}", resp.raw_head);
        assert!(resp.says_close(), "{chunks:?}: {}", resp.raw_head);
        assert!(client.closes_within(Duration::from_secs(3)).await, "{chunks:?}: not closed");
        assert_good_request_works(&tap, &proxy).await;
    }
}
