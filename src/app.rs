//! The two commands: `check` validates and describes a configuration; `start`
//! builds the snapshot, binds listeners, starts the background tasks and runs
//! the signal loop, then drains.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::{self, Config};
use crate::lifecycle::{self, Control, Exit, PidFile};
use crate::provider::HealthRegistry;
use crate::reload;
use crate::server::sockets::Sockets;
use crate::server::workers::{self, Workers};
use crate::server::Drain;
use crate::state::{App, Snapshot};
use crate::upgrade::Handover;

/// Loads, validates and builds; on failure prints every problem to stderr.
fn load(path: &Path) -> Option<(Snapshot, HealthRegistry)> {
    let config = match config::load_file(path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{}: configuration is invalid:\n{errors}", path.display());
            return None;
        }
    };
    for advice in &config.deprecations {
        eprintln!("{}: warning: {advice}", path.display());
    }
    let health = HealthRegistry::default();
    match Snapshot::build(config, &health) {
        Ok(snapshot) => Some((snapshot, health)),
        Err(errors) => {
            eprintln!("{}: configuration is invalid:\n{}", path.display(), errors.join("\n"));
            None
        }
    }
}

pub fn check(path: &Path) -> ExitCode {
    match load(path) {
        Some((snapshot, _)) => {
            print!("{}", describe(&snapshot.config));
            println!("{}: configuration is valid", path.display());
            ExitCode::SUCCESS
        }
        None => ExitCode::FAILURE,
    }
}

/// What a configuration sets up, for `check` and the start-up log.
pub fn describe(config: &Config) -> String {
    let mut out = String::from("listeners:\n");
    if let Some(addr) = config.http {
        let _ = writeln!(out, "  http   {addr}");
    }
    if let Some(https) = &config.https {
        let _ = writeln!(out, "  https  {} (cert {})", https.addr, https.cert_file.display());
    }
    let _ = writeln!(out, "routes:");
    for p in &config.providers {
        let route = p.route();
        let scheme = if p.tls { "https" } else { "http" };
        let _ = writeln!(
            out,
            "  {route} -> [{}] {} {scheme}://{}:{} weight={} priority={}{} keys={}",
            p.index,
            p.kind.as_str(),
            p.endpoint,
            p.port,
            p.weight,
            p.priority,
            if p.is_fallback { " fallback" } else { "" },
            p.api_keys.len()
        );
    }
    let _ = writeln!(out, "client keys: {} global", config.auth_keys.len());
    out
}

/// Serves until SIGTERM/SIGINT, or until a hot upgrade's new process took
/// over, then drains. `handover` holds what a predecessor passed on.
pub async fn start(path: &Path, pid_file: Option<&Path>, mut handover: Handover) -> ExitCode {
    let Some((snapshot, health)) = load(path) else {
        return ExitCode::FAILURE;
    };
    let wanted = reload::listeners(&snapshot.config);
    crate::metrics::metrics().config_loaded(&snapshot.config.source_hash);
    crate::telemetry::set_json(snapshot.config.log_json);
    // Before anything can announce the process (listeners, pid file, log).
    let signals = match lifecycle::Signals::install() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let threads = snapshot.config.workers.unwrap_or_else(workers::count);
    let app = Arc::new(App::new(snapshot, health));
    let drain = Drain::new();
    let workers = match Workers::start(threads, &app, &drain.handle()) {
        Ok(workers) => workers,
        Err(why) => {
            eprintln!("{why}");
            return ExitCode::FAILURE;
        }
    };
    // Everything that can fail comes before the first accept: a hot upgrade
    // that fails here has taken no client from the process it would replace.
    let bound = Sockets::bind(&wanted, workers.count(), &mut handover.sockets);
    for (addr, ..) in handover.sockets.drain(..) {
        tracing::info!(%addr, "closing an inherited listener the config no longer has");
    }
    let ready = bound.and_then(|sockets| Ok((sockets, pid_file.map(PidFile::write).transpose()?)));
    let (mut sockets, pid) = match ready {
        Ok(ready) => ready,
        Err(why) => {
            eprintln!("{why}");
            workers.stop();
            return ExitCode::FAILURE;
        }
    };
    if let Err(why) = sockets.serve(&workers).await {
        // Some workers may have taken clients already: let them finish.
        tracing::error!("cannot serve the listeners: {why}");
        drop(sockets);
        drain_and_stop(drain, workers, &app).await;
        return ExitCode::FAILURE;
    }
    // systemd first: it must follow this process before the old one exits.
    lifecycle::notify_systemd(&format!("MAINPID={}\nREADY=1", std::process::id()));
    handover.report_ready();
    // Health checks run on this (control) thread with pools of their own.
    let health_task = tokio::spawn(crate::health::run(app.clone()));
    let sweeper = tokio::spawn(workers::sweep(app.pools.clone()));
    tracing::info!("openproxy {} started", env!("CARGO_PKG_VERSION"));
    let control =
        Control { app: &app, config_path: path, sockets: &mut sockets, workers: &workers, pid_file: pid.as_ref() };
    if signals.run(control).await == Exit::Stop {
        lifecycle::notify_systemd("STOPPING=1");
    }
    // Our copies of the listening sockets close (a successor keeps its own),
    // and with them the address locks: a new process may bind now.
    drop(sockets);
    health_task.abort();
    sweeper.abort();
    drain_and_stop(drain, workers, &app).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Stops accepting, gives what is in flight `graceful_shutdown_timeout`
/// (streams whose client left still being read for their token usage
/// included), then ends the workers.
async fn drain_and_stop(drain: Drain, workers: Workers, app: &App) {
    let grace = app.snapshot.load().limits.graceful_shutdown_timeout;
    let in_flight = async {
        drain.wait().await;
        crate::body::lingering_done().await;
    };
    if tokio::time::timeout(grace, in_flight).await.is_err() {
        tracing::warn!(seconds = grace.as_secs(), "graceful shutdown timed out; closing remaining connections");
    }
    workers.stop();
}
