//! Keeping a request body so a failed attempt can be sent again without
//! holding the upload back: the first attempt streams the body as it arrives
//! while a copy is recorded (up to a limit); a later attempt replays the copy
//! and then goes on reading the rest from the client. A body that outgrows
//! the limit frees its copy and can no longer be replayed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use super::{Body, BodyError, Frame};

/// How long a retry waits for the previous attempt to let go of the body
/// (an HTTP/2 upload task ends shortly after its stream is reset).
const HANDOVER: Duration = Duration::from_secs(5);

/// The source of a body and what has been taken from it so far.
#[derive(Debug)]
pub struct Recording {
    source: Body,
    frames: Vec<Frame>,
    size: u64,
    limit: u64,
    /// The copy outgrew `limit` and was dropped.
    overflowed: bool,
    /// Taken frames handed out to the current attempt.
    ended: bool,
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
    /// Wraps `body`, keeping up to `limit` bytes of it for replays; gives the
    /// body back when it cannot be replayed at all (larger than `limit`).
    pub fn new(body: Body, limit: u64) -> Result<Retained, Body> {
        match body {
            Body::Empty => Ok(Retained::Bytes(Bytes::new())),
            Body::Full(bytes) if bytes.len() as u64 <= limit => Ok(Retained::Bytes(bytes)),
            body if body.exact_len().is_some_and(|n| n > limit) || matches!(body, Body::Full(_)) => Err(body),
            source => {
                let recording =
                    Recording { source, frames: Vec::new(), size: 0, limit, overflowed: false, ended: false };
                let home = Home { slot: Mutex::new(Some(recording)), back: Notify::new() };
                Ok(Retained::Recorded(Arc::new(home)))
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
                Some(Body::Replayed(Box::new(Replayed { recording: Some(recording), next: 0, home: home.clone() })))
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
    /// The next recorded frame to hand out.
    next: usize,
    home: Arc<Home>,
}

impl Replayed {
    pub fn exact_len(&self) -> Option<u64> {
        self.recording.as_ref().and_then(|r| r.source.exact_len())
    }

    /// # Cancel safety
    /// As cancel safe as the source's `next_frame`.
    pub async fn next_frame(&mut self) -> Option<Result<Frame, BodyError>> {
        let recording = self.recording.as_mut()?;
        if let Some(frame) = recording.frames.get(self.next) {
            self.next += 1;
            return Some(Ok(frame.clone()));
        }
        if recording.ended {
            return None;
        }
        let frame = recording.source.next_frame().await;
        match &frame {
            None => recording.ended = true,
            Some(Ok(frame)) if !recording.overflowed => {
                let size = match frame {
                    Frame::Data(data) => data.len() as u64,
                    Frame::Trailers(_) => 0,
                };
                recording.size += size;
                if recording.size > recording.limit {
                    recording.overflowed = true;
                    recording.frames = Vec::new();
                } else {
                    recording.frames.push(frame.clone());
                    self.next += 1;
                }
            }
            Some(_) => {}
        }
        frame
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
    use tokio::sync::mpsc;

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

    fn channel() -> (mpsc::Sender<Result<Frame, BodyError>>, Body) {
        let (tx, rx) = mpsc::channel(8);
        (tx, Body::Channel { rx, len: None })
    }

    #[tokio::test]
    async fn a_later_attempt_replays_then_reads_on() {
        let (tx, body) = channel();
        let replay = Retained::new(body, 100).unwrap();
        tx.send(Ok(Frame::Data(Bytes::from_static(b"ab")))).await.unwrap();
        tx.send(Ok(Frame::Data(Bytes::from_static(b"cd")))).await.unwrap();
        // The first attempt takes one frame and fails.
        assert_eq!(drain(replay.body().await.unwrap(), 1).await, b"ab");
        // The second replays it, takes the one waiting, then the rest as it comes.
        let second = replay.body().await.unwrap();
        let Retained::Recorded(home) = &replay else { panic!("recorded") };
        assert!(home.lock().is_none(), "one attempt at a time");
        tx.send(Ok(Frame::Data(Bytes::from_static(b"ef")))).await.unwrap();
        drop(tx);
        assert_eq!(drain(second, 10).await, b"abcdef");
        assert_eq!(drain(replay.body().await.unwrap(), 10).await, b"abcdef", "a third gets it all from the copy");
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_not_replayed() {
        let (tx, body) = channel();
        let replay = Retained::new(body, 3).unwrap();
        tx.send(Ok(Frame::Data(Bytes::from_static(b"abcd")))).await.unwrap();
        drop(tx);
        assert_eq!(drain(replay.body().await.unwrap(), 10).await, b"abcd", "the first attempt streams it all");
        assert!(replay.body().await.is_none());
        assert!(Retained::new(Body::Channel { rx: mpsc::channel(1).1, len: Some(4) }, 3).is_err());
        assert!(matches!(Retained::new(Body::Full(Bytes::from_static(b"abcd")), 3), Err(Body::Full(_))));
    }
}
