//! Header policy, written once for every protocol: which fields are
//! connection-specific and never forwarded, and the request rewrite that swaps
//! the client's credentials for the provider's.

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};

use crate::config::ProviderType;
use crate::provider::kind;

/// Connection-specific fields (RFC 9110 §7.6.1, RFC 9112 §9.6, RFC 9113 §8.2.2),
/// plus the framing fields each codec writes for itself and `Proxy-Authorization`,
/// which is addressed to this proxy.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::EXPECT,
];

/// Removes hop-by-hop fields and every field the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Fields a trailer section may not carry (RFC 9110 §6.5.1): framing, routing,
/// authentication, and anything that changes how the content is processed.
/// Credentials are the point: a trailer must not smuggle a client key upstream.
const FORBIDDEN_IN_TRAILERS: [HeaderName; 11] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::CONTENT_TYPE,
    header::CONTENT_RANGE,
    header::TRAILER,
    header::HOST,
    header::COOKIE,
    header::SET_COOKIE,
    header::CACHE_CONTROL,
    header::MAX_FORWARDS,
    header::WWW_AUTHENTICATE,
];

/// Removes from a trailer section everything that must not travel there.
pub fn strip_trailer_fields(trailers: &mut HeaderMap) {
    strip_hop_by_hop(trailers);
    for name in FORBIDDEN_IN_TRAILERS.iter().chain(&kind::CLIENT_CREDENTIAL_HEADERS) {
        trailers.remove(name);
    }
}

/// Rewrites a client request head for the upstream: hop-by-hop fields and the
/// client's length removed (the upstream codec frames the body itself), `Host`
/// set to the endpoint, and for keyed providers every client credential swapped
/// for `key`.
pub fn rewrite_request(
    headers: &mut HeaderMap,
    kind_: ProviderType,
    host: &HeaderValue,
    key: Option<(&HeaderValue, bool)>,
) {
    strip_hop_by_hop(headers);
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(header::HOST, host.clone());
    if kind::swaps_credentials(kind_) {
        for name in &kind::CLIENT_CREDENTIAL_HEADERS {
            headers.remove(name);
        }
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

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn connection_named_fields_go_too() {
        let mut h = map(&[("connection", "close, x-secret"), ("x-secret", "1"), ("keep-alive", "5"), ("x-ok", "1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-ok"));
    }

    #[test]
    fn trailers_lose_framing_and_credentials() {
        let mut t = map(&[
            ("x-checksum", "1"),
            ("authorization", "Bearer client"),
            ("x-api-key", "client"),
            ("content-length", "9"),
            ("host", "evil"),
            ("transfer-encoding", "chunked"),
        ]);
        strip_trailer_fields(&mut t);
        assert_eq!(t.len(), 1);
        assert!(t.contains_key("x-checksum"));
    }

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
        rewrite_request(&mut h, ProviderType::OpenAi, &HeaderValue::from_static("api.up"), Some((&key, false)));
        assert_eq!(h["authorization"], "Bearer real");
        assert_eq!(h["host"], "api.up");
        for gone in ["x-api-key", "x-goog-api-key", "proxy-authorization", "content-length"] {
            assert!(!h.contains_key(gone), "{gone} left");
        }
    }

    #[test]
    fn forward_keeps_client_headers() {
        let mut h = map(&[("authorization", "Bearer theirs"), ("proxy-authorization", "Bearer ours")]);
        rewrite_request(&mut h, ProviderType::Forward, &HeaderValue::from_static("b:8080"), None);
        assert_eq!(h["authorization"], "Bearer theirs");
        assert!(!h.contains_key("proxy-authorization"));
    }

    #[test]
    fn gemini_query_key_removed() {
        assert_eq!(rewrite_target(ProviderType::Gemini, "/v1/m?key=abc&alt=sse").as_deref(), Some("/v1/m?alt=sse"));
        assert_eq!(rewrite_target(ProviderType::Gemini, "/v1/m?key=abc").as_deref(), Some("/v1/m"));
        assert_eq!(rewrite_target(ProviderType::Gemini, "/v1/m?alt=sse"), None);
        assert_eq!(rewrite_target(ProviderType::Forward, "/v1/m?key=abc"), None);
    }
}
