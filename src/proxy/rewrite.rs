//! The request rewrite, written once for every protocol: hop-by-hop fields
//! out, `Host` set to the endpoint, and for keyed providers every client
//! credential swapped for the provider's key (Gemini's `?key=` included) —
//! or, for a keyed provider without keys, the client's own provider key let
//! through and only a proxy client key removed.

use http::header;
use http::{HeaderMap, HeaderValue};

use crate::headers::{
    keep_websocket_protocol_items, restore_upgrade, strip_hop_by_hop, strip_key_prefix, strip_websocket_protocol_key,
    websocket_protocol_keys, CLIENT_CREDENTIAL_HEADERS,
};
use crate::provider::kind::{self, ProviderType};

/// What becomes of the client's credentials for a keyed provider.
#[derive(Clone, Copy)]
pub enum Credentials<'a> {
    /// All removed, and the provider's key added (`true`: an OAuth token).
    Swap(&'a HeaderValue, bool),
    /// A provider without keys: the client's own provider key travels on;
    /// only a credential that is a proxy client key (as this says) is removed.
    PassThrough(&'a dyn Fn(&[u8]) -> bool),
}

/// Rewrites a client request head for the upstream: hop-by-hop fields and the
/// client's length removed (the upstream codec frames the body itself), `Host`
/// set to the endpoint, and for keyed providers the client's credentials
/// handled as `credentials` says.
pub fn rewrite_request(
    headers: &mut HeaderMap,
    kind_: ProviderType,
    host: &HeaderValue,
    credentials: Credentials<'_>,
    upgrade: bool,
) {
    strip_hop_by_hop(headers);
    if upgrade {
        restore_upgrade(headers);
    }
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(header::HOST, host.clone());
    match credentials {
        Credentials::Swap(value, oauth) if kind::swaps_credentials(kind_) => {
            for name in &CLIENT_CREDENTIAL_HEADERS {
                headers.remove(name);
            }
            strip_websocket_protocol_key(headers);
            kind::inject_key(kind_, value, oauth, headers);
        }
        // `forward` and keyless providers pass the client's credentials on,
        // but never one that is a proxy client key.
        Credentials::Swap(..) => {}
        Credentials::PassThrough(is_client_key) => strip_client_keys(headers, is_client_key),
    }
}

/// Removes every credential value (each repeat of each field, each
/// subprotocol item) that `is_client_key` says is a proxy client key.
fn strip_client_keys(headers: &mut HeaderMap, is_client_key: &dyn Fn(&[u8]) -> bool) {
    for name in &CLIENT_CREDENTIAL_HEADERS {
        let is_key = |v: &HeaderValue| {
            let token = kind::bearer_token(v.as_bytes()).unwrap_or(v.as_bytes());
            !token.is_empty() && is_client_key(token)
        };
        if !headers.get_all(name).iter().any(is_key) {
            continue;
        }
        let kept: Vec<HeaderValue> = headers.get_all(name).iter().filter(|v| !is_key(v)).cloned().collect();
        headers.remove(name);
        for value in kept {
            headers.append(name, value);
        }
    }
    if websocket_protocol_keys(headers).any(is_client_key) {
        keep_websocket_protocol_items(headers, |item| strip_key_prefix(item).is_none_or(|key| !is_client_key(key)));
    }
}

/// The request target for a keyed provider: Gemini's `?key=` never travels
/// on (for a provider without keys, only when it is a proxy client key).
pub fn rewrite_target(kind_: ProviderType, target: &str, credentials: Credentials<'_>) -> Option<String> {
    if !kind::swaps_credentials(kind_) {
        return None;
    }
    let (path, query) = target.split_once('?')?;
    let has_key = query.split('&').any(|p| p == "key" || p.starts_with("key="));
    if !has_key {
        return None;
    }
    if let Credentials::PassThrough(is_client_key) = credentials {
        // Only `key=` parameters that are proxy client keys go; the client's own stay.
        let kept: Vec<&str> = query
            .split('&')
            .filter(|p| !p.strip_prefix("key=").is_some_and(|v| is_client_key(&kind::percent_decode(v))))
            .collect();
        if kept.len() == query.split('&').count() {
            return None;
        }
        return Some(if kept.iter().all(|p| p.is_empty()) {
            path.to_string()
        } else {
            format!("{path}?{}", kept.join("&"))
        });
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

    /// No proxy client keys: every credential is the client's own.
    const NONE: Credentials<'static> = Credentials::PassThrough(&|_| false);
    static REAL: std::sync::LazyLock<HeaderValue> = std::sync::LazyLock::new(|| HeaderValue::from_static("real"));
    fn swap() -> Credentials<'static> {
        Credentials::Swap(&REAL, false)
    }

    #[test]
    fn without_keys_the_clients_own_key_travels_and_a_proxy_key_does_not() {
        let is_client_key = |k: &[u8]| k == b"proxy-key";
        let pass = Credentials::PassThrough(&is_client_key);
        let host = HeaderValue::from_static("api.up");
        let mut h = map(&[("authorization", "Bearer sk-own"), ("proxy-authorization", "Bearer proxy-key")]);
        rewrite_request(&mut h, ProviderType::OpenAi, &host, pass, false);
        assert_eq!(h["authorization"], "Bearer sk-own");
        assert!(!h.contains_key("proxy-authorization"));
        let mut h = map(&[("authorization", "Bearer proxy-key"), ("x-api-key", "sk-ant-own")]);
        rewrite_request(&mut h, ProviderType::Anthropic, &host, pass, false);
        assert!(!h.contains_key("authorization"), "the proxy key never leaves");
        assert_eq!(h["x-api-key"], "sk-ant-own");
        assert_eq!(
            rewrite_target(ProviderType::Gemini, "/m?key=proxy-key&alt=sse", pass).as_deref(),
            Some("/m?alt=sse")
        );
        assert_eq!(rewrite_target(ProviderType::Gemini, "/m?key=own", pass), None);
        let target = rewrite_target(ProviderType::Gemini, "/m?key=own&key=proxy%2Dkey", pass);
        assert_eq!(target.as_deref(), Some("/m?key=own"), "every repeat is looked at, decoded");
        let items = "openai-insecure-api-key.sk-own, OpenAI-Insecure-API-Key.proxy-key, realtime";
        let mut h = map(&[("sec-websocket-protocol", items)]);
        rewrite_request(&mut h, ProviderType::OpenAi, &host, pass, true);
        assert_eq!(h["sec-websocket-protocol"], "openai-insecure-api-key.sk-own, realtime");
        let mut h = map(&[("authorization", "Bearer proxy-key")]);
        rewrite_request(&mut h, ProviderType::Forward, &host, pass, false);
        assert!(!h.contains_key("authorization"), "forward passes credentials, never a proxy key");
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
        rewrite_request(
            &mut h,
            ProviderType::OpenAi,
            &HeaderValue::from_static("api.up"),
            Credentials::Swap(&key, false),
            false,
        );
        assert_eq!(h["authorization"], "Bearer real");
        assert_eq!(h["host"], "api.up");
        for gone in ["x-api-key", "x-goog-api-key", "proxy-authorization", "content-length"] {
            assert!(!h.contains_key(gone), "{gone} left");
        }
    }

    #[test]
    fn forward_keeps_client_headers() {
        let mut h = map(&[("authorization", "Bearer theirs"), ("proxy-authorization", "Bearer ours")]);
        rewrite_request(&mut h, ProviderType::Forward, &HeaderValue::from_static("b:8080"), NONE, false);
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
        rewrite_request(
            &mut h,
            ProviderType::OpenAi,
            &HeaderValue::from_static("api.up"),
            Credentials::Swap(&key, false),
            true,
        );
        assert_eq!((h["connection"].as_bytes(), h["upgrade"].as_bytes()), (&b"upgrade"[..], &b"websocket"[..]));
        assert_eq!(h["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(h["sec-websocket-protocol"], "realtime, openai-beta.realtime-v1");
        assert_eq!(h["authorization"], "Bearer real");
        let mut only_key = map(&[("sec-websocket-protocol", "OpenAI-Insecure-API-Key.client")]);
        let swap = Credentials::Swap(&key, false);
        rewrite_request(&mut only_key, ProviderType::OpenAi, &HeaderValue::from_static("api.up"), swap, true);
        assert!(!only_key.contains_key("sec-websocket-protocol"));
    }

    #[test]
    fn gemini_query_key_removed() {
        assert_eq!(
            rewrite_target(ProviderType::Gemini, "/v1/m?key=abc&alt=sse", swap()).as_deref(),
            Some("/v1/m?alt=sse")
        );
        assert_eq!(rewrite_target(ProviderType::Gemini, "/v1/m?key=abc", swap()).as_deref(), Some("/v1/m"));
        assert_eq!(rewrite_target(ProviderType::Gemini, "/v1/m?alt=sse", swap()), None);
        assert_eq!(rewrite_target(ProviderType::Forward, "/v1/m?key=abc", swap()), None);
    }
}
