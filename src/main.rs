//! The `openproxy` binary: parse the command line, set up logging, and run
//! `check` or `start`. `start` runs signals, reloads and health checks on this
//! thread's runtime; requests are served by worker threads (`server::workers`).

use std::process::ExitCode;

use clap::Parser;
use openproxy::cli::{Cli, Command};

fn main() -> ExitCode {
    let code = run();
    // Log lines still waiting for the writer thread.
    openproxy::telemetry::flush();
    code
}

fn run() -> ExitCode {
    let cli = Cli::parse();
    // First, while this is the only thread: descriptors a predecessor handed over.
    let handover = match &cli.command {
        Command::Start { .. } => match openproxy::upgrade::Handover::take_from_env() {
            Ok(handover) => handover,
            Err(why) => {
                eprintln!("cannot take over from the previous process: {why}");
                return ExitCode::FAILURE;
            }
        },
        Command::Check { .. } => Default::default(),
    };
    openproxy::telemetry::init();
    match cli.command {
        Command::Check { config } => openproxy::app::check(&config),
        Command::Start { config, pid_file, enable_health_check } => {
            openproxy::upgrade::remember_own_path();
            if enable_health_check {
                openproxy::config::force_health_checks();
            }
            raise_open_file_limit();
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(openproxy::app::start(&config, pid_file.as_deref(), handover))
        }
    }
}

/// A proxy holds two descriptors per proxied connection, and each worker
/// thread a few of its own: take the hard limit (as nginx's
/// `worker_rlimit_nofile` lets operators do), since the soft default is
/// often 1024.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                eprintln!("cannot raise the open file limit from {soft} to {hard}: {e}");
            }
        }
    }
}
