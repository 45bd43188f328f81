//! Process lifecycle: the pid file, and the signal loop — SIGHUP reloads the
//! configuration (the old snapshot stays if the new one fails), SIGTERM and
//! SIGINT end the loop so the caller can drain.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

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

/// Waits for signals until one asks the process to stop.
pub async fn signal_loop(app: Arc<App>, config_path: PathBuf) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    loop {
        tokio::select! {
            _ = hup.recv() => reload(&app, &config_path).await,
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down gracefully"); return Ok(()) }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down gracefully"); return Ok(()) }
            _ = usr2.recv() => tracing::warn!("SIGUSR2: hot upgrade is not available in this build; ignoring"),
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
    let current = app.snapshot.load();
    if config.http != current.config.http
        || config.https.as_ref().map(|h| h.addr) != current.config.https.as_ref().map(|h| h.addr)
    {
        tracing::warn!("listener addresses changed; they take effect only after a restart");
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
