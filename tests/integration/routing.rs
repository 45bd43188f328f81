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
