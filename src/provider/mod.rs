//! One upstream provider as the request path sees it: where it lives, how it
//! is chosen, which keys it holds, and its shared health flag. Built from a
//! validated [`ProviderConfig`]; immutable except for the health atomics.

pub mod kind;
pub mod secret;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use http::HeaderValue;
use rand::Rng;

use crate::config::{ApiKeyConfig, ProviderConfig, ProviderHealthCheck, ProviderType, SecretSource};
use crate::upstream::Endpoint;
use secret::{CommandSecret, Secret};

#[derive(Debug)]
pub struct Provider {
    pub index: usize,
    pub kind: ProviderType,
    /// The routing host as written (name, optional port and prefix), for logs.
    pub route_label: String,
    pub endpoint: Arc<Endpoint>,
    pub weight: f64,
    pub priority: i64,
    pub is_fallback: bool,
    pub keys: Vec<ApiKey>,
    /// The provider's own client keys; the global ones live in the snapshot.
    pub auth_keys: Vec<Box<[u8]>>,
    pub health_check: Option<ProviderHealthCheck>,
    pub health: Arc<Health>,
}

#[derive(Debug)]
pub struct ApiKey {
    pub secret: Secret,
    pub weight: f64,
}

impl Provider {
    pub fn new(cfg: &ProviderConfig, endpoint: Arc<Endpoint>, health: Arc<Health>) -> Result<Self, String> {
        let keys = cfg.api_keys.iter().map(api_key).collect::<Result<Vec<_>, _>>()?;
        let mut route_label = cfg.host.clone();
        if let Some(port) = cfg.host_port {
            route_label.push_str(&format!(":{port}"));
        }
        if let Some(prefix) = &cfg.path_prefix {
            route_label.push_str(prefix);
        }
        Ok(Provider {
            index: cfg.index,
            kind: cfg.kind,
            route_label,
            endpoint,
            weight: cfg.weight,
            priority: cfg.priority,
            is_fallback: cfg.is_fallback,
            keys,
            auth_keys: cfg.auth_keys.iter().map(|k| k.as_bytes().into()).collect(),
            health_check: cfg.health_check.clone(),
            health,
        })
    }

    /// One of the provider's keys, at random by key weight; `None` for `forward`.
    pub fn pick_key(&self, rng: &mut impl Rng) -> Option<&ApiKey> {
        let total: f64 = self.keys.iter().map(|k| k.weight).sum();
        let mut point = rng.gen_range(0.0..total.max(f64::MIN_POSITIVE));
        for key in &self.keys {
            if point < key.weight {
                return Some(key);
            }
            point -= key.weight;
        }
        self.keys.last()
    }

    pub fn is_healthy(&self) -> bool {
        self.health.healthy.load(Ordering::Relaxed)
    }
}

fn api_key(cfg: &ApiKeyConfig) -> Result<ApiKey, String> {
    let secret = match &cfg.source {
        SecretSource::Literal(text) => {
            let mut value =
                HeaderValue::from_str(text).map_err(|_| "api key is not a valid header value".to_string())?;
            value.set_sensitive(true);
            Secret::Literal(value)
        }
        SecretSource::Command(cmd) => Secret::Command(CommandSecret::new(cmd.clone())),
    };
    Ok(ApiKey { secret, weight: cfg.weight })
}

/// A provider's health, shared by every snapshot that has the same provider so a
/// reload does not forget what the checks found.
#[derive(Debug)]
pub struct Health {
    healthy: AtomicBool,
}

impl Health {
    pub fn set(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed)
    }
}

impl Default for Health {
    fn default() -> Self {
        Health { healthy: AtomicBool::new(true) }
    }
}

/// Health flags by provider identity: everything that makes it "the same
/// provider" across a reload (route, type, endpoint and the check itself).
#[derive(Debug, Default)]
pub struct HealthRegistry {
    // A std mutex: touched only while a snapshot is built, never on the request path.
    flags: Mutex<HashMap<String, Arc<Health>>>,
}

impl HealthRegistry {
    pub fn flag_for(&self, cfg: &ProviderConfig) -> Arc<Health> {
        let identity = format!(
            "{:?}|{}|{:?}|{:?}|{}|{}|{}|{:?}",
            cfg.kind, cfg.host, cfg.host_port, cfg.path_prefix, cfg.endpoint, cfg.port, cfg.tls, cfg.health_check
        );
        let mut flags = self.flags.lock().unwrap_or_else(|e| e.into_inner());
        flags.entry(identity).or_default().clone()
    }

    /// Drops flags no provider of the current snapshot uses.
    pub fn retain_used(&self) {
        let mut flags = self.flags.lock().unwrap_or_else(|e| e.into_inner());
        flags.retain(|_, flag| Arc::strong_count(flag) > 1);
    }
}
