//! CONNECT tunnels (`connect_tunnel_enabled`), which must never make an open
//! proxy: the target has to be one a provider serves — its routing host with
//! that host's port (the endpoint's port when `host` names none), or its
//! endpoint and port — and the client must present a client key in
//! `Proxy-Authorization` (`Bearer <key>`, or `Basic` with the key as the
//! password) that the global keys or that provider's own accept. The tunnel
//! goes to the provider's endpoint over plain TCP: the client brings its own
//! TLS. Disabled, or a target no provider serves: 403 before anything opens.

use std::sync::Arc;

use base64::Engine;
use http::header::PROXY_AUTHORIZATION;
use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use super::{auth, choose, retry, Plan};
use crate::authority;
use crate::body::Body;
use crate::error::{ErrorStyle, ProxyError};
use crate::message::{RequestHead, Response};
use crate::provider::Provider;
use crate::state::{App, Snapshot};
use crate::upstream::Purpose;

type Refusal = (ProxyError, ErrorStyle);

/// The providers a CONNECT may reach, and which of them to use.
pub(super) fn plan(snapshot: &Arc<Snapshot>, head: &RequestHead) -> Result<Plan, Refusal> {
    let refuse = |error| (error, ErrorStyle::Plain);
    if !snapshot.config.connect_tunnel_enabled {
        return Err(refuse(ProxyError::Forbidden("CONNECT tunnels are not enabled on this proxy".into())));
    }
    let unserved = || refuse(ProxyError::Forbidden("no provider is configured for this CONNECT target".into()));
    let target = head.authority.as_deref().ok_or_else(unserved)?;
    let (host, Some(port)) = authority::split(target).map_err(|_| unserved())? else {
        return Err(refuse(ProxyError::BadRequest("a CONNECT target needs a port".into())));
    };
    let served: Vec<&Arc<Provider>> = snapshot.providers.iter().filter(|p| serves(snapshot, p, &host, port)).collect();
    if served.is_empty() {
        return Err(unserved());
    }
    // A routing host may front unrelated APIs (by path prefix) or several
    // endpoints; a tunnel has no path to tell them apart, so it must be one.
    if served.iter().any(|p| p.endpoint.peer != served[0].endpoint.peer) {
        let why = "this CONNECT target leads to more than one endpoint; CONNECT to the endpoint itself";
        return Err(refuse(ProxyError::Forbidden(why.into())));
    }
    let presented = proxy_credential(&head.headers);
    let candidates: Vec<Arc<Provider>> = served
        .into_iter()
        .filter(|p| !p.client_auth || auth::accepts(presented.as_deref(), &snapshot.auth_keys, &p.auth_keys))
        .cloned()
        .collect();
    if candidates.is_empty() {
        return Err(refuse(ProxyError::ProxyAuthRequired));
    }
    let now = Instant::now();
    let chosen = choose::choose_for_tunnel(&candidates, &[], now)
        .ok_or_else(|| refuse(choose::unavailable(&candidates, now)))?;
    Ok(Plan { snapshot: snapshot.clone(), chosen, candidates, target: String::new(), style: ErrorStyle::Plain })
}

/// Opens the tunnel: `200` with the connection, or why not. A provider that
/// cannot be reached counts against its health, and the next candidate is
/// tried (up to `retry.attempts` more), as for any request.
pub(super) async fn open(app: &App, plan: Plan) -> Result<Response, ProxyError> {
    let Plan { snapshot, mut chosen, candidates, .. } = plan;
    let mut left = snapshot.config.retry.attempts;
    let mut tried = vec![chosen.index];
    loop {
        let provider = chosen.provider.clone();
        let single = app.pools.checkout_single(&provider.endpoint, provider.timeouts.connect, Purpose::Tunnel);
        let outcome = Box::pin(single).await.map_err(|e| super::upstream_error(e, &provider)).map(|conn| Response {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Body::Upgraded(Box::new(conn)),
        });
        retry::record_health(&mut chosen, &outcome, &snapshot.passive_health);
        let next = match &outcome {
            Err(_) if left > 0 => choose::choose_for_tunnel(&candidates, &tried, Instant::now()),
            _ => None,
        };
        let Some(next) = next else { return outcome };
        tracing::debug!(from = provider.index, to = next.provider.index, "CONNECT failing over");
        tried.push(next.index);
        (left, chosen) = (left - 1, next);
    }
}

/// Whether `provider` serves `host:port` (names compared without case).
fn serves(snapshot: &Snapshot, provider: &Provider, host: &str, port: u16) -> bool {
    let Some(config) = snapshot.config.providers.get(provider.index) else {
        return false;
    };
    let endpoint = config.endpoint.trim_start_matches('[').trim_end_matches(']');
    let by_endpoint = endpoint.eq_ignore_ascii_case(host) && config.port == port;
    let by_route = config.host.eq_ignore_ascii_case(host) && config.host_port.unwrap_or(config.port) == port;
    by_endpoint || by_route
}

/// The client key in `Proxy-Authorization`: `Bearer <key>`, or `Basic` with
/// the key as the password (any user name).
fn proxy_credential(headers: &HeaderMap) -> Option<Vec<u8>> {
    let raw = headers.get(PROXY_AUTHORIZATION)?.as_bytes().trim_ascii();
    let (scheme, rest) = raw.split_at(raw.iter().position(|&b| b == b' ')?);
    let rest = rest.trim_ascii();
    if scheme.eq_ignore_ascii_case(b"bearer") {
        return (!rest.is_empty()).then(|| rest.to_vec());
    }
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::tests::map;

    #[test]
    fn proxy_credentials_in_both_schemes() {
        let get = |value: &str| proxy_credential(&map(&[("proxy-authorization", value)]));
        assert_eq!(get("Bearer k1").as_deref(), Some(&b"k1"[..]));
        assert_eq!(get("basic dXNlcjprMg==").as_deref(), Some(&b"k2"[..]), "user:k2");
        assert_eq!(get("Basic OmszOmV4dHJh").as_deref(), Some(&b"k3:extra"[..]), ":k3:extra keeps its colons");
        assert_eq!(get("Basic !!!"), None);
        assert_eq!(get("Digest abc"), None);
        assert_eq!(get("Bearer"), None);
    }
}
