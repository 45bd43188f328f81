//! A provider's health: the active checks' verdict, and the passive state
//! kept from live traffic — consecutive failures eject it for a cooldown that
//! doubles on repeated ejection (up to 10×) and resets on a success; once the
//! cooldown is over one request probes it before it takes full traffic again.
//! Shared by every snapshot that has the same provider, so a reload keeps it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The passive-health rules (`passive_health` in the config).
#[derive(Debug, Clone, Copy)]
pub struct PassiveHealth {
    /// Consecutive failures that eject.
    pub failures: u32,
    /// The first ejection's length.
    pub cooldown: Duration,
}

/// Longest ejection, as a multiple of the cooldown.
const MAX_COOLDOWN_FACTOR: u32 = 10;

/// Whether a provider may take a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Ready,
    /// Its ejection is over: one request may go, as a probe.
    Probe,
    /// Unhealthy or ejected; back at the given time when that is known.
    Out(Option<Instant>),
}

#[derive(Debug, Default)]
struct Passive {
    /// Live failures in a row.
    failures: u32,
    /// Ejections in a row (each doubles the next cooldown).
    ejections: u32,
    ejected_until: Option<Instant>,
    /// A probe request is in flight.
    probing: bool,
}

#[derive(Debug)]
pub struct Health {
    /// The active checks' verdict.
    healthy: AtomicBool,
    /// Whether the passive state is anything but clean (a failure counted, an
    /// ejection or a probe): lets the common case skip the lock.
    troubled: AtomicBool,
    /// A std mutex: held for a few field updates, never across an await.
    passive: Mutex<Passive>,
    /// The last active check: its verdict and when (for `/status`).
    last_check: Mutex<Option<(bool, std::time::SystemTime)>>,
    /// Requests being sent to the provider now (for `/status`).
    in_flight: std::sync::atomic::AtomicUsize,
}

/// Counts a request to a provider as in flight while it lives.
#[derive(Debug)]
pub struct InFlight(Arc<Health>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Default for Health {
    fn default() -> Self {
        Health {
            healthy: AtomicBool::new(true),
            troubled: AtomicBool::new(false),
            passive: Mutex::default(),
            last_check: Mutex::default(),
            in_flight: Default::default(),
        }
    }
}

impl Health {
    /// Records the active checks' verdict; returns the previous one.
    pub fn set(&self, healthy: bool) -> bool {
        *self.last_check.lock().unwrap_or_else(|e| e.into_inner()) = Some((healthy, std::time::SystemTime::now()));
        self.healthy.swap(healthy, Ordering::Relaxed)
    }

    /// Checks are off: healthy, and no check to report.
    pub fn clear(&self) {
        *self.last_check.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.healthy.store(true, Ordering::Relaxed);
    }

    /// The last active check's verdict and time, if one ran.
    pub fn last_check(&self) -> Option<(bool, std::time::SystemTime)> {
        *self.last_check.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts counting a request as in flight.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn availability(&self, now: Instant) -> Availability {
        if !self.healthy.load(Ordering::Relaxed) {
            return Availability::Out(None);
        }
        if !self.troubled.load(Ordering::Acquire) {
            return Availability::Ready;
        }
        let passive = self.lock();
        match passive.ejected_until {
            None => Availability::Ready,
            Some(until) if now < until => Availability::Out(Some(until)),
            Some(_) if passive.probing => Availability::Out(None),
            Some(_) => Availability::Probe,
        }
    }

    /// Claims the probe of a provider whose ejection is over; false if another
    /// request already holds it.
    pub fn begin_probe(&self) -> bool {
        let mut passive = self.lock();
        self.troubled.store(true, Ordering::Release);
        !std::mem::replace(&mut passive.probing, true)
    }

    /// A probe ended without telling anything (its client left): let the next request probe.
    pub fn abandon_probe(&self) {
        self.lock().probing = false;
    }

    /// A live request succeeded: full traffic again, counters reset. While
    /// ejected only the probe's success counts (others started before).
    pub fn success(&self, probe: bool) {
        if !self.troubled.load(Ordering::Acquire) {
            return;
        }
        let mut passive = self.lock();
        if passive.ejected_until.is_some() && !probe {
            return;
        }
        *passive = Passive::default();
        self.troubled.store(false, Ordering::Release);
    }

    /// A live request failed (connect error, timeout, 5xx). Returns the length
    /// of the ejection it caused, if it caused one.
    pub fn failure(&self, rules: &PassiveHealth, probe: bool) -> Option<Duration> {
        let mut passive = self.lock();
        self.troubled.store(true, Ordering::Release);
        if passive.ejected_until.is_some() {
            if !probe {
                return None; // a request from before the ejection: already counted
            }
            // The probe failed: out again, for longer.
        } else {
            passive.failures += 1;
            if passive.failures < rules.failures {
                return None;
            }
        }
        let factor = 2u32.saturating_pow(passive.ejections).min(MAX_COOLDOWN_FACTOR);
        let cooldown = rules.cooldown * factor;
        passive.ejections = passive.ejections.saturating_add(1);
        passive.ejected_until = Some(Instant::now() + cooldown);
        passive.failures = 0;
        passive.probing = false;
        Some(cooldown)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Passive> {
        self.passive.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Health by provider identity: everything that makes it "the same provider"
/// across a reload (route, type, endpoint, keys and the check itself).
#[derive(Debug, Default)]
pub struct HealthRegistry {
    // A std mutex: touched only while a snapshot is built, never on the request path.
    flags: Mutex<HashMap<String, Arc<Health>>>,
}

impl HealthRegistry {
    /// The health of the provider that `identity` names (the caller decides what
    /// makes two providers of successive configs the same).
    pub fn flag_for(&self, identity: String) -> Arc<Health> {
        let mut flags = self.flags.lock().unwrap_or_else(|e| e.into_inner());
        flags.entry(identity).or_default().clone()
    }

    /// Drops the health of providers no snapshot uses any more.
    pub fn retain_used(&self) {
        let mut flags = self.flags.lock().unwrap_or_else(|e| e.into_inner());
        flags.retain(|_, flag| Arc::strong_count(flag) > 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: PassiveHealth = PassiveHealth { failures: 3, cooldown: Duration::from_secs(10) };

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_and_a_probe_readmits() {
        let health = Health::default();
        assert_eq!(health.failure(&RULES, false), None);
        health.success(false);
        let twice = (health.failure(&RULES, false), health.failure(&RULES, false));
        assert_eq!(twice, (None, None), "a success reset the count");
        assert_eq!(health.failure(&RULES, false), Some(Duration::from_secs(10)));
        assert_eq!(health.failure(&RULES, false), None, "a late failure of an older request changes nothing");
        health.success(false);
        assert!(matches!(health.availability(Instant::now()), Availability::Out(Some(_))), "nor does a late success");
        assert!(matches!(health.availability(Instant::now()), Availability::Out(Some(_))));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(health.availability(Instant::now()), Availability::Probe);
        assert!(health.begin_probe() && !health.begin_probe(), "one probe at a time");
        assert_eq!(health.availability(Instant::now()), Availability::Out(None));
        health.abandon_probe();
        assert!(health.begin_probe());
        health.success(true);
        assert_eq!(health.availability(Instant::now()), Availability::Ready);
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_ejections_double_up_to_ten_times() {
        let health = Health::default();
        let rules = PassiveHealth { failures: 1, ..RULES };
        let mut lengths = Vec::new();
        for _ in 0..6 {
            let probe = !lengths.is_empty();
            lengths.push(health.failure(&rules, probe).unwrap().as_secs());
            tokio::time::advance(Duration::from_secs(100)).await;
            assert!(health.begin_probe());
        }
        assert_eq!(lengths, [10, 20, 40, 80, 100, 100]);
        health.set(false);
        assert_eq!(health.availability(Instant::now()), Availability::Out(None), "active checks still count");
    }
}
