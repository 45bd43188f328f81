//! Resource limits at the top level: how many client connections, HTTP/2
//! streams and header bytes a client may hold, and how many connection
//! attempts one upstream endpoint may have in flight. Every one has a safe
//! default; an operator raises or lowers it within a sane range.

use super::raw::RawConfig;
use super::validate::{Ctx, Scope};

#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionLimits {
    /// `max_connections`: client connections open at once across the proxy
    /// listeners, default 10000; at the limit, accepting pauses.
    pub max_connections: usize,
    /// `h2_max_concurrent_streams`: streams one HTTP/2 client may have open,
    /// default 256.
    pub h2_max_concurrent_streams: u32,
    /// `h2_max_header_list_size`: decoded header bytes of one HTTP/2 request
    /// (HPACK's count, 32 bytes per field on top), default twice
    /// `http_max_header_size`.
    pub h2_max_header_list_size: u32,
    /// `upstream_max_connecting`: connection attempts (TCP and TLS) in flight
    /// to one upstream endpoint, default 100; more wait for one to finish.
    pub upstream_max_connecting: usize,
}

fn bounded(ctx: &mut Ctx<'_>, key: &str, raw: Option<i64>, range: (i64, i64), default: i64) -> i64 {
    match raw {
        None => default,
        Some(n) if (range.0..=range.1).contains(&n) => n,
        Some(n) => {
            ctx.report(&Scope::top(), key, format!("must be between {} and {} (got {n})", range.0, range.1));
            default
        }
    }
}

pub(super) fn limits(ctx: &mut Ctx<'_>, raw: &RawConfig, max_header_size: usize) -> ConnectionLimits {
    let list_default = i64::try_from(max_header_size * 2).unwrap_or(8192);
    let number = |n: i64| usize::try_from(n).unwrap_or(1);
    ConnectionLimits {
        max_connections: number(bounded(ctx, "max_connections", raw.max_connections, (1, 1_000_000), 10_000)),
        h2_max_concurrent_streams: bounded(
            ctx,
            "h2_max_concurrent_streams",
            raw.h2_max_concurrent_streams,
            (1, 10_000),
            256,
        ) as u32,
        h2_max_header_list_size: bounded(
            ctx,
            "h2_max_header_list_size",
            raw.h2_max_header_list_size,
            (1024, 16 * 1024 * 1024),
            list_default,
        ) as u32,
        upstream_max_connecting: number(bounded(
            ctx,
            "upstream_max_connecting",
            raw.upstream_max_connecting,
            (1, 100_000),
            100,
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{assert_error, errors, ok, with_provider};

    #[test]
    fn defaults_follow_the_header_size_and_ranges_are_checked() {
        let limits = ok(&with_provider("http_port: 80")).limits;
        assert_eq!(
            (limits.max_connections, limits.h2_max_concurrent_streams, limits.h2_max_header_list_size),
            (10_000, 256, 8192)
        );
        assert_eq!(limits.upstream_max_connecting, 100);
        let set = ok(&with_provider(
            "http_port: 80\nhttp_max_header_size: 16384\nmax_connections: 5\nh2_max_concurrent_streams: 10\n\
             upstream_max_connecting: 2",
        ))
        .limits;
        assert_eq!((set.max_connections, set.h2_max_concurrent_streams, set.h2_max_header_list_size), (5, 10, 32768));
        assert_eq!(set.upstream_max_connecting, 2);
        for (key, bad, range) in [
            ("max_connections", "0", "between 1 and 1000000"),
            ("h2_max_concurrent_streams", "10001", "between 1 and 10000"),
            ("h2_max_header_list_size", "100", "between 1024 and 16777216"),
            ("upstream_max_connecting", "-3", "between 1 and 100000"),
        ] {
            let errs = errors(&with_provider(&format!("http_port: 80\n{key}: {bad}")));
            assert_error(&errs, key, &[range, bad]);
        }
    }
}
