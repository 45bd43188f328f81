//! `max_connections`: client connections served at once across the proxy
//! listeners (admin connections not counted). An accept loop takes a place
//! for each connection it accepted before serving it; at the limit it waits
//! with that one connection and accepts no more — new clients wait in the
//! kernel's backlog, connections already open are not touched — until a
//! connection ends and gives its place back. One count for the process, so
//! the limit holds whatever worker a connection lands on. (Taking the place
//! before accepting would let idle loops hold places: with more loops than
//! places, a client hashed to another loop's socket would wait forever.)

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

static OPEN: AtomicUsize = AtomicUsize::new(0);
/// Woken when a place frees up (or the limit may have grown).
static ROOM: Notify = Notify::const_new();

/// A place for one client connection, given back when dropped.
#[derive(Debug)]
pub struct Place(());

impl Drop for Place {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::AcqRel);
        ROOM.notify_one();
    }
}

/// A place, once there is one under `limit()` (read again at each wake-up,
/// so a reload that changes it takes effect).
///
/// # Cancel safety
/// Cancel safe: a place is taken only in the step that returns it.
pub async fn place(limit: impl Fn() -> usize) -> Place {
    if let Some(place) = try_place(limit()) {
        return place;
    }
    loop {
        let wake = ROOM.notified();
        tokio::pin!(wake);
        // Registered before the check, so a place freed in between still wakes us.
        wake.as_mut().enable();
        if let Some(place) = try_place(limit()) {
            return place;
        }
        wake.await;
    }
}

fn try_place(limit: usize) -> Option<Place> {
    let mut open = OPEN.load(Ordering::Acquire);
    while open < limit {
        match OPEN.compare_exchange_weak(open, open + 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(Place(())),
            Err(now) => open = now,
        }
    }
    None
}

/// Wakes every waiting accept loop to read the limit again (after a reload).
pub fn limit_changed() {
    ROOM.notify_waiters();
}
