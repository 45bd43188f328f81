//! The access log: one line per request, written by the neutral handler. The
//! line is a guard's drop, so a request whose handler is dropped unfinished
//! (the client hung up, or reset its stream) is still logged, as 499.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::Method;

use crate::message::RequestHead;
use crate::metrics::{Open, ProviderMetrics};
use crate::provider::InFlight;
use crate::provider::Provider;

/// Logged status of a request the client abandoned (nginx's convention).
pub const CLIENT_CLOSED: u16 = 499;
/// Longest path written to the log.
const MAX_PATH: usize = 512;
/// Longest host written to the log.
const MAX_HOST: usize = 256;

#[derive(Debug)]
pub struct AccessLog {
    method: Method,
    host: Option<String>,
    /// The path without the query: a query can hold a key.
    path: String,
    started: Instant,
    provider: Option<usize>,
    /// The metrics the line is counted in: the provider's, else unrouted ones.
    metrics: Option<Arc<ProviderMetrics>>,
    /// When the upstream's response head arrived.
    first_byte: Option<std::time::Duration>,
    /// Counts the request (and its tunnel) as open while it lives.
    _open: Open,
    tunnel_open: Option<Open>,
    /// Body bytes from the client and to it (tunnels count in `tunnel`).
    bytes_in: Arc<AtomicU64>,
    /// Counted as the answer's body passes (see `Observe`), before any edit.
    bytes_out: u64,
    /// Bytes an edit of the answer took out after they were counted
    /// (`stream_usage: inject`): the client never got them.
    edited_out: Option<Arc<AtomicU64>>,
    /// Counts the request against its provider's requests in flight.
    in_flight: Option<InFlight>,
    status: Option<u16>,
    /// Bytes through a tunnel (WebSocket, CONNECT), read when the line is
    /// written: a tunnel cut at shutdown still reports what it carried.
    tunnel: Option<Arc<Transferred>>,
    /// For the JSON line (`log_format: json`) only.
    detail: Detail,
    /// The type of the provider the request went to.
    kind: Option<crate::provider::ProviderType>,
    /// Reads the answer's token usage as it passes (LLM answers only).
    usage: Option<crate::usage::Scanner>,
    /// When the client let go of the answer before its end.
    client_gone: Option<std::time::Duration>,
    /// The answer's body broke before its end (the upstream cut it, or a
    /// timeout did): the status is what the head said, the answer is short.
    incomplete: bool,
}

/// How long the rest of an answer is read for its token usage after the
/// client left: a stream's usage comes in its last event.
const USAGE_LINGER: std::time::Duration = std::time::Duration::from_secs(5);

impl crate::body::Observe for AccessLog {
    fn data(&mut self, bytes: &[u8]) {
        if self.client_gone.is_none() {
            self.bytes_out += bytes.len() as u64;
        }
        if let Some(usage) = self.usage.as_mut() {
            usage.feed(bytes);
        }
    }

    fn broken(&mut self) {
        self.incomplete = true;
    }

    /// Tokens the provider bills for are counted even when the client did not
    /// wait for them; the line's time and bytes stay the client's.
    fn reader_gone(&mut self) -> Option<std::time::Duration> {
        let started = self.started;
        self.client_gone.get_or_insert_with(|| started.elapsed());
        let wanted = self.usage.as_ref().is_some_and(|u| u.usage().output.is_none() || u.usage().input.is_none());
        wanted.then_some(USAGE_LINGER)
    }
}

/// What only the JSON line carries.
#[derive(Debug, Default)]
struct Detail {
    peer: Option<std::net::SocketAddr>,
    protocol: &'static str,
    /// The query with every value replaced by `*`.
    query: Option<String>,
    attempts: u32,
    key_slot: Option<usize>,
    client_key: Option<Arc<str>>,
}

/// What a tunnel carried so far, counted as it goes.
#[derive(Debug, Default)]
pub struct Transferred {
    /// Client → upstream.
    pub up: AtomicU64,
    /// Upstream → client.
    pub down: AtomicU64,
}

impl AccessLog {
    /// The line of a request; `client_keys` are the keys no line may show.
    pub fn start(head: &RequestHead, client_keys: &[Box<[u8]>]) -> AccessLog {
        let path = head.target.split('?').next().unwrap_or("/");
        AccessLog {
            method: head.method.clone(),
            host: head.authority.as_deref().map(|h| truncated(h, MAX_HOST)),
            path: logged_path(path, client_keys),
            started: Instant::now(),
            provider: None,
            metrics: None,
            first_byte: None,
            _open: crate::metrics::metrics().request_started(),
            tunnel_open: None,
            in_flight: None,
            bytes_in: Arc::default(),
            bytes_out: 0,
            edited_out: None,
            status: None,
            tunnel: None,
            usage: None,
            client_gone: None,
            incomplete: false,
            kind: None,
            detail: Detail {
                peer: head.peer,
                protocol: head.protocol,
                query: crate::telemetry::json().then(|| redacted_query(&head.target)).flatten(),
                ..Detail::default()
            },
        }
    }

    pub fn provider(&mut self, provider: &Provider) {
        self.provider = Some(provider.index);
        self.kind = Some(provider.kind);
        self.metrics = Some(provider.metrics.clone());
        self.in_flight = Some(provider.health.begin());
    }

    /// An attempt went upstream with the provider key at `slot`.
    pub fn attempted(&mut self, slot: Option<usize>) {
        self.detail.attempts += 1;
        self.detail.key_slot = slot;
    }

    pub fn provider_kind(&self) -> Option<crate::provider::ProviderType> {
        self.kind
    }

    /// Reads token usage from the answer's body (`model` when the answer
    /// names none, as Gemini's do not).
    pub fn read_usage(&mut self, model: Option<&str>) {
        let mut scanner = crate::usage::Scanner::default();
        if let Some(model) = model {
            scanner.set_model(model);
        }
        self.usage = Some(scanner);
    }

    /// What to call the client key the request came with.
    pub fn client_key(&mut self, label: Option<Arc<str>>) {
        self.detail.client_key = label;
    }

    /// The counter of the bytes an edit of the answer takes out.
    pub fn edited_out(&mut self) -> Arc<AtomicU64> {
        self.edited_out.get_or_insert_with(Arc::default).clone()
    }

    /// The counter of the request body's bytes.
    pub fn bytes_in(&self) -> Arc<AtomicU64> {
        self.bytes_in.clone()
    }

    /// The upstream's answer has begun (its head is here).
    pub fn first_byte(&mut self) {
        self.first_byte = Some(self.started.elapsed());
    }

    /// Records the status the client is about to get; the line is written now.
    pub fn finish(mut self, status: u16) {
        self.status = Some(status);
    }

    /// Records the status; the line is written when the log is dropped.
    pub fn set_status(&mut self, status: u16) {
        self.status = Some(status);
    }

    /// The counters of the tunnel this request opened; the line, written
    /// when the log is dropped (the tunnel's end), reports them.
    pub fn tunnel_counters(&mut self) -> Arc<Transferred> {
        self.tunnel_open.get_or_insert_with(|| crate::metrics::metrics().tunnel_opened());
        self.tunnel.get_or_insert_with(Arc::default).clone()
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let took = self.client_gone.unwrap_or_else(|| self.started.elapsed());
        let status = self.status.unwrap_or(CLIENT_CLOSED);
        let metrics = self.metrics.get_or_insert_with(unrouted).clone();
        metrics.answered(status, took, self.first_byte);
        let none = crate::usage::Usage::default();
        let usage = self.usage.as_ref().map_or(&none, |u| u.usage());
        if usage.input.is_some() || usage.output.is_some() {
            let client = self.detail.client_key.as_deref().unwrap_or("none");
            crate::metrics::metrics().tokens(
                metrics.provider(),
                usage.model.as_deref(),
                client,
                usage.input,
                usage.output,
            );
        }
        if crate::telemetry::json() {
            if tracing::enabled!(target: "openproxy::access", tracing::Level::INFO) {
                self.write_json(status, took, metrics.provider(), usage);
            }
            return;
        }
        // `None` fields are left out of the line: a tunnel's bytes go up and
        // down, a request's body bytes in and out.
        let tunnel = self.tunnel.as_ref().map(|t| (t.up.load(Ordering::Relaxed), t.down.load(Ordering::Relaxed)));
        let body = match tunnel {
            Some(_) => None,
            None => Some((self.bytes_in.load(Ordering::Relaxed), self.client_bytes_out())),
        };
        tracing::info!(
            target: "openproxy::access",
            method = %self.method,
            host = self.host.as_deref().unwrap_or(""),
            path = %self.path,
            status,
            provider = self.provider,
            ms = %Millis(took),
            bytes_in = body.map(|b| b.0),
            bytes_out = body.map(|b| b.1),
            bytes_up = tunnel.map(|t| t.0),
            bytes_down = tunnel.map(|t| t.1),
            incomplete = self.incomplete.then_some(true),
        );
    }
}

impl AccessLog {
    /// Body bytes the client was sent.
    fn client_bytes_out(&self) -> u64 {
        let removed = self.edited_out.as_ref().map_or(0, |r| r.load(Ordering::Relaxed));
        self.bytes_out.saturating_sub(removed)
    }

    /// The line as one JSON object (`log_format: json`).
    fn write_json(&self, status: u16, took: std::time::Duration, provider: &str, usage: &crate::usage::Usage) {
        let (bytes_in, bytes_out) = match &self.tunnel {
            Some(t) => (t.up.load(Ordering::Relaxed), t.down.load(Ordering::Relaxed)),
            None => (self.bytes_in.load(Ordering::Relaxed), self.client_bytes_out()),
        };
        let path = match &self.detail.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        };
        // Written field by field: no intermediate map, one allocation.
        let mut out = String::with_capacity(512);
        let (detail, usage) = (&self.detail, usage);
        out.push_str("{\"time\":");
        json_text(&mut out, Some(&crate::telemetry::now_rfc3339()));
        out.push_str(",\"client\":");
        json_text(&mut out, detail.peer.map(|p| p.to_string()).as_deref());
        out.push_str(",\"protocol\":");
        json_text(&mut out, Some(detail.protocol));
        out.push_str(",\"method\":");
        json_text(&mut out, Some(self.method.as_str()));
        out.push_str(",\"host\":");
        json_text(&mut out, self.host.as_deref());
        out.push_str(",\"path\":");
        json_text(&mut out, Some(&path));
        out.push_str(",\"provider\":");
        json_text(&mut out, (provider != "none").then_some(provider));
        let _ = write!(out, ",\"key_slot\":{},\"status\":{status}", json_number(detail.key_slot));
        let _ = write!(out, ",\"bytes_in\":{bytes_in},\"bytes_out\":{bytes_out},\"duration_ms\":{}", Millis(took));
        let _ = write!(out, ",\"ttfb_ms\":{}", self.first_byte.map_or("null".to_string(), |d| Millis(d).to_string()));
        let _ = write!(out, ",\"attempts\":{},\"client_key\":", detail.attempts);
        json_text(&mut out, detail.client_key.as_deref());
        let _ = write!(out, ",\"tunnel\":{},\"complete\":{},\"model\":", self.tunnel.is_some(), !self.incomplete);
        json_text(&mut out, usage.model.as_deref());
        let _ = write!(out, ",\"input_tokens\":{}", json_number(usage.input));
        let _ = writeln!(out, ",\"output_tokens\":{}}}", json_number(usage.output));
        let text = out;
        crate::telemetry::write_line(text.as_bytes());
    }
}

/// A JSON string (or `null`), escaped.
fn json_text(out: &mut String, text: Option<&str>) {
    let Some(text) = text else {
        out.push_str("null");
        return;
    };
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_number<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "null".to_string(), |v| v.to_string())
}

/// The query with each value replaced by `*` (a value may be a key), and
/// each name too unless it looks like a parameter name (letters and `_`);
/// `None` without a query.
fn redacted_query(target: &str) -> Option<String> {
    let (_, query) = target.split_once('?')?;
    let plain =
        |name: &str| (1..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_');
    let pairs: Vec<&str> = query
        .split('&')
        .map(|pair| pair.split('=').next().unwrap_or(""))
        .map(|name| if plain(name) { name } else { "*" })
        .collect();
    let redacted: Vec<String> = pairs.iter().map(|name| format!("{name}=*")).collect();
    Some(truncated(&redacted.join("&"), MAX_PATH))
}

/// A request refused before it could be read as one (a malformed or too
/// large head): counted with the unrouted requests, and logged with what is
/// known of it.
pub fn rejected(status: u16, peer: Option<std::net::SocketAddr>) {
    unrouted().answered(status, std::time::Duration::ZERO, None);
    let client = peer.map(|p| p.to_string());
    tracing::info!(target: "openproxy::access", status, client, "request rejected before routing");
}

/// The metrics of requests no provider took (refused, unknown host).
fn unrouted() -> Arc<ProviderMetrics> {
    static UNROUTED: std::sync::OnceLock<Arc<ProviderMetrics>> = std::sync::OnceLock::new();
    UNROUTED.get_or_init(|| crate::metrics::metrics().for_provider("none", "none")).clone()
}

/// At most `max` characters of `text`, in one allocation.
/// The path as the line shows it: each segment that is a client key (a
/// client that put its key where Gemini's model goes, say) written
/// `redacted` — the log is read by more people than the keys are meant for —
/// and a long path cut back to a segment boundary, so no part of a segment
/// (of a key) is shown either.
fn logged_path(path: &str, keys: &[Box<[u8]>]) -> String {
    let is_key = |segment: &str| keys.iter().any(|k| k.len() == segment.len() && **k == *segment.as_bytes());
    let mut logged = String::with_capacity(path.len());
    let mut rest = path;
    loop {
        let end = rest.find(['/', ':']).unwrap_or(rest.len());
        let segment = &rest[..end];
        logged.push_str(if is_key(segment) { "redacted" } else { segment });
        // Past what the line can show (a char is at most 4 bytes), the rest
        // is cut anyway: no need to compare it with every key.
        if end == rest.len() || logged.len() > 4 * MAX_PATH {
            break;
        }
        logged.push_str(&rest[end..=end]);
        rest = &rest[end + 1..];
    }
    if logged.chars().nth(MAX_PATH).is_none() {
        return logged;
    }
    let cut = truncated(&logged, MAX_PATH);
    let end = cut.rfind(['/', ':']).map_or(0, |i| i + 1);
    cut[..end].to_string()
}

fn truncated(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

/// A duration as milliseconds with three decimals, formatted with integers
/// (float formatting with a precision is slow, and this runs per request).
struct Millis(std::time::Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let micros = self.0.as_micros();
        write!(f, "{}.{:03}", micros / 1000, micros % 1000)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_and_odd_names_never_reach_the_json_line() {
        assert_eq!(super::redacted_query("/v1/x"), None);
        let redacted = super::redacted_query("/v1/x?model=gpt&key=sk-secret&sk-other&alt=sse").unwrap();
        assert_eq!(redacted, "model=*&key=*&*=*&alt=*");
    }

    #[test]
    fn path_segments_that_are_client_keys_are_redacted() {
        let keys: Vec<Box<[u8]>> = vec![b"sk-client"[..].into(), b"k2"[..].into()];
        let scrubbed = |path: &str| {
            let head = crate::message::RequestHead {
                method: http::Method::GET,
                authority: None,
                target: path.to_string(),
                headers: http::HeaderMap::new(),
                default_port: 80,
                peer: None,
                protocol: "HTTP/1.1",
            };
            super::AccessLog::start(&head, &keys).path.clone()
        };
        assert_eq!(scrubbed("/v1beta/models/sk-client:generateContent"), "/v1beta/models/redacted:generateContent");
        assert_eq!(scrubbed("/k2/x/k2"), "/redacted/x/redacted");
        assert_eq!(scrubbed("/v1/sk-client-not/k"), "/v1/sk-client-not/k");
        let long = format!("/{}/sk-client-and-more", "a".repeat(500));
        assert_eq!(scrubbed(&long), format!("/{}/", "a".repeat(500)), "a cut segment is left out whole");
    }
}
