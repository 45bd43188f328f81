//! Keys: provider `api_key`/`api_keys` (a literal or a `$(command)`) and client
//! `auth_keys`. Messages about them name the key's position, never its value.

use super::raw::{OneOrMore, RawApiKey, RawClientKey};
use super::validate::{Ctx, Scope};
use super::{ApiKeyConfig, ProviderType, SecretSource};

/// Why a value cannot be sent or compared as an HTTP header value
/// (RFC 9110 section 5.5), or `None` if it can.
pub(super) fn header_value_problem(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        return Some("is empty");
    }
    // Tab is allowed inside a field value; every other control is not, and CR/LF
    // would let a value inject headers.
    if value.chars().any(|c| c.is_ascii_control() && c != '\t') {
        return Some("contains a control character (such as CR, LF or NUL), which is not allowed in an HTTP header");
    }
    // Receivers strip surrounding whitespace from header values, so such a key
    // could never match or would be altered in transit.
    if value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']) {
        return Some("has leading or trailing whitespace");
    }
    None
}

/// How a provider key is obtained: `$(command)` runs a command, anything else
/// is the key itself. `text` is already `${VAR}`-expanded.
pub(super) fn secret_source(text: &str) -> Result<SecretSource, &'static str> {
    let trimmed = text.trim();
    if let Some(rest) = trimmed.strip_prefix("$(") {
        let Some(command) = rest.strip_suffix(')') else {
            return Err("starts with `$(` but does not end with `)`; write `$(command)`");
        };
        let command = command.trim();
        if command.is_empty() {
            return Err("has an empty `$()` command");
        }
        return Ok(SecretSource::Command(command.to_string()));
    }
    match header_value_problem(text) {
        Some(problem) => Err(problem),
        None => Ok(SecretSource::Literal(text.to_string())),
    }
}

/// A list of client keys (`auth_keys`), top-level or per provider.
pub(super) fn client_keys(ctx: &mut Ctx<'_>, scope: &Scope, field: &str, raw: Option<&[RawClientKey]>) -> Vec<String> {
    let mut keys = Vec::new();
    for (i, raw_key) in raw.unwrap_or_default().iter().enumerate() {
        let item = format!("{field}[{i}]");
        let (raw_key, name) = match raw_key {
            RawClientKey::Plain(key) => (key, None),
            RawClientKey::Named(named) => (&named.key, named.name.as_deref()),
        };
        let Some(key) = ctx.expand(scope, &item, raw_key) else {
            continue;
        };
        if let Some(problem) = header_value_problem(&key) {
            ctx.report(scope, &item, problem);
            continue;
        }
        if let Some(name) = name {
            let printable = !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_graphic());
            if !printable {
                ctx.report(scope, &format!("{item}.name"), "must be 1 to 64 visible ASCII characters, without spaces");
            } else if ctx.name_client_key(&key, name).is_err() {
                ctx.report(scope, &format!("{item}.name"), "differs from the name this key has elsewhere");
            }
        }
        keys.push(key);
    }
    keys
}

/// A provider's upstream keys from `api_key` or `api_keys`, checked against
/// its type: the LLM types need exactly one of them, `forward` neither.
pub(super) fn api_keys(
    ctx: &mut Ctx<'_>,
    scope: &Scope,
    kind: Option<ProviderType>,
    api_key: Option<&OneOrMore>,
    api_keys: Option<&[RawApiKey]>,
) -> Vec<ApiKeyConfig> {
    let single: Vec<&str> = match api_key {
        None => Vec::new(),
        Some(OneOrMore::One(key)) => vec![key.as_str()],
        Some(OneOrMore::More(keys)) if keys.is_empty() => {
            ctx.report(
                scope,
                "api_key",
                "is an empty list; give a key, or remove it to pass the client's own key through",
            );
            Vec::new()
        }
        Some(OneOrMore::More(keys)) => {
            ctx.deprecated(scope, "api_key", "as a list is deprecated; list the keys under api_keys: [{key: ...}]");
            keys.iter().map(String::as_str).collect()
        }
    };
    let api_key = (!single.is_empty()).then_some(());
    let has_list = api_keys.is_some_and(|list| !list.is_empty());
    match kind {
        Some(ProviderType::Forward) => {
            if api_key.is_some() || has_list {
                let field = if api_key.is_some() { "api_key" } else { "api_keys" };
                ctx.report(scope, field, "would be unused: forward providers pass requests through without changing authentication; remove it");
            }
            return Vec::new();
        }
        // Unknown type: already reported; still check the keys themselves.
        None => {}
        Some(_) => {
            if api_key.is_some() && api_keys.is_some() {
                ctx.deprecated(scope, "api_keys", "together with api_key is deprecated; list every key under api_keys");
            } else if api_keys.is_some_and(|list| list.is_empty()) {
                ctx.report(
                    scope,
                    "api_keys",
                    "is empty; list at least one key, use api_key, or remove it to pass the client's own key through",
                );
            }
        }
    }
    let mut keys = Vec::new();
    for raw in single {
        if let Some(source) = source(ctx, scope, "api_key", raw) {
            keys.push(ApiKeyConfig { source, weight: 1.0 });
        }
    }
    for (i, entry) in api_keys.unwrap_or_default().iter().enumerate() {
        let field = format!("api_keys[{i}]");
        let source = source(ctx, scope, &format!("{field}.key"), &entry.key);
        let weight = weight(ctx, scope, &format!("{field}.weight"), entry.weight);
        if let Some(source) = source {
            keys.push(ApiKeyConfig { source, weight });
        }
    }
    keys
}

fn source(ctx: &mut Ctx<'_>, scope: &Scope, field: &str, raw: &str) -> Option<SecretSource> {
    let text = ctx.expand(scope, field, raw)?;
    match secret_source(&text) {
        Ok(source) => Some(source),
        Err(problem) => {
            ctx.report(scope, field, problem);
            None
        }
    }
}

/// A relative weight: default 1.0, finite and > 0.
pub(super) fn weight(ctx: &mut Ctx<'_>, scope: &Scope, field: &str, raw: Option<f64>) -> f64 {
    let value = raw.unwrap_or(1.0);
    if value.is_finite() && value > 0.0 {
        value
    } else {
        ctx.report(scope, field, format!("must be greater than 0 (got {value})"));
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_syntax() {
        assert_eq!(
            secret_source("$(cat /path/to/oauth-token.txt)"),
            Ok(SecretSource::Command("cat /path/to/oauth-token.txt".into()))
        );
        assert_eq!(secret_source("  $( op read x )  "), Ok(SecretSource::Command("op read x".into())));
        // Nested parentheses: only the final `)` closes.
        assert_eq!(secret_source("$(echo $(date))"), Ok(SecretSource::Command("echo $(date)".into())));
        assert!(secret_source("$()").is_err());
        assert!(secret_source("$(  )").is_err());
        assert!(secret_source("$(cat token").is_err());
    }

    #[test]
    fn literal_keys() {
        assert_eq!(secret_source("sk-abc"), Ok(SecretSource::Literal("sk-abc".into())));
        // A `$(` not at the start is just part of the key.
        assert_eq!(secret_source("a$(b)"), Ok(SecretSource::Literal("a$(b)".into())));
        assert_eq!(secret_source(""), Err("is empty"));
    }

    #[test]
    fn header_value_rules() {
        assert_eq!(header_value_problem("a\tb"), None);
        assert_eq!(header_value_problem("ключ"), None);
        for bad in ["a\rb", "a\nb", "a\0b", "a\x7fb", "a\x1bb"] {
            let problem = header_value_problem(bad).unwrap_or_default();
            assert!(problem.contains("control character"), "{bad:?}");
        }
        assert!(header_value_problem(" a").is_some());
        assert!(header_value_problem("a\t").is_some());
    }
}
