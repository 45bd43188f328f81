//! Opening upstream connections: resolve, TCP connect with TCP_NODELAY, and
//! TLS with SNI when the endpoint wants it, all under one connect timeout.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

use super::{Endpoint, UpstreamError};
use crate::net::Stream;

/// What a new connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Requests: TLS offers HTTP/2 and HTTP/1.1.
    Requests,
    /// One HTTP/1.1 Upgrade: TLS offers HTTP/1.1 only.
    Upgrade,
    /// A CONNECT tunnel: TCP only, the client brings its own TLS.
    Tunnel,
}

pub async fn connect(endpoint: &Endpoint, timeout: Duration, purpose: Purpose) -> Result<Stream, UpstreamError> {
    let attempt = async {
        // A burst of requests to a cold endpoint waits its turn, in its own
        // connect time, instead of opening thousands of sockets at once. The
        // semaphore is never closed.
        let _permit = endpoint.connecting.acquire().await;
        connect_inner(endpoint, purpose).await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(UpstreamError::ConnectTimeout { peer: endpoint.peer.clone() }),
    }
}

async fn connect_inner(endpoint: &Endpoint, purpose: Purpose) -> Result<Stream, UpstreamError> {
    let peer = || endpoint.peer.clone();
    let addrs: Vec<_> = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|source| UpstreamError::Resolve { peer: peer(), source })?
        .collect();
    let mut last_err = io::Error::new(io::ErrorKind::NotFound, "no addresses");
    let mut tcp = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                tcp = Some(stream);
                break;
            }
            Err(e) => last_err = e,
        }
    }
    let tcp = tcp.ok_or_else(|| UpstreamError::Connect { peer: peer(), source: last_err })?;
    // Heads are written whole; Nagle would only delay them behind an ACK.
    tcp.set_nodelay(true).map_err(|source| UpstreamError::Connect { peer: peer(), source })?;
    let tls = match purpose {
        Purpose::Requests => endpoint.tls.as_ref(),
        Purpose::Upgrade => endpoint.tls_h1.as_ref(),
        Purpose::Tunnel => None,
    };
    match (tls, &endpoint.server_name) {
        (Some(config), Some(server_name)) => {
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let tls = connector
                .connect(server_name.clone(), tcp)
                .await
                .map_err(|source| UpstreamError::Tls { peer: peer(), source })?;
            Ok(Stream::Tls(Box::new(tls)))
        }
        _ => Ok(Stream::Plain(tcp)),
    }
}
