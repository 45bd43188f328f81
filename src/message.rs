//! The protocol-neutral request head and response that HTTP/1.1 and HTTP/2
//! meet in: drivers build a [`RequestHead`] from their own protocol, the
//! pipeline and the upstream side hand back a [`Response`] whose body streams.

use std::net::SocketAddr;

use http::{HeaderMap, Method, StatusCode};

use crate::body::Body;

/// A request as every protocol describes it.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    /// `Host` or `:authority`.
    pub authority: Option<String>,
    /// Origin-form target: path and query.
    pub target: String,
    pub headers: HeaderMap,
    /// The listener's scheme port (80 or 443), for a `Host` without a port.
    pub default_port: u16,
    /// Where the request came from (`None` for the proxy's own, a health check).
    pub peer: Option<SocketAddr>,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`, for the access log.
    pub protocol: &'static str,
}

/// A response head with its (streaming) body, from an upstream or made here.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Body,
}
