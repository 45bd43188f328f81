//! Binding listening sockets and running their accept loops: one task per
//! port, one task per connection, TCP_NODELAY on every socket, and a back-off
//! when accept fails (out of file descriptors) instead of a hot loop. HTTPS
//! connections finish their TLS handshake under a timeout, then ALPN picks
//! the HTTP/2 or HTTP/1.1 driver.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::{gate, h1, h2, Shutdown};
use crate::state::App;
use crate::tls::ALPN_H2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
    /// The admin listener: metrics and status, never proxied requests.
    Admin,
}

/// Held while this process listens on an address: an abstract Unix socket
/// named after it. Two OpenProxy processes started at the same moment could
/// otherwise both pass the plain-bind probe below (nothing listens yet) and
/// join one SO_REUSEPORT group, splitting the traffic between them.
#[derive(Debug)]
pub struct AddressLock {
    _bound: std::os::unix::net::UnixDatagram,
}

fn lock(addr: SocketAddr) -> std::io::Result<AddressLock> {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("openproxy-listen-{addr}");
    let abstract_addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    match std::os::unix::net::UnixDatagram::bind_addr(&abstract_addr) {
        Ok(socket) => Ok(AddressLock { _bound: socket }),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "Address already in use (another OpenProxy is starting on it)",
        )),
        Err(e) => Err(e),
    }
}

/// Binds `count` listening sockets to one address, one per worker thread,
/// with SO_REUSEPORT so the kernel spreads new connections across them and
/// no worker wakes for another's client. A plain bind comes first: it fails
/// as usual if anything (another OpenProxy included, which would otherwise
/// join the group and take a share of the traffic) holds the address, and it
/// resolves port 0 so every socket of the group gets the same port. The lock
/// returned must be held for as long as the sockets accept.
pub fn bind(addr: SocketAddr, count: usize) -> std::io::Result<(Vec<std::net::TcpListener>, AddressLock)> {
    let lock = lock(addr)?;
    let addr = {
        let probe = socket(addr, false)?;
        probe.bind(&addr.into())?;
        probe.local_addr()?.as_socket().unwrap_or(addr)
    };
    let sockets = (0..count.max(1)).map(|_| join(addr)).collect::<std::io::Result<_>>()?;
    Ok((sockets, lock))
}

/// [`bind`] without the plain-bind probe, for an address that overlaps one
/// this process listens on and is about to give up (the same port on
/// another bind address): SO_REUSEPORT lets the two coexist for the moment
/// of the change, as both groups are ours; anyone else's socket still makes
/// it fail.
pub fn bind_beside_ours(addr: SocketAddr, count: usize) -> std::io::Result<(Vec<std::net::TcpListener>, AddressLock)> {
    let lock = lock(addr)?;
    let sockets = (0..count.max(1)).map(|_| join(addr)).collect::<std::io::Result<_>>()?;
    Ok((sockets, lock))
}

/// One more socket in the SO_REUSEPORT group already listening on `addr`
/// (a resolved address, no port 0): for a worker that inherited none.
pub fn join(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket(addr, true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// SO_REUSEADDR so a restart does not wait for TIME_WAIT sockets.
fn socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<socket2::Socket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

/// Accepts clients until shutdown is signalled or `stop` (this listener
/// removed by a reload) is set.
pub async fn serve(
    listener: TcpListener,
    scheme: Scheme,
    app: Arc<App>,
    mut shutdown: Shutdown,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.signalled() => {
                // Clients whose connection the kernel already completed would
                // be reset when the socket closes: take them in, and their
                // requests are answered with `Connection: close`.
                while let Poll::Ready(Ok((stream, peer))) = listener.poll_accept(&mut Context::from_waker(Waker::noop())) {
                    spawn_connection(stream, peer, scheme, app.clone(), shutdown.clone(), None);
                }
                break;
            }
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors (EMFILE, ENFILE) or memory: pause
                // rather than spin; the client waits in the backlog.
                tracing::warn!(error = %e, "accept failed; pausing before the next");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // A place under max_connections before it is served. At the limit
        // this loop waits with the one connection it took, accepting no more
        // (the rest wait in the kernel's backlog). The admin listener needs
        // none: an operator must be able to look at a full proxy.
        let place = match scheme {
            Scheme::Admin => None,
            Scheme::Http | Scheme::Https => {
                let limit = {
                    let app = app.clone();
                    move || app.snapshot.load().limits.max_connections
                };
                tokio::select! {
                    place = gate::place(limit.clone()) => Some(place),
                    // Drained with `Connection: close`, like the backlog.
                    _ = shutdown.signalled() => None,
                    _ = stop.wait_for(|stop| *stop) => {
                        // This listener is going away, not the connection it
                        // took: that waits for its place on its own.
                        let (app, shutdown) = (app.clone(), shutdown.clone());
                        drop(tokio::spawn(async move {
                            let place = gate::place(limit).await;
                            spawn_connection(stream, peer, scheme, app, shutdown, Some(place));
                        }));
                        break;
                    }
                }
            }
        };
        spawn_connection(stream, peer, scheme, app.clone(), shutdown.clone(), place);
    }
}

/// Runs one client connection in a task of its own, holding its `place`
/// under `max_connections` until it ends.
fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    scheme: Scheme,
    app: Arc<App>,
    shutdown: Shutdown,
    place: Option<gate::Place>,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "set_nodelay failed");
    }
    let span = tracing::debug_span!("conn", %peer);
    // Two tasks of their own types: a task is as large as its future, and a
    // plain connection should not carry the room a TLS handshake needs.
    match scheme {
        Scheme::Http => {
            let serve = h1::serve(stream, app, 80, Some(peer), shutdown);
            drop(tokio::spawn(holding(place, serve).instrument(span)))
        }
        Scheme::Https => {
            drop(tokio::spawn(holding(place, serve_tls(stream, app, Some(peer), shutdown)).instrument(span)))
        }
        Scheme::Admin => drop(tokio::spawn(super::admin::serve(stream, app).instrument(span))),
    }
}

async fn holding(place: Option<gate::Place>, serve: impl std::future::Future<Output = ()>) {
    serve.await;
    drop(place);
}

pub(super) async fn serve_tls(stream: TcpStream, app: Arc<App>, peer: Option<SocketAddr>, shutdown: Shutdown) {
    let snapshot = app.snapshot.load();
    let (Some(config), timeout) = (snapshot.tls.clone(), snapshot.limits.handshake_timeout) else {
        return;
    };
    drop(snapshot);
    // Boxed: the handshake's state is large and needed only until it ends;
    // inline, it would size the connection's task for its whole life.
    let accept = Box::pin(tokio_rustls::TlsAcceptor::from(config).accept(stream));
    let tls = match tokio::time::timeout(timeout, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!("TLS handshake timed out"),
    };
    // Boxed for the same reason: only one of the two drivers ever runs.
    if tls.get_ref().1.alpn_protocol() == Some(ALPN_H2) {
        let socket = Some(std::os::fd::AsRawFd::as_raw_fd(tls.get_ref().0));
        Box::pin(h2::serve(tls, app, h2::Client { peer, socket }, shutdown)).await;
    } else {
        Box::pin(h1::serve(tls, app, 443, peer, shutdown)).await;
    }
}
