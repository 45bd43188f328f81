//! HTTP/1.1 edge cases found in review: HTTP/1.0 persistence, absolute-form
//! targets, unsolicited upgrades and shutdown during a request.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(5);

/// Reads one whole response with a Content-Length body from `stream`.
async fn read_response(stream: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
        let n = tokio::time::timeout(LIMIT, stream.read(&mut buf)).await.expect("response timed out").unwrap();
        if n == 0 {
            return text;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn http10_keep_alive_is_acknowledged_and_honoured() {
    let up = MockUpstream::start("u").await;
    let proxy = TestProxy::start(&one_provider("openai", "h.local", up.port(), ""));
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let request =
        b"GET /v1/a HTTP/1.0\r\nHost: h.local\r\nAuthorization: Bearer client-key\r\nConnection: keep-alive\r\n\r\n";
    for _ in 0..2 {
        stream.write_all(request).await.unwrap();
        let resp = read_response(&mut stream).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.to_ascii_lowercase().contains("connection: keep-alive"), "{resp}");
    }
    assert_eq!(up.recorded().len(), 2);
}

#[tokio::test]
async fn absolute_form_targets() {
    let up = MockUpstream::start("u").await;
    let proxy = TestProxy::start(&one_provider("openai", "h.local", up.port(), ""));
    let resp = raw_exchange(
        proxy.addr,
        b"GET http://h.local?x=1 HTTP/1.1\r\nHost: other.local\r\nAuthorization: Bearer client-key\r\nConnection: close\r\n\r\n",
        LIMIT,
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "the target's authority routes, not Host: {resp}");
    assert_eq!(up.recorded()[0].uri, "/?x=1");
    let resp = raw_exchange(
        proxy.addr,
        b"GET http://user:secret@h.local/v1 HTTP/1.1\r\nHost: h.local\r\nAuthorization: Bearer client-key\r\n\r\n",
        LIMIT,
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(!resp.contains("secret"));
    assert!(!proxy.logs().contains("secret"), "userinfo reached the log");
    assert_eq!(up.recorded().len(), 1);
}

#[tokio::test]
async fn an_unsolicited_upstream_upgrade_is_a_bad_gateway() {
    let up = RawUpstream::start(|mut stream| async move {
        read_head(&mut stream).await;
        let _ = stream
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nraw")
            .await;
        // Keep the socket open (it would be upgraded) until the test ends.
        std::future::pending::<()>().await;
    })
    .await;
    let proxy = TestProxy::start(&one_provider("openai", "h.local", up.port(), ""));
    let (status, _, body) =
        send(proxy.addr, "GET", "/v1/x", &[("host", "h.local"), ("authorization", "Bearer client-key")], "").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("101"), "{body}");
}

#[tokio::test]
async fn a_response_finished_during_shutdown_closes_its_connection() {
    // The upstream reports the request head, then answers only when told to.
    let (head_tx, mut heads) = mpsc::unbounded_channel();
    let answer = Arc::new(Notify::new());
    let go = answer.clone();
    let up = RawUpstream::start(move |mut stream| {
        let (head_tx, go) = (head_tx.clone(), go.clone());
        async move {
            read_head(&mut stream).await;
            let _ = head_tx.send(());
            go.notified().await;
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow").await;
        }
    })
    .await;
    let mut proxy = TestProxy::start(&one_provider("openai", "h.local", up.port(), ""));
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(b"GET /v1/x HTTP/1.1\r\nHost: h.local\r\nAuthorization: Bearer client-key\r\n\r\n").await.unwrap();
    tokio::time::timeout(LIMIT, heads.recv()).await.expect("the request never reached the upstream");
    proxy.signal("TERM");
    // The listener closes once shutdown is signalled: from then on the
    // in-flight request is one that finishes during shutdown.
    proxy.wait_until_refusing(LIMIT).await;
    answer.notify_one();
    let resp = read_response(&mut stream).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "the in-flight request finishes: {resp}");
    assert!(resp.contains("slow"));
    assert!(resp.to_ascii_lowercase().contains("connection: close"), "{resp}");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
}

#[tokio::test]
async fn a_client_that_hangs_up_cancels_its_upstream_request() {
    let (head_tx, mut heads) = mpsc::unbounded_channel();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let up = RawUpstream::start(move |mut stream| {
        let (head_tx, tx) = (head_tx.clone(), tx.clone());
        async move {
            read_head(&mut stream).await;
            let _ = head_tx.send(());
            // Think for a long time; report whether the proxy hung up on us first.
            let mut byte = [0u8; 1];
            let hung_up = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await;
            let _ = tx.send(matches!(hung_up, Ok(Ok(0)) | Ok(Err(_))));
        }
    })
    .await;
    let proxy = TestProxy::start(&one_provider("openai", "h.local", up.port(), ""));
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: h.local\r\nAuthorization: Bearer client-key\r\nContent-Length: 2\r\n\r\n{}").await.unwrap();
    // Hang up once the request is upstream.
    tokio::time::timeout(LIMIT, heads.recv()).await.expect("the request never reached the upstream");
    drop(client);
    let cancelled = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await;
    assert_eq!(cancelled.ok().flatten(), Some(true), "the upstream request outlived its client");
    wait_for_log(&proxy, "status=499", Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_success_keeps_the_upload_going() {
    const SIZE: usize = 200_000;
    // Answers 200 at once (and says so), then reads the whole upload and reports its size.
    let (answered_tx, mut answered) = mpsc::unbounded_channel();
    let up = RawUpstream::start(move |mut stream| {
        let answered_tx = answered_tx.clone();
        async move {
            let head = read_head(&mut stream).await;
            stream.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").await.unwrap();
            let _ = answered_tx.send(());
            let mut got = head.split("\r\n\r\n").nth(1).map_or(0, str::len);
            let mut buf = vec![0u8; 64 * 1024];
            while got < SIZE {
                let n = stream.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got += n;
            }
            let report = format!("received {got}");
            let _ = stream.write_all(format!("{:x}\r\n{report}\r\n0\r\n\r\n", report.len()).as_bytes()).await;
        }
    })
    .await;
    let proxy = TestProxy::start(&one_provider("openai", "h.local", up.port(), ""));
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!("POST /v1/stream HTTP/1.1\r\nHost: h.local\r\nAuthorization: Bearer client-key\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n");
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(&[b'a'; 1000]).await.unwrap();
    // The rest of the upload does not exist until the upstream's 200 is on
    // its way to the proxy. (The proxy relays that 200 only once the upload
    // is done, so the client itself cannot see it early.)
    tokio::time::timeout(LIMIT, answered.recv()).await.expect("the upstream never got the request");
    client.write_all(&vec![b'b'; SIZE - 1000]).await.unwrap();
    let resp = read_until_close(&mut client, LIMIT).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains(&format!("received {SIZE}")), "the upload was cut short: {resp}");
}

#[tokio::test]
async fn a_client_that_half_closes_after_the_answer_began_still_gets_all_of_it() {
    // The upstream sends the tail only after the client has half-closed.
    let half_closed = Arc::new(Notify::new());
    let go = half_closed.clone();
    let up = RawUpstream::start(move |mut stream| {
        let go = go.clone();
        async move {
            read_head(&mut stream).await;
            stream.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n").await.unwrap();
            go.notified().await;
            // Nothing outside the proxy shows that it has read the client's EOF;
            // this pause gives it the time to, so the tail meets a half-closed
            // client rather than racing the FIN. The test passes either way,
            // but only exercises the half-close when the EOF is read first.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = stream.write_all(b"4\r\nlast\r\n0\r\n\r\n").await;
        }
    })
    .await;
    let proxy = TestProxy::start(&one_provider("openai", "h.local", up.port(), ""));
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(
            b"GET /v1/x HTTP/1.1\r\nHost: h.local\r\nAuthorization: Bearer client-key\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("first") {
        let n = tokio::time::timeout(LIMIT, client.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    client.shutdown().await.unwrap(); // half-close: done sending, still reading
    half_closed.notify_one();
    let rest = read_until_close(&mut client, LIMIT).await;
    assert!(rest.contains("last") && rest.ends_with("0\r\n\r\n"), "the tail was lost: {rest}");
}
