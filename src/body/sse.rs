//! An event stream edited event by event, for answers the proxy must change
//! on their way (the usage chunk it asked for and the client did not). Each
//! whole event, up to and including its blank line, is handed to an edit
//! function that writes what the client gets instead; an unfinished event
//! waits for the rest of itself, and nothing else is held back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::{Body, BodyError, Frame};

/// Longest unfinished event held: past it, the rest of the stream passes as
/// it is (an event stream with an event that long is not one to edit).
const MAX_EVENT: usize = 64 * 1024;

/// Writes the edited form of one whole event (or nothing, to drop it).
pub type EditEvent = fn(event: &[u8], out: &mut Vec<u8>);

pub struct SseEdit {
    inner: Body,
    edit: EditEvent,
    /// Bytes the edits took out (what came in less what went out).
    removed: Arc<AtomicU64>,
    pending: BytesMut,
    /// Editing stopped (an event past [`MAX_EVENT`]).
    passthrough: bool,
    /// A frame that came behind held bytes, handed out next.
    held: Option<Frame>,
    ended: bool,
}

impl SseEdit {
    pub(super) fn new(inner: Body, edit: EditEvent, removed: Arc<AtomicU64>) -> SseEdit {
        SseEdit { inner, edit, removed, pending: BytesMut::new(), passthrough: false, held: None, ended: false }
    }

    pub(super) fn inner(&self) -> &Body {
        &self.inner
    }

    pub(super) async fn next_frame(&mut self) -> Option<Result<Frame, BodyError>> {
        if let Some(frame) = self.held.take() {
            return Some(Ok(frame));
        }
        loop {
            if self.ended {
                return None;
            }
            match self.inner.next_frame().await {
                Some(Ok(Frame::Data(data))) if self.passthrough => return Some(Ok(Frame::Data(data))),
                Some(Ok(Frame::Data(data))) => {
                    if let Some(out) = self.edited(&data) {
                        return Some(Ok(Frame::Data(out)));
                    }
                }
                Some(Ok(other)) => {
                    if self.pending.is_empty() {
                        return Some(Ok(other));
                    }
                    self.held = Some(other);
                    return Some(Ok(Frame::Data(self.pending.split().freeze())));
                }
                Some(Err(e)) => {
                    self.ended = true;
                    return Some(Err(e));
                }
                None => {
                    self.ended = true;
                    // An unfinished last event goes as it came.
                    return (!self.pending.is_empty()).then(|| Ok(Frame::Data(self.pending.split().freeze())));
                }
            }
        }
    }

    /// What `data` completes, edited; `None` while it only adds to an event.
    fn edited(&mut self, data: &[u8]) -> Option<Bytes> {
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        while let Some(end) = event_end(&self.pending) {
            let event = self.pending.split_to(end);
            let before = out.len();
            (self.edit)(&event, &mut out);
            let kept = (out.len() - before) as u64;
            self.removed.fetch_add((event.len() as u64).saturating_sub(kept), Ordering::Relaxed);
        }
        if self.pending.len() > MAX_EVENT {
            out.extend_from_slice(&self.pending);
            self.pending.clear();
            self.passthrough = true;
        }
        (!out.is_empty()).then(|| Bytes::from(out))
    }
}

/// The length of the first whole event in `bytes`: through the blank line
/// that ends it (LF LF, or CR LF CR LF).
fn event_end(bytes: &[u8]) -> Option<usize> {
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = bytes.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drop_odd(event: &[u8], out: &mut Vec<u8>) {
        if !event.starts_with(b"data: odd") {
            out.extend_from_slice(event);
        }
    }

    async fn edited(pieces: &[&[u8]]) -> Vec<u8> {
        let (tx, body) = Body::channel(16, None);
        for piece in pieces {
            tx.send(Ok(Some(Frame::Data(Bytes::copy_from_slice(piece))))).await.unwrap();
        }
        tx.send(Ok(None)).await.unwrap();
        let mut edit = SseEdit::new(body, drop_odd, Arc::default());
        let mut out = Vec::new();
        while let Some(frame) = edit.next_frame().await {
            if let Frame::Data(data) = frame.unwrap() {
                out.extend_from_slice(&data);
            }
        }
        out
    }

    #[tokio::test]
    async fn events_cut_anywhere_are_edited_whole() {
        let stream = b"data: one\n\ndata: odd 1\n\ndata: two\r\n\r\ndata: odd 2\n\ndata: last";
        let want = b"data: one\n\ndata: two\r\n\r\ndata: last".to_vec();
        for cut in 0..stream.len() {
            for second in cut..stream.len() {
                let pieces = [&stream[..cut], &stream[cut..second], &stream[second..]];
                assert_eq!(edited(&pieces).await, want, "cut at {cut} and {second}");
            }
        }
    }

    #[tokio::test]
    async fn an_event_too_long_to_hold_turns_editing_off() {
        let long = [b"data: odd ".as_slice(), &vec![b'x'; MAX_EVENT + 1]].concat();
        let out = edited(&[&long, b"\n\ndata: odd again\n\n"]).await;
        assert_eq!(out, [long.as_slice(), b"\n\ndata: odd again\n\n"].concat());
    }
}
