//! Hostile inputs refused before routing: credential fields sent twice,
//! Content-Length twice (even the same value), and paths whose dot-segments
//! would step out of a route's prefix; the upstream sees none of them.

use std::time::Duration;

use crate::support::*;

fn config(upstream: u16) -> String {
    format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nauth_keys: [client-key]\nproviders:\n  \
         - {{type: openai, host: h.local/openai, endpoint: \"127.0.0.1:{upstream}\", tls: false, api_key: real-key}}\n  \
         - {{type: openai, host: h.local/other, endpoint: \"127.0.0.1:{upstream}\", tls: false, api_key: real-key}}\n"
    )
}

async fn status_of(proxy: &TestProxy, request: &str) -> String {
    let answer = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
    answer.lines().next().unwrap_or("").to_string()
}

#[tokio::test]
async fn a_credential_field_sent_twice_is_refused() {
    let up = MockUpstream::start("ok").await;
    let proxy = TestProxy::start(&config(up.port()));
    for fields in [
        "Authorization: Bearer client-key\r\nAuthorization: Bearer other",
        "Authorization: Bearer client-key\r\nAuthorization: Bearer client-key",
        "Authorization: Bearer client-key\r\nX-API-Key: a\r\nx-api-key: b",
        "Authorization: Bearer client-key\r\nx-goog-api-key: a\r\nX-Goog-Api-Key: a",
        "Proxy-Authorization: Bearer client-key\r\nProxy-Authorization: Bearer client-key",
    ] {
        let request =
            format!("GET /openai/v1/models HTTP/1.1\r\nHost: h.local\r\n{fields}\r\nConnection: close\r\n\r\n");
        assert!(status_of(&proxy, &request).await.starts_with("HTTP/1.1 400"), "{fields}");
    }
    assert_eq!(up.recorded().len(), 0);
}

#[tokio::test]
async fn content_length_twice_is_refused_even_when_equal() {
    let up = MockUpstream::start("ok").await;
    let proxy = TestProxy::start(&config(up.port()));
    for lengths in
        ["Content-Length: 1\r\nContent-Length: 1", "Content-Length: 1, 1", "Content-Length: 1\r\ncontent-length: 2"]
    {
        let request = format!(
            "POST /openai/v1/x HTTP/1.1\r\nHost: h.local\r\nAuthorization: Bearer client-key\r\n{lengths}\r\nConnection: close\r\n\r\nx"
        );
        assert!(status_of(&proxy, &request).await.starts_with("HTTP/1.1 400"), "{lengths}");
    }
    assert_eq!(up.recorded().len(), 0);
}

#[tokio::test]
async fn dot_segments_never_reach_the_upstream_and_never_leave_a_route() {
    let up = MockUpstream::start("ok").await;
    let proxy = TestProxy::start(&config(up.port()));
    let get = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: h.local\r\nAuthorization: Bearer client-key\r\nConnection: close\r\n\r\n")
    };
    for path in [
        "/openai/../other/v1/models",
        "/openai/./../other/x",
        "/openai/..",
        "/openai/%2e%2e/other/x",
        "/openai/%2E%2e",
        "/openai/v1%2fmodels",
        "/openai/v1%5Cmodels",
        "/openai/../../x",
    ] {
        assert!(status_of(&proxy, &get(path)).await.starts_with("HTTP/1.1 400"), "{path}");
    }
    assert_eq!(up.recorded().len(), 0, "nothing refused reached the upstream");
    // Inside its route, a dot-segment is resolved before the upstream sees the path.
    assert!(status_of(&proxy, &get("/openai/./v1/x/../models?a=../b")).await.starts_with("HTTP/1.1 200"));
    assert_eq!(up.recorded()[0].uri, "/v1/models?a=../b");
}

#[tokio::test]
async fn a_request_body_past_the_limit_is_a_413_declared_or_streamed() {
    let up = MockUpstream::start("ok").await;
    let proxy = TestProxy::start(&format!("max_request_body_size: 1000\n{}", config(up.port())));
    let head =
        "POST /openai/v1/x HTTP/1.1\r\nHost: h.local\r\nAuthorization: Bearer client-key\r\nConnection: close\r\n";
    // Declared: refused before a byte of it is read.
    let declared = format!("{head}Content-Length: 2000\r\n\r\n{}", "x".repeat(2000));
    assert!(status_of(&proxy, &declared).await.starts_with("HTTP/1.1 413"));
    assert!(up.recorded().is_empty());
    // Chunked: refused once the count passes the limit.
    let chunk = "x".repeat(600);
    let chunked = format!("{head}Transfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n");
    assert!(status_of(&proxy, &chunked).await.starts_with("HTTP/1.1 413"));
    // At the limit is fine.
    let fits = format!("{head}Content-Length: 1000\r\n\r\n{}", "x".repeat(1000));
    assert!(status_of(&proxy, &fits).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn more_header_fields_than_allowed_is_a_431() {
    let up = MockUpstream::start("ok").await;
    let proxy = TestProxy::start(&format!("http_max_header_count: 10\n{}", config(up.port())));
    let request = |extra: usize| {
        let fields: String = (0..extra).map(|i| format!("x-f{i}: v\r\n")).collect();
        format!("GET /openai/v1/models HTTP/1.1\r\nHost: h.local\r\nAuthorization: Bearer client-key\r\n{fields}Connection: close\r\n\r\n")
    };
    // Host, Authorization, Connection and 7 more: 10 fields, allowed.
    assert!(status_of(&proxy, &request(7)).await.starts_with("HTTP/1.1 200"));
    assert!(status_of(&proxy, &request(8)).await.starts_with("HTTP/1.1 431"));
    assert_eq!(up.recorded().len(), 1);
}
