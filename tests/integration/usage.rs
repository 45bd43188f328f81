//! Token usage at the edges of a stream: a client that leaves before the
//! final usage event, usage events cut across HTTP/2 frames, and
//! `stream_usage: inject`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::support::*;

async fn metrics(admin: u16) -> HashMap<String, f64> {
    let addr = format!("127.0.0.1:{admin}").parse().unwrap();
    let (_, _, text) = send(addr, "GET", "/metrics", &[("host", "admin")], "").await;
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(series, value)| (series.to_string(), value.parse().unwrap())))
        .collect()
}

/// Polls the metrics (bounded) until `done` holds for them.
async fn metrics_until(admin: u16, what: &str, done: impl Fn(&HashMap<String, f64>) -> bool) -> HashMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics(admin).await;
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

const TOKENS_IN: &str = r#"openproxy_tokens_total{direction="input",provider="oai",model="gpt-4o",client="team-a"}"#;
const TOKENS_OUT: &str = r#"openproxy_tokens_total{direction="output",provider="oai",model="gpt-4o",client="team-a"}"#;

#[tokio::test]
async fn usage_is_still_counted_when_the_client_leaves_before_the_last_event() {
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
    let proxy = TestProxy::start(&config(up.port(), admin, ""));

    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let request = "POST /v1/chat/completions HTTP/1.1\r\nhost: h.local\r\nauthorization: Bearer client-key\r\n\
                   content-length: 2\r\n\r\n{}";
    client.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("\"hi\"") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(client);
    // The proxy lets go of the client once a write to it fails.
    metrics_until(admin, "the client connection closed", |m| {
        m.get(r#"openproxy_client_connections{protocol="http1"}"#) == Some(&0.0)
    })
    .await;
    client_gone.notify_one();
    let m = metrics_until(admin, "tokens counted", |m| m.contains_key(TOKENS_OUT)).await;
    assert_eq!((m[TOKENS_IN], m[TOKENS_OUT]), (11.0, 22.0));
    wait_for_log(&proxy, "\"output_tokens\":22", Duration::from_secs(5)).await;
}
