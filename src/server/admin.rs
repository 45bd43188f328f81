//! The admin listener (`admin_port`): metrics, liveness, readiness and
//! status for operators, on a socket of its own, read with the same
//! HTTP/1.1 codec as the proxy but never routed: no proxy route answers
//! here, and these paths are never served on a proxy port. One request per
//! connection, a small head, a short deadline.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use http::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http1;
use crate::metrics::metrics;
use crate::provider::{Availability, Provider};
use crate::state::{App, Snapshot};

/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// A whole exchange must be done within this.
const DEADLINE: Duration = Duration::from_secs(10);
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Answers one request on `stream`.
pub async fn serve(mut stream: TcpStream, app: Arc<App>) {
    let _ = tokio::time::timeout(DEADLINE, exchange(&mut stream, &app)).await;
}

async fn exchange(stream: &mut TcpStream, app: &App) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(1024);
    let head = loop {
        match http1::take_request_head(&mut buf, MAX_HEAD) {
            Ok(Some(head)) => break head,
            Ok(None) if stream.read_buf(&mut buf).await? > 0 => {}
            Ok(None) => return Ok(()),
            Err(_) => return respond(stream, 400, "text/plain", "bad request\n").await,
        }
    };
    if head.method != Method::GET && head.method != Method::HEAD {
        return respond(stream, 405, "text/plain", "only GET\n").await;
    }
    // Origin-form, or the path of an absolute-form target.
    let path = head.target.parse::<http::Uri>().map(|uri| uri.path().to_string()).unwrap_or_default();
    let snapshot = app.snapshot.load_full();
    let (status, content_type, body) = match path.as_str() {
        "/metrics" => (200, OPENMETRICS, scrape(&snapshot)),
        "/healthz" => (200, "text/plain", "ok\n".to_string()),
        "/readyz" => readiness(&snapshot),
        "/status" => (200, "application/json", status(&snapshot).to_string()),
        _ => (404, "text/plain", "not found: /metrics, /healthz, /readyz, /status\n".to_string()),
    };
    respond_to(stream, head.method == Method::HEAD, status, content_type, &body).await
}

async fn respond(stream: &mut TcpStream, status: u16, content_type: &str, body: &str) -> std::io::Result<()> {
    respond_to(stream, false, status, content_type, body).await
}

/// Writes the answer; to a HEAD, its head only (with the length a GET gets).
async fn respond_to(
    stream: &mut TcpStream,
    head_only: bool,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    let mut out = format!("HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\n");
    let _ = write!(out, "content-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n", body.len());
    if !head_only {
        out.push_str(body);
    }
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}

/// The metrics, with the provider gauges brought up to date.
fn scrape(snapshot: &Snapshot) -> String {
    let now = Instant::now();
    let healthy = snapshot.providers.iter().map(|p| (p.metrics.provider().to_string(), takes_traffic(p, now)));
    metrics().providers_healthy(healthy);
    metrics().encode()
}

fn takes_traffic(provider: &Provider, now: Instant) -> bool {
    !matches!(provider.health.availability(now), Availability::Out(_))
}

/// Ready when every route has a provider that takes traffic.
fn readiness(snapshot: &Snapshot) -> (u16, &'static str, String) {
    let now = Instant::now();
    let mut routes: Vec<(&str, bool)> = Vec::new();
    for p in &snapshot.providers {
        match routes.iter_mut().find(|(route, _)| *route == p.route_label) {
            Some((_, up)) => *up |= takes_traffic(p, now),
            None => routes.push((&p.route_label, takes_traffic(p, now))),
        }
    }
    let down: Vec<&str> = routes.iter().filter(|(_, up)| !up).map(|(route, _)| *route).collect();
    match down.is_empty() {
        true => (200, "text/plain", "ready\n".to_string()),
        false => (503, "text/plain", format!("not ready: no provider takes traffic for {}\n", down.join(", "))),
    }
}

/// Listeners, routes and providers as JSON, without any key.
fn status(snapshot: &Snapshot) -> Value {
    let now = Instant::now();
    let config = &snapshot.config;
    let listeners: Vec<Value> =
        [("http", config.http), ("https", config.https.as_ref().map(|h| h.addr)), ("admin", config.admin)]
            .into_iter()
            .filter_map(|(scheme, addr)| addr.map(|addr| json!({"scheme": scheme, "address": addr.to_string()})))
            .collect();
    let providers: Vec<Value> = snapshot.providers.iter().map(|p| provider_status(p, snapshot, now)).collect();
    json!({
        "config": config.source_hash,
        "listeners": listeners,
        "providers": providers,
    })
}

fn provider_status(p: &Provider, snapshot: &Snapshot, now: Instant) -> Value {
    let config = snapshot.config.providers.get(p.index);
    let (state, back_in) = match p.health.availability(now) {
        Availability::Ready => ("ready", None),
        Availability::Probe => ("probing", None),
        Availability::Out(until) => ("out", until.map(|t| t.saturating_duration_since(now).as_secs_f64())),
    };
    let last_check = p.health.last_check().map(|(ok, at)| {
        let at = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        json!({"healthy": ok, "unix_time": at, "ago_s": SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs().saturating_sub(at)})
    });
    json!({
        "name": p.metrics.provider(),
        "route": p.route_label,
        "type": p.kind.as_str(),
        "endpoint": p.endpoint.peer.as_ref(),
        "tls": config.is_some_and(|c| c.tls),
        "weight": p.weight,
        "priority": p.priority,
        "fallback": p.is_fallback,
        "state": state,
        "back_in_s": back_in,
        "keys": p.keys.len(),
        "keys_resting": p.keys.iter().filter(|k| !k.in_rotation(now)).count(),
        "last_check": last_check,
        "in_flight": p.health.in_flight(),
    })
}
