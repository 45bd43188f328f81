//! Bodies over HTTP/1.1: [`H1Body`] reads one off a connection as it is asked
//! for and hands the connection back through [`Recycle`] when it ended
//! cleanly; [`write_body`] writes a neutral body with chunked or raw framing,
//! flushing each frame so SSE events and streamed uploads never sit in a
//! buffer, its head in the same write as the first piece when that is at
//! hand; [`inline_small`] folds a small in-memory body into its head's write. Shared
//! by the client side (responses) and the upstream side (requests).

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{within, Body, BodyError, CopyError, Frame, SendStall};
use crate::headers::strip_trailer_fields;
use crate::http1::{self, BodyDecoder, BodyFraming, DecodeEvent, MAX_TRAILERS};
use crate::net::{Conn, Recycle};

/// Bodies up to this size travel in the same write as their head.
const INLINE_BODY: usize = 16 * 1024;
/// Chunks below this size are copied next to their framing: one write per chunk.
const COALESCE: usize = 8 * 1024;
/// A body read starts this small, since a stream of events holds it while it
/// waits for the next one…
const FIRST_READ: usize = 4 * 1024;
/// …and grows to this once a read fills what it had (a download).
const READ_SIZE: usize = 16 * 1024;

/// A body still on its HTTP/1.1 connection.
#[derive(Debug)]
pub struct H1Body {
    /// `None` once the body has ended or failed.
    conn: Option<Conn>,
    decoder: BodyDecoder,
    len: Option<u64>,
    /// Where the connection goes after a clean end, if it may carry another message.
    home: Option<Arc<dyn Recycle>>,
    /// Longest wait for the next bytes.
    idle: Option<Duration>,
    /// The last read filled the room it had: read in larger pieces.
    filling: bool,
}

impl H1Body {
    /// Reads a body framed as `framing` from `conn`. When `home` is given the
    /// connection is handed to it once the body has been read to its clean end.
    pub fn new(conn: Conn, framing: BodyFraming, home: Option<Arc<dyn Recycle>>) -> Self {
        let len = match framing {
            BodyFraming::Length(n) => Some(n),
            BodyFraming::Empty => Some(0),
            _ => None,
        };
        H1Body {
            conn: Some(conn),
            decoder: BodyDecoder::new(framing, MAX_TRAILERS),
            len,
            home,
            idle: None,
            filling: false,
        }
    }

    /// Fails the body with [`BodyError::Stalled`] when nothing arrives for `idle`.
    pub fn with_idle(mut self, idle: Duration) -> Self {
        self.idle = Some(idle);
        self
    }

    pub fn exact_len(&self) -> Option<u64> {
        self.len
    }

    /// # Cancel safety
    /// Dropping the future mid-read loses nothing already decoded; dropping the
    /// body closes the connection rather than recycling it half-read.
    pub async fn next_frame(&mut self) -> Option<Result<Frame, BodyError>> {
        let conn = self.conn.as_mut()?;
        loop {
            match self.decoder.decode(&mut conn.buf) {
                Ok(DecodeEvent::Data(data)) => return Some(Ok(Frame::Data(data))),
                Ok(DecodeEvent::Trailers(trailers)) => return Some(Ok(Frame::Trailers(trailers))),
                Ok(DecodeEvent::End) => {
                    self.finish();
                    return None;
                }
                Ok(DecodeEvent::NeedMore) => {}
                Err(e) => {
                    self.conn = None;
                    return Some(Err(e.into()));
                }
            }
            conn.buf.reserve(if self.filling { READ_SIZE } else { FIRST_READ });
            let room = conn.buf.capacity() - conn.buf.len();
            match within(self.idle, conn.stream.read_buf(&mut conn.buf)).await {
                Ok(Ok(0)) => return self.at_eof(),
                Ok(Ok(n)) => self.filling = n == room,
                Ok(Err(e)) => {
                    self.conn = None;
                    return Some(Err(BodyError::Io(e)));
                }
                Err(stalled) => {
                    self.conn = None;
                    return Some(Err(stalled));
                }
            }
        }
    }

    /// The peer closed: the end of a close-delimited body, else a cut one.
    fn at_eof(&mut self) -> Option<Result<Frame, BodyError>> {
        self.home = None;
        match self.decoder.eof() {
            Ok(DecodeEvent::Data(data)) => Some(Ok(Frame::Data(data))),
            Ok(_) => {
                self.conn = None;
                None
            }
            Err(_) => {
                self.conn = None;
                Some(Err(BodyError::Incomplete))
            }
        }
    }

    fn finish(&mut self) {
        if let (Some(conn), Some(home)) = (self.conn.take(), self.home.take()) {
            home.recycle(conn);
        }
    }
}

/// A buffer for a head and the small body [`inline_small`] will fold into it,
/// sized once: growing it would copy the head.
pub fn head_buffer(body: &Body) -> BytesMut {
    const TYPICAL_HEAD: usize = 1024;
    let inline = match body {
        Body::Full(bytes) if bytes.len() <= INLINE_BODY => bytes.len(),
        _ => 0,
    };
    BytesMut::with_capacity(TYPICAL_HEAD + inline)
}

/// Moves a small in-memory body into `head`, so head and body leave in one
/// write; returns what is left to send after it.
pub fn inline_small(head: &mut BytesMut, body: Body) -> Body {
    match body {
        Body::Full(bytes) if bytes.len() <= INLINE_BODY => {
            head.extend_from_slice(&bytes);
            Body::Empty
        }
        other => other,
    }
}

/// Copies `body` to `wr`, chunk-encoded when `chunked` (trailers kept, minus
/// the fields a trailer may not carry), raw otherwise (trailers dropped: a
/// length-framed message cannot carry them). `out` holds bytes not written
/// yet (a head): they leave in the same write as the body's first piece when
/// that is at hand already, else on their own at once. Each piece is flushed
/// as it goes, so SSE events never wait in a buffer.
///
/// With `stall`, a peer that takes nothing for that long ends the body with a
/// [`CopyError::Sink`] of kind `TimedOut` (a client that stopped reading must
/// not hold its stream and upstream connection forever).
pub async fn write_body<W: AsyncWrite + Unpin>(
    wr: &mut W,
    mut body: Body,
    chunked: bool,
    mut out: BytesMut,
    stall: Option<SendStall>,
) -> Result<(), CopyError> {
    let mut ended = false;
    loop {
        let frame = if out.is_empty() {
            body.next_frame().await
        } else {
            match now_or_never(body.next_frame()) {
                Some(frame) => frame,
                None => {
                    send(wr, &mut out, None, stall).await?;
                    continue;
                }
            }
        };
        let Some(frame) = frame else { break };
        let data = match frame.map_err(CopyError::Source)? {
            Frame::Data(data) if data.is_empty() => continue,
            Frame::Data(data) => data,
            Frame::Trailers(mut trailers) => {
                if chunked {
                    strip_trailer_fields(&mut trailers);
                    http1::encode_last_chunk(Some(&trailers), &mut out);
                    ended = true;
                    send(wr, &mut out, None, stall).await?;
                }
                continue;
            }
        };
        if !chunked {
            send(wr, &mut out, Some(data), stall).await?;
            continue;
        }
        http1::encode_chunk_prefix(data.len(), &mut out);
        if data.len() < COALESCE {
            out.extend_from_slice(&data);
            out.extend_from_slice(http1::CHUNK_SUFFIX);
            send(wr, &mut out, None, stall).await?;
        } else {
            send(wr, &mut out, Some(data), stall).await?;
            out.extend_from_slice(http1::CHUNK_SUFFIX);
            send(wr, &mut out, None, stall).await?;
        }
    }
    if chunked && !ended {
        http1::encode_last_chunk(None, &mut out);
    }
    send(wr, &mut out, None, stall).await
}

/// [`write_now`], given up on (with `TimedOut`) once a whole `stall.after`
/// passes in which the peer took no byte: a slow reader that keeps taking is
/// never cut, one that stopped is. The timer is made (on the heap, so an idle
/// connection's task stays small) only when the write cannot finish at once.
async fn send<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut BytesMut,
    data: Option<Bytes>,
    stall: Option<SendStall>,
) -> Result<(), CopyError> {
    let Some(stall) = stall else { return write_now(wr, out, data).await };
    // Atomic only to be `Sync` (the future is `Send`): one task writes and
    // reads it, so plain loads and stores do.
    let taken = AtomicU64::new(0);
    let mut counting = Counting { inner: wr, taken: &taken };
    let mut write = std::pin::pin!(write_now(&mut counting, out, data));
    // Polled once without a waker of ours: a future must take the waker of
    // its latest poll, so polling it again below is sound.
    if let Poll::Ready(written) = write.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        return written;
    }
    // Boxed: the timer and this wait are needed only by a write that waits.
    Box::pin(progressing(write, &taken, stall)).await
}

/// Drives `write`, failing once `stall.after` passes with neither `taken`
/// nor the bytes the peer acknowledged moving. The kernel is asked only when
/// the timer fires (the first time, for a baseline), so a stalled peer is
/// given up on after one to two `stall.after`.
async fn progressing<F>(mut write: Pin<&mut F>, taken: &AtomicU64, stall: SendStall) -> Result<(), CopyError>
where
    F: Future<Output = Result<(), CopyError>>,
{
    let mut timer = std::pin::pin!(tokio::time::sleep(stall.after));
    let progress = || Some((taken.load(Ordering::Relaxed), stall.acked()));
    let mut seen = None;
    loop {
        tokio::select! {
            biased;
            written = write.as_mut() => return written,
            () = timer.as_mut() => {}
        }
        let now = progress();
        if now == seen {
            let why = "the peer took nothing of a write in time";
            return Err(CopyError::Sink(std::io::Error::new(std::io::ErrorKind::TimedOut, why)));
        }
        seen = now;
        timer.as_mut().reset(tokio::time::Instant::now() + stall.after);
    }
}

/// A writer that counts the bytes its peer took.
struct Counting<'a, W> {
    inner: &'a mut W,
    taken: &'a AtomicU64,
}

impl<W> Counting<'_, W> {
    fn count(&self, polled: &Poll<std::io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = polled {
            self.taken.store(self.taken.load(Ordering::Relaxed) + *n as u64, Ordering::Relaxed);
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counting<'_, W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut *self.inner).poll_write(cx, buf);
        self.count(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut *self.inner).poll_write_vectored(cx, bufs);
        self.count(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// Writes `out` (and empties it), then `data`: in one write, copied together
/// when `data` is small, or gathered (vectored) when it is not; then flushes.
async fn write_now<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut BytesMut,
    data: Option<Bytes>,
) -> Result<(), CopyError> {
    let written = match data {
        Some(data) if out.is_empty() => wr.write_all(&data).await,
        Some(data) if data.len() < COALESCE => {
            out.extend_from_slice(&data);
            wr.write_all(out).await
        }
        Some(data) => wr.write_all_buf(&mut out.split().freeze().chain(data)).await,
        None if out.is_empty() => Ok(()),
        None => wr.write_all(out).await,
    };
    written.map_err(CopyError::Sink)?;
    out.clear();
    wr.flush().await.map_err(CopyError::Sink)
}

/// The output of `future` if it is ready at once; `None` otherwise, and the
/// future is dropped — so only for cancel-safe ones (`Body::next_frame`).
fn now_or_never<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}
