//! The protocol-neutral message body. HTTP/1.1 and HTTP/2 readers turn what
//! arrives into a [`Body`]; the pipeline passes it on without looking inside,
//! and writers pull [`Frame`]s from it as they arrive. Nothing here buffers a
//! whole stream: a `Channel` is bounded and a connection body reads on demand.
//!
//! `h1` reads a body off an HTTP/1.1 connection and writes one with HTTP/1.1
//! framing; `h2` does both on HTTP/2 streams. This module sits on the codec
//! (`http1`, the `h2` crate) and `net`; it knows nothing of routes or pools.

pub mod h1;
pub mod h2;
mod replay;
mod sse;

pub use sse::EditEvent;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use self::h1::H1Body;
pub use self::h2::H2Body;
pub use self::replay::{Replayed, Retained};
use crate::http1::{self, BodyFraming, DecodeError};
use crate::net::Conn;

/// One piece of a body as it arrives.
#[derive(Debug, Clone)]
pub enum Frame {
    Data(Bytes),
    Trailers(HeaderMap),
}

/// Why a body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is malformed")]
    Malformed(#[from] DecodeError),
    #[error("the connection closed before the body was complete")]
    Incomplete,
    #[error("i/o error while reading the body")]
    Io(#[from] std::io::Error),
    #[error("HTTP/2 stream error")]
    Stream(#[from] ::h2::Error),
    #[error("the body stalled: nothing arrived for too long")]
    Stalled,
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
}

/// Copying a body from its source to a sink failed; which side failed decides
/// who is to blame (and so the status, and whether the client sees a reset).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The body being copied broke.
    #[error(transparent)]
    Source(BodyError),
    /// The connection or stream being written to failed.
    #[error("the receiving side failed")]
    Sink(#[source] std::io::Error),
}

/// Waits for `next` at most `idle` when one is set: a body that goes quiet
/// for longer is [`BodyError::Stalled`]. Cancel safe when `next` is.
pub(crate) async fn within<T>(idle: Option<Duration>, next: impl Future<Output = T>) -> Result<T, BodyError> {
    match idle {
        Some(limit) => tokio::time::timeout(limit, next).await.map_err(|_| BodyError::Stalled),
        None => Ok(next.await),
    }
}

/// When a body last gave up a frame, and whether it is waiting on its own
/// source: how an upstream wait tells a slow upload (still progressing, or
/// waiting on the client, whose own timeout applies) from an upstream that
/// went quiet.
#[derive(Debug)]
pub struct Progress {
    base: Instant,
    /// Milliseconds after `base`.
    last: AtomicU64,
    /// The body's source (the client) is being waited on.
    waiting: AtomicBool,
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress { base: Instant::now(), last: AtomicU64::new(0), waiting: AtomicBool::new(false) })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Release);
    }

    /// When the last frame was taken (or the watch began).
    pub fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last.load(Ordering::Acquire))
    }

    /// Resolves once no frame has been taken for `limit`, not counting time
    /// spent waiting on the body's own source.
    ///
    /// # Cancel safety
    /// Cancel safe: it only sleeps.
    pub async fn quiet_for(&self, limit: Duration) {
        loop {
            let now = Instant::now();
            let deadline = if self.waiting.load(Ordering::Acquire) { now + limit } else { self.last() + limit };
            if deadline <= now {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Marks a wait on a body's source for as long as it lives (also when the
/// wait is cancelled).
struct Waiting<'a>(&'a AtomicBool);

impl<'a> Waiting<'a> {
    fn start(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::Relaxed);
        Waiting(flag)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A body whose frames stamp a [`Progress`] as they are taken.
#[derive(Debug)]
pub struct Watched {
    inner: Body,
    progress: Arc<Progress>,
}

/// When to give up on a peer that takes nothing of what is written to it
/// (`client_send_timeout`): after `after` with no progress, where progress
/// is bytes taken by a write or, when the TCP socket is known, bytes the
/// peer acknowledged (the kernel's buffer takes bytes in bursts, so a slow
/// but steady reader may leave writes waiting far longer than `after`).
#[derive(Debug, Clone, Copy)]
pub struct SendStall {
    pub after: Duration,
    pub socket: Option<std::os::fd::RawFd>,
}

impl SendStall {
    /// Bytes the peer acknowledged so far, when known.
    pub fn acked(&self) -> Option<u64> {
        self.socket.and_then(crate::net::bytes_acked)
    }
}

/// A body whose data bytes are counted as they are taken, and shown to an
/// observer (an access-log line) that lives until the body is done with,
/// read whole or dropped.
pub struct Counted {
    inner: Body,
    count: Option<Arc<AtomicU64>>,
    observer: Option<Box<dyn Observe>>,
    /// Bytes taken so far, and the most allowed.
    taken: u64,
    limit: Option<u64>,
    /// Read to its end or to an error: nothing is left for the observer.
    ended: bool,
    /// The rest read for the observer alone (see `Drop`): dropped, it is
    /// done, however it ends — a runtime shutting down drops a spawned task
    /// at once, and must not be handed another.
    lingering: bool,
}

/// Sees a body's data as it is taken.
pub trait Observe: Send + Sync {
    fn data(&mut self, _bytes: &[u8]) {}

    /// The body broke before its end (its source failed or was cut).
    fn broken(&mut self) {}

    /// The body's reader let go of it before its end (the client left): how
    /// long the rest is worth reading for the observer alone, if at all.
    fn reader_gone(&mut self) -> Option<std::time::Duration> {
        None
    }
}

impl Counted {
    fn new(inner: Body, count: Option<Arc<AtomicU64>>, observer: Option<Box<dyn Observe>>) -> Counted {
        Counted { inner, count, observer, taken: 0, limit: None, ended: false, lingering: false }
    }
}

/// Bodies being read on for their observer alone (see `Counted`'s drop).
static LINGERING: AtomicUsize = AtomicUsize::new(0);
/// Woken when the last of them ends.
static NONE_LINGERING: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Counts one lingering read until dropped.
struct Lingering;

impl Lingering {
    fn start() -> Lingering {
        LINGERING.fetch_add(1, Ordering::AcqRel);
        Lingering
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        if LINGERING.fetch_sub(1, Ordering::AcqRel) == 1 {
            NONE_LINGERING.notify_waiters();
        }
    }
}

/// Resolves once no body is being read on for its observer: a graceful
/// shutdown waits for them (each is bounded by its own time) so the token
/// usage they are waiting for is not lost.
pub async fn lingering_done() {
    loop {
        let done = NONE_LINGERING.notified();
        tokio::pin!(done);
        // Registered before the check, so an end in between still wakes us.
        done.as_mut().enable();
        if LINGERING.load(Ordering::Acquire) == 0 {
            return;
        }
        done.await;
    }
}

impl Drop for Counted {
    /// An observer that still wants the rest (the final token usage of a
    /// stream whose client left) gets it from a task of its own, for as
    /// long as it said; then it is dropped as it would have been now.
    fn drop(&mut self) {
        if self.ended || self.lingering {
            return;
        }
        let Some(linger) = self.observer.as_mut().and_then(|o| o.reader_gone()) else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let inner = std::mem::replace(&mut self.inner, Body::Empty);
        let mut rest = Counted::new(inner, None, self.observer.take());
        rest.lingering = true;
        let mut rest = Body::Counted(Box::new(rest));
        let lingering = Lingering::start();
        runtime.spawn(async move {
            let _lingering = lingering;
            let read = async { while let Some(Ok(_)) = rest.next_frame().await {} };
            let _ = tokio::time::timeout(linger, read).await;
        });
    }
}

/// What a connection driver pushes as it reads a body off its socket: a
/// frame, the end (`Ok(None)`, explicit so that a driver that stops
/// half-way is never taken for a complete body), or why it broke.
pub type Piece = Result<Option<Frame>, BodyError>;
pub type FrameSender = mpsc::Sender<Piece>;

pub enum Body {
    Empty,
    /// A body that is already complete in memory.
    Full(Bytes),
    /// A body still arriving on a client connection (see [`Body::channel`]).
    Channel(Box<Channel>),
    /// A body read off an HTTP/1.1 connection as it is asked for.
    H1(Box<H1Body>),
    /// A body arriving on an HTTP/2 stream (client request or upstream response).
    H2(Box<H2Body>),
    /// Another body, with its progress recorded.
    Watched(Box<Watched>),
    /// A request body handed out again for a retry (see [`Retained`]).
    Replayed(Box<Replayed>),
    /// Another body, its bytes counted (see [`Body::counted`]).
    Counted(Box<Counted>),
    /// An event stream edited event by event (see [`Body::sse_edited`]).
    Sse(Box<sse::SseEdit>),
    /// No message body: the connection itself, after a `101 Switching
    /// Protocols` or a CONNECT's `200`. Bytes now flow both ways in another
    /// protocol; a connection driver takes it and bridges it to its client.
    /// Read as a body it is empty (and the connection is closed).
    Upgraded(Box<Conn>),
}

/// A body fed through a channel by the driver that reads it.
#[derive(Debug)]
pub struct Channel {
    rx: mpsc::Receiver<Piece>,
    len: Option<u64>,
    ended: bool,
}

impl Channel {
    /// # Cancel safety
    /// Cancel safe: a received piece is handed out at once.
    async fn next_frame(&mut self) -> Option<Result<Frame, BodyError>> {
        if self.ended {
            return None;
        }
        match self.rx.recv().await {
            Some(Ok(Some(frame))) => Some(Ok(frame)),
            Some(Ok(None)) => {
                self.ended = true;
                None
            }
            Some(Err(e)) => {
                self.ended = true;
                Some(Err(e))
            }
            // The driver went away before the end: the body is cut, not complete.
            None => {
                self.ended = true;
                Some(Err(BodyError::Incomplete))
            }
        }
    }
}

impl Body {
    /// A body its reader feeds through the returned sender, `capacity` pieces
    /// ahead at most; `len` is its declared length, if any.
    pub fn channel(capacity: usize, len: Option<u64>) -> (FrameSender, Body) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, Body::Channel(Box::new(Channel { rx, len, ended: false })))
    }

    /// The next frame, `None` at the end.
    ///
    /// # Cancel safety
    /// Cancel safe for `Empty`, `Full`, `Channel` and `H2`; an `H1` body dropped
    /// mid-read simply closes its connection instead of recycling it.
    pub async fn next_frame(&mut self) -> Option<Result<Frame, BodyError>> {
        match self {
            Body::Counted(c) => {
                let frame = c.inner.next_uncounted().await;
                c.ended |= !matches!(frame, Some(Ok(_)));
                if let (Some(Err(_)), Some(observer)) = (&frame, c.observer.as_mut()) {
                    observer.broken();
                }
                if let Some(Ok(Frame::Data(data))) = &frame {
                    c.taken += data.len() as u64;
                    if let Some(limit) = c.limit.filter(|limit| c.taken > *limit) {
                        return Some(Err(BodyError::TooLarge(usize::try_from(limit).unwrap_or(usize::MAX))));
                    }
                    if let Some(count) = &c.count {
                        count.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                    if let Some(observer) = c.observer.as_mut() {
                        observer.data(data);
                    }
                }
                frame
            }
            other => other.next_uncounted().await,
        }
    }

    /// `next_frame` for every body but `Counted`, which never nests.
    async fn next_uncounted(&mut self) -> Option<Result<Frame, BodyError>> {
        match self {
            Body::Watched(w) => {
                let waiting = Waiting::start(&w.progress.waiting);
                let frame = w.inner.next_unwatched().await;
                // Stamp before the flag clears, so a timer never sees neither.
                w.progress.touch();
                drop(waiting);
                frame
            }
            other => other.next_unwatched().await,
        }
    }

    /// `next_frame` for every body but `Watched` and `Counted`, which never nest.
    async fn next_unwatched(&mut self) -> Option<Result<Frame, BodyError>> {
        match self {
            Body::Empty | Body::Watched(_) | Body::Counted(_) => None,
            Body::Upgraded(_) => {
                *self = Body::Empty;
                None
            }
            Body::Full(bytes) => {
                let data = std::mem::take(bytes);
                *self = Body::Empty;
                (!data.is_empty()).then_some(Ok(Frame::Data(data)))
            }
            Body::Channel(channel) => channel.next_frame().await,
            Body::H1(h1) => h1.next_frame().await,
            Body::H2(h2) => h2.next_frame().await,
            Body::Replayed(r) => Box::pin(r.next_frame()).await,
            Body::Sse(edit) => Box::pin(edit.next_frame()).await,
        }
    }

    /// This body, its data bytes added to `count` and shown to `observer` as
    /// they are taken, the observer kept until the body is read whole or
    /// dropped. A body that is in memory or none at all is counted (and
    /// observed) at once, and the observer dropped now: nothing is left to
    /// wait for.
    pub fn counted(self, count: Option<Arc<AtomicU64>>, observer: Option<Box<dyn Observe>>) -> Body {
        match self {
            Body::Empty | Body::Upgraded(_) => self,
            Body::Full(ref bytes) => {
                if let Some(count) = &count {
                    count.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                }
                if let Some(mut observer) = observer {
                    observer.data(bytes);
                }
                self
            }
            Body::Counted(mut c) => {
                c.count = count;
                c.observer = observer;
                Body::Counted(c)
            }
            inner => Body::Counted(Box::new(Counted::new(inner, count, observer))),
        }
    }

    /// This body, failing with [`BodyError::TooLarge`] once more than
    /// `limit` bytes were taken (for a body that arrives as it is read; a
    /// declared length is checked before reading).
    pub fn within(self, limit: Option<u64>) -> Body {
        let Some(limit) = limit else { return self };
        match self {
            Body::Empty | Body::Upgraded(_) | Body::Full(_) => self,
            Body::Counted(mut c) => {
                c.limit = Some(limit);
                Body::Counted(c)
            }
            inner => {
                let mut counted = Counted::new(inner, None, None);
                counted.limit = Some(limit);
                Body::Counted(Box::new(counted))
            }
        }
    }

    /// This body, stamping `progress` each time a frame is taken.
    pub fn watched(self, progress: Arc<Progress>) -> Body {
        match self {
            Body::Empty | Body::Full(_) | Body::Upgraded(_) => self,
            // The count stays outside; the body it counts is watched.
            Body::Counted(mut c) => {
                c.inner = std::mem::replace(&mut c.inner, Body::Empty).watched(progress);
                Body::Counted(c)
            }
            Body::Watched(w) => Body::Watched(Box::new(Watched { inner: w.inner, progress })),
            inner => Body::Watched(Box::new(Watched { inner, progress })),
        }
    }

    /// This event stream with each whole event replaced by what `edit`
    /// writes for it.
    /// `removed` counts the bytes the edits took out.
    pub fn sse_edited(self, edit: sse::EditEvent, removed: Arc<AtomicU64>) -> Body {
        match self {
            Body::Empty | Body::Upgraded(_) => self,
            inner => Body::Sse(Box::new(sse::SseEdit::new(inner, edit, removed))),
        }
    }

    /// The exact length when it is known before reading.
    pub fn exact_len(&self) -> Option<u64> {
        match self {
            Body::Empty | Body::Upgraded(_) => Some(0),
            Body::Full(bytes) => Some(bytes.len() as u64),
            Body::Channel(channel) => channel.len,
            Body::H1(h1) => h1.exact_len(),
            Body::H2(h2) => h2.exact_len(),
            Body::Watched(w) => w.inner.exact_len(),
            Body::Replayed(r) => r.exact_len(),
            Body::Counted(c) => c.inner.exact_len(),
            // Edited: its length is known only at the end.
            Body::Sse(_) => None,
        }
    }

    /// How this body is framed when sent as a request.
    pub fn request_framing(&self) -> BodyFraming {
        http1::request_body_framing(self.exact_len())
    }

    /// A copy to send again, for bodies that are already in memory.
    pub fn replayable(&self) -> Option<Body> {
        match self {
            Body::Empty => Some(Body::Empty),
            Body::Full(bytes) => Some(Body::Full(bytes.clone())),
            _ => None,
        }
    }

    /// Reads the whole body, refusing more than `limit` bytes. For small bodies only
    /// (health-check answers, tests): the proxy path streams instead.
    pub async fn collect(mut self, limit: usize) -> Result<Bytes, BodyError> {
        let mut out = bytes::BytesMut::new();
        while let Some(frame) = self.next_frame().await {
            if let Frame::Data(data) = frame? {
                if out.len() + data.len() > limit {
                    return Err(BodyError::TooLarge(limit));
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(out.freeze())
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Empty => f.write_str("Body::Empty"),
            Body::Full(b) => write!(f, "Body::Full({} bytes)", b.len()),
            Body::Channel(channel) => write!(f, "Body::Channel(len {:?})", channel.len),
            Body::H1(_) => f.write_str("Body::H1"),
            Body::H2(_) => f.write_str("Body::H2"),
            Body::Watched(w) => write!(f, "Body::Watched({:?})", w.inner),
            Body::Replayed(_) => f.write_str("Body::Replayed"),
            Body::Sse(edit) => write!(f, "Body::Sse({:?})", edit.inner()),
            Body::Upgraded(_) => f.write_str("Body::Upgraded"),
            Body::Counted(c) => write!(f, "Body::Counted({:?})", c.inner),
        }
    }
}
