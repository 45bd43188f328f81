//! The process's Prometheus metrics, on the `prometheus-client` crate, and
//! the one place their names and labels are defined. Recording is a few
//! atomic operations; the admin listener encodes them on each scrape. Every
//! label value comes from the configuration (a route, a provider's name) or
//! from a fixed set (status codes, error kinds, protocols), never from what a
//! client sent, so a client cannot make new series.
//!
//! A leaf: the request path, the upstream pools and the admin listener call
//! into it; it calls nothing of theirs.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency buckets in seconds, for LLM answers: 5 ms to 300 s.
const BUCKETS: [f64; 16] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub host: String,
    pub provider: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub host: String,
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub provider: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    direction: &'static str,
    provider: String,
    model: String,
    client: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabel {
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConfigLabel {
    hash: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    first_byte: Family<RouteLabels, Histogram>,
    provider_healthy: Family<ProviderLabel, Gauge>,
    upstream_errors: Family<ErrorLabels, Counter>,
    retries: Family<ProviderLabel, Counter>,
    failovers: Family<ProviderLabel, Counter>,
    ejections: Family<ProviderLabel, Counter>,
    key_rests: Family<ProviderLabel, Counter>,
    reloads: Family<ResultLabel, Counter>,
    tokens: Family<TokenLabels, Counter>,
    /// Model names seen so far: at most [`MAX_MODELS`] get series of their own.
    models: Mutex<Vec<String>>,
    connections: Family<ProtocolLabel, Gauge>,
    open_requests: Gauge,
    open_tunnels: Gauge,
    pooled: Gauge,
    config: Family<ConfigLabel, Gauge>,
    log_lines_dropped: Counter,
    current_config: Mutex<Option<String>>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("openproxy");
        let requests = Family::default();
        registry.register("requests", "Requests answered, by route, provider and status", requests.clone());
        let duration = Family::new_with_constructor(histogram as fn() -> Histogram);
        let first_byte = Family::new_with_constructor(histogram as fn() -> Histogram);
        registry.register("request_duration_seconds", "Time from request to the end of its answer", duration.clone());
        registry.register(
            "time_to_first_byte_seconds",
            "Time from request to the upstream's response head (first token, for a stream)",
            first_byte.clone(),
        );
        let provider_healthy = Family::default();
        registry.register(
            "provider_healthy",
            "1 if the provider takes traffic (healthy, not ejected)",
            provider_healthy.clone(),
        );
        let upstream_errors = Family::default();
        registry.register(
            "upstream_errors",
            "Failed upstream attempts by kind (connect, tls, timeout, reset, protocol)",
            upstream_errors.clone(),
        );
        let (retries, failovers, ejections, key_rests) =
            (Family::default(), Family::default(), Family::default(), Family::default());
        registry.register("retries", "Attempts repeated on the same provider with another key", retries.clone());
        registry.register("failovers", "Attempts moved from this provider to another", failovers.clone());
        registry.register("ejections", "Times passive health took the provider out", ejections.clone());
        registry.register("key_rests", "Provider keys put to rest after a 429", key_rests.clone());
        let tokens = Family::default();
        registry.register(
            "tokens",
            "Tokens by direction (input, output), provider, model and client key name",
            tokens.clone(),
        );
        let reloads = Family::default();
        registry.register("config_reloads", "Configuration reloads by result", reloads.clone());
        let connections = Family::default();
        registry.register("client_connections", "Open client connections by protocol", connections.clone());
        let (open_requests, open_tunnels, pooled) = (Gauge::default(), Gauge::default(), Gauge::default());
        registry.register("open_requests", "Requests in flight, streams included", open_requests.clone());
        registry.register("open_tunnels", "WebSocket and CONNECT tunnels open", open_tunnels.clone());
        registry.register(
            "pooled_upstream_connections",
            "Idle HTTP/1.1 and shared HTTP/2 upstream connections",
            pooled.clone(),
        );
        let (config, log_lines_dropped) = (Family::default(), Counter::default());
        let config_help = "The loaded configuration (its file's SHA-256, first 16 hex digits)";
        registry.register("config_info", config_help, config.clone());
        let dropped_help = "Log lines dropped because stderr did not take them fast enough";
        registry.register("log_lines_dropped", dropped_help, log_lines_dropped.clone());
        Metrics {
            registry,
            requests,
            duration,
            first_byte,
            provider_healthy,
            upstream_errors,
            retries,
            failovers,
            ejections,
            key_rests,
            reloads,
            tokens,
            models: Mutex::default(),
            connections,
            open_requests,
            open_tunnels,
            pooled,
            config,
            log_lines_dropped,
            current_config: Mutex::new(None),
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn log_lines_dropped(&self, lines: u64) {
        self.log_lines_dropped.inc_by(lines);
    }

    /// Counts tokens an answer reported. A model name comes from the upstream
    /// (or the request path), so only the first [`MAX_MODELS`] names seen
    /// get series; later ones count as `other`.
    pub fn tokens(&self, provider: &str, model: Option<&str>, client: &str, input: Option<u64>, output: Option<u64>) {
        let model = match model {
            None => "unknown".to_string(),
            Some(model) => {
                let clean: String = model.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
                let mut seen = self.models.lock().unwrap_or_else(|e| e.into_inner());
                if seen.contains(&clean) {
                    clean
                } else if seen.len() < MAX_MODELS {
                    seen.push(clean.clone());
                    clean
                } else {
                    "other".to_string()
                }
            }
        };
        for (direction, count) in [("input", input), ("output", output)] {
            if let Some(count) = count {
                let labels = TokenLabels {
                    direction,
                    provider: provider.to_string(),
                    model: model.clone(),
                    client: client.to_string(),
                };
                self.tokens.get_or_create(&labels).inc_by(count);
            }
        }
    }

    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// The configuration now in use, by the hash of its file.
    pub fn config_loaded(&self, hash: &str) {
        let mut current = self.current_config.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = current.take() {
            self.config.remove(&ConfigLabel { hash: old });
        }
        self.config.get_or_create(&ConfigLabel { hash: hash.to_string() }).set(1);
        *current = Some(hash.to_string());
    }

    /// Counts an open client connection of `protocol` until dropped.
    pub fn connection(&self, protocol: &'static str) -> Open {
        let gauge = self.connections.get_or_create(&ProtocolLabel { protocol }).clone();
        gauge.inc();
        Open(gauge)
    }

    pub fn request_started(&self) -> Open {
        self.open_requests.inc();
        Open(self.open_requests.clone())
    }

    pub fn tunnel_opened(&self) -> Open {
        self.open_tunnels.inc();
        Open(self.open_tunnels.clone())
    }

    /// Idle connections entering (positive) or leaving (negative) a pool.
    pub fn pooled(&self, change: i64) {
        self.pooled.inc_by(change);
    }

    /// One provider's handles (or those of requests no provider took):
    /// recording through them is an atomic add, with no label lookup.
    pub fn for_provider(&self, host: &str, provider: &str) -> Arc<ProviderMetrics> {
        let route = RouteLabels { host: host.to_string(), provider: provider.to_string() };
        let one = ProviderLabel { provider: provider.to_string() };
        Arc::new(ProviderMetrics {
            duration: self.duration.get_or_create_owned(&route),
            first_byte: self.first_byte.get_or_create_owned(&route),
            by_status: (0..STATUSES).map(|_| OnceLock::new()).collect(),
            retries: self.retries.get_or_create_owned(&one),
            failovers: self.failovers.get_or_create_owned(&one),
            ejections: self.ejections.get_or_create_owned(&one),
            key_rests: self.key_rests.get_or_create_owned(&one),
            route,
        })
    }

    pub fn upstream_error(&self, provider: &str, kind: &'static str) {
        self.upstream_errors.get_or_create(&ErrorLabels { provider: provider.to_string(), kind }).inc();
    }

    /// Sets whether each provider takes traffic, forgetting providers gone
    /// from the configuration.
    pub fn providers_healthy(&self, providers: impl Iterator<Item = (String, bool)>) {
        self.provider_healthy.clear();
        for (provider, healthy) in providers {
            self.provider_healthy.get_or_create(&ProviderLabel { provider }).set(i64::from(healthy));
        }
    }
}

/// Distinct model names that get series of their own.
const MAX_MODELS: usize = 100;

/// Status codes 100 to 599.
const STATUSES: usize = 500;

/// The metric handles of one provider (or of unrouted requests).
#[derive(Debug)]
pub struct ProviderMetrics {
    route: RouteLabels,
    duration: Histogram,
    first_byte: Histogram,
    /// The request counter of each status, made on first use.
    by_status: Box<[OnceLock<Counter>]>,
    pub retries: Counter,
    pub failovers: Counter,
    pub ejections: Counter,
    pub key_rests: Counter,
}

impl ProviderMetrics {
    /// Records a finished request.
    pub fn answered(&self, status: u16, took: Duration, first_byte: Option<Duration>) {
        if let Some(first_byte) = first_byte {
            self.first_byte.observe(first_byte.as_secs_f64());
        }
        self.duration.observe(took.as_secs_f64());
        let counter = |status: u16| {
            let labels = RequestLabels { host: self.route.host.clone(), provider: self.route.provider.clone(), status };
            metrics().requests.get_or_create_owned(&labels)
        };
        match self.by_status.get(usize::from(status).wrapping_sub(100)) {
            Some(slot) => slot.get_or_init(|| counter(status)).inc(),
            None => counter(status).inc(),
        };
    }

    pub fn provider(&self) -> &str {
        &self.route.provider
    }
}

/// Keeps a gauge one higher for as long as it lives.
#[derive(Debug)]
pub struct Open(Gauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}
