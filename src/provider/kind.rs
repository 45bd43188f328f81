//! What each provider type means for credentials: where its clients put their
//! key, which client headers must never reach the upstream, and how the real
//! key is presented. One `match` per question, so a new API is one arm each.

use std::borrow::Cow;

use http::header::{HeaderName, AUTHORIZATION, PROXY_AUTHORIZATION};
use http::{HeaderMap, HeaderValue};

use crate::error::ErrorStyle;
use crate::headers::{X_API_KEY, X_GOOG_API_KEY};

/// The API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderType {
    OpenAi,
    Gemini,
    Anthropic,
    Forward,
}

impl ProviderType {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderType::OpenAi => "openai",
            ProviderType::Gemini => "gemini",
            ProviderType::Anthropic => "anthropic",
            ProviderType::Forward => "forward",
        }
    }

    /// The error shape this API's SDKs understand, for answers the proxy makes.
    pub fn error_style(self) -> ErrorStyle {
        match self {
            ProviderType::OpenAi => ErrorStyle::OpenAi,
            ProviderType::Anthropic => ErrorStyle::Anthropic,
            ProviderType::Gemini => ErrorStyle::Gemini,
            ProviderType::Forward => ErrorStyle::Plain,
        }
    }
}

/// A cheap authenticated request of each keyed API (its model list), to ask
/// whether a key works with nothing of a client's around it.
pub fn key_check(kind: ProviderType) -> Option<(&'static str, &'static [(&'static str, &'static str)])> {
    match kind {
        ProviderType::OpenAi => Some(("/v1/models", &[])),
        ProviderType::Anthropic => Some(("/v1/models", &[("anthropic-version", "2023-06-01")])),
        ProviderType::Gemini => Some(("/v1beta/models", &[])),
        ProviderType::Forward => None,
    }
}

pub const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");
/// The beta flag Anthropic requires next to an OAuth bearer token.
pub const OAUTH_BETA_FLAG: &str = "oauth-2025-04-20";

/// The credentials a client presents: `Proxy-Authorization: Bearer` (every
/// type), and the key where this type's SDKs send it. Either one opens a
/// provider that accepts it.
pub fn client_keys<'a>(
    kind: ProviderType,
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> [Option<Cow<'a, [u8]>>; 2] {
    [bearer(headers.get(PROXY_AUTHORIZATION)).map(Cow::Borrowed), client_key(kind, headers, query)]
}

/// The client's key where this type's SDKs send it.
fn client_key<'a>(kind: ProviderType, headers: &'a HeaderMap, query: Option<&'a str>) -> Option<Cow<'a, [u8]>> {
    let plain = |name: &HeaderName| headers.get(name).map(|v| Cow::Borrowed(v.as_bytes()));
    let from_bearer = || bearer(headers.get(AUTHORIZATION)).map(Cow::Borrowed);
    match kind {
        ProviderType::OpenAi => {
            from_bearer().or_else(|| crate::headers::websocket_protocol_key(headers).map(Cow::Borrowed))
        }
        ProviderType::Anthropic => plain(&X_API_KEY).or_else(from_bearer),
        ProviderType::Gemini => {
            plain(&X_GOOG_API_KEY).or_else(|| query.and_then(query_key).map(Cow::Owned)).or_else(from_bearer)
        }
        ProviderType::Forward => None,
    }
}

/// Whether requests of this type get the client's credential headers removed and
/// the provider's key added. `forward` passes the client's headers through.
pub fn swaps_credentials(kind: ProviderType) -> bool {
    kind != ProviderType::Forward
}

/// Adds the provider's real key the way its API expects it.
/// `oauth` marks an Anthropic key that came from a `$(command)`: an OAuth token.
pub fn inject_key(kind: ProviderType, key: &HeaderValue, oauth: bool, headers: &mut HeaderMap) {
    match kind {
        ProviderType::OpenAi => {
            headers.insert(AUTHORIZATION, bearer_value(key));
        }
        ProviderType::Anthropic if oauth => {
            headers.insert(AUTHORIZATION, bearer_value(key));
            add_beta_flag(headers, OAUTH_BETA_FLAG);
        }
        ProviderType::Anthropic => {
            headers.insert(X_API_KEY, key.clone());
            // A retry may follow an attempt with an OAuth key: its flag must not stay.
            remove_beta_flag(headers, OAUTH_BETA_FLAG);
        }
        ProviderType::Gemini => {
            headers.insert(X_GOOG_API_KEY, key.clone());
        }
        ProviderType::Forward => {}
    }
}

fn bearer_value(key: &HeaderValue) -> HeaderValue {
    let mut raw = Vec::with_capacity(7 + key.len());
    raw.extend_from_slice(b"Bearer ");
    raw.extend_from_slice(key.as_bytes());
    let mut value = HeaderValue::from_bytes(&raw).unwrap_or_else(|_| key.clone());
    value.set_sensitive(true);
    value
}

/// Appends `flag` to the client's `anthropic-beta` list (all values joined),
/// keeping every flag the client asked for.
fn add_beta_flag(headers: &mut HeaderMap, flag: &str) {
    let mut flags = beta_flags(headers);
    if !flags.iter().any(|f| f == flag) {
        flags.push(flag.to_string());
    }
    if let Ok(value) = HeaderValue::from_str(&flags.join(", ")) {
        headers.insert(ANTHROPIC_BETA, value);
    }
}

/// Removes `flag` from the `anthropic-beta` list, keeping the others.
fn remove_beta_flag(headers: &mut HeaderMap, flag: &str) {
    let flags = beta_flags(headers);
    if !flags.iter().any(|f| f == flag) {
        return;
    }
    let kept: Vec<&str> = flags.iter().map(String::as_str).filter(|f| *f != flag).collect();
    match HeaderValue::from_str(&kept.join(", ")) {
        Ok(value) if !kept.is_empty() => {
            headers.insert(ANTHROPIC_BETA, value);
        }
        _ => {
            headers.remove(ANTHROPIC_BETA);
        }
    }
}

fn beta_flags(headers: &HeaderMap) -> Vec<String> {
    let mut flags = Vec::new();
    for value in headers.get_all(&ANTHROPIC_BETA) {
        if let Ok(text) = value.to_str() {
            flags.extend(text.split(',').map(str::trim).filter(|f| !f.is_empty()).map(String::from));
        }
    }
    flags
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 9110 §11.1).
fn bearer(value: Option<&HeaderValue>) -> Option<&[u8]> {
    bearer_token(value?.as_bytes())
}

/// The token of a raw `Bearer <token>` value (any whitespace after the scheme).
pub fn bearer_token(raw: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = raw.split_at(raw.iter().position(|b| b.is_ascii_whitespace())?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// The decoded value of the first `key=` parameter in a query string.
pub fn query_key(query: &str) -> Option<Vec<u8>> {
    query.split('&').find_map(|pair| pair.strip_prefix("key=")).map(percent_decode)
}

/// The query string without its `key=` parameters, `None` if nothing is left.
pub fn strip_query_key(query: &str) -> Option<String> {
    let kept: Vec<&str> =
        query.split('&').filter(|pair| !pair.is_empty() && *pair != "key" && !pair.starts_with("key=")).collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

pub fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn key(kind: ProviderType, pairs: &[(&str, &str)], query: Option<&str>) -> Option<Vec<u8>> {
        let headers = headers(pairs);
        let [proxy, own] = client_keys(kind, &headers, query);
        proxy.or(own).map(|k| k.into_owned())
    }

    #[test]
    fn each_type_reads_the_key_where_its_sdk_sends_it() {
        let k = Some(b"k1".to_vec());
        assert_eq!(key(ProviderType::OpenAi, &[("authorization", "Bearer k1")], None), k);
        assert_eq!(key(ProviderType::OpenAi, &[("authorization", "bearer   k1 ")], None), k);
        assert_eq!(key(ProviderType::OpenAi, &[("x-api-key", "k1")], None), None);
        assert_eq!(key(ProviderType::Anthropic, &[("x-api-key", "k1")], None), k);
        assert_eq!(key(ProviderType::Anthropic, &[("authorization", "Bearer k1")], None), k);
        assert_eq!(key(ProviderType::Gemini, &[("x-goog-api-key", "k1")], None), k);
        assert_eq!(key(ProviderType::Gemini, &[], Some("alt=sse&key=k%31")), k);
        assert_eq!(key(ProviderType::Forward, &[("authorization", "Bearer k1")], None), None);
        assert_eq!(key(ProviderType::Forward, &[("proxy-authorization", "Bearer k1")], None), k);
        assert_eq!(key(ProviderType::OpenAi, &[("authorization", "Basic k1")], None), None);
    }

    #[test]
    fn oauth_keeps_client_beta_flags() {
        let mut map = headers(&[("anthropic-beta", "tools-2024, files-1"), ("anthropic-beta", "x")]);
        inject_key(ProviderType::Anthropic, &HeaderValue::from_static("tok"), true, &mut map);
        assert_eq!(map["authorization"], "Bearer tok");
        assert_eq!(map["anthropic-beta"], "tools-2024, files-1, x, oauth-2025-04-20");
        assert!(map.get("x-api-key").is_none());
    }

    #[test]
    fn plain_anthropic_key_goes_in_x_api_key() {
        let mut map = HeaderMap::new();
        inject_key(ProviderType::Anthropic, &HeaderValue::from_static("sk"), false, &mut map);
        assert_eq!(map["x-api-key"], "sk");
        assert!(map.get("anthropic-beta").is_none());
        // After an OAuth attempt (a retry with a plain key), only the client's flags stay.
        let mut map = headers(&[("anthropic-beta", "tools-2024")]);
        inject_key(ProviderType::Anthropic, &HeaderValue::from_static("tok"), true, &mut map);
        inject_key(ProviderType::Anthropic, &HeaderValue::from_static("sk"), false, &mut map);
        assert_eq!(map["anthropic-beta"], "tools-2024");
    }

    #[test]
    fn query_key_is_removed() {
        assert_eq!(strip_query_key("key=abc&alt=sse").as_deref(), Some("alt=sse"));
        assert_eq!(strip_query_key("key=abc"), None);
        assert_eq!(strip_query_key("monkey=1&key=2").as_deref(), Some("monkey=1"));
    }
}
