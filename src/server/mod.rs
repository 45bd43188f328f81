//! Accepting clients: listeners, the shutdown signal every connection watches,
//! and the per-protocol connection drivers. A driver reads requests off its
//! protocol, hands each to the neutral `proxy` handler and writes back what
//! it returns; nothing about routes, keys or upstreams is decided here.

mod admin;
pub mod gate;
pub mod h1;
mod h1_write;
pub mod h2;
mod h2_tunnel;
mod halves;
pub mod listener;
pub mod sockets;
mod tunnel;
pub mod workers;

use tokio::sync::{mpsc, watch};

/// Tells connections to finish and lets the owner wait until they have.
/// Each connection holds a [`Shutdown`]; dropping the last one ends [`Drain::wait`].
#[derive(Debug, Clone)]
pub struct Shutdown {
    signal: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
}

impl Shutdown {
    pub fn is_signalled(&self) -> bool {
        *self.signal.borrow()
    }

    /// Resolves once shutdown has been signalled.
    ///
    /// # Cancel safety
    /// Cancel safe: it only watches a flag.
    pub async fn signalled(&mut self) {
        // An error means the sender is gone, which also means shut down.
        let _ = self.signal.wait_for(|stop| *stop).await;
    }
}

/// The owner's side of [`Shutdown`].
#[derive(Debug)]
pub struct Drain {
    signal: watch::Sender<bool>,
    alive_rx: mpsc::Receiver<()>,
    alive_tx: Option<mpsc::Sender<()>>,
}

impl Drain {
    pub fn new() -> Self {
        let (signal, _) = watch::channel(false);
        let (alive_tx, alive_rx) = mpsc::channel(1);
        Drain { signal, alive_rx, alive_tx: Some(alive_tx) }
    }

    pub fn handle(&self) -> Shutdown {
        let alive = self.alive_tx.clone().unwrap_or_else(|| mpsc::channel(1).0);
        Shutdown { signal: self.signal.subscribe(), _alive: alive }
    }

    /// Signals every holder and waits until all of them have been dropped.
    pub async fn wait(mut self) {
        let _ = self.signal.send(true);
        self.alive_tx = None;
        let _ = self.alive_rx.recv().await;
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests;
