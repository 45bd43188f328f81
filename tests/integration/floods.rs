//! Adversarial floods against the real binary, each with the proxy's memory
//! measured: idle connections, slowloris heads and bodies, huge heads over
//! HTTP/1.1; SETTINGS, PING, HEADERS, CONTINUATION and RST_STREAM floods,
//! oversized and HPACK-expanded header lists, and window-starved streams over
//! HTTP/2 (frames written by hand, see `support::frames`). Each flood gets
//! its answer (a status, a GOAWAY, a close), reaches no upstream it should
//! not, leaves the proxy serving, and keeps the proxy's resident memory under
//! a stated bound. The figures are printed: `--nocapture` shows them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::frames::{self, *};
use crate::support::tls::*;
use crate::support::*;

/// The proxy's resident memory around one flood.
struct Rss<'a> {
    name: &'static str,
    proxy: &'a TestProxy,
    before: u64,
}

impl<'a> Rss<'a> {
    fn before(name: &'static str, proxy: &'a TestProxy) -> Self {
        Rss { name, proxy, before: proxy.rss_kib() }
    }

    /// Prints the figures, and checks that the peak stayed within `bound_kib`
    /// of where it started. The proxy is fresh for each flood, so its
    /// lifetime peak (VmHWM) is this flood's.
    fn check(self, bound_kib: u64) {
        let (peak, after) = (self.proxy.peak_rss_kib(), self.proxy.rss_kib());
        eprintln!(
            "flood {}: rss before {} KiB, peak {peak} KiB, after {after} KiB (bound: peak <= before + {bound_kib} KiB)",
            self.name, self.before
        );
        assert!(
            peak <= self.before + bound_kib,
            "flood {}: peak RSS {peak} KiB grew more than {bound_kib} KiB over {} KiB",
            self.name,
            self.before
        );
    }
}

/// Waits (bounded) until `ready` holds, checking every 20 ms.
async fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn http_proxy(upstream: u16, extra: &str) -> TestProxy {
    TestProxy::start(&one_provider("openai", "h.local", upstream, extra))
}

async fn h1_status(proxy: &TestProxy) -> u16 {
    let headers = [("host", "h.local"), ("authorization", "Bearer client-key")];
    send(proxy.addr, "GET", "/v1/models", &headers, "").await.0
}

/// A proxy serving HTTPS (h2 by ALPN) for `localhost` in front of `upstream`.
struct Https {
    ca: TestCa,
    _dir: tempfile::TempDir,
    proxy: TestProxy,
}

fn https_proxy(upstream: u16, extra: &str) -> Https {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = ca.write(dir.path());
    let yaml = format!(
        "https_port: {{port}}\nhttps_bind_address: 127.0.0.1\ncert_file: {}\nprivate_key_file: {}\nauth_keys: [client-key]\n{extra}providers:\n  - type: openai\n    host: localhost\n    endpoint: \"127.0.0.1:{upstream}\"\n    tls: false\n    api_key: real-key\n",
        cert.display(),
        key.display()
    );
    let proxy = TestProxy::start(&yaml);
    Https { ca, _dir: dir, proxy }
}

impl Https {
    /// The status of an ordinary GET on a new HTTP/2 connection.
    async fn h2_status(&self) -> u16 {
        let mut client = h2_client(self.proxy.addr, &self.ca).await;
        let req = hyper::Request::builder()
            .uri("https://localhost/v1/models")
            .header("authorization", "Bearer client-key")
            .body(TestBody::empty())
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), client.send_request(req)).await;
        status.expect("no answer in time").unwrap().status().as_u16()
    }
}

/// A raw client: sends `burst` at once, then one byte of `drip` every `each`,
/// then nothing; reads until the proxy closes. Returns what it read and when
/// the close came, counted from the connect.
async fn trickle(addr: std::net::SocketAddr, burst: Vec<u8>, drip: Vec<u8>, each: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&burst).await.unwrap();
    let mut ticks = tokio::time::interval(each);
    let mut drip = drip.into_iter();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut writing = true;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    // An answer means the proxy is done with us: writing more
                    // would only provoke a reset that could hide the answer.
                    writing = false;
                    got.extend_from_slice(&buf[..n]);
                }
            },
            _ = ticks.tick(), if writing => match drip.next() {
                Some(byte) => writing = stream.write_all(&[byte]).await.is_ok(),
                None => writing = false,
            },
            _ = tokio::time::sleep_until(deadline) => panic!("the proxy kept a trickling client for 20 s"),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cost_little_each() {
    const CONNS: usize = 2000;
    let up = MockUpstream::start("ok").await;
    let proxy = http_proxy(up.port(), "client_idle_timeout: 60\n");
    let rss = Rss::before("2000 idle TCP connections", &proxy);
    let fds = proxy.open_fds();
    let mut idle = Vec::with_capacity(CONNS);
    // In batches the accept queue holds: a connect completes in the kernel,
    // and one that finds the queue full is dropped by it later (the client
    // never knows), so each batch waits until the proxy took it (it holds a
    // descriptor for each).
    for _ in 0..CONNS / 250 {
        for _ in 0..250 {
            idle.push(TcpStream::connect(proxy.addr).await.unwrap());
        }
        // Less two: the count before may still hold the start-up probe's connection.
        let want = fds + idle.len() - 2;
        wait_until("the proxy took every connection", Duration::from_secs(10), || proxy.open_fds() >= want).await;
    }
    let held = proxy.rss_kib();
    assert_eq!(h1_status(&proxy).await, 200, "a request among 2000 idle connections");
    drop(idle);
    wait_until("the proxy let the closed connections go", Duration::from_secs(20), || proxy.open_fds() < fds + 10)
        .await;
    assert_eq!(h1_status(&proxy).await, 200);
    assert_eq!(up.recorded().len(), 2, "only the two ordinary requests were forwarded");
    let each = held.saturating_sub(rss.before) * 1024 / CONNS as u64;
    eprintln!("flood 2000 idle TCP connections: {held} KiB while held, {each} bytes each");
    assert!(each <= 8 * 1024, "an idle connection costs {each} bytes");
    rss.check(24 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_heads_are_cut_off_at_the_header_timeout() {
    const CONNS: usize = 300;
    let up = MockUpstream::start("ok").await;
    let proxy = http_proxy(up.port(), "client_header_timeout: 1\n");
    let rss = Rss::before("300 slowloris heads", &proxy);
    // A head that never ends, one byte every 100 ms.
    let mut head = b"GET /v1/models HTTP/1.1\r\nHost: h.local\r\nX-Slow: ".to_vec();
    head.resize(head.len() + 1000, b'a');
    let clients: Vec<_> = (0..CONNS)
        .map(|_| tokio::spawn(trickle(proxy.addr, Vec::new(), head.clone(), Duration::from_millis(100))))
        .collect();
    for client in clients {
        let (answer, took) = client.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("not completed in time"), "{answer:?}");
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(6), "cut off after {took:?}");
    }
    assert!(up.recorded().is_empty(), "a partial head reached the upstream");
    assert_eq!(h1_status(&proxy).await, 200);
    rss.check(16 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_bodies_live_while_they_trickle_and_end_when_they_stall() {
    const CONNS: usize = 200;
    let up = MockUpstream::start("ok").await;
    let proxy = http_proxy(up.port(), "client_body_timeout: 0.5\n");
    let rss = Rss::before("200 slowloris bodies", &proxy);
    let head =
        b"POST /v1/chat HTTP/1.1\r\nHost: h.local\r\nAuthorization: Bearer client-key\r\nContent-Length: 1000\r\n\r\n";
    // Eight bytes 100 ms apart (under the 0.5 s timeout between reads, 0.8 s
    // in all), then silence: the documented timeout is per read, not a deadline.
    let clients: Vec<_> = (0..CONNS)
        .map(|_| tokio::spawn(trickle(proxy.addr, head.to_vec(), vec![b'x'; 8], Duration::from_millis(100))))
        .collect();
    for client in clients {
        let (answer, took) = client.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("stalled"), "{answer:?}");
        assert!(took >= Duration::from_millis(1000) && took < Duration::from_secs(8), "abandoned after {took:?}");
    }
    // The upload streams: the head went upstream, the cut body never completed.
    assert!(up.recorded().is_empty(), "an abandoned body was delivered whole: {:?}", up.recorded().len());
    eprintln!("flood 200 slowloris bodies: {} upstream connections opened", up.connection_count());
    assert!(up.connection_count() <= CONNS);
    assert_eq!(h1_status(&proxy).await, 200);
    rss.check(24 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_http1_heads_are_refused_without_being_read() {
    const CONNS: usize = 200;
    let up = MockUpstream::start("ok").await;
    let proxy = http_proxy(up.port(), "");
    let rss = Rss::before("200 HTTP/1.1 heads of 1 MiB", &proxy);
    let mut head = b"GET /v1/models HTTP/1.1\r\nHost: h.local\r\nAuthorization: Bearer client-key\r\n".to_vec();
    for i in 0.. {
        if head.len() >= 1 << 20 {
            break;
        }
        head.extend_from_slice(format!("X-Fill-{i}: {}\r\n", "a".repeat(100)).as_bytes());
    }
    let head = Arc::new(head);
    let clients: Vec<_> = (0..CONNS)
        .map(|_| {
            let (addr, head) = (proxy.addr, head.clone());
            tokio::spawn(async move {
                let stream = TcpStream::connect(addr).await.unwrap();
                let (mut rd, mut wr) = stream.into_split();
                // The proxy stops reading long before the end: the write fails or blocks.
                let writer = tokio::spawn(async move { wr.write_all(&head).await.is_ok() });
                let mut answer = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut answer)).await;
                writer.abort();
                String::from_utf8_lossy(&answer).into_owned()
            })
        })
        .collect();
    for client in clients {
        let answer = client.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    }
    assert!(up.recorded().is_empty());
    assert_eq!(h1_status(&proxy).await, 200);
    rss.check(16 * 1024);
}

/// Sends `count` copies of `one` (a SETTINGS or a PING) without reading a
/// thing, then reads every acknowledgement, then uses the connection.
/// Returns how many bytes of the flood went out before the proxy stopped
/// reading, and how many there were.
async fn control_flood(name: &'static str, one: Vec<u8>, count: usize) -> (u64, u64) {
    let up = MockUpstream::start("ok").await;
    let tls = https_proxy(up.port(), "");
    let rss = Rss::before(name, &tls.proxy);
    let (mut rd, mut wr) = frames::connect_tight(tls.proxy.addr, &tls.ca, &[]).await;
    let bytes = one.repeat(count);
    let total = bytes.len() as u64;
    // One writer for the whole flood (a write cut short would split a frame);
    // its progress shows when the proxy stops taking it.
    let progress = Arc::new(AtomicU64::new(0));
    let sent = progress.clone();
    let writer = tokio::spawn(async move {
        for piece in bytes.chunks(16 * 1024) {
            wr.write_all(piece).await.expect("the proxy closed the connection");
            sent.fetch_add(piece.len() as u64, Ordering::SeqCst);
        }
        wr
    });
    let unread = settled(&progress).await;
    eprintln!("flood {name}: {unread} of {total} bytes went out before the proxy stopped reading");
    let kind = one[3];
    let mut acks = 0;
    while acks < count {
        match rd.next(Duration::from_secs(10)).await {
            Read::Frame(f) if f.kind == kind && f.flags & ACK != 0 => acks += 1,
            Read::Frame(f) => assert!(f.kind != GOAWAY, "GOAWAY after {acks} acknowledgements: {f:?}"),
            other => panic!("{other:?} after {acks} of {count} acknowledgements"),
        }
    }
    let mut wr = tokio::time::timeout(Duration::from_secs(10), writer).await.expect("the flood was not taken").unwrap();
    // Each one was acknowledged, and the connection still carries requests.
    wr.write_all(&frames::get(1, "/v1/models")).await.unwrap();
    let (answer, _) = rd.until(Duration::from_secs(10), |f| f.kind == HEADERS).await;
    assert_eq!(answer.last().and_then(Frame::status), Some(200), "{answer:?}");
    assert_eq!(tls.h2_status().await, 200);
    assert_eq!(up.recorded().len(), 2);
    rss.check(16 * 1024);
    (unread, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_flood_is_acknowledged_at_the_readers_pace() {
    let (unread, total) = control_flood("h2 SETTINGS x600000", frames::settings(&[]), 600_000).await;
    // A proxy that kept reading while its acknowledgements piled up would
    // take the whole flood (MBs more than socket buffers hold): it must stop
    // where they are full.
    assert!(unread < total, "the proxy read the whole flood while its answers went unread");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_is_answered_at_the_readers_pace() {
    let pings: Vec<u8> = frames::ping(0x0123_4567_89ab_cdef);
    let (unread, total) = control_flood("h2 PING x400000", pings, 400_000).await;
    assert!(unread < total, "the proxy read the whole flood while its answers went unread");
}

/// An upstream that counts request heads and answers none until released.
struct HoldingUpstream {
    up: RawUpstream,
    arrived: Arc<AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
}

async fn holding_upstream() -> HoldingUpstream {
    let arrived = Arc::new(AtomicUsize::new(0));
    let (release, gate) = tokio::sync::watch::channel(false);
    let count = arrived.clone();
    let up = RawUpstream::start(move |mut stream| {
        let (count, mut gate) = (count.clone(), gate.clone());
        async move {
            loop {
                if read_head(&mut stream).await.is_empty() {
                    return;
                }
                count.fetch_add(1, Ordering::SeqCst);
                let _ = gate.wait_for(|open| *open).await;
                if stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    HoldingUpstream { up, arrived, release }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_flood_past_the_stream_limit_is_refused() {
    const LIMIT: usize = 256;
    const EXTRA: usize = 700;
    let up = holding_upstream().await;
    let tls = https_proxy(up.up.port(), "");
    let rss = Rss::before("h2 HEADERS x956 (256 allowed at once)", &tls.proxy);
    let (mut rd, mut wr) = frames::connect(tls.proxy.addr, &tls.ca, &[]).await;
    let opens: Vec<u8> = (0..LIMIT + EXTRA).flat_map(|i| frames::get(2 * i as u32 + 1, "/v1/held")).collect();
    assert!(!flood(&mut wr, &opens, 1, Duration::from_secs(5)).await.broken);
    let (refusals, closed) = rd
        .until(Duration::from_secs(10), {
            let mut refused = 0;
            move |f| {
                refused += usize::from(f.kind == RST_STREAM);
                refused == EXTRA || f.kind == GOAWAY
            }
        })
        .await;
    assert!(!closed, "the connection was closed: {refusals:?}");
    let resets: Vec<_> = refusals.iter().filter(|f| f.kind == RST_STREAM).collect();
    assert_eq!(resets.len(), EXTRA, "{:?}", refusals.last());
    assert!(resets.iter().all(|f| f.error_code() == Some(REFUSED_STREAM) && f.stream > 2 * LIMIT as u32));
    wait_until("the accepted streams reached the upstream", Duration::from_secs(10), || {
        up.arrived.load(Ordering::SeqCst) >= LIMIT
    })
    .await;
    eprintln!("flood h2 HEADERS x956: {} KiB with 256 streams held", tls.proxy.rss_kib());
    up.release.send(true).unwrap();
    let mut answered = 0;
    let (answers, _) = rd
        .until(Duration::from_secs(10), |f| {
            answered += usize::from(f.kind == HEADERS);
            answered == LIMIT
        })
        .await;
    let statuses: Vec<_> = answers.iter().filter_map(Frame::status).collect();
    assert_eq!(statuses, vec![200; LIMIT]);
    let next = 2 * (LIMIT + EXTRA) as u32 + 1;
    wr.write_all(&frames::get(next, "/v1/after")).await.unwrap();
    let (answer, _) = rd.until(Duration::from_secs(10), |f| f.kind == HEADERS).await;
    assert_eq!(answer.last().and_then(Frame::status), Some(200), "the connection serves on");
    assert_eq!(up.arrived.load(Ordering::SeqCst), LIMIT + 1, "a refused stream reached the upstream");
    assert_eq!(tls.h2_status().await, 200);
    rss.check(24 * 1024);
}

/// Writes a header block that never ends (HEADERS without END_HEADERS, then
/// CONTINUATION frames carrying `piece`) until the proxy stops it.
async fn endless_header_block(tls: &Https, piece: &[u8]) -> (Flooded, Vec<Frame>) {
    let (mut rd, mut wr) = frames::connect(tls.proxy.addr, &tls.ca, &[]).await;
    wr.write_all(&frames::frame(HEADERS, END_STREAM, 1, &get_block("/v1/continued"))).await.unwrap();
    // 64 MiB of 16 KiB frames, or a million empty ones: far past any limit.
    let (unit, times) = match piece.len() {
        0 => (frames::frame(CONTINUATION, 0, 1, piece).repeat(1820), 550),
        _ => (frames::frame(CONTINUATION, 0, 1, piece), 4096),
    };
    let writer = tokio::spawn(async move { flood(&mut wr, &unit, times, Duration::from_secs(2)).await });
    let (frames, _) = rd.until(Duration::from_secs(10), |f| f.kind == GOAWAY).await;
    (writer.await.unwrap(), frames)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_is_cut_off_with_goaway() {
    let up = MockUpstream::start("ok").await;
    let tls = https_proxy(up.port(), "");
    let rss = Rss::before("h2 CONTINUATION (16 KiB and empty frames, 20 connections each)", &tls.proxy);
    let fields: Vec<u8> = (0..16).flat_map(|i| frames::literal(&format!("x-c{i}"), &"a".repeat(1000))).collect();
    let mut most_written = 0;
    for piece in [fields, Vec::new()] {
        let runs: Vec<_> = (0..20).map(|_| endless_header_block(&tls, &piece)).collect();
        for (flooded, frames) in futures_util::future::join_all(runs).await {
            let goaway = frames.iter().find(|f| f.kind == GOAWAY);
            assert_eq!(goaway.and_then(Frame::error_code), Some(ENHANCE_YOUR_CALM), "{frames:?}");
            // The connection was closed under the flood: its writes failed
            // long before the 64 MiB (or million frames) were out.
            assert!(flooded.broken, "{flooded:?}");
            most_written = most_written.max(flooded.written);
        }
    }
    eprintln!("flood h2 CONTINUATION: at most {most_written} bytes accepted (mostly socket buffers) before the close");
    assert!(up.recorded().is_empty());
    assert_eq!(tls.h2_status().await, 200);
    rss.check(16 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_flood_of_raw_frames_is_cut_off() {
    const STREAMS: u32 = 5000;
    let up = MockUpstream::start("ok").await;
    let tls = https_proxy(up.port(), "");
    let rss = Rss::before("h2 HEADERS+RST_STREAM x5000", &tls.proxy);
    let (mut rd, mut wr) = frames::connect(tls.proxy.addr, &tls.ca, &[]).await;
    let pairs: Vec<u8> = (0..STREAMS)
        .flat_map(|i| [frames::get(2 * i + 1, "/v1/reset"), frames::rst_stream(2 * i + 1, CANCEL)].concat())
        .collect();
    let writer = tokio::spawn(async move { flood(&mut wr, &pairs, 1, Duration::from_secs(2)).await });
    let (frames, closed) = rd.until(Duration::from_secs(10), |f| f.kind == GOAWAY).await;
    let goaway = frames.iter().find(|f| f.kind == GOAWAY);
    assert_eq!(goaway.and_then(Frame::error_code), Some(ENHANCE_YOUR_CALM), "closed: {closed}, {frames:?}");
    let flooded = writer.await.unwrap();
    let forwarded = up.recorded().len();
    eprintln!("flood h2 HEADERS+RST_STREAM x5000: {forwarded} reached the upstream, {} bytes sent", flooded.written);
    assert!(forwarded < STREAMS as usize / 10, "{forwarded} reset streams were forwarded");
    assert_eq!(tls.h2_status().await, 200);
    rss.check(16 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_header_lists_with_too_many_fields_are_431_on_every_stream() {
    const STREAMS: u32 = 200;
    let up = MockUpstream::start("ok").await;
    // A list limit (2 x 64 KiB) that a thousand small fields stay under:
    // the field count is what must refuse them.
    let tls = https_proxy(up.port(), "http_max_header_size: 65536\n");
    let rss = Rss::before("h2 200 streams of 1000 header fields", &tls.proxy);
    let (mut rd, mut wr) = frames::connect(tls.proxy.addr, &tls.ca, &[]).await;
    let fields: Vec<u8> = (0..1000).flat_map(|i| frames::literal(&format!("x-f{i}"), "v")).collect();
    let streams: Vec<u8> = (0..STREAMS)
        .flat_map(|i| {
            frames::frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                2 * i + 1,
                &[get_block("/v1/many"), fields.clone()].concat(),
            )
        })
        .collect();
    assert!(!flood(&mut wr, &streams, 1, Duration::from_secs(5)).await.broken);
    let mut answered = 0;
    let (answers, closed) = rd
        .until(Duration::from_secs(10), |f| {
            answered += usize::from(f.kind == HEADERS);
            answered == STREAMS as usize
        })
        .await;
    assert!(!closed);
    let statuses: Vec<_> = answers.iter().filter_map(Frame::status).collect();
    assert_eq!(statuses, vec![431; STREAMS as usize]);
    assert!(up.recorded().is_empty());
    wr.write_all(&frames::get(2 * STREAMS + 1, "/v1/after")).await.unwrap();
    let (answer, _) = rd.until(Duration::from_secs(10), |f| f.kind == HEADERS).await;
    assert_eq!(answer.last().and_then(Frame::status), Some(200));
    // Larger than the others: each list is decoded whole (~100 KB as a
    // HeaderMap) before the count refuses it, and up to 256 streams' lists
    // may be in memory at once, a bound the configured sizes set.
    rss.check(48 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpack_expansion_is_refused_before_it_is_materialised() {
    let up = MockUpstream::start("ok").await;
    let tls = https_proxy(up.port(), "");
    let rss = Rss::before(
        "h2 HPACK expansion (4 KB entry referenced 3x on 100 streams, 12000x on 20 connections)",
        &tls.proxy,
    );
    let big = frames::literal_indexed("x-big", &"a".repeat(4000));
    // A few references per stream: a list of ~12 KB, over the 8 KiB limit
    // but not by far, is one stream's 431.
    let (mut rd, mut wr) = frames::connect(tls.proxy.addr, &tls.ca, &[]).await;
    let mut streams = frames::frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &[get_block("/v1/x"), big.clone(), indexed(62), indexed(62)].concat(),
    );
    for i in 1..100u32 {
        let block = [get_block("/v1/x"), indexed(62), indexed(62), indexed(62)].concat();
        streams.extend(frames::frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, &block));
    }
    assert!(!flood(&mut wr, &streams, 1, Duration::from_secs(5)).await.broken);
    let mut ended = std::collections::HashSet::new();
    let (answers, closed) = rd
        .until(Duration::from_secs(10), |f| {
            if f.kind == RST_STREAM || (f.kind == HEADERS && f.flags & END_STREAM != 0) {
                ended.insert(f.stream);
            }
            ended.len() == 100
        })
        .await;
    assert!(!closed, "{:?}", answers.last());
    let statuses: Vec<_> = answers.iter().filter_map(Frame::status).collect();
    assert_eq!(statuses, vec![431; 100]);
    wr.write_all(&frames::get(201, "/v1/after")).await.unwrap();
    let (answer, _) = rd.until(Duration::from_secs(10), |f| f.kind == HEADERS).await;
    assert_eq!(answer.last().and_then(Frame::status), Some(200), "the connection serves on");
    // Thousands of one-byte references in one frame: a list of tens of MB
    // from 16 KB on the wire, which must end the connection early.
    let mut block = [get_block("/v1/x"), big].concat();
    block.resize(16_000, 0x80 | 62);
    let runs: Vec<_> = (0..20)
        .map(|_| async {
            let (mut rd, mut wr) = frames::connect(tls.proxy.addr, &tls.ca, &[]).await;
            wr.write_all(&frames::frame(HEADERS, END_HEADERS | END_STREAM, 1, &block)).await.unwrap();
            rd.until(Duration::from_secs(10), |f| f.kind == GOAWAY).await.0
        })
        .collect();
    for frames in futures_util::future::join_all(runs).await {
        let goaway = frames.iter().find(|f| f.kind == GOAWAY);
        assert_eq!(goaway.and_then(Frame::error_code), Some(ENHANCE_YOUR_CALM), "{frames:?}");
    }
    assert_eq!(up.recorded().iter().map(|r| r.uri.as_str()).collect::<Vec<_>>(), vec!["/v1/after"]);
    assert_eq!(tls.h2_status().await, 200);
    rss.check(16 * 1024);
}

/// An upstream that answers every request with a `size`-byte body written as
/// fast as the proxy takes it.
struct Firehose {
    up: RawUpstream,
    /// Body bytes it managed to write, over all connections.
    written: Arc<AtomicU64>,
    /// Connections the proxy closed before their body was out.
    cut: Arc<AtomicUsize>,
}

async fn firehose(size: u64) -> Firehose {
    let (written, cut) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicUsize::new(0)));
    let (count, cuts) = (written.clone(), cut.clone());
    let up = RawUpstream::start(move |mut stream| {
        let (count, cuts) = (count.clone(), cuts.clone());
        async move {
            read_head(&mut stream).await;
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n");
            let piece = vec![b'z'; 64 * 1024];
            let mut left = size;
            let mut out = stream.write_all(head.as_bytes()).await;
            while out.is_ok() && left > 0 {
                let n = left.min(piece.len() as u64);
                out = stream.write_all(&piece[..n as usize]).await;
                if out.is_ok() {
                    count.fetch_add(n, Ordering::SeqCst);
                    left -= n;
                }
            }
            if out.is_err() {
                cuts.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
    .await;
    Firehose { up, written, cut }
}

/// Waits (bounded) until `counter` stops moving for half a second.
async fn settled(counter: &AtomicU64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = (counter.load(Ordering::SeqCst), Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = counter.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= Duration::from_millis(500) {
            return now;
        }
        assert!(Instant::now() < deadline, "the upstream kept writing: {now} bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_starved_streams_do_not_buffer_their_downloads() {
    const STREAMS: u32 = 16;
    const SIZE: u64 = 64 << 20;
    let hose = firehose(SIZE).await;
    let tls = https_proxy(hose.up.port(), "");
    let rss = Rss::before("h2 16 streams, window 0, 64 MiB downloads", &tls.proxy);
    // A stream window of 0: the proxy may send heads, not one byte of body.
    let (mut rd, mut wr) = frames::connect(tls.proxy.addr, &tls.ca, &[(INITIAL_WINDOW_SIZE, 0)]).await;
    let opens: Vec<u8> = (0..STREAMS).flat_map(|i| frames::get(2 * i + 1, "/v1/download")).collect();
    wr.write_all(&opens).await.unwrap();
    let mut heads = 0;
    let (answers, _) = rd
        .until(Duration::from_secs(10), |f| {
            heads += usize::from(f.kind == HEADERS);
            heads == STREAMS as usize
        })
        .await;
    assert_eq!(answers.iter().filter_map(Frame::status).collect::<Vec<_>>(), vec![200; STREAMS as usize]);
    let pulled = settled(&hose.written).await;
    let held = tls.proxy.rss_kib();
    eprintln!(
        "flood h2 window-starved: upstream wrote {pulled} of {} bytes, proxy at {held} KiB",
        SIZE * STREAMS as u64
    );
    // What the upstream got rid of sits in socket buffers (the kernel's, not
    // the proxy's) and in the proxy's bounded per-stream pieces.
    assert!(pulled < SIZE * STREAMS as u64 / 4, "the proxy pulled {pulled} bytes it could not send");
    // A window granted on stream 1 is honoured to the byte, and only there.
    let grant = 1 << 20;
    wr.write_all(&[frames::window_update(0, grant), frames::window_update(1, grant)].concat()).await.unwrap();
    let mut got = 0u64;
    let (data, closed) = rd
        .until(Duration::from_secs(10), |f| {
            if f.kind == DATA {
                got += f.payload.len() as u64;
            }
            got >= u64::from(grant)
        })
        .await;
    assert!(!closed);
    assert!(data.iter().filter(|f| f.kind == DATA).all(|f| f.stream == 1), "data beyond a granted window");
    assert_eq!(got, u64::from(grant));
    let resets: Vec<u8> = (0..STREAMS).flat_map(|i| frames::rst_stream(2 * i + 1, CANCEL)).collect();
    wr.write_all(&resets).await.unwrap();
    assert_eq!(tls.h2_status().await, 200);
    rss.check(16 * 1024);
}

/// Timeouts short enough that nothing legitimate on these connections
/// should outlive them by much.
const SHORT: &str = "first_byte_timeout: 1\nstream_idle_timeout: 1\nclient_body_timeout: 1\nclient_header_timeout: 1\nclient_idle_timeout: 1\nclient_send_timeout: 1\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_starved_stream_is_let_go_in_time() {
    let hose = firehose(64 << 20).await;
    let tls = https_proxy(hose.up.port(), SHORT);
    let (mut rd, mut wr) = frames::connect(tls.proxy.addr, &tls.ca, &[(INITIAL_WINDOW_SIZE, 0)]).await;
    wr.write_all(&frames::get(1, "/v1/download")).await.unwrap();
    // Every timeout is 1 s; ten times that with no byte moving is a hold.
    let (frames, closed) =
        rd.until(Duration::from_secs(10), |f| f.kind == GOAWAY || (f.kind == RST_STREAM && f.stream == 1)).await;
    let let_go = closed || frames.iter().any(|f| f.kind == GOAWAY || f.kind == RST_STREAM);
    assert!(let_go, "stream 1 is still open after 10 s without a window: {frames:?}");
    wait_until("the upstream connection was let go", Duration::from_secs(5), || hose.cut.load(Ordering::SeqCst) == 1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_that_never_reads_is_let_go_in_time() {
    let hose = firehose(64 << 20).await;
    let proxy = http_proxy(hose.up.port(), SHORT);
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /v1/download HTTP/1.1\r\nHost: h.local\r\nAuthorization: Bearer client-key\r\n\r\n")
        .await
        .unwrap();
    // Reads nothing: the proxy's writes block once the socket buffers are full.
    let pulled = settled(&hose.written).await;
    assert!(pulled < 64 << 20, "the whole body went through without being read");
    wait_until("the proxy let the non-reading client and its upstream go", Duration::from_secs(10), || {
        hose.cut.load(Ordering::SeqCst) == 1
    })
    .await;
    drop(stream);
}
