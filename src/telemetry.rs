//! Logging setup: `tracing` to stderr, level from `RUST_LOG` (default `info`).

use std::cell::Cell;
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LineWriter)
        .with_timer(UtcMicros)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true)
        .try_init();
}

/// Stderr without the exclusive lock `std::io::Stderr` takes for every line:
/// the formatter hands over each finished event in one `write_all`, which is
/// one `write(2)` — atomic for a pipe up to `PIPE_BUF`, so worker threads
/// logging at once share [`LARGE_EVENT`] and never wait for each other. A
/// larger event (a reload's list of errors) holds it alone, so no line lands
/// inside it. A sink that is gone or full costs the line, never the request
/// (an error here would make tracing-subscriber panic in `eprintln!`).
struct LineWriter;

/// Shared by events that fit in one atomic pipe write, exclusive above that.
static LARGE_EVENT: RwLock<()> = RwLock::new(());
/// POSIX's minimum for `PIPE_BUF` (Linux's value).
const PIPE_BUF: usize = 4096;

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let (_shared, _alone);
        if buf.len() <= PIPE_BUF {
            _shared = LARGE_EVENT.read().unwrap_or_else(|e| e.into_inner());
        } else {
            _alone = LARGE_EVENT.write().unwrap_or_else(|e| e.into_inner());
        }
        let mut rest = buf;
        while !rest.is_empty() {
            match nix::unistd::write(std::io::stderr().as_fd(), rest) {
                Ok(0) => break,
                Ok(n) => rest = &rest[n..],
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break,
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// RFC 3339 UTC time with microseconds, as tracing's default timer prints it,
/// with the date and time of day worked out once per second per thread
/// instead of once per line.
struct UtcMicros;

impl FormatTime for UtcMicros {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        thread_local! {
            static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = now.as_secs();
        let prefix = SECOND.with(|cached| {
            let (at, text) = cached.get();
            if at == secs {
                return text;
            }
            let text = civil_time(secs);
            cached.set((secs, text));
            text
        });
        let prefix = std::str::from_utf8(&prefix).unwrap_or("0000-00-00T00:00:00");
        write!(w, "{prefix}.{:06}Z", now.subsec_micros())
    }
}

/// `YYYY-MM-DDTHH:MM:SS` for seconds since the Unix epoch (UTC, proleptic
/// Gregorian; Howard Hinnant's days-to-civil algorithm).
fn civil_time(secs: u64) -> [u8; 19] {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let text = format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60);
    let mut out = [b'0'; 19];
    if text.len() == out.len() {
        out.copy_from_slice(text.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::civil_time;

    #[test]
    fn civil_time_matches_known_instants() {
        let text = |secs| String::from_utf8(civil_time(secs).to_vec()).unwrap();
        assert_eq!(text(0), "1970-01-01T00:00:00");
        assert_eq!(text(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(text(1_796_006_399), "2026-11-30T02:39:59");
        assert_eq!(text(4_107_542_400), "2100-03-01T00:00:00");
    }
}
