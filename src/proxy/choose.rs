//! Choosing the provider for an attempt: the selection rules (priority,
//! weight, fallback) over the providers that accepted the client's key and
//! can take a request now — healthy, not ejected, with a key in rotation,
//! and not tried yet for this request. When none can, the answer says why
//! and when to come back.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::ProxyError;
use crate::provider::{Availability, Provider};
use crate::select::{self, Class};

/// A provider chosen for an attempt. When its ejection had just ended, this
/// attempt is the probe: if it ends without a verdict (the client left), the
/// drop lets the next request probe instead.
#[derive(Debug)]
pub struct Chosen {
    pub provider: Arc<Provider>,
    /// Its position among the candidates.
    pub index: usize,
    probe: bool,
}

impl Chosen {
    /// A provider taken as is (active health checks).
    pub fn direct(provider: Arc<Provider>) -> Chosen {
        Chosen { provider, index: 0, probe: false }
    }

    /// The same provider again (another of its keys), not as a probe.
    pub fn again(&self) -> Chosen {
        Chosen { provider: self.provider.clone(), index: self.index, probe: false }
    }

    /// The attempt told something about the provider's health; returns
    /// whether it was the probe.
    pub fn settle(&mut self) -> bool {
        std::mem::take(&mut self.probe)
    }
}

impl Drop for Chosen {
    fn drop(&mut self) {
        if self.probe {
            self.provider.health.abandon_probe();
        }
    }
}

/// A provider for the next attempt, skipping the candidates in `tried`.
pub fn choose(candidates: &[Arc<Provider>], tried: &[usize], now: Instant) -> Option<Chosen> {
    choose_among(candidates, tried, now, true)
}

/// The same, for a CONNECT tunnel, which sends no provider key: resting keys
/// do not rule a provider out.
pub fn choose_for_tunnel(candidates: &[Arc<Provider>], tried: &[usize], now: Instant) -> Option<Chosen> {
    choose_among(candidates, tried, now, false)
}

fn choose_among(candidates: &[Arc<Provider>], tried: &[usize], now: Instant, needs_key: bool) -> Option<Chosen> {
    // A provider whose probe another request just claimed is passed over.
    let mut lost_probes: Vec<usize> = Vec::new();
    loop {
        let class = |i: usize| {
            let p = &candidates[i];
            Class {
                usable: !tried.contains(&i)
                    && !lost_probes.contains(&i)
                    && !matches!(p.health.availability(now), Availability::Out(_))
                    && (!needs_key || p.has_key_for(now)),
                fallback: p.is_fallback,
                priority: p.priority,
                weight: p.weight,
            }
        };
        let index = select::choose_index(candidates.len(), class, &mut rand::thread_rng())?;
        let provider = &candidates[index];
        let probe = provider.health.availability(now) == Availability::Probe;
        if probe && !provider.health.begin_probe() {
            // Each pass rules one more out, so this ends.
            lost_probes.push(index);
            continue;
        }
        return Some(Chosen { provider: Arc::clone(provider), index, probe });
    }
}

/// Why no candidate can take the request: every usable one has all its keys
/// resting (429, back at the soonest key), or none is healthy (503, back when
/// the first ejection ends, if one will).
pub fn unavailable(candidates: &[Arc<Provider>], now: Instant) -> ProxyError {
    let healthy = candidates.iter().filter(|p| !matches!(p.health.availability(now), Availability::Out(_)));
    if let Some(back) = healthy.filter_map(|p| p.keys_back_at(now)).min() {
        return ProxyError::RateLimited { retry_after: round_up(back - now) };
    }
    let back = candidates
        .iter()
        .filter_map(|p| match p.health.availability(now) {
            Availability::Out(Some(at)) => Some(at),
            _ => None,
        })
        .min();
    ProxyError::NoHealthyProvider { retry_after: back.map(|at| round_up(at - now)) }
}

/// Why `provider` has no key to send with: all resting (429) or refused (503).
pub fn no_key(provider: &Provider, now: Instant) -> ProxyError {
    match provider.keys_back_at(now) {
        Some(back) => ProxyError::RateLimited { retry_after: round_up(back - now) },
        None => ProxyError::NoHealthyProvider { retry_after: None },
    }
}

/// Whole seconds, at least one: what `Retry-After` can say.
fn round_up(wait: Duration) -> Duration {
    Duration::from_secs(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(Duration::from_secs(1))
}
