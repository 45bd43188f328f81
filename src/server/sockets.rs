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
    /// new ones up to one per worker), or a new group (`beside_ours`: see
    /// [`listener::bind_beside_ours`]).
    fn open(
        addr: SocketAddr,
        scheme: Scheme,
        workers: usize,
        inherited: &mut Inherited,
        beside_ours: bool,
    ) -> Result<Listening, String> {
        let why = |e: std::io::Error| format!("cannot listen on {addr}: {e}");
        let (ours, rest): (Inherited, Inherited) = std::mem::take(inherited).into_iter().partition(|i| i.0 == addr);
        *inherited = rest;
        let mut sockets: Vec<std::net::TcpListener> = ours.into_iter().map(|(_, _, socket)| socket).collect();
        let (sockets, lock) = if !sockets.is_empty() {
            let local = sockets[0].local_addr().map_err(why)?;
            while sockets.len() < workers {
                sockets.push(listener::join(local).map_err(why)?);
            }
            (sockets, None)
        } else {
            let bind = if beside_ours { listener::bind_beside_ours } else { listener::bind };
            let (sockets, lock) = bind(addr, workers).map_err(why)?;
            (sockets, Some(lock))
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
    /// Binds (or adopts) the listeners `wanted`; nothing accepts on them
    /// until [`Sockets::serve`], so whatever else start-up must do can still
    /// fail without a client having been taken in.
    pub fn bind(wanted: &[(SocketAddr, Scheme)], workers: usize, inherited: &mut Inherited) -> Result<Sockets, String> {
        let open = wanted
            .iter()
            .map(|&(addr, scheme)| Listening::open(addr, scheme, workers, inherited, false))
            .collect::<Result<_, _>>()?;
        Ok(Sockets { open })
    }

    /// Has the workers accept on every listener.
    pub async fn serve(&self, workers: &Workers) -> Result<(), String> {
        for listening in &self.open {
            workers.listen(&listening.sockets, listening.scheme, &listening.stop).await?;
        }
        Ok(())
    }

    /// Makes the listeners those `wanted`, leaving unchanged ones (and every
    /// established connection) alone. New addresses are bound first, so a
    /// bind that fails changes nothing; `commit` runs once they are, before
    /// any accept loop changes. Returns what changed, in words; an error
    /// after the commit (a worker gone) still leaves every other change made.
    pub async fn change(
        &mut self,
        wanted: &[(SocketAddr, Scheme)],
        workers: &Workers,
        commit: impl FnOnce(),
    ) -> Result<Vec<String>, String> {
        let gone = |addr: &SocketAddr| !wanted.iter().any(|(a, _)| a == addr);
        let mut added = Vec::new();
        for &(addr, scheme) in wanted.iter().filter(|(a, _)| !self.open.iter().any(|l| l.addr == *a)) {
            let beside_ours = self.open.iter().any(|l| gone(&l.addr) && l.addr.port() == addr.port());
            added.push(Listening::open(addr, scheme, workers.count(), &mut Vec::new(), beside_ours)?);
        }
        commit();
        let (mut changes, mut failed) = (Vec::new(), Vec::new());
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
                added.push(listening);
                continue;
            }
            self.open.push(listening);
        }
        for listening in added {
            // A socket nobody accepts on would strand its clients: one that
            // cannot be served is closed instead.
            match workers.listen(&listening.sockets, listening.scheme, &listening.stop).await {
                Ok(()) => {
                    changes.push(format!("serving {:?} on {}", listening.scheme, listening.addr));
                    self.open.push(listening);
                }
                Err(why) => failed.push(format!("{}: {why}", listening.addr)),
            }
        }
        match failed.is_empty() {
            true => Ok(changes),
            false => Err(failed.join("; ")),
        }
    }

    /// Every socket, for a successor to inherit: descriptor, configured
    /// address, scheme.
    pub fn handover(&self) -> Vec<(RawFd, SocketAddr, Scheme)> {
        let each = |l: &Listening| l.sockets.iter().map(|s| (s.as_raw_fd(), l.addr, l.scheme)).collect::<Vec<_>>();
        self.open.iter().flat_map(each).collect()
    }
}
