//! Failover, passive health and key resting against mock upstreams that fail
//! on command: where each request goes (exact counts from the mocks), that
//! retries happen only before the first byte, that replayed bodies are
//! byte-exact, and that ejections end, probe, and survive a SIGHUP.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::support::*;

const AUTH: (&str, &str) = ("authorization", "Bearer client-key");
const HOST: (&str, &str) = ("host", "h.local");

/// A config with `top` keys and one openai provider per `(port, extra lines)`.
fn config(top: &str, providers: &[(u16, &str)]) -> String {
    let mut out =
        format!("http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nauth_keys: [client-key]\n{top}providers:\n");
    for (port, extra) in providers {
        out.push_str(&format!(
            "  - type: openai\n    host: h.local\n    endpoint: \"127.0.0.1:{port}\"\n    tls: false\n{extra}"
        ));
        if !extra.contains("api_key") {
            out.push_str("    api_key: real-key\n");
        }
    }
    out
}

/// A port nothing listens on: connects are refused.
fn refused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A mock that answers `status` (with `headers`) to its first `failures` requests, then 200.
async fn failing(failures: usize, status: u16, headers: &[(&str, &str)]) -> MockUpstream {
    let seen = AtomicUsize::new(0);
    let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    MockUpstream::with(move |_| {
        if seen.fetch_add(1, Ordering::SeqCst) < failures {
            let mut reply = Reply::json(status, r#"{"error":"scripted"}"#);
            reply.headers.extend(headers.iter().cloned());
            reply
        } else {
            Reply::json(200, r#"{"ok":true}"#)
        }
    })
    .await
}

#[tokio::test]
async fn a_refused_connection_fails_over_to_the_next_provider() {
    let good = MockUpstream::start("good").await;
    // The dead one is preferred; the good one is a fallback.
    let proxy = TestProxy::start(&config(
        "",
        &[(refused_port(), "    priority: 5\n"), (good.port(), "    is_fallback: true\n")],
    ));
    for _ in 0..3 {
        let (status, _, body) = send(proxy.addr, "POST", "/v1/chat", &[HOST, AUTH], r#"{"n":1}"#).await;
        assert_eq!((status, body.as_str()), (200, r#"{"ok":true,"mock":"good"}"#));
    }
    assert_eq!(good.recorded().len(), 3);
}

#[tokio::test]
async fn statuses_are_retried_only_when_replay_is_safe() {
    let first = failing(usize::MAX, 503, &[]).await;
    let second = MockUpstream::start("second").await;
    let proxy = TestProxy::start(&config("", &[(first.port(), "    priority: 5\n"), (second.port(), "")]));
    // A POST the upstream may have acted on is not sent twice: the 503 reaches the client.
    let (status, _, body) = send(proxy.addr, "POST", "/v1/chat", &[HOST, AUTH], "{}").await;
    assert_eq!((status, body.as_str()), (503, r#"{"error":"scripted"}"#));
    assert_eq!((first.recorded().len(), second.recorded().len()), (1, 0));
    // A GET is.
    let (status, _, _) = send(proxy.addr, "GET", "/v1/models", &[HOST, AUTH], "").await;
    assert_eq!(status, 200);
    assert_eq!((first.recorded().len(), second.recorded().len()), (2, 1));
}

#[tokio::test]
async fn a_429_moves_to_another_key_and_rests_the_first() {
    // Key "k1" is always rate limited; "k2" always works.
    let up = MockUpstream::with(|req| match req.header("authorization") {
        Some("Bearer k1") => {
            let mut reply = Reply::json(429, r#"{"error":"slow down"}"#);
            reply.headers.push(("retry-after".into(), "30".into()));
            reply
        }
        _ => Reply::json(200, r#"{"ok":true}"#),
    })
    .await;
    let keys = "    api_keys:\n      - {key: k1, weight: 1000}\n      - {key: k2, weight: 0.001}\n";
    let proxy = TestProxy::start(&config("", &[(up.port(), keys)]));
    let body = r#"{"model":"m","messages":[]}"#;
    for _ in 0..4 {
        let (status, _, _) = send(proxy.addr, "POST", "/v1/chat", &[HOST, AUTH], body).await;
        assert_eq!(status, 200);
    }
    let keys: Vec<String> = up.recorded().iter().map(|r| r.header("authorization").unwrap().to_string()).collect();
    assert_eq!(keys, ["Bearer k1", "Bearer k2", "Bearer k2", "Bearer k2", "Bearer k2"], "k1 rests after its 429");
    assert!(up.recorded().iter().all(|r| r.body == body.as_bytes()), "the replay is byte-exact");
}

#[tokio::test]
async fn when_every_key_rests_the_proxy_answers_429_itself() {
    let up = failing(usize::MAX, 429, &[("retry-after", "20"), ("x-ratelimit-remaining-requests", "0")]).await;
    let proxy = TestProxy::start(&config("", &[(up.port(), "")]));
    // The upstream's own 429 reaches the client unchanged.
    let (status, headers, body) = send(proxy.addr, "POST", "/v1/chat", &[HOST, AUTH], "{}").await;
    assert_eq!((status, body.as_str()), (429, r#"{"error":"scripted"}"#));
    assert_eq!(headers["retry-after"], "20");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    // Then the proxy answers at once, without calling the upstream.
    let (status, headers, body) = send(proxy.addr, "POST", "/v1/chat", &[HOST, AUTH], "{}").await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("rate limited"), "{body}");
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((19..=20).contains(&wait), "Retry-After {wait}");
    assert_eq!(up.recorded().len(), 1);
}

#[tokio::test]
async fn a_streamed_body_is_replayed_byte_exact() {
    let first = failing(usize::MAX, 429, &[]).await;
    let second = MockUpstream::start("second").await;
    let proxy = TestProxy::start(&config("", &[(first.port(), "    priority: 5\n"), (second.port(), "")]));
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let head = "POST /v1/files HTTP/1.1\r\nHost: h.local\r\nAuthorization: Bearer client-key\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    client.write_all(head.as_bytes()).await.unwrap();
    for piece in body.chunks(7_000) {
        client.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).await.unwrap();
        client.write_all(piece).await.unwrap();
        client.write_all(b"\r\n").await.unwrap();
    }
    client.write_all(b"0\r\n\r\n").await.unwrap();
    let resp = read_until_close(&mut client, Duration::from_secs(10)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(first.recorded()[0].body, body);
    assert_eq!(second.recorded()[0].body, body);
}

#[tokio::test]
async fn nothing_is_retried_once_the_answer_has_begun() {
    let breaking = RawUpstream::start(|mut stream| async move {
        read_head(&mut stream).await;
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\npartial").await;
    })
    .await;
    let second = MockUpstream::start("second").await;
    let proxy = TestProxy::start(&config("", &[(breaking.port(), "    priority: 5\n"), (second.port(), "")]));
    let request = b"GET /v1/models HTTP/1.1\r\nHost: h.local\r\nAuthorization: Bearer client-key\r\n\r\n";
    let resp = raw_exchange(proxy.addr, request, Duration::from_secs(10)).await;
    assert!(resp.starts_with("HTTP/1.1 200") && resp.ends_with("\r\n\r\npartial"), "{resp}");
    assert_eq!(second.recorded().len(), 0);
}

#[tokio::test]
async fn a_stalled_head_fails_over_within_the_first_byte_timeout() {
    let silent = RawUpstream::start(|mut stream| async move {
        read_head(&mut stream).await;
        std::future::pending::<()>().await;
    })
    .await;
    let second = MockUpstream::start("second").await;
    let top = "first_byte_timeout: 0.3\n";
    let proxy = TestProxy::start(&config(top, &[(silent.port(), "    priority: 5\n"), (second.port(), "")]));
    let started = Instant::now();
    let (status, _, _) = send(proxy.addr, "GET", "/v1/models", &[HOST, AUTH], "").await;
    assert_eq!(status, 200);
    let took = started.elapsed().as_secs_f64();
    assert!((0.3..3.0).contains(&took), "took {took:.2} s");
}

#[tokio::test]
async fn live_failures_eject_a_provider_until_a_probe_succeeds() {
    let flaky = failing(2, 500, &[]).await;
    let backup = MockUpstream::start("backup").await;
    let top = "retry: {attempts: 0}\npassive_health: {failures: 2, cooldown: 0.5}\n";
    let proxy = TestProxy::start(&config(top, &[(flaky.port(), "    priority: 5\n"), (backup.port(), "")]));
    let get = || send(proxy.addr, "GET", "/v1/models", &[HOST, AUTH], "");
    assert_eq!(get().await.0, 500);
    assert_eq!(get().await.0, 500);
    wait_for_log(&proxy, "provider ejected", Duration::from_secs(5)).await;
    for _ in 0..3 {
        assert_eq!(get().await.0, 200);
    }
    assert_eq!((flaky.recorded().len(), backup.recorded().len()), (2, 3), "ejected: the backup took the traffic");
    tokio::time::sleep(Duration::from_millis(600)).await; // the cooldown from config, then one probe
    assert_eq!(get().await.0, 200);
    assert_eq!(get().await.0, 200);
    assert_eq!((flaky.recorded().len(), backup.recorded().len()), (4, 3), "the probe readmitted it");
}

#[tokio::test]
async fn no_eligible_provider_is_a_503_with_retry_after_and_ejection_survives_sighup() {
    let broken = failing(usize::MAX, 502, &[]).await;
    let top = "retry: {attempts: 0}\npassive_health: {failures: 1, cooldown: 30}\n";
    let proxy = TestProxy::start(&config(top, &[(broken.port(), "")]));
    assert_eq!(send(proxy.addr, "GET", "/v1/models", &[HOST, AUTH], "").await.0, 502);
    let check = |proxy: &TestProxy| {
        let addr = proxy.addr;
        async move {
            let (status, headers, body) = send(addr, "GET", "/v1/models", &[HOST, AUTH], "").await;
            assert_eq!(status, 503, "{body}");
            assert!(body.contains("no healthy provider"), "{body}");
            let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=30).contains(&wait), "Retry-After {wait}");
        }
    };
    check(&proxy).await;
    proxy.signal("HUP");
    wait_for_log(&proxy, "configuration reloaded", Duration::from_secs(5)).await;
    check(&proxy).await;
    assert_eq!(broken.recorded().len(), 1, "an ejected provider gets nothing");
}

#[tokio::test]
async fn http2_clients_fail_over_through_the_same_pipeline() {
    use crate::support::tls::*;
    let good = MockUpstream::start("good").await;
    let (ca, dir) = (TestCa::new(), tempfile::tempdir().unwrap());
    let (_, cert, key) = ca.write(dir.path());
    let yaml = config("", &[(refused_port(), "    priority: 5\n"), (good.port(), "")])
        .replace("http_port: {port}\nhttp_bind_address: 127.0.0.1\n", "")
        .replace(
            "auth_keys:",
            &format!(
                "https_port: {{port}}\nhttps_bind_address: 127.0.0.1\ncert_file: {}\nprivate_key_file: {}\nauth_keys:",
                cert.display(),
                key.display()
            ),
        )
        .replace("host: h.local", "host: localhost");
    let proxy = TestProxy::start(&yaml);
    let mut client = h2_client(proxy.addr, &ca).await;
    let request = hyper::Request::post("https://localhost/v1/chat")
        .header("authorization", "Bearer client-key")
        .body(TestBody::bytes(r#"{"n":2}"#))
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(good.recorded()[0].body, r#"{"n":2}"#.as_bytes());
}

/// A mock that refuses key "dead" always, and any key when the client sent
/// a wrong organization header (as OpenAI does).
async fn fussy_upstream() -> MockUpstream {
    MockUpstream::with(|req| {
        let dead = req.header("authorization") == Some("Bearer dead");
        if dead || req.header("openai-organization") == Some("org-bogus") {
            Reply::json(401, r#"{"error":{"message":"invalid key"}}"#)
        } else {
            Reply::json(200, r#"{"ok":true}"#)
        }
    })
    .await
}

#[tokio::test]
async fn a_key_rests_after_a_401_only_when_its_own_check_fails_too() {
    let up = fussy_upstream().await;
    let keys = "    api_keys:\n      - {key: dead, weight: 1000}\n      - {key: alive, weight: 0.001}\n";
    let proxy = TestProxy::start(&config("", &[(up.port(), keys)]));
    let (status, _, _) = send(proxy.addr, "POST", "/v1/chat", &[HOST, AUTH], "{}").await;
    assert_eq!(status, 401, "401 is not retried unless listed");
    wait_for_log(&proxy, "failed its check", Duration::from_secs(5)).await;
    for _ in 0..3 {
        assert_eq!(send(proxy.addr, "POST", "/v1/chat", &[HOST, AUTH], "{}").await.0, 200);
    }
    let check = up.recorded().into_iter().find(|r| r.method == "GET").expect("a bare check was sent");
    assert_eq!((check.uri.as_str(), check.header("authorization")), ("/v1/models", Some("Bearer dead")));
}

#[tokio::test]
async fn a_client_provoking_401s_cannot_take_the_key_away() {
    let up = fussy_upstream().await;
    let proxy = TestProxy::start(&config("", &[(up.port(), "    api_key: alive\n")]));
    let bogus = [HOST, AUTH, ("openai-organization", "org-bogus")];
    for _ in 0..5 {
        assert_eq!(send(proxy.addr, "POST", "/v1/chat", &bogus, "{}").await.0, 401);
    }
    // The key's own check passed, so everyone else is still served.
    let checked = || up.recorded().iter().filter(|r| r.method == "GET").count();
    let deadline = Instant::now() + Duration::from_secs(5);
    while checked() == 0 {
        assert!(Instant::now() < deadline, "no key check was sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let check = up.recorded().into_iter().find(|r| r.method == "GET").unwrap();
    assert_eq!(check.header("openai-organization"), None, "the check carries nothing of the client's");
    assert_eq!(send(proxy.addr, "POST", "/v1/chat", &[HOST, AUTH], "{}").await.0, 200);
    assert!(!proxy.logs().contains("failed its check"), "{}", proxy.logs());
}
