//! Validation of `providers[]`: type, host route, endpoint, numbers, keys,
//! and conflicts between providers sharing a route.

use super::address::{parse_endpoint, parse_host, HostRoute};
use super::health_check::health_check;
use super::raw::{AllowExtensions, RawProvider};
use super::secret;
use super::timeouts;
use super::validate::{Ctx, Scope};
use super::{ProviderConfig, ProviderType};

const VALID_TYPES: &str = "openai, gemini, anthropic, forward";

/// All providers; the list must not be empty.
pub(super) fn providers(ctx: &mut Ctx<'_>, raw: Option<Vec<AllowExtensions<RawProvider>>>) -> Vec<ProviderConfig> {
    let raw = raw.unwrap_or_default();
    if raw.is_empty() {
        ctx.report(&Scope::top(), "providers", "must list at least one provider");
    }
    let mut providers: Vec<ProviderConfig> =
        raw.into_iter().enumerate().filter_map(|(index, p)| provider(ctx, index, p.0)).collect();
    metric_names(&mut providers);
    for (i, p) in providers.iter().enumerate() {
        let Some(name) = &p.name else { continue };
        if let Some(first) = providers[..i].iter().find(|q| q.name.as_ref() == Some(name)) {
            let scope = Scope::provider(p.index, Some(&p.route()));
            ctx.report(&scope, "name", format!("{name:?} is already the name of providers[{}]", first.index));
        }
    }
    providers
}

/// Every provider's name in metrics: its own, or the default, made unique
/// with `#<index>` where providers would share it (series must not merge).
fn metric_names(providers: &mut [ProviderConfig]) {
    let default = |p: &ProviderConfig| format!("{}:{}:{}", p.kind.as_str(), p.endpoint, p.port);
    let defaults: Vec<String> = providers.iter().map(default).collect();
    let taken = |name: &str, me: usize| {
        providers
            .iter()
            .enumerate()
            .any(|(i, p)| i != me && (p.name.as_deref() == Some(name) || (p.name.is_none() && defaults[i] == name)))
    };
    let names: Vec<String> = providers
        .iter()
        .enumerate()
        .map(|(i, p)| match &p.name {
            Some(name) => name.clone(),
            None if taken(&defaults[i], i) => format!("{}#{}", defaults[i], p.index),
            None => defaults[i].clone(),
        })
        .collect();
    for (p, name) in providers.iter_mut().zip(names) {
        p.metric_name = name;
    }
}

/// `name`: a label for metrics and logs, so short and printable.
fn name(ctx: &mut Ctx<'_>, scope: &Scope, raw: Option<&str>) -> Option<String> {
    let name = ctx.expand(scope, "name", raw?)?;
    let fine = !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_graphic());
    if !fine {
        ctx.report(scope, "name", "must be 1 to 64 visible ASCII characters, without spaces");
        return None;
    }
    Some(name)
}

/// One provider. Returns `None` only when type, host or endpoint is unusable
/// (so route conflicts can still be checked for the others); every problem is
/// recorded in `ctx` either way.
fn provider(ctx: &mut Ctx<'_>, index: usize, raw: RawProvider) -> Option<ProviderConfig> {
    let (scope, route) = host(ctx, index, raw.host.as_deref());
    let kind = kind(ctx, &scope, raw.kind.as_deref());
    let name = name(ctx, &scope, raw.name.as_deref());
    let tls = raw.tls.unwrap_or(true);
    let upstream = endpoint(ctx, &scope, &raw, tls);
    let weight = secret::weight(ctx, &scope, "weight", raw.weight);
    let api_keys = secret::api_keys(ctx, &scope, kind, raw.api_key.as_ref(), raw.api_keys.as_deref());
    let auth_keys = secret::client_keys(ctx, &scope, "auth_keys", raw.auth_keys.as_deref());
    let client_auth = raw.client_auth.unwrap_or(true);
    if !client_auth && kind.is_some_and(|k| k != ProviderType::Forward) {
        // Anyone could spend the provider's key.
        ctx.report(
            &scope,
            "client_auth",
            "can be false only for forward providers: anyone could use this provider's key",
        );
    }
    let health_check = raw.health_check.as_ref().and_then(|h| health_check(ctx, &scope, h));
    let ca_file = ctx.path(&scope, "ca_file", raw.ca_file.as_deref());
    let timeouts = timeouts::provider(ctx, &scope, &raw);
    let inject_stream_usage = stream_usage(ctx, &scope, kind, raw.stream_usage.as_deref());
    let (route, kind, (endpoint, port)) = (route?, kind?, upstream?);
    Some(ProviderConfig {
        index,
        kind,
        name,
        metric_name: String::new(),
        host: route.name,
        host_port: route.port,
        path_prefix: route.prefix,
        endpoint,
        port,
        tls,
        weight,
        priority: raw.priority.unwrap_or(0),
        is_fallback: raw.is_fallback.unwrap_or(false),
        api_keys,
        auth_keys,
        client_auth,
        health_check,
        ca_file,
        timeouts,
        inject_stream_usage,
    })
}

/// `stream_usage`: `pass` (the default) or `inject`, which only OpenAI's
/// chat and completions streams understand.
fn stream_usage(ctx: &mut Ctx<'_>, scope: &Scope, kind: Option<ProviderType>, raw: Option<&str>) -> bool {
    match raw {
        None | Some("pass") => false,
        Some("inject") if kind.is_none_or(|k| k == ProviderType::OpenAi) => true,
        Some("inject") => {
            ctx.report(
                scope,
                "stream_usage",
                "can be `inject` only for openai providers (it sets their stream_options)",
            );
            false
        }
        Some(_) => {
            ctx.report(scope, "stream_usage", "must be `pass` or `inject`");
            false
        }
    }
}

/// `host`, parsed first because its name goes into every later message.
fn host(ctx: &mut Ctx<'_>, index: usize, raw: Option<&str>) -> (Scope, Option<HostRoute>) {
    let unnamed = Scope::provider(index, None);
    let Some(raw) = raw else {
        ctx.report(&unnamed, "host", "is required (the name clients send in the Host header)");
        return (unnamed, None);
    };
    let Some(text) = ctx.expand(&unnamed, "host", raw) else {
        return (unnamed, None);
    };
    match parse_host(&text) {
        Ok(route) => {
            let port = route.port.map(|p| format!(":{p}")).unwrap_or_default();
            let label = format!("{}{port}{}", route.name, route.prefix.as_deref().unwrap_or(""));
            (Scope::provider(index, Some(&label)), Some(route))
        }
        Err(problem) => {
            let scope = Scope::provider(index, Some(text.trim()));
            ctx.report(&scope, "host", problem);
            (scope, None)
        }
    }
}

fn kind(ctx: &mut Ctx<'_>, scope: &Scope, raw: Option<&str>) -> Option<ProviderType> {
    let Some(raw) = raw else {
        ctx.report(scope, "type", format!("is required (one of {VALID_TYPES})"));
        return None;
    };
    let text = ctx.expand(scope, "type", raw)?;
    match text.trim().to_ascii_lowercase().as_str() {
        "openai" => Some(ProviderType::OpenAi),
        "gemini" => Some(ProviderType::Gemini),
        "anthropic" => Some(ProviderType::Anthropic),
        "forward" => Some(ProviderType::Forward),
        _ => {
            // The value is not shown: a key written in the wrong place must not reach a log.
            let problem = match super::schema::closest(&text, VALID_TYPES.split(", ")) {
                Some(kind) => format!("is not a provider type; did you mean `{kind}`?"),
                None => format!("is not a provider type; valid types are {VALID_TYPES}"),
            };
            ctx.report(scope, "type", problem);
            None
        }
    }
}

/// `endpoint` and `port`: a `:port` in the endpoint wins, but a different
/// `port` beside it is a contradiction, not a preference.
fn endpoint(ctx: &mut Ctx<'_>, scope: &Scope, raw: &RawProvider, tls: bool) -> Option<(String, u16)> {
    let port = ctx.port(scope, "port", raw.port);
    let Some(raw_endpoint) = raw.endpoint.as_deref() else {
        ctx.report(scope, "endpoint", "is required (the upstream host, e.g. \"api.openai.com\")");
        return None;
    };
    let text = ctx.expand(scope, "endpoint", raw_endpoint)?;
    let (name, endpoint_port) = match parse_endpoint(&text) {
        Ok(parsed) => parsed,
        Err(problem) => {
            ctx.report(scope, "endpoint", problem);
            return None;
        }
    };
    if let (Some(a), Some(b)) = (endpoint_port, port) {
        if a != b {
            ctx.report(scope, "port", format!("is {b} but endpoint {text:?} says port {a}; remove one of them"));
        }
    }
    if raw.port.is_some() && port.is_none() {
        return None;
    }
    let default = if tls { 443 } else { 80 };
    Some((name, endpoint_port.or(port).unwrap_or(default)))
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{assert_error, errors, ok};
    use crate::config::{ProviderType, SecretSource};

    /// A config with one provider made of `fields` (YAML lines, 4-space indented).
    fn one(fields: &str) -> String {
        let body: String = fields.lines().map(|l| format!("    {l}\n")).collect();
        format!("http_port: 8080\nproviders:\n  - x-marker: 1\n{body}")
    }

    const OPENAI: &str = "type: openai\nhost: openai.local\nendpoint: api.openai.com\n";

    #[test]
    fn all_provider_keys_are_read() {
        let config =
            ok(&one("type: Anthropic\nhost: API.Local:8443/v1/\nendpoint: \"[::1]:9000\"\ntls: false\nweight: 0.5\n\
             priority: -3\nis_fallback: true\napi_key: k\nauth_keys: [c1]\nca_file: /ca.pem\n\
             health_check:\n  method: post\n  path: /health\n  body: \"{}\""));
        let p = &config.providers[0];
        assert_eq!(p.index, 0);
        assert_eq!(p.kind, ProviderType::Anthropic);
        assert_eq!((p.host.as_str(), p.host_port, p.path_prefix.as_deref()), ("api.local", Some(8443), Some("/v1")));
        assert_eq!((p.endpoint.as_str(), p.port, p.tls), ("::1", 9000, false));
        assert_eq!((p.weight, p.priority, p.is_fallback), (0.5, -3, true));
        assert_eq!(p.auth_keys, ["c1"]);
        assert_eq!(p.ca_file.as_deref(), Some(std::path::Path::new("/ca.pem")));
        let hc = p.health_check.clone().unwrap_or_else(|| panic!("no health check"));
        assert_eq!((hc.method.as_str(), hc.path.as_str(), hc.body.as_deref()), ("POST", "/health", Some("{}")));
        assert_eq!(p.label(), "providers[0] (host \"api.local:8443/v1\")");
    }

    #[test]
    fn port_defaults_follow_tls_and_endpoint() {
        let port = |extra: &str| ok(&one(&format!("{OPENAI}api_key: k\n{extra}"))).providers[0].port;
        assert_eq!(port(""), 443);
        assert_eq!(port("tls: false"), 80);
        assert_eq!(port("port: 8443"), 8443);
        let config = ok(&one("type: forward\nhost: h\nendpoint: b:8080\nport: 8080"));
        assert_eq!(config.providers[0].port, 8080);
    }

    #[test]
    fn unknown_type_lists_valid_types() {
        let errs = errors(&one("type: mistral\nhost: m.local\nendpoint: e\napi_key: k"));
        assert_error(
            &errs,
            "providers[0].type",
            &["providers[0] (host \"m.local\"): type is not a provider type", "openai, gemini, anthropic, forward"],
        );
    }

    #[test]
    fn required_fields_are_reported_together() {
        let errs = errors(&one("weight: 1"));
        assert_error(&errs, "providers[0].host", &["providers[0]: host is required"]);
        assert_error(&errs, "providers[0].type", &["type is required"]);
        assert_error(&errs, "providers[0].endpoint", &["endpoint is required"]);
    }

    #[test]
    fn host_and_endpoint_problems_name_the_provider() {
        let errs =
            errors(&one("type: openai\nhost: https://openai.local\nendpoint: https://api.openai.com/v1\napi_key: k"));
        assert_error(
            &errs,
            "providers[0].host",
            &["providers[0] (host \"https://openai.local\"): host must not include a scheme"],
        );
        assert_error(&errs, "providers[0].endpoint", &["endpoint must not include a scheme", "tls"]);
        let errs = errors(&one("type: openai\nhost: a.local\nendpoint: api.openai.com/v1\napi_key: k"));
        assert_error(&errs, "providers[0].endpoint", &["providers[0] (host \"a.local\"): endpoint", "without a path"]);
        let errs = errors(&one("type: openai\nhost: \"a.local:99999\"\nendpoint: e\napi_key: k"));
        assert_error(&errs, "providers[0].host", &["invalid port"]);
    }

    #[test]
    fn port_conflict_and_range() {
        let errs = errors(&one(
            &format!("{OPENAI}api_key: k\nendpoint: e:8080\nport: 9090").replace("endpoint: api.openai.com\n", "")
        ));
        assert_error(&errs, "providers[0].port", &["port is 9090 but endpoint \"e:8080\" says port 8080"]);
        let errs = errors(&one(&format!("{OPENAI}api_key: k\nport: 0")));
        assert_error(
            &errs,
            "providers[0].port",
            &["providers[0] (host \"openai.local\"): port must be between 1 and 65535 (got 0)"],
        );
    }

    #[test]
    fn weight_must_be_positive_and_finite() {
        let errs = errors(&one(&format!("{OPENAI}api_key: k\nweight: -1")));
        assert_error(
            &errs,
            "providers[0].weight",
            &["providers[0] (host \"openai.local\"): weight must be greater than 0 (got -1)"],
        );
        let errs = errors(&one(&format!("{OPENAI}api_key: k\nweight: .nan")));
        assert_error(&errs, "providers[0].weight", &["got NaN"]);
        let errs = errors(&one(&format!("{OPENAI}api_keys:\n  - key: a\n    weight: 0")));
        assert_error(&errs, "providers[0].api_keys[0].weight", &["api_keys[0].weight must be greater than 0 (got 0)"]);
    }

    #[test]
    fn llm_types_take_at_most_one_key_source() {
        assert!(ok(&one(OPENAI)).providers[0].api_keys.is_empty(), "no key: the client's own passes through");
        let both = ok(&one(&format!("{OPENAI}api_key: a\napi_keys: [{{key: b}}]")));
        assert_eq!(both.providers[0].api_keys.len(), 2, "merged (a deprecated form)");
        assert!(both.deprecations[0].contains("together with api_key is deprecated"), "{:?}", both.deprecations);
        let errs = errors(&one(&format!("{OPENAI}api_key: []")));
        assert_error(&errs, "providers[0].api_key", &["is an empty list"]);
        let list = ok(&one(&format!("{OPENAI}api_key: [a, b, c]")));
        assert_eq!(list.providers[0].api_keys.len(), 3);
        assert!(list.deprecations[0].contains("api_key as a list is deprecated"), "{:?}", list.deprecations);
        let errs = errors(&one(&format!("{OPENAI}api_keys: []")));
        assert_error(&errs, "providers[0].api_keys", &["api_keys is empty"]);
    }

    #[test]
    fn forward_must_not_have_keys() {
        let errs = errors(&one("type: forward\nhost: f\nendpoint: b\napi_key: k"));
        assert_error(&errs, "providers[0].api_key", &["providers[0] (host \"f\"): api_key would be unused"]);
        let errs = errors(&one("type: forward\nhost: f\nendpoint: b\napi_keys: [{key: k}]"));
        assert_error(&errs, "providers[0].api_keys", &["api_keys would be unused"]);
    }

    #[test]
    fn api_key_sources() {
        let config = ok(&one(&format!("{OPENAI}api_keys:\n  - key: \"$( op read x )\"\n  - key: lit\n    weight: 3")));
        let keys = &config.providers[0].api_keys;
        assert_eq!(keys[0].source, SecretSource::Command("op read x".into()));
        assert_eq!((keys[1].source.clone(), keys[1].weight), (SecretSource::Literal("lit".into()), 3.0));
        let errs = errors(&one(&format!("{OPENAI}api_key: \"$(cat token\"")));
        assert_error(&errs, "providers[0].api_key", &["starts with `$(` but does not end with `)`"]);
        let errs = errors(&one(&format!("{OPENAI}api_key: \"$()\"")));
        assert_error(&errs, "providers[0].api_key", &["empty `$()` command"]);
    }

    #[test]
    fn bad_literal_keys_are_not_printed() {
        let errs = errors(&one(&format!(
            "{OPENAI}api_key: \"sk-secret\\r\\nX: y\"\nauth_keys: [\"\", \"tab-secret\\u0001\"]"
        )));
        assert_error(
            &errs,
            "providers[0].api_key",
            &["providers[0] (host \"openai.local\"): api_key contains a control character"],
        );
        assert_error(&errs, "providers[0].auth_keys[0]", &["auth_keys[0] is empty"]);
        assert_error(&errs, "providers[0].auth_keys[1]", &["auth_keys[1] contains a control character"]);
        assert!(errs.iter().all(|e| !e.message.contains("secret")), "{errs:#?}");
        let errs = errors(&one(&format!("{OPENAI}api_key: \"\"")));
        assert_error(&errs, "providers[0].api_key", &["api_key is empty"]);
    }

    #[test]
    fn env_errors_name_the_provider_key() {
        let errs = errors(&one(&format!("{OPENAI}api_key: \"${{OPENAI_API_KEY_NOT_SET_FOR_TEST}}\"")));
        assert_error(
            &errs,
            "providers[0].api_key",
            &["providers[0] (host \"openai.local\"): api_key: environment variable OPENAI_API_KEY_NOT_SET_FOR_TEST is not set"],
        );
    }

    #[test]
    fn one_route_may_mix_types() {
        let text = "http_port: 80\nproviders:\n\
            \x20 - {type: openai, host: a.local, endpoint: e, api_key: k}\n\
            \x20 - {type: gemini, host: a.local, endpoint: e, api_key: k}\n\
            \x20 - {type: forward, host: a.local, endpoint: e}\n";
        assert_eq!(ok(text).providers.len(), 3, "each request goes to the providers whose own auth accepts it");
    }
}
