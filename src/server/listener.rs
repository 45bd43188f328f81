//! Binding listening sockets and running their accept loops: one task per
//! port, one task per connection, TCP_NODELAY on every socket, and a back-off
//! when accept fails (out of file descriptors) instead of a hot loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::{h1, Shutdown};
use crate::proxy::Proxy;

/// Binds with SO_REUSEADDR so a restart does not wait for TIME_WAIT sockets.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Accepts plain-HTTP clients until shutdown is signalled.
pub async fn serve_http(listener: TcpListener, proxy: Arc<Proxy>, mut shutdown: Shutdown) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.signalled() => break,
        };
        match accepted {
            Ok((stream, peer)) => spawn_connection(stream, peer, proxy.clone(), shutdown.clone()),
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; pausing before the next");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn spawn_connection(stream: TcpStream, peer: SocketAddr, proxy: Arc<Proxy>, shutdown: Shutdown) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "set_nodelay failed");
    }
    let span = tracing::debug_span!("conn", %peer);
    tokio::spawn(
        async move {
            h1::serve(stream, proxy, 80, shutdown).await;
        }
        .instrument(span),
    );
}
