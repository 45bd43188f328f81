//! Request paths made safe to route and forward: dot-segments removed (RFC
//! 3986 §5.2.4) before a route's prefix is matched, `.` written as `%2e`
//! counted as one, and what no upstream should be asked for refused —
//! a path that climbs above the root, or an encoded `/` or `\` that would let
//! a segment pass for two.

/// The target (path and query) with its path's dot-segments removed, or why
/// it is refused. The query is left as it is.
pub fn normalize(target: &str) -> Result<std::borrow::Cow<'_, str>, &'static str> {
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return Err("an encoded '/' or '\\' in the path");
    }
    let dotted = |segment: &str| {
        let decoded = segment.replace("%2e", ".").replace("%2E", ".");
        matches!(decoded.as_str(), "." | "..").then_some(decoded)
    };
    if !path.split('/').any(|segment| dotted(segment).is_some()) {
        return Ok(std::borrow::Cow::Borrowed(target));
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match dotted(segment).as_deref() {
            Some(".") => {}
            Some(_) => {
                if out.pop().is_none() {
                    return Err("the path climbs above the root");
                }
            }
            None => out.push(segment),
        }
        // A path ending in a dot-segment ends with a `/` (RFC 3986 §5.2.4).
        if i == last && dotted(segment).is_some() {
            out.push("");
        }
    }
    let mut normalized = format!("/{}", out.join("/"));
    if let Some(query) = query {
        normalized.push('?');
        normalized.push_str(query);
    }
    Ok(std::borrow::Cow::Owned(normalized))
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn dot_segments_are_removed_and_climbing_out_is_refused() {
        let ok = |t: &str| normalize(t).unwrap_or_else(|e| panic!("{t}: {e}")).into_owned();
        assert_eq!(ok("/v1/chat/completions?x=1"), "/v1/chat/completions?x=1");
        assert_eq!(ok("/openai/../other/x"), "/other/x");
        assert_eq!(ok("/openai/./v1/./models"), "/openai/v1/models");
        assert_eq!(ok("/openai/%2e%2e/x?q=../y"), "/x?q=../y");
        assert_eq!(ok("/openai/%2E/v1"), "/openai/v1");
        assert_eq!(ok("/openai/.."), "/");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/..."), "/a/...", "three dots is a name");
        for bad in ["/..", "/../x", "/openai/../../x", "/%2e%2e/x", "/openai%2fv1", "/a%5Cb"] {
            assert!(normalize(bad).is_err(), "{bad}");
        }
    }
}
