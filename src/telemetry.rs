//! Logging setup: `tracing` to stderr, level from `RUST_LOG` (default `info`),
//! as text lines or (`log_format: json`, switchable on reload) one JSON
//! object per line.

use std::cell::{Cell, OnceCell};
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// Queues one whole line (ending in `\n`) the way log events are queued.
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

/// Where log lines go: each finished event is appended to a buffer of the
/// thread that logged it, and one writer thread takes the buffers every few
/// milliseconds and writes them to stderr. So a request never waits for
/// stderr: not for a `write(2)` per line (the cost that dominated before), and
/// not for a slow terminal, a full pipe or a stalled log shipper. A buffer
/// that has reached [`BUFFER_CAP`] takes no more lines; they are dropped and
/// counted (`openproxy_log_lines_dropped_total`), and the writer says how many
/// once stderr takes lines again. Lines of one thread keep their order; lines
/// of different threads may be a few milliseconds out of order.
struct LineWriter;

/// POSIX's minimum for `PIPE_BUF` (Linux's value).
const PIPE_BUF: usize = 4096;

/// Lines one thread may have waiting before its new lines are dropped.
const BUFFER_CAP: usize = 512 * 1024;

/// Largest buffer the writer keeps for reuse.
const SPARE_CAP: usize = 64 * 1024;

/// How long the writer lets lines gather while they keep coming: one
/// `write(2)` then carries many lines.
const GATHER: Duration = Duration::from_millis(5);

type Buffer = Arc<Mutex<Vec<u8>>>;

struct Sink {
    /// One buffer per thread that has logged.
    buffers: Mutex<Vec<Buffer>>,
    /// The writer is asleep until a line arrives: the first thread to add one
    /// wakes it. While it is awake nobody pays for a wake-up.
    idle: AtomicBool,
    writer: OnceLock<std::thread::Thread>,
    /// Held while writing to stderr, so [`flush`] and the writer never
    /// interleave their pieces.
    out: Mutex<()>,
    dropped: AtomicU64,
}

static SINK: Sink = Sink {
    buffers: Mutex::new(Vec::new()),
    idle: AtomicBool::new(false),
    writer: OnceLock::new(),
    out: Mutex::new(()),
    dropped: AtomicU64::new(0),
};

thread_local! {
    static BUFFER: OnceCell<Buffer> = const { OnceCell::new() };
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let queued = BUFFER.try_with(|cell| {
            let buffer = cell.get_or_init(|| SINK.register());
            SINK.queue(buffer, buf);
        });
        if queued.is_err() {
            // A thread's last words after its locals are gone: write them now.
            let _out = lock(&SINK.out);
            let _ = write_out(buf, None);
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn register(&'static self) -> Buffer {
        let buffer = Buffer::default();
        lock(&self.buffers).push(buffer.clone());
        self.writer.get_or_init(|| {
            let spawned = std::thread::Builder::new().name("log-writer".into()).spawn(|| SINK.run());
            match spawned {
                Ok(handle) => handle.thread().clone(),
                // No writer thread: lines wait for `flush` (or are dropped
                // when full); never a reason to fail a request.
                Err(_) => std::thread::current(),
            }
        });
        buffer
    }

    fn queue(&self, buffer: &Buffer, line: &[u8]) {
        {
            let mut waiting = lock(buffer);
            if waiting.len() + line.len() > BUFFER_CAP {
                drop(waiting);
                let lines = line.iter().filter(|&&b| b == b'\n').count().max(1) as u64;
                self.dropped.fetch_add(lines, Ordering::Relaxed);
                crate::metrics::metrics().log_lines_dropped(lines);
                return;
            }
            waiting.extend_from_slice(line);
        }
        if self.idle.load(Ordering::SeqCst) && self.idle.swap(false, Ordering::SeqCst) {
            if let Some(writer) = self.writer.get() {
                writer.unpark();
            }
        }
    }

    /// The writer thread: write what has gathered, wait a little, again; fall
    /// asleep when nothing came.
    fn run(&self) {
        let mut spare = Vec::new();
        let mut reported = 0;
        loop {
            // Taken and written under `out`, so `flush` at exit cannot
            // overtake lines this thread holds and leave them unwritten.
            let out = lock(&self.out);
            let mut batch = self.take(std::mem::take(&mut spare));
            if batch.is_empty() {
                drop(out);
                self.idle.store(true, Ordering::SeqCst);
                // A line queued before `idle` was set did not wake us.
                if self.waiting() {
                    self.idle.store(false, Ordering::SeqCst);
                } else {
                    std::thread::park();
                }
                spare = batch;
                continue;
            }
            let written = write_out(&batch, None);
            drop(out);
            batch.clear();
            // A burst's large buffer is not kept: it would be memory held
            // for good (the buffer goes to a thread at the next swap).
            spare = if batch.capacity() > SPARE_CAP { Vec::new() } else { batch };
            let dropped = self.dropped.load(Ordering::Relaxed);
            // Said only once stderr takes lines again: on a stderr that takes
            // none, the warning would be one more line lost, and another.
            if dropped != reported && written {
                // Queued like any line (in the writer's own buffer), so it
                // has the format the operator chose.
                tracing::warn!(lines = dropped - reported, "stderr was too slow: log lines were dropped");
                reported = dropped;
            }
            std::thread::sleep(GATHER);
        }
    }

    /// Every thread's waiting lines, appended to `into`.
    fn take(&self, mut into: Vec<u8>) -> Vec<u8> {
        let buffers = lock(&self.buffers).clone();
        for buffer in &buffers {
            let mut waiting = lock(buffer);
            if into.is_empty() {
                std::mem::swap(&mut into, &mut waiting);
            } else {
                into.extend_from_slice(&waiting);
                waiting.clear();
            }
        }
        drop(buffers);
        // A thread that has ended leaves a buffer only the list holds.
        lock(&self.buffers).retain(|b| Arc::strong_count(b) > 1 || !lock(b).is_empty());
        into
    }

    fn waiting(&self) -> bool {
        lock(&self.buffers).iter().any(|b| !lock(b).is_empty())
    }
}

/// Writes out every waiting line before the process exits, giving up after a
/// couple of seconds if stderr takes nothing.
pub fn flush() {
    let deadline = Instant::now() + Duration::from_secs(2);
    let _out = loop {
        match SINK.out.try_lock() {
            Ok(guard) => break guard,
            Err(std::sync::TryLockError::Poisoned(e)) => break e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(std::sync::TryLockError::WouldBlock) => return,
        }
    };
    let batch = SINK.take(Vec::new());
    let _ = write_out(&batch, Some(deadline));
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `text` to stderr in pieces that end at line ends and are at most
/// `PIPE_BUF` long, so a pipe (shared with a successor process during an
/// upgrade) keeps each line whole. With a deadline, waits for room only until
/// then; without, as long as stderr takes (the writer thread's case). A sink
/// that is gone costs the lines, never a panic. The caller holds `SINK.out`.
/// Returns whether all of `text` was written.
fn write_out(text: &[u8], deadline: Option<Instant>) -> bool {
    let stderr = std::io::stderr();
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(deadline) = deadline {
            if !room_before(stderr.as_fd(), deadline) {
                break;
            }
        }
        let piece = atomic_piece(rest);
        match nix::unistd::write(stderr.as_fd(), piece) {
            Ok(0) => break,
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => {}
            // A stderr someone made non-blocking: wait for room as a
            // blocking one would (within the deadline, if any).
            Err(nix::errno::Errno::EAGAIN) => {
                let until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
                if !room_before(stderr.as_fd(), until) && deadline.is_some() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    // Whatever could not be written is counted, like lines that never fit.
    let lost = rest.iter().filter(|&&b| b == b'\n').count() as u64;
    if lost > 0 {
        SINK.dropped.fetch_add(lost, Ordering::Relaxed);
        crate::metrics::metrics().log_lines_dropped(lost);
    }
    rest.is_empty()
}

/// Whether `fd` can take a write before `deadline`.
fn room_before(fd: std::os::fd::BorrowedFd<'_>, deadline: Instant) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let left = deadline.saturating_duration_since(Instant::now());
    let timeout = PollTimeout::try_from(left.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::ZERO);
    let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
    matches!(poll(&mut fds, timeout), Ok(n) if n > 0)
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
