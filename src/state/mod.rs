//! The application's state. [`Snapshot`]: everything the request path reads
//! from the configuration (routes, providers, client keys, TLS, [`Limits`]),
//! built whole and swapped in as one `Arc` on reload. [`App`]: that snapshot
//! plus what outlives reloads (health flags, shared by every thread; upstream
//! pools, one set per worker thread so a connection stays on the thread
//! whose reactor owns it).

mod build;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{Config, HealthCheckSettings};
use crate::provider::{HealthRegistry, PassiveHealth, Provider};
use crate::route::Router;
use crate::upstream::Pools;

/// Sizes and client-side timeouts, in one place, built from the config. The
/// upstream timeouts can differ by provider, so each `Provider` carries its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Largest request head a client may send (`http_max_header_size`).
    pub max_header_size: usize,
    /// Largest response head accepted from an upstream.
    pub upstream_max_head: usize,
    /// How long in-flight requests may finish after SIGTERM.
    pub graceful_shutdown_timeout: Duration,
    /// An idle keep-alive client connection (HTTP/1.1 between requests,
    /// HTTP/2 with no open stream) is closed after this long.
    pub client_idle_timeout: Duration,
    /// A client has this long to send a whole request head once it started one.
    pub client_header_timeout: Duration,
    /// A request body may stall this long between two reads.
    pub client_body_timeout: Duration,
    /// TLS and HTTP/2 handshakes with a client must finish within this.
    pub handshake_timeout: Duration,
    /// A tunnel (WebSocket, CONNECT) quiet in both directions is closed after this.
    pub tunnel_idle_timeout: Duration,
    /// Most fields a request head may have (`http_max_header_count`).
    pub max_header_count: usize,
    /// Largest request body taken (`max_request_body_size`), if any.
    pub max_request_body: Option<u64>,
    /// A write to a client that makes no progress for this long gives up
    /// on the client (`client_send_timeout`).
    pub client_send_timeout: Duration,
    /// Client connections open at once across the proxy listeners.
    pub max_connections: usize,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_header_list_size: u32,
}

impl Limits {
    /// Upstream response heads may be larger than what we accept from clients.
    const UPSTREAM_MAX_HEAD: usize = 64 * 1024;

    pub fn from_config(config: &Config) -> Limits {
        Limits {
            max_header_size: config.http_max_header_size,
            upstream_max_head: Self::UPSTREAM_MAX_HEAD.max(config.http_max_header_size),
            graceful_shutdown_timeout: config.graceful_shutdown_timeout,
            client_idle_timeout: config.timeouts.client_idle,
            client_header_timeout: config.timeouts.client_header,
            client_body_timeout: config.timeouts.client_body,
            handshake_timeout: config.timeouts.tls_handshake,
            tunnel_idle_timeout: config.timeouts.tunnel_idle,
            max_request_body: config.max_request_body_size,
            max_header_count: config.http_max_header_count,
            client_send_timeout: config.timeouts.client_send,
            max_connections: config.limits.max_connections,
            h2_max_concurrent_streams: config.limits.h2_max_concurrent_streams,
            h2_max_header_list_size: config.limits.h2_max_header_list_size,
        }
    }
}

#[derive(Debug)]
pub struct Snapshot {
    pub config: Config,
    pub router: Router,
    pub providers: Vec<Arc<Provider>>,
    /// Global client keys.
    pub auth_keys: Vec<Box<[u8]>>,
    /// Every client key of the config (global and each provider's): none of
    /// them may leave the proxy, whichever provider a request goes to.
    pub every_client_key: Vec<Box<[u8]>>,
    /// What logs call each global client key (its name, or a fingerprint),
    /// in the order of `auth_keys`.
    pub auth_key_labels: Vec<Arc<str>>,
    pub limits: Limits,
    pub health_check: HealthCheckSettings,
    /// When live failures eject a provider.
    pub passive_health: PassiveHealth,
    /// The HTTPS listener's TLS settings, rebuilt (certificates re-read) on reload.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// What logs call a client key: the name the config gives it, or `key-` and
/// 8 hex digits of its domain-separated SHA-256 (which does not give a long
/// random key away). Worked out once, when the snapshot is built.
pub(crate) fn client_key_label(key: &str, names: &[(String, String)]) -> Arc<str> {
    if let Some((_, name)) = names.iter().find(|(k, _)| k == key) {
        return Arc::from(name.as_str());
    }
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"openproxy client key\0");
    context.update(key.as_bytes());
    let hex: String = context.finish().as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect();
    Arc::from(format!("key-{hex}"))
}

/// The long-lived state a worker's connections share: the current snapshot
/// plus what outlives reloads.
#[derive(Debug)]
pub struct App {
    /// One for the whole process: a reload is seen by every worker at once.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// This worker's own idle upstream connections.
    pub pools: Arc<Pools>,
    pub health: Arc<HealthRegistry>,
}

impl App {
    pub fn new(snapshot: Snapshot, health: HealthRegistry) -> Self {
        App { snapshot: Arc::new(ArcSwap::from_pointee(snapshot)), pools: Arc::default(), health: Arc::new(health) }
    }

    /// The same configuration and health, with upstream pools of its own.
    pub fn for_worker(&self) -> App {
        App { snapshot: self.snapshot.clone(), pools: Arc::default(), health: self.health.clone() }
    }
}

#[cfg(test)]
impl App {
    /// An app on a config given as YAML text, for unit tests of the handler and drivers.
    pub fn from_yaml(yaml: &str) -> App {
        let config = crate::config::from_yaml_str(yaml).expect("test config is valid");
        let health = HealthRegistry::default();
        let snapshot = Snapshot::build(config, &health).expect("test snapshot builds");
        App::new(snapshot, health)
    }

    /// Changes the limits of the current snapshot.
    pub fn set_limits(&self, change: impl FnOnce(&mut Limits)) {
        let current = self.snapshot.load_full();
        let config = current.config.clone();
        let mut snapshot = Snapshot::build(config, &self.health).expect("test snapshot builds");
        change(&mut snapshot.limits);
        self.snapshot.store(Arc::new(snapshot));
    }
}
