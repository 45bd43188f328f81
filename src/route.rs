//! The routing table: `Host` (or `:authority`) plus an optional path prefix
//! pick the groups of providers that may serve a request, most specific
//! first; which of them does is the client key's to decide (see `proxy`).
//! Built once per snapshot from providers; the authority syntax is
//! `authority`'s, the same one the config was validated with.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use crate::authority;
use crate::provider::{Provider, ProviderType};

/// Providers that share one `host` value (name, port and prefix) and a type.
#[derive(Debug)]
pub struct Route {
    pub port: Option<u16>,
    pub prefix: Option<String>,
    pub kind: ProviderType,
    pub providers: Vec<Arc<Provider>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Miss {
    UnknownHost,
    NoPrefix,
}

#[derive(Debug, Default)]
pub struct Router {
    by_host: HashMap<String, Vec<Route>>,
}

impl Router {
    /// `entries` are (host name, host port, prefix, provider).
    pub fn new<'a>(entries: impl IntoIterator<Item = (&'a str, Option<u16>, Option<&'a str>, Arc<Provider>)>) -> Self {
        let mut by_host: HashMap<String, Vec<Route>> = HashMap::new();
        for (host, port, prefix, provider) in entries {
            let routes = by_host.entry(host.to_string()).or_default();
            let same = |r: &&mut Route| r.port == port && r.prefix.as_deref() == prefix && r.kind == provider.kind;
            match routes.iter_mut().find(same) {
                Some(route) => route.providers.push(provider),
                None => routes.push(Route {
                    port,
                    prefix: prefix.map(String::from),
                    kind: provider.kind,
                    providers: vec![provider],
                }),
            }
        }
        // Most specific first: longer prefix, then an explicit port.
        for routes in by_host.values_mut() {
            routes.sort_by_key(|r| (std::cmp::Reverse(r.prefix.as_ref().map_or(0, String::len)), r.port.is_none()));
        }
        Router { by_host }
    }

    /// Every route for `authority` (a `Host` value) and `path`, most specific
    /// first (longer prefix, then an explicit port), each with the path its
    /// upstream should see (prefix removed). `default_port` is the listener's
    /// scheme port, used when the authority names none.
    pub fn matching<'r, 'p>(
        &'r self,
        authority: &str,
        default_port: u16,
        path: &'p str,
    ) -> Result<impl Iterator<Item = (&'r Route, Cow<'p, str>)>, Miss> {
        let (name, port) = authority::split(authority).map_err(|_| Miss::UnknownHost)?;
        let port = port.unwrap_or(default_port);
        let routes = self.by_host.get(name.as_ref()).ok_or(Miss::UnknownHost)?;
        let on_port = move |r: &&Route| r.port.is_none_or(|p| p == port);
        let port_matched = routes.iter().any(|r| on_port(&r));
        let mut found = routes
            .iter()
            .filter(on_port)
            .filter_map(move |route| strip_prefix(path, route.prefix.as_deref()).map(|rest| (route, rest)))
            .peekable();
        match (found.peek().is_some(), port_matched) {
            (true, _) => Ok(found),
            (false, true) => Err(Miss::NoPrefix),
            (false, false) => Err(Miss::UnknownHost),
        }
    }
}

impl Route {
    /// How specific the route is; routes of one level compete on equal terms.
    pub fn level(&self) -> (usize, bool) {
        (self.prefix.as_ref().map_or(0, String::len), self.port.is_some())
    }
}

/// `path` without `prefix` when it is under it: `/p` and `/p/...` and `/p?...`
/// match `/p`; `/p2` does not.
fn strip_prefix<'p>(path: &'p str, prefix: Option<&str>) -> Option<Cow<'p, str>> {
    let Some(prefix) = prefix else {
        return Some(Cow::Borrowed(path));
    };
    let rest = path.strip_prefix(prefix)?;
    match rest.as_bytes().first() {
        None => Some(Cow::Borrowed("/")),
        Some(b'/') => Some(Cow::Borrowed(rest)),
        Some(b'?') => Some(Cow::Owned(format!("/{rest}"))),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        assert_eq!(strip_prefix("/openai", Some("/openai")).as_deref(), Some("/"));
        assert_eq!(strip_prefix("/openai/v1/x", Some("/openai")).as_deref(), Some("/v1/x"));
        assert_eq!(strip_prefix("/openai?a=1", Some("/openai")).as_deref(), Some("/?a=1"));
        assert_eq!(strip_prefix("/openai2", Some("/openai")), None);
        assert_eq!(strip_prefix("/v1", None).as_deref(), Some("/v1"));
    }
}
