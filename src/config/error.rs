//! The error types every config problem ends up in: one line per problem,
//! naming the key (and, for providers, the provider) but never a secret.

use std::fmt;

/// One problem found in the configuration.
///
/// `message` is the complete sentence shown to the user and already names the
/// key (and the provider, for provider problems); `key` is the same location in
/// machine form (`providers[2].weight`, `http_port`) for callers and tests.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { key: key.into(), message: message.into() }
    }
}

/// Every problem found, in file order where possible. Never empty when returned
/// as an error.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        ConfigErrors(vec![error])
    }
}

impl fmt::Display for ConfigErrors {
    /// One error per line, so a log line or `openproxy check` shows them all.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(&error.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_error_per_line() {
        let errors = ConfigErrors(vec![
            ConfigError::new("http_port", "http_port must be between 1 and 65535 (got 0)"),
            ConfigError::new("providers", "providers must list at least one provider"),
        ]);
        assert_eq!(
            errors.to_string(),
            "http_port must be between 1 and 65535 (got 0)\nproviders must list at least one provider"
        );
        assert_eq!(errors.0[0].to_string(), errors.0[0].message);
    }
}
