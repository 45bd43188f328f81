//! Logging setup: `tracing` to stderr, level from `RUST_LOG` (default `info`).

use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LineWriter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true)
        .try_init();
}

/// Stderr without the process-wide lock `std::io::Stderr` takes: the
/// formatter hands over each finished line in one `write_all`, so a line is
/// one `write(2)` (atomic for a pipe up to `PIPE_BUF`, and for an `O_APPEND`
/// file), and worker threads logging at the same moment never wait on a
/// futex for each other.
struct LineWriter;

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(nix::unistd::write(std::io::stderr().as_fd(), buf)?)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
