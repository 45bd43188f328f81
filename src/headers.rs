//! Header policy every layer shares, with no knowledge of routes or providers:
//! which fields are connection-specific (never forwarded), which may not travel
//! in a trailer section, and the names in which clients carry credentials.
//! A leaf: the codec, bodies and upstreams may all use it.

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method};

pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
pub const X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");

/// Headers in which any supported client may carry a credential. All of them are
/// removed before a request to a keyed provider leaves, whichever one held the key,
/// so a client key can never reach an upstream by sitting in an unexpected place.
pub const CLIENT_CREDENTIAL_HEADERS: [HeaderName; 3] = [header::AUTHORIZATION, X_API_KEY, X_GOOG_API_KEY];

/// The item of `Sec-WebSocket-Protocol` in which browser clients of the
/// OpenAI Realtime API carry their key (a browser cannot set `Authorization`
/// on a WebSocket): `openai-insecure-api-key.<key>`.
pub const WEBSOCKET_KEY_PREFIX: &str = "openai-insecure-api-key.";

/// A WebSocket opening handshake (RFC 6455 §4.1): GET with `Upgrade:
/// websocket` and `Connection: upgrade`.
pub fn is_websocket_upgrade(method: &Method, headers: &HeaderMap) -> bool {
    let has = |name, token: &[u8]| {
        headers
            .get_all(name)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    };
    *method == Method::GET && has(header::UPGRADE, b"websocket") && has(header::CONNECTION, b"upgrade")
}

/// Puts back the two fields an Upgrade needs after [`strip_hop_by_hop`].
pub fn restore_upgrade(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// The key a browser put in `Sec-WebSocket-Protocol`, if any.
pub fn websocket_protocol_key(headers: &HeaderMap) -> Option<&[u8]> {
    websocket_protocol_keys(headers).next()
}

/// Every key item of `Sec-WebSocket-Protocol`.
pub fn websocket_protocol_keys(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter_map(strip_key_prefix)
}

/// The key of an `openai-insecure-api-key.<key>` item (prefix in any case).
pub fn strip_key_prefix(item: &[u8]) -> Option<&[u8]> {
    let prefix = WEBSOCKET_KEY_PREFIX.as_bytes();
    let head = item.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &item[prefix.len()..])
}

/// Removes the key items from `Sec-WebSocket-Protocol`, keeping the others
/// (the field goes when none is left).
pub fn strip_websocket_protocol_key(headers: &mut HeaderMap) {
    if websocket_protocol_key(headers).is_some() {
        keep_websocket_protocol_items(headers, |item| strip_key_prefix(item).is_none());
    }
}

/// Keeps only the `Sec-WebSocket-Protocol` items `keep` accepts.
pub fn keep_websocket_protocol_items(headers: &mut HeaderMap, keep: impl Fn(&[u8]) -> bool) {
    let kept: Vec<Vec<u8>> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty() && keep(item))
        .map(<[u8]>::to_vec)
        .collect();
    headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
    if let Ok(value) = HeaderValue::from_bytes(&kept.join(&b", "[..])) {
        if !kept.is_empty() {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
        }
    }
}

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
    // Usually `Connection` names only fields removed anyway (`keep-alive`,
    // `close` names none): then nothing is allocated.
    let mut named = Vec::new();
    let tokens = headers.get_all(header::CONNECTION).iter().flat_map(|v| v.as_bytes().split(|&b| b == b','));
    for token in tokens.map(<[u8]>::trim_ascii).filter(|t| !t.is_empty()) {
        let listed = HOP_BY_HOP.iter().any(|h| h.as_str().as_bytes().eq_ignore_ascii_case(token));
        if !listed && !token.eq_ignore_ascii_case(b"close") {
            named.extend(HeaderName::from_bytes(token).ok());
        }
    }
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
    for name in FORBIDDEN_IN_TRAILERS.iter().chain(&CLIENT_CREDENTIAL_HEADERS) {
        trailers.remove(name);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use http::HeaderValue;

    pub(crate) fn map(pairs: &[(&str, &str)]) -> HeaderMap {
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
        let fields = [("connection", "Keep-Alive ,  X-Other"), ("connection", ",X-Third"), ("x-other", "1")];
        let mut h = map(&[fields[0], fields[1], fields[2], ("x-third", "1"), ("x-ok", "1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-ok"]);
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
}
