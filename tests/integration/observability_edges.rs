//! Edges of the access line and usage counting found by a hostile review:
//! the upload still feeds the first-byte clock, JSON logs at debug level stay
//! JSON, token counters never go down, and a Gemini model label is the path's.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::*;

async fn slow_upload(extra_top: &str) -> String {
    let up = MockUpstream::start("ok").await;
    let yaml = format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nauth_keys: [client-key]\n{extra_top}providers:\n  \
         - {{type: openai, name: oai, host: h.local, endpoint: \"127.0.0.1:{}\", tls: false, api_key: real-key, first_byte_timeout: 0.5}}\n",
        up.port()
    );
    let proxy = TestProxy::start(&yaml);
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: h.local\r\nauthorization: Bearer client-key\r\ncontent-length: 40\r\nconnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    // Each piece comes well within the first-byte timeout, all of them not.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = stream.write_all(b"0123456789").await;
    }
    read_until_close(&mut stream, Duration::from_secs(10)).await
}

#[tokio::test]
async fn a_slow_upload_feeds_the_first_byte_clock_with_or_without_retries() {
    for extra in ["retry: {attempts: 0}\n", "retry: {max_body_size: 10}\n", ""] {
        let resp = slow_upload(extra).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{extra}: {resp}");
    }
}

#[tokio::test]
async fn json_logs_at_debug_level_stay_json_and_answer_a_malformed_head() {
    let up = MockUpstream::start("ok").await;
    let yaml = format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nlog_format: json\nauth_keys: [client-key]\nproviders:\n  \
         - {{type: openai, name: oai, host: h.local, endpoint: \"127.0.0.1:{}\", tls: false, api_key: real-key}}\n",
        up.port()
    );
    let proxy = TestProxy::start(&yaml);
    let resp =
        raw_exchange(proxy.addr, b"GET /x HTTP/1.1\r\nhost: h.local\r\nbad header\r\n\r\n", Duration::from_secs(5))
            .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "no answer: {resp:?}\n{}", proxy.logs());
    wait_for_log(&proxy, "rejected request head", Duration::from_secs(5)).await;
    for line in proxy.logs().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("field_error").is_none(), "{line}");
    }
}

/// An upstream whose first answer reports 10 input tokens and the second an
/// impossible count.
async fn usage_then_nonsense() -> RawUpstream {
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    RawUpstream::start(move |mut stream| {
        let first = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
        async move {
            let _ = read_head(&mut stream).await;
            let body = if first {
                r#"{"model":"m","usage":{"prompt_tokens":10,"completion_tokens":1}}"#
            } else {
                r#"{"model":"m","usage":{"prompt_tokens":99999999999999999999999,"completion_tokens":1}}"#
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
        }
    })
    .await
}

async fn metrics_text(admin: u16) -> String {
    let addr = format!("127.0.0.1:{admin}").parse().unwrap();
    send(addr, "GET", "/metrics", &[("host", "admin")], "").await.2
}

#[tokio::test]
async fn token_counters_never_go_down() {
    let up = usage_then_nonsense().await;
    let admin = free_port();
    let yaml = format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nadmin_port: {admin}\nauth_keys: [client-key]\nproviders:\n  \
         - {{type: openai, name: oai, host: h.local, endpoint: \"127.0.0.1:{}\", tls: false, api_key: real-key}}\n",
        up.port()
    );
    let proxy = TestProxy::start(&yaml);
    let auth = [("host", "h.local"), ("authorization", "Bearer client-key")];
    let series = r#"openproxy_tokens_total{direction="input",provider="oai",model="m",client="key-"#;
    for _ in 0..2 {
        assert_eq!(send(proxy.addr, "POST", "/v1/chat/completions", &auth, "{}").await.0, 200);
    }
    wait_for_log(&proxy, "status=200", Duration::from_secs(5)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics_text(admin).await;
        let value = text.lines().find(|l| l.starts_with(series)).map(|l| l.rsplit_once(' ').unwrap().1.to_string());
        if value.as_deref() == Some("10") && text.contains(r#"direction="output",provider="oai",model="m""#) {
            let output = text.lines().find(|l| l.contains(r#"direction="output",provider="oai""#)).unwrap();
            if output.ends_with(" 2") {
                break; // the impossible input count was ignored, the output counted
            }
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_gemini_model_label_is_the_paths_and_never_a_client_key() {
    let up = RawUpstream::start(|mut stream| async move {
        let _ = read_head(&mut stream).await;
        let body = r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{"model":"chosen-by-the-llm"}}}]}}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":9}}"#;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes()).await;
    })
    .await;
    let admin = free_port();
    let yaml = format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nadmin_port: {admin}\nauth_keys: [client-key]\nproviders:\n  \
         - {{type: gemini, name: gem, host: g.local, endpoint: \"127.0.0.1:{}\", tls: false, api_key: real-key}}\n",
        up.port()
    );
    let proxy = TestProxy::start(&yaml);
    let gemini = [("host", "g.local"), ("x-goog-api-key", "client-key")];
    for path in ["/v1beta/models/gemini-2.0-flash:generateContent", "/v1beta/models/client-key:generateContent"] {
        assert_eq!(send(proxy.addr, "POST", path, &gemini, "{}").await.0, 200);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = metrics_text(admin).await;
        if text.contains(r#"model="redacted""#) {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(text.contains(r#"model="gemini-2.0-flash""#), "{text}");
    assert!(!text.contains("chosen-by-the-llm") && !text.contains("client-key"), "{text}");
}

#[tokio::test]
async fn a_request_abandoned_mid_attempt_shows_the_attempt() {
    let arrived = std::sync::Arc::new(tokio::sync::Notify::new());
    let signal = arrived.clone();
    let up = RawUpstream::start(move |mut stream| {
        let signal = signal.clone();
        async move {
            read_head(&mut stream).await;
            signal.notify_one();
            // Never answers: the client gives up first.
            let mut rest = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest).await;
        }
    })
    .await;
    let yaml = format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nlog_format: json\nauth_keys: [client-key]\nproviders:\n  \
         - {{type: openai, name: oai, host: h.local, endpoint: \"127.0.0.1:{}\", tls: false, api_key: real-key}}\n",
        up.port()
    );
    let proxy = TestProxy::start(&yaml);
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let request = "GET /v1/models HTTP/1.1\r\nhost: h.local\r\nauthorization: Bearer client-key\r\n\r\n";
    client.write_all(request.as_bytes()).await.unwrap();
    arrived.notified().await;
    drop(client);
    wait_for_log(&proxy, "\"status\":499", Duration::from_secs(10)).await;
    let logs = proxy.logs();
    let line = logs.lines().find(|l| l.contains("\"status\":499")).unwrap();
    let line: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!((line["attempts"].as_u64(), line["key_slot"].as_u64()), (Some(1), Some(0)), "{line}");
}

#[tokio::test]
async fn an_answer_the_upstream_cuts_is_logged_incomplete() {
    let up = RawUpstream::start(|mut stream| async move {
        read_head(&mut stream).await;
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten..").await;
    })
    .await;
    for (format, needle) in [("json", "\"complete\":false"), ("text", "incomplete=true")] {
        let yaml = format!(
            "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nlog_format: {format}\nauth_keys: [client-key]\n\
             providers:\n  - {{type: openai, host: h.local, endpoint: \"127.0.0.1:{}\", tls: false, api_key: real-key}}\n",
            up.port()
        );
        let proxy = TestProxy::start(&yaml);
        let request = "GET /v1/cut HTTP/1.1\r\nhost: h.local\r\nauthorization: Bearer client-key\r\n\r\n";
        let answer = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("only ten.."), "{answer}");
        wait_for_log(&proxy, "/v1/cut", Duration::from_secs(5)).await;
        let line = proxy.logs().lines().find(|l| l.contains("/v1/cut")).unwrap().to_string();
        assert!(line.contains(needle), "{line}");
    }
}
