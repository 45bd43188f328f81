//! The one authority syntax (`name[:port]` or `[v6][:port]`, RFC 3986 §3.2),
//! shared by the config (a provider's `host` and `endpoint`) and the request
//! path (a client's `Host` or `:authority`), so a route that validates is a
//! route a request can reach. Names are lower-cased, IPv6 literals written in
//! their canonical form. A leaf: it knows text, nothing else.

use std::borrow::Cow;
use std::net::Ipv6Addr;

/// Why a text is not an authority. Carries no input: callers quote it themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("has `[` without a closing `]`")]
    UnclosedBracket,
    #[error("has unexpected text after `]`")]
    AfterBracket,
    #[error("has an invalid IPv6 address in brackets")]
    BadIpv6,
    #[error("has an empty host name")]
    EmptyName,
    #[error("has an invalid port: must be a number between 1 and 65535")]
    BadPort,
    #[error("has an invalid character in the host name; use letters, digits, `.`, `-` and `_`")]
    BadChar(char),
}

/// Splits an authority into its normalised name and optional port.
pub fn split(text: &str) -> Result<(Cow<'_, str>, Option<u16>), AuthorityError> {
    if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or(AuthorityError::UnclosedBracket)?;
        let ip: Ipv6Addr = inside.parse().map_err(|_| AuthorityError::BadIpv6)?;
        let port = match after {
            "" => None,
            _ => Some(port(after.strip_prefix(':').ok_or(AuthorityError::AfterBracket)?)?),
        };
        return Ok((Cow::Owned(ip.to_string()), port));
    }
    let (name, port) = match text.split_once(':') {
        Some((name, digits)) => (name, Some(port(digits)?)),
        None => (text, None),
    };
    if name.is_empty() {
        return Err(AuthorityError::EmptyName);
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))) {
        return Err(AuthorityError::BadChar(bad));
    }
    let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    };
    Ok((name, port))
}

fn port(digits: &str) -> Result<u16, AuthorityError> {
    match digits.parse::<u16>() {
        Ok(p) if p != 0 && digits.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(AuthorityError::BadPort),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> (String, Option<u16>) {
        let (name, port) = split(text).unwrap();
        (name.into_owned(), port)
    }

    #[test]
    fn forms() {
        assert_eq!(ok("a.b"), ("a.b".into(), None));
        assert_eq!(ok("A.b:8080"), ("a.b".into(), Some(8080)));
        assert_eq!(ok("[::1]:9"), ("::1".into(), Some(9)));
        assert_eq!(ok("[0:0::1]"), ("::1".into(), None));
    }

    #[test]
    fn errors() {
        assert_eq!(split("a:b"), Err(AuthorityError::BadPort));
        assert_eq!(split("a:+80"), Err(AuthorityError::BadPort));
        assert_eq!(split("a:0"), Err(AuthorityError::BadPort));
        assert_eq!(split(":80"), Err(AuthorityError::EmptyName));
        assert_eq!(split("[::1]x"), Err(AuthorityError::AfterBracket));
        assert_eq!(split("[::1"), Err(AuthorityError::UnclosedBracket));
        assert_eq!(split("[zz]"), Err(AuthorityError::BadIpv6));
        assert_eq!(split("a b"), Err(AuthorityError::BadChar(' ')));
        assert_eq!(split("a:b:c"), Err(AuthorityError::BadPort));
    }
}
