//! Thread per core, as nginx runs worker processes: each worker thread has a
//! single-threaded runtime, its own listening socket per port (SO_REUSEPORT,
//! see [`listener::bind`]) and its own upstream pools. A client connection
//! and the upstream connections it uses live on one thread from accept to
//! close, so no request pays for a cross-thread wake-up or a contended lock.
//! What every worker reads (the config snapshot, health, key rest times) is
//! shared through `Arc`s and atomics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use super::listener::{self, AddressLock, Scheme};
use super::Shutdown;
use crate::state::App;
use crate::upstream::Pools;

/// How often a worker closes its pooled upstream connections past their age.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// One worker's listening sockets, one per port.
type Sockets = Vec<(std::net::TcpListener, Scheme)>;

/// Most workers chosen by default: past this, more threads mostly mean more
/// upstream connections (each worker has its own pools) and file descriptors.
const MAX_DEFAULT_WORKERS: usize = 32;

/// How many workers when the config does not say: one per core the process
/// may use (cgroup CPU limits included), at most [`MAX_DEFAULT_WORKERS`].
pub fn count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_DEFAULT_WORKERS)
}

/// Binds every address once per worker; the sockets have one entry per
/// worker, and the locks must be held while they accept. Errors name the address.
pub fn bind(addrs: &[(SocketAddr, Scheme)], workers: usize) -> Result<(Vec<Sockets>, Vec<AddressLock>), String> {
    let mut per_worker: Vec<Sockets> = (0..workers).map(|_| Vec::new()).collect();
    let mut locks = Vec::new();
    for &(addr, scheme) in addrs {
        let (group, lock) = listener::bind(addr, workers).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        locks.push(lock);
        if let Some(local) = group.first().and_then(|l| l.local_addr().ok()) {
            tracing::info!(addr = %local, ?scheme, workers, "listening");
        }
        for (socket, worker) in group.into_iter().zip(&mut per_worker) {
            worker.push((socket, scheme));
        }
    }
    Ok((per_worker, locks))
}

/// The running workers.
#[derive(Debug)]
pub struct Workers {
    threads: Vec<JoinHandle<()>>,
    exit: watch::Sender<bool>,
}

impl Workers {
    /// Starts one thread per entry of `sockets`. Each accepts until `shutdown`
    /// is signalled and keeps its connections running until [`Workers::stop`].
    /// Returns once every worker accepts on all its sockets: a socket of the
    /// group that nobody accepts on would strand the clients the kernel gives it.
    pub fn start(sockets: Vec<Sockets>, app: &App, shutdown: &Shutdown) -> Result<Workers, String> {
        let (exit, _) = watch::channel(false);
        let mut workers = Workers { threads: Vec::with_capacity(sockets.len()), exit };
        let (ready_tx, ready) = std::sync::mpsc::channel();
        for (index, sockets) in sockets.into_iter().enumerate() {
            let (app, shutdown, exit) = (Arc::new(app.for_worker()), shutdown.clone(), workers.exit.subscribe());
            let ready = ready_tx.clone();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let runtime = runtime.map_err(|e| format!("cannot start a worker's runtime: {e}"))?;
            let thread = std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || runtime.block_on(run(sockets, app, shutdown, exit, ready)));
            workers.threads.push(thread.map_err(|e| format!("cannot start a worker thread: {e}"))?);
        }
        drop(ready_tx);
        for _ in 0..workers.threads.len() {
            if let Err(why) = ready.recv().unwrap_or_else(|_| Err("a worker ended while starting".into())) {
                workers.stop();
                return Err(why);
            }
        }
        Ok(workers)
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
    sockets: Sockets,
    app: Arc<App>,
    shutdown: Shutdown,
    mut exit: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let mut listeners = Vec::with_capacity(sockets.len());
    for (socket, scheme) in sockets {
        match tokio::net::TcpListener::from_std(socket) {
            Ok(listener) => listeners.push((listener, scheme)),
            Err(e) => return drop(ready.send(Err(format!("a worker cannot use its listening socket: {e}")))),
        }
    }
    for (listener, scheme) in listeners {
        drop(tokio::spawn(listener::serve(listener, scheme, app.clone(), shutdown.clone())));
    }
    let _ = ready.send(Ok(()));
    drop(ready); // a worker that died later must not keep `start` waiting
                 // Only the accept loops and connections may keep the drain waiting.
    drop(shutdown);
    tokio::select! {
        _ = exit.wait_for(|stop| *stop) => {}
        _ = sweep(app.pools.clone()) => {}
    }
}

/// Closes `pools`' idle connections past their age, forever.
pub async fn sweep(pools: Arc<Pools>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        pools.sweep();
    }
}
