//! Token usage at the edges of a stream: a client that leaves before the
//! final usage event, usage events cut across HTTP/2 frames, and
//! `stream_usage: inject`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::support::tls::TestCa;
use crate::support::*;

/// Polls the metrics (bounded) until `done` holds for them.
async fn metrics_until(admin: u16, what: &str, done: impl Fn(&HashMap<String, f64>) -> bool) -> HashMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(admin).await;
        if done(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "never {what}: {m:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config(upstream: u16, admin: u16, extra: &str) -> String {
    format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nadmin_port: {admin}\nlog_format: json\n\
         auth_keys: [{{key: client-key, name: team-a}}]\nproviders:\n  \
         - {{type: openai, name: oai, host: h.local, endpoint: \"127.0.0.1:{upstream}\", tls: false, api_key: real-key{extra}}}\n"
    )
}

pub(crate) const STREAM_REQUEST: &str =
    "POST /v1/chat/completions HTTP/1.1\r\nhost: h.local\r\nauthorization: Bearer client-key\r\n\
                              content-length: 2\r\n\r\n{}";

/// Sends [`STREAM_REQUEST`] and reads until the first event arrived.
pub(crate) async fn open_stream(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client.write_all(STREAM_REQUEST.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("\"hi\"") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    client
}

const TOKENS_IN: &str = r#"openproxy_tokens_total{direction="input",provider="oai",model="gpt-4o",client="team-a"}"#;
const TOKENS_OUT: &str = r#"openproxy_tokens_total{direction="output",provider="oai",model="gpt-4o",client="team-a"}"#;

#[tokio::test]
async fn usage_is_still_counted_when_the_client_leaves_before_the_last_event() {
    client_leaves_before_the_usage(false).await;
}

// Multi-threaded: waiting for the exit blocks this thread, and the upstream
// must go on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_waits_for_the_usage_of_a_stream_whose_client_left() {
    client_leaves_before_the_usage(true).await;
}

/// A client reads the first event of a stream and leaves; the upstream sends
/// the usage only once the proxy has let go of the client (and, with
/// `shutdown`, once the proxy was told to stop).
async fn client_leaves_before_the_usage(shutdown: bool) {
    // The stream goes on, an event every 20 ms, until the test says the
    // client is gone; only then comes the usage event.
    let client_gone = Arc::new(Notify::new());
    let gone = client_gone.clone();
    let up = RawUpstream::start(move |mut stream| {
        let gone = gone.clone();
        async move {
            read_head(&mut stream).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
            let first = "data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
            let _ = stream.write_all(format!("{head}{first}").as_bytes()).await;
            let filler = async {
                for _ in 0..500 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let _ = stream.write_all(b"data: {\"choices\":[{\"delta\":{\"content\":\".\"}}]}\n\n").await;
                }
            };
            tokio::select! {
                () = gone.notified() => {}
                () = filler => return,
            }
            let last = "data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":22}}\n\ndata: [DONE]\n\n";
            let _ = stream.write_all(last.as_bytes()).await;
        }
    })
    .await;
    let admin = free_port();
    let mut proxy = TestProxy::start(&config(up.port(), admin, ""));

    let client = open_stream(proxy.addr).await;
    drop(client);
    // The proxy lets go of the client once a write to it fails.
    metrics_until(admin, "the client connection closed", |m| {
        m.get(r#"openproxy_client_connections{protocol="http1"}"#) == Some(&0.0)
    })
    .await;
    if shutdown {
        proxy.signal("TERM");
        wait_for_log(&proxy, "shutting down gracefully", Duration::from_secs(5)).await;
        client_gone.notify_one();
        assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0), "{}", proxy.logs());
        assert!(proxy.logs().contains("\"output_tokens\":22"), "the usage was lost:\n{}", proxy.logs());
        return;
    }
    client_gone.notify_one();
    let m = metrics_until(admin, "tokens counted", |m| m.contains_key(TOKENS_OUT)).await;
    assert_eq!((m[TOKENS_IN], m[TOKENS_OUT]), (11.0, 22.0));
    wait_for_log(&proxy, "\"output_tokens\":22", Duration::from_secs(5)).await;
}

/// An OpenAI-like stream upstream: each request's body is recorded; when it
/// asks for usage, every chunk carries `"usage":null` and a usage-only chunk
/// comes before `[DONE]`, as OpenAI sends them, all cut into 5-byte writes.
async fn openai_stream_upstream(bodies: Arc<std::sync::Mutex<Vec<String>>>) -> RawUpstream {
    RawUpstream::start(move |mut stream| {
        let bodies = bodies.clone();
        async move {
            let head = read_head(&mut stream).await;
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            // What read_head took past the blank line is the body's start.
            let mut body = head.split_once("\r\n\r\n").map_or("", |(_, rest)| rest).as_bytes().to_vec();
            let mut rest = vec![0u8; len - body.len()];
            stream.read_exact(&mut rest).await.unwrap();
            body.extend_from_slice(&rest);
            let body = String::from_utf8(body).unwrap();
            let asked = body.contains("\"include_usage\":true");
            bodies.lock().unwrap().push(body);
            let usage = if asked { ",\"usage\":null" } else { "" };
            let mut events = format!(
                "data: {{\"model\":\"gpt-4o\",\"choices\":[{{\"delta\":{{\"content\":\"a\"}}}}]{usage}}}\n\n\
                 data: {{\"model\":\"gpt-4o\",\"choices\":[{{\"delta\":{{\"content\":\"b\"}}}}]{usage}}}\n\n"
            );
            if asked {
                events.push_str(
                    "data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n",
                );
            }
            events.push_str("data: [DONE]\n\n");
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
            let _ = stream.write_all(head.as_bytes()).await;
            for piece in events.as_bytes().chunks(5) {
                let _ = stream.write_all(piece).await;
                let _ = stream.flush().await;
                tokio::task::yield_now().await;
            }
        }
    })
    .await
}

#[tokio::test]
async fn stream_usage_inject_asks_upstream_and_hides_the_answer_from_the_client() {
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let up = openai_stream_upstream(bodies.clone()).await;
    let admin = free_port();
    let proxy = TestProxy::start(&config(up.port(), admin, ", stream_usage: inject"));
    let auth = [("host", "h.local"), ("authorization", "Bearer client-key")];
    let plain = "data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n\
                 data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\ndata: [DONE]\n\n";

    // A stream that does not ask: the upstream is asked, the client sees
    // exactly the stream it would have had.
    let request = r#"{"model":"gpt-4o","stream":true,"messages":[]}"#;
    let (status, _, body) = send(proxy.addr, "POST", "/v1/chat/completions", &auth, request).await;
    assert_eq!((status, body.as_str()), (200, plain));
    assert_eq!(
        bodies.lock().unwrap()[0],
        r#"{"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true,"messages":[]}"#
    );
    let m = metrics_until(admin, "tokens counted", |m| m.contains_key(TOKENS_OUT)).await;
    assert_eq!((m[TOKENS_IN], m[TOKENS_OUT]), (3.0, 4.0));
    // The line counts what the client got, not the chunk taken out.
    wait_for_log(&proxy, "\"input_tokens\":3", Duration::from_secs(5)).await;
    let logs = proxy.logs();
    let line: serde_json::Value =
        serde_json::from_str(logs.lines().find(|l| l.contains("\"input_tokens\":3")).unwrap()).unwrap();
    assert_eq!(line["bytes_out"].as_u64(), Some(plain.len() as u64), "{line}");

    // A client that asks itself gets what it asked for, its bytes unchanged.
    let request = r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}"#;
    let (status, _, body) = send(proxy.addr, "POST", "/v1/chat/completions", &auth, request).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"usage\":null") && body.contains("\"completion_tokens\":4"), "{body}");
    assert_eq!(bodies.lock().unwrap()[1], request);

    // Not a stream, or not chat: sent as it came.
    for (path, request) in [("/v1/chat/completions", r#"{"stream":false}"#), ("/v1/embeddings", r#"{"stream":true}"#)] {
        send(proxy.addr, "POST", path, &auth, request).await;
        assert_eq!(bodies.lock().unwrap().last().unwrap(), request);
    }
}

#[test]
fn stream_usage_is_checked_in_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yml");
    std::fs::write(
        &config,
        "http_port: 8080\nauth_keys: [k]\nproviders:\n  \
         - {type: anthropic, host: a.local, endpoint: a.example, api_key: x, stream_usage: inject}\n  \
         - {type: openai, host: o.local, endpoint: o.example, api_key: x, stream_usage: always}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_openproxy"))
        .arg("check")
        .arg("-c")
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("stream_usage can be `inject` only for openai providers"), "{text}");
    assert!(text.contains("stream_usage must be `pass` or `inject`") && !text.contains("always"), "{text}");
}

const ANTHROPIC_STREAM: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"claude-x\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

/// An HTTP/2 upstream (TLS, ALPN h2) that answers `?cut=N` with
/// [`ANTHROPIC_STREAM`] in two DATA frames cut at byte N, and `?cut=1by1`
/// with one frame per byte.
async fn h2_frames_upstream(ca: &TestCa) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(&[b"h2"]));
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            // Small frames written one by one would otherwise wait for ACKs.
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut conn) = h2::server::handshake(tls).await else { return };
                while let Some(Ok((request, mut respond))) = conn.accept().await {
                    tokio::spawn(async move {
                        let cut = request.uri().query().and_then(|q| q.strip_prefix("cut=")).unwrap_or("0").to_string();
                        let mut upload = request.into_body();
                        while let Some(Ok(data)) = upload.data().await {
                            let _ = upload.flow_control().release_capacity(data.len());
                        }
                        let response =
                            http::Response::builder().header("content-type", "text/event-stream").body(()).unwrap();
                        let Ok(mut send) = respond.send_response(response, false) else { return };
                        let body = bytes::Bytes::from_static(ANTHROPIC_STREAM.as_bytes());
                        let pieces: Vec<bytes::Bytes> = match cut.parse::<usize>() {
                            Ok(at) => vec![body.slice(..at), body.slice(at..)],
                            Err(_) => (0..body.len()).map(|i| body.slice(i..i + 1)).collect(),
                        };
                        for piece in pieces {
                            send.reserve_capacity(piece.len());
                            let _ = std::future::poll_fn(|cx| send.poll_capacity(cx)).await;
                            if send.send_data(piece, false).is_err() {
                                return;
                            }
                        }
                        let _ = send.send_data(bytes::Bytes::new(), true);
                    });
                }
            });
        }
    });
    (port, task)
}

#[tokio::test]
async fn usage_split_across_http2_frames_at_every_byte_is_read_whole() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, _, _) = ca.write(dir.path());
    let (port, upstream) = h2_frames_upstream(&ca).await;
    let admin = free_port();
    let yaml = format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nadmin_port: {admin}\nca_file: {}\n\
         auth_keys: [{{key: client-key, name: team-a}}]\nproviders:\n  \
         - {{type: anthropic, name: claude, host: a.local, endpoint: \"localhost:{port}\", api_key: real-key}}\n",
        ca_file.display()
    );
    let proxy = TestProxy::start(&yaml);
    let mut client = Client::connect(proxy.addr).await;
    let auth = [("host", "a.local"), ("x-api-key", "client-key"), ("anthropic-version", "2023-06-01")];
    let cuts: Vec<String> = (1..ANTHROPIC_STREAM.len()).map(|c| c.to_string()).chain(["1by1".to_string()]).collect();
    for cut in &cuts {
        let (status, _, body) = client.send("POST", &format!("/v1/messages?cut={cut}"), &auth, "{}").await;
        assert_eq!((status, body.as_str()), (200, ANTHROPIC_STREAM), "cut at {cut}");
    }
    let n = cuts.len() as f64;
    let series = |direction: &str| {
        format!(
            r#"openproxy_tokens_total{{direction="{direction}",provider="claude",model="claude-x",client="team-a"}}"#
        )
    };
    let m = metrics_until(admin, "every answer counted", |m| m.get(&series("output")) == Some(&(15.0 * n))).await;
    assert_eq!(m[&series("input")], 25.0 * n);
    upstream.abort();
}
