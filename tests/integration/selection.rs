//! Provider selection through the binary: weights (checked statistically over
//! hundreds of requests), key weights, priority, fallback and health.

use std::time::Duration;

use crate::support::*;

const HEADERS: [(&str, &str); 2] = [("host", "h.local"), ("authorization", "Bearer client-key")];

fn provider(port: u16, extra: &str) -> String {
    format!("  - type: openai\n    host: h.local\n    endpoint: \"127.0.0.1:{port}\"\n    tls: false\n{extra}")
}

fn config(providers: &[String], top: &str) -> String {
    format!(
        "http_port: {{port}}\nhttp_bind_address: 127.0.0.1\nauth_keys: [client-key]\n{top}providers:\n{}",
        providers.concat()
    )
}

/// Whether `got` is within 4.5 standard deviations of a binomial(n, p) mean.
fn plausible(got: usize, n: usize, p: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (got as f64 - mean).abs() <= 4.5 * sd
}

#[tokio::test]
async fn provider_weights_split_traffic() {
    let light = MockUpstream::start("light").await;
    let heavy = MockUpstream::start("heavy").await;
    let proxy = TestProxy::start(&config(
        &[
            provider(light.port(), "    weight: 1\n    api_key: k\n"),
            provider(heavy.port(), "    weight: 3\n    api_key: k\n"),
        ],
        "",
    ));
    let n = 400;
    for _ in 0..n {
        let (status, _, _) = send(proxy.addr, "GET", "/v1/models", &HEADERS, "").await;
        assert_eq!(status, 200);
    }
    let (l, h) = (light.recorded().len(), heavy.recorded().len());
    assert_eq!(l + h, n);
    assert!(plausible(l, n, 0.25), "weight 1 vs 3 gave {l} vs {h}");
}

#[tokio::test]
async fn api_key_weights_split_traffic() {
    let up = MockUpstream::start("k").await;
    let keys = "    api_keys:\n      - key: key-one\n        weight: 1\n      - key: key-two\n        weight: 2\n";
    let proxy = TestProxy::start(&config(&[provider(up.port(), keys)], ""));
    let n = 300;
    for _ in 0..n {
        send(proxy.addr, "GET", "/v1/models", &HEADERS, "").await;
    }
    let recs = up.recorded();
    let one = recs.iter().filter(|r| r.header("authorization") == Some("Bearer key-one")).count();
    let two = recs.iter().filter(|r| r.header("authorization") == Some("Bearer key-two")).count();
    assert_eq!(one + two, n);
    assert!(plausible(one, n, 1.0 / 3.0), "key weight 1 vs 2 gave {one} vs {two}");
}

#[tokio::test]
async fn highest_priority_takes_all_traffic() {
    let low = MockUpstream::start("low").await;
    let high = MockUpstream::start("high").await;
    let proxy = TestProxy::start(&config(
        &[
            provider(low.port(), "    weight: 100\n    api_key: k\n"),
            provider(high.port(), "    priority: 5\n    api_key: k\n"),
        ],
        "",
    ));
    for _ in 0..50 {
        send(proxy.addr, "GET", "/v1/models", &HEADERS, "").await;
    }
    assert_eq!((low.recorded().len(), high.recorded().len()), (0, 50));
}

#[tokio::test]
async fn fallback_serves_only_while_no_primary_is_healthy() {
    // The primary's health check fails until `healthy` flips.
    let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = healthy.clone();
    let primary = MockUpstream::with(move |rec| {
        let up = flag.load(std::sync::atomic::Ordering::SeqCst);
        match (rec.uri.as_str(), up) {
            ("/health", false) => Reply::json(500, "{}"),
            _ => Reply::json(200, r#"{"mock":"primary"}"#),
        }
    })
    .await;
    let fallback = MockUpstream::start("fallback").await;
    let check = "    health_check:\n      method: GET\n      path: /health\n";
    let proxy = TestProxy::start(&config(
        &[
            provider(primary.port(), &format!("    api_key: k\n{check}")),
            provider(fallback.port(), "    api_key: k\n    is_fallback: true\n"),
        ],
        "health_check:\n  enabled: true\n  interval: 0.2\n",
    ));
    // The health checker marks the primary down before it logs so.
    wait_for_log(&proxy, "provider is now unhealthy", Duration::from_secs(10)).await;
    let (_, _, body) = send(proxy.addr, "GET", "/v1/models", &HEADERS, "").await;
    assert!(body.contains("fallback"), "traffic never moved to the fallback: {body}");
    let checks = primary.recorded().iter().filter(|r| r.uri == "/health").count();
    assert!(checks >= 1);
    assert_eq!(primary.recorded()[0].header("authorization"), Some("Bearer k"), "checks carry the provider key");
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    wait_for_log(&proxy, "provider is healthy again", Duration::from_secs(10)).await;
    let (_, _, body) = send(proxy.addr, "GET", "/v1/models", &HEADERS, "").await;
    assert!(body.contains("primary"), "traffic never returned to the primary: {body}");
    for _ in 0..20 {
        let (_, _, body) = send(proxy.addr, "GET", "/v1/models", &HEADERS, "").await;
        assert!(body.contains("primary"), "fallback used while the primary is healthy");
    }
}

#[tokio::test]
async fn no_healthy_provider_is_503() {
    let sick = MockUpstream::with(|_| Reply::json(503, "{}")).await;
    let check = "    api_key: k\n    health_check:\n      method: GET\n      path: /health\n";
    let proxy =
        TestProxy::start(&config(&[provider(sick.port(), check)], "health_check:\n  enabled: true\n  interval: 0.2\n"));
    wait_for_log(&proxy, "provider is now unhealthy", Duration::from_secs(10)).await;
    let (status, _, body) = send(proxy.addr, "GET", "/v1/models", &HEADERS, "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(r#""code":"no_healthy_provider""#), "{body}");
}
