//! Process lifecycle: the pid file, and the signal loop — SIGHUP reloads the
//! configuration (the old snapshot stays if the new one fails), SIGTERM and
//! SIGINT end the loop so the caller can drain.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::config;
use crate::state::{App, Snapshot};

/// Removes the pid file when dropped.
#[derive(Debug)]
pub struct PidFile(PathBuf);

impl PidFile {
    pub fn write(path: &Path) -> std::io::Result<PidFile> {
        std::fs::write(path, format!("{}\n", std::process::id()))?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Another process (a hot upgrade's successor) may own the file by now.
        let ours = std::fs::read_to_string(&self.0).is_ok_and(|s| s.trim() == std::process::id().to_string());
        if ours {
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

    /// Waits for signals until one asks the process to stop.
    pub async fn run(mut self, app: Arc<App>, config_path: PathBuf) {
        loop {
            tokio::select! {
                _ = self.hup.recv() => reload(&app, &config_path).await,
                _ = self.term.recv() => return tracing::info!("SIGTERM: shutting down gracefully"),
                _ = self.int.recv() => return tracing::info!("SIGINT: shutting down gracefully"),
                _ = self.usr2.recv() => tracing::warn!("SIGUSR2: hot upgrade is not available in this build; ignoring"),
            }
        }
    }
}

/// Loads, validates and builds the new configuration off the request path and
/// swaps it in only if every step succeeded.
pub async fn reload(app: &App, config_path: &Path) {
    let path = config_path.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || config::load_file(&path)).await;
    let config = match loaded {
        Ok(Ok(config)) => config,
        Ok(Err(errors)) => {
            tracing::error!("reload failed, keeping the running configuration:\n{errors}");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "reload failed, keeping the running configuration");
            return;
        }
    };
    for advice in &config.deprecations {
        tracing::warn!("{advice}");
    }
    let current = app.snapshot.load();
    if config.http != current.config.http
        || config.https.as_ref().map(|h| h.addr) != current.config.https.as_ref().map(|h| h.addr)
    {
        tracing::warn!("listener addresses changed; they take effect only after a restart");
    }
    if config.workers != current.config.workers {
        tracing::warn!("workers changed; it takes effect only after a restart");
    }
    match Snapshot::build(config, &app.health) {
        Ok(snapshot) => {
            let routes = snapshot.providers.len();
            app.snapshot.store(Arc::new(snapshot));
            app.health.retain_used();
            tracing::info!(providers = routes, "configuration reloaded");
        }
        Err(errors) => tracing::error!("reload failed, keeping the running configuration:\n{}", errors.join("\n")),
    }
}
