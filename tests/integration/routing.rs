//! Routing by Host and path prefix, through the real binary.

use crate::support::*;

#[tokio::test]
async fn prefix_routes_match_whole_segments_and_are_stripped() {
    let openai = MockUpstream::start("openai").await;
    let other = MockUpstream::start("other").await;
    let yaml = format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nproviders:\n  - type: openai\n    host: \"x.local/openai\"\n    endpoint: \"127.0.0.1:{}\"\n    tls: false\n    api_key: k1\n  - type: forward\n    host: \"x.local\"\n    endpoint: \"127.0.0.1:{}\"\n    tls: false\n",
        openai.port(),
        other.port()
    );
    let proxy = TestProxy::start(&yaml);
    let (status, _, body) = send(proxy.addr, "GET", "/openai/v1/models?limit=2", &[("host", "x.local")], "").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"openai\""), "{body}");
    let (_, _, body) = send(proxy.addr, "GET", "/openai", &[("host", "x.local:9999")], "").await;
    assert!(body.contains("\"openai\""), "{body}");
    let (_, _, body) = send(proxy.addr, "GET", "/openai2/v1", &[("host", "X.LOCAL")], "").await;
    assert!(body.contains("\"other\""), "/openai2 must not match the /openai prefix: {body}");
    let seen: Vec<String> = openai.recorded().iter().map(|r| r.uri.clone()).collect();
    assert_eq!(seen, vec!["/v1/models?limit=2", "/"]);
    assert_eq!(other.recorded()[0].uri, "/openai2/v1");
}

#[tokio::test]
async fn unknown_host_is_404_and_reaches_no_upstream() {
    let up = MockUpstream::start("a").await;
    let proxy = TestProxy::start(&one_provider("openai", "a.local", up.port(), ""));
    let (status, headers, body) = send(proxy.addr, "GET", "/v1/models", &[("host", "b.local")], "").await;
    assert_eq!(status, 404);
    assert_eq!(headers["content-type"], "application/json");
    assert!(body.contains(r#""type":"unknown_host""#), "{body}");
    assert!(up.recorded().is_empty());
}

fn provider(kind: &str, host: &str, upstream: u16, auth_key: &str) -> String {
    format!(
        "  - type: {kind}\n    host: \"{host}\"\n    endpoint: \"127.0.0.1:{upstream}\"\n    tls: false\n    api_key: real\n    auth_keys: [\"{auth_key}\"]\n"
    )
}

#[tokio::test]
async fn the_client_key_decides_which_matching_provider_serves() {
    let (prefixed, bare) = (MockUpstream::start("prefixed").await, MockUpstream::start("bare").await);
    let yaml = format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nproviders:\n{}{}",
        provider("openai", "h.local/v1", prefixed.port(), "key-a"),
        provider("openai", "h.local", bare.port(), "key-b")
    );
    let proxy = TestProxy::start(&yaml);
    let with = |key: &str| [("host", "h.local".to_string()), ("authorization", format!("Bearer {key}"))];
    for (key, mock) in [("key-a", "prefixed"), ("key-b", "bare")] {
        let headers = with(key);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, _, body) = send(proxy.addr, "GET", "/v1/x", &headers, "").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&format!("\"{mock}\"")), "{key} -> {body}");
    }
    assert_eq!(prefixed.recorded()[0].uri, "/x", "the longest prefix that accepts the key, removed");
    assert_eq!(bare.recorded()[0].uri, "/v1/x", "the un-prefixed provider keeps the whole path");
    let headers = [("host", "h.local"), ("authorization", "Bearer key-c")];
    assert_eq!(send(proxy.addr, "GET", "/v1/x", &headers, "").await.0, 401);
}

#[tokio::test]
async fn providers_of_different_types_share_a_host_each_judging_by_its_own_rules() {
    let (openai, anthropic) = (MockUpstream::start("openai").await, MockUpstream::start("anthropic").await);
    let yaml = format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nproviders:\n{}{}",
        provider("openai", "m.local", openai.port(), "key-o"),
        provider("anthropic", "m.local", anthropic.port(), "key-a")
    );
    let proxy = TestProxy::start(&yaml);
    let (_, _, body) =
        send(proxy.addr, "POST", "/v1/messages", &[("host", "m.local"), ("x-api-key", "key-a")], "{}").await;
    assert!(body.contains("\"anthropic\""), "{body}");
    let bearer = [("host", "m.local"), ("authorization", "Bearer key-o")];
    let (_, _, body) = send(proxy.addr, "POST", "/v1/chat/completions", &bearer, "{}").await;
    assert!(body.contains("\"openai\""), "{body}");
    assert_eq!(anthropic.recorded()[0].header("x-api-key"), Some("real"));
    assert_eq!(openai.recorded()[0].header("authorization"), Some("Bearer real"));
}
