//! One upstream provider as the request path sees it: its type and the rules
//! that come with it (`kind`), where it lives, how it is chosen, which keys it
//! holds (`secret`), and its shared health flag. Immutable except for the
//! health atomics; `state` builds it from the config, which it never sees.

mod health;
mod keys;
pub mod kind;
pub mod secret;

use std::sync::Arc;

pub use health::{Availability, Health, HealthRegistry, InFlight, PassiveHealth};
pub use keys::ApiKey;
pub use kind::ProviderType;

use rand::Rng;
use tokio::time::Instant;

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
    /// Its metric handles (labels: the route and `name`, or `type:endpoint:port`).
    pub metrics: Arc<crate::metrics::ProviderMetrics>,
    pub endpoint: Arc<Endpoint>,
    pub weight: f64,
    pub priority: i64,
    pub is_fallback: bool,
    pub keys: Vec<ApiKey>,
    /// The provider's own client keys; the global ones live in the snapshot.
    pub auth_keys: Vec<Box<[u8]>>,
    /// What logs call each of them, in the same order.
    pub auth_key_labels: Vec<Arc<str>>,
    /// False: served without a client key (a `forward` behind another auth layer).
    pub client_auth: bool,
    pub health_check: Option<ProviderHealthCheck>,
    pub health: Arc<Health>,
    /// The upstream timeouts: the provider's own, else the top level's.
    pub timeouts: Timeouts,
    /// `stream_usage: inject` (see `proxy::stream_usage`).
    pub inject_stream_usage: bool,
}

impl Provider {
    /// One of the keys in rotation (not resting after a 429, not refused with
    /// 401/403), at random by key weight, skipping the indexes in `tried`.
    /// `None` when none is left (and always for `forward`, which has none).
    pub fn pick_key(&self, rng: &mut impl Rng, now: Instant, tried: &[usize]) -> Option<(usize, &ApiKey)> {
        let keys = &self.keys;
        let class = |i: usize| Class {
            usable: keys[i].in_rotation(now) && !tried.contains(&i),
            ..Class::weighted(keys[i].weight)
        };
        select::choose_index(keys.len(), class, rng).map(|i| (i, &keys[i]))
    }

    /// Whether a request could be sent now as far as keys go.
    pub fn has_key_for(&self, now: Instant) -> bool {
        self.keys.is_empty() || self.keys.iter().any(|k| k.in_rotation(now))
    }

    /// When the first resting key is back, if every key rests.
    pub fn keys_back_at(&self, now: Instant) -> Option<Instant> {
        if self.has_key_for(now) {
            return None;
        }
        self.keys.iter().filter_map(|k| k.resting_until(now)).min()
    }
}
