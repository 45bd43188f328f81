//! Timeouts: the top-level ones (upstream and client side) and a provider's
//! overrides of the upstream ones. Seconds, fractions allowed; every timeout
//! must be greater than 0 except where a key says otherwise.

use std::time::Duration;

use super::raw::{RawConfig, RawProvider};
use super::validate::{Ctx, Scope};
use super::{Timeouts, UpstreamTimeoutOverrides};

/// The longest duration any key accepts: one year.
const MAX_SECONDS: f64 = 365.0 * 86_400.0;

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Bound {
    ZeroAllowed,
    Positive,
}

/// A duration in seconds (fractions allowed); `None` when absent or invalid
/// (then the problem is recorded).
pub(super) fn seconds(ctx: &mut Ctx<'_>, scope: &Scope, key: &str, raw: Option<f64>, bound: Bound) -> Option<Duration> {
    let value = raw?;
    let (low, wanted) = match bound {
        Bound::ZeroAllowed => (value >= 0.0, "0 or more"),
        Bound::Positive => (value > 0.0, "greater than 0"),
    };
    // A year is past any sensible wait, and keeps deadline arithmetic in range.
    let (ok, wanted) = if value > MAX_SECONDS { (false, "of at most a year") } else { (low, wanted) };
    match Duration::try_from_secs_f64(value) {
        Ok(duration) if ok => Some(duration),
        _ => {
            ctx.report(scope, key, format!("must be a number of seconds {wanted} (got {value})"));
            None
        }
    }
}

pub(super) fn top(ctx: &mut Ctx<'_>, raw: &RawConfig) -> Timeouts {
    let top = Scope::top();
    let mut get = |key: &str, value: Option<f64>, default: u64| {
        seconds(ctx, &top, key, value, Bound::Positive).unwrap_or(Duration::from_secs(default))
    };
    Timeouts {
        connect: get("connect_timeout", raw.connect_timeout, 10),
        first_byte: get("first_byte_timeout", raw.first_byte_timeout, 300),
        stream_idle: get("stream_idle_timeout", raw.stream_idle_timeout, 300),
        client_header: get("client_header_timeout", raw.client_header_timeout, 30),
        client_body: get("client_body_timeout", raw.client_body_timeout, 60),
        client_idle: get("client_idle_timeout", raw.client_idle_timeout, 60),
        tunnel_idle: get("tunnel_idle_timeout", raw.tunnel_idle_timeout, 600),
        client_send: get("client_send_timeout", raw.client_send_timeout, 60),
        tls_handshake: get("tls_handshake_timeout", raw.tls_handshake_timeout, 10),
    }
}

pub(super) fn provider(ctx: &mut Ctx<'_>, scope: &Scope, raw: &RawProvider) -> UpstreamTimeoutOverrides {
    let mut get = |key: &str, value: Option<f64>| seconds(ctx, scope, key, value, Bound::Positive);
    UpstreamTimeoutOverrides {
        connect: get("connect_timeout", raw.connect_timeout),
        first_byte: get("first_byte_timeout", raw.first_byte_timeout),
        stream_idle: get("stream_idle_timeout", raw.stream_idle_timeout),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::tests::{assert_error, errors, ok, with_provider};

    #[test]
    fn defaults_and_fractions() {
        let config = ok(&with_provider("http_port: 80"));
        let t = config.timeouts;
        let secs = |d: Duration| d.as_secs_f64();
        assert_eq!(
            [t.connect, t.first_byte, t.stream_idle, t.client_header, t.client_body, t.client_idle].map(secs),
            [10.0, 300.0, 300.0, 30.0, 60.0, 60.0]
        );
        let config = ok(&with_provider(
            "http_port: 80\nfirst_byte_timeout: 0.25\nstream_idle_timeout: 2\nclient_header_timeout: 1.5\n\
             client_body_timeout: 3\nclient_idle_timeout: 4",
        ));
        let t = config.timeouts;
        assert_eq!([t.first_byte, t.stream_idle].map(secs), [0.25, 2.0]);
        assert_eq!([t.client_header, t.client_body, t.client_idle].map(secs), [1.5, 3.0, 4.0]);
    }

    #[test]
    fn bad_values_name_their_key() {
        let errs = errors(&with_provider("http_port: 80\nfirst_byte_timeout: 0\nclient_idle_timeout: -1"));
        assert_error(&errs, "first_byte_timeout", &["first_byte_timeout", "greater than 0 (got 0)"]);
        assert_error(&errs, "client_idle_timeout", &["greater than 0 (got -1)"]);
        let errs = errors(&with_provider("http_port: 80\nstream_idle_timeout: 1e30"));
        assert_error(&errs, "stream_idle_timeout", &["at most a year"]);
    }
}
