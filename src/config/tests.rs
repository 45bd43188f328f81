//! Tests of the whole path, text to `Config`: the spec's examples, `${VAR}`,
//! merge keys, error collection and `load_file`. Shared helpers for the
//! per-file tests live here too.

use super::*;
use crate::config::validate::from_yaml_str_with;
use crate::config::{ProviderType, SecretSource};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The test environment: fixed variables, never the process environment.
pub(crate) fn test_env(name: &str) -> Option<String> {
    match name {
        "TEST_OPENAI_KEY" => Some("sk-from-env".into()),
        "TEST_HOME" => Some("/home/me".into()),
        "TEST_EMPTY" => Some(String::new()),
        _ => None,
    }
}

pub(crate) fn parse(text: &str) -> Result<Config, ConfigErrors> {
    from_yaml_str_with(text, &test_env)
}

pub(crate) fn ok(text: &str) -> Config {
    match parse(text) {
        Ok(config) => config,
        Err(errors) => panic!("unexpected errors:\n{errors}"),
    }
}

pub(crate) fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text) {
        Ok(config) => panic!("expected errors, got {config:?}"),
        Err(errors) => errors.0,
    }
}

/// Asserts one error has exactly `key` and a message containing every needle.
pub(crate) fn assert_error(errors: &[ConfigError], key: &str, needles: &[&str]) {
    let found = errors.iter().any(|e| e.key == key && needles.iter().all(|n| e.message.contains(n)));
    assert!(found, "no error for {key} containing {needles:?} in {errors:#?}");
}

pub(crate) const MINIMAL_PROVIDER: &str =
    "providers:\n  - type: openai\n    host: a.local\n    endpoint: api.openai.com\n    api_key: sk-1\n";

pub(crate) fn with_provider(top: &str) -> String {
    format!("{top}\n{MINIMAL_PROVIDER}")
}

/// The spec README's full example ("Configuration File"), copied verbatim.
const README_EXAMPLE: &str = r##"# TLS Configuration (required for HTTPS)
cert_file: "/certs/certificate.pem"
private_key_file: "/certs/private-key.pem"

# Port Configuration
# - https_port: HTTPS with TLS (requires cert_file and private_key_file)
# - http_port: Plain HTTP without TLS (HTTP/1.1 only, useful for internal networks)
# At least one port must be configured. Both can be enabled simultaneously.
https_port: 443
# https_bind_address: "0.0.0.0"  # Bind address for HTTPS (default: 0.0.0.0)
# http_port: 8080  # Uncomment to enable HTTP
# http_bind_address: "127.0.0.1"  # Bind address for HTTP (default: 0.0.0.0)

# Global Authentication Keys
auth_keys:
  - "client-api-key-1"
  - "client-api-key-2"

# Health Check Configuration
health_check:
  enabled: true
  interval: 60  # seconds

# HTTP Configuration
# http_max_header_size: 8192  # Maximum HTTP header size in bytes (default: 4096, min: 1024, max: 1MB)

# CONNECT Tunnel Configuration
# Enable HTTP CONNECT method for establishing tunnels (used by forward proxies)
# connect_tunnel_enabled: true  # default: false

# Provider Configuration
providers:
  # OpenAI Configuration
  - type: "openai"
    host: "openai.example.com"       # Client uses "Host: openai.example.com" header to route to this provider
    endpoint: "api.openai.com"       # Actual OpenAI API endpoint
    port: 443
    tls: true
    weight: 1.0
    api_key: "sk-your-openai-api-key"
    health_check:
      method: "GET"
      path: "/v1/models"

  # Gemini Configuration
  - type: "gemini"
    host: "gemini.example.com"       # Client uses "Host: gemini.example.com" header to route to this provider
    endpoint: "generativelanguage.googleapis.com"  # Actual Google API endpoint
    port: 443
    tls: true
    weight: 1.5
    api_key: "your-gemini-api-key"
    health_check:
      method: "GET"
      path: "/v1beta/models"

  # Anthropic Configuration (Standard API Key)
  - type: "anthropic"
    host: "anthropic.example.com"    # Client uses "Host: anthropic.example.com" header to route to this provider
    endpoint: "api.anthropic.com"    # Actual Anthropic API endpoint
    port: 443
    tls: true
    weight: 1.2
    api_key: "sk-ant-your-anthropic-api-key"
    health_check:
      method: "POST"
      path: "/v1/messages"
      body: '{"model":"claude-3-haiku-20240307","max_tokens":1,"messages":[{"role":"user","content":"ping"}]}'
      headers:
        - "Content-Type: application/json"
        - "anthropic-version: 2023-06-01"

  # Anthropic Configuration (OAuth)
  # Use $(command) pattern to execute a shell command that returns the OAuth token
  # The proxy will use "Authorization: Bearer <token>" instead of "X-API-Key"
  # and automatically add "anthropic-beta: oauth-2025-04-20" header
  - type: "anthropic"
    host: "anthropic-oauth.example.com"
    endpoint: "api.anthropic.com"
    api_key: "$(cat /path/to/oauth-token.txt)"  # Or any command that outputs the token
    # api_key: "$(aws secretsmanager get-secret-value --secret-id anthropic-token --query SecretString --output text)"

  # Multiple API Keys for Load Distribution
  - type: "openai"
    host: "openai-backup.example.com"  # Different host name for separate routing
    endpoint: "api.openai.com"
    api_keys:
      - key: "sk-key-1"
        weight: 1.0
      - key: "sk-key-2"
        weight: 2.0
    auth_keys:
      - "provider-specific-auth-key"

  # Fallback Provider
  # Fallback providers are only used when no non-fallback providers are available (healthy).
  # Useful for backup/failover scenarios.
  - type: "openai"
    host: "openai.example.com"         # Same host as primary provider
    endpoint: "api.openai.com"
    api_key: "sk-backup-key"
    is_fallback: true                  # Mark as fallback provider

  # Forward Provider (Transparent Proxy)
  # Forwards requests to the endpoint without any authentication transformation.
  # Useful for proxying to internal services or custom endpoints.
  - type: "forward"
    host: "internal.example.com"       # Client uses "Host: internal.example.com" header
    endpoint: "backend.internal:8080"  # Actual backend endpoint
    tls: false
    weight: 1.0
"##;
#[test]
fn readme_full_example_parses() {
    let config = ok(README_EXAMPLE);
    let https = config.https.clone().unwrap_or_else(|| panic!("https missing"));
    assert_eq!(https.addr, "0.0.0.0:443".parse().unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(https.cert_file, PathBuf::from("/certs/certificate.pem"));
    assert_eq!(https.private_key_file, PathBuf::from("/certs/private-key.pem"));
    assert_eq!(config.http, None);
    assert_eq!(config.auth_keys, ["client-api-key-1", "client-api-key-2"]);
    assert!(config.health_check.enabled);
    assert_eq!(config.health_check.interval, Duration::from_secs(60));
    assert_eq!(config.providers.len(), 7);

    let anthropic = &config.providers[2];
    assert_eq!(anthropic.kind, ProviderType::Anthropic);
    assert_eq!(anthropic.weight, 1.2);
    let hc = anthropic.health_check.clone().unwrap_or_else(|| panic!("no health check"));
    assert_eq!(hc.method, "POST");
    assert_eq!(hc.path, "/v1/messages");
    assert!(hc.body.as_deref().is_some_and(|b| b.contains("claude-3-haiku")));
    assert_eq!(
        hc.headers,
        [
            ("Content-Type".to_string(), "application/json".to_string()),
            ("anthropic-version".to_string(), "2023-06-01".to_string()),
        ]
    );

    let oauth = &config.providers[3];
    assert_eq!(oauth.api_keys[0].source, SecretSource::Command("cat /path/to/oauth-token.txt".into()));
    assert_eq!((oauth.port, oauth.tls), (443, true));

    let multi = &config.providers[4];
    assert_eq!(multi.api_keys.len(), 2);
    assert_eq!(multi.api_keys[1].source, SecretSource::Literal("sk-key-2".into()));
    assert_eq!(multi.api_keys[1].weight, 2.0);
    assert_eq!(multi.auth_keys, ["provider-specific-auth-key"]);

    assert!(config.providers[5].is_fallback);
    let forward = &config.providers[6];
    assert_eq!(forward.kind, ProviderType::Forward);
    assert_eq!((forward.endpoint.as_str(), forward.port, forward.tls), ("backend.internal", 8080, false));
    assert!(forward.api_keys.is_empty());
}

#[test]
fn readme_http_only_example_parses() {
    let config = ok(r#"
# config.yml - HTTP only (no TLS certificates needed)
http_port: 8080

auth_keys:
  - "your-auth-key"

providers:
  - type: "openai"
    host: "localhost:8080"
    endpoint: "api.openai.com"
    api_key: "sk-your-openai-api-key"
"#);
    assert_eq!(config.http, Some(SocketAddr::from(([0, 0, 0, 0], 8080))));
    assert_eq!(config.https, None);
    let p = &config.providers[0];
    assert_eq!((p.host.as_str(), p.host_port, p.path_prefix.as_deref()), ("localhost", Some(8080), None));
}

#[test]
fn env_vars_expand_in_strings() {
    let config =
        ok("http_port: 80\nhttp_bind_address: \"${TEST_UNSET:-127.0.0.1}\"\nauth_keys: [\"${TEST_OPENAI_KEY}\"]\n\
         ca_file: \"${TEST_HOME}/ca.pem\"\nproviders:\n  - type: openai\n    host: a\n    endpoint: e\n\
         \x20   api_key: \"$(cat ${TEST_HOME}/token)\"\n    health_check:\n      path: /\n\
         \x20     headers: [\"x-key: ${TEST_OPENAI_KEY}\"]\n");
    assert_eq!(config.http, Some(SocketAddr::from(([127, 0, 0, 1], 80))));
    assert_eq!(config.auth_keys, ["sk-from-env"]);
    assert_eq!(config.ca_file, Some(PathBuf::from("/home/me/ca.pem")));
    let p = &config.providers[0];
    assert_eq!(p.api_keys[0].source, SecretSource::Command("cat /home/me/token".into()));
    let hc = p.health_check.clone().unwrap_or_else(|| panic!("no health check"));
    assert_eq!(hc.headers, [("x-key".to_string(), "sk-from-env".to_string())]);
}

#[test]
fn unset_env_var_names_key_and_variable() {
    let errs = errors(&with_provider("http_port: 80\nauth_keys: [\"${TEST_MISSING_AUTH}\"]"));
    assert_error(&errs, "auth_keys[0]", &["auth_keys[0]: environment variable TEST_MISSING_AUTH is not set"]);
    let errs = errors(&with_provider("http_port: 80\ncert_file: \"$\u{7b}TEST_UNTERMINATED\""));
    assert_error(&errs, "cert_file", &["cert_file: has an unterminated `$\u{7b}`"]);
}

#[test]
fn empty_env_var_makes_empty_key() {
    let errs = errors(&with_provider("http_port: 80\nauth_keys: [\"${TEST_EMPTY}\"]"));
    assert_error(&errs, "auth_keys[0]", &["is empty"]);
}

#[test]
fn several_errors_are_all_reported() {
    let errs = errors(
        "http_port: 0\nhttp_max_header_size: 10\nauth_keys: [\"\"]\nproviders:\n\
         \x20 - type: openia\n    host: https://a\n    endpoint: e\n    weight: -1\n\
         \x20 - type: gemini\n    host: b\n    endpoint: e/x\n",
    );
    assert_error(&errs, "http_port", &["got 0"]);
    assert_error(&errs, "http_max_header_size", &["got 10"]);
    assert_error(&errs, "auth_keys[0]", &["is empty"]);
    assert_error(&errs, "providers[0].type", &["type is not a provider type; did you mean `openai`?"]);
    assert_error(&errs, "providers[0].host", &["scheme"]);
    assert_error(&errs, "providers[0].weight", &["got -1"]);
    assert_error(&errs, "providers[1].endpoint", &["providers[1] (host \"b\")", "without a path"]);
    assert_eq!(errs.len(), 7, "{errs:#?}");
}

#[test]
fn merge_keys_with_extension_anchor() {
    let config = ok(r#"
x-defaults: &defaults
  type: openai
  endpoint: api.openai.com
  api_key: "${TEST_OPENAI_KEY}"
  health_check:
    path: /v1/models
http_port: 8080
providers:
  - <<: *defaults
    host: a.example.com
  - <<: *defaults
    host: b.example.com
    weight: 2
    x-note: backup
"#);
    assert_eq!(config.providers.len(), 2);
    let b = &config.providers[1];
    assert_eq!((b.host.as_str(), b.endpoint.as_str(), b.weight), ("b.example.com", "api.openai.com", 2.0));
    assert_eq!(b.api_keys[0].source, SecretSource::Literal("sk-from-env".into()));
    assert_eq!(b.health_check.as_ref().map(|h| h.path.as_str()), Some("/v1/models"));
}

#[test]
fn yaml_errors_come_back_as_config_errors() {
    let errs = errors("http_port: 80\nproviders:\n  - type: openai\n    hots: a\n");
    let hots = errs.iter().find(|e| e.key == "providers[0].hots").unwrap_or_else(|| panic!("{errs:?}"));
    assert!(hots.message.contains("did you mean `host`?") && hots.message.contains("(line 4, column 5)"), "{errs:?}");
    assert!(errs.iter().any(|e| e.message.contains("host is required")), "and what follows from it: {errs:?}");
}

#[test]
fn load_file_reads_and_reports_the_path() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("config.yml");
    std::fs::write(&path, with_provider("http_port: 8080")).unwrap_or_else(|e| panic!("{e}"));
    let config = load_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.providers.len(), 1);

    let missing = dir.path().join("missing.yml");
    let errs = load_file(&missing).err().unwrap_or_else(|| panic!("loaded a missing file"));
    assert!(errs.to_string().contains("missing.yml"), "{errs}");
    assert!(errs.to_string().contains("No such file"), "{errs}");
}

/// From a hostile review: values the shape check must remove, never let
/// through to fail serde and take the rest of the file with them; keys
/// written where key names go must never be echoed.
mod shape_review {
    use super::errors;

    const SECRET: &str = "sk-SECRETVALUE123";
    const BASE: &str =
        "http_port: 8080\nproviders:\n  - type: openai\n    host: a.local\n    endpoint: api.openai.com\n    api_key: k\n";

    fn messages(text: &str) -> Vec<String> {
        errors(text).into_iter().map(|e| e.message).collect()
    }

    #[test]
    fn list_items_of_the_wrong_kind_report_only_themselves_with_a_line() {
        for extra in [
            "    api_keys: [{weight: 1}]\n",
            "    api_keys: [~]\n",
            "    api_keys: [{key: ~}]\n",
            "auth_keys: [a, ~]\n",
            "retry: {on_status: [~]}\n",
            "    port: 18446744073709551615\n",
        ] {
            let found = messages(&format!("{BASE}{extra}"));
            assert!(!found.is_empty(), "{extra}");
            assert!(found.iter().all(|m| m.contains("(line ")), "{extra}: {found:#?}");
            assert!(
                !found.iter().any(|m| m.contains("must list at least one") || m.contains("must be set")),
                "{extra}: {found:#?}"
            );
        }
    }

    #[test]
    fn an_alias_used_as_a_key_keeps_later_lines_in_step() {
        let found = messages(&format!("x-k: &k weight\n{BASE}    *k : 2\n    weigth: 3\n"));
        assert!(found.iter().any(|m| m.contains("did you mean `weight`") && m.contains("(line 9,")), "{found:#?}");
    }

    #[test]
    fn keys_in_the_wrong_place_are_never_echoed() {
        for text in [
            format!("{BASE}    api_keys:\n      - {SECRET}: 1\n"),
            format!("{BASE}    {SECRET}:\n"),
            format!("{BASE}    weight: !{SECRET} 1\n"),
            format!("{BASE}    api_keys:\n      - {{key: a, {SECRET}: 1, {SECRET}: 2}}\n"),
            ["!x {", SECRET, ": 1}"].concat(),
            format!("{BASE}    type: {SECRET}\n").replace("    type: openai\n", ""),
        ] {
            let found = messages(&text);
            assert!(!found.is_empty(), "{text}");
            assert!(!found.iter().any(|m| m.contains("SECRETVALUE")), "{text}: {found:#?}");
        }
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_key() {
        let config = super::ok(&format!("\u{feff}{}", super::with_provider("http_port: 8080")));
        assert_eq!(config.http.map(|a| a.port()), Some(8080));
    }
}
