//! The configuration: YAML text in, a validated [`Config`] out.
//!
//! `raw` holds the serde structs that mirror the file (unknown keys rejected),
//! `env` expands `${VAR}` in string values, `validate` turns raw into the typed
//! structs below and collects every problem, naming the key and the provider.
//! This module knows nothing about sockets, requests or the runtime; the
//! provider type and health-check shapes it fills in belong to `provider`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use limits::ConnectionLimits;

pub use crate::provider::{ProviderHealthCheck, ProviderType};

/// A fully validated configuration. Every field has its default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Plain HTTP listener (`http_port` / `http_bind_address`).
    pub http: Option<SocketAddr>,
    /// HTTPS listener (`https_port` / `https_bind_address` + cert files).
    pub https: Option<HttpsConfig>,
    /// `log_format: json`: every log line a JSON object (default: text).
    pub log_json: bool,
    /// The admin listener (`admin_port` / `admin_bind_address`, default
    /// 127.0.0.1): metrics, health and status, never proxied requests.
    pub admin: Option<SocketAddr>,
    /// Global client keys (`auth_keys`), accepted by every provider.
    pub auth_keys: Vec<String>,
    pub health_check: HealthCheckSettings,
    /// `http_max_header_size`, default 4096, 1024..=1 MiB.
    pub http_max_header_size: usize,
    /// `connect_tunnel_enabled`, default false.
    pub connect_tunnel_enabled: bool,
    /// `workers`: request-serving threads; `None` means one per available core.
    pub workers: Option<usize>,
    /// `http_max_header_count`: fields a request head may have, default 100, 1..=128.
    pub http_max_header_count: usize,
    /// `max_request_body_size` in bytes; `None`: no limit.
    pub max_request_body_size: Option<u64>,
    /// Connections, HTTP/2 streams and headers, upstream connection attempts.
    pub limits: ConnectionLimits,
    /// `graceful_shutdown_timeout` in seconds, default 30.
    pub graceful_shutdown_timeout: Duration,
    /// Every timeout with its default applied.
    pub timeouts: Timeouts,
    /// Top-level `ca_file`: extra PEM roots trusted for upstream TLS.
    pub ca_file: Option<PathBuf>,
    pub retry: RetrySettings,
    pub passive_health: PassiveHealthSettings,
    pub providers: Vec<ProviderConfig>,
    /// Client keys given a name (`{key, name}`), global and providers': the
    /// name is what logs show for a request that used the key.
    pub client_key_names: Vec<(String, String)>,
    /// The first 16 hex digits of the SHA-256 of the file's text: which
    /// configuration is loaded, for metrics and `/status`.
    pub source_hash: String,
    /// Forms that still work but should be written another way: printed by
    /// `check` and logged at start and on reload.
    pub deprecations: Vec<String>,
}

/// Timeouts from the top level of the file, in seconds there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    /// `connect_timeout`: upstream DNS + TCP + TLS, default 10.
    pub connect: Duration,
    /// `first_byte_timeout`: request sent → response head, default 300.
    pub first_byte: Duration,
    /// `stream_idle_timeout`: gap between two pieces of a response body, default 300.
    pub stream_idle: Duration,
    /// `client_header_timeout`: reading one request head, default 30.
    pub client_header: Duration,
    /// `client_body_timeout`: gap between two reads of a request body, default 60.
    pub client_body: Duration,
    /// `client_idle_timeout`: an idle keep-alive client connection, default 60.
    pub client_idle: Duration,
    /// `tunnel_idle_timeout`: a WebSocket or CONNECT tunnel quiet both ways, default 600.
    pub tunnel_idle: Duration,
    /// `client_send_timeout`: a write to a client making no progress, default 60.
    pub client_send: Duration,
    /// `tls_handshake_timeout`: a client's TLS (and HTTP/2) handshake, default 10.
    pub tls_handshake: Duration,
}

/// `retry`: failover before the first response byte.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySettings {
    /// Attempts after the first, default 2; 0 disables.
    pub attempts: u32,
    /// Upstream statuses that are retried, default 429, 502, 503, 504.
    pub on_status: Vec<u16>,
    /// Largest request body kept for a replay, default 1 MiB.
    pub max_body_size: u64,
}

/// `passive_health`: ejection after consecutive live failures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PassiveHealthSettings {
    /// Consecutive failures that eject a provider, default 5.
    pub failures: u32,
    /// First ejection in seconds, default 30; doubles on repeats, up to 10×.
    pub cooldown: Duration,
}

/// A provider's own values for the upstream timeouts; `None` takes the top level's.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UpstreamTimeoutOverrides {
    pub connect: Option<Duration>,
    pub first_byte: Option<Duration>,
    pub stream_idle: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpsConfig {
    pub addr: SocketAddr,
    pub cert_file: PathBuf,
    pub private_key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckSettings {
    /// `health_check.enabled`, default false.
    pub enabled: bool,
    /// `health_check.interval` in seconds, default 60, must be > 0.
    pub interval: Duration,
}

/// Where a provider key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecretSource {
    /// A key written in the file (after `${VAR}` expansion).
    Literal(String),
    /// `$(command)`: the command text between `$(` and the final `)`, run with `sh -c`.
    Command(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyConfig {
    pub source: SecretSource,
    /// Relative weight among the provider's keys, > 0. `api_key` alone gets 1.0.
    pub weight: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    /// Position in `providers[]`, for messages.
    pub index: usize,
    pub kind: ProviderType,
    /// `name`: how metrics, logs and `/status` call it; unique when given.
    pub name: Option<String>,
    /// The name in metrics, logs and `/status`: `name`, else
    /// `<type>:<endpoint>:<port>` (with `#<index>` when two would share it).
    pub metric_name: String,
    /// The routing host name from `host`, lower-cased, without port or path.
    pub host: String,
    /// The `:port` written in `host`, if any.
    pub host_port: Option<u16>,
    /// The `/prefix` written in `host`, if any: starts with `/`, no trailing `/`.
    pub path_prefix: Option<String>,
    /// Upstream host name or IP from `endpoint`, without port.
    pub endpoint: String,
    /// Upstream port: `:port` in `endpoint`, else `port`, else 443 with TLS / 80 without.
    pub port: u16,
    /// `tls`, default true.
    pub tls: bool,
    /// `weight`, default 1.0, > 0.
    pub weight: f64,
    /// `priority`, default 0; higher is preferred.
    pub priority: i64,
    /// `is_fallback`, default false.
    pub is_fallback: bool,
    /// From `api_key` (one key, weight 1) or `api_keys`. Empty only for `forward`.
    pub api_keys: Vec<ApiKeyConfig>,
    /// The provider's own client keys, accepted in addition to the global ones.
    pub auth_keys: Vec<String>,
    /// `client_auth`, default true; false (forward only) serves without a client key.
    pub client_auth: bool,
    pub health_check: Option<ProviderHealthCheck>,
    /// Per-provider `ca_file`; overrides the top-level one.
    pub ca_file: Option<PathBuf>,
    pub timeouts: UpstreamTimeoutOverrides,
    /// `stream_usage: inject` (openai only): ask for the usage chunk of a
    /// stream the client did not ask it for, and keep it from the client.
    pub inject_stream_usage: bool,
}

impl ProviderConfig {
    /// The route as written in `host`: name, optional port, optional prefix.
    pub fn route(&self) -> String {
        let port = self.host_port.map(|p| format!(":{p}")).unwrap_or_default();
        format!("{}{port}{}", self.host, self.path_prefix.as_deref().unwrap_or(""))
    }

    /// `providers[3] (host "x.local/v1")` — the prefix of every message about this provider.
    pub fn label(&self) -> String {
        format!("providers[{}] (host \"{}\")", self.index, self.route())
    }
}

mod address;
mod env;
mod error;
mod health_check;
mod limits;
mod positions;
mod provider;
mod raw;
mod resilience;
mod schema;
mod secret;
mod timeouts;
mod validate;

#[cfg(test)]
mod tests;

pub use validate::{force_health_checks, from_yaml_str, from_yaml_str_with, load_file, ConfigError, ConfigErrors};
