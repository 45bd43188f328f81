//! Thread per core, as nginx runs worker processes: each worker thread has a
//! single-threaded runtime, its own listening socket per port (SO_REUSEPORT,
//! see [`listener::bind`]; handed over by `server::sockets`, also when a
//! reload adds a listener) and its own upstream pools. A client connection
//! and the upstream connections it uses live on one thread from accept to
//! close, so no request pays for a cross-thread wake-up or a contended lock.
//! What every worker reads (the config snapshot, health, key rest times) is
//! shared through `Arc`s and atomics.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::listener::{self, Scheme};
use super::Shutdown;
use crate::state::App;
use crate::upstream::Pools;

/// How often a worker closes its pooled upstream connections past their age.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Most workers chosen by default: past this, more threads mostly mean more
/// upstream connections (each worker has its own pools) and file descriptors.
const MAX_DEFAULT_WORKERS: usize = 32;

/// How many workers when the config does not say: one per core the process
/// may use (cgroup CPU limits included), at most [`MAX_DEFAULT_WORKERS`].
pub fn count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_DEFAULT_WORKERS)
}

/// The running workers.
#[derive(Debug)]
pub struct Workers {
    threads: Vec<JoinHandle<()>>,
    exit: watch::Sender<bool>,
    /// Each worker's inbox for listening sockets to accept on.
    inboxes: Vec<mpsc::UnboundedSender<Listen>>,
}

/// A listening socket handed to a worker, and the flag that stops its
/// accept loop (the listener was removed by a reload).
#[derive(Debug)]
struct Listen {
    socket: std::net::TcpListener,
    scheme: Scheme,
    stop: watch::Receiver<bool>,
    done: oneshot::Sender<Result<(), String>>,
}

impl Workers {
    /// Starts `count` worker threads, each accepting nothing until
    /// [`Workers::listen`] hands it sockets, and running connections until
    /// [`Workers::stop`].
    pub fn start(count: usize, app: &App, shutdown: &Shutdown) -> Result<Workers, String> {
        let (exit, _) = watch::channel(false);
        let mut workers = Workers { threads: Vec::with_capacity(count), exit, inboxes: Vec::with_capacity(count) };
        for index in 0..count.max(1) {
            let (app, shutdown, exit) = (Arc::new(app.for_worker()), shutdown.clone(), workers.exit.subscribe());
            let (inbox, rx) = mpsc::unbounded_channel();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let runtime = runtime.map_err(|e| format!("cannot start a worker's runtime: {e}"))?;
            let thread = std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || runtime.block_on(run(rx, app, shutdown, exit)));
            workers.threads.push(thread.map_err(|e| format!("cannot start a worker thread: {e}"))?);
            workers.inboxes.push(inbox);
        }
        Ok(workers)
    }

    pub fn count(&self) -> usize {
        self.inboxes.len()
    }

    /// Has the workers accept on `sockets` (one SO_REUSEPORT group; socket
    /// `i` goes to worker `i % count`) until `stop` is set or shutdown.
    /// Returns once every socket has a worker accepting on it: a socket of
    /// the group nobody accepts on would strand the clients the kernel gives it.
    pub async fn listen(
        &self,
        sockets: &[std::net::TcpListener],
        scheme: Scheme,
        stop: &watch::Sender<bool>,
    ) -> Result<(), String> {
        let mut waits = Vec::with_capacity(sockets.len());
        for (i, socket) in sockets.iter().enumerate() {
            // A duplicate: the caller keeps the socket (to hand over on a hot
            // upgrade), so a worker closing its copy never closes the socket.
            let socket = socket.try_clone().map_err(|e| format!("cannot share a listening socket: {e}"))?;
            let (done, wait) = oneshot::channel();
            let listen = Listen { socket, scheme, stop: stop.subscribe(), done };
            self.inboxes[i % self.inboxes.len()].send(listen).map_err(|_| "a worker has ended".to_string())?;
            waits.push(wait);
        }
        for wait in waits {
            wait.await.unwrap_or_else(|_| Err("a worker ended while starting to listen".into()))?;
        }
        Ok(())
    }

    /// Ends every worker: connections still open are closed. Call once the
    /// drain has finished or timed out.
    pub fn stop(self) {
        let _ = self.exit.send(true);
        for thread in self.threads {
            if thread.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    }
}

async fn run(
    mut inbox: mpsc::UnboundedReceiver<Listen>,
    app: Arc<App>,
    shutdown: Shutdown,
    mut exit: watch::Receiver<bool>,
) {
    // Held only until shutdown: then the drain waits for the accept loops and
    // connections alone.
    let mut shutdown = Some(shutdown);
    let sweeper = sweep(app.pools.clone());
    tokio::pin!(sweeper);
    loop {
        tokio::select! {
            _ = exit.wait_for(|stop| *stop) => return,
            _ = &mut sweeper => return,
            _ = signalled(&mut shutdown), if shutdown.is_some() => shutdown = None,
            listen = inbox.recv() => {
                let Some(listen) = listen else { return };
                let result = match (&shutdown, tokio::net::TcpListener::from_std(listen.socket)) {
                    (None, _) => Err("shutting down".to_string()),
                    (_, Err(e)) => Err(format!("a worker cannot use its listening socket: {e}")),
                    (Some(shutdown), Ok(listener)) => {
                        let serve = listener::serve(listener, listen.scheme, app.clone(), shutdown.clone(), listen.stop);
                        drop(tokio::spawn(serve));
                        Ok(())
                    }
                };
                let _ = listen.done.send(result);
            }
        }
    }
}

async fn signalled(shutdown: &mut Option<Shutdown>) {
    match shutdown {
        Some(shutdown) => shutdown.signalled().await,
        None => std::future::pending().await,
    }
}

/// Closes `pools`' idle connections past their age, forever.
pub async fn sweep(pools: Arc<Pools>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        pools.sweep();
    }
}
