//! The shape of the config file — which keys exist where, and what kind of
//! value each takes — checked over the whole parsed document before serde
//! reads it, so that every unknown key and every value of the wrong kind is
//! reported at once (serde stops at the first). Problems are worded for
//! people who do not read Rust ("expected a whole number"), unknown keys get
//! a "did you mean", and the offending entries are removed so the rest of
//! the file can still be validated.

use serde_yaml::{Mapping, Value};

use super::error::ConfigError;

#[derive(Debug, Clone, Copy)]
enum Ty {
    Text,
    Whole,
    Number,
    Bool,
    Texts,
    Wholes,
    /// A key, or a list of keys (`api_key`).
    TextOrTexts,
    /// Client keys: each a key, or a mapping with `key` and `name`.
    ClientKeys,
    Map(&'static [Field]),
    /// A list of mappings; the second part names the keys each must have.
    Maps(&'static [Field], &'static [&'static str]),
}

type Field = (&'static str, Ty);

use Ty::*;

const TOP: &[Field] = &[
    ("cert_file", Text),
    ("private_key_file", Text),
    ("https_port", Whole),
    ("https_bind_address", Text),
    ("http_port", Whole),
    ("http_bind_address", Text),
    ("admin_port", Whole),
    ("log_format", Text),
    ("admin_bind_address", Text),
    ("auth_keys", ClientKeys),
    ("health_check", Map(&[("enabled", Bool), ("interval", Number)])),
    ("health_check_interval", Number),
    ("http_max_header_size", Whole),
    ("http_max_header_count", Whole),
    ("connect_tunnel_enabled", Bool),
    ("workers", Whole),
    ("graceful_shutdown_timeout", Number),
    ("max_request_body_size", Whole),
    ("connect_timeout", Number),
    ("first_byte_timeout", Number),
    ("stream_idle_timeout", Number),
    ("client_header_timeout", Number),
    ("client_body_timeout", Number),
    ("client_idle_timeout", Number),
    ("tunnel_idle_timeout", Number),
    ("client_send_timeout", Number),
    ("tls_handshake_timeout", Number),
    ("max_connections", Whole),
    ("h2_max_concurrent_streams", Whole),
    ("h2_max_header_list_size", Whole),
    ("upstream_max_connecting", Whole),
    ("ca_file", Text),
    ("retry", Map(&[("attempts", Whole), ("on_status", Wholes), ("max_body_size", Whole)])),
    ("passive_health", Map(&[("failures", Whole), ("cooldown", Number)])),
    ("providers", Maps(PROVIDER, &[])),
];

const PROVIDER: &[Field] = &[
    ("type", Text),
    ("name", Text),
    ("host", Text),
    ("endpoint", Text),
    ("port", Whole),
    ("tls", Bool),
    ("weight", Number),
    ("priority", Whole),
    ("is_fallback", Bool),
    ("api_key", TextOrTexts),
    ("api_keys", Maps(&[("key", Text), ("weight", Number)], &["key"])),
    ("auth_keys", ClientKeys),
    ("client_auth", Bool),
    ("health_check", Map(&[("method", Text), ("path", Text), ("body", Text), ("headers", Texts)])),
    ("ca_file", Text),
    ("connect_timeout", Number),
    ("first_byte_timeout", Number),
    ("stream_idle_timeout", Number),
    ("stream_usage", Text),
];

/// Checks `doc` (merge keys already applied) and removes what is wrong.
pub(super) fn check(doc: &mut Value) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    match doc {
        Value::Mapping(map) => check_map(map, TOP, "", true, &mut errors),
        other => errors.push(ConfigError::new(
            "(document)",
            format!("the file must be a mapping of keys to values, found {}", found(other)),
        )),
    }
    errors
}

fn check_map(map: &mut Mapping, fields: &[Field], path: &str, extensions: bool, errors: &mut Vec<ConfigError>) {
    let label = label(map, path);
    let mut wrong = Vec::new();
    for (key, value) in map.iter_mut() {
        let Some(name) = key.as_str() else {
            // At the top level there is no path to name: without this the
            // error had an empty key and a message that did not say where.
            let (at, place) = if path.is_empty() { ("(document)", " at the top level") } else { (path, "") };
            errors.push(ConfigError::new(at, format!("{label}a key{place} must be text, found {}", found(key))));
            wrong.push(key.clone());
            continue;
        };
        if extensions && name.starts_with("x-") {
            continue;
        }
        let key_path = join(path, name);
        let Some(&(_, ty)) = fields.iter().find(|(field, _)| *field == name) else {
            errors.push(ConfigError::new(&key_path, format!("{label}{}", unknown(name, fields))));
            wrong.push(key.clone());
            continue;
        };
        match check_value(value, ty, &key_path, errors) {
            Verdict::Fine => {}
            Verdict::Reported => wrong.push(key.clone()),
            Verdict::Wrong => {
                let message = format!("{label}{name}: expected {}, found {}", expected(ty), found(value));
                errors.push(ConfigError::new(&key_path, message));
                wrong.push(key.clone());
            }
        }
    }
    for key in wrong {
        map.remove(&key);
    }
}

/// What a value turned out to be.
enum Verdict {
    Fine,
    /// Not the kind asked for: the caller reports it.
    Wrong,
    /// Wrong inside (a list item), already reported: the caller removes it.
    Reported,
}

/// Whether `value` has the kind `ty` asks for; problems inside a mapping are
/// reported and removed on the way.
fn check_value(value: &mut Value, ty: Ty, path: &str, errors: &mut Vec<ConfigError>) -> Verdict {
    let fine = |ok: bool| if ok { Verdict::Fine } else { Verdict::Wrong };
    match (ty, value) {
        // An empty value is an absent one.
        (_, Value::Null) => Verdict::Fine,
        (Text, Value::String(_)) | (Bool, Value::Bool(_)) => Verdict::Fine,
        (Whole, Value::Number(n)) => fine(n.is_i64()),
        (Number, Value::Number(_)) => Verdict::Fine,
        (Texts | TextOrTexts, Value::Sequence(items)) => all(items, Text, path, errors),
        (TextOrTexts, Value::String(_)) => Verdict::Fine,
        (Wholes, Value::Sequence(items)) => all(items, Whole, path, errors),
        (ClientKeys, Value::Sequence(items)) => {
            let mut verdict = Verdict::Fine;
            for (i, item) in items.iter_mut().enumerate() {
                let at = format!("{path}[{i}]");
                match item {
                    Value::String(_) => {}
                    Value::Mapping(map) => {
                        let before = errors.len();
                        check_item(map, &[("key", Text), ("name", Text)], &["key"], &at, false, errors);
                        if errors.len() > before {
                            verdict = Verdict::Reported;
                        }
                    }
                    other => {
                        let message =
                            format!("{at}: expected a key or a mapping with `key` and `name`, found {}", found(other));
                        errors.push(ConfigError::new(&at, message));
                        verdict = Verdict::Reported;
                    }
                }
            }
            verdict
        }
        (Map(fields), Value::Mapping(map)) => {
            check_map(map, fields, path, false, errors);
            Verdict::Fine
        }
        (Maps(fields, required), Value::Sequence(items)) => {
            let before = errors.len();
            for (i, item) in items.iter_mut().enumerate() {
                let item_path = format!("{path}[{i}]");
                let Value::Mapping(map) = item else {
                    let message = format!("{item_path}: expected a mapping (key: value lines), found {}", found(item));
                    errors.push(ConfigError::new(&item_path, message));
                    // Emptied rather than removed: later items keep their numbers.
                    *item = Value::Mapping(Mapping::new());
                    continue;
                };
                check_item(map, fields, required, &item_path, path == "providers", errors);
            }
            // A list whose items serde needs whole (api_keys) goes if any is
            // not; providers are checked one by one after.
            match errors.len() > before && !required.is_empty() {
                true => Verdict::Reported,
                false => Verdict::Fine,
            }
        }
        _ => Verdict::Wrong,
    }
}

/// One mapping of a list: its keys, and those it must have.
fn check_item(
    map: &mut Mapping,
    fields: &[Field],
    required: &[&str],
    path: &str,
    extensions: bool,
    errors: &mut Vec<ConfigError>,
) {
    check_map(map, fields, path, extensions, errors);
    for name in required.iter().filter(|name| map.get(**name).is_none_or(Value::is_null)) {
        errors.push(ConfigError::new(join(path, name), format!("{path}: {name} is required")));
    }
}

/// Checks every item of a list of scalars; each wrong one is reported by its index.
fn all(items: &mut [Value], ty: Ty, path: &str, errors: &mut Vec<ConfigError>) -> Verdict {
    let mut verdict = Verdict::Fine;
    for (i, item) in items.iter_mut().enumerate() {
        // A list item cannot be empty (only a mapping's value can be absent).
        if item.is_null() || !matches!(check_value(item, ty, path, errors), Verdict::Fine) {
            let at = format!("{path}[{i}]");
            errors.push(ConfigError::new(&at, format!("{at}: expected {}, found {}", expected(ty), found(item))));
            verdict = Verdict::Reported;
        }
    }
    verdict
}

fn join(path: &str, key: &str) -> String {
    match path.is_empty() {
        true => key.to_string(),
        false => format!("{path}.{key}"),
    }
}

/// `providers[1] (host "a.local"): ` for a provider, else nothing (the key
/// path in the message says where).
fn label(map: &Mapping, path: &str) -> String {
    match (path.starts_with("providers["), map.get("host").and_then(Value::as_str)) {
        (true, Some(host)) => format!("{path} (host {host:?}): "),
        (true, None) => format!("{path}: "),
        _ if path.is_empty() => String::new(),
        _ => format!("{path}: "),
    }
}

fn expected(ty: Ty) -> &'static str {
    match ty {
        Text => "text",
        Whole => "a whole number",
        Number => "a number",
        Bool => "true or false",
        Texts => "a list of text values",
        Wholes => "a list of whole numbers",
        TextOrTexts => "a key or a list of keys",
        ClientKeys => "a list of keys",
        Map(_) => "a mapping (key: value lines)",
        Maps(..) => "a list of mappings",
    }
}

/// What a value is, in words; text is never quoted (it may be a secret).
fn found(value: &Value) -> String {
    match value {
        Value::Null => "nothing".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(_) => "text".into(),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        // The tag is not shown: it is text from the file, maybe a key.
        Value::Tagged(_) => "a tagged value".into(),
    }
}

/// The candidate a typo most likely meant, if one is close enough.
pub(super) fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let (d, best) = candidates.map(|c| (distance(&name.to_ascii_lowercase(), c), c)).min()?;
    (d <= 2 || (d <= 3 && name.len() > 8)).then_some(best)
}

/// `unknown key `weigth`; did you mean `weight`?`, or the keys that exist.
/// The name is shown only when it looks like a key name (a key written where
/// a key name goes must not reach a log).
fn unknown(name: &str, fields: &[Field]) -> String {
    let plain = (1..=40).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    let shown = if plain { format!("`{name}`") } else { "(not shown: it does not look like a key name)".to_string() };
    match closest(name, fields.iter().map(|(field, _)| *field)) {
        Some(field) => format!("unknown key {shown}; did you mean `{field}`?"),
        None => {
            let valid: Vec<&str> = fields.iter().map(|(field, _)| *field).collect();
            format!("unknown key {shown} (valid keys: {})", valid.join(", "))
        }
    }
}

/// Levenshtein distance, for the "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substituted = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substituted.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> (Vec<String>, Value) {
        let mut doc: Value = serde_yaml::from_str(yaml).unwrap();
        let errors = check(&mut doc).into_iter().map(|e| format!("{} | {}", e.key, e.message)).collect();
        (errors, doc)
    }

    #[test]
    fn every_problem_is_reported_and_removed() {
        let (errors, doc) = problems(
            "http_port: eighty\nhttp_prot: 1\nauth_keys: [a, 3]\nproviders:\n  - {type: openai, host: a.local, weigth: 2, port: x, tls: maybe}\n  - just text\n  - {api_keys: [{weight: 1}]}\n",
        );
        assert_eq!(
            errors,
            [
                "http_port | http_port: expected a whole number, found text",
                "http_prot | unknown key `http_prot`; did you mean `http_port`?",
                "auth_keys[1] | auth_keys[1]: expected a key or a mapping with `key` and `name`, found the number 3",
                "providers[0].weigth | providers[0] (host \"a.local\"): unknown key `weigth`; did you mean `weight`?",
                "providers[0].port | providers[0] (host \"a.local\"): port: expected a whole number, found text",
                "providers[0].tls | providers[0] (host \"a.local\"): tls: expected true or false, found text",
                "providers[1] | providers[1]: expected a mapping (key: value lines), found text",
                "providers[2].api_keys[0].key | providers[2].api_keys[0]: key is required",
            ]
        );
        let kept = serde_yaml::to_string(&doc).unwrap();
        assert!(!kept.contains("eighty") && !kept.contains("weigth") && !kept.contains("maybe"), "{kept}");
        assert!(kept.contains("a.local"), "the rest stays: {kept}");
    }

    #[test]
    fn named_client_keys_are_checked_like_any_mapping() {
        let (errors, _) = problems("auth_keys: [plain, {key: a, nmae: x}, {name: n}]\n");
        assert_eq!(
            errors,
            [
                "auth_keys[1].nmae | auth_keys[1]: unknown key `nmae`; did you mean `name`?",
                "auth_keys[2].key | auth_keys[2]: key is required",
            ]
        );
    }

    #[test]
    fn extension_keys_and_empty_values_are_fine() {
        let (errors, _) = problems("x-defaults: {a: 1}\nhealth_check:\nproviders:\n  - {x-note: hi, type: openai}\n");
        assert!(errors.is_empty(), "{errors:?}");
        let (errors, _) = problems("retry: {x-note: 1}\n");
        assert_eq!(errors.len(), 1, "x- keys only at the top and in providers: {errors:?}");
    }

    #[test]
    fn keys_that_are_not_text_say_where_they_are() {
        // Found by the config fuzz target: the top-level case had key "".
        let (errors, _) = problems("~: 1\n3: x\nretry: {[a]: 1}\nproviders:\n  - {host: a.local, true: 1}\n");
        assert_eq!(
            errors,
            [
                "(document) | a key at the top level must be text, found nothing",
                "(document) | a key at the top level must be text, found the number 3",
                "retry | retry: a key must be text, found a list",
                "providers[0] | providers[0] (host \"a.local\"): a key must be text, found true",
            ]
        );
    }

    #[test]
    fn distances() {
        assert_eq!(distance("weigth", "weight"), 2);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("http_port", "http_port"), 0);
        assert!(unknown("zzz", PROVIDER).contains("valid keys: type, name, host"));
    }
}
