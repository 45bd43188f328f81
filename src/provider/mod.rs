//! One upstream provider as the request path sees it: its type and the rules
//! that come with it (`kind`), where it lives, how it is chosen, which keys it
//! holds (`secret`), and its shared health flag. Immutable except for the
//! health atomics; `state` builds it from the config, which it never sees.

pub mod kind;
pub mod secret;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rand::Rng;

pub use kind::ProviderType;
use secret::Secret;

use crate::select::{self, Class};
use crate::upstream::{Endpoint, Timeouts};

/// What a provider's active health check sends.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderHealthCheck {
    /// Upper-case method, default GET.
    pub method: String,
    /// Must start with `/`.
    pub path: String,
    pub body: Option<String>,
    /// `"Name: value"` lines split at the first colon, both sides trimmed.
    pub headers: Vec<(String, String)>,
}

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
    /// The upstream timeouts: the provider's own, else the top level's.
    pub timeouts: Timeouts,
}

#[derive(Debug)]
pub struct ApiKey {
    pub secret: Secret,
    pub weight: f64,
}

impl Provider {
    /// One of the provider's keys, at random by key weight; `None` for `forward`.
    pub fn pick_key(&self, rng: &mut impl Rng) -> Option<&ApiKey> {
        select::choose(&self.keys, |k| Class::weighted(k.weight), rng)
    }

    pub fn is_healthy(&self) -> bool {
        self.health.healthy.load(Ordering::Relaxed)
    }
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
    /// The flag for the provider that `identity` names (the caller decides what
    /// makes two providers of successive configs the same).
    pub fn flag_for(&self, identity: String) -> Arc<Health> {
        let mut flags = self.flags.lock().unwrap_or_else(|e| e.into_inner());
        flags.entry(identity).or_default().clone()
    }

    /// Drops flags no provider of the current snapshot uses.
    pub fn retain_used(&self) {
        let mut flags = self.flags.lock().unwrap_or_else(|e| e.into_inner());
        flags.retain(|_, flag| Arc::strong_count(flag) > 1);
    }
}
