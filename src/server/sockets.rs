//! The listening sockets the process holds, by configured address: bound at
//! start or inherited from the process this one replaces (hot upgrade),
//! changed by a reload, and handed on at the next upgrade. Workers accept on
//! duplicates, so a socket stays open here while accept loops come and go:
//! connections waiting in its backlog are never dropped by a change of who
//! accepts them.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use tokio::sync::watch;

use super::listener::{self, AddressLock, Scheme};
use super::workers::Workers;

/// Sockets a predecessor handed over: configured address, scheme, socket.
pub type Inherited = Vec<(SocketAddr, Scheme, std::net::TcpListener)>;

/// One configured listener: one SO_REUSEPORT group of sockets.
#[derive(Debug)]
struct Listening {
    addr: SocketAddr,
    scheme: Scheme,
    sockets: Vec<std::net::TcpListener>,
    /// Set to end this listener's accept loops (removed by a reload).
    stop: watch::Sender<bool>,
    /// `None` for inherited sockets: listening all along, they hold the address.
    _lock: Option<AddressLock>,
}

impl Listening {
    /// The predecessor's sockets for `addr` if it handed any over (joined by
    /// new ones up to one per worker), or a new group.
    fn open(addr: SocketAddr, scheme: Scheme, workers: usize, inherited: &mut Inherited) -> Result<Listening, String> {
        let why = |e: std::io::Error| format!("cannot listen on {addr}: {e}");
        let (ours, rest): (Inherited, Inherited) = std::mem::take(inherited).into_iter().partition(|i| i.0 == addr);
        *inherited = rest;
        let mut sockets: Vec<std::net::TcpListener> = ours.into_iter().map(|(_, _, socket)| socket).collect();
        let lock = None;
        let (sockets, lock) = if sockets.is_empty() {
            let (sockets, lock) = listener::bind(addr, workers).map_err(why)?;
            (sockets, Some(lock))
        } else {
            let local = sockets[0].local_addr().map_err(why)?;
            while sockets.len() < workers {
                sockets.push(listener::join(local).map_err(why)?);
            }
            (sockets, lock)
        };
        if let Some(local) = sockets.first().and_then(|s| s.local_addr().ok()) {
            tracing::info!(addr = %local, ?scheme, workers, inherited = lock.is_none(), "listening");
        }
        Ok(Listening { addr, scheme, sockets, stop: watch::channel(false).0, _lock: lock })
    }
}

/// Every listener of the process.
#[derive(Debug, Default)]
pub struct Sockets {
    open: Vec<Listening>,
}

impl Sockets {
    /// Opens the listeners `wanted` and has the workers accept on them.
    pub async fn open(
        wanted: &[(SocketAddr, Scheme)],
        workers: &Workers,
        inherited: &mut Inherited,
    ) -> Result<Sockets, String> {
        let mut sockets = Sockets::default();
        sockets.change(wanted, workers, inherited, || {}).await?;
        Ok(sockets)
    }

    /// Makes the listeners those `wanted`, leaving unchanged ones (and every
    /// established connection) alone. New addresses are bound before
    /// anything else changes, so a bind that fails changes nothing — except
    /// for an address that overlaps one being removed (the same port, another
    /// bind address), which can only be bound once that one is closed.
    /// `commit` runs once the new addresses are bound, before any accept
    /// loop changes. Returns what changed, in words.
    pub async fn change(
        &mut self,
        wanted: &[(SocketAddr, Scheme)],
        workers: &Workers,
        inherited: &mut Inherited,
        commit: impl FnOnce(),
    ) -> Result<Vec<String>, String> {
        let gone = |addr: &SocketAddr| !wanted.iter().any(|(a, _)| a == addr);
        let mut added = Vec::new();
        let mut deferred = Vec::new();
        for &(addr, scheme) in wanted.iter().filter(|(a, _)| !self.open.iter().any(|l| l.addr == *a)) {
            match Listening::open(addr, scheme, workers.count(), inherited) {
                Ok(listening) => added.push(listening),
                Err(_) if self.open.iter().any(|l| gone(&l.addr) && l.addr.port() == addr.port()) => {
                    deferred.push((addr, scheme));
                }
                Err(why) => return Err(why),
            }
        }
        commit();
        let mut changes = Vec::new();
        for mut listening in std::mem::take(&mut self.open) {
            let Some(&(_, scheme)) = wanted.iter().find(|(a, _)| *a == listening.addr) else {
                let _ = listening.stop.send(true);
                changes.push(format!("removed {:?} listener {}", listening.scheme, listening.addr));
                continue; // dropped: closed
            };
            if scheme != listening.scheme {
                // The same sockets, accepted on by loops of the other scheme.
                let _ = listening.stop.send(true);
                listening.stop = watch::channel(false).0;
                listening.scheme = scheme;
                workers.listen(&listening.sockets, scheme, &listening.stop).await?;
                changes.push(format!("{} now serves {scheme:?}", listening.addr));
            }
            self.open.push(listening);
        }
        for (addr, scheme) in deferred {
            added.push(Listening::open(addr, scheme, workers.count(), inherited)?);
        }
        for listening in added {
            workers.listen(&listening.sockets, listening.scheme, &listening.stop).await?;
            changes.push(format!("added {:?} listener {}", listening.scheme, listening.addr));
            self.open.push(listening);
        }
        Ok(changes)
    }

    /// Every socket, for a successor to inherit: descriptor, configured
    /// address, scheme.
    pub fn handover(&self) -> Vec<(RawFd, SocketAddr, Scheme)> {
        let each = |l: &Listening| l.sockets.iter().map(|s| (s.as_raw_fd(), l.addr, l.scheme)).collect::<Vec<_>>();
        self.open.iter().flat_map(each).collect()
    }

    /// The addresses actually bound (port 0 resolved), for tests and logs.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.open.iter().filter_map(|l| l.sockets.first()?.local_addr().ok()).collect()
    }
}
