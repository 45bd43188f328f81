//! Logging setup: `tracing` to stderr, level from `RUST_LOG` (default `info`),
//! as text lines or (`log_format: json`, switchable on reload) one JSON
//! object per line.

use std::cell::Cell;
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::time::{SystemTime, UNIX_EPOCH};

use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let text = tracing_subscriber::fmt::format().with_timer(UtcMicros).with_ansi(ansi).with_target(true);
    // Span fields are recorded as text (`peer=...`) and would not parse as
    // JSON; the access line carries the peer anyway.
    let json = tracing_subscriber::fmt::format()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_timer(UtcMicros)
        .with_target(true);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LineWriter)
        .with_ansi(ansi)
        .event_format(EitherFormat { text, json })
        .try_init();
}

static JSON: AtomicBool = AtomicBool::new(false);

/// Switches every line from now on to JSON (or back to text).
pub fn set_json(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

/// Whether lines are JSON objects.
pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// The time now as RFC 3339 UTC with microseconds, as log lines show it.
pub fn now_rfc3339() -> String {
    let mut out = String::with_capacity(27);
    let _ = UtcMicros.format_time(&mut Writer::new(&mut out));
    out
}

/// Writes one whole line (ending in `\n`) the way log events are written.
pub fn write_line(line: &[u8]) {
    let _ = LineWriter.write_all(line);
}

/// Text or JSON, as [`set_json`] last said.
struct EitherFormat<T, J> {
    text: T,
    json: J,
}

impl<S, N, T, J> FormatEvent<S, N> for EitherFormat<T, J>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatEvent<S, N>,
    J: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        match json() {
            true => self.json.format_event(ctx, writer, event),
            false => self.text.format_event(ctx, writer, event),
        }
    }
}

/// Stderr without the lock `std::io::Stderr` takes for every line: the
/// formatter hands over each finished event in one `write_all`, and each
/// piece of up to `PIPE_BUF` bytes ending at a line end is one `write(2)`,
/// which a pipe keeps whole. So worker threads logging at once never wait for
/// each other, and no line is ever cut by another (a long multi-line event,
/// a reload's list of errors, may have other lines between its own). A sink
/// that is gone or full costs the line, never the request: an error here
/// would make tracing-subscriber panic in `eprintln!`.
struct LineWriter;

/// POSIX's minimum for `PIPE_BUF` (Linux's value).
const PIPE_BUF: usize = 4096;

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let mut rest = buf;
        while !rest.is_empty() {
            let piece = atomic_piece(rest);
            match nix::unistd::write(std::io::stderr().as_fd(), piece) {
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

/// The longest front of `text` that one atomic pipe write can carry and that
/// ends at a line end (all of it when short; a single line longer than
/// `PIPE_BUF` goes as it is).
fn atomic_piece(text: &[u8]) -> &[u8] {
    if text.len() <= PIPE_BUF {
        return text;
    }
    match text[..PIPE_BUF].iter().rposition(|&b| b == b'\n') {
        Some(end) => &text[..=end],
        None => text,
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

/// Year, month (1-12) and day of the month of a day counted from the Unix
/// epoch (UTC, proleptic Gregorian; Howard Hinnant's days-to-civil algorithm).
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// `YYYY-MM-DDTHH:MM:SS` for seconds since the Unix epoch.
fn civil_time(secs: u64) -> [u8; 19] {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(i64::try_from(days).unwrap_or(0));
    let text = format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60);
    let mut out = [b'0'; 19];
    if text.len() == out.len() {
        out.copy_from_slice(text.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{atomic_piece, civil_time, PIPE_BUF};

    #[test]
    fn long_events_are_written_in_whole_lines() {
        let line = |c: u8| [vec![c; 999], vec![b'\n']].concat();
        let event: Vec<u8> = (b'a'..b'h').flat_map(line).collect();
        let first = atomic_piece(&event);
        assert_eq!(first.len(), 4000, "four whole lines fit in {PIPE_BUF}");
        assert_eq!(atomic_piece(&event[4000..]).len(), 3000);
        let one_long_line = vec![b'x'; 10_000];
        assert_eq!(atomic_piece(&one_long_line).len(), 10_000);
        assert_eq!(atomic_piece(b"short\n"), b"short\n");
    }

    #[test]
    fn civil_time_matches_known_instants() {
        let text = |secs| String::from_utf8(civil_time(secs).to_vec()).unwrap();
        assert_eq!(text(0), "1970-01-01T00:00:00");
        assert_eq!(text(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(text(1_796_006_399), "2026-11-30T02:39:59");
        assert_eq!(text(4_107_542_400), "2100-03-01T00:00:00");
    }
}
