//! CONNECT tunnels: only to targets a provider serves, only with a client key
//! in Proxy-Authorization, never when disabled; refusals open nothing
//! upstream; the tunnel carries raw bytes both ways and closes when idle.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// A TCP echo server that counts its connections.
pub(crate) async fn echo() -> (RawUpstream, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    let up = RawUpstream::start(move |mut stream| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    })
    .await;
    (up, count)
}

fn config(upstream: u16, enabled: bool, extra: &str) -> String {
    format!("connect_tunnel_enabled: {enabled}\n{extra}{}", one_provider("openai", "h.local", upstream, ""))
}

/// Sends a CONNECT and returns the stream with the answer's head.
async fn connect(proxy: &TestProxy, target: &str, auth: Option<&str>) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let auth = auth.map(|a| format!("Proxy-Authorization: {a}\r\n")).unwrap_or_default();
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut stream)).await.expect("an answer");
    (stream, head)
}

async fn echoes(stream: &mut TcpStream, text: &[u8]) {
    stream.write_all(text).await.unwrap();
    let mut got = vec![0u8; text.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut got)).await.unwrap().unwrap();
    assert_eq!(got, text);
}

#[tokio::test]
async fn an_authenticated_tunnel_to_a_served_target_carries_bytes_both_ways() {
    let (up, count) = echo().await;
    let proxy = TestProxy::start(&config(up.port(), true, ""));
    // By endpoint and port, with a Bearer key.
    let (mut stream, head) = connect(&proxy, &format!("127.0.0.1:{}", up.port()), Some("Bearer client-key")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(!lower.contains("content-length") && !lower.contains("transfer-encoding"), "RFC 9110 §9.3.6: {head}");
    assert!(!lower.contains("connection: close"), "{head}");
    echoes(&mut stream, b"hello through the tunnel").await;
    // By routing host (no port there: the endpoint's port), with Basic and the key as the password.
    let (mut stream, head) =
        connect(&proxy, &format!("h.local:{}", up.port()), Some("Basic dXNlcjpjbGllbnQta2V5")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    echoes(&mut stream, b"again").await;
    assert_eq!(count.load(Ordering::SeqCst), 2);
    drop(stream);
    wait_for_log(&proxy, "method=CONNECT", Duration::from_secs(5)).await;
    assert!(proxy.logs().contains("bytes_up=5"), "{}", proxy.logs());
}

#[tokio::test]
async fn without_a_valid_key_the_answer_is_407_and_nothing_opens() {
    let (up, count) = echo().await;
    let proxy = TestProxy::start(&config(up.port(), true, ""));
    let target = format!("127.0.0.1:{}", up.port());
    for auth in [None, Some("Bearer wrong"), Some("Basic dXNlcjp3cm9uZw==")] {
        let (_, head) = connect(&proxy, &target, auth).await;
        assert!(head.starts_with("HTTP/1.1 407"), "{head}");
        assert!(head.to_ascii_lowercase().contains("proxy-authenticate: basic"), "{head}");
    }
    assert_eq!(count.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_target_no_provider_serves_is_403_and_nothing_opens() {
    let (up, count) = echo().await;
    let (other, other_count) = echo().await;
    let proxy = TestProxy::start(&config(up.port(), true, ""));
    let key = Some("Bearer client-key");
    for target in [format!("127.0.0.1:{}", other.port()), "h.local:1".into(), format!("127.0.0.2:{}", up.port())] {
        let (_, head) = connect(&proxy, &target, key).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{target}: {head}");
    }
    assert_eq!((count.load(Ordering::SeqCst), other_count.load(Ordering::SeqCst)), (0, 0));
}

#[tokio::test]
async fn disabled_tunnels_are_403() {
    let (up, count) = echo().await;
    let proxy = TestProxy::start(&config(up.port(), false, ""));
    let (_, head) = connect(&proxy, &format!("127.0.0.1:{}", up.port()), Some("Bearer client-key")).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(count.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_idle_tunnel_is_closed() {
    let (up, _) = echo().await;
    let proxy = TestProxy::start(&config(up.port(), true, "tunnel_idle_timeout: 0.3\n"));
    let (mut stream, head) = connect(&proxy, &format!("127.0.0.1:{}", up.port()), Some("Bearer client-key")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    echoes(&mut stream, b"x").await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the idle tunnel was not closed");
}

#[tokio::test]
async fn a_routing_host_in_front_of_several_endpoints_is_refused() {
    let ((a, a_count), (b, b_count)) = (echo().await, echo().await);
    let provider = |port: u16| {
        format!("  - type: openai\n    host: \"h.local:4443\"\n    endpoint: \"127.0.0.1:{port}\"\n    tls: false\n    api_key: k\n")
    };
    let yaml = format!(
        "connect_tunnel_enabled: true\nhttp_port: {{port}}\nhttp_bind_address: 127.0.0.1\nauth_keys: [client-key]\nproviders:\n{}{}",
        provider(a.port()),
        provider(b.port())
    );
    let proxy = TestProxy::start(&yaml);
    // Which of the two would the tunnel reach? Neither: refused.
    let (_, head) = connect(&proxy, "h.local:4443", Some("Bearer client-key")).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let (mut stream, head) = connect(&proxy, &format!("127.0.0.1:{}", b.port()), Some("Bearer client-key")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "an endpoint itself is unambiguous: {head}");
    echoes(&mut stream, b"b").await;
    assert_eq!((a_count.load(Ordering::SeqCst), b_count.load(Ordering::SeqCst)), (0, 1));
}

#[tokio::test]
async fn an_unreachable_endpoint_counts_against_the_providers_health() {
    let dead = free_port();
    let extra = "passive_health: {failures: 1, cooldown: 30}\n";
    let proxy = TestProxy::start(&config(dead, true, extra));
    let (_, head) = connect(&proxy, &format!("127.0.0.1:{dead}"), Some("Bearer client-key")).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    let (_, head) = connect(&proxy, &format!("127.0.0.1:{dead}"), Some("Bearer client-key")).await;
    assert!(head.starts_with("HTTP/1.1 503"), "ejected after the failed connect: {head}");
}

#[tokio::test]
async fn a_forward_provider_with_client_auth_off_takes_a_connect_without_a_key() {
    let (up, count) = echo().await;
    let yaml = format!(
        "connect_tunnel_enabled: true\nhttp_port: {{port}}\nhttp_bind_address: 127.0.0.1\nauth_keys: [client-key]\nproviders:\n  - type: forward\n    host: f.local\n    endpoint: \"127.0.0.1:{}\"\n    tls: false\n    client_auth: false\n",
        up.port()
    );
    let proxy = TestProxy::start(&yaml);
    let (mut stream, head) = connect(&proxy, &format!("127.0.0.1:{}", up.port()), None).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    echoes(&mut stream, b"open").await;
    assert_eq!(count.load(Ordering::SeqCst), 1);
}
