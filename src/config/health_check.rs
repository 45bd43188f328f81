//! A provider's `health_check` block: the request the active checker sends
//! (method, path, body, headers). Values are checked here, sent elsewhere.

use super::raw::RawProviderHealthCheck;
use super::secret::header_value_problem;
use super::validate::{Ctx, Scope};
use super::ProviderHealthCheck;

/// The check request: method (default GET, upper-cased), a required `/path`,
/// optional body and headers. `None` if any part is invalid (and reported).
pub(super) fn health_check(
    ctx: &mut Ctx<'_>,
    scope: &Scope,
    raw: &RawProviderHealthCheck,
) -> Option<ProviderHealthCheck> {
    let method = match raw.method.as_deref() {
        None => Some("GET".to_string()),
        Some(raw) => ctx.expand(scope, "health_check.method", raw).and_then(|m| {
            let method = m.trim().to_ascii_uppercase();
            if is_token(&method) {
                return Some(method);
            }
            ctx.report(scope, "health_check.method", format!("{m:?} is not a valid HTTP method"));
            None
        }),
    };
    let path = match raw.path.as_deref() {
        None => {
            ctx.report(scope, "health_check.path", "is required, e.g. \"/v1/models\"");
            None
        }
        Some(raw) => ctx.expand(scope, "health_check.path", raw).and_then(|p| {
            if p.starts_with('/') && !p.contains(|c: char| c.is_whitespace() || c.is_control()) {
                return Some(p);
            }
            // Not quoted: the query may carry a key (`?key=${GEMINI_KEY}`).
            let problem = "must start with `/` and contain no whitespace or control characters";
            ctx.report(scope, "health_check.path", problem);
            None
        }),
    };
    // A body that fails to expand is already reported; keep checking headers.
    let body = raw.body.as_deref().and_then(|raw| ctx.expand(scope, "health_check.body", raw));
    let headers = health_check_headers(ctx, scope, raw.headers.as_deref().unwrap_or_default());
    Some(ProviderHealthCheck { method: method?, path: path?, body, headers })
}

/// `"Name: value"` lines. Values are not quoted in messages: they may carry
/// credentials (`x-api-key: ${KEY}`).
fn health_check_headers(ctx: &mut Ctx<'_>, scope: &Scope, raw: &[String]) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    for (i, line) in raw.iter().enumerate() {
        let field = format!("health_check.headers[{i}]");
        let Some(line) = ctx.expand(scope, &field, line) else {
            continue;
        };
        let Some((name, value)) = line.split_once(':') else {
            ctx.report(scope, &field, "must be \"Name: value\" (no `:` found)");
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if !is_token(name) {
            ctx.report(scope, &field, format!("has an invalid header name {name:?}"));
        } else if !value.is_empty() && header_value_problem(value).is_some() {
            ctx.report(scope, &field, format!("has an invalid value for {name:?}: it contains a control character"));
        } else {
            headers.push((name.to_string(), value.to_string()));
        }
    }
    headers
}

/// RFC 9110 section 5.6.2 `token`, the syntax of methods and header names.
fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{assert_error, errors, ok};

    const OPENAI: &str = "type: openai\nhost: openai.local\nendpoint: api.openai.com\n";

    /// A config with one openai provider whose `health_check` block is `block`.
    fn check(block: &str) -> String {
        let fields = format!("{OPENAI}api_key: k\nhealth_check:\n{block}");
        let body: String = fields.lines().map(|l| format!("    {l}\n")).collect();
        format!("http_port: 8080\nproviders:\n  -\n{body}")
    }

    #[test]
    fn health_check_rules() {
        let config = ok(&check("  path: /x\n  headers: [\"A-B :  v: w \", \"Empty:\"]"));
        let hc = config.providers[0].health_check.clone().unwrap_or_else(|| panic!("none"));
        assert_eq!(hc.method, "GET");
        assert_eq!(hc.headers, [("A-B".into(), "v: w".into()), ("Empty".into(), String::new())]);
        let errs = errors(&check("  method: \"GE T\"\n  headers: [\"no colon\", \"bad name: v\", \"ok: a\\u0000b\"]"));
        assert_error(
            &errs,
            "providers[0].health_check.path",
            &["providers[0] (host \"openai.local\"): health_check.path is required"],
        );
        assert_error(&errs, "providers[0].health_check.method", &["\"GE T\" is not a valid HTTP method"]);
        assert_error(&errs, "providers[0].health_check.headers[0]", &["no `:` found"]);
        assert_error(&errs, "providers[0].health_check.headers[1]", &["invalid header name \"bad name\""]);
        assert_error(&errs, "providers[0].health_check.headers[2]", &["control character"]);
        let errs = errors(&check("  path: v1/models"));
        assert_error(&errs, "providers[0].health_check.path", &["must start with `/`"]);
    }
}
