//! The syntax of a provider's `host` (what clients send in `Host`, plus an
//! optional path prefix) and `endpoint` (where the proxy connects). Pure string
//! functions; the caller adds the provider label to the messages.

use std::net::Ipv6Addr;

use crate::authority::{self, AuthorityError};

/// A parsed `host`: `name`, `name:port` or `name[:port]/path/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HostRoute {
    /// Lower-cased; an IPv6 literal is stored without brackets.
    pub name: String,
    pub port: Option<u16>,
    /// Starts with `/`, no trailing `/`; `None` for no prefix or just `/`.
    pub prefix: Option<String>,
}

pub(super) fn parse_host(text: &str) -> Result<HostRoute, String> {
    let text = text.trim();
    reject_scheme(
        text,
        "host",
        "write only the name clients send in the Host header, e.g. \"openai.example.com\" or \"openai.example.com/v1\"",
    )?;
    let (authority, path) = match text.find('/') {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let (name, port) = split_authority(authority)?;
    if path.contains(|c: char| c.is_whitespace() || c.is_control() || c == '?' || c == '#') {
        return Err(format!("path prefix must not contain whitespace, `?` or `#` (got {text:?})"));
    }
    let prefix = path.trim_end_matches('/');
    let prefix = (!prefix.is_empty()).then(|| prefix.to_string());
    Ok(HostRoute { name, port, prefix })
}

/// A parsed `endpoint`: `name`, `name:port`, `[v6]`, `[v6]:port` or a bare v6.
pub(super) fn parse_endpoint(text: &str) -> Result<(String, Option<u16>), String> {
    let text = text.trim();
    reject_scheme(text, "endpoint", "write only the upstream host and optional port, e.g. \"api.openai.com\" or \"backend.internal:8080\"; use `tls` to choose HTTPS or HTTP")?;
    if text.contains('/') {
        return Err(format!(
            "must be a host name with an optional port, without a path (got {text:?}); a path prefix for routing belongs in `host`"
        ));
    }
    split_authority(text)
}

fn reject_scheme(text: &str, what: &str, hint: &str) -> Result<(), String> {
    match text.split_once("://") {
        Some((scheme, _)) => {
            Err(format!("must not include a scheme (\"{scheme}://\") (got {text:?}): {what} is not a URL; {hint}"))
        }
        None => Ok(()),
    }
}

/// Splits `name[:port]`, `[v6][:port]` or a bare v6 literal with the request
/// path's own parser, so what validates here is what a `Host` can match.
fn split_authority(text: &str) -> Result<(String, Option<u16>), String> {
    // Two or more colons outside brackets can only be an IPv6 literal written bare.
    if !text.starts_with('[') && text.matches(':').count() > 1 {
        let ip: Ipv6Addr = text.parse().map_err(|_| {
            format!("is not a valid name, name:port or IPv6 address; write IPv6 with a port as \"[::1]:8080\" (got {text:?})")
        })?;
        return Ok((ip.to_string(), None));
    }
    match authority::split(text) {
        Ok((name, port)) => Ok((name.into_owned(), port)),
        Err(AuthorityError::BadChar(bad)) => Err(format!(
            "has an invalid character {bad:?} in the host name (got {text:?}); use letters, digits, `.`, `-` and `_`"
        )),
        Err(e) => Err(format!("{e} (got {text:?})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, port: Option<u16>, prefix: Option<&str>) -> HostRoute {
        HostRoute { name: name.into(), port, prefix: prefix.map(String::from) }
    }

    #[test]
    fn host_forms() {
        assert_eq!(parse_host("OpenAI.Example.com"), Ok(route("openai.example.com", None, None)));
        assert_eq!(parse_host("localhost:8080"), Ok(route("localhost", Some(8080), None)));
        assert_eq!(parse_host("a.local/v1/"), Ok(route("a.local", None, Some("/v1"))));
        assert_eq!(parse_host("a.local:81/x/y"), Ok(route("a.local", Some(81), Some("/x/y"))));
        assert_eq!(parse_host("a.local/"), Ok(route("a.local", None, None)));
        assert_eq!(parse_host("[::1]:8080"), Ok(route("::1", Some(8080), None)));
    }

    #[test]
    fn host_errors_explain() {
        let e = parse_host("https://openai.example.com").unwrap_err();
        assert!(e.contains("scheme") && e.contains("https://"), "{e}");
        assert!(parse_host("").unwrap_err().contains("empty host name"));
        assert!(parse_host(":8080").unwrap_err().contains("empty host name"));
        assert!(parse_host("/v1").unwrap_err().contains("empty host name"));
        assert!(parse_host("a:0").unwrap_err().contains("invalid port"));
        assert!(parse_host("a:65536").unwrap_err().contains("invalid port"));
        assert!(parse_host("a:http").unwrap_err().contains("invalid port"));
        assert!(parse_host("a:").unwrap_err().contains("invalid port"));
        assert!(parse_host("a b").unwrap_err().contains("invalid character"));
        assert!(parse_host("a/v1?x=1").unwrap_err().contains("`?`"));
    }

    #[test]
    fn endpoint_forms() {
        assert_eq!(parse_endpoint("api.openai.com"), Ok(("api.openai.com".into(), None)));
        assert_eq!(parse_endpoint("backend.internal:8080"), Ok(("backend.internal".into(), Some(8080))));
        assert_eq!(parse_endpoint("[::1]:8080"), Ok(("::1".into(), Some(8080))));
        assert_eq!(parse_endpoint("[::1]"), Ok(("::1".into(), None)));
        assert_eq!(parse_endpoint("::1"), Ok(("::1".into(), None)));
        assert_eq!(parse_endpoint("10.0.0.1:80"), Ok(("10.0.0.1".into(), Some(80))));
    }

    #[test]
    fn endpoint_errors_explain() {
        let e = parse_endpoint("https://api.openai.com").unwrap_err();
        assert!(e.contains("scheme") && e.contains("tls"), "{e}");
        let e = parse_endpoint("api.openai.com/v1").unwrap_err();
        assert!(e.contains("without a path"), "{e}");
        assert!(parse_endpoint("[::1").unwrap_err().contains("closing"));
        assert!(parse_endpoint("[::1]x").unwrap_err().contains("after `]`"));
        assert!(parse_endpoint("[zz]:80").unwrap_err().contains("IPv6"));
        assert!(parse_endpoint("a:b:c").unwrap_err().contains("[::1]:8080"));
        assert!(parse_endpoint("api:99999").unwrap_err().contains("invalid port"));
    }
}
