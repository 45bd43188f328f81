//! Bodies over HTTP/2 streams, for the client-facing server and the upstream
//! client alike. Receiving releases flow-control capacity only
//! as frames are taken, so a slow consumer throttles the sender through the
//! window instead of growing a buffer. Sending waits for window capacity
//! before each piece, so a slow reader holds back its own stream only.

use std::future::poll_fn;

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http::HeaderMap;

use std::time::Duration;

use tokio::task::AbortHandle;

use super::{within, Body, BodyError, CopyError, Frame, SendStall};
use crate::headers::strip_trailer_fields;

#[derive(Debug)]
enum Stage {
    Data,
    Trailers,
    Done,
}

/// A body arriving on an HTTP/2 stream.
#[derive(Debug)]
pub struct H2Body {
    recv: RecvStream,
    len: Option<u64>,
    stage: Stage,
    /// Longest wait for the next piece.
    idle: Option<Duration>,
    /// The upload of the request this body answers, stopped with it.
    upload: Option<AbortHandle>,
}

impl Drop for H2Body {
    /// An answer given up before its end (a retry, a client gone) stops its
    /// upload; one read to the end lets it finish (full duplex), bounded by
    /// the client body timeout.
    fn drop(&mut self) {
        if let (Some(upload), false) = (&self.upload, matches!(self.stage, Stage::Done)) {
            upload.abort();
        }
    }
}

impl H2Body {
    /// `headers` are the stream's head, read for a declared `content-length`.
    pub fn new(recv: RecvStream, headers: &HeaderMap) -> Self {
        let len = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let stage = if recv.is_end_stream() { Stage::Done } else { Stage::Data };
        let len = if recv.is_end_stream() { Some(0) } else { len };
        H2Body { recv, len, stage, idle: None, upload: None }
    }

    /// Ties the task uploading the request to this answer: when the answer is
    /// dropped before its end (thrown away for a retry, or its client left),
    /// the upload stops too and lets go of the request body.
    pub fn with_upload(mut self, upload: AbortHandle) -> Self {
        self.upload = Some(upload);
        self
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
    /// Cancel safe: `h2` keeps frames queued until they are taken.
    pub async fn next_frame(&mut self) -> Option<Result<Frame, BodyError>> {
        loop {
            match self.stage {
                Stage::Data => match within(self.idle, self.recv.data()).await {
                    Err(stalled) => {
                        self.stage = Stage::Done;
                        return Some(Err(stalled));
                    }
                    Ok(Some(Ok(data))) => {
                        // The frame leaves h2's buffer now; let the peer send as much again.
                        let _ = self.recv.flow_control().release_capacity(data.len());
                        return Some(Ok(Frame::Data(data)));
                    }
                    Ok(Some(Err(e))) => {
                        self.stage = Stage::Done;
                        return Some(Err(BodyError::Stream(e)));
                    }
                    Ok(None) => self.stage = Stage::Trailers,
                },
                Stage::Trailers => {
                    self.stage = Stage::Done;
                    return match within(self.idle, self.recv.trailers()).await {
                        Ok(Ok(Some(trailers))) => Some(Ok(Frame::Trailers(trailers))),
                        Ok(Ok(None)) => None,
                        Ok(Err(e)) => Some(Err(BodyError::Stream(e))),
                        Err(stalled) => Some(Err(stalled)),
                    };
                }
                Stage::Done => return None,
            }
        }
    }
}

/// Sends `body` on `send`, ending the stream (with trailers when there are
/// some). With `stall`, a peer that neither grants window nor acknowledges
/// bytes for `stall.after` ends the body with a [`CopyError::Sink`] of kind
/// `TimedOut`.
pub async fn send_body(
    send: &mut SendStream<Bytes>,
    mut body: Body,
    stall: Option<SendStall>,
) -> Result<(), CopyError> {
    while let Some(frame) = body.next_frame().await {
        match frame.map_err(CopyError::Source)? {
            Frame::Data(data) => send_data(send, data, stall).await?,
            Frame::Trailers(mut trailers) => {
                strip_trailer_fields(&mut trailers);
                return send.send_trailers(trailers).map_err(sink);
            }
        }
    }
    send.send_data(Bytes::new(), true).map_err(sink)
}

fn sink(e: h2::Error) -> CopyError {
    CopyError::Sink(std::io::Error::other(e))
}

/// Sends `data` as window capacity becomes available. Capacity also waits
/// for the connection's send buffer, which a slow but steady reader drains
/// in the kernel's bursts: acknowledged bytes count as progress too.
///
/// The acknowledged count is asked of the kernel only once a wait ran out
/// (the first time, as a baseline), never per piece sent: so a stalled peer
/// is given up on after one to two `stall.after`.
async fn send_data(send: &mut SendStream<Bytes>, mut data: Bytes, stall: Option<SendStall>) -> Result<(), CopyError> {
    let mut acked: Option<Option<u64>> = None;
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let capacity = poll_fn(|cx| send.poll_capacity(cx));
        let granted = match stall {
            None => capacity.await,
            Some(stall) => match tokio::time::timeout(stall.after, capacity).await {
                Ok(granted) => granted,
                Err(_) => {
                    let now = Some(stall.acked());
                    if now != acked {
                        acked = now;
                        continue;
                    }
                    let why = "the peer granted no window in time";
                    return Err(CopyError::Sink(std::io::Error::new(std::io::ErrorKind::TimedOut, why)));
                }
            },
        };
        let granted = match granted {
            Some(granted) => granted.map_err(sink)?,
            None => return Err(sink(h2::Error::from(h2::Reason::CANCEL))),
        };
        if granted == 0 {
            continue;
        }
        let piece = data.split_to(granted.min(data.len()));
        send.send_data(piece, false).map_err(sink)?;
    }
    Ok(())
}
