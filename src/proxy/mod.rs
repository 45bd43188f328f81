//! The protocol-neutral pipeline. A connection driver (HTTP/1.1 now, HTTP/2
//! later) hands in a [`RequestHead`]; [`Proxy::prepare`] routes, checks the
//! client key and picks a provider before any body byte is read (so a refused
//! request never waits for its upload); [`Proxy::forward`] rewrites the head,
//! sends it upstream and returns a streaming [`Response`].

pub mod auth;
pub mod headers;
pub mod route;
pub mod select;

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{HeaderMap, Method, StatusCode};

use crate::body::Body;
use crate::error::{ErrorStyle, ProxyError};
use crate::provider::{HealthRegistry, Provider};
use crate::state::Snapshot;
use crate::upstream::{self, Pools, Replay, UpstreamError, UpstreamRequest};
use route::Miss;
use select::Class;

/// A request as every protocol describes it.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    /// `Host` or `:authority`.
    pub authority: Option<String>,
    /// Origin-form target: path and query.
    pub target: String,
    pub headers: HeaderMap,
    /// The listener's scheme port (80 or 443), for a `Host` without a port.
    pub default_port: u16,
}

#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Body,
}

impl Response {
    pub fn from_error(err: &ProxyError, style: ErrorStyle) -> Response {
        let (status, headers, body) = err.render(style);
        Response { status, headers, body: Body::Full(body) }
    }
}

/// The decision made before the body is read.
#[derive(Debug)]
pub struct Plan {
    pub snapshot: Arc<Snapshot>,
    pub provider: Arc<Provider>,
    /// The target the upstream sees (prefix removed).
    pub target: String,
    pub style: ErrorStyle,
}

/// A refusal, with the error shape the client's SDK expects.
#[derive(Debug)]
pub struct Refusal {
    pub error: ProxyError,
    pub style: ErrorStyle,
}

/// The long-lived proxy: the current snapshot plus the state that outlives reloads.
#[derive(Debug)]
pub struct Proxy {
    pub snapshot: ArcSwap<Snapshot>,
    pub pools: Arc<Pools>,
    pub health: HealthRegistry,
}

impl Proxy {
    pub fn new(snapshot: Snapshot, health: HealthRegistry) -> Self {
        Proxy { snapshot: ArcSwap::from_pointee(snapshot), pools: Arc::default(), health }
    }

    /// Route, authenticate and select.
    pub fn prepare(&self, head: &RequestHead) -> Result<Plan, Refusal> {
        let snapshot = self.snapshot.load_full();
        let plain = |error| Refusal { error, style: ErrorStyle::Plain };
        let authority =
            head.authority.as_deref().ok_or_else(|| plain(ProxyError::BadRequest("missing Host header".into())))?;
        let (route, target) = match snapshot.router.find(authority, head.default_port, &head.target) {
            Ok(found) => found,
            Err(Miss::UnknownHost) => return Err(plain(ProxyError::UnknownHost(printable(authority)))),
            Err(Miss::NoPrefix) => return Err(plain(ProxyError::NoRoute(printable(authority)))),
        };
        let style = ErrorStyle::from(route.kind);
        let query = head.target.split_once('?').map(|(_, q)| q);
        let presented = crate::provider::kind::client_key(route.kind, &head.headers, query);
        let presented = presented.as_deref();
        let accepting: Vec<&Arc<Provider>> =
            route.providers.iter().filter(|p| auth::accepts(presented, &snapshot.auth_keys, &p.auth_keys)).collect();
        if accepting.is_empty() {
            return Err(Refusal { error: ProxyError::Unauthorized, style });
        }
        let class = |p: &&Arc<Provider>| Class {
            usable: p.is_healthy(),
            fallback: p.is_fallback,
            priority: p.priority,
            weight: p.weight,
        };
        let provider = select::choose(&accepting, class, &mut rand::thread_rng())
            .map(|p| Arc::clone(p))
            .ok_or(Refusal { error: ProxyError::NoHealthyProvider, style })?;
        let target = target.into_owned();
        Ok(Plan { snapshot, provider, target, style })
    }

    /// Sends the request to the planned provider and returns the response as
    /// soon as its head arrives; the body streams on demand.
    pub async fn forward(&self, plan: &Plan, head: RequestHead, body: Body) -> Result<Response, ProxyError> {
        let provider = &plan.provider;
        let mut headers = head.headers;
        let key = provider.pick_key(&mut rand::thread_rng());
        let key_value = match key {
            Some(key) => Some(key.secret.value().await.map_err(ProxyError::Credential)?),
            None => None,
        };
        let oauth = key.is_some_and(|k| k.secret.is_command());
        let endpoint = &provider.endpoint;
        headers::rewrite_request(
            &mut headers,
            provider.kind,
            &endpoint.host_header,
            key_value.as_ref().map(|v| (v, oauth)),
        );
        let rewritten = headers::rewrite_target(provider.kind, &plan.target);
        let target = rewritten.as_deref().unwrap_or(&plan.target);
        let request = UpstreamRequest { method: &head.method, target, headers: &headers };
        let response = self.send(plan, request, body).await.map_err(|e| upstream_error(e, provider))?;
        if response.status == StatusCode::UNAUTHORIZED {
            if let (Some(key), Some(value)) = (key, &key_value) {
                key.secret.rejected(value);
            }
        }
        let mut headers = response.headers;
        headers::strip_hop_by_hop(&mut headers);
        Ok(Response { status: response.status, headers, body: response.body })
    }

    /// One exchange, repeated once on a fresh connection when a pooled one turns
    /// out to have been closed under us and the body can be sent again.
    async fn send(
        &self,
        plan: &Plan,
        request: UpstreamRequest<'_>,
        body: Body,
    ) -> Result<upstream::UpstreamResponse, UpstreamError> {
        let snapshot = &plan.snapshot;
        let endpoint = &plan.provider.endpoint;
        let replay = match &body {
            Body::Empty => Some(Body::Empty),
            Body::Full(bytes) => Some(Body::Full(bytes.clone())),
            _ => None,
        };
        let checkout = self.pools.checkout(endpoint, snapshot.connect_timeout).await?;
        let reused = checkout.is_reused();
        let max_head = snapshot.upstream_max_head;
        match upstream::exchange(&self.pools, checkout, endpoint, request, body, max_head).await {
            Err(e) if reused && replay.is_some() && may_replay(e.replay(), &request) => {
                tracing::debug!(endpoint = %endpoint.key, error = %e, "pooled connection was stale; retrying on a new one");
                let fresh = self.pools.checkout_fresh(endpoint, snapshot.connect_timeout).await?;
                let body = replay.unwrap_or(Body::Empty);
                upstream::exchange(&self.pools, fresh, endpoint, request, body, max_head).await
            }
            result => result,
        }
    }
}

/// Whether a request that failed on a reused connection may go again. A request
/// the upstream may have acted on is repeated only when its method is idempotent
/// (RFC 9110 §9.2.2): a second POST would be a second, billed generation.
fn may_replay(replay: Replay, request: &UpstreamRequest<'_>) -> bool {
    match replay {
        Replay::Always => true,
        Replay::Never => false,
        Replay::IfIdempotent => {
            matches!(
                *request.method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
            )
        }
    }
}

fn upstream_error(err: UpstreamError, provider: &Provider) -> ProxyError {
    match err {
        UpstreamError::ClientBody(e) => ProxyError::BadRequest(e.to_string()),
        other => {
            tracing::warn!(provider = provider.index, route = %provider.route_label, error = %other, "upstream request failed");
            ProxyError::Upstream(other.to_string())
        }
    }
}

/// A client-supplied value made safe to echo in an error message.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(256).collect()
}
