//! Command-line interface types (clap). Parsing only; `app` acts on them.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// OpenProxy: one binary in front of OpenAI, Anthropic, Gemini and plain HTTP
/// backends. Routes by Host, swaps client keys for provider keys, balances by
/// priority and weight.
#[derive(Debug, Parser)]
#[command(name = "openproxy", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the proxy and serve until SIGTERM or SIGINT.
    Start {
        /// Path of the YAML configuration file.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// Write the process id here (removed again on exit).
        #[arg(short = 'p', long = "pid-file", value_name = "FILE")]
        pid_file: Option<PathBuf>,
        /// Deprecated: turns on active health checks (use `health_check.enabled`).
        #[arg(long = "enable-health-check", hide = true)]
        enable_health_check: bool,
    },
    /// Validate a configuration file and print what it sets up; exit 1 on any error.
    Check {
        /// Path of the YAML configuration file.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
    },
}
