//! Raw config to typed [`Config`]: defaults, `${VAR}` expansion, range and
//! consistency checks. Every problem is collected, not just the first.
//!
//! This file owns the entry points and the top-level keys; providers are in
//! `provider.rs` (their `health_check` in `health_check.rs`), keys in
//! `secret.rs`, host/endpoint syntax in `address.rs`.

use std::fmt::Display;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::env::expand;
pub use super::error::{ConfigError, ConfigErrors};
use super::positions::Positions;
use super::raw::{self, RawConfig, RawHealthCheck};
use super::timeouts::{self, Bound};
use super::{provider, resilience, secret, Config, HealthCheckSettings, HttpsConfig};

const DEFAULT_BIND_ADDRESS: &str = "0.0.0.0";
const DEFAULT_HEADER_SIZE: i64 = 4096;
const MIN_HEADER_SIZE: i64 = 1024;
const MAX_HEADER_SIZE: i64 = 1024 * 1024;

/// Parse, expand `${VAR}` from the process environment, validate. All
/// validation problems are collected; YAML syntax/type/unknown-key errors stop
/// at the first (serde's limit) and carry its line and column.
pub fn from_yaml_str(text: &str) -> Result<Config, ConfigErrors> {
    from_yaml_str_with(text, &|name| std::env::var(name).ok())
}

/// Set by the deprecated `--enable-health-check` flag: every config this
/// process loads (reloads included) runs active health checks.
static FORCE_HEALTH_CHECKS: AtomicBool = AtomicBool::new(false);

/// Turns active health checks on for every config loaded from now on.
pub fn force_health_checks() {
    FORCE_HEALTH_CHECKS.store(true, Ordering::Relaxed);
}

/// Reads the file (an error names the path and the OS error), then [`from_yaml_str`].
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("(file)", format!("cannot read config file {}: {e}", path.display())))?;
    // Relative paths in the file mean "next to the config", wherever the
    // process runs from (as nginx resolves them against its prefix).
    let base = std::path::absolute(path).ok().and_then(|p| p.parent().map(Path::to_path_buf));
    let mut config = parse(&text, &|name| std::env::var(name).ok(), base.as_deref())?;
    if FORCE_HEALTH_CHECKS.load(Ordering::Relaxed) {
        config.health_check.enabled = true;
        let advice = "--enable-health-check is deprecated; set health_check.enabled: true in the config";
        config.deprecations.push(advice.into());
    }
    Ok(config)
}

/// [`from_yaml_str`] with the environment given as a function, for tests and
/// the fuzz target (which need a fixed one).
pub fn from_yaml_str_with(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    parse(text, env, None)
}

/// Parses and validates; relative file paths are joined to `base` when given.
fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>, base: Option<&Path>) -> Result<Config, ConfigErrors> {
    // Editors on Windows start UTF-8 files with a byte order mark, which the
    // YAML parser would take for part of the first key.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let raw::Parsed { raw, errors, positions } = raw::parse(text)?;
    let Some(raw) = raw else {
        return Err(placed(errors, &positions, 0));
    };
    let shape_errors = errors.len();
    let mut ctx = Ctx { env, base, errors, deprecations: Vec::new(), client_key_names: Vec::new() };
    let mut config = validate(&mut ctx, raw);
    config.deprecations = std::mem::take(&mut ctx.deprecations);
    config.client_key_names = std::mem::take(&mut ctx.client_key_names);
    config.source_hash = source_hash(text);
    if ctx.errors.is_empty() {
        return Ok(config);
    }
    Err(placed(ctx.errors, &positions, shape_errors))
}

/// Every problem with its line and column, in file order (those without a
/// place last). The first `shape_errors` came from the shape check: a value
/// it removed is absent to the checks after, and what they say of the same
/// key only repeats the first problem.
fn placed(errors: Vec<ConfigError>, positions: &Positions, shape_errors: usize) -> ConfigErrors {
    let shape: std::collections::HashSet<String> = errors[..shape_errors].iter().map(|e| e.key.clone()).collect();
    let mut errors: Vec<ConfigError> = errors
        .into_iter()
        .enumerate()
        .filter(|(i, e)| *i < shape_errors || !shape.contains(&e.key))
        .map(|(_, e)| e)
        .collect();
    for error in &mut errors {
        if let (Some((line, column)), false) = (positions.of(&error.key), error.message.contains(" at line ")) {
            error.message.push_str(&format!(" (line {line}, column {column})"));
        }
    }
    errors.sort_by_cached_key(|e| positions.of(&e.key).unwrap_or((usize::MAX, 0)));
    ConfigErrors(errors)
}

fn source_hash(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a value sits, for messages: the key prefix (`providers[2].`) and the
/// human label (`providers[2] (host "a.local")`), both empty at the top level.
pub(super) struct Scope {
    key_prefix: String,
    label: String,
}

impl Scope {
    pub(super) fn top() -> Scope {
        Scope { key_prefix: String::new(), label: String::new() }
    }

    /// Uses the host in the label when it is known, as `ProviderConfig::label` does.
    pub(super) fn provider(index: usize, host: Option<&str>) -> Scope {
        let label = match host {
            Some(host) => format!("providers[{index}] (host {host:?})"),
            None => format!("providers[{index}]"),
        };
        Scope { key_prefix: format!("providers[{index}]."), label }
    }

    pub(super) fn key(&self, field: &str) -> String {
        format!("{}{field}", self.key_prefix)
    }

    fn lead(&self) -> String {
        if self.label.is_empty() {
            String::new()
        } else {
            format!("{}: ", self.label)
        }
    }
}

/// Validation state: the environment lookup and the problems found so far.
pub(super) struct Ctx<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    /// The config file's directory: relative paths are taken from there.
    base: Option<&'a Path>,
    /// Client keys that have a name, and the name.
    client_key_names: Vec<(String, String)>,
    errors: Vec<ConfigError>,
    deprecations: Vec<String>,
}

impl Ctx<'_> {
    /// Names a client key; `Err` if it already has another name.
    pub(super) fn name_client_key(&mut self, key: &str, name: &str) -> Result<(), ()> {
        match self.client_key_names.iter().find(|(k, _)| k == key) {
            Some((_, existing)) if existing != name => Err(()),
            Some(_) => Ok(()),
            None => {
                self.client_key_names.push((key.to_string(), name.to_string()));
                Ok(())
            }
        }
    }

    /// Records a form that still works but should be written another way.
    pub(super) fn deprecated(&mut self, scope: &Scope, field: &str, advice: impl Display) {
        self.deprecations.push(format!("{}{field} {advice}", scope.lead()));
    }

    /// Records `<label>: <field> <problem>`, e.g. `... : weight must be > 0`.
    pub(super) fn report(&mut self, scope: &Scope, field: &str, problem: impl Display) {
        let message = format!("{}{field} {problem}", scope.lead());
        self.errors.push(ConfigError::new(scope.key(field), message));
    }

    /// Expands `${VAR}` in one string value; on failure records why and
    /// returns `None`. The message names the key and variable, never the value.
    pub(super) fn expand(&mut self, scope: &Scope, field: &str, value: &str) -> Option<String> {
        match expand(value, self.env) {
            Ok(expanded) => Some(expanded),
            Err(e) => {
                let message = format!("{}{field}: {e}", scope.lead());
                self.errors.push(ConfigError::new(scope.key(field), message));
                None
            }
        }
    }

    /// An optional path value: expanded, must not be empty; a relative one
    /// is taken from the config file's directory.
    pub(super) fn path(&mut self, scope: &Scope, field: &str, raw: Option<&str>) -> Option<PathBuf> {
        let value = self.expand(scope, field, raw?)?;
        if value.trim().is_empty() {
            self.report(scope, field, "is empty; remove the key or give a file path");
            return None;
        }
        Some(match self.base {
            Some(base) => base.join(value),
            None => PathBuf::from(value),
        })
    }

    /// A port number in 1..=65535.
    pub(super) fn port(&mut self, scope: &Scope, field: &str, raw: Option<i64>) -> Option<u16> {
        let value = raw?;
        match u16::try_from(value) {
            Ok(port) if port != 0 => Some(port),
            _ => {
                self.report(scope, field, format!("must be between 1 and 65535 (got {value})"));
                None
            }
        }
    }
}

fn validate(ctx: &mut Ctx<'_>, raw: RawConfig) -> Config {
    let top = Scope::top();
    let (http, https) = listeners(ctx, &raw);
    let admin = admin_listener(ctx, &raw, http, https.as_ref().map(|h| h.addr));
    let log_json = match raw.log_format.as_deref().map(str::trim) {
        None | Some("text") => false,
        Some("json") => true,
        Some(_) => {
            ctx.report(&top, "log_format", "must be text or json");
            false
        }
    };
    let auth_keys = secret::client_keys(ctx, &top, "auth_keys", raw.auth_keys.as_deref());
    let health_check = health_check(ctx, raw.health_check.as_ref(), raw.health_check_interval);
    let http_max_header_size = header_size(ctx, raw.http_max_header_size);
    let connect_tunnel_enabled = raw.connect_tunnel_enabled.unwrap_or(false);
    let workers = workers(ctx, raw.workers);
    let http_max_header_count = match raw.http_max_header_count {
        None => 100,
        Some(n @ 1..=128) => n as usize,
        Some(n) => {
            ctx.report(&top, "http_max_header_count", format!("must be between 1 and 128 (got {n})"));
            100
        }
    };
    let max_request_body_size = match raw.max_request_body_size {
        Some(n) if n > 0 => Some(n as u64),
        Some(n) => {
            ctx.report(&top, "max_request_body_size", format!("must be a positive number of bytes (got {n})"));
            None
        }
        None => None,
    };
    let graceful_shutdown_timeout =
        timeouts::seconds(ctx, &top, "graceful_shutdown_timeout", raw.graceful_shutdown_timeout, Bound::ZeroAllowed)
            .unwrap_or(Duration::from_secs(30));
    let timeouts = timeouts::top(ctx, &raw);
    let limits = super::limits::limits(ctx, &raw, http_max_header_size);
    let ca_file = ctx.path(&top, "ca_file", raw.ca_file.as_deref());
    let retry = resilience::retry(ctx, raw.retry.as_ref());
    let passive_health = resilience::passive_health(ctx, raw.passive_health.as_ref());
    let providers = provider::providers(ctx, raw.providers);
    Config {
        http,
        https,
        admin,
        log_json,
        auth_keys,
        health_check,
        http_max_header_size,
        connect_tunnel_enabled,
        workers,
        max_request_body_size,
        http_max_header_count,
        limits,
        graceful_shutdown_timeout,
        timeouts,
        ca_file,
        retry,
        passive_health,
        providers,
        deprecations: Vec::new(),
        source_hash: String::new(),
        client_key_names: Vec::new(),
    }
}

/// `http_*` and `https_*`: at least one port, addresses, TLS files, no clash.
fn listeners(ctx: &mut Ctx<'_>, raw: &RawConfig) -> (Option<SocketAddr>, Option<HttpsConfig>) {
    let top = Scope::top();
    if raw.http_port.is_none() && raw.https_port.is_none() {
        ctx.report(&top, "http_port", "or https_port must be set (at least one listener is required)");
    }
    let http = listener(ctx, "http", raw.http_port, raw.http_bind_address.as_deref());
    let https_addr = listener(ctx, "https", raw.https_port, raw.https_bind_address.as_deref());
    let cert_file = ctx.path(&top, "cert_file", raw.cert_file.as_deref());
    let private_key_file = ctx.path(&top, "private_key_file", raw.private_key_file.as_deref());
    let mut https = None;
    if raw.https_port.is_some() {
        // Files are only checked for presence here; they are read when the
        // listener starts, so a reload can pick up renewed certificates.
        if raw.cert_file.is_none() {
            ctx.report(&top, "cert_file", "is required when https_port is set");
        }
        if raw.private_key_file.is_none() {
            ctx.report(&top, "private_key_file", "is required when https_port is set");
        }
        if let (Some(addr), Some(cert_file), Some(private_key_file)) = (https_addr, cert_file, private_key_file) {
            https = Some(HttpsConfig { addr, cert_file, private_key_file });
        }
    }
    if let (Some(a), Some(b)) = (http, https_addr) {
        if sockets_clash(a, b) {
            let problem = format!("{} is the same as https_port; they need different ports", a.port());
            ctx.report(&top, "http_port", problem);
        }
    }
    (http, https)
}

/// `admin_port` + `admin_bind_address` (loopback unless said otherwise).
fn admin_listener(
    ctx: &mut Ctx<'_>,
    raw: &RawConfig,
    http: Option<SocketAddr>,
    https: Option<SocketAddr>,
) -> Option<SocketAddr> {
    let address = raw.admin_bind_address.as_deref().unwrap_or("127.0.0.1");
    let admin = listener(ctx, "admin", raw.admin_port, Some(address))?;
    for (other, name) in [(http, "http_port"), (https, "https_port")] {
        if other.is_some_and(|other| sockets_clash(admin, other)) {
            ctx.report(
                &Scope::top(),
                "admin_port",
                format!("{} is the same as {name}; they need different ports", admin.port()),
            );
        }
    }
    Some(admin)
}

/// One listener from `<scheme>_port` + `<scheme>_bind_address`.
fn listener(ctx: &mut Ctx<'_>, scheme: &str, port: Option<i64>, address: Option<&str>) -> Option<SocketAddr> {
    let top = Scope::top();
    let port_key = format!("{scheme}_port");
    let address_key = format!("{scheme}_bind_address");
    let port = ctx.port(&top, &port_key, port);
    let address = match address {
        Some(raw) => ctx.expand(&top, &address_key, raw)?,
        None => DEFAULT_BIND_ADDRESS.to_string(),
    };
    // Accept `[::1]` as well as `::1`: people copy it from URLs.
    let bare = address.trim().trim_start_matches('[').trim_end_matches(']');
    let ip = match bare.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => {
            let problem = format!("must be an IPv4 or IPv6 address, e.g. \"0.0.0.0\" or \"::\" (got {address:?})");
            ctx.report(&top, &address_key, problem);
            return None;
        }
    };
    Some(SocketAddr::new(ip, port?))
}

/// Two listeners cannot share a port if either binds the wildcard address.
fn sockets_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn health_check(ctx: &mut Ctx<'_>, raw: Option<&RawHealthCheck>, legacy: Option<f64>) -> HealthCheckSettings {
    let enabled = raw.and_then(|h| h.enabled).unwrap_or(false);
    let current = raw.and_then(|h| h.interval);
    match (legacy, current) {
        (Some(_), Some(_)) => ctx.deprecated(
            &Scope::top(),
            "health_check_interval",
            "is deprecated and ignored here: health_check.interval is set and used; remove health_check_interval",
        ),
        (Some(_), None) => {
            ctx.deprecated(&Scope::top(), "health_check_interval", "is deprecated; use health_check.interval")
        }
        _ => {}
    }
    let field = if current.is_none() && legacy.is_some() { "health_check_interval" } else { "health_check.interval" };
    let interval = current.or(legacy);
    let interval =
        timeouts::seconds(ctx, &Scope::top(), field, interval, Bound::Positive).unwrap_or(Duration::from_secs(60));
    HealthCheckSettings { enabled, interval }
}

fn header_size(ctx: &mut Ctx<'_>, raw: Option<i64>) -> usize {
    let value = raw.unwrap_or(DEFAULT_HEADER_SIZE);
    if !(MIN_HEADER_SIZE..=MAX_HEADER_SIZE).contains(&value) {
        let problem = format!("must be between {MIN_HEADER_SIZE} and {MAX_HEADER_SIZE} bytes (got {value})");
        ctx.report(&Scope::top(), "http_max_header_size", problem);
    }
    usize::try_from(value).unwrap_or(DEFAULT_HEADER_SIZE as usize)
}

/// Above this, `workers` is surely a typo: each worker is a thread.
const MAX_WORKERS: i64 = 1024;

fn workers(ctx: &mut Ctx<'_>, raw: Option<i64>) -> Option<usize> {
    let value = raw?;
    if !(1..=MAX_WORKERS).contains(&value) {
        ctx.report(&Scope::top(), "workers", format!("must be between 1 and {MAX_WORKERS} (got {value})"));
        return None;
    }
    usize::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{assert_error, errors, ok, with_provider, MINIMAL_PROVIDER};

    #[test]
    fn defaults_are_applied() {
        let config = ok(&with_provider("http_port: 8080"));
        assert!(config.auth_keys.is_empty());
        assert!(!config.health_check.enabled);
        assert_eq!(config.health_check.interval, Duration::from_secs(60));
        assert_eq!(config.http_max_header_size, 4096);
        assert!(!config.connect_tunnel_enabled);
        assert_eq!(config.graceful_shutdown_timeout, Duration::from_secs(30));
        assert_eq!(config.timeouts.connect, Duration::from_secs(10));
        assert_eq!(config.ca_file, None);
        let p = &config.providers[0];
        assert_eq!((p.port, p.tls, p.weight, p.priority, p.is_fallback), (443, true, 1.0, 0, false));
        assert_eq!(p.health_check, None);
        assert_eq!(p.ca_file, None);
        assert_eq!(p.api_keys[0].weight, 1.0);
    }

    #[test]
    fn all_top_level_keys_are_read() {
        let config = ok(&with_provider(
            "http_port: 80\nhttp_bind_address: \"::1\"\nhttps_port: 8443\nhttps_bind_address: 127.0.0.1\n\
             cert_file: c.pem\nprivate_key_file: k.pem\nhealth_check: {enabled: true, interval: 2.5}\n\
             http_max_header_size: 8192\nconnect_tunnel_enabled: true\ngraceful_shutdown_timeout: 0\n\
             connect_timeout: 3\nca_file: /etc/ca.pem",
        ));
        assert_eq!(config.http, Some("[::1]:80".parse().unwrap_or_else(|e| panic!("{e}"))));
        let https = config.https.unwrap_or_else(|| panic!("https missing"));
        assert_eq!(https.addr, SocketAddr::from(([127, 0, 0, 1], 8443)));
        assert_eq!(config.health_check.interval, Duration::from_millis(2500));
        assert_eq!(config.http_max_header_size, 8192);
        assert!(config.connect_tunnel_enabled);
        assert_eq!(config.graceful_shutdown_timeout, Duration::ZERO);
        assert_eq!(config.timeouts.connect, Duration::from_secs(3));
        assert_eq!(config.ca_file, Some(PathBuf::from("/etc/ca.pem")));
    }

    #[test]
    fn a_listener_is_required() {
        let errs = errors(MINIMAL_PROVIDER);
        assert_error(&errs, "http_port", &["http_port or https_port must be set"]);
    }

    #[test]
    fn ports_must_be_in_range() {
        let errs = errors(&with_provider("http_port: 0\nhttps_port: 70000\ncert_file: c\nprivate_key_file: k"));
        assert_error(&errs, "http_port", &["http_port must be between 1 and 65535 (got 0)"]);
        assert_error(&errs, "https_port", &["https_port must be between 1 and 65535 (got 70000)"]);
    }

    #[test]
    fn bind_addresses_must_be_ips() {
        let errs = errors(&with_provider("http_port: 80\nhttp_bind_address: localhost"));
        assert_error(
            &errs,
            "http_bind_address",
            &["http_bind_address must be an IPv4 or IPv6 address", "\"localhost\""],
        );
        let config = ok(&with_provider("http_port: 80\nhttp_bind_address: \"[::]\""));
        assert_eq!(config.http, Some("[::]:80".parse().unwrap_or_else(|e| panic!("{e}"))));
    }

    #[test]
    fn same_port_twice_is_an_error() {
        let errs = errors(&with_provider("http_port: 8080\nhttps_port: 8080\ncert_file: c\nprivate_key_file: k"));
        assert_error(&errs, "http_port", &["8080 is the same as https_port"]);
        // Different specific addresses may share a port.
        ok(&with_provider(
            "http_port: 8080\nhttp_bind_address: 127.0.0.1\nhttps_port: 8080\n\
             https_bind_address: 127.0.0.2\ncert_file: c\nprivate_key_file: k",
        ));
    }

    #[test]
    fn https_requires_cert_and_key() {
        let errs = errors(&with_provider("https_port: 443"));
        assert_error(&errs, "cert_file", &["cert_file is required when https_port is set"]);
        assert_error(&errs, "private_key_file", &["private_key_file is required when https_port is set"]);
        let errs = errors(&with_provider("https_port: 443\ncert_file: \"\"\nprivate_key_file: k"));
        assert_error(&errs, "cert_file", &["cert_file is empty"]);
    }

    #[test]
    fn header_size_limits() {
        for bad in ["1023", "1048577", "-1"] {
            let errs = errors(&with_provider(&format!("http_port: 80\nhttp_max_header_size: {bad}")));
            assert_error(&errs, "http_max_header_size", &["between 1024 and 1048576", bad]);
        }
        ok(&with_provider("http_port: 80\nhttp_max_header_size: 1048576"));
    }

    #[test]
    fn the_legacy_interval_gives_way_to_the_current_one_and_says_so() {
        let legacy = ok(&with_provider("http_port: 80\nhealth_check_interval: 5"));
        assert_eq!(legacy.health_check.interval, Duration::from_secs(5));
        assert!(legacy.deprecations[0].contains("use health_check.interval"), "{:?}", legacy.deprecations);
        let both = ok(&with_provider("http_port: 80\nhealth_check_interval: 5\nhealth_check: {interval: 600}"));
        assert_eq!(both.health_check.interval, Duration::from_secs(600));
        assert!(both.deprecations[0].contains("health_check.interval is set and used"), "{:?}", both.deprecations);
        let errs = errors(&with_provider("http_port: 80\nhealth_check_interval: 0"));
        assert_error(&errs, "health_check_interval", &["health_check_interval must be"]);
    }

    #[test]
    fn workers_are_a_small_positive_count() {
        assert_eq!(ok(&with_provider("http_port: 80")).workers, None);
        assert_eq!(ok(&with_provider("http_port: 80\nworkers: 3")).workers, Some(3));
        for bad in ["0", "-1", "1025"] {
            let errs = errors(&with_provider(&format!("http_port: 80\nworkers: {bad}")));
            assert_error(&errs, "workers", &["between 1 and 1024", bad]);
        }
    }

    #[test]
    fn durations_must_be_valid() {
        let errs = errors(&with_provider(
            "http_port: 80\nhealth_check: {interval: 0}\nconnect_timeout: -1\ngraceful_shutdown_timeout: -2",
        ));
        assert_error(&errs, "health_check.interval", &["health_check.interval", "greater than 0 (got 0)"]);
        assert_error(&errs, "connect_timeout", &["connect_timeout", "greater than 0 (got -1)"]);
        assert_error(&errs, "graceful_shutdown_timeout", &["0 or more (got -2)"]);
        let errs = errors(&with_provider("http_port: 80\nconnect_timeout: .inf"));
        assert_error(&errs, "connect_timeout", &["got inf"]);
    }

    #[test]
    fn auth_keys_must_be_usable_header_values() {
        let errs = errors(&with_provider("http_port: 80\nauth_keys: [\"\", \"ok\", \"bad\\r\\nsecret-value\"]"));
        assert_error(&errs, "auth_keys[0]", &["auth_keys[0] is empty"]);
        assert_error(&errs, "auth_keys[2]", &["auth_keys[2] contains a control character"]);
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(errs.iter().all(|e| !e.message.contains("secret-value")));
    }

    #[test]
    fn providers_must_not_be_empty() {
        assert_error(&errors("http_port: 80"), "providers", &["providers must list at least one provider"]);
        assert_error(&errors("http_port: 80\nproviders: []"), "providers", &["at least one provider"]);
    }
}
