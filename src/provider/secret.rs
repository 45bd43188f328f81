//! Provider keys as the request path needs them: a literal is a ready header
//! value; a `$(command)` key runs its command with `sh -c` off the request path
//! (async, under a timeout), caches the output, and runs again only when the
//! cache is older than [`COMMAND_TTL`] or an upstream rejected the key with 401.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderValue;

/// How long a command's output is trusted before it is fetched again. Short
/// enough to pick up a rotated token file, long enough to never matter for load.
pub const COMMAND_TTL: Duration = Duration::from_secs(300);
/// How long a credential command may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub enum Secret {
    Literal(HeaderValue),
    Command(CommandSecret),
}

impl Secret {
    /// The current value of the key.
    pub async fn value(&self) -> Result<HeaderValue, String> {
        match self {
            Secret::Literal(value) => Ok(value.clone()),
            Secret::Command(cmd) => cmd.value().await,
        }
    }

    /// An upstream said 401 to `used`: forget it so the next request fetches anew.
    pub fn rejected(&self, used: &HeaderValue) {
        if let Secret::Command(cmd) = self {
            cmd.forget(used);
        }
    }

    pub fn is_command(&self) -> bool {
        matches!(self, Secret::Command(_))
    }
}

#[derive(Debug)]
pub struct CommandSecret {
    command: String,
    /// The cached value; a std mutex because it is held for a clone only, never across an await.
    cached: Mutex<Option<(HeaderValue, Instant)>>,
    /// Serialises fetches so a burst of requests runs the command once.
    fetching: tokio::sync::Mutex<()>,
}

impl CommandSecret {
    pub fn new(command: String) -> Self {
        CommandSecret { command, cached: Mutex::new(None), fetching: tokio::sync::Mutex::new(()) }
    }

    fn fresh(&self) -> Option<HeaderValue> {
        let cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        cached.as_ref().filter(|(_, at)| at.elapsed() < COMMAND_TTL).map(|(v, _)| v.clone())
    }

    pub async fn value(&self) -> Result<HeaderValue, String> {
        if let Some(value) = self.fresh() {
            return Ok(value);
        }
        let _turn = self.fetching.lock().await;
        if let Some(value) = self.fresh() {
            return Ok(value);
        }
        let value = run_command(&self.command).await?;
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some((value.clone(), Instant::now()));
        Ok(value)
    }

    fn forget(&self, used: &HeaderValue) {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if cached.as_ref().is_some_and(|(v, _)| v == used) {
            *cached = None;
        }
    }
}

/// Runs `sh -c command`; the trimmed stdout is the key. Errors never include the
/// output, which may be a partial secret.
async fn run_command(command: &str) -> Result<HeaderValue, String> {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(COMMAND_TIMEOUT, child).await {
        Err(_) => return Err(format!("key command timed out after {}s", COMMAND_TIMEOUT.as_secs())),
        Ok(Err(e)) => return Err(format!("key command could not start: {e}")),
        Ok(Ok(output)) => output,
    };
    if !output.status.success() {
        return Err(format!("key command failed ({})", output.status));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let key = text.trim();
    if key.is_empty() {
        return Err("key command printed nothing".into());
    }
    if key.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err("key command output contains CR, LF or NUL".into());
    }
    let mut value =
        HeaderValue::from_str(key).map_err(|_| "key command output is not a valid header value".to_string())?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn command_output_is_trimmed_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let counter = dir.path().join("count");
        let cmd = format!("echo x >> {0}; echo '  tok-'$(wc -l < {0})'  '", counter.display());
        let secret = Secret::Command(CommandSecret::new(cmd));
        let first = secret.value().await.unwrap();
        assert_eq!(first, "tok-1");
        assert_eq!(secret.value().await.unwrap(), "tok-1", "cached, not run again");
        secret.rejected(&HeaderValue::from_static("something-else"));
        assert_eq!(secret.value().await.unwrap(), "tok-1", "a 401 for another value keeps the cache");
        secret.rejected(&first);
        assert_eq!(secret.value().await.unwrap(), "tok-2", "a 401 for this value refetches");
    }

    #[tokio::test]
    async fn bad_output_is_an_error_without_the_secret() {
        let secret = CommandSecret::new("printf 'abc\\ndef'".into());
        let err = secret.value().await.unwrap_err();
        assert!(err.contains("CR, LF or NUL") && !err.contains("abc"), "{err}");
        let err = CommandSecret::new("exit 3".into()).value().await.unwrap_err();
        assert!(err.contains("failed"), "{err}");
        let err = CommandSecret::new("true".into()).value().await.unwrap_err();
        assert!(err.contains("nothing"), "{err}");
    }
}
