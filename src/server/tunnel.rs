//! Bridging a client connection to an upstream one once the HTTP exchange has
//! handed the connection over (a WebSocket's `101`, a CONNECT's `200`):
//! bytes are copied both ways as they come, an end of input on one side is
//! passed on as a half-close, an error on either side ends both, and a tunnel
//! quiet both ways for the idle timeout is closed. Nothing is held in a
//! buffer while a side waits (over plain TCP), so an idle WebSocket costs
//! little more than its two sockets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::halves::{read_when_ready, ReadSide};
use crate::net::{Conn, ReadPart};
use crate::proxy::log::Transferred;

/// Largest piece read at once.
const PIECE: usize = 16 * 1024;

/// Copies until both directions ended, one failed, both were quiet for
/// `idle`, or `client_gone` resolves (a client whose end of input says
/// nothing of its going away: an HTTP/2 stream reset after its END_STREAM),
/// counting bytes in `carried` as they are written. `client_buf`
/// holds bytes the client sent after its request head; `upstream.buf` bytes
/// the upstream sent after its response head.
pub async fn bridge<R, W>(
    client_rd: &mut R,
    client_buf: BytesMut,
    client_wr: &mut W,
    upstream: Conn,
    idle: Duration,
    carried: &Transferred,
    client_gone: impl std::future::Future<Output = ()>,
) where
    R: ReadSide,
    W: AsyncWrite + Unpin,
{
    let Conn { mut stream, buf: upstream_buf, .. } = upstream;
    let (mut up_rd, mut up_wr) = stream.split();
    let started = Instant::now();
    let last = AtomicU64::new(0);
    let touch = |count: &AtomicU64, n: usize| {
        count.fetch_add(n as u64, Ordering::Relaxed);
        last.store(millis(started.elapsed()), Ordering::Relaxed);
    };
    let to_upstream = async {
        let mut buf = client_buf;
        loop {
            if !buf.is_empty() {
                up_wr.write_all(&buf).await?;
                touch(&carried.up, buf.len());
            }
            buf = BytesMut::new(); // held only while a piece is on its way
            if client_rd.read_into(&mut buf, PIECE).await? == 0 {
                return up_wr.shutdown().await;
            }
        }
    };
    let to_client = async {
        let mut buf = upstream_buf;
        loop {
            if !buf.is_empty() {
                client_wr.write_all(&buf).await?;
                client_wr.flush().await?;
                touch(&carried.down, buf.len());
            }
            buf = BytesMut::new();
            if read_upstream(&mut up_rd, &mut buf).await? == 0 {
                return client_wr.shutdown().await;
            }
        }
    };
    tokio::pin!(to_upstream, to_client, client_gone);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        let quiet_since = started + Duration::from_millis(last.load(Ordering::Relaxed));
        tokio::select! {
            result = &mut to_upstream, if !up_done => match result {
                Ok(()) => up_done = true,
                Err(e) => {
                    tracing::debug!(error = %e, "tunnel ended: client side failed");
                    break;
                }
            },
            result = &mut to_client, if !down_done => match result {
                Ok(()) => down_done = true,
                Err(e) => {
                    tracing::debug!(error = %e, "tunnel ended: upstream side failed");
                    break;
                }
            },
            _ = &mut client_gone => {
                tracing::debug!("tunnel ended: the client is gone");
                break;
            }
            _ = tokio::time::sleep_until(quiet_since + idle) => {
                let now_quiet = started + Duration::from_millis(last.load(Ordering::Relaxed));
                if now_quiet == quiet_since {
                    tracing::debug!(seconds = idle.as_secs_f64(), "tunnel idle; closing it");
                    break;
                }
            }
        }
    }
}

/// Reads the upstream side; over plain TCP without a buffer until bytes are there.
async fn read_upstream(rd: &mut ReadPart<'_>, buf: &mut BytesMut) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    if let ReadPart::Plain(tcp) = rd {
        return read_when_ready(|| tcp.readable(), |buf| tcp.try_read_buf(buf), buf, PIECE).await;
    }
    buf.reserve(PIECE);
    rd.read_buf(buf).await
}

fn millis(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}
