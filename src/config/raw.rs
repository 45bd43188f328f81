//! The serde mirror of the YAML file, and the step from text to it.
//!
//! Every struct rejects unknown keys so a typo is reported with its line. Values
//! are kept as written (strings unexpanded, numbers unchecked, defaults absent):
//! `validate` owns meaning, defaults and `${VAR}` expansion. Required keys that
//! `validate` can report with more context (`host`, `type`, ...) are `Option`s
//! here so that their absence is collected with the other problems.
//!
//! Extension keys: at the top level and inside each provider, keys starting
//! with `x-` are ignored (as in docker compose). They exist to hold YAML anchors,
//! e.g. `x-defaults: &defaults {...}` reused with `<<: *defaults`.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, DeserializeSeed, IgnoredAny, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::error::ConfigError;
use super::positions::Positions;
use super::schema;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub cert_file: Option<String>,
    pub private_key_file: Option<String>,
    pub https_port: Option<i64>,
    pub https_bind_address: Option<String>,
    pub http_port: Option<i64>,
    pub http_bind_address: Option<String>,
    pub admin_port: Option<i64>,
    pub log_format: Option<String>,
    pub admin_bind_address: Option<String>,
    pub auth_keys: Option<Vec<RawClientKey>>,
    pub health_check: Option<RawHealthCheck>,
    /// Deprecated spelling of `health_check.interval` (seconds).
    pub health_check_interval: Option<f64>,
    pub http_max_header_size: Option<i64>,
    pub http_max_header_count: Option<i64>,
    pub connect_tunnel_enabled: Option<bool>,
    pub workers: Option<i64>,
    /// Seconds; fractions allowed.
    pub graceful_shutdown_timeout: Option<f64>,
    pub max_request_body_size: Option<i64>,
    /// Seconds; fractions allowed (this and the timeouts below).
    pub connect_timeout: Option<f64>,
    pub first_byte_timeout: Option<f64>,
    pub stream_idle_timeout: Option<f64>,
    pub client_header_timeout: Option<f64>,
    pub client_body_timeout: Option<f64>,
    pub client_idle_timeout: Option<f64>,
    pub tunnel_idle_timeout: Option<f64>,
    pub client_send_timeout: Option<f64>,
    pub tls_handshake_timeout: Option<f64>,
    pub max_connections: Option<i64>,
    pub h2_max_concurrent_streams: Option<i64>,
    pub h2_max_header_list_size: Option<i64>,
    pub upstream_max_connecting: Option<i64>,
    pub ca_file: Option<String>,
    pub retry: Option<RawRetry>,
    pub passive_health: Option<RawPassiveHealth>,
    pub providers: Option<Vec<AllowExtensions<RawProvider>>>,
}

/// Top-level `retry`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with `attempts`, `on_status` and `max_body_size`")]
pub(crate) struct RawRetry {
    pub attempts: Option<i64>,
    pub on_status: Option<Vec<i64>>,
    pub max_body_size: Option<i64>,
}

/// Top-level `passive_health`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with `failures` and `cooldown`")]
pub(crate) struct RawPassiveHealth {
    pub failures: Option<i64>,
    /// Seconds; fractions allowed.
    pub cooldown: Option<f64>,
}

/// Top-level `health_check`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with `enabled` and `interval`")]
pub(crate) struct RawHealthCheck {
    pub enabled: Option<bool>,
    /// Seconds; fractions allowed.
    pub interval: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProvider {
    /// Read as a string so an unknown type is reported with the provider label.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub name: Option<String>,
    pub host: Option<String>,
    pub endpoint: Option<String>,
    pub port: Option<i64>,
    pub tls: Option<bool>,
    pub weight: Option<f64>,
    pub priority: Option<i64>,
    pub is_fallback: Option<bool>,
    pub api_key: Option<OneOrMore>,
    pub api_keys: Option<Vec<RawApiKey>>,
    pub auth_keys: Option<Vec<RawClientKey>>,
    pub client_auth: Option<bool>,
    pub health_check: Option<RawProviderHealthCheck>,
    pub ca_file: Option<String>,
    /// Overrides of the top-level upstream timeouts, in seconds.
    pub connect_timeout: Option<f64>,
    pub first_byte_timeout: Option<f64>,
    pub stream_idle_timeout: Option<f64>,
    pub stream_usage: Option<String>,
}

/// A client key: the key alone, or with a name for logs and metrics.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a key, or a mapping with `key` and `name`")]
pub(crate) enum RawClientKey {
    Plain(String),
    Named(RawNamedKey),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNamedKey {
    pub key: String,
    pub name: Option<String>,
}

/// `api_key` as one key or (a deprecated form) a list of keys.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a key, or a list of keys")]
pub(crate) enum OneOrMore {
    One(String),
    More(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with `key` and optional `weight`")]
pub(crate) struct RawApiKey {
    pub key: String,
    pub weight: Option<f64>,
}

/// A provider's `health_check` (a request description, unlike the top-level one).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with `path` and optional `method`, `body`, `headers`")]
pub(crate) struct RawProviderHealthCheck {
    pub method: Option<String>,
    pub path: Option<String>,
    pub body: Option<String>,
    /// `"Name: value"` lines.
    pub headers: Option<Vec<String>>,
}

/// The file read: what serde could take, the problems found on the way, and
/// where each key sits (for the messages of later checks too).
pub(crate) struct Parsed {
    /// `None` when serde refused what the shape check let through: then the
    /// other checks have nothing sound to run on.
    pub raw: Option<RawConfig>,
    pub errors: Vec<ConfigError>,
    pub positions: Positions,
}

/// Parses the file text. Only a YAML syntax error (which stops the parser)
/// or a document that is not a mapping is an `Err`; unknown keys and values
/// of the wrong kind are all collected (`schema`), removed, and the rest read.
/// `<<` merge keys are applied first.
pub(crate) fn parse(text: &str) -> Result<Parsed, ConfigError> {
    let mut value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| yaml_error(&e))?;
    if value.is_null() {
        return Err(ConfigError::new(
            "(document)",
            "the configuration is empty: at least `providers` and a port are required",
        ));
    }
    value.apply_merge().map_err(|e| yaml_error(&e))?;
    let mut errors = schema::check(&mut value);
    // (`is_mapping` would look through a tag.)
    if !matches!(value, serde_yaml::Value::Mapping(_)) {
        return Err(errors.remove(0));
    }
    let raw = match serde_yaml::from_value::<AllowExtensions<RawConfig>>(value) {
        Ok(parsed) => Some(parsed.0),
        Err(e) => {
            errors.push(yaml_error(&e));
            None
        }
    };
    Ok(Parsed { raw, errors, positions: Positions::read(text) })
}

/// Turns a serde_yaml error into one line that shows where the problem is.
fn yaml_error(err: &serde_yaml::Error) -> ConfigError {
    let mut message = redact_strings(&err.to_string());
    // serde_yaml omits the position when it is line 1 column 1.
    if let (Some(loc), false) = (err.location(), message.contains(" at line ")) {
        message.push_str(&format!(" at line {} column {}", loc.line(), loc.column()));
    }
    // serde_yaml prefixes the path of the failing value ("providers[0].port: ...").
    let key = message
        .split_once(": ")
        .map(|(prefix, _)| prefix)
        .filter(|p| !p.is_empty() && !p.contains(char::is_whitespace))
        .unwrap_or("(document)")
        .to_string();
    ConfigError::new(key, format!("invalid configuration: {message}"))
}

/// Replaces each `string "..."` that serde quotes in type errors with `a string`:
/// the misplaced value may be a key (`api_keys: ["sk-..."]`), and secrets must
/// not reach logs. The key path and line still say where it is.
fn redact_strings(message: &str) -> String {
    let message = message.replace("duplicate entry with key \"", "duplicate entry with string \"");
    const QUOTED: &str = "string \"";
    let mut out = String::with_capacity(message.len());
    let mut rest = message.as_str();
    while let Some(at) = rest.find(QUOTED) {
        out.push_str(&rest[..at]);
        out.push_str("a string");
        let quoted = &rest[at + QUOTED.len()..];
        // serde prints the string with `{:?}`, so `"` and `\` inside are escaped
        // and the first unescaped `"` ends it.
        let mut escaped = false;
        let mut end = quoted.len();
        for (i, c) in quoted.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &quoted[end..];
    }
    out.push_str(rest);
    out
}

/// Deserializes `T` from a mapping after dropping every `x-...` key and its value.
///
/// The keys still go through the YAML deserializer one by one, so an unknown
/// key keeps the line and column serde_yaml attaches to it.
#[derive(Debug, Default)]
pub(crate) struct AllowExtensions<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for AllowExtensions<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ExtensionsVisitor(PhantomData))
    }
}

struct ExtensionsVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ExtensionsVisitor<T> {
    type Value = AllowExtensions<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(MapAccessDeserializer::new(SkipExtensions(map))).map(AllowExtensions)
    }
}

/// A [`MapAccess`] that hides `x-...` entries from the struct being built.
struct SkipExtensions<A>(A);

impl<'de, A: MapAccess<'de>> MapAccess<'de> for SkipExtensions<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, mut seed: K) -> Result<Option<K::Value>, A::Error> {
        loop {
            match self.0.next_key_seed(KeyFilter(seed))? {
                None => return Ok(None),
                Some(Key::Kept(key)) => return Ok(Some(key)),
                Some(Key::Skipped(unused)) => {
                    self.0.next_value::<IgnoredAny>()?;
                    seed = unused;
                }
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.0.next_value_seed(seed)
    }
}

/// A key either handed to the struct's own field seed or skipped; a skipped key
/// gives the seed back so the next key can use it.
enum Key<S, V> {
    Kept(V),
    Skipped(S),
}

struct KeyFilter<K>(K);

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for KeyFilter<K> {
    type Value = Key<K, K::Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl<'de, K: DeserializeSeed<'de>> Visitor<'de> for KeyFilter<K> {
    type Value = Key<K, K::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        if key.starts_with("x-") {
            return Ok(Key::Skipped(self.0));
        }
        // An unknown key fails here, inside the YAML deserializer's key, which
        // is what attaches the key's line and column to the error.
        self.0.deserialize(key.into_deserializer()).map(Key::Kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every problem of `text`, with its place, as `check` prints them.
    fn problems(text: &str) -> Vec<ConfigError> {
        match crate::config::from_yaml_str(text) {
            Ok(config) => panic!("expected errors, got {config:?}"),
            Err(errors) => errors.0,
        }
    }

    fn one(text: &str) -> ConfigError {
        let found = problems(text);
        assert_eq!(found.len(), 1, "{found:#?}");
        found.into_iter().next().unwrap_or_else(|| unreachable!())
    }

    const PROVIDER: &str = "providers:\n  - {type: forward, host: a, endpoint: b}\n";

    #[test]
    fn unknown_top_level_key_reports_its_line() {
        let e = one(&format!("http_port: 8080\nhttp_prot: 8081\n{PROVIDER}"));
        assert!(e.message.contains("unknown key `http_prot`; did you mean `http_port`?"), "{e:?}");
        assert!(e.message.contains("(line 2, column 1)"), "{e:?}");
    }

    #[test]
    fn unknown_provider_key_reports_line_and_path() {
        let text = "http_port: 8080\nproviders:\n  - type: forward\n    host: a\n    endpoint: b\n    wieght: 2\n";
        let e = one(text);
        assert!(e.message.contains("unknown key `wieght`; did you mean `weight`?"), "{e:?}");
        assert!(e.message.contains("(line 6, column 5)"), "{e:?}");
        assert_eq!(e.key, "providers[0].wieght");
    }

    #[test]
    fn type_errors_report_key_and_line_in_plain_words() {
        let e = one(&format!("http_port: eighty\n{PROVIDER}"));
        assert_eq!(e.message, "http_port: expected a whole number, found text (line 1, column 1)");
        let e = one("http_port: 80\nproviders:\n  - host: a\n    type: forward\n    endpoint: b\n    tls: maybe\n");
        assert!(e.message.contains("tls: expected true or false, found text (line 6"), "{e:?}");
        assert_eq!(e.key, "providers[0].tls");
    }

    #[test]
    fn misplaced_keys_are_never_echoed() {
        let text = "http_port: 1\nproviders:\n  - {type: openai, host: a, endpoint: b, api_keys: [\"sk-se\\\"cret\", \"sk-two\"]}\n";
        let found = problems(text);
        assert!(found.iter().all(|e| !e.message.contains("sk-")), "{found:#?}");
        let item = found.iter().find(|e| e.key == "providers[0].api_keys[0]").unwrap_or_else(|| panic!("{found:#?}"));
        assert!(item.message.contains("expected a mapping (key: value lines), found text (line 3"), "{found:#?}");
        assert_eq!(redact_strings(r#"a string "x\\" y", b"#), "a a string y\", b");
    }

    #[test]
    fn several_problems_of_every_kind_come_together_in_file_order() {
        let text = "http_port: 80\nhttps_port: x\nworkers: 0\nproviders:\n  - type: opnai\n    host: a\n    endpoint: b\n    weigth: 2\n    weight: -1\n";
        let found: Vec<String> = problems(text).into_iter().map(|e| e.message).collect();
        assert_eq!(found.len(), 5, "{found:#?}");
        let lines: Vec<&str> = found.iter().map(|m| m.rsplit("(line ").next().unwrap_or("")).collect();
        assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{found:#?}");
        for (needle, line) in [
            ("https_port", 2),
            ("workers", 3),
            ("did you mean `openai`", 5),
            ("did you mean `weight`", 8),
            ("weight must", 9),
        ] {
            assert!(
                found.iter().any(|m| m.contains(needle) && m.contains(&format!("(line {line},"))),
                "{needle}: {found:#?}"
            );
        }
    }

    #[test]
    fn syntax_error_reports_line() {
        let e = match parse("http_port: 8080\nproviders:\n  - type: [openai\n") {
            Ok(_) => panic!("a syntax error"),
            Err(e) => e,
        };
        assert!(e.message.contains("line "), "{e:?}");
    }

    #[test]
    fn empty_document_is_reported() {
        for text in ["", "# only a comment\n"] {
            assert!(parse(text).err().is_some_and(|e| e.message.contains("empty")));
        }
        assert!(parse("just text\n").err().is_some_and(|e| e.message.contains("must be a mapping")));
    }

    fn raw(text: &str) -> RawConfig {
        match parse(text) {
            Ok(parsed) if parsed.errors.is_empty() && parsed.raw.is_some() => parsed.raw.unwrap_or_default(),
            Ok(parsed) => panic!("{:?}", parsed.errors),
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn extension_keys_are_ignored_at_top_level_and_in_providers() {
        let raw = raw("x-note: hello\nhttp_port: 8080\nproviders:\n  - host: a\n    x-owner: team\n");
        assert_eq!(raw.http_port, Some(8080));
        let providers = raw.providers.unwrap_or_default();
        assert_eq!(providers[0].0.host.as_deref(), Some("a"));
    }

    #[test]
    fn extension_keys_are_not_allowed_in_nested_structs() {
        let e = one(&format!("http_port: 1\nhealth_check:\n  x-a: 1\n{PROVIDER}"));
        assert!(e.message.contains("unknown key (not shown") && e.key == "health_check.x-a", "{e:?}");
    }

    #[test]
    fn merge_keys_apply_and_explicit_keys_win() {
        let text = "\
x-defaults: &defaults
  type: openai
  endpoint: api.openai.com
  weight: 2.0
http_port: 8080
providers:
  - <<: *defaults
    host: a.example
  - <<: *defaults
    host: b.example
    weight: 3.0
";
        let providers = raw(text).providers.unwrap_or_default();
        assert_eq!(providers.len(), 2);
        assert_eq!(providers[0].0.kind.as_deref(), Some("openai"));
        assert_eq!(providers[0].0.weight, Some(2.0));
        assert_eq!(providers[1].0.endpoint.as_deref(), Some("api.openai.com"));
        assert_eq!(providers[1].0.weight, Some(3.0));
    }

    #[test]
    fn errors_in_merged_files_point_at_the_nearest_place_known() {
        let text = "x-d: &d\n  type: forward\n  endpoint: b\nhttp_port: 1\nproviders:\n  - <<: *d\n    host: a\n    bogus: 1\n";
        let e = one(text);
        assert!(e.message.contains("unknown key `bogus`"), "{e:?}");
        assert!(e.message.contains("(line 8, column 5)"), "{e:?}");
    }

    #[test]
    fn plain_aliases_work_without_merge() {
        let raw = raw("x-key: &k sk-1\nproviders:\n  - host: a\n    api_key: *k\n");
        let providers = raw.providers.unwrap_or_default();
        assert!(matches!(&providers[0].0.api_key, Some(OneOrMore::One(k)) if k == "sk-1"));
    }
}
