//! Keeping a request body so a failed attempt can be sent again without
//! holding the upload back: the first attempt streams the body as it arrives
//! while a copy is recorded (up to a limit); a later attempt replays the copy
//! and then goes on reading the rest from the client. A body that outgrows
//! the limit frees its copy and can no longer be replayed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use tokio::sync::Notify;

use super::{Body, BodyError, Frame};

/// How long a retry waits for the previous attempt to let go of the body
/// (an HTTP/2 upload task ends shortly after its stream is reset).
const HANDOVER: Duration = Duration::from_secs(5);

/// The source of a body and a copy of what has been taken from it so far:
/// the data in one buffer, so the copy costs what the body weighs and not a
/// frame header per byte a hostile client sends one at a time.
#[derive(Debug)]
pub struct Recording {
    source: Body,
    data: BytesMut,
    trailers: Option<HeaderMap>,
    limit: u64,
    /// The copy outgrew `limit` and was dropped.
    overflowed: bool,
    /// The source has ended.
    ended: bool,
    /// The source failed: every later attempt fails too, never ends early.
    broken: bool,
}

/// A request body that can be handed out again, for as long as it is replayable.
#[derive(Debug)]
pub enum Retained {
    /// Complete in memory: every attempt gets a copy.
    Bytes(Bytes),
    /// Still arriving: attempts share one recording.
    Recorded(Arc<Home>),
}

/// Where the recording waits between attempts.
#[derive(Debug, Default)]
pub struct Home {
    slot: Mutex<Option<Recording>>,
    back: Notify,
}

impl Retained {
    /// Wraps `body`, keeping up to `limit` bytes of it for replays, and
    /// returns it with the body for the first attempt; gives the body back
    /// when it cannot be replayed at all (larger than `limit`).
    pub fn new(body: Body, limit: u64) -> Result<(Retained, Body), Body> {
        match body {
            Body::Empty => Ok((Retained::Bytes(Bytes::new()), Body::Empty)),
            // Already in memory whatever its size: a copy costs nothing.
            Body::Full(bytes) => Ok((Retained::Bytes(bytes.clone()), Body::Full(bytes))),
            body if body.exact_len().is_some_and(|n| n > limit) => Err(body),
            source => {
                let recording = Recording {
                    source,
                    data: BytesMut::new(),
                    trailers: None,
                    limit,
                    overflowed: false,
                    ended: false,
                    broken: false,
                };
                // The first attempt holds the recording from the start.
                let home = Arc::new(Home { slot: Mutex::new(None), back: Notify::new() });
                let first = Body::Replayed(Box::new(Replayed::new(recording, home.clone())));
                Ok((Retained::Recorded(home), first))
            }
        }
    }

    /// Whether a later attempt may still get the body (as far as is known
    /// now: an attempt holding it may yet outgrow the limit).
    pub fn can_replay(&self) -> bool {
        match self {
            Retained::Bytes(_) => true,
            Retained::Recorded(home) => home.lock().as_ref().is_none_or(|r| !r.overflowed),
        }
    }

    /// The body for the next attempt, or `None` when it can no longer be
    /// replayed: it outgrew the limit, or the last attempt did not let go of
    /// it in time.
    pub async fn body(&self) -> Option<Body> {
        match self {
            Retained::Bytes(bytes) if bytes.is_empty() => Some(Body::Empty),
            Retained::Bytes(bytes) => Some(Body::Full(bytes.clone())),
            Retained::Recorded(home) => {
                let recording = tokio::time::timeout(HANDOVER, home.take()).await.ok()?;
                if recording.overflowed {
                    home.put(recording);
                    return None;
                }
                Some(Body::Replayed(Box::new(Replayed::new(recording, home.clone()))))
            }
        }
    }
}

impl Home {
    /// Waits until no attempt holds the recording, and takes it.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is taken until it returns.
    async fn take(&self) -> Recording {
        loop {
            let back = self.back.notified();
            if let Some(recording) = self.lock().take() {
                return recording;
            }
            back.await;
        }
    }

    fn put(&self, recording: Recording) {
        *self.lock() = Some(recording);
        self.back.notify_one();
    }

    // A std mutex: held to move the recording in or out, never across an await.
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Recording>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One attempt's view of a recorded body: the recorded frames first, then the
/// source, recording as it goes. Dropping it hands the recording back.
#[derive(Debug)]
pub struct Replayed {
    recording: Option<Recording>,
    /// The copy of what earlier attempts took has been handed out.
    copied: bool,
    /// This attempt has had the trailers (and so the end).
    finished: bool,
    home: Arc<Home>,
}

impl Replayed {
    fn new(recording: Recording, home: Arc<Home>) -> Self {
        Replayed { recording: Some(recording), copied: false, finished: false, home }
    }

    pub fn exact_len(&self) -> Option<u64> {
        self.recording.as_ref().and_then(|r| r.source.exact_len())
    }

    /// # Cancel safety
    /// As cancel safe as the source's `next_frame`.
    pub async fn next_frame(&mut self) -> Option<Result<Frame, BodyError>> {
        let recording = self.recording.as_mut()?;
        if recording.broken {
            return Some(Err(BodyError::Incomplete));
        }
        if !std::mem::replace(&mut self.copied, true) && !recording.data.is_empty() {
            return Some(Ok(Frame::Data(Bytes::copy_from_slice(&recording.data))));
        }
        if recording.ended {
            if std::mem::replace(&mut self.finished, true) {
                return None;
            }
            return recording.trailers.clone().map(|t| Ok(Frame::Trailers(t)));
        }
        let frame = recording.source.next_frame().await;
        match &frame {
            None => recording.ended = true,
            Some(Ok(Frame::Data(data))) => recording.record(data),
            Some(Ok(Frame::Trailers(trailers))) => {
                // Trailers end a body: what follows from the source is its end.
                recording.ended = true;
                self.finished = true;
                if !recording.overflowed {
                    recording.trailers = Some(trailers.clone());
                }
            }
            Some(Err(_)) => recording.broken = true,
        }
        frame
    }
}

impl Recording {
    fn record(&mut self, data: &Bytes) {
        if self.overflowed {
            return;
        }
        if (self.data.len() + data.len()) as u64 > self.limit {
            self.overflowed = true;
            self.data = BytesMut::new();
        } else {
            self.data.extend_from_slice(data);
        }
    }
}

impl Drop for Replayed {
    fn drop(&mut self) {
        if let Some(recording) = self.recording.take() {
            self.home.put(recording);
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    async fn drain(mut body: Body, take: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..take {
            match body.next_frame().await {
                Some(Ok(Frame::Data(data))) => out.extend_from_slice(&data),
                _ => break,
            }
        }
        out
    }

    fn channel() -> (crate::body::FrameSender, Body) {
        Body::channel(8, None)
    }

    #[tokio::test]
    async fn a_later_attempt_replays_then_reads_on() {
        let (tx, body) = channel();
        let (replay, first) = Retained::new(body, 100).unwrap();
        tx.send(Ok(Some(Frame::Data(Bytes::from_static(b"ab"))))).await.unwrap();
        tx.send(Ok(Some(Frame::Data(Bytes::from_static(b"cd"))))).await.unwrap();
        // The first attempt takes one frame and fails.
        assert_eq!(drain(first, 1).await, b"ab");
        // The second replays it, takes the one waiting, then the rest as it comes.
        let second = replay.body().await.unwrap();
        let Retained::Recorded(home) = &replay else { panic!("recorded") };
        assert!(home.lock().is_none(), "one attempt at a time");
        tx.send(Ok(Some(Frame::Data(Bytes::from_static(b"ef"))))).await.unwrap();
        tx.send(Ok(None)).await.unwrap();
        assert_eq!(drain(second, 10).await, b"abcdef");
        assert_eq!(drain(replay.body().await.unwrap(), 10).await, b"abcdef", "a third gets it all from the copy");
    }

    #[tokio::test]
    async fn a_broken_body_stays_broken_and_trailers_are_replayed() {
        let (tx, body) = channel();
        let (replay, mut first) = Retained::new(body, 100).unwrap();
        tx.send(Ok(Some(Frame::Data(Bytes::from_static(b"ab"))))).await.unwrap();
        tx.send(Err(BodyError::Incomplete)).await.unwrap();
        assert!(matches!(first.next_frame().await, Some(Ok(Frame::Data(_)))));
        assert!(matches!(first.next_frame().await, Some(Err(_))));
        drop(first);
        let mut second = replay.body().await.unwrap();
        assert!(matches!(second.next_frame().await, Some(Err(_))), "never a clean end after a break");

        let (tx, body) = channel();
        let (replay, first) = Retained::new(body, 100).unwrap();
        tx.send(Ok(Some(Frame::Data(Bytes::from_static(b"ab"))))).await.unwrap();
        tx.send(Ok(Some(Frame::Trailers(HeaderMap::new())))).await.unwrap();
        tx.send(Ok(None)).await.unwrap();
        assert_eq!(drain(first, 10).await, b"ab");
        let mut again = replay.body().await.unwrap();
        assert!(matches!(again.next_frame().await, Some(Ok(Frame::Data(_)))));
        assert!(matches!(again.next_frame().await, Some(Ok(Frame::Trailers(_)))));
        assert!(again.next_frame().await.is_none());
        drop(again);
        let mut third = replay.body().await.unwrap();
        assert!(matches!(third.next_frame().await, Some(Ok(Frame::Data(_)))));
        assert!(matches!(third.next_frame().await, Some(Ok(Frame::Trailers(_)))), "every replay has them");
        assert!(third.next_frame().await.is_none());
    }

    #[tokio::test]
    async fn a_channel_whose_sender_leaves_early_is_cut_not_complete() {
        let (tx, mut body) = channel();
        tx.send(Ok(Some(Frame::Data(Bytes::from_static(b"ab"))))).await.unwrap();
        drop(tx);
        assert!(matches!(body.next_frame().await, Some(Ok(Frame::Data(_)))));
        assert!(matches!(body.next_frame().await, Some(Err(BodyError::Incomplete))));
        assert!(body.next_frame().await.is_none());
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_not_replayed() {
        let (tx, body) = channel();
        let (replay, first) = Retained::new(body, 3).unwrap();
        tx.send(Ok(Some(Frame::Data(Bytes::from_static(b"abcd"))))).await.unwrap();
        tx.send(Ok(None)).await.unwrap();
        assert_eq!(drain(first, 10).await, b"abcd", "the first attempt streams it all");
        assert!(replay.body().await.is_none());
        assert!(Retained::new(Body::channel(1, Some(4)).1, 3).is_err());
        assert!(matches!(Retained::new(Body::Full(Bytes::from_static(b"abcd")), 3), Ok((Retained::Bytes(_), _))));
    }
}
