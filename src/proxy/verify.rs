//! What a 401 means for a key. A client can provoke a 401 with headers of its
//! own (a wrong `OpenAI-Organization`), so one client's 401 must not take a
//! key away from everyone: a literal key that got one is checked on its own —
//! the API's model list, with the key and nothing of the client's — and rests
//! only if that check is refused too. One check per key at a time. A
//! `$(command)` key is fetched again instead, as before.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use super::{rewrite, send};
use crate::body::Body;
use crate::provider::kind::key_check;
use crate::provider::secret::Secret;
use crate::provider::Provider;
use crate::state::Snapshot;
use crate::upstream::{Pools, UpstreamRequest};

/// The upstream answered 401 to key `index` of `provider` (sent as `used`).
pub(super) fn refused(
    pools: &Arc<Pools>,
    snapshot: &Arc<Snapshot>,
    provider: &Arc<Provider>,
    index: usize,
    used: &HeaderValue,
) {
    let Some(key) = provider.keys.get(index) else {
        return;
    };
    match &key.secret {
        Secret::Command(_) => key.secret.rejected(used),
        Secret::Literal(_) => {
            if key_check(provider.kind).is_some() && key.begin_check() {
                let (pools, snapshot, provider) = (pools.clone(), snapshot.clone(), provider.clone());
                tokio::spawn(async move { check(&pools, &snapshot, &provider, index).await });
            }
        }
    }
}

async fn check(pools: &Arc<Pools>, snapshot: &Snapshot, provider: &Provider, index: usize) {
    let key = &provider.keys[index];
    let (Secret::Literal(value), Some((path, extra))) = (&key.secret, key_check(provider.kind)) else {
        key.end_check();
        return;
    };
    let mut headers = HeaderMap::new();
    for (name, value) in extra {
        headers.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    let swap = rewrite::Credentials::Swap(value, false);
    rewrite::rewrite_request(&mut headers, provider.kind, &provider.endpoint.host_header, swap, false);
    let request = UpstreamRequest { method: &Method::GET, target: path, headers: &headers, upgrade: false };
    match send(pools, snapshot, provider, request, Body::Empty).await.map(|r| r.status) {
        Ok(StatusCode::UNAUTHORIZED) => {
            if let Some(rest) = key.refused(value) {
                let index = provider.index;
                tracing::warn!(
                    provider = index,
                    seconds = rest.as_secs(),
                    "a provider key failed its check (401); resting it"
                );
            }
        }
        Ok(status) if status.is_success() => key.accepted(),
        // Anything else says nothing about the key.
        _ => {}
    }
    key.end_check();
}
