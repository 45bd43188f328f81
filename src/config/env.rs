//! `${VAR}` and `${VAR:-default}` expansion inside string values of the file.
//!
//! Only `${` starts an expansion: `$(` is left alone for the `$(command)` secret
//! syntax and any other `$` is literal. The environment is passed in as a lookup
//! function so tests never touch the process environment. Knows nothing of YAML.

/// Why a value could not be expanded. Messages never quote the value itself,
/// which may be a secret; only the variable name the user wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ExpandError {
    #[error("environment variable {0} is not set")]
    Unset(String),
    #[error("has an unterminated `${{` (missing `}}`)")]
    Unterminated,
    #[error(
        "has an invalid variable name in `${{...}}` \
         (use letters, digits and `_`, not starting with a digit)"
    )]
    BadName,
}

/// Replaces every `${NAME}` / `${NAME:-default}` in `text`.
///
/// The default is used when NAME is unset *or empty* (shell `:-` semantics) and
/// runs to the first `}`, so it cannot itself contain `}` or another `${...}`.
/// Substituted text is not expanded again.
pub(crate) fn expand<F>(text: &str, lookup: F) -> Result<String, ExpandError>
where
    F: Fn(&str) -> Option<String>,
{
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or(ExpandError::Unterminated)?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        if !is_valid_name(name) {
            return Err(ExpandError::BadName);
        }
        match (lookup(name), default) {
            (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => return Err(ExpandError::Unset(name.to_string())),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// POSIX shell variable names: what `export NAME=...` accepts.
fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/me".to_string()),
            "KEY" => Some("sk-123".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(expand("api.openai.com", env).as_deref(), Ok("api.openai.com"));
        assert_eq!(expand("", env).as_deref(), Ok(""));
    }

    #[test]
    fn set_variable_is_substituted() {
        assert_eq!(expand("${KEY}", env).as_deref(), Ok("sk-123"));
        assert_eq!(expand("a-${KEY}-b-${KEY}", env).as_deref(), Ok("a-sk-123-b-sk-123"));
    }

    #[test]
    fn unset_variable_is_an_error_naming_it() {
        let err = expand("${OPENAI_API_KEY}", env).unwrap_err();
        assert_eq!(err, ExpandError::Unset("OPENAI_API_KEY".into()));
        assert_eq!(err.to_string(), "environment variable OPENAI_API_KEY is not set");
    }

    #[test]
    fn default_applies_when_unset_or_empty() {
        assert_eq!(expand("${NOPE:-fallback}", env).as_deref(), Ok("fallback"));
        assert_eq!(expand("${EMPTY:-fallback}", env).as_deref(), Ok("fallback"));
        assert_eq!(expand("${KEY:-fallback}", env).as_deref(), Ok("sk-123"));
        assert_eq!(expand("${NOPE:-}", env).as_deref(), Ok(""));
        assert_eq!(expand("${EMPTY}", env).as_deref(), Ok(""));
    }

    #[test]
    fn other_dollars_are_literal() {
        assert_eq!(expand("$HOME $ $$ a$", env).as_deref(), Ok("$HOME $ $$ a$"));
        assert_eq!(expand("$(cat token)", env).as_deref(), Ok("$(cat token)"));
    }

    #[test]
    fn expansion_inside_command_syntax() {
        assert_eq!(expand("$(cat ${HOME}/token)", env).as_deref(), Ok("$(cat /home/me/token)"));
    }

    #[test]
    fn substituted_text_is_not_expanded_again() {
        let lookup = |n: &str| (n == "A").then(|| "${B}".to_string());
        assert_eq!(expand("${A}", lookup).as_deref(), Ok("${B}"));
    }

    #[test]
    fn unterminated_and_bad_names_are_errors() {
        assert_eq!(expand("x${KEY", env), Err(ExpandError::Unterminated));
        assert_eq!(expand("${}", env), Err(ExpandError::BadName));
        assert_eq!(expand("${1X}", env), Err(ExpandError::BadName));
        assert_eq!(expand("${A B}", env), Err(ExpandError::BadName));
        assert_eq!(expand("${A-b}", env), Err(ExpandError::BadName));
    }
}
