//! Talking to upstreams: endpoint identity, connecting (TCP, TLS with SNI),
//! the idle HTTP/1.1 pool and shared HTTP/2 connections, and one exchange on
//! either. It knows endpoints and bytes, not providers, keys, routes or config.

mod connect;
mod h1;
mod h2;
mod pool;

pub use connect::Purpose;
pub use h2::SharedId;
pub use pool::{Checkout, Pools};

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method};
use rustls::pki_types::ServerName;

use crate::body::{Body, BodyError};
use crate::http1::HeadError;
use crate::message::Response;

/// What goes upstream: the head already rewritten by the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamRequest<'a> {
    pub method: &'a Method,
    /// Origin-form target: path and query.
    pub target: &'a str,
    pub headers: &'a HeaderMap,
    /// An HTTP/1.1 Upgrade (WebSocket): a `101` answer hands back the
    /// connection as [`Body::Upgraded`]; any other answer is an ordinary
    /// response and the connection is not pooled.
    pub upgrade: bool,
}

/// How long an exchange may wait on the upstream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    /// DNS + TCP + TLS.
    pub connect: Duration,
    /// From the last request byte taken for sending to the response head.
    pub first_byte: Duration,
    /// Between two pieces of the response body.
    pub stream_idle: Duration,
}

/// What one exchange needs besides the request.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Largest response head accepted.
    pub max_head: usize,
    pub timeouts: Timeouts,
}

/// Where requests go: one pool per distinct endpoint.
#[derive(Debug)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// `host:port`, for messages.
    pub peer: Arc<str>,
    /// TLS settings when the upstream speaks TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The same, offering only HTTP/1.1 by ALPN (for an Upgrade).
    pub tls_h1: Option<Arc<rustls::ClientConfig>>,
    /// SNI and certificate name; the endpoint host.
    pub server_name: Option<ServerName<'static>>,
    /// The `Host` header upstream requests carry (`host`, or `host:port` for a non-default port).
    pub host_header: HeaderValue,
    /// Pool key: host, port, TLS and which roots it trusts.
    pub key: Arc<str>,
    /// Connection attempts in flight to this endpoint: one permit each
    /// (`upstream_max_connecting`), shared by every provider with the same key.
    pub connecting: Arc<tokio::sync::Semaphore>,
}

impl Endpoint {
    /// `tls` is the client config and a name for the roots it trusts (part
    /// of the pool key); `max_connecting` bounds connection attempts in flight.
    pub fn new(
        host: &str,
        port: u16,
        tls: Option<(Arc<rustls::ClientConfig>, &str)>,
        max_connecting: usize,
    ) -> Result<Self, String> {
        let default_port = if tls.is_some() { 443 } else { 80 };
        let bracketed = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
        let authority = if port == default_port { bracketed.clone() } else { format!("{bracketed}:{port}") };
        let host_header =
            HeaderValue::from_str(&authority).map_err(|_| format!("endpoint \"{host}\" is not a valid host name"))?;
        let (tls, server_name, roots) = match tls {
            Some((config, roots)) => {
                let name = ServerName::try_from(host.to_string())
                    .map_err(|_| format!("endpoint \"{host}\" is not a valid TLS server name"))?;
                (Some(config), Some(name), roots.to_string())
            }
            None => (None, None, String::new()),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let key = format!("{scheme}://{authority}#{roots}").into();
        let peer = format!("{bracketed}:{port}").into();
        let tls_h1 = tls.as_ref().map(|config| {
            let mut h1 = rustls::ClientConfig::clone(config);
            h1.alpn_protocols = vec![crate::tls::ALPN_HTTP11.to_vec()];
            Arc::new(h1)
        });
        let connecting = Arc::new(tokio::sync::Semaphore::new(max_connecting));
        Ok(Endpoint { host: host.to_string(), port, peer, tls, tls_h1, server_name, host_header, key, connecting })
    }
}

/// How an upstream exchange failed. Each variant keeps its cause, so the one
/// error-to-status mapping can tell a timeout from a refusal.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot resolve {peer}")]
    Resolve { peer: Arc<str>, source: std::io::Error },
    #[error("connect to {peer} failed")]
    Connect { peer: Arc<str>, source: std::io::Error },
    #[error("connect to {peer} timed out")]
    ConnectTimeout { peer: Arc<str> },
    #[error("TLS handshake with {peer} failed")]
    Tls { peer: Arc<str>, source: std::io::Error },
    /// Not one byte of the request reached the connection.
    #[error("connection to upstream lost before the request was sent")]
    NothingWritten(#[source] std::io::Error),
    #[error("connection to upstream lost while sending the request")]
    Write(#[source] std::io::Error),
    #[error("connection to upstream lost before the response")]
    Read(#[source] std::io::Error),
    #[error("upstream closed the connection before responding")]
    ClosedBeforeResponse,
    #[error("upstream sent no response head within {0:?} of the request")]
    FirstByteTimeout(Duration),
    #[error("upstream sent an invalid response head")]
    BadHead(#[source] HeadError),
    #[error("upstream sent an invalid response: {0}")]
    BadResponse(&'static str),
    /// The client's request body failed while it was being sent.
    #[error("the request body could not be read")]
    ClientBody(#[source] BodyError),
    #[error("HTTP/2 handshake with {peer} failed")]
    H2Handshake { peer: Arc<str>, source: ::h2::Error },
    #[error("upstream HTTP/2 error")]
    H2(#[source] ::h2::Error),
    /// The stream never left, or the upstream refused it unprocessed (RFC 9113 §8.7).
    #[error("upstream HTTP/2 connection refused the request")]
    H2Refused(#[source] ::h2::Error),
    /// The shared connection failed while the stream was open.
    #[error("upstream HTTP/2 connection lost")]
    H2Gone(#[source] ::h2::Error),
}

/// Whether a failed request may be sent again on a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// The upstream cannot have seen it: safe for any method.
    Always,
    /// It may have been processed: only for idempotent requests (RFC 9110 §9.2.2).
    IfIdempotent,
    Never,
}

impl UpstreamError {
    pub fn replay(&self) -> Replay {
        match self {
            // Nothing of the request left before these.
            UpstreamError::Resolve { .. }
            | UpstreamError::Connect { .. }
            | UpstreamError::ConnectTimeout { .. }
            | UpstreamError::Tls { .. }
            | UpstreamError::H2Handshake { .. }
            | UpstreamError::NothingWritten(_)
            | UpstreamError::H2Refused(_) => Replay::Always,
            UpstreamError::Write(_)
            | UpstreamError::ClosedBeforeResponse
            | UpstreamError::H2Gone(_)
            | UpstreamError::FirstByteTimeout(_) => Replay::IfIdempotent,
            UpstreamError::Read(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Replay::IfIdempotent,
            _ => Replay::Never,
        }
    }

    /// Whether the upstream ran out of time (a gateway timeout, not a bad gateway).
    /// The failure's kind, as metrics label it.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Resolve { .. } | UpstreamError::Connect { .. } => "connect",
            UpstreamError::ConnectTimeout { .. } | UpstreamError::FirstByteTimeout(_) => "timeout",
            UpstreamError::Tls { .. } => "tls",
            UpstreamError::NothingWritten(_)
            | UpstreamError::Write(_)
            | UpstreamError::Read(_)
            | UpstreamError::ClosedBeforeResponse
            | UpstreamError::H2Gone(_) => "reset",
            UpstreamError::ClientBody(_) => "client",
            UpstreamError::BadHead(_)
            | UpstreamError::BadResponse(_)
            | UpstreamError::H2Handshake { .. }
            | UpstreamError::H2(_)
            | UpstreamError::H2Refused(_) => "protocol",
        }
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, UpstreamError::ConnectTimeout { .. } | UpstreamError::FirstByteTimeout(_))
    }
}

/// Sends a request on whatever connection `checkout` holds.
pub async fn exchange(
    pools: &Arc<Pools>,
    checkout: Checkout,
    endpoint: &Endpoint,
    req: UpstreamRequest<'_>,
    body: Body,
    settings: Settings,
) -> Result<Response, UpstreamError> {
    match checkout {
        Checkout::H1(conn) => h1::exchange(pools, conn, req, body, settings).await,
        Checkout::H2 { send, id, .. } => {
            let result = h2::exchange(send, endpoint, req, body, settings.timeouts).await;
            // Whatever broke (or went silent), new requests must not be handed this connection.
            if let Err(UpstreamError::H2Refused(_) | UpstreamError::H2Gone(_) | UpstreamError::FirstByteTimeout(_)) =
                &result
            {
                pools.forget_shared(&endpoint.key, id);
            }
            result
        }
    }
}
