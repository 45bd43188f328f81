//! Streaming through the real binary: SSE events pass one by one, large
//! uploads and downloads move in bounded memory, and a slow reader holds up
//! nobody else.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Mutex};

use crate::support::wire::Wire;
use crate::support::*;

/// Route host and client credentials every good request carries.
const AUTH: &str = "Host: a.local\r\nAuthorization: Bearer client-key\r\n";

/// Size of the large transfers.
const BIG: u64 = 256 * 1024 * 1024;
/// The proxy's peak RSS must stay below this while moving `BIG` bytes.
const RSS_LIMIT_KIB: u64 = 64 * 1024;
const BLOCK: usize = 64 * 1024;

fn config(upstream: u16) -> String {
    one_provider("openai", "a.local", upstream, "")
}

/// One block of the large bodies; the stream is this block repeated.
fn block() -> Vec<u8> {
    (0..BLOCK).map(|i| (i * 7 + i / 509) as u8).collect()
}

/// Checks that `data`, found at offset `pos` of the stream, is the repeated block.
fn check_stream(block: &[u8], pos: u64, data: &[u8]) {
    let mut pos = pos;
    let mut data = data;
    while !data.is_empty() {
        let off = (pos % block.len() as u64) as usize;
        let n = (block.len() - off).min(data.len());
        assert!(data[..n] == block[off..off + n], "stream differs at byte {pos}");
        pos += n as u64;
        data = &data[n..];
    }
}

/// Reads exactly `len` body bytes from `w` (what is buffered first), checking
/// them against the repeated block; returns how many arrived before EOF.
async fn drain_checked(w: &mut Wire, len: u64, block: &[u8]) -> u64 {
    let mut got = 0u64;
    let buffered = std::mem::take(&mut w.buf);
    let take = buffered.len().min(len as usize);
    check_stream(block, 0, &buffered[..take]);
    got += take as u64;
    let mut chunk = vec![0u8; 256 * 1024];
    while got < len {
        let want = chunk.len().min((len - got) as usize);
        let n = match tokio::time::timeout(Duration::from_secs(30), w.stream.read(&mut chunk[..want])).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
            Err(_) => panic!("body stalled after {got} bytes"),
        };
        check_stream(block, got, &chunk[..n]);
        got += n as u64;
    }
    got
}

/// An SSE upstream that sends event 1, waits until the test says go, then
/// sends event 2 and the end. `chunked` picks the upstream framing;
/// otherwise the stream is delimited by closing the connection.
async fn sse_upstream(chunked: bool, go: mpsc::Receiver<()>, second_sent: Arc<AtomicBool>) -> RawUpstream {
    let go = Arc::new(Mutex::new(go));
    RawUpstream::start(move |stream| {
        let (go, second_sent) = (go.clone(), second_sent.clone());
        async move {
            let mut w = Wire::patient(stream);
            if w.request().await.is_none() {
                return;
            }
            let framing = if chunked { "Transfer-Encoding: chunked\r\n" } else { "" };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n{framing}\r\n"
            );
            w.write(head.as_bytes()).await;
            let event = |data: &str| {
                if chunked {
                    format!("{:x}\r\n{data}\r\n", data.len())
                } else {
                    data.to_string()
                }
            };
            w.write(event(EVENT_1).as_bytes()).await;
            if go.lock().await.recv().await.is_none() {
                return;
            }
            second_sent.store(true, Ordering::SeqCst);
            w.write(event(EVENT_2).as_bytes()).await;
            w.write(event(DONE).as_bytes()).await;
            if chunked {
                w.write(b"0\r\n\r\n").await;
            }
        }
    })
    .await
}

const EVENT_1: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n";
const EVENT_2: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n";
const DONE: &str = "data: [DONE]\n\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_reach_the_client_as_they_are_sent() {
    for chunked in [true, false] {
        let (go_tx, go_rx) = mpsc::channel(1);
        let second_sent = Arc::new(AtomicBool::new(false));
        let up = sse_upstream(chunked, go_rx, second_sent.clone()).await;
        let proxy = TestProxy::start(&config(up.port()));
        let mut client = Wire::connect(proxy.addr).await;
        let body = r#"{"model":"m","stream":true}"#;
        client
            .write(
                format!(
                    "POST /v1/chat/completions HTTP/1.1\r\n{AUTH}Content-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await;
        let head = client.head().await.expect("no response head");
        assert_eq!(head.status(), 200, "{}", head.raw_head);
        assert_eq!(head.header("content-type"), Some("text/event-stream"));
        assert_eq!(head.header("transfer-encoding"), Some("chunked"), "{}", head.raw_head);
        // Event 1 arrives while the upstream is still holding event 2 back.
        let mut trailers = Vec::new();
        let mut got = Vec::new();
        while got.len() < EVENT_1.len() {
            let data = client.chunk(&mut trailers).await.expect("stream ended before event 1");
            got.extend_from_slice(&data);
        }
        assert_eq!(String::from_utf8_lossy(&got), EVENT_1, "chunked upstream: {chunked}");
        assert!(!second_sent.load(Ordering::SeqCst));
        go_tx.send(()).await.unwrap();
        while let Some(data) = client.chunk(&mut trailers).await {
            got.extend_from_slice(&data);
        }
        assert!(second_sent.load(Ordering::SeqCst));
        assert_eq!(String::from_utf8_lossy(&got), format!("{EVENT_1}{EVENT_2}{DONE}"), "chunked upstream: {chunked}");
        assert!(client.buf.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_streams_through_in_bounded_memory() {
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let up = RawUpstream::start(move |stream| {
        let counter = counter.clone();
        async move {
            let mut w = Wire::patient(stream);
            let Some(head) = w.head().await else { return };
            let len: u64 =
                head.header("content-length").expect("upload forwarded without content-length").parse().unwrap();
            w.limit = Duration::from_secs(30);
            let got = drain_checked(&mut w, len, &block()).await;
            counter.store(got, Ordering::SeqCst);
            let body = got.to_string();
            let out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            w.write(out.as_bytes()).await;
        }
    })
    .await;
    let proxy = TestProxy::start(&config(up.port()));
    let started = Instant::now();
    let mut client = Wire::connect(proxy.addr).await;
    client
        .write(
            format!(
                "POST /v1/files HTTP/1.1\r\n{AUTH}Content-Type: application/octet-stream\r\nContent-Length: {BIG}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    let data = block();
    let mut sent = 0u64;
    while sent < BIG {
        client.write(&data).await;
        sent += data.len() as u64;
    }
    let resp = client.response("POST").await;
    let took = started.elapsed();
    assert_eq!(resp.status(), 200, "{}", resp.raw_head);
    assert_eq!(resp.body_str(), BIG.to_string());
    assert_eq!(received.load(Ordering::SeqCst), BIG);
    let rss = proxy.peak_rss_kib();
    assert!(rss < RSS_LIMIT_KIB, "proxy peak RSS {rss} KiB for a {BIG}-byte upload");
    eprintln!("upload of {BIG} bytes took {took:?}, proxy peak RSS {rss} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_streams_through_in_bounded_memory() {
    let up = RawUpstream::start(|stream| async move {
        let mut w = Wire::patient(stream);
        while w.request().await.is_some() {
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {BIG}\r\n\r\n");
            w.write(head.as_bytes()).await;
            let data = block();
            let mut sent = 0u64;
            while sent < BIG {
                if w.stream.write_all(&data).await.is_err() {
                    return;
                }
                sent += data.len() as u64;
            }
        }
    })
    .await;
    let proxy = TestProxy::start(&config(up.port()));
    let started = Instant::now();
    let mut client = Wire::connect(proxy.addr).await;
    client.write(format!("GET /v1/files/big/content HTTP/1.1\r\n{AUTH}\r\n").as_bytes()).await;
    let head = client.head().await.expect("no response head");
    assert_eq!(head.status(), 200, "{}", head.raw_head);
    assert_eq!(head.header("content-length"), Some(BIG.to_string().as_str()));
    let got = drain_checked(&mut client, BIG, &block()).await;
    let took = started.elapsed();
    assert_eq!(got, BIG);
    let rss = proxy.peak_rss_kib();
    assert!(rss < RSS_LIMIT_KIB, "proxy peak RSS {rss} KiB for a {BIG}-byte download");
    eprintln!("download of {BIG} bytes took {took:?}, proxy peak RSS {rss} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_does_not_hold_up_other_clients() {
    const SLOW_BODY: u64 = 64 * 1024 * 1024;
    let up = RawUpstream::start(|stream| async move {
        let mut w = Wire::patient(stream);
        while let Some(req) = w.request().await {
            if req.target() != "/v1/big" {
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsmall").await;
                continue;
            }
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {SLOW_BODY}\r\n\r\n");
            w.write(head.as_bytes()).await;
            let data = block();
            let mut sent = 0u64;
            while sent < SLOW_BODY {
                if w.stream.write_all(&data).await.is_err() {
                    return;
                }
                sent += data.len() as u64;
            }
        }
    })
    .await;
    let proxy = TestProxy::start(&config(up.port()));
    let mut slow = Wire::connect(proxy.addr).await;
    slow.write(format!("GET /v1/big HTTP/1.1\r\n{AUTH}\r\n").as_bytes()).await;
    let head = slow.head().await.expect("no head for the slow client");
    assert_eq!(head.status(), 200);
    // The slow client trickles: 4 KiB every 50 ms, in the background. (The
    // pauses are the slow reader being scripted, not a wait.)
    let reader = tokio::spawn(async move {
        let mut chunk = [0u8; 4096];
        let mut total = slow.buf.len() as u64;
        loop {
            match slow.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n as u64,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // A head start for the slow reader, so its back-pressure is in force
    // before the others come. Not a wait for an event: how soon every buffer
    // between the upstream and the slow reader is full depends on the kernel
    // (receive buffers here autotune up to 32 MiB), and nothing reports it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile others are served promptly, one after another and in parallel.
    for i in 0..10 {
        let (status, _, body) = tokio::time::timeout(
            Duration::from_secs(5),
            send(
                proxy.addr,
                "GET",
                &format!("/v1/small?i={i}"),
                &[("host", "a.local"), ("authorization", "Bearer client-key")],
                "",
            ),
        )
        .await
        .expect("a fast client waited behind the slow one");
        assert_eq!((status, body.as_str()), (200, "small"));
    }
    let parallel: Vec<_> = (0..10)
        .map(|i| {
            let addr = proxy.addr;
            tokio::spawn(async move {
                send(
                    addr,
                    "POST",
                    &format!("/v1/small?p={i}"),
                    &[("host", "a.local"), ("authorization", "Bearer client-key")],
                    "{}",
                )
                .await
            })
        })
        .collect();
    for task in parallel {
        let (status, _, body) = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("a parallel client waited behind the slow one")
            .unwrap();
        assert_eq!((status, body.as_str()), (200, "small"));
    }
    assert!(!reader.is_finished(), "the slow download ended early");
    // Back-pressure: the slow download is not buffered in the proxy.
    let rss = proxy.peak_rss_kib();
    assert!(rss < RSS_LIMIT_KIB, "proxy peak RSS {rss} KiB behind a slow reader");
    reader.abort();
}
