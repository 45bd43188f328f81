//! `retry` and `passive_health`: how failures before the first response byte
//! are retried, and when live failures take a provider out of rotation.

use std::time::Duration;

use super::raw::{RawPassiveHealth, RawRetry};
use super::timeouts::{self, Bound};
use super::validate::{Ctx, Scope};
use super::{PassiveHealthSettings, RetrySettings};

const DEFAULT_ON_STATUS: [u16; 4] = [429, 502, 503, 504];
const MAX_ATTEMPTS: i64 = 10;

pub(super) fn retry(ctx: &mut Ctx<'_>, raw: Option<&RawRetry>) -> RetrySettings {
    let top = Scope::top();
    let attempts = match raw.and_then(|r| r.attempts) {
        None => 2,
        Some(n @ 0..=MAX_ATTEMPTS) => n as u32,
        Some(n) => {
            ctx.report(&top, "retry.attempts", format!("must be between 0 and {MAX_ATTEMPTS} (got {n})"));
            2
        }
    };
    let on_status = match raw.and_then(|r| r.on_status.as_ref()) {
        None => DEFAULT_ON_STATUS.to_vec(),
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, &code)| match u16::try_from(code) {
                Ok(code @ 400..=599) => Some(code),
                _ => {
                    let problem = format!("must be an error status between 400 and 599 (got {code})");
                    ctx.report(&top, &format!("retry.on_status[{i}]"), problem);
                    None
                }
            })
            .collect(),
    };
    let max_body_size = match raw.and_then(|r| r.max_body_size) {
        None => 1024 * 1024,
        Some(n) if n >= 0 => n as u64,
        Some(n) => {
            ctx.report(&top, "retry.max_body_size", format!("must be a number of bytes, 0 or more (got {n})"));
            1024 * 1024
        }
    };
    RetrySettings { attempts, on_status, max_body_size }
}

pub(super) fn passive_health(ctx: &mut Ctx<'_>, raw: Option<&RawPassiveHealth>) -> PassiveHealthSettings {
    let top = Scope::top();
    let failures = match raw.and_then(|p| p.failures) {
        None => 5,
        Some(n @ 1..=1000) => n as u32,
        Some(n) => {
            ctx.report(&top, "passive_health.failures", format!("must be between 1 and 1000 (got {n})"));
            5
        }
    };
    let cooldown =
        timeouts::seconds(ctx, &top, "passive_health.cooldown", raw.and_then(|p| p.cooldown), Bound::Positive)
            .unwrap_or(Duration::from_secs(30));
    PassiveHealthSettings { failures, cooldown }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::tests::{assert_error, errors, ok, with_provider};

    #[test]
    fn defaults() {
        let config = ok(&with_provider("http_port: 80"));
        assert_eq!((config.retry.attempts, config.retry.max_body_size), (2, 1024 * 1024));
        assert_eq!(config.retry.on_status, vec![429, 502, 503, 504]);
        assert_eq!(config.passive_health.failures, 5);
        assert_eq!(config.passive_health.cooldown, Duration::from_secs(30));
    }

    #[test]
    fn values_and_errors() {
        let config = ok(&with_provider(
            "http_port: 80\nretry: {attempts: 0, on_status: [500], max_body_size: 10}\npassive_health: {failures: 2, cooldown: 0.5}",
        ));
        assert_eq!(
            (config.retry.attempts, config.retry.on_status.as_slice(), config.retry.max_body_size),
            (0, &[500][..], 10)
        );
        assert_eq!((config.passive_health.failures, config.passive_health.cooldown), (2, Duration::from_millis(500)));
        let errs = errors(&with_provider(
            "http_port: 80\nretry: {attempts: 11, on_status: [200], max_body_size: -1}\npassive_health: {failures: 0, cooldown: 0}",
        ));
        assert_error(&errs, "retry.attempts", &["between 0 and 10 (got 11)"]);
        assert_error(&errs, "retry.on_status[0]", &["between 400 and 599 (got 200)"]);
        assert_error(&errs, "retry.max_body_size", &["0 or more (got -1)"]);
        assert_error(&errs, "passive_health.failures", &["between 1 and 1000 (got 0)"]);
        assert_error(&errs, "passive_health.cooldown", &["greater than 0 (got 0)"]);
        let errs = errors(&with_provider("http_port: 80\nretry: {attemps: 1}"));
        assert!(errs.iter().any(|e| e.message.contains("attemps")), "{errs:#?}");
    }
}
