//! Active health checks: every `health_check.interval`, each provider with a
//! `health_check` block gets its request, sent through the same pipeline as
//! client traffic (so the real key and Host are used); a 2xx marks it healthy,
//! anything else unhealthy. A provider without the block is checked by
//! opening a connection to its endpoint. Transitions are logged.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use tokio::task::JoinSet;

use crate::body::Body;
use crate::message::RequestHead;
use crate::provider::Provider;
use crate::proxy::{self, Chosen, Plan};
use crate::state::{App, Snapshot};
use crate::upstream::Purpose;

/// A check slower than this counts as a failure.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this much of a check's answer is read.
const MAX_CHECK_BODY: usize = 1024 * 1024;

/// Runs checks forever, re-reading the snapshot each round so a reload applies.
pub async fn run(app: Arc<App>) {
    loop {
        let snapshot = app.snapshot.load_full();
        if snapshot.health_check.enabled {
            check_all(&app, &snapshot).await;
        } else {
            for provider in &snapshot.providers {
                provider.health.clear();
            }
        }
        tokio::time::sleep(snapshot.health_check.interval).await;
    }
}

async fn check_all(app: &Arc<App>, snapshot: &Arc<Snapshot>) {
    let mut checks = JoinSet::new();
    for provider in &snapshot.providers {
        let (app, snapshot, provider) = (app.clone(), snapshot.clone(), provider.clone());
        checks.spawn(async move {
            let outcome = tokio::time::timeout(CHECK_TIMEOUT, check(&app, snapshot, provider.clone())).await;
            let outcome = outcome.unwrap_or_else(|_| Err("timed out".into()));
            record(&provider, outcome);
        });
    }
    while checks.join_next().await.is_some() {}
}

fn record(provider: &Provider, outcome: Result<(), String>) {
    let healthy = outcome.is_ok();
    let was = provider.health.set(healthy);
    match (was, outcome) {
        (true, Err(why)) => {
            tracing::warn!(provider = provider.index, route = %provider.route_label, %why, "provider is now unhealthy")
        }
        (false, Ok(())) => {
            tracing::info!(provider = provider.index, route = %provider.route_label, "provider is healthy again")
        }
        _ => {}
    }
}

/// The check of a provider without a `health_check` block: a connection
/// (TCP, and the TLS handshake where the endpoint speaks TLS) opens.
async fn connects(app: &App, provider: &Provider) -> Result<(), String> {
    let single = app.pools.checkout_single(&provider.endpoint, provider.timeouts.connect, Purpose::Requests);
    single.await.map(drop).map_err(|e| crate::error::ProxyError::from(e).message())
}

async fn check(app: &App, snapshot: Arc<Snapshot>, provider: Arc<Provider>) -> Result<(), String> {
    let Some(spec) = provider.health_check.clone() else {
        return connects(app, &provider).await;
    };
    let method = Method::from_bytes(spec.method.as_bytes()).map_err(|_| "invalid method".to_string())?;
    let mut headers = HeaderMap::new();
    for (name, value) in &spec.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name}"))?;
        let value = HeaderValue::from_str(value).map_err(|_| format!("invalid value for header {name}"))?;
        headers.append(name, value);
    }
    let body = spec.body.map_or(Body::Empty, |b| Body::Full(Bytes::from(b)));
    let head = RequestHead {
        method,
        authority: None,
        target: spec.path.clone(),
        headers,
        default_port: 0,
        peer: None,
        protocol: "health-check",
    };
    let style = provider.kind.error_style();
    let plan = Plan { snapshot, style, target: spec.path, candidates: Vec::new(), chosen: Chosen::direct(provider) };
    let response = proxy::forward(app, &plan, head, body).await.map_err(|e| e.message())?;
    let status = response.status;
    // Read the answer so the connection can go back to the pool.
    let _ = response.body.collect(MAX_CHECK_BODY).await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}
