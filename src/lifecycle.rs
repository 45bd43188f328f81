//! Process lifecycle: the pid file, systemd notifications, and the signal
//! loop — SIGHUP reloads (`reload`), SIGUSR2 starts a hot upgrade
//! (`upgrade`), SIGTERM and SIGINT end the loop so the caller can drain.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::reload::reload;
use crate::server::sockets::Sockets;
use crate::server::workers::Workers;
use crate::state::App;
use crate::upgrade;

/// Removes the pid file when dropped.
#[derive(Debug)]
pub struct PidFile(PathBuf);

impl PidFile {
    /// Writes this process's pid; the error names the path.
    pub fn write(path: &Path) -> Result<PidFile, String> {
        let pid_file = PidFile(path.to_path_buf());
        pid_file.rewrite()?;
        Ok(pid_file)
    }

    /// Names this process again (after an upgrade that failed late).
    fn rewrite(&self) -> Result<(), String> {
        // Written aside and renamed into place: a reader (systemd, a script,
        // the process this one replaces) never sees it empty or half written.
        let mut aside = self.0.clone().into_os_string();
        aside.push(format!(".{}.tmp", std::process::id()));
        let written =
            std::fs::write(&aside, format!("{}\n", std::process::id())).and_then(|()| std::fs::rename(&aside, &self.0));
        written.map_err(|e| {
            let _ = std::fs::remove_file(&aside);
            format!("cannot write pid file {}: {e}", self.0.display())
        })
    }
}

impl Drop for PidFile {
    /// Removes the file if it names this process, or one that is gone (a
    /// successor stopped during an upgrade); a live successor keeps its file.
    fn drop(&mut self) {
        let named = std::fs::read_to_string(&self.0).ok().and_then(|s| s.trim().parse::<i32>().ok());
        let stale = match named {
            Some(pid) if pid == std::process::id() as i32 => true,
            Some(pid) => nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) == Err(nix::errno::Errno::ESRCH),
            None => false,
        };
        if stale {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// The signals the process answers, caught from the moment this exists: a
/// signal that arrives before the loop runs waits for it instead of taking
/// its default action (SIGHUP would end the process).
pub struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
    usr2: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    /// Waits for signals until one asks the process to stop, or a hot
    /// upgrade's new process is ready: either way, the caller drains.
    pub async fn run(mut self, ctl: Control<'_>) -> Exit {
        let Control { app, config_path, sockets, workers, pid_file } = ctl;
        let mut upgrading: Option<Upgrading> = None;
        loop {
            tokio::select! {
                // A new process that is ready wins over a signal that came with it.
                biased;
                result = finished(&mut upgrading) => {
                    upgrading = None;
                    match result {
                        Ok(pid) => {
                            tracing::info!(pid, "hot upgrade: the new process is serving; this one stops accepting and drains");
                            return Exit::Upgraded;
                        }
                        Err(why) => {
                            tracing::error!("hot upgrade failed, this process keeps serving: {why}");
                            // The new process may have written the pid file before it failed.
                            if let Some(Err(e)) = pid_file.map(PidFile::rewrite) {
                                tracing::error!("{e}");
                            }
                        }
                    }
                }
                _ = self.hup.recv() => {
                    if upgrading.is_some() {
                        // The new process reads the config itself; a listener
                        // this one added now would not be handed over.
                        tracing::warn!("SIGHUP during a hot upgrade: ignored; send it again once the upgrade is done");
                    } else {
                        reload(app, config_path, sockets, workers).await;
                    }
                }
                _ = self.term.recv() => {
                    tracing::info!("SIGTERM: shutting down gracefully");
                    return Exit::Stop;
                }
                _ = self.int.recv() => {
                    tracing::info!("SIGINT: shutting down gracefully");
                    return Exit::Stop;
                }
                _ = self.usr2.recv() => {
                    if upgrading.is_some() {
                        tracing::warn!("SIGUSR2: a hot upgrade is already under way; ignoring this one");
                        continue;
                    }
                    match upgrade::spawn(&sockets.handover()) {
                        Ok(successor) => upgrading = Some(Box::pin(successor.wait_ready())),
                        Err(why) => tracing::error!("hot upgrade failed, this process keeps serving: {why}"),
                    }
                }
            }
        }
    }
}

/// Why the signal loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// SIGTERM or SIGINT.
    Stop,
    /// A new process took over the listeners.
    Upgraded,
}

/// What the signal loop acts on.
pub struct Control<'a> {
    pub app: &'a Arc<App>,
    pub config_path: &'a Path,
    pub sockets: &'a mut Sockets,
    pub workers: &'a Workers,
    pub pid_file: Option<&'a PidFile>,
}

/// A hot upgrade under way: the new process's pid once it is ready.
type Upgrading = Pin<Box<dyn Future<Output = Result<u32, String>>>>;

/// The upgrade's outcome, once there is one (never, when none is under way).
async fn finished(upgrading: &mut Option<Upgrading>) -> Result<u32, String> {
    match upgrading {
        Some(upgrade) => upgrade.await,
        None => std::future::pending().await,
    }
}

/// Tells systemd (`Type=notify`) how the service is doing, when it asked
/// (`NOTIFY_SOCKET`); `MAINPID` lets it follow a hot upgrade's new process
/// (which needs `NotifyAccess=all`). Best effort: a failure is only logged.
pub fn notify_systemd(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(Path::new(&path)),
    };
    let sent = addr.and_then(|addr| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr));
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
