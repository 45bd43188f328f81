//! Timeouts from config, short: a stalled upstream answers 504 in time, a
//! stream that stalls or breaks after its head is cut so the client can tell
//! (per framing and protocol), and stalled or idle clients are let go.

use std::time::{Duration, Instant};

use crate::support::tls::*;
use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const AUTH: (&str, &str) = ("authorization", "Bearer client-key");

/// An upstream that reads a request head, writes `prefix`, then either holds
/// the connection open forever (`close: false`) or closes it.
async fn stalling_upstream(prefix: &'static [u8], close: bool) -> RawUpstream {
    RawUpstream::start(move |mut stream| async move {
        read_head(&mut stream).await;
        let _ = stream.write_all(prefix).await;
        if !close {
            std::future::pending::<()>().await;
        }
    })
    .await
}

fn elapsed_within(started: Instant, low: f64, high: f64) {
    let secs = started.elapsed().as_secs_f64();
    assert!((low..high).contains(&secs), "took {secs:.2} s, expected {low}..{high}");
}

#[tokio::test]
async fn no_head_within_first_byte_timeout_is_a_504_in_the_provider_shape() {
    let up = stalling_upstream(b"", false).await;
    // The provider's own value overrides the top level's.
    let extra = "    first_byte_timeout: 0.3\nfirst_byte_timeout: 30\n";
    let proxy = TestProxy::start(&one_provider("openai", "h.local", up.port(), extra));
    let started = Instant::now();
    let (status, _, body) = send(proxy.addr, "POST", "/v1/chat", &[("host", "h.local"), AUTH], "{}").await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains(r#""code":"upstream_timeout""#) && body.contains("no response head"), "{body}");
    elapsed_within(started, 0.3, 3.0);
}

/// The raw bytes a client gets for one request, until the proxy closes.
async fn raw_response(proxy: &TestProxy) -> (String, Instant) {
    let started = Instant::now();
    let request = b"GET /v1/stream HTTP/1.1\r\nHost: h.local\r\nAuthorization: Bearer client-key\r\n\r\n";
    (raw_exchange(proxy.addr, request, Duration::from_secs(10)).await, started)
}

#[tokio::test]
async fn a_chunked_stream_that_stalls_or_breaks_ends_without_its_last_chunk() {
    let head =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n6\r\ndata:1\r\n";
    for close in [false, true] {
        let up = stalling_upstream(head, close).await;
        let proxy = TestProxy::start(&one_provider("openai", "h.local", up.port(), "stream_idle_timeout: 0.3\n"));
        let (resp, started) = raw_response(&proxy).await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n") && resp.contains("data:1"), "{resp}");
        assert!(resp.contains("x-accel-buffering: no\r\n"), "SSE answers ask front proxies not to buffer: {resp}");
        assert!(!resp.ends_with("0\r\n\r\n"), "a cut stream must not look complete (close={close}): {resp:?}");
        if !close {
            elapsed_within(started, 0.3, 5.0);
        }
    }
}

#[tokio::test]
async fn a_length_delimited_body_that_stalls_or_breaks_closes_short() {
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789";
    for close in [false, true] {
        let up = stalling_upstream(head, close).await;
        let proxy = TestProxy::start(&one_provider("openai", "h.local", up.port(), "stream_idle_timeout: 0.3\n"));
        let (resp, started) = raw_response(&proxy).await;
        let (head, body) = resp.split_once("\r\n\r\n").expect("a head");
        assert!(head.contains("content-length: 100"), "{head}");
        assert_eq!(body, "0123456789", "the client gets what came, then a close (close={close})");
        if !close {
            elapsed_within(started, 0.3, 5.0);
        }
    }
}

/// An HTTP/2 client on the proxy's TLS port, with the raw h2 crate so stream
/// resets are visible as such.
async fn h2_over_tls(proxy: &TestProxy, ca: &TestCa) -> h2::client::SendRequest<bytes::Bytes> {
    let tls = tls_connect(proxy.addr, ca.client_config(&[b"h2"])).await;
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    send.ready().await.unwrap()
}

fn https_one_provider(dir: &std::path::Path, ca: &TestCa, upstream: u16, top: &str) -> String {
    let (_, cert, key) = ca.write(dir);
    format!(
        "https_port: {{port}}\nhttps_bind_address: 127.0.0.1\ncert_file: {}\nprivate_key_file: {}\nauth_keys: [client-key]\n{top}providers:\n  - type: openai\n    host: localhost\n    endpoint: \"127.0.0.1:{upstream}\"\n    tls: false\n    api_key: real-key\n",
        cert.display(),
        key.display()
    )
}

fn h2_get() -> http::Request<()> {
    http::Request::get("https://localhost/v1/stream").header("authorization", "Bearer client-key").body(()).unwrap()
}

#[tokio::test]
async fn over_http2_a_stalled_head_is_504_and_a_stalled_stream_is_reset() {
    let (ca, dir) = (TestCa::new(), tempfile::tempdir().unwrap());
    let silent = stalling_upstream(b"", false).await;
    let top = "first_byte_timeout: 0.3\nstream_idle_timeout: 0.3\n";
    let proxy = TestProxy::start(&https_one_provider(dir.path(), &ca, silent.port(), top));
    let mut send = h2_over_tls(&proxy, &ca).await;
    let started = Instant::now();
    let (response, _) = send.send_request(h2_get(), true).unwrap();
    assert_eq!(response.await.unwrap().status(), 504);
    elapsed_within(started, 0.3, 3.0);

    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\ndata:1\r\n";
    for close in [false, true] {
        let up = stalling_upstream(head, close).await;
        let dir = tempfile::tempdir().unwrap();
        let proxy = TestProxy::start(&https_one_provider(dir.path(), &ca, up.port(), top));
        let mut send = h2_over_tls(&proxy, &ca).await;
        let (response, _) = send.send_request(h2_get(), true).unwrap();
        // A reset drops what was still queued for the stream, so when the
        // upstream breaks at once the head itself may never leave; what counts
        // is that the stream ends in a reset, never in END_STREAM.
        let mut got = Vec::new();
        let err = match response.await {
            Err(err) if close => err,
            response => {
                let mut body = response.unwrap().into_body();
                loop {
                    match body.data().await.expect("a reset, not a clean end") {
                        Ok(data) => got.extend_from_slice(&data),
                        Err(err) => break err,
                    }
                }
            }
        };
        assert!(b"data:1".starts_with(&got), "close={close}: {got:?}");
        if !close {
            assert_eq!(got, b"data:1", "what came before the stall reached the client");
        }
        assert_eq!(err.reason(), Some(h2::Reason::INTERNAL_ERROR), "close={close}: {err}");
    }
}

#[tokio::test]
async fn a_request_body_that_stalls_is_abandoned_and_its_upstream_freed() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let up = RawUpstream::start(move |mut stream| {
        let tx = tx.clone();
        async move {
            read_head(&mut stream).await;
            // Read what comes until the proxy lets go of the connection.
            let mut buf = [0u8; 1024];
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            let _ = tx.send(());
        }
    })
    .await;
    let extra = "client_body_timeout: 0.3\n";
    let proxy = TestProxy::start(&one_provider("openai", "h.local", up.port(), extra));
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let head =
        "POST /v1/chat HTTP/1.1\r\nHost: h.local\r\nAuthorization: Bearer client-key\r\nContent-Length: 100\r\n\r\n";
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(b"0123456789").await.unwrap();
    let started = Instant::now();
    let resp = read_until_close(&mut client, Duration::from_secs(10)).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("stalled"), "{resp}");
    elapsed_within(started, 0.3, 5.0);
    tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("the upstream connection was freed");
}

#[tokio::test]
async fn idle_and_slow_clients_are_let_go_as_configured() {
    let up = stalling_upstream(b"", false).await;
    let extra = "client_idle_timeout: 0.3\nclient_header_timeout: 0.3\n";
    let proxy = TestProxy::start(&one_provider("openai", "h.local", up.port(), extra));
    // Clocks start before connecting: the proxy's start no earlier than ours,
    // so the lower bound holds however late this task runs.
    let started = Instant::now();
    let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(read_until_close(&mut idle, Duration::from_secs(10)).await, "");
    elapsed_within(started, 0.3, 5.0);
    let started = Instant::now();
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(b"GET /v1/models HTTP/1.1\r\nHost: h.lo").await.unwrap();
    let resp = read_until_close(&mut slow, Duration::from_secs(10)).await;
    assert!(resp.starts_with("HTTP/1.1 400") && resp.contains("not completed in time"), "{resp}");
    elapsed_within(started, 0.3, 5.0);
}
