//! Everything about talking to upstreams: endpoint identity, connecting (TCP,
//! TLS with SNI), the idle-connection pool and the HTTP/1.1 exchange. It knows
//! endpoints and bytes, not providers, keys or routes.

mod connect;
mod h1;
mod h2;
mod pool;

pub use connect::{client_tls_config, Stream};
pub use h1::{H1ResponseBody, UpstreamRequest, UpstreamResponse};
pub use h2::SharedId;
pub use pool::{Checkout, Conn, Pools};

use std::sync::Arc;

use http::HeaderValue;
use rustls::pki_types::ServerName;

/// Where requests go: one pool per distinct endpoint.
#[derive(Debug)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// TLS settings when the upstream speaks TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// SNI and certificate name; the endpoint host.
    pub server_name: Option<ServerName<'static>>,
    /// The `Host` header upstream requests carry (`host`, or `host:port` for a non-default port).
    pub host_header: HeaderValue,
    /// Pool key: host, port, TLS and which roots it trusts.
    pub key: Arc<str>,
}

impl Endpoint {
    pub fn new(host: &str, port: u16, tls: Option<(Arc<rustls::ClientConfig>, &str)>) -> Result<Self, String> {
        let default_port = if tls.is_some() { 443 } else { 80 };
        let bracketed = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
        let authority = if port == default_port { bracketed } else { format!("{bracketed}:{port}") };
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
        Ok(Endpoint { host: host.to_string(), port, tls, server_name, host_header, key })
    }
}

/// How an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("connect to {0} failed: {1}")]
    Connect(String, std::io::Error),
    #[error("connect to {0} timed out")]
    ConnectTimeout(String),
    #[error("TLS handshake with {0} failed: {1}")]
    Tls(String, std::io::Error),
    /// Not one byte of the request reached the connection.
    #[error("connection to upstream lost before the request was sent: {0}")]
    NothingWritten(std::io::Error),
    #[error("connection to upstream lost while sending the request: {0}")]
    Write(std::io::Error),
    #[error("connection to upstream lost before the response: {0}")]
    Read(std::io::Error),
    #[error("upstream closed the connection before responding")]
    ClosedBeforeResponse,
    #[error("upstream sent an invalid response: {0}")]
    BadResponse(String),
    #[error("{0}")]
    ClientBody(#[from] crate::body::BodyError),
    #[error("upstream HTTP/2 error: {0}")]
    H2(String),
    /// The stream never left, or the upstream refused it unprocessed (RFC 9113 §8.7).
    #[error("upstream HTTP/2 connection refused the request: {0}")]
    H2Refused(String),
    /// The shared connection failed while the stream was open.
    #[error("upstream HTTP/2 connection lost: {0}")]
    H2Gone(String),
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
            UpstreamError::NothingWritten(_) | UpstreamError::H2Refused(_) => Replay::Always,
            UpstreamError::Write(_) | UpstreamError::ClosedBeforeResponse | UpstreamError::H2Gone(_) => {
                Replay::IfIdempotent
            }
            UpstreamError::Read(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Replay::IfIdempotent,
            _ => Replay::Never,
        }
    }
}

/// Sends a request on whatever connection `checkout` holds.
pub async fn exchange(
    pools: &Arc<Pools>,
    checkout: Checkout,
    endpoint: &Endpoint,
    req: UpstreamRequest<'_>,
    body: crate::body::Body,
    max_head: usize,
) -> Result<UpstreamResponse, UpstreamError> {
    match checkout {
        Checkout::H1(conn) => h1::exchange(pools, conn, req, body, max_head).await,
        Checkout::H2 { send, id, .. } => {
            let result = h2::exchange(send, endpoint, req, body).await;
            if let Err(UpstreamError::H2Refused(_) | UpstreamError::H2Gone(_)) = &result {
                // Whatever broke, new requests must not be handed this connection.
                pools.forget_shared(&endpoint.key, id);
            }
            result
        }
    }
}
