//! Failover before the first response byte. An attempt that fails where the
//! client cannot have seen anything yet — a connect, TLS or first-byte
//! failure, a stale connection, or a status listed in `retry.on_status` — is
//! sent again, to another key of the same provider when the failure was the
//! key's (429, 401), else to another provider of the route by the usual
//! selection rules. Nothing is sent twice that the upstream may have acted on,
//! unless its answer says it refused (401, 403, 429, or 503 with `Retry-After`).
//! Every attempt feeds the provider's passive health and its keys' rests.

use std::sync::Arc;

use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tokio::time::Instant;

use super::choose::{self, Chosen};
use super::log::AccessLog;
use super::rewrite::Credentials;
use super::{is_event_stream, may_replay, rewrite, send, upstream_error, verify, Plan, X_ACCEL_BUFFERING};
use crate::body::{Body, Retained};
use crate::config::RetrySettings;
use crate::error::ProxyError;
use crate::message::{RequestHead, Response};
use crate::provider::secret::Secret;
use crate::provider::{PassiveHealth, Provider};
use crate::state::{App, Snapshot};
use crate::upstream::{Replay, UpstreamRequest};

type Outcome = Result<Response, ProxyError>;

/// Runs attempts until one answers for good or none is left to try.
pub(super) async fn run(app: &App, plan: Plan, head: RequestHead, body: Body, log: &mut AccessLog) -> Outcome {
    let Plan { snapshot, mut chosen, candidates, target, .. } = plan;
    let rules = &snapshot.config.retry;
    let retained = if rules.attempts > 0 { Retained::new(body, rules.max_body_size) } else { Err(body) };
    let (mut body, replay) = match retained {
        Ok((replay, first)) => (Some(first), Some(replay)),
        Err(body) => (Some(body), None),
    };
    let RequestHead { method, mut headers, .. } = head;
    let upgrade = crate::headers::is_websocket_upgrade(&method, &headers);
    let mut left = if replay.is_some() { rules.attempts } else { 0 };
    // Each attempt rewrites `headers` in place. A provider without keys
    // (`forward` or pass-through) lets the client's credentials through, so
    // after a failover from one that swaps them in it must see the client's
    // headers, never the previous provider's key. A pool of one kind needs
    // no copy.
    let passes = |p: &Arc<Provider>| p.keys.is_empty();
    let mixed = candidates.iter().any(passes) && !candidates.iter().all(passes);
    let original = (left > 0 && mixed).then(|| headers.clone());
    let (mut tried_providers, mut tried_keys) = (vec![chosen.index], Vec::new());
    loop {
        log.provider(&chosen.provider);
        let to = Target { snapshot: &snapshot, target: &target, method: &method, upgrade };
        let this_body = body.take().unwrap_or(Body::Empty);
        if let Some(original) = original.as_ref().filter(|_| tried_providers.len() > 1 || !tried_keys.is_empty()) {
            headers = original.clone();
        }
        let (result, key) =
            attempt(app, to, &chosen.provider, &mut headers, this_body, &tried_keys, Some(&mut *log)).await;
        record_health(&mut chosen, &result, &snapshot.passive_health);
        let Some(key_specific) = (left > 0).then(|| wants_retry(&result, rules, &method)).flatten() else {
            return result;
        };
        let now = Instant::now();
        tried_keys.extend(key.filter(|_| key_specific));
        let same = key_specific
            && key.is_some()
            && chosen.provider.pick_key(&mut rand::thread_rng(), now, &tried_keys).is_some();
        let next = if same {
            Some(chosen.again())
        } else {
            tried_keys.clear();
            choose::choose(&candidates, &tried_providers, now)
        };
        let (Some(next), Some(replay)) = (next, replay.as_ref().filter(|r| r.can_replay())) else {
            return result;
        };
        // The failed answer lets go of the body before the next attempt takes
        // it; its head is kept in case the body cannot be had again.
        let fallback = release(result);
        body = Box::pin(replay.body()).await;
        if body.is_none() {
            return fallback;
        }
        tracing::debug!(from = chosen.provider.index, to = next.provider.index, "retrying the request");
        let counter = if same { &chosen.provider.metrics.retries } else { &chosen.provider.metrics.failovers };
        counter.inc();
        tried_providers.push(next.index);
        (left, chosen) = (left - 1, next);
    }
}

/// Where a request goes, besides the provider.
#[derive(Clone, Copy)]
pub(super) struct Target<'a> {
    pub snapshot: &'a Arc<Snapshot>,
    /// Path and query, the route's prefix removed.
    pub target: &'a str,
    pub method: &'a Method,
    /// A WebSocket handshake: the upgrade fields travel on.
    pub upgrade: bool,
}

/// One attempt: a key in rotation (not in `tried_keys`), the head rewritten
/// for `provider`, the exchange, and the key's bookkeeping (a 429 rests it; a
/// 401 has it checked on its own, see `verify`). Returns the outcome and which
/// key was used; `log` counts the attempt as it starts, so a request its
/// client abandons mid-attempt still shows it.
pub(super) async fn attempt(
    app: &App,
    to: Target<'_>,
    provider: &Arc<Provider>,
    headers: &mut HeaderMap,
    body: Body,
    tried_keys: &[usize],
    log: Option<&mut AccessLog>,
) -> (Outcome, Option<usize>) {
    let now = Instant::now();
    let key = provider.pick_key(&mut rand::thread_rng(), now, tried_keys);
    if let Some(log) = log {
        log.attempted(key.map(|(i, _)| i));
    }
    if key.is_none() && !provider.keys.is_empty() {
        return (Err(choose::no_key(provider, now)), None);
    }
    let value = match key {
        Some((_, k)) => match &k.secret {
            Secret::Literal(value) => Some(value.clone()),
            // Boxed: only a `$(command)` key waits, and its future is large.
            Secret::Command(_) => match Box::pin(k.secret.value()).await {
                Ok(value) => Some(value),
                Err(e) => return (Err(ProxyError::Credential(e)), key.map(|(i, _)| i)),
            },
        },
        None => None,
    };
    let oauth = key.is_some_and(|(_, k)| k.secret.is_command());
    let host = &provider.endpoint.host_header;
    let every = &to.snapshot.every_client_key;
    let is_client_key = |k: &[u8]| !every.is_empty() && super::auth::accepts(Some(k), every, &[]);
    let credentials = match &value {
        Some(value) => Credentials::Swap(value, oauth),
        None => Credentials::PassThrough(&is_client_key),
    };
    rewrite::rewrite_request(headers, provider.kind, host, credentials, to.upgrade);
    let rewritten = rewrite::rewrite_target(provider.kind, to.target, credentials);
    let target = rewritten.as_deref().unwrap_or(to.target);
    let request = UpstreamRequest { method: to.method, target, headers, upgrade: to.upgrade };
    let result = send(&app.pools, to.snapshot, provider, request, body).await.map_err(|e| upstream_error(e, provider));
    if let (Ok(response), Some((index, key)), Some(value)) = (&result, key, &value) {
        match response.status {
            StatusCode::TOO_MANY_REQUESTS => {
                let rest = key.rest(&response.headers);
                provider.metrics.key_rests.inc();
                tracing::info!(provider = provider.index, seconds = rest.as_secs_f64(), "key rate limited; resting it");
            }
            StatusCode::UNAUTHORIZED => verify::refused(&app.pools, to.snapshot, provider, index, value),
            status if status.is_success() || status == StatusCode::SWITCHING_PROTOCOLS => key.accepted(),
            _ => {}
        }
    }
    (result.map(finish), key.map(|(i, _)| i))
}

/// Lets go of everything an outcome holds but its head (an HTTP/2 answer's
/// body holds the upload, and with it the request body a retry needs).
fn release(result: Outcome) -> Outcome {
    match result {
        Ok(Response { status, headers, .. }) => Ok(Response { status, headers, body: Body::Empty }),
        Err(e) => Err(e),
    }
}

/// Strips what does not travel on from an upstream's response head.
fn finish(mut response: Response) -> Response {
    crate::headers::strip_hop_by_hop(&mut response.headers);
    if response.status == StatusCode::SWITCHING_PROTOCOLS {
        crate::headers::restore_upgrade(&mut response.headers);
    }
    if is_event_stream(&response.headers) {
        // A buffering reverse proxy in front (nginx honours this) must not clump tokens.
        response.headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    }
    response
}

/// Feeds the attempt's outcome to the provider's passive health: 5xx and
/// upstream errors are failures, other answers successes; a 429 or a failure
/// of the client's own tells nothing.
pub(super) fn record_health(chosen: &mut Chosen, result: &Outcome, rules: &PassiveHealth) {
    let failed = match result {
        Ok(response) if response.status == StatusCode::TOO_MANY_REQUESTS => return,
        Ok(response) => response.status.is_server_error(),
        Err(ProxyError::Upstream(_)) => true,
        Err(_) => return,
    };
    let probe = chosen.settle();
    let provider = &chosen.provider;
    if !failed {
        provider.health.success(probe);
    } else if let Some(cooldown) = provider.health.failure(rules, probe) {
        let (index, route) = (provider.index, &provider.route_label);
        provider.metrics.ejections.inc();
        tracing::warn!(provider = index, %route, seconds = cooldown.as_secs_f64(), "provider ejected after live failures");
    }
}

/// Whether the outcome may be retried, and if so whether the failure was the
/// key's (then another key of the same provider may serve). `None`: final.
fn wants_retry(result: &Outcome, rules: &RetrySettings, method: &Method) -> Option<bool> {
    match result {
        Ok(response) => {
            let status = response.status.as_u16();
            if !rules.on_status.contains(&status) {
                return None;
            }
            // These say the upstream did not act on the request.
            let refused =
                matches!(status, 401 | 403 | 429) || (status == 503 && response.headers.contains_key(RETRY_AFTER));
            let replay = if refused { Replay::Always } else { Replay::IfIdempotent };
            may_replay(replay, method).then_some(matches!(status, 401 | 429))
        }
        Err(ProxyError::Upstream(e)) => may_replay(e.replay(), method).then_some(false),
        // The key could not be had: nothing was sent, another provider may do.
        Err(ProxyError::Credential(_)) => Some(false),
        Err(_) => None,
    }
}
