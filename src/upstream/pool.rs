//! Idle HTTP/1.1 upstream connections, per endpoint. Last in, first out (the
//! warmest connection is the least likely to have been closed), bounded in
//! count and age, and each one checked for a peer close before it is reused.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::watch;

use super::connect::{connect, Purpose};
use super::{Endpoint, SharedId, UpstreamError};
use crate::metrics::metrics;
use crate::net::{Conn, Recycle, Stream};

/// How long an idle upstream connection is kept. Below the common 60 s server
/// keep-alive, so we usually drop a connection before the upstream does.
const MAX_IDLE_AGE: Duration = Duration::from_secs(50);
/// At most this many idle connections per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// A pooled connection and when it went idle.
type Idle = (Conn, Instant);
type SharedMap = Arc<Mutex<HashMap<Arc<str>, (SendRequest<Bytes>, SharedId)>>>;

/// A connection to send one request on.
#[derive(Debug)]
pub enum Checkout {
    H1(Conn),
    /// A handle to the endpoint's shared HTTP/2 connection.
    H2 {
        send: SendRequest<Bytes>,
        id: SharedId,
        reused: bool,
    },
}

impl Checkout {
    pub fn is_reused(&self) -> bool {
        match self {
            Checkout::H1(conn) => conn.reused,
            Checkout::H2 { reused, .. } => *reused,
        }
    }
}

#[derive(Debug, Default)]
pub struct Pools {
    // Std mutexes: held only to push, pop or clone an entry, never across an await.
    idle: Mutex<HashMap<Arc<str>, Vec<Idle>>>,
    /// One multiplexed connection per endpoint that speaks HTTP/2. Shared with
    /// each connection's driver task, which removes its own entry when it ends.
    shared: SharedMap,
    /// A new TLS connection being made that may turn out HTTP/2: requests
    /// that need one meanwhile wait for it rather than each opening their own
    /// (a burst would otherwise open one connection per request).
    dialing: Mutex<HashMap<Arc<str>, watch::Receiver<()>>>,
    /// Endpoints whose ALPN answer was HTTP/1.1: their connects are not waited on.
    speaks_h1: Mutex<HashSet<Arc<str>>>,
}

/// Marks a dial in flight until dropped; dropping wakes its waiters.
struct Dialing<'p> {
    pools: &'p Pools,
    key: Arc<str>,
    _done: watch::Sender<()>,
}

impl Drop for Dialing<'_> {
    fn drop(&mut self) {
        lock(&self.pools.dialing).remove(&self.key);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pools {
    /// The endpoint's shared HTTP/2 connection, a live idle HTTP/1.1 one, or a new one.
    /// The endpoint's shared HTTP/2 connection or a live idle HTTP/1.1 one,
    /// without waiting; `None` means a new connection is needed
    /// ([`Pools::checkout_fresh`]).
    pub fn take(&self, endpoint: &Endpoint) -> Option<Checkout> {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner()).get(&endpoint.key).cloned();
        if let Some((send, id)) = shared {
            return Some(Checkout::H2 { send, id, reused: true });
        }
        while let Some(mut conn) = self.pop(&endpoint.key) {
            if is_open(&mut conn.stream) {
                conn.reused = true;
                return Some(Checkout::H1(conn));
            }
        }
        None
    }

    /// A new connection, bypassing the idle list; when ALPN picks HTTP/2 it
    /// becomes (or replaces) the endpoint's shared connection.
    pub async fn checkout_fresh(
        &self,
        endpoint: &Endpoint,
        connect_timeout: Duration,
    ) -> Result<Checkout, UpstreamError> {
        let deadline = tokio::time::Instant::now() + connect_timeout;
        let mut dialing = None;
        if endpoint.tls.is_some() && !lock(&self.speaks_h1).contains(&endpoint.key) {
            let waiting = {
                let mut map = lock(&self.dialing);
                match map.get(&endpoint.key) {
                    Some(done) => Some(done.clone()),
                    None => {
                        let (done, wait) = watch::channel(());
                        map.insert(endpoint.key.clone(), wait);
                        dialing = Some(Dialing { pools: self, key: endpoint.key.clone(), _done: done });
                        None
                    }
                }
            };
            if let Some(mut done) = waiting {
                // Resolves when that dial ends, however it ends; but no later
                // than this request's own connect timeout (another provider's
                // dial to the endpoint may have a longer one).
                let ended = tokio::time::timeout_at(deadline, done.changed()).await;
                if let Some(checkout) = self.take(endpoint) {
                    return Ok(checkout);
                }
                if ended.is_err() {
                    return Err(UpstreamError::ConnectTimeout { peer: endpoint.peer.clone() });
                }
                // It failed or speaks HTTP/1.1: a connection of our own, in the time left.
            }
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let stream = connect(endpoint, left, Purpose::Requests).await?;
        if !stream.is_h2() && endpoint.tls.is_some() {
            lock(&self.speaks_h1).insert(endpoint.key.clone());
        }
        if stream.is_h2() {
            let id = NEXT_SHARED_ID.fetch_add(1, Ordering::Relaxed);
            let (shared, key) = (self.shared.clone(), endpoint.key.clone());
            let on_close = move || remove_shared(&shared, &key, id);
            let publish = |send: &SendRequest<Bytes>| {
                let mut map = self.shared.lock().unwrap_or_else(|e| e.into_inner());
                if map.insert(endpoint.key.clone(), (send.clone(), id)).is_none() {
                    metrics().pooled(1);
                }
            };
            let send = super::h2::handshake(stream, endpoint, publish, on_close).await?;
            drop(dialing); // published: the waiters take it
            return Ok(Checkout::H2 { send, id, reused: false });
        }
        let buf = BytesMut::new();
        Ok(Checkout::H1(Conn { stream, buf, pool_key: endpoint.key.clone(), reused: false }))
    }

    /// A new HTTP/1.1 connection for one Upgrade (never pooled), or a raw
    /// TCP one for a CONNECT tunnel.
    pub async fn checkout_single(
        &self,
        endpoint: &Endpoint,
        connect_timeout: Duration,
        purpose: Purpose,
    ) -> Result<Conn, UpstreamError> {
        let stream = connect(endpoint, connect_timeout, purpose).await?;
        Ok(Conn { stream, buf: BytesMut::new(), pool_key: endpoint.key.clone(), reused: false })
    }

    fn pop(&self, key: &Arc<str>) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(key)?;
        while let Some((conn, since)) = list.pop() {
            metrics().pooled(-1);
            if since.elapsed() < MAX_IDLE_AGE {
                return Some(conn);
            }
        }
        None
    }

    /// Stops handing out shared connection `id` for `key` (it failed).
    pub fn forget_shared(&self, key: &Arc<str>, id: SharedId) {
        remove_shared(&self.shared, key, id);
    }

    /// Returns a connection whose last exchange ended cleanly.
    pub fn put(&self, mut conn: Conn) {
        if !conn.buf.is_empty() {
            return; // the upstream sent bytes nobody asked for: not safe to reuse
        }
        // An idle connection holds no buffer. The last body's bytes usually
        // still share it (on their way to the client), so the next exchange
        // would have needed a fresh one anyway.
        conn.buf = BytesMut::new();
        // One clock read for the whole list, not one per idle connection.
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(conn.pool_key.clone()).or_default();
        let before = list.len();
        list.retain(|(_, since)| now.duration_since(*since) < MAX_IDLE_AGE);
        let mut change = list.len() as i64 - before as i64;
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push((conn, now));
            change += 1;
        }
        metrics().pooled(change);
    }

    /// Closes idle connections past their age; run now and then so endpoints no
    /// longer used do not hold sockets forever.
    pub fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        for list in idle.values_mut() {
            let before = list.len();
            list.retain(|(_, since)| since.elapsed() < MAX_IDLE_AGE);
            metrics().pooled(list.len() as i64 - before as i64);
        }
        idle.retain(|_, list| !list.is_empty());
    }
}

impl Recycle for Pools {
    fn recycle(&self, conn: Conn) {
        self.put(conn);
    }
}

static NEXT_SHARED_ID: AtomicU64 = AtomicU64::new(1);

/// Removes the shared connection for `key` if it is still `id` (a newer one
/// may have replaced it already).
fn remove_shared(shared: &SharedMap, key: &Arc<str>, id: SharedId) {
    let mut map = shared.lock().unwrap_or_else(|e| e.into_inner());
    if map.get(key).is_some_and(|(_, current)| *current == id) {
        map.remove(key);
        metrics().pooled(-1);
    }
}

/// Whether an idle connection is still open: one read attempt that must not
/// complete. EOF means the peer closed; data means it sent something unasked
/// (then the connection is out of step and is dropped too).
fn is_open(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(Pin::new(stream).poll_read(&mut cx, &mut buf), Poll::Pending)
}
