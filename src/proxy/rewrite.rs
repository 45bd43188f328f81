//! The request rewrite, written once for every protocol: hop-by-hop fields
//! out, `Host` set to the endpoint, and for keyed providers every client
//! credential swapped for the provider's key (Gemini's `?key=` included).

use http::header;
use http::{HeaderMap, HeaderValue};

use crate::headers::{restore_upgrade, strip_hop_by_hop, strip_websocket_protocol_key, CLIENT_CREDENTIAL_HEADERS};
use crate::provider::kind::{self, ProviderType};

/// Rewrites a client request head for the upstream: hop-by-hop fields and the
/// client's length removed (the upstream codec frames the body itself), `Host`
/// set to the endpoint, and for keyed providers every client credential swapped
/// for `key`.
pub fn rewrite_request(
    headers: &mut HeaderMap,
    kind_: ProviderType,
    host: &HeaderValue,
    key: Option<(&HeaderValue, bool)>,
    upgrade: bool,
) {
    strip_hop_by_hop(headers);
    if upgrade {
        restore_upgrade(headers);
    }
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(header::HOST, host.clone());
    if kind::swaps_credentials(kind_) {
        for name in &CLIENT_CREDENTIAL_HEADERS {
            headers.remove(name);
        }
        strip_websocket_protocol_key(headers);
        if let Some((value, oauth)) = key {
            kind::inject_key(kind_, value, oauth, headers);
        }
    }
}

/// The request target for a keyed provider: Gemini's `?key=` never travels on.
pub fn rewrite_target(kind_: ProviderType, target: &str) -> Option<String> {
    if !kind::swaps_credentials(kind_) {
        return None;
    }
    let (path, query) = target.split_once('?')?;
    let has_key = query.split('&').any(|p| p == "key" || p.starts_with("key="));
    if !has_key {
        return None;
    }
    Some(match kind::strip_query_key(query) {
        Some(rest) => format!("{path}?{rest}"),
        None => path.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::tests::map;

    #[test]
    fn keyed_rewrite_swaps_every_credential() {
        let mut h = map(&[
            ("authorization", "Bearer client"),
            ("x-api-key", "client"),
            ("x-goog-api-key", "client"),
            ("proxy-authorization", "Bearer client"),
            ("host", "proxy.local"),
            ("content-length", "5"),
        ]);
        let key = HeaderValue::from_static("real");
        rewrite_request(&mut h, ProviderType::OpenAi, &HeaderValue::from_static("api.up"), Some((&key, false)), false);
        assert_eq!(h["authorization"], "Bearer real");
        assert_eq!(h["host"], "api.up");
        for gone in ["x-api-key", "x-goog-api-key", "proxy-authorization", "content-length"] {
            assert!(!h.contains_key(gone), "{gone} left");
        }
    }

    #[test]
    fn forward_keeps_client_headers() {
        let mut h = map(&[("authorization", "Bearer theirs"), ("proxy-authorization", "Bearer ours")]);
        rewrite_request(&mut h, ProviderType::Forward, &HeaderValue::from_static("b:8080"), None, false);
        assert_eq!(h["authorization"], "Bearer theirs");
        assert!(!h.contains_key("proxy-authorization"));
    }

    #[test]
    fn a_websocket_handshake_keeps_its_upgrade_and_loses_the_browser_key() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-protocol", "realtime, openai-insecure-api-key.client, openai-beta.realtime-v1"),
        ]);
        let key = HeaderValue::from_static("real");
        rewrite_request(&mut h, ProviderType::OpenAi, &HeaderValue::from_static("api.up"), Some((&key, false)), true);
        assert_eq!((h["connection"].as_bytes(), h["upgrade"].as_bytes()), (&b"upgrade"[..], &b"websocket"[..]));
        assert_eq!(h["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(h["sec-websocket-protocol"], "realtime, openai-beta.realtime-v1");
        assert_eq!(h["authorization"], "Bearer real");
        let mut only_key = map(&[("sec-websocket-protocol", "openai-insecure-api-key.client")]);
        rewrite_request(&mut only_key, ProviderType::OpenAi, &HeaderValue::from_static("api.up"), None, true);
        assert!(!only_key.contains_key("sec-websocket-protocol"));
    }

    #[test]
    fn gemini_query_key_removed() {
        assert_eq!(rewrite_target(ProviderType::Gemini, "/v1/m?key=abc&alt=sse").as_deref(), Some("/v1/m?alt=sse"));
        assert_eq!(rewrite_target(ProviderType::Gemini, "/v1/m?key=abc").as_deref(), Some("/v1/m"));
        assert_eq!(rewrite_target(ProviderType::Gemini, "/v1/m?alt=sse"), None);
        assert_eq!(rewrite_target(ProviderType::Forward, "/v1/m?key=abc"), None);
    }
}
