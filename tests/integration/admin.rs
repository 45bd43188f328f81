//! The admin listener: Prometheus metrics scraped and parsed after known
//! traffic (exact counts per label set), readiness that follows provider
//! health, the status document, and the separation of admin and proxy ports.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::*;

/// A config with the admin listener on `admin`, provider `oai` at `upstream`
/// and provider `dead` (nothing listens) on its own route.
fn config(upstream: u16, admin: u16, extra: &str) -> String {
    let dead = free_port();
    format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nadmin_port: {admin}\nauth_keys: [client-key]\n\
         passive_health: {{failures: 1, cooldown: 60}}\n{extra}providers:\n  \
         - {{type: openai, name: oai, host: h.local, endpoint: \"127.0.0.1:{upstream}\", tls: false, api_key: real-key}}\n  \
         - {{type: openai, name: dead, host: d.local, endpoint: \"127.0.0.1:{dead}\", tls: false, api_key: real-key}}\n"
    )
}

async fn get(port: u16, path: &str) -> (u16, String) {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, _, body) = send(addr, "GET", path, &[("host", "admin")], "").await;
    (status, body)
}

/// Sample lines of an exposition, by series (name and labels as written).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(series, value)| (series.to_string(), value.parse().unwrap())))
        .collect()
}

async fn request(proxy: &TestProxy, host: &str, key: &str) -> u16 {
    let auth = format!("Bearer {key}");
    send(proxy.addr, "POST", "/v1/chat/completions", &[("host", host), ("authorization", &auth)], "{}").await.0
}

#[tokio::test]
async fn metrics_count_known_traffic_exactly() {
    let up = MockUpstream::start("ok").await;
    let admin = free_port();
    let proxy = TestProxy::start(&config(up.port(), admin, ""));
    for _ in 0..3 {
        assert_eq!(request(&proxy, "h.local", "client-key").await, 200);
    }
    for _ in 0..2 {
        assert_eq!(request(&proxy, "h.local", "wrong").await, 401);
    }
    assert_eq!(request(&proxy, "evil-made-up-host", "client-key").await, 404);
    assert_eq!(request(&proxy, "d.local", "client-key").await, 502);
    let (status, text) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    let m = samples(&text);
    let at = |series: &str| m.get(series).copied().unwrap_or_else(|| panic!("no {series} in:\n{text}"));
    assert_eq!(at(r#"openproxy_requests_total{host="h.local",provider="oai",status="200"}"#), 3.0);
    assert_eq!(at(r#"openproxy_requests_total{host="none",provider="none",status="401"}"#), 2.0);
    assert_eq!(at(r#"openproxy_requests_total{host="none",provider="none",status="404"}"#), 1.0);
    assert_eq!(at(r#"openproxy_requests_total{host="d.local",provider="dead",status="502"}"#), 1.0);
    assert_eq!(at(r#"openproxy_request_duration_seconds_count{host="h.local",provider="oai"}"#), 3.0);
    assert_eq!(at(r#"openproxy_time_to_first_byte_seconds_count{host="h.local",provider="oai"}"#), 3.0);
    assert_eq!(at(r#"openproxy_upstream_errors_total{provider="dead",kind="connect"}"#), 1.0);
    assert_eq!(at(r#"openproxy_ejections_total{provider="dead"}"#), 1.0);
    assert_eq!(at(r#"openproxy_provider_healthy{provider="oai"}"#), 1.0);
    assert_eq!(at(r#"openproxy_provider_healthy{provider="dead"}"#), 0.0, "ejected");
    assert_eq!(at("openproxy_open_requests"), 0.0);
    assert!(m.keys().any(|k| k.starts_with("openproxy_config_info{hash=")), "{text}");
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with EOF");
    assert!(!text.contains("evil") && !text.contains("real-key") && !text.contains("client-key"), "{text}");
}

#[tokio::test]
async fn readiness_follows_provider_health_and_status_describes_it() {
    let up = MockUpstream::start("ok").await;
    let admin = free_port();
    let proxy = TestProxy::start(&config(up.port(), admin, ""));
    assert_eq!(get(admin, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(get(admin, "/readyz").await, (200, "ready\n".into()));
    // The only provider of d.local fails once and is ejected.
    assert_eq!(request(&proxy, "d.local", "client-key").await, 502);
    let (status, body) = get(admin, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("d.local") && !body.contains("h.local"), "{body}");
    let (status, body) = get(admin, "/status").await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let providers = doc["providers"].as_array().unwrap();
    assert_eq!(providers.len(), 2);
    assert_eq!(providers[0]["name"], "oai");
    assert_eq!(providers[0]["state"], "ready");
    assert_eq!(providers[1]["name"], "dead");
    assert_eq!(providers[1]["state"], "out");
    assert!(providers[1]["back_in_s"].as_f64().unwrap() > 50.0);
    assert_eq!(doc["listeners"].as_array().unwrap().len(), 2);
    assert!(!body.contains("real-key") && !body.contains("client-key"), "no secret: {body}");
}

#[tokio::test]
async fn admin_paths_are_not_proxy_routes_and_the_other_way_round() {
    let up = MockUpstream::start("ok").await;
    let admin = free_port();
    let proxy = TestProxy::start(&config(up.port(), admin, ""));
    // On the proxy port, /metrics is a request like any other: routed upstream.
    let auth = [("host", "h.local"), ("authorization", "Bearer client-key")];
    let (status, _, body) = send(proxy.addr, "GET", "/metrics", &auth, "").await;
    assert_eq!((status, body.contains("\"mock\":\"ok\"")), (200, true));
    assert_eq!(up.recorded()[0].uri, "/metrics");
    // On the admin port, a proxy route is not found, whatever the Host.
    let addr = format!("127.0.0.1:{admin}").parse().unwrap();
    let (status, _, _) = send(addr, "POST", "/v1/chat/completions", &auth, "{}").await;
    assert_eq!(status, 405);
    assert_eq!(get(admin, "/v1/models").await.0, 404);
    assert_eq!(up.recorded().len(), 1, "nothing reached the upstream from the admin port");
}

#[tokio::test]
async fn reloads_are_counted_by_result() {
    let up = MockUpstream::start("ok").await;
    let admin = free_port();
    let proxy = TestProxy::start(&config(up.port(), admin, ""));
    let first = samples(&get(admin, "/metrics").await.1);
    proxy.signal("HUP");
    wait_for_log(&proxy, "configuration reloaded", Duration::from_secs(10)).await;
    std::fs::write(proxy.config_path(), "providers: [").unwrap();
    proxy.signal("HUP");
    wait_for_log(&proxy, "reload failed", Duration::from_secs(10)).await;
    let m = samples(&get(admin, "/metrics").await.1);
    assert_eq!(m[r#"openproxy_config_reloads_total{result="success"}"#], 1.0);
    assert_eq!(m[r#"openproxy_config_reloads_total{result="failure"}"#], 1.0);
    let hash = |m: &HashMap<String, f64>| m.keys().find(|k| k.starts_with("openproxy_config_info{")).cloned();
    assert_eq!(hash(&first), hash(&m), "the same file, the same hash; a failed reload changes nothing");
}

#[tokio::test]
async fn a_streams_line_and_duration_cover_the_whole_stream() {
    use tokio::io::AsyncWriteExt;
    let up = RawUpstream::start(|mut stream| async move {
        let _ = read_head(&mut stream).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        let _ = stream.write_all(head.as_bytes()).await;
        for i in 0..4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let event = format!("data: {i}\n\n");
            let _ = stream.write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes()).await;
        }
        let _ = stream.write_all(b"0\r\n\r\n").await;
    })
    .await;
    let admin = free_port();
    let proxy = TestProxy::start(&config(up.port(), admin, ""));
    let auth = [("host", "h.local"), ("authorization", "Bearer client-key")];
    let (status, _, body) = send(proxy.addr, "POST", "/v1/chat/completions", &auth, "{\"stream\":true}").await;
    assert_eq!((status, body.len()), (200, 4 * 9));
    wait_for_log(&proxy, "status=200", Duration::from_secs(10)).await;
    let logs = proxy.logs();
    let line = logs.lines().find(|l| l.contains("openproxy::access") && l.contains("status=200")).unwrap();
    let field = |name: &str| line.split(&format!(" {name}=")).nth(1).unwrap().split(' ').next().unwrap().to_string();
    assert!(field("ms").parse::<f64>().unwrap() >= 400.0, "the line waits for the stream's end: {line}");
    assert_eq!((field("bytes_in"), field("bytes_out")), ("15".to_string(), "36".to_string()), "{line}");
    let m = samples(&get(admin, "/metrics").await.1);
    assert!(m[r#"openproxy_request_duration_seconds_sum{host="h.local",provider="oai"}"#] >= 0.4);
    assert!(m[r#"openproxy_time_to_first_byte_seconds_sum{host="h.local",provider="oai"}"#] < 0.1);
}

#[tokio::test]
async fn providers_sharing_an_endpoint_keep_their_own_series() {
    let up = MockUpstream::start("ok").await;
    let admin = free_port();
    let p = |host: &str| {
        format!("  - {{type: openai, host: {host}, endpoint: \"127.0.0.1:{}\", tls: false, api_key: k}}\n", up.port())
    };
    let yaml = format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nadmin_port: {admin}\nproviders:\n{}{}",
        p("a.local"),
        p("b.local")
    );
    let _proxy = TestProxy::start(&yaml);
    let doc: serde_json::Value = serde_json::from_str(&get(admin, "/status").await.1).unwrap();
    let names: Vec<&str> = doc["providers"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    let default = format!("openai:127.0.0.1:{}", up.port());
    assert_eq!(names, [format!("{default}#0"), format!("{default}#1")]);
}

#[tokio::test]
async fn a_client_that_leaves_mid_upload_is_a_499_and_no_upstream_error() {
    use tokio::io::AsyncWriteExt;
    let up = MockUpstream::start("ok").await;
    let admin = free_port();
    let proxy = TestProxy::start(&config(up.port(), admin, ""));
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: h.local\r\nauthorization: Bearer client-key\r\ncontent-length: 1000\r\n\r\n{\"a\"";
        stream.write_all(head.as_bytes()).await.unwrap();
        socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).unwrap();
        drop(stream);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = samples(&get(admin, "/metrics").await.1);
        if m.get(r#"openproxy_requests_total{host="h.local",provider="oai",status="499"}"#) == Some(&3.0) {
            assert!(!m.keys().any(|k| k.starts_with("openproxy_upstream_errors_total")), "{m:?}");
            assert!(!m.keys().any(|k| k.contains("status=\"400\"")), "{m:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_named_and_fingerprinted_client_keys() {
    let up = MockUpstream::start("ok").await;
    let yaml = format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nlog_format: json\n\
         auth_keys: [{{key: client-key, name: team-a}}, other-client-key]\nproviders:\n  \
         - {{type: openai, name: oai, host: h.local, endpoint: \"127.0.0.1:{}\", tls: false, api_key: real-key}}\n",
        up.port()
    );
    let proxy = TestProxy::start(&yaml);
    assert_eq!(request(&proxy, "h.local", "client-key").await, 200);
    assert_eq!(request(&proxy, "h.local", "other-client-key").await, 200);
    assert_eq!(request(&proxy, "h.local", "wrong").await, 401);
    let auth = [("host", "h.local"), ("authorization", "Bearer client-key")];
    send(proxy.addr, "GET", "/v1/models?key=sk-in-query&alt=sse", &auth, "").await;
    // Workers' lines may come a few milliseconds out of order: wait for all
    // four, and tell them apart by what they say.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while proxy.logs().lines().filter(|l| l.contains("\"status\":")).count() < 4 {
        assert!(std::time::Instant::now() < deadline, "not four access lines:\n{}", proxy.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs = proxy.logs();
    let lines: Vec<serde_json::Value> =
        logs.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let access: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("status").is_some()).collect();
    assert_eq!(access.len(), 4, "{logs}");
    let find = |what: &dyn Fn(&serde_json::Value) -> bool| *access.iter().find(|l| what(l)).unwrap();
    let first = find(&|l| l["client_key"] == "team-a" && l["method"] == "POST");
    assert_eq!(first["client"].as_str().unwrap().split(':').next(), Some("127.0.0.1"));
    assert_eq!((first["protocol"].as_str(), first["method"].as_str()), (Some("HTTP/1.1"), Some("POST")));
    assert_eq!(
        (first["provider"].as_str(), first["key_slot"].as_u64(), first["attempts"].as_u64()),
        (Some("oai"), Some(0), Some(1))
    );
    assert_eq!((first["status"].as_u64(), first["bytes_in"].as_u64()), (Some(200), Some(2)));
    assert!(first["duration_ms"].as_f64().unwrap() > 0.0 && first["ttfb_ms"].as_f64().is_some());
    assert!(first.get("time").and_then(|t| t.as_str()).is_some_and(|t| t.ends_with('Z')));
    let other = find(&|l| l["method"] == "POST" && l["status"] == 200 && l["client_key"] != "team-a");
    let fingerprint = other["client_key"].as_str().unwrap();
    assert!(fingerprint.starts_with("key-") && fingerprint.len() == 12, "{fingerprint}");
    let refused = find(&|l| l["status"] == 401);
    assert!(refused["provider"].is_null() && refused["client_key"].is_null());
    assert_eq!(find(&|l| l["method"] == "GET")["path"], "/v1/models?key=*&alt=*");
    for secret in ["client-key\"", "other-client-key", "real-key", "sk-in-query"] {
        assert!(!logs.contains(secret), "{secret} in:\n{logs}");
    }
}

/// An upstream that answers `/stream` with an OpenAI-style SSE stream whose
/// usage chunk comes cut into 3-byte writes, `/json` with a usage body,
/// `/gzip` with a compressed one, and Gemini's path with usageMetadata.
async fn usage_upstream() -> RawUpstream {
    use tokio::io::AsyncWriteExt;
    RawUpstream::start(|mut stream| async move {
        let head = read_head(&mut stream).await;
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        let (content_type, extra, body) = if path.starts_with("/stream") {
            let body = "data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
                        data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":8}}\n\ndata: [DONE]\n\n";
            ("text/event-stream", "", body.to_string())
        } else if path.starts_with("/json") {
            ("application/json", "", r#"{"model":"gpt-4o","usage":{"prompt_tokens":100,"completion_tokens":20}}"#.to_string())
        } else if path.starts_with("/gzip") {
            ("application/json", "content-encoding: gzip\r\n", r#"{"usage":{"prompt_tokens":1000}}"#.to_string())
        } else {
            ("application/json", "", r#"{"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":9}}"#.to_string())
        };
        let head = format!("HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n", body.len());
        let _ = stream.write_all(head.as_bytes()).await;
        for piece in body.as_bytes().chunks(3) {
            let _ = stream.write_all(piece).await;
            let _ = stream.flush().await;
            tokio::task::yield_now().await;
        }
    })
    .await
}

#[tokio::test]
async fn token_usage_is_read_from_bodies_and_streams_as_they_pass() {
    let up = usage_upstream().await;
    let admin = free_port();
    let yaml = format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nadmin_port: {admin}\nlog_format: json\n\
         auth_keys: [{{key: client-key, name: team-a}}]\nproviders:\n  \
         - {{type: openai, name: oai, host: h.local, endpoint: \"127.0.0.1:{p}\", tls: false, api_key: real-key}}\n  \
         - {{type: gemini, name: gem, host: g.local, endpoint: \"127.0.0.1:{p}\", tls: false, api_key: real-key}}\n",
        p = up.port()
    );
    let proxy = TestProxy::start(&yaml);
    let openai = [("host", "h.local"), ("authorization", "Bearer client-key")];
    for path in ["/stream", "/stream", "/json", "/gzip"] {
        let (status, _, body) = send(proxy.addr, "POST", path, &openai, "{}").await;
        assert_eq!(status, 200, "{body}");
    }
    let gemini = [("host", "g.local"), ("x-goog-api-key", "client-key")];
    assert_eq!(send(proxy.addr, "POST", "/v1beta/models/gemini-2.0-flash:generateContent", &gemini, "{}").await.0, 200);
    let m = samples(&get(admin, "/metrics").await.1);
    let tokens = |direction: &str, provider: &str, model: &str| {
        let series = format!(
            r#"openproxy_tokens_total{{direction="{direction}",provider="{provider}",model="{model}",client="team-a"}}"#
        );
        m.get(&series).copied().unwrap_or_else(|| panic!("no {series} in {m:?}"))
    };
    assert_eq!(tokens("input", "oai", "gpt-4o"), 7.0 + 7.0 + 100.0);
    assert_eq!(tokens("output", "oai", "gpt-4o"), 8.0 + 8.0 + 20.0);
    assert_eq!(tokens("input", "gem", "gemini-2.0-flash"), 5.0);
    assert_eq!(tokens("output", "gem", "gemini-2.0-flash"), 9.0);
    assert!(!m.keys().any(|k| k.contains("1000")), "a compressed body is not read: {m:?}");
    wait_for_log(&proxy, "\"input_tokens\":5", Duration::from_secs(10)).await;
    let logs = proxy.logs();
    let line: serde_json::Value =
        logs.lines().filter(|l| l.contains("\"/stream\"")).map(|l| serde_json::from_str(l).unwrap()).next().unwrap();
    assert_eq!(
        (line["model"].as_str(), line["input_tokens"].as_u64(), line["output_tokens"].as_u64()),
        (Some("gpt-4o"), Some(7), Some(8))
    );
}

#[tokio::test]
async fn heads_refused_before_routing_are_counted_and_logged() {
    let up = MockUpstream::start("ok").await;
    let admin = free_port();
    let proxy = TestProxy::start(&config(up.port(), admin, ""));
    for request in [&b"GET /x HTTP/1.1\r\nhost: h.local\r\nbad header\r\n\r\n"[..], b"GET /x HTTP/1.1\r\n\r\n"] {
        let answer = raw_exchange(proxy.addr, request, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    let m = samples(&get(admin, "/metrics").await.1);
    assert_eq!(m[r#"openproxy_requests_total{host="none",provider="none",status="400"}"#], 2.0);
    wait_for_log(&proxy, "request rejected before routing", Duration::from_secs(5)).await;
}
