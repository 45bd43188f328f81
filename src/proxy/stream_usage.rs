//! `stream_usage: inject`: OpenAI reports a stream's token usage only when
//! the request asks for it (`stream_options.include_usage`), and many
//! clients do not. For a provider with this option, a streaming chat or
//! completions request that does not ask is sent asking, and the answer is
//! given back as the client asked for it: the usage-only chunk is taken out
//! (the access log has read it by then), and so is the `"usage":null` that
//! every other chunk then carries.

use std::collections::HashMap;

use http::Method;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use super::Plan;
use crate::body::Body;
use crate::error::ProxyError;
use crate::message::RequestHead;

/// Largest request body rewritten. A larger one goes as it came, and its
/// usage counts as unknown.
const MAX_BODY: u64 = 4 * 1024 * 1024;

/// The body to send, and whether usage was asked for on the client's
/// behalf (its answer must then go through [`strip`]).
pub(super) async fn ask(plan: &Plan, head: &RequestHead, body: Body) -> Result<(Body, bool), ProxyError> {
    let wanted = plan.chosen.provider.inject_stream_usage
        && head.method == Method::POST
        && completions(&plan.target)
        && body.exact_len().is_some_and(|n| n > 0 && n <= MAX_BODY);
    if !wanted {
        return Ok((body, false));
    }
    let bytes = body.collect(MAX_BODY as usize).await.map_err(ProxyError::ClientBody)?;
    Ok(match asking(&bytes) {
        Some(rewritten) => (Body::Full(rewritten.into()), true),
        None => (Body::Full(bytes), false),
    })
}

/// Chat completions and (legacy) completions: the APIs with `stream_options`.
fn completions(target: &str) -> bool {
    let path = target.split('?').next().unwrap_or("");
    path.ends_with("/chat/completions") || path.ends_with("/completions")
}

/// The request asking for usage, if it is a stream that does not say either
/// way. Only the member (or the field inside `stream_options`) is added: the
/// client's other bytes go as they came.
fn asking(body: &[u8]) -> Option<Vec<u8>> {
    let members: HashMap<String, &RawValue> = serde_json::from_slice(body).ok()?;
    if !serde_json::from_str::<bool>(members.get("stream")?.get()).ok()? {
        return None;
    }
    let (at, insert): (usize, &[u8]) = match members.get("stream_options") {
        None => (body.iter().position(|b| !b.is_ascii_whitespace())?, br#""stream_options":{"include_usage":true},"#),
        Some(options) => {
            // Only the names matter (a value such as 1e400 must not stop it).
            let fields: HashMap<String, IgnoredAny> = serde_json::from_str(options.get()).ok()?;
            if fields.contains_key("include_usage") {
                return None;
            }
            // The raw value is a slice of `body`: its offset is where it starts.
            let at = (options.get().as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
            let insert: &[u8] =
                if fields.is_empty() { br#""include_usage":true"# } else { br#""include_usage":true,"# };
            (at, insert)
        }
    };
    // 0x7B: an opening brace, where the member or field goes in.
    if body.get(at) != Some(&0x7B) {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() + insert.len());
    out.extend_from_slice(&body[..=at]);
    out.extend_from_slice(insert);
    out.extend_from_slice(&body[at + 1..]);
    Some(out)
}

/// Edits one event of an answer to a request [`ask`] changed. Inside a JSON
/// string a quote is escaped, so the patterns below only match JSON itself.
pub(super) fn strip(event: &[u8], out: &mut Vec<u8>) {
    let no_choices = contains(event, br#""choices":[]"#) || contains(event, br#""choices": []"#);
    // (`\x7b` is an opening brace, written so to keep braces balanced for tools.)
    if no_choices && (contains(event, b"\"usage\":\x7b") || contains(event, b"\"usage\": \x7b")) {
        return;
    }
    let unasked: &[u8] = match () {
        () if contains(event, br#","usage":null"#) => br#","usage":null"#,
        () if contains(event, br#", "usage": null"#) => br#", "usage": null"#,
        () => return out.extend_from_slice(event),
    };
    let mut rest = event;
    while let Some(at) = find(rest, unasked) {
        out.extend_from_slice(&rest[..at]);
        rest = &rest[at + unasked.len()..];
    }
    out.extend_from_slice(rest);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::{asking, strip};

    fn text(bytes: Option<Vec<u8>>) -> Option<String> {
        bytes.map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn only_a_stream_that_does_not_say_is_made_to_ask() {
        assert_eq!(
            text(asking(br#" {"model":"m","stream":true}"#)).as_deref(),
            Some(r#" {"stream_options":{"include_usage":true},"model":"m","stream":true}"#)
        );
        assert_eq!(
            text(asking(br#"{"stream":true,"seed":123456789012345678901234,"stream_options": {"x":1}}"#)).as_deref(),
            Some(r#"{"stream":true,"seed":123456789012345678901234,"stream_options": {"include_usage":true,"x":1}}"#)
        );
        assert_eq!(
            text(asking(br#"{"stream":true,"stream_options":{"x":1e400}}"#)).as_deref(),
            Some(r#"{"stream":true,"stream_options":{"include_usage":true,"x":1e400}}"#)
        );
        assert_eq!(
            text(asking(br#"{"stream_options":{ },"stream":true}"#)).as_deref(),
            Some(r#"{"stream_options":{"include_usage":true },"stream":true}"#)
        );
        for unchanged in [
            &br#"{"stream":false}"#[..],
            br#"{"model":"m"}"#,
            br#"{"stream":true,"stream_options":{"include_usage":false}}"#,
            br#"{"stream":true,"stream_options":null}"#,
            br#"[1]"#,
            b"not json",
        ] {
            assert_eq!(asking(unchanged), None, "{}", String::from_utf8_lossy(unchanged));
        }
    }

    #[test]
    fn the_usage_chunk_and_null_usages_are_taken_out() {
        let edit = |event: &str| {
            let mut out = Vec::new();
            strip(event.as_bytes(), &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(edit("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n"), "");
        assert_eq!(edit("data: {\"choices\": [], \"usage\": {\"prompt_tokens\": 1}}\n\n"), "");
        assert_eq!(edit("data: {\"choices\":[{\"i\":0}],\"usage\":null}\n\n"), "data: {\"choices\":[{\"i\":0}]}\n\n");
        assert_eq!(edit("data: {\"choices\":[], \"usage\": null}\n\n"), "data: {\"choices\":[]}\n\n");
        let quoted = "data: {\"choices\":[{\"delta\":{\"content\":\"\\\"choices\\\":[] \\\"usage\\\":{}\"}}]}\n\n";
        assert_eq!(edit(quoted), quoted);
        assert_eq!(edit("data: [DONE]\n\n"), "data: [DONE]\n\n");
    }
}
