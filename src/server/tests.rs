//! The connection drivers over in-memory pipes (`tokio::io::duplex`), with the
//! clock paused where time matters: the idle and head timeouts of HTTP/1.1 and
//! HTTP/2 run in virtual seconds, and keep-alive and refusals are checked on
//! the bytes a client really sees.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

use super::{h1, h2, Drain};
use crate::state::App;

const CONFIG: &str = "http_port: 1\nauth_keys: [\"client-key\"]\nproviders:\n  - type: openai\n    host: \"h.local\"\n    endpoint: \"127.0.0.1:9\"\n    tls: false\n    api_key: \"sk-real\"\n";

/// Starts the HTTP/1.1 driver on one end of a pipe; returns the client end.
fn h1_client(app: &Arc<App>, drain: &Drain) -> DuplexStream {
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(h1::serve(server, app.clone(), 80, None, drain.handle()));
    client
}

/// Reads one response head and its content-length body.
async fn read_response(client: &mut DuplexStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.parse().unwrap()))
                .unwrap_or(0usize);
            if body.len() >= len {
                return text;
            }
        }
        let n = client.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a whole response: {text:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn closed(client: &mut DuplexStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(client.read(&mut byte).await, Ok(0) | Err(_))
}

#[tokio::test(start_paused = true)]
async fn h1_idle_connections_close_after_the_idle_timeout() {
    let (app, drain) = (Arc::new(App::from_yaml(CONFIG)), Drain::new());
    app.set_limits(|l| l.client_idle_timeout = Duration::from_secs(7));
    let mut client = h1_client(&app, &drain);
    let started = Instant::now();
    assert!(closed(&mut client).await);
    assert_eq!(started.elapsed().as_secs(), 7);
}

#[tokio::test(start_paused = true)]
async fn h1_a_head_not_finished_in_time_gets_400_and_a_close() {
    let (app, drain) = (Arc::new(App::from_yaml(CONFIG)), Drain::new());
    app.set_limits(|l| l.client_header_timeout = Duration::from_secs(3));
    let mut client = h1_client(&app, &drain);
    let started = Instant::now();
    client.write_all(b"GET /v1/models HTTP/1.1\r\nHost: h.lo").await.unwrap();
    let resp = read_response(&mut client).await;
    assert_eq!(started.elapsed().as_secs(), 3);
    assert!(resp.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{resp}");
    assert!(resp.contains("connection: close") && resp.contains("not completed in time"), "{resp}");
    assert!(closed(&mut client).await);
}

#[tokio::test(start_paused = true)]
async fn h1_the_head_clock_starts_at_its_first_byte_not_at_idle() {
    let (app, drain) = (Arc::new(App::from_yaml(CONFIG)), Drain::new());
    app.set_limits(|l| l.client_header_timeout = Duration::from_secs(2));
    let mut client = h1_client(&app, &drain);
    // Idle longer than the head timeout, then a head in two pieces: no 400.
    tokio::time::sleep(Duration::from_secs(3)).await;
    client.write_all(b"GET /v1/models HTTP/1.1\r\nHost: h.lo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.write_all(b"cal\r\n\r\n").await.unwrap();
    let resp = read_response(&mut client).await;
    assert!(resp.starts_with("HTTP/1.1 401"), "routed and refused for its missing key: {resp}");
}

#[tokio::test(start_paused = true)]
async fn h1_shutdown_bounds_a_head_trickling_in() {
    let (app, drain) = (Arc::new(App::from_yaml(CONFIG)), Drain::new());
    let mut client = h1_client(&app, &drain);
    client.write_all(b"GET /v1/models HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let started = Instant::now();
    let waited = tokio::spawn(drain.wait());
    // A byte now and then keeps no connection open past two lingers.
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if client.write_all(b"X").await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = trickle => {}
        _ = tokio::time::sleep(Duration::from_secs(30)) => panic!("the draining connection stayed open"),
    }
    assert!(started.elapsed() <= Duration::from_secs(3), "{:?}", started.elapsed());
    waited.await.unwrap();
}

#[tokio::test]
async fn h1_refusals_keep_the_connection_for_the_next_request() {
    let (app, drain) = (Arc::new(App::from_yaml(CONFIG)), Drain::new());
    let mut client = h1_client(&app, &drain);
    let refused =
        b"POST /v1/chat HTTP/1.1\r\nHost: h.local\r\nAuthorization: Bearer nope\r\nContent-Length: 2\r\n\r\n{}";
    for _ in 0..2 {
        client.write_all(refused).await.unwrap();
        let resp = read_response(&mut client).await;
        assert!(resp.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{resp}");
        assert!(!resp.contains("connection: close"), "{resp}");
    }
    client.write_all(b"CONNECT h.local:443 HTTP/1.1\r\nHost: h.local:443\r\n\r\n").await.unwrap();
    let resp = read_response(&mut client).await;
    assert!(resp.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{resp}");
    assert!(resp.contains("connection: close"), "after CONNECT the connection ends: {resp}");
    assert!(closed(&mut client).await);
}

#[tokio::test]
async fn h1_a_refused_body_not_yet_read_closes_the_connection() {
    let (app, drain) = (Arc::new(App::from_yaml(CONFIG)), Drain::new());
    let mut client = h1_client(&app, &drain);
    // The body is announced but not sent: the refusal cannot skip it.
    let head = b"POST /v1/chat HTTP/1.1\r\nHost: h.local\r\nAuthorization: Bearer nope\r\nContent-Length: 100\r\n\r\n";
    client.write_all(head).await.unwrap();
    let resp = read_response(&mut client).await;
    assert!(resp.starts_with("HTTP/1.1 401") && resp.contains("connection: close"), "{resp}");
    assert!(closed(&mut client).await);
}

/// Starts the HTTP/2 driver on one end of a pipe and a client on the other.
async fn h2_client(app: &Arc<App>, drain: &Drain) -> ::h2::client::SendRequest<Bytes> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(h2::serve(server, app.clone(), h2::Client::default(), drain.handle()));
    let (send, conn) = ::h2::client::handshake(client).await.unwrap();
    tokio::spawn(conn);
    send
}

fn h2_request(authority: &str) -> http::Request<()> {
    http::Request::builder()
        .uri(format!("https://{authority}/v1/models"))
        .header("authorization", "Bearer client-key")
        .body(())
        .unwrap()
}

#[tokio::test]
async fn h2_streams_run_through_the_same_handler() {
    let (app, drain) = (Arc::new(App::from_yaml(CONFIG)), Drain::new());
    let send = h2_client(&app, &drain).await;
    let mut send = send.ready().await.unwrap();
    let (response, _) = send.send_request(h2_request("unknown.local"), true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 404);
    let mut body = response.into_body();
    let data = body.data().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&data).contains("unknown_host"));
    let mut connect = http::Request::builder().method("CONNECT").uri("h.local:443").body(()).unwrap();
    connect.headers_mut().insert("authorization", "Bearer client-key".parse().unwrap());
    let (response, _) = send.send_request(connect, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 403, "refused like any request: tunnels are off here");
}

#[tokio::test(start_paused = true)]
async fn h2_connections_without_streams_close_after_the_idle_timeout() {
    let (app, drain) = (Arc::new(App::from_yaml(CONFIG)), Drain::new());
    app.set_limits(|l| l.client_idle_timeout = Duration::from_secs(10));
    let (client, server) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(h2::serve(server, app.clone(), h2::Client::default(), drain.handle()));
    let (send, conn) = ::h2::client::handshake(client).await.unwrap();
    let started = Instant::now();
    let (_, done) = tokio::join!(conn, served);
    done.unwrap();
    drop(send);
    // The timeout, then the one-second linger that lets GOAWAY flush.
    let idle = started.elapsed().as_secs();
    assert!((10..=11).contains(&idle), "closed after {idle} s");
}

#[tokio::test(start_paused = true)]
async fn h2_the_idle_clock_restarts_when_the_last_stream_ends() {
    let (app, drain) = (Arc::new(App::from_yaml(CONFIG)), Drain::new());
    app.set_limits(|l| l.client_idle_timeout = Duration::from_secs(10));
    let (client, server) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(h2::serve(server, app.clone(), h2::Client::default(), drain.handle()));
    let (send, conn) = ::h2::client::handshake(client).await.unwrap();
    let conn = tokio::spawn(conn);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut send = send.ready().await.unwrap();
    let (response, _) = send.send_request(h2_request("unknown.local"), true).unwrap();
    assert_eq!(response.await.unwrap().status(), 404);
    served.await.unwrap();
    let _ = conn.await;
    let idle = started.elapsed().as_secs();
    assert!((18..=19).contains(&idle), "closed after {idle} s, not 10 s after the stream");
}

/// Every open connection holds its task for its whole life: a plain one must
/// not carry room for TLS, nor a TLS one for its handshake after it ended.
#[tokio::test]
async fn connection_tasks_stay_small() {
    let app = Arc::new(App::from_yaml(CONFIG));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let connect = || tokio::net::TcpStream::connect(listener.local_addr().unwrap());
    let drain = Drain::new();
    let plain = h1::serve(connect().await.unwrap(), app.clone(), 80, None, drain.handle());
    let tls = super::listener::serve_tls(connect().await.unwrap(), app.clone(), None, drain.handle());
    assert!(std::mem::size_of_val(&plain) <= 2048, "{} bytes", std::mem::size_of_val(&plain));
    assert!(std::mem::size_of_val(&tls) <= 2048, "{} bytes", std::mem::size_of_val(&tls));
}
