//! The one place that decides what a client sees when the proxy itself answers:
//! every failure is a [`ProxyError`] that keeps its typed cause, and
//! [`ProxyError::render`] turns it into a status and a small JSON body shaped
//! like the route's provider API, so the official SDKs surface our message the
//! way they surface the provider's. Knows errors, not providers or routes.

use std::error::Error as _;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::body::{Body, BodyError};
use crate::http1::HeadError;
use crate::message::Response;
use crate::upstream::UpstreamError;

/// Which API's error shape a proxy-made response copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStyle {
    OpenAi,
    Anthropic,
    Gemini,
    /// `forward` routes and unknown hosts.
    Plain,
}

/// Everything the proxy can answer on its own. Causes are kept as sources, so
/// the status is decided from what really happened; messages carry the whole
/// cause chain and never a secret.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(String),
    /// The request head broke the HTTP/1.1 rules (one mapping for every reader).
    /// Not a `#[source]`: the message already says what the cause says.
    #[error("{}", head_message(.0))]
    Head(HeadError),
    #[error("the request body could not be read")]
    ClientBody(#[source] BodyError),
    #[error("invalid or missing API key")]
    Unauthorized,
    /// A CONNECT without a valid `Proxy-Authorization`.
    #[error("proxy authentication required: send a client key in Proxy-Authorization (Bearer, or Basic with the key as the password)")]
    ProxyAuthRequired,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotImplemented(String),
    #[error("no provider is configured for host \"{0}\"")]
    UnknownHost(String),
    #[error("no provider is configured for this path on host \"{0}\"")]
    NoRoute(String),
    #[error("{0}")]
    Method(String),
    #[error("no healthy provider is available for this host")]
    NoHealthyProvider { retry_after: Option<Duration> },
    #[error("every provider key for this route is rate limited; retry after {} s", .retry_after.as_secs())]
    RateLimited { retry_after: Duration },
    #[error("upstream request failed")]
    Upstream(#[source] UpstreamError),
    #[error("provider credential unavailable: {0}")]
    Credential(String),
}

impl From<HeadError> for ProxyError {
    fn from(err: HeadError) -> Self {
        ProxyError::Head(err)
    }
}

impl From<UpstreamError> for ProxyError {
    /// A client body that broke on its way upstream is the client's failure.
    fn from(err: UpstreamError) -> Self {
        match err {
            UpstreamError::ClientBody(body) => ProxyError::ClientBody(body),
            other => ProxyError::Upstream(other),
        }
    }
}

fn head_message(err: &HeadError) -> String {
    match err {
        HeadError::TooLarge => "request header fields are too large".into(),
        HeadError::UriTooLong => "request target is too long".into(),
        HeadError::Expectation => "only \"Expect: 100-continue\" is supported".into(),
        HeadError::UnsupportedTransferCoding => "only the chunked transfer-coding is supported".into(),
        HeadError::Malformed(why) => format!("malformed request: {why}"),
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Head(head) => match head {
                HeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                HeadError::UriTooLong => StatusCode::URI_TOO_LONG,
                HeadError::Expectation => StatusCode::EXPECTATION_FAILED,
                HeadError::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
                HeadError::Malformed(_) => StatusCode::BAD_REQUEST,
            },
            ProxyError::ClientBody(BodyError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::Unauthorized => StatusCode::UNAUTHORIZED,
            ProxyError::ProxyAuthRequired => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::UnknownHost(_) => StatusCode::NOT_FOUND,
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NoHealthyProvider { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Upstream(e) if e.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(_) | ProxyError::Credential(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The message with every cause after it: `upstream request failed: connect
    /// to api:443 failed: Connection refused (os error 111)`.
    pub fn message(&self) -> String {
        let mut text = self.to_string();
        let mut cause = self.source();
        while let Some(err) = cause {
            text.push_str(": ");
            text.push_str(&err.to_string());
            cause = err.source();
        }
        text
    }

    /// Status, headers and JSON body in the given style.
    pub fn render(&self, style: ErrorStyle) -> (StatusCode, HeaderMap, Bytes) {
        let status = self.status();
        let message = json_string(&self.message());
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
        if let Some(wait) = self.retry_after() {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(wait.as_secs()));
        }
        if let ProxyError::ProxyAuthRequired = self {
            let challenge = HeaderValue::from_static("Basic realm=\"openproxy\", Bearer realm=\"openproxy\"");
            headers.insert(http::header::PROXY_AUTHENTICATE, challenge);
        }
        (status, headers, Bytes::from(body))
    }

    /// When the client may try again, for answers that know it.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProxyError::NoHealthyProvider { retry_after } => *retry_after,
            ProxyError::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// The whole answer, ready to write.
    pub fn into_response(self, style: ErrorStyle) -> Response {
        let (status, headers, body) = self.render(style);
        Response { status, headers, body: Body::Full(body) }
    }

    /// A stable machine-readable name for the failure.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) | ProxyError::Head(HeadError::Malformed(_)) => "bad_request",
            ProxyError::Head(HeadError::TooLarge) => "headers_too_large",
            ProxyError::Head(HeadError::UriTooLong) => "uri_too_long",
            ProxyError::Head(HeadError::Expectation) => "expectation_failed",
            ProxyError::Head(HeadError::UnsupportedTransferCoding) => "not_implemented",
            ProxyError::ClientBody(BodyError::TooLarge(_)) => "payload_too_large",
            ProxyError::ClientBody(_) => "bad_request",
            ProxyError::Unauthorized => "invalid_api_key",
            ProxyError::ProxyAuthRequired => "proxy_auth_required",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::NotImplemented(_) => "not_implemented",
            ProxyError::UnknownHost(_) => "unknown_host",
            ProxyError::NoRoute(_) => "no_route",
            ProxyError::Method(_) => "method_not_allowed",
            ProxyError::NoHealthyProvider { .. } => "no_healthy_provider",
            ProxyError::RateLimited { .. } => "rate_limited",
            ProxyError::Upstream(e) if e.is_timeout() => "upstream_timeout",
            ProxyError::Upstream(_) => "upstream_error",
            ProxyError::Credential(_) => "credential_unavailable",
        }
    }
}

fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        429 => "rate_limit_error",
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
        429 => "rate_limit_error",
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
        429 => "RESOURCE_EXHAUSTED",
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
        let (_, _, body) = ProxyError::NoHealthyProvider { retry_after: None }.render(ErrorStyle::Plain);
        assert_eq!(
            body,
            r#"{"error":{"type":"no_healthy_provider","message":"no healthy provider is available for this host"}}"#
        );
    }

    fn refused() -> UpstreamError {
        let peer = "api:443".into();
        UpstreamError::Connect { peer, source: std::io::ErrorKind::ConnectionRefused.into() }
    }

    #[test]
    fn statuses_follow_the_cause() {
        assert_eq!(ProxyError::from(HeadError::TooLarge).status(), 431);
        assert_eq!(ProxyError::from(HeadError::UriTooLong).status(), 414);
        assert_eq!(ProxyError::from(HeadError::Malformed("x".into())).status(), 400);
        assert_eq!(ProxyError::from(HeadError::Expectation).status(), 417);
        assert_eq!(ProxyError::from(HeadError::UnsupportedTransferCoding).status(), 501);
        let timeout = UpstreamError::ConnectTimeout { peer: "api:443".into() };
        assert_eq!(ProxyError::from(timeout).status(), 504);
        assert_eq!(ProxyError::from(refused()).status(), 502);
        let tls = UpstreamError::Tls { peer: "api:443".into(), source: std::io::Error::other("bad certificate") };
        let tls = ProxyError::from(tls);
        assert_eq!((tls.status(), tls.message().contains("bad certificate")), (StatusCode::BAD_GATEWAY, true));
        let body = ProxyError::from(UpstreamError::ClientBody(BodyError::Incomplete));
        assert_eq!((body.status(), body.code()), (StatusCode::BAD_REQUEST, "bad_request"));
        assert_eq!(ProxyError::ClientBody(BodyError::TooLarge(10)).status(), 413);
    }

    #[test]
    fn messages_carry_the_cause_chain_once() {
        let err = ProxyError::from(refused());
        assert_eq!(err.message(), "upstream request failed: connect to api:443 failed: connection refused");
        let err = ProxyError::from(HeadError::Malformed("request head not completed in time".into()));
        assert_eq!(err.message(), "malformed request: request head not completed in time");
        assert_eq!(ProxyError::from(HeadError::TooLarge).message(), "request header fields are too large");
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), r#""a\"b\\c\n\u0001""#);
    }
}
