//! Client-key checks and credential swapping per provider type, through the binary.

use crate::support::*;

/// No header of the recorded request may contain the client's key.
fn assert_no_client_key(rec: &Recorded) {
    for (name, value) in &rec.headers {
        assert!(!value.as_bytes().windows(10).any(|w| w == b"client-key"), "client key leaked in {name}");
    }
    assert!(!rec.uri.contains("client-key"), "client key leaked in {}", rec.uri);
}

#[tokio::test]
async fn openai_bearer_is_swapped() {
    let up = MockUpstream::start("o").await;
    let proxy = TestProxy::start(&one_provider("openai", "o.local", up.port(), ""));
    let auth = [("host", "o.local"), ("authorization", "Bearer client-key"), ("content-type", "application/json")];
    let (status, _, _) = send(proxy.addr, "POST", "/v1/chat/completions", &auth, "{}").await;
    assert_eq!(status, 200);
    let rec = &up.recorded()[0];
    assert_eq!(rec.header("authorization"), Some("Bearer real-key"));
    assert_eq!(rec.header("host"), Some(format!("127.0.0.1:{}", up.port()).as_str()));
    assert_no_client_key(rec);
}

#[tokio::test]
async fn anthropic_accepts_x_api_key_and_bearer() {
    let up = MockUpstream::start("a").await;
    let proxy = TestProxy::start(&one_provider("anthropic", "a.local", up.port(), ""));
    for header in [("x-api-key", "client-key"), ("authorization", "Bearer client-key")] {
        let (status, _, _) = send(proxy.addr, "POST", "/v1/messages", &[("host", "a.local"), header], "{}").await;
        assert_eq!(status, 200);
    }
    for rec in up.recorded() {
        assert_eq!(rec.header("x-api-key"), Some("real-key"));
        assert_eq!(rec.header("authorization"), None);
        assert_no_client_key(&rec);
    }
}

#[tokio::test]
async fn gemini_query_key_and_header_are_swapped() {
    let up = MockUpstream::start("g").await;
    let proxy = TestProxy::start(&one_provider("gemini", "g.local", up.port(), ""));
    let path = "/v1beta/models/m:generateContent?key=client-key&alt=sse";
    let (status, _, _) = send(proxy.addr, "POST", path, &[("host", "g.local")], "{}").await;
    assert_eq!(status, 200);
    let (status, _, _) =
        send(proxy.addr, "POST", "/v1beta/x", &[("host", "g.local"), ("x-goog-api-key", "client-key")], "{}").await;
    assert_eq!(status, 200);
    let recs = up.recorded();
    assert_eq!(recs[0].uri, "/v1beta/models/m:generateContent?alt=sse");
    for rec in &recs {
        assert_eq!(rec.header("x-goog-api-key"), Some("real-key"));
        assert_no_client_key(rec);
    }
}

#[tokio::test]
async fn wrong_or_missing_key_is_401_in_the_provider_shape() {
    let up = MockUpstream::start("x").await;
    let cases = [
        (
            "openai",
            r#"{"error":{"message":"invalid or missing API key","type":"authentication_error","code":"invalid_api_key"}}"#,
        ),
        (
            "anthropic",
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid or missing API key"}}"#,
        ),
        ("gemini", r#"{"error":{"code":401,"message":"invalid or missing API key","status":"UNAUTHENTICATED"}}"#),
    ];
    for (kind, expected) in cases {
        let proxy = TestProxy::start(&one_provider(kind, "h.local", up.port(), ""));
        let headers = [("host", "h.local"), ("authorization", "Bearer client-kex"), ("x-api-key", "nope")];
        let (status, _, body) = send(proxy.addr, "POST", "/v1/x", &headers, "{}").await;
        assert_eq!((status, body.as_str()), (401, expected), "{kind}");
        let (status, _, _) = send(proxy.addr, "POST", "/v1/x", &[("host", "h.local")], "{}").await;
        assert_eq!(status, 401, "{kind} without a key");
    }
    assert!(up.recorded().is_empty(), "a refused request reached the upstream");
}

#[tokio::test]
async fn proxy_authorization_works_for_every_type_and_is_not_forwarded() {
    let up = MockUpstream::start("f").await;
    let proxy =
        TestProxy::start(&one_provider("forward", "f.local", up.port(), "").replace("    api_key: \"real-key\"\n", ""));
    let headers =
        [("host", "f.local"), ("proxy-authorization", "Bearer client-key"), ("authorization", "Bearer backend-token")];
    let (status, _, _) = send(proxy.addr, "GET", "/anything", &headers, "").await;
    assert_eq!(status, 200);
    let rec = &up.recorded()[0];
    assert_eq!(rec.header("authorization"), Some("Bearer backend-token"), "forward leaves client headers alone");
    assert_eq!(rec.header("proxy-authorization"), None);
    let (status, _, _) =
        send(proxy.addr, "GET", "/anything", &[("host", "f.local"), ("authorization", "Bearer client-key")], "").await;
    assert_eq!(status, 401, "forward routes read the client key from Proxy-Authorization only");
}

#[tokio::test]
async fn either_presented_credential_may_open_the_route() {
    let up = MockUpstream::start("o").await;
    let proxy = TestProxy::start(&one_provider("openai", "o.local", up.port(), ""));
    let cases = [
        [("authorization", "Bearer client-key"), ("proxy-authorization", "Bearer something-else")],
        [("authorization", "Bearer their-own"), ("proxy-authorization", "Bearer client-key")],
    ];
    for [first, second] in cases {
        let headers = [("host", "o.local"), first, second];
        let (status, _, body) = send(proxy.addr, "GET", "/v1/models", &headers, "").await;
        assert_eq!(status, 200, "{body}");
    }
    for rec in up.recorded() {
        assert_eq!(rec.header("authorization"), Some("Bearer real-key"));
        assert_eq!(rec.header("proxy-authorization"), None);
        assert_no_client_key(&rec);
    }
    let headers = [("host", "o.local"), ("authorization", "Bearer nope"), ("proxy-authorization", "Bearer nope2")];
    assert_eq!(send(proxy.addr, "GET", "/v1/models", &headers, "").await.0, 401);
}

#[tokio::test]
async fn provider_keys_open_only_their_provider() {
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let yaml = format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nproviders:\n  - type: openai\n    host: h.local\n    endpoint: \"127.0.0.1:{}\"\n    tls: false\n    api_key: ka\n    auth_keys: [only-a]\n  - type: openai\n    host: h.local\n    endpoint: \"127.0.0.1:{}\"\n    tls: false\n    api_key: kb\n    auth_keys: [only-b]\n",
        a.port(),
        b.port()
    );
    let proxy = TestProxy::start(&yaml);
    for _ in 0..20 {
        let (status, _, body) =
            send(proxy.addr, "GET", "/v1/models", &[("host", "h.local"), ("authorization", "Bearer only-b")], "").await;
        assert_eq!(status, 200);
        assert!(body.contains("\"b\""), "{body}");
    }
    assert!(a.recorded().is_empty());
    assert!(b.recorded().iter().all(|r| r.header("authorization") == Some("Bearer kb")));
}

#[tokio::test]
async fn anthropic_oauth_command_token_is_bearer_and_refreshed_after_401() {
    // The mock rejects the first token; the command's output then changes.
    let up = MockUpstream::with(|rec| {
        if rec.header("authorization") == Some("Bearer token-1") {
            Reply::json(401, r#"{"type":"error","error":{"type":"authentication_error","message":"expired"}}"#)
        } else {
            Reply::json(200, "{}")
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "token-1\n").unwrap();
    let extra = format!("  - type: anthropic\n    host: oauth.local\n    endpoint: \"127.0.0.1:{}\"\n    tls: false\n    api_key: \"$(cat {})\"\n", up.port(), token.display());
    let proxy = TestProxy::start(&format!("{}{extra}", one_provider("openai", "unused.local", up.port(), "")));
    let headers =
        [("host", "oauth.local"), ("x-api-key", "client-key"), ("anthropic-beta", "prompt-caching-2024-07-31")];
    let (status, _, _) = send(proxy.addr, "POST", "/v1/messages", &headers, "{}").await;
    assert_eq!(status, 401, "the upstream's 401 is passed through");
    std::fs::write(&token, "token-2\n").unwrap();
    let (status, _, _) = send(proxy.addr, "POST", "/v1/messages", &headers, "{}").await;
    assert_eq!(status, 200, "the token was fetched again after the 401");
    let recs = up.recorded();
    assert_eq!(recs[0].header("authorization"), Some("Bearer token-1"));
    assert_eq!(recs[1].header("authorization"), Some("Bearer token-2"));
    for rec in &recs {
        assert_eq!(rec.header("anthropic-beta"), Some("prompt-caching-2024-07-31, oauth-2025-04-20"));
        assert_eq!(rec.header("x-api-key"), None);
        assert_no_client_key(rec);
    }
}

#[tokio::test]
async fn credentials_in_trailers_never_reach_the_upstream() {
    let up = MockUpstream::start("t").await;
    let proxy = TestProxy::start(&one_provider("openai", "t.local", up.port(), ""));
    let request = b"POST /v1/x HTTP/1.1\r\nHost: t.local\r\nAuthorization: Bearer client-key\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nAuthorization: Bearer client-key\r\nX-Api-Key: client-key\r\nContent-Length: 99\r\nX-Checksum: abc\r\n\r\n";
    let resp = raw_exchange(proxy.addr, request, std::time::Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let rec = &up.recorded()[0];
    assert_eq!(rec.body, "hello");
    let trailers = rec.trailers.clone().unwrap_or_default();
    assert_eq!(trailers.get("x-checksum").map(|v| v.to_str().unwrap()), Some("abc"));
    assert_eq!(trailers.len(), 1, "forbidden trailer fields were forwarded: {trailers:?}");
    assert_no_client_key(rec);
}

fn keyless(upstream: u16) -> String {
    format!(
        "  - type: openai\n    host: o.local\n    endpoint: \"127.0.0.1:{upstream}\"\n    tls: false\n    priority: 0\n"
    )
}

#[tokio::test]
async fn a_provider_without_keys_passes_the_clients_own_key_but_never_a_proxy_key() {
    let up = MockUpstream::start("o").await;
    let yaml = format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nauth_keys: [client-key]\nproviders:\n{}",
        keyless(up.port())
    );
    let proxy = TestProxy::start(&yaml);
    let own = [("host", "o.local"), ("proxy-authorization", "Bearer client-key"), ("authorization", "Bearer sk-own")];
    assert_eq!(send(proxy.addr, "GET", "/v1/models", &own, "").await.0, 200);
    let proxy_key_only = [("host", "o.local"), ("authorization", "Bearer client-key")];
    assert_eq!(send(proxy.addr, "GET", "/v1/models", &proxy_key_only, "").await.0, 200);
    let recs = up.recorded();
    assert_eq!(recs[0].header("authorization"), Some("Bearer sk-own"), "the client's own key travels");
    assert_eq!(recs[1].header("authorization"), None, "the proxy's client key never leaves");
    for rec in &recs {
        assert_eq!(rec.header("proxy-authorization"), None);
        assert_no_client_key(rec);
    }
}

#[tokio::test]
async fn after_failover_a_keyless_provider_never_sees_the_previous_providers_key() {
    let failing = MockUpstream::with(|_| Reply::json(503, r#"{"error":"busy"}"#)).await;
    let up = MockUpstream::start("o").await;
    let keyed = format!(
        "  - type: openai\n    host: o.local\n    endpoint: \"127.0.0.1:{}\"\n    tls: false\n    api_key: real-key\n    priority: 1\n",
        failing.port()
    );
    let yaml = format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nauth_keys: [client-key]\nproviders:\n{keyed}{}",
        keyless(up.port())
    );
    let proxy = TestProxy::start(&yaml);
    let headers =
        [("host", "o.local"), ("proxy-authorization", "Bearer client-key"), ("authorization", "Bearer sk-own")];
    let (status, _, body) = send(proxy.addr, "GET", "/v1/models", &headers, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(failing.recorded()[0].header("authorization"), Some("Bearer real-key"));
    assert_eq!(up.recorded()[0].header("authorization"), Some("Bearer sk-own"), "not real-key");
}

#[tokio::test]
async fn a_forward_provider_with_client_auth_off_serves_without_a_client_key() {
    let (open, guarded) = (MockUpstream::start("open").await, MockUpstream::start("guarded").await);
    let forward = |host: &str, port: u16, extra: &str| {
        format!("  - type: forward\n    host: {host}\n    endpoint: \"127.0.0.1:{port}\"\n    tls: false\n{extra}")
    };
    let yaml = format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nauth_keys: [client-key]\nproviders:\n{}{}",
        forward("open.local", open.port(), "    client_auth: false\n"),
        forward("guarded.local", guarded.port(), "")
    );
    let proxy = TestProxy::start(&yaml);
    assert_eq!(send(proxy.addr, "GET", "/status", &[("host", "open.local")], "").await.0, 200);
    assert_eq!(send(proxy.addr, "GET", "/status", &[("host", "guarded.local")], "").await.0, 401);
    let path = proxy.config_path();
    let bad = "http_port: 1\nproviders:\n  - {type: openai, host: a, endpoint: e, api_key: k, client_auth: false}\n";
    std::fs::write(&path, bad).unwrap();
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_openproxy")).args(["check", "-c"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("client_auth can be false only for forward providers"),
        "{stderr}"
    );
}

fn provider_yaml(kind: &str, host: &str, port: u16, extra: &str) -> String {
    format!("  - type: {kind}\n    host: {host}\n    endpoint: \"127.0.0.1:{port}\"\n    tls: false\n{extra}")
}

#[tokio::test]
async fn after_failover_a_forward_provider_gets_the_clients_headers_not_a_provider_key() {
    let failing = MockUpstream::with(|_| Reply::json(503, r#"{"error":"busy"}"#)).await;
    let forward = MockUpstream::start("forward").await;
    let yaml = format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nauth_keys: [team-key]\nproviders:\n{}{}",
        provider_yaml("openai", "h.local", failing.port(), "    api_key: sk-REAL\n"),
        provider_yaml("forward", "h.local", forward.port(), "    is_fallback: true\n")
    );
    let proxy = TestProxy::start(&yaml);
    let headers =
        [("host", "h.local"), ("proxy-authorization", "Bearer team-key"), ("authorization", "Bearer backend")];
    let (status, _, body) = send(proxy.addr, "GET", "/v1/models", &headers, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(failing.recorded()[0].header("authorization"), Some("Bearer sk-REAL"));
    assert_eq!(forward.recorded()[0].header("authorization"), Some("Bearer backend"), "the client's own, restored");
}

#[tokio::test]
async fn no_client_key_of_any_provider_reaches_a_pass_through_or_open_forward_upstream() {
    let (keyed, keyless, open) =
        (MockUpstream::start("keyed").await, MockUpstream::start("keyless").await, MockUpstream::start("open").await);
    let yaml = format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nproviders:\n{}{}{}",
        provider_yaml("openai", "h.local", keyed.port(), "    api_key: sk-REAL\n    auth_keys: [key-a]\n"),
        provider_yaml("openai", "h.local", keyless.port(), ""),
        provider_yaml("forward", "h.local", open.port(), "    client_auth: false\n    auth_keys: [key-f]\n")
    );
    let proxy = TestProxy::start(&yaml);
    for value in ["Bearer key-a", "Bearer\tkey-a", "Bearer key-f"] {
        for _ in 0..6 {
            let headers = [("host", "h.local"), ("authorization", value), ("x-api-key", "key-a")];
            assert_eq!(send(proxy.addr, "GET", "/v1/models", &headers, "").await.0, 200);
        }
    }
    for rec in keyless.recorded().iter().chain(open.recorded().iter()) {
        for (name, value) in &rec.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            assert!(!value.contains("key-a") && !value.contains("key-f"), "{name}: {value}");
        }
    }
    assert!(keyless.recorded().len() + open.recorded().len() > 0, "the open providers served some");
}

#[tokio::test]
async fn a_repeated_authorization_field_is_refused_before_any_upstream() {
    // Which of two Authorization fields would count? Neither: 400, as nginx
    // refuses a second Host (stripping every copy of a proxy key stays as a
    // second line of defence).
    let up = MockUpstream::start("o").await;
    let yaml = format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nauth_keys: [team-key]\nproviders:\n{}",
        provider_yaml("openai", "o.local", up.port(), "")
    );
    let proxy = TestProxy::start(&yaml);
    let headers = [
        ("host", "o.local"),
        ("proxy-authorization", "Bearer team-key"),
        ("authorization", "Bearer sk-own"),
        ("authorization", "Bearer team-key"),
    ];
    assert_eq!(send(proxy.addr, "GET", "/v1/models", &headers, "").await.0, 400);
    assert!(up.recorded().is_empty());
}
