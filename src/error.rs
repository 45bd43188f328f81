//! The one place that decides what a client sees when the proxy itself answers:
//! every failure is a [`ProxyError`], and [`ProxyError::render`] turns it into a
//! status and a small JSON body shaped like the route's provider API, so the
//! official SDKs surface our message the way they surface the provider's.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::config::ProviderType;

/// Which API's error shape a proxy-made response copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStyle {
    OpenAi,
    Anthropic,
    Gemini,
    /// `forward` routes and unknown hosts.
    Plain,
}

impl From<ProviderType> for ErrorStyle {
    fn from(kind: ProviderType) -> Self {
        match kind {
            ProviderType::OpenAi => ErrorStyle::OpenAi,
            ProviderType::Anthropic => ErrorStyle::Anthropic,
            ProviderType::Gemini => ErrorStyle::Gemini,
            ProviderType::Forward => ErrorStyle::Plain,
        }
    }
}

/// Everything the proxy can answer on its own. Messages never contain secrets.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid or missing API key")]
    Unauthorized,
    #[error("no provider is configured for host \"{0}\"")]
    UnknownHost(String),
    #[error("no provider is configured for this path on host \"{0}\"")]
    NoRoute(String),
    #[error("{0}")]
    Method(String),
    #[error("request body is too large")]
    PayloadTooLarge,
    #[error("request target is too long")]
    UriTooLong,
    #[error("request header fields are too large")]
    HeadersTooLarge,
    #[error("only \"Expect: 100-continue\" is supported")]
    Expectation,
    #[error("{0}")]
    NotImplemented(String),
    #[error("no healthy provider is available for this host")]
    NoHealthyProvider,
    #[error("upstream request failed: {0}")]
    Upstream(String),
    #[error("upstream did not answer in time: {0}")]
    UpstreamTimeout(String),
    #[error("provider credential unavailable: {0}")]
    Credential(String),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Unauthorized => StatusCode::UNAUTHORIZED,
            ProxyError::UnknownHost(_) => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::Expectation => StatusCode::EXPECTATION_FAILED,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::NoHealthyProvider => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Upstream(_) | ProxyError::Credential(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Status, headers and JSON body in the given style.
    pub fn render(&self, style: ErrorStyle) -> (StatusCode, HeaderMap, Bytes) {
        let status = self.status();
        let message = json_string(&self.to_string());
        let body = match style {
            ErrorStyle::OpenAi => format!(
                r#"{{"error":{{"message":{message},"type":"{}","code":"{}"}}}}"#,
                openai_type(status),
                self.code()
            ),
            ErrorStyle::Anthropic => {
                format!(r#"{{"type":"error","error":{{"type":"{}","message":{message}}}}}"#, anthropic_type(status))
            }
            ErrorStyle::Gemini => format!(
                r#"{{"error":{{"code":{},"message":{message},"status":"{}"}}}}"#,
                status.as_u16(),
                gemini_status(status)
            ),
            ErrorStyle::Plain => format!(r#"{{"error":{{"type":"{}","message":{message}}}}}"#, self.code()),
        };
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        (status, headers, Bytes::from(body))
    }

    /// A stable machine-readable name for the failure.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::Unauthorized => "invalid_api_key",
            ProxyError::UnknownHost(_) => "unknown_host",
            ProxyError::NoRoute(_) => "no_route",
            ProxyError::Method(_) => "method_not_allowed",
            ProxyError::PayloadTooLarge => "payload_too_large",
            ProxyError::UriTooLong => "uri_too_long",
            ProxyError::HeadersTooLarge => "headers_too_large",
            ProxyError::Expectation => "expectation_failed",
            ProxyError::NotImplemented(_) => "not_implemented",
            ProxyError::NoHealthyProvider => "no_healthy_provider",
            ProxyError::Upstream(_) => "upstream_error",
            ProxyError::UpstreamTimeout(_) => "upstream_timeout",
            ProxyError::Credential(_) => "credential_unavailable",
        }
    }
}

fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 | 421 => "not_found_error",
        413 => "request_too_large",
        400..=499 => "invalid_request_error",
        503 => "overloaded_error",
        _ => "api_error",
    }
}

fn gemini_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 | 421 => "NOT_FOUND",
        501 => "UNIMPLEMENTED",
        503 | 502 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        400..=499 => "INVALID_ARGUMENT",
        _ => "INTERNAL",
    }
}

/// A JSON string literal (with quotes) for `text`.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_follow_the_provider_api() {
        let err = ProxyError::Unauthorized;
        let (status, headers, body) = err.render(ErrorStyle::OpenAi);
        assert_eq!(status, 401);
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(
            body,
            r#"{"error":{"message":"invalid or missing API key","type":"authentication_error","code":"invalid_api_key"}}"#
        );
        let (_, _, body) = err.render(ErrorStyle::Anthropic);
        assert_eq!(
            body,
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid or missing API key"}}"#
        );
        let (_, _, body) = err.render(ErrorStyle::Gemini);
        assert_eq!(body, r#"{"error":{"code":401,"message":"invalid or missing API key","status":"UNAUTHENTICATED"}}"#);
        let (_, _, body) = ProxyError::NoHealthyProvider.render(ErrorStyle::Plain);
        assert_eq!(
            body,
            r#"{"error":{"type":"no_healthy_provider","message":"no healthy provider is available for this host"}}"#
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), r#""a\"b\\c\n\u0001""#);
    }
}
