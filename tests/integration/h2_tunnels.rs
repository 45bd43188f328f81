//! Tunnels over HTTP/2 with the `h2` crate's client: a WebSocket by extended
//! CONNECT (RFC 8441) to a real WebSocket server upstream that sees an
//! HTTP/1.1 Upgrade with the provider key, and a plain CONNECT to a TCP echo
//! server; refusals open nothing upstream.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{Method, Request, StatusCode};

use crate::connect::echo;
use crate::support::tls::*;
use crate::support::*;
use crate::websocket::echo_upstream;

const WAIT: Duration = Duration::from_secs(10);

fn config(dir: &std::path::Path, ca: &TestCa, upstream: u16) -> String {
    let (_, cert, key) = ca.write(dir);
    format!(
        "https_port: {{port}}\nhttps_bind_address: 127.0.0.1\ncert_file: {}\nprivate_key_file: {}\n\
         connect_tunnel_enabled: true\nauth_keys: [client-key]\nproviders:\n  - type: openai\n    host: h.local\n    \
         endpoint: \"127.0.0.1:{upstream}\"\n    tls: false\n    api_key: real-key\n",
        cert.display(),
        key.display()
    )
}

/// An `h2` client that has seen the proxy's SETTINGS.
async fn client(proxy: &TestProxy, ca: &TestCa) -> SendRequest<Bytes> {
    let tls = tls_connect(proxy.addr, ca.client_config(&[b"h2"])).await;
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // SETTINGS come with the server's preface, right after the handshake.
    let mut send = send.ready().await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !send.is_extended_connect_protocol_enabled() {
        assert!(tokio::time::Instant::now() < deadline, "no SETTINGS_ENABLE_CONNECT_PROTOCOL from the proxy");
        tokio::time::sleep(Duration::from_millis(5)).await;
        send = send.ready().await.unwrap();
    }
    send
}

fn websocket_request(key: &str) -> Request<()> {
    Request::builder()
        .method(Method::CONNECT)
        .uri("https://h.local/v1/realtime?model=m")
        .extension(h2::ext::Protocol::from_static("websocket"))
        .header("authorization", format!("Bearer {key}"))
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "realtime")
        .body(())
        .unwrap()
}

/// Opens a stream and waits for its answer's head.
async fn open(
    client: &mut SendRequest<Bytes>,
    request: Request<()>,
) -> (http::response::Parts, RecvStream, SendStream<Bytes>) {
    let (answer, send) = client.send_request(request, false).unwrap();
    let answer = tokio::time::timeout(WAIT, answer).await.expect("an answer").unwrap();
    let (parts, recv) = answer.into_parts();
    (parts, recv, send)
}

/// A masked client frame (RFC 6455 §5.2).
fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x1b, 0x2c, 0x3d, 0x4e];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out.into()
}

/// Sends `data` within the window the proxy grants.
async fn send_all(send: &mut SendStream<Bytes>, mut data: Bytes) {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = std::future::poll_fn(|cx| send.poll_capacity(cx)).await.unwrap().unwrap();
        send.send_data(data.split_to(granted.min(data.len())), false).unwrap();
    }
}

/// Reads one unmasked server frame: (opcode, payload).
async fn read_frame(recv: &mut RecvStream, buf: &mut BytesMut) -> (u8, Vec<u8>) {
    loop {
        if let Some((header, len)) = frame_len(buf) {
            if buf.len() >= header + len {
                let opcode = buf[0] & 0x0f;
                buf.advance(header);
                return (opcode, buf.split_to(len).to_vec());
            }
        }
        let data = tokio::time::timeout(WAIT, recv.data()).await.expect("a frame").expect("open stream").unwrap();
        recv.flow_control().release_capacity(data.len()).unwrap();
        buf.extend_from_slice(&data);
    }
}

fn frame_len(buf: &[u8]) -> Option<(usize, usize)> {
    let short = *buf.get(1)? & 0x7f;
    match short {
        126 => Some((4, u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize)),
        127 => Some((10, u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize)),
        n => Some((2, n as usize)),
    }
}

#[tokio::test]
async fn a_websocket_over_h2_reaches_an_http1_upstream_with_the_provider_key() {
    let (upstream, seen, conns) = echo_upstream().await;
    let (dir, ca) = (tempfile::tempdir().unwrap(), TestCa::new());
    let proxy = TestProxy::start(&config(dir.path(), &ca, upstream));
    let mut client = client(&proxy, &ca).await;
    let (head, mut recv, mut send) = open(&mut client, websocket_request("client-key")).await;
    assert_eq!(head.status, StatusCode::OK, "RFC 8441 answers 200, not 101");
    assert_eq!(head.headers["sec-websocket-protocol"], "realtime");
    assert!(head.headers.get("sec-websocket-accept").is_none() && head.headers.get("upgrade").is_none());

    let mut buf = BytesMut::new();
    send_all(&mut send, frame(1, b"hello")).await;
    assert_eq!(read_frame(&mut recv, &mut buf).await, (1, b"hello".to_vec()));
    // A message much larger than the stream window: flow control both ways.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    send_all(&mut send, frame(2, &big)).await;
    let (opcode, echoed) = read_frame(&mut recv, &mut buf).await;
    assert!(opcode == 2 && echoed == big, "the 3 MB message came back intact");
    // A close handshake, then the upstream's end reaches the client as END_STREAM.
    send_all(&mut send, frame(8, &1000u16.to_be_bytes())).await;
    let (opcode, code) = read_frame(&mut recv, &mut buf).await;
    assert_eq!((opcode, code), (8, 1000u16.to_be_bytes().to_vec()));
    while let Some(data) = tokio::time::timeout(WAIT, recv.data()).await.expect("END_STREAM after the upstream closed")
    {
        assert!(data.unwrap().is_empty(), "nothing after the close frame");
    }
    // The client's END_STREAM ends the tunnel, and with it its log line.
    send.send_data(Bytes::new(), true).unwrap();

    let seen = seen.lock().unwrap().clone();
    assert_eq!((seen.len(), *conns.lock().unwrap()), (1, 1));
    let (path, headers) = &seen[0];
    assert_eq!(path, "/v1/realtime?model=m");
    assert_eq!(headers["authorization"], "Bearer real-key");
    assert_eq!(headers["sec-websocket-version"], "13");
    assert!(headers.iter().all(|(_, v)| !String::from_utf8_lossy(v.as_bytes()).contains("client-key")));
    wait_for_log(&proxy, "status=200", WAIT).await;
}

#[tokio::test]
async fn refused_h2_tunnels_open_nothing_upstream() {
    let (upstream, _, conns) = echo_upstream().await;
    let (dir, ca) = (tempfile::tempdir().unwrap(), TestCa::new());
    let proxy = TestProxy::start(&config(dir.path(), &ca, upstream));
    let mut client = client(&proxy, &ca).await;
    let (head, ..) = open(&mut client, websocket_request("wrong-key")).await;
    assert_eq!(head.status, StatusCode::UNAUTHORIZED);
    let mut other = websocket_request("client-key");
    other.extensions_mut().insert(h2::ext::Protocol::from_static("webtransport"));
    let (head, ..) = open(&mut client, other).await;
    assert_eq!(head.status, StatusCode::NOT_IMPLEMENTED, "only websocket is bridged");
    let connect = |target: &str, auth: Option<&str>| {
        let mut request = Request::builder().method(Method::CONNECT).uri(target);
        if let Some(auth) = auth {
            request = request.header("proxy-authorization", auth);
        }
        request.body(()).unwrap()
    };
    let (head, ..) = open(&mut client, connect(&format!("127.0.0.1:{upstream}"), None)).await;
    assert_eq!(head.status, StatusCode::PROXY_AUTHENTICATION_REQUIRED);
    assert!(head.headers.contains_key("proxy-authenticate"));
    let (head, ..) = open(&mut client, connect("example.com:443", Some("Bearer client-key"))).await;
    assert_eq!(head.status, StatusCode::FORBIDDEN, "never an open proxy");
    assert_eq!(*conns.lock().unwrap(), 0);
}

#[tokio::test]
async fn an_h2_connect_carries_bytes_both_ways_and_half_closes() {
    let (up, count) = echo().await;
    let (dir, ca) = (tempfile::tempdir().unwrap(), TestCa::new());
    let proxy = TestProxy::start(&config(dir.path(), &ca, up.port()));
    let mut client = client(&proxy, &ca).await;
    let request = connect_request(up.port());
    let (head, mut recv, mut send) = open(&mut client, request).await;
    assert_eq!(head.status, StatusCode::OK);
    let payload: Bytes = (0..1_000_000u32).map(|i| (i % 253) as u8).collect::<Vec<u8>>().into();
    send_all(&mut send, payload.clone()).await;
    // END_STREAM from the client half-closes the upstream; the echo server then
    // closes, and that reaches the client as its END_STREAM.
    send.send_data(Bytes::new(), true).unwrap();
    let mut got = Vec::new();
    while let Some(data) = tokio::time::timeout(WAIT, recv.data()).await.expect("echoed bytes") {
        let data = data.unwrap();
        recv.flow_control().release_capacity(data.len()).unwrap();
        got.extend_from_slice(&data);
    }
    assert!(got == payload, "{} of {} bytes came back", got.len(), payload.len());
    assert_eq!(count.load(Ordering::SeqCst), 1);
    wait_for_log(&proxy, "CONNECT", WAIT).await;
}

#[tokio::test]
async fn an_idle_h2_tunnel_is_reset_and_its_upstream_closed() {
    let (up, _) = echo().await;
    let (dir, ca) = (tempfile::tempdir().unwrap(), TestCa::new());
    let proxy = TestProxy::start(&format!("tunnel_idle_timeout: 1\n{}", config(dir.path(), &ca, up.port())));
    let mut client = client(&proxy, &ca).await;
    let request = connect_request(up.port());
    let (head, mut recv, _send) = open(&mut client, request).await;
    assert_eq!(head.status, StatusCode::OK);
    let end = tokio::time::timeout(WAIT, recv.data()).await.expect("the idle tunnel ends");
    let reason = end.expect("a reset, not a clean end").unwrap_err().reason();
    assert_eq!(reason, Some(h2::Reason::CANCEL), "a cut tunnel is never mistaken for a clean end");
}

fn connect_request(port: u16) -> Request<()> {
    Request::builder()
        .method(Method::CONNECT)
        .uri(format!("127.0.0.1:{port}"))
        .header("proxy-authorization", "Bearer client-key")
        .body(())
        .unwrap()
}

fn tunnel_lines(proxy: &TestProxy) -> usize {
    proxy.logs().lines().filter(|l| l.contains("openproxy::access") && l.contains("CONNECT")).count()
}

/// An upstream that reads what it is sent, then holds the connection, silent.
async fn silent_upstream() -> RawUpstream {
    RawUpstream::start(|mut s| async move {
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 1024];
        while matches!(s.read(&mut b).await, Ok(n) if n > 0) {}
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await
}

/// An upstream that answers a WebSocket handshake with `answer(accept)`.
async fn scripted_websocket(answer: fn(&str) -> String) -> RawUpstream {
    RawUpstream::start(move |mut s| async move {
        use tokio::io::AsyncWriteExt;
        let head = read_head(&mut s).await;
        let key = head.lines().find_map(|l| l.strip_prefix("sec-websocket-key: ")).unwrap_or("").trim().to_string();
        let mut sha = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
        sha.update(format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes());
        let accept = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, sha.finish());
        let _ = s.write_all(answer(&accept).as_bytes()).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await
}

#[tokio::test]
async fn a_reset_after_the_clients_end_of_stream_ends_the_tunnel() {
    let up = silent_upstream().await;
    let (dir, ca) = (tempfile::tempdir().unwrap(), TestCa::new());
    let proxy = TestProxy::start(&format!("tunnel_idle_timeout: 30\n{}", config(dir.path(), &ca, up.port())));
    let mut client = client(&proxy, &ca).await;
    let (head, _recv, mut send) = open(&mut client, connect_request(up.port())).await;
    assert_eq!(head.status, StatusCode::OK);
    send_all(&mut send, Bytes::from_static(b"abc")).await;
    send.send_data(Bytes::new(), true).unwrap();
    send.send_reset(h2::Reason::CANCEL);
    wait_for_log(&proxy, "method=CONNECT", WAIT).await;
}

#[tokio::test]
async fn a_lost_client_connection_after_its_end_of_stream_ends_the_tunnel() {
    let up = silent_upstream().await;
    let (dir, ca) = (tempfile::tempdir().unwrap(), TestCa::new());
    let proxy = TestProxy::start(&format!("tunnel_idle_timeout: 30\n{}", config(dir.path(), &ca, up.port())));
    let tls = tls_connect(proxy.addr, ca.client_config(&[b"h2"])).await;
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    let conn_task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.unwrap();
    let (answer, _send) = client.send_request(connect_request(up.port()), true).unwrap();
    let answer = tokio::time::timeout(WAIT, answer).await.unwrap().unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    conn_task.abort(); // the client's TCP connection closes
    drop((client, answer));
    wait_for_log(&proxy, "method=CONNECT", WAIT).await;
}

#[tokio::test]
async fn reset_tunnels_do_not_escape_the_stream_limit() {
    let up = silent_upstream().await;
    let (dir, ca) = (tempfile::tempdir().unwrap(), TestCa::new());
    let proxy = TestProxy::start(&config(dir.path(), &ca, up.port()));
    let mut client = client(&proxy, &ca).await;
    const TUNNELS: usize = 400; // past the 256 streams one connection may have open
    for i in 0..TUNNELS {
        client = client.ready().await.unwrap();
        let (answer, mut send) = client.send_request(connect_request(up.port()), true).unwrap();
        let answer = tokio::time::timeout(WAIT, answer).await.unwrap_or_else(|_| panic!("stream {i}")).unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "stream {i}");
        send.send_reset(h2::Reason::CANCEL);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while tunnel_lines(&proxy) < TUNNELS {
        assert!(tokio::time::Instant::now() < deadline, "{} of {TUNNELS} reset tunnels ended", tunnel_lines(&proxy));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_success_that_is_no_switch_is_not_an_open_websocket() {
    let up = scripted_websocket(|_| "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".into()).await;
    let (dir, ca) = (tempfile::tempdir().unwrap(), TestCa::new());
    let proxy = TestProxy::start(&config(dir.path(), &ca, up.port()));
    let mut client = client(&proxy, &ca).await;
    let (head, ..) = open(&mut client, websocket_request("client-key")).await;
    assert_eq!(head.status, StatusCode::BAD_GATEWAY, "over HTTP/2 a 2xx would mean the WebSocket is open");
    wait_for_log(&proxy, "status=502", WAIT).await;
}

#[tokio::test]
async fn a_101_with_a_content_length_opens_a_usable_websocket() {
    let up = scripted_websocket(|accept| {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\nContent-Length: 0\r\n\r\n\x01\x02hi"
        )
    })
    .await;
    let (dir, ca) = (tempfile::tempdir().unwrap(), TestCa::new());
    let proxy = TestProxy::start(&config(dir.path(), &ca, up.port()));
    let mut client = client(&proxy, &ca).await;
    let (head, mut recv, _send) = open(&mut client, websocket_request("client-key")).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.headers.get("content-length").is_none(), "no framing on a 2xx to CONNECT");
    let got = tokio::time::timeout(WAIT, recv.data()).await.unwrap();
    assert!(matches!(got, Some(Ok(ref d)) if &d[..] == b"\x01\x02hi"), "the first frame did not arrive: {got:?}");
}

#[tokio::test]
async fn a_wrong_accept_value_from_the_upstream_is_a_bad_gateway() {
    let up = scripted_websocket(|_| {
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bogus\r\n\r\n".into()
    })
    .await;
    let (dir, ca) = (tempfile::tempdir().unwrap(), TestCa::new());
    let proxy = TestProxy::start(&config(dir.path(), &ca, up.port()));
    let mut client = client(&proxy, &ca).await;
    let (head, ..) = open(&mut client, websocket_request("client-key")).await;
    assert_eq!(head.status, StatusCode::BAD_GATEWAY);
}
