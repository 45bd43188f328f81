//! WebSocket through the proxy (OpenAI Realtime's transport): a real echo
//! server upstream (tokio-tungstenite), a real client, the key swap in both
//! the header and the browser's subprotocol form, refusals that open nothing
//! upstream, a non-101 answer passed on, and the tunnel idle timeout.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// What the echo server saw of each handshake: path and headers.
type Seen = Arc<Mutex<Vec<(String, http::HeaderMap)>>>;

/// A WebSocket echo server; it picks the `realtime` subprotocol when offered.
pub(crate) async fn echo_upstream() -> (u16, Seen, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen, conns): (Seen, _) = (Arc::default(), Arc::new(Mutex::new(0)));
    let (seen2, conns2) = (seen.clone(), conns.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            *conns2.lock().unwrap() += 1;
            let seen = seen2.clone();
            tokio::spawn(async move {
                // The callback's error type is the library's (a whole HTTP response).
                #[allow(clippy::result_large_err)]
                let record = |req: &Request, mut resp: Response| {
                    seen.lock().unwrap().push((req.uri().to_string(), req.headers().clone()));
                    let offered = req.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().to_string());
                    if offered.is_some_and(|p| p.split(',').any(|i| i.trim() == "realtime")) {
                        resp.headers_mut().insert("sec-websocket-protocol", "realtime".parse().unwrap());
                    }
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(_) | Message::Binary(_) => ws.send(msg).await.unwrap(),
                        // The library answers pings and echoes the close frame
                        // itself (on the next read, which then ends the stream).
                        _ => {}
                    }
                }
            });
        }
    });
    (port, seen, conns)
}

fn config(upstream: u16, extra: &str) -> String {
    format!("{extra}{}", one_provider("openai", "h.local", upstream, ""))
}

async fn connect(
    proxy: &TestProxy,
    path: &str,
    headers: &[(&'static str, &str)],
) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let mut request = format!("ws://h.local{path}").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (ws, response) = tokio_tungstenite::client_async(request, stream).await.expect("handshake through the proxy");
    assert_eq!(response.status(), 101);
    ws
}

fn no_client_key(headers: &http::HeaderMap) -> bool {
    headers.iter().all(|(_, v)| !String::from_utf8_lossy(v.as_bytes()).contains("client-key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_pass_both_ways_and_the_upstream_sees_only_the_provider_key() {
    let (port, seen, _) = echo_upstream().await;
    let proxy = TestProxy::start(&config(port, ""));
    let mut ws = connect(&proxy, "/v1/realtime?model=gpt-realtime", &[("authorization", "Bearer client-key")]).await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    let big: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    let got = ws.next().await.unwrap();
    assert!(got.is_ok(), "{got:?}\n{}", proxy.logs());
    assert_eq!(got.unwrap(), Message::binary(big), "a 10 MB message arrives whole");
    ws.send(Message::Ping(b"are you there".to_vec().into())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Pong(b"are you there".to_vec().into()));
    let close = CloseFrame { code: CloseCode::from(4001), reason: "done".into() };
    ws.send(Message::Close(Some(close.clone()))).await.unwrap();
    let got = ws.next().await.unwrap();
    assert!(got.is_ok(), "{got:?}\n{}", proxy.logs());
    assert_eq!(got.unwrap(), Message::Close(Some(close)), "close code passed through");
    drop(ws); // the client closes its side too: the tunnel is over
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let (path, headers) = &seen[0];
    assert_eq!(path, "/v1/realtime?model=gpt-realtime");
    assert_eq!(headers["authorization"], "Bearer real-key");
    assert!(no_client_key(headers), "{headers:?}");
    wait_for_log(&proxy, "status=101", Duration::from_secs(5)).await;
    let logs = proxy.logs();
    let line = logs.lines().find(|l| l.contains("status=101")).unwrap();
    assert!(line.contains("bytes_up=") && line.contains("bytes_down="), "{line}");
}

#[tokio::test]
async fn a_browser_key_in_the_subprotocol_is_accepted_and_removed() {
    let (port, seen, _) = echo_upstream().await;
    let proxy = TestProxy::start(&config(port, ""));
    let protocols = "realtime, openai-insecure-api-key.client-key, openai-beta.realtime-v1";
    let mut ws = connect(&proxy, "/v1/realtime", &[("sec-websocket-protocol", protocols)]).await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    let (_, headers) = seen.lock().unwrap()[0].clone();
    assert_eq!(headers["sec-websocket-protocol"], "realtime, openai-beta.realtime-v1");
    assert_eq!(headers["authorization"], "Bearer real-key");
    assert!(no_client_key(&headers), "{headers:?}");
}

const HANDSHAKE: &str = "GET /v1/realtime HTTP/1.1\r\nHost: h.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// The status line and headers of the answer to `request` on a new connection.
async fn answer_head(proxy: &TestProxy, request: &str) -> String {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), read_head(&mut stream)).await.expect("an answer")
}

#[tokio::test]
async fn a_refused_handshake_opens_no_upstream_connection() {
    let (port, _, conns) = echo_upstream().await;
    let proxy = TestProxy::start(&config(port, ""));
    let resp = answer_head(&proxy, &format!("{HANDSHAKE}Authorization: Bearer wrong\r\n\r\n")).await;
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    let request = format!("{HANDSHAKE}Sec-WebSocket-Protocol: openai-insecure-api-key.wrong\r\n\r\n");
    let resp = answer_head(&proxy, &request).await;
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    assert_eq!(*conns.lock().unwrap(), 0);
}

#[tokio::test]
async fn an_answer_other_than_101_is_relayed_as_a_response() {
    let up = MockUpstream::with(|_| Reply::json(426, r#"{"error":"upgrade required"}"#)).await;
    let proxy = TestProxy::start(&config(up.port(), ""));
    let request = format!("{HANDSHAKE}Authorization: Bearer client-key\r\nConnection: close\r\n\r\n");
    let resp = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 426"), "{resp}");
    assert!(resp.contains("upgrade required"), "{resp}");
}

#[tokio::test]
async fn a_quiet_tunnel_is_closed_after_the_idle_timeout() {
    let (port, _, _) = echo_upstream().await;
    let proxy = TestProxy::start(&config(port, "tunnel_idle_timeout: 0.3\n"));
    let mut ws = connect(&proxy, "/v1/realtime", &[("authorization", "Bearer client-key")]).await;
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("one"));
    // Then nothing either way: the proxy ends it (bounded wait, far past 0.3 s).
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the idle tunnel was not closed");
    wait_for_log(&proxy, "tunnel idle", Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_101_to_another_protocol_is_a_bad_gateway() {
    let up = RawUpstream::start(|mut stream| async move {
        let _ = read_head(&mut stream).await;
        let answer =
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nPRI * HTTP/2.0\r\n";
        let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, answer).await;
    })
    .await;
    let proxy = TestProxy::start(&config(up.port(), "retry: {attempts: 0}\n"));
    let resp = answer_head(&proxy, &format!("{HANDSHAKE}Authorization: Bearer client-key\r\n\r\n")).await;
    assert!(resp.starts_with("HTTP/1.1 502"), "{resp}");
}

#[tokio::test]
async fn a_tunnel_cut_at_shutdown_still_logs_what_it_carried() {
    let (port, _, _) = echo_upstream().await;
    let mut proxy = TestProxy::start(&config(port, "graceful_shutdown_timeout: 0.3\n"));
    let mut ws = connect(&proxy, "/v1/realtime", &[("authorization", "Bearer client-key")]).await;
    ws.send(Message::text("kept open")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("kept open"));
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
    let logs = proxy.logs();
    let line = logs.lines().find(|l| l.contains("status=101")).unwrap_or_else(|| panic!("no tunnel line:\n{logs}"));
    assert!(line.contains("bytes_up=") && !line.contains("bytes_up=0"), "{line}");
}
