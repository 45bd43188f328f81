//! The protocol-neutral pipeline, where HTTP/1.1 and HTTP/2 meet: routing,
//! client-key checks, provider selection, the request rewrite, the upstream
//! exchange (with one replay on a stale pooled connection), error rendering
//! and the access log are written here once. Connection drivers only turn
//! their protocol into a [`RequestHead`] + [`Body`] and write back the
//! [`Response`].
//!
//! [`handle`] is the whole exchange. A driver that must act between the
//! decision and the upload (HTTP/1.1 answers `100 Continue`, and never reads
//! the body of a refused request) calls [`admit`] and then
//! [`Admitted::respond`], which is the same thing in two steps.

pub mod auth;
mod choose;
mod connect;
pub mod log;
mod path;
mod retry;
pub mod rewrite;
mod stream_usage;
mod verify;

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method};
use tokio::time::Instant;

use crate::body::{Body, BodyError};
use crate::error::{ErrorStyle, ProxyError};
use crate::message::{RequestHead, Response};
use crate::provider::{Provider, ProviderType};
use crate::route::{Miss, Route};
use crate::state::{App, Snapshot};
use crate::upstream::{self, Checkout, Pools, Purpose, Replay, Settings, UpstreamError, UpstreamRequest};
use log::AccessLog;

pub use choose::Chosen;

/// The decision made before the body is read.
#[derive(Debug)]
pub struct Plan {
    pub snapshot: Arc<Snapshot>,
    /// The provider of the first attempt.
    pub chosen: Chosen,
    /// Every provider of the route that accepted the client's key: where
    /// a retry looks for another.
    pub candidates: Vec<Arc<Provider>>,
    /// The target the upstream sees (prefix removed).
    pub target: String,
    pub style: ErrorStyle,
}

/// A request that may go upstream once its body is available.
#[derive(Debug)]
pub struct Admitted {
    plan: Plan,
    head: RequestHead,
    log: AccessLog,
}

/// What the handler answers, and whether the answer came from the upstream
/// (when not, a streamed request body may be left half read).
#[derive(Debug)]
pub struct Reply {
    pub response: Response,
    pub from_upstream: bool,
    /// For a response that hands over its connection ([`Body::Upgraded`]):
    /// the request's access line, written when the driver ends the tunnel.
    pub tunnel_log: Option<AccessLog>,
}

/// The whole exchange for a request whose body is at hand.
pub async fn handle(app: &App, head: RequestHead, body: Body) -> Response {
    match admit(app, head) {
        Ok(admitted) => admitted.respond(app, body).await.response,
        Err(refusal) => *refusal,
    }
}

/// Routes, authenticates and selects before any body byte is read, so a
/// refused request never waits for its upload. A refusal is logged and
/// returned ready to write.
/// (Boxed: refusals are the cold path, and a `Response` is large.)
pub fn admit(app: &App, mut head: RequestHead) -> Result<Admitted, Box<Response>> {
    let snapshot = app.snapshot.load_full();
    let mut log = AccessLog::start(&head, &snapshot.every_client_key);
    if let Err(error) = safe_request(&snapshot, &mut head) {
        log.finish(error.status().as_u16());
        return Err(Box::new(error.into_response(ErrorStyle::Plain)));
    }
    match plan(&snapshot, &head) {
        Ok(plan) => {
            log.provider(&plan.chosen.provider);
            // For the JSON line and the token counts' `client` label.
            log.client_key(client_key_label(&plan.snapshot, &head, &plan.chosen.provider));
            Ok(Admitted { plan, head, log })
        }
        Err((error, style)) => {
            log.finish(error.status().as_u16());
            Err(Box::new(error.into_response(style)))
        }
    }
}

impl Admitted {
    /// Forwards the request with `body` and returns the upstream's response as
    /// soon as its head arrives (the body streams on demand), or the error the
    /// client should see. Dropping the future cancels the upstream request
    /// and logs the request as abandoned (499).
    pub async fn respond(self, app: &App, body: Body) -> Reply {
        let Admitted { plan, head, mut log } = self;
        let style = plan.style;
        let body = body.counted(Some(log.bytes_in()), None).within(plan.snapshot.limits.max_request_body);
        // Never a client key as a label, should a client put one in the path.
        let gemini = plan.chosen.provider.kind == ProviderType::Gemini;
        let gemini_model = gemini_model(&head.target).filter(|_| gemini).map(|m| {
            let is_key = plan.snapshot.every_client_key.iter().any(|k| k.as_ref() == m.as_bytes());
            if is_key {
                "redacted".to_string()
            } else {
                m.to_string()
            }
        });
        let upgrade = crate::headers::is_websocket_upgrade(&head.method, &head.headers);
        let (outcome, asked_usage) = if head.method == Method::CONNECT {
            (connect::open(app, plan).await, false)
        } else {
            match stream_usage::ask(&plan, &head, body).await {
                Ok((body, asked)) => (retry::run(app, plan, head, body, &mut log).await, asked),
                Err(e) => (Err(e), false),
            }
        };
        if outcome.is_ok() {
            log.first_byte();
        }
        // A request body cut by its client: nobody is left to read our 400.
        let client_gone = matches!(
            &outcome,
            Err(ProxyError::ClientBody(BodyError::Incomplete | BodyError::Io(_) | BodyError::Stream(_)))
        );
        let (response, from_upstream) = match outcome {
            // A success that is no switch would reach an RFC 8441 client as
            // an open WebSocket (over HTTP/2 a 2xx is the switch).
            Ok(response) if upgrade && response.status.is_success() && !matches!(response.body, Body::Upgraded(_)) => {
                let why = UpstreamError::BadResponse("a success that does not switch to the WebSocket protocol");
                (ProxyError::Upstream(why).into_response(style), false)
            }
            Ok(response) => (response, true),
            Err(err) => (err.into_response(style), false),
        };
        log.set_status(if client_gone { log::CLIENT_CLOSED } else { response.status.as_u16() });
        let Response { status, headers, body } = response;
        if let Body::Upgraded(_) = body {
            return Reply { response: Response { status, headers, body }, from_upstream, tunnel_log: Some(log) };
        }
        let readable = from_upstream && reports_usage(&headers);
        if readable && log.provider_kind().is_some_and(|k| k != ProviderType::Forward) {
            log.read_usage(gemini_model.as_deref());
        }
        // A compressed stream is passed on as it is (its events cannot be seen).
        let strip = asked_usage && readable && is_event_stream(&headers);
        // The line is written when the answer's body is done with, so its
        // time and bytes cover the whole answer, streams included.
        // The log counts the answer's bytes itself, as it sees them (before
        // the usage chunk it asked for is taken out).
        let removed = strip.then(|| log.edited_out());
        let body = body.counted(None, Some(Box::new(log)));
        let body = match removed {
            Some(removed) => body.sse_edited(stream_usage::strip, removed),
            None => body,
        };
        Reply { response: Response { status, headers, body }, from_upstream, tunnel_log: None }
    }
}

/// Route, authenticate and select: the provider a request goes to.
fn plan(snapshot: &Arc<Snapshot>, head: &RequestHead) -> Result<Plan, (ProxyError, ErrorStyle)> {
    let plain = |error| (error, ErrorStyle::Plain);
    if head.method == Method::CONNECT {
        return connect::plan(snapshot, head);
    }
    let authority =
        head.authority.as_deref().ok_or_else(|| plain(ProxyError::BadRequest("missing Host header".into())))?;
    let routes = match snapshot.router.matching(authority, head.default_port, &head.target) {
        Ok(routes) => routes,
        Err(Miss::UnknownHost) => return Err(plain(ProxyError::UnknownHost(printable(authority)))),
        Err(Miss::NoPrefix) => return Err(plain(ProxyError::NoRoute(printable(authority)))),
    };
    let Accepted { candidates, target, refused_style } = accepted(snapshot, head, routes);
    let Some(target) = target else {
        return Err((ProxyError::Unauthorized, refused_style));
    };
    let style = candidates[0].kind.error_style();
    let now = Instant::now();
    let chosen = choose::choose(&candidates, &[], now).ok_or_else(|| (choose::unavailable(&candidates, now), style))?;
    Ok(Plan { snapshot: snapshot.clone(), chosen, candidates, target: target.into_owned(), style })
}

/// Whether an answer's body can be read for token usage as it passes: JSON
/// or an event stream, not compressed (reading compressed bytes would cost
/// the relay a decompression; such answers count as usage unknown).
fn reports_usage(headers: &HeaderMap) -> bool {
    let encoded =
        headers.get(http::header::CONTENT_ENCODING).is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let json = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().get(..16).is_some_and(|t| t.eq_ignore_ascii_case(b"application/json")));
    !encoded && (json || is_event_stream(headers))
}

/// The model a Gemini request names in its path (`.../models/<model>:<method>`).
fn gemini_model(target: &str) -> Option<&str> {
    let path = target.split('?').next()?;
    let (_, rest) = path.rsplit_once("/models/")?;
    let model = rest.split(':').next()?;
    (!model.is_empty() && !model.contains('/')).then_some(model)
}

/// Checks made before routing, whatever the route: a credential field sent
/// twice (which of them would count?), and the path, whose dot-segments are
/// removed here so no route's prefix can be stepped out of unseen.
fn safe_request(snapshot: &Snapshot, head: &mut RequestHead) -> Result<(), ProxyError> {
    if head.headers.len() > snapshot.limits.max_header_count {
        return Err(ProxyError::Head(crate::http1::HeadError::TooLarge));
    }
    // A declared length past the limit is refused before a byte is read.
    let declared =
        head.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if let (Some(limit), Some(declared)) = (snapshot.limits.max_request_body, declared) {
        if declared > limit {
            return Err(ProxyError::ClientBody(BodyError::TooLarge(usize::try_from(limit).unwrap_or(usize::MAX))));
        }
    }
    normalize_request(snapshot, head).map_err(|why| ProxyError::BadRequest(why.into()))
}

/// Credential fields and the path (see [`safe_request`]).
fn normalize_request(snapshot: &Snapshot, head: &mut RequestHead) -> Result<(), &'static str> {
    const CREDENTIALS: [HeaderName; 4] = [
        http::header::AUTHORIZATION,
        crate::headers::X_API_KEY,
        crate::headers::X_GOOG_API_KEY,
        http::header::PROXY_AUTHORIZATION,
    ];
    if CREDENTIALS.iter().any(|name| head.headers.get_all(name).iter().nth(1).is_some()) {
        return Err(
            "a credential field (Authorization, X-API-Key, x-goog-api-key or Proxy-Authorization) sent more than once",
        );
    }
    if head.method == Method::CONNECT {
        return Ok(());
    }
    let normalized = match path::normalize(&head.target)? {
        Cow::Borrowed(_) => return Ok(()),
        Cow::Owned(normalized) => normalized,
    };
    // A path addressed to a route's prefix must stay inside it.
    let authority = head.authority.as_deref().unwrap_or("");
    if let Ok(routes) = snapshot.router.matching(authority, head.default_port, &head.target) {
        let inside = |prefix: &str| {
            let path = normalized.split('?').next().unwrap_or("");
            path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
        };
        if routes.filter_map(|(route, _)| route.prefix.as_deref()).any(|prefix| !inside(prefix)) {
            return Err("the path climbs out of its route's prefix");
        }
    }
    head.target = normalized;
    Ok(())
}

/// What the log calls the client key the request was let in with: its name,
/// or a fingerprint (never the key); `None` when no key was needed.
fn client_key_label(snapshot: &Snapshot, head: &RequestHead, provider: &Provider) -> Option<Arc<str>> {
    let query = head.target.split_once('?').map(|(_, q)| q);
    let presented = crate::provider::kind::client_keys(provider.kind, &head.headers, query);
    let presented = [presented[0].as_deref(), presented[1].as_deref()];
    let index = auth::which(&presented, &snapshot.auth_keys, &provider.auth_keys)?;
    snapshot.auth_key_labels.iter().chain(&provider.auth_key_labels).nth(index).cloned()
}

/// The providers a request may go to, and the path they see.
struct Accepted<'p> {
    candidates: Vec<Arc<Provider>>,
    /// `None` when no provider accepted the client's credentials.
    target: Option<Cow<'p, str>>,
    /// The error shape of a refusal: the most specific route's.
    refused_style: ErrorStyle,
}

/// Key-scoped routing: of the routes that match, the most specific one whose
/// providers accept a credential the client presents (each provider judging
/// by its own type's rules) wins, together with the other routes of the same
/// level (another type on the same prefix).
fn accepted<'r, 'p>(
    snapshot: &Snapshot,
    head: &RequestHead,
    routes: impl Iterator<Item = (&'r Route, Cow<'p, str>)>,
) -> Accepted<'p> {
    let query = head.target.split_once('?').map(|(_, q)| q);
    let mut found = Accepted { candidates: Vec::new(), target: None, refused_style: ErrorStyle::Plain };
    let mut level = None;
    for (i, (route, target)) in routes.enumerate() {
        if i == 0 {
            found.refused_style = route.kind.error_style();
        }
        if level.is_some_and(|level| level != route.level()) {
            break;
        }
        let presented = crate::provider::kind::client_keys(route.kind, &head.headers, query);
        let presented = [presented[0].as_deref(), presented[1].as_deref()];
        let before = found.candidates.len();
        let opens =
            |p: &&Arc<Provider>| !p.client_auth || auth::accepts_any(&presented, &snapshot.auth_keys, &p.auth_keys);
        found.candidates.extend(route.providers.iter().filter(opens).cloned());
        if found.candidates.len() > before {
            level = Some(route.level());
            found.target.get_or_insert(target);
        }
    }
    found
}

/// One attempt at the planned provider, without failover (the active health
/// checks send theirs this way).
pub async fn forward(app: &App, plan: &Plan, head: RequestHead, body: Body) -> Result<Response, ProxyError> {
    let RequestHead { method, mut headers, .. } = head;
    let to = retry::Target { snapshot: &plan.snapshot, target: &plan.target, method: &method, upgrade: false };
    retry::attempt(app, to, &plan.chosen.provider, &mut headers, body, &[], None).await.0
}

/// One exchange, repeated once on a fresh connection when a pooled one turns
/// out to have been closed under us and the body can be sent again.
async fn send(
    pools: &Arc<Pools>,
    snapshot: &Snapshot,
    provider: &Provider,
    request: UpstreamRequest<'_>,
    body: Body,
) -> Result<Response, UpstreamError> {
    let timeouts = provider.timeouts;
    let settings = Settings { max_head: snapshot.limits.upstream_max_head, timeouts };
    let endpoint = &provider.endpoint;
    let replay = body.replayable();
    // A pooled connection is at hand without waiting; only a new one is
    // boxed, as connecting (TCP, TLS) is a large future.
    let checkout = if request.upgrade {
        // An Upgrade takes its connection for good: a new one, HTTP/1.1 only.
        let single = pools.checkout_single(endpoint, timeouts.connect, Purpose::Upgrade);
        Checkout::H1(Box::pin(single).await?)
    } else {
        match pools.take(endpoint) {
            Some(checkout) => checkout,
            None => Box::pin(pools.checkout_fresh(endpoint, timeouts.connect)).await?,
        }
    };
    let reused = checkout.is_reused();
    // Boxed: the exchange is most of a request's state, and every future that
    // holds it inline (an HTTP/2 stream's task among them) would be moved whole.
    match Box::pin(upstream::exchange(pools, checkout, endpoint, request, body, settings)).await {
        // A timeout is no sign of a stale connection: waiting again would double it.
        Err(e) if reused && replay.is_some() && !e.is_timeout() && may_replay(e.replay(), request.method) => {
            tracing::debug!(endpoint = %endpoint.key, error = %e, "pooled connection was stale; retrying on a new one");
            let fresh = Box::pin(pools.checkout_fresh(endpoint, timeouts.connect)).await?;
            let body = replay.unwrap_or(Body::Empty);
            Box::pin(upstream::exchange(pools, fresh, endpoint, request, body, settings)).await
        }
        result => result,
    }
}

/// Whether a request that failed on a reused connection may go again. A request
/// the upstream may have acted on is repeated only when its method is idempotent
/// (RFC 9110 §9.2.2): a second POST would be a second, billed generation.
fn may_replay(replay: Replay, method: &Method) -> bool {
    match replay {
        Replay::Always => true,
        Replay::Never => false,
        Replay::IfIdempotent => {
            matches!(
                *method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
            )
        }
    }
}

fn upstream_error(err: UpstreamError, provider: &Provider) -> ProxyError {
    // The client's own failure is not the provider's.
    if !matches!(err, UpstreamError::ClientBody(_)) {
        crate::metrics::metrics().upstream_error(provider.metrics.provider(), err.kind());
    }
    let err = ProxyError::from(err);
    if let ProxyError::Upstream(_) = &err {
        let error = err.message();
        tracing::warn!(provider = provider.index, route = %provider.route_label, %error, "upstream request failed");
    }
    err
}

pub(crate) const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().get(..17).is_some_and(|t| t.eq_ignore_ascii_case(b"text/event-stream")))
}

/// A client-supplied value made safe to echo in an error message.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(256).collect()
}

#[cfg(test)]
mod tests;
