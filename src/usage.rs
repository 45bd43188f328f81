//! Token usage read from answers as their bytes pass, for metrics and logs:
//! no buffering, no delay, a few bytes of state. Every LLM API this proxy
//! fronts reports usage as JSON numbers under known names — in a whole JSON
//! body, or in stream events (OpenAI's final usage chunk, Anthropic's
//! `message_start` and `message_delta`, Gemini's `usageMetadata`) — so a
//! matcher that looks for `"<name>":` followed by digits finds them wherever
//! reads, chunks or frames cut the bytes; the last value seen wins (streams
//! repeat running totals). Escaped text inside a JSON string cannot match: a
//! quote there is preceded by a backslash. The model is taken the same way.
//! A leaf: plain bytes in, numbers out.

/// Names whose value is the prompt's tokens.
const INPUT: [&[u8]; 3] = [b"\"prompt_tokens\":", b"\"input_tokens\":", b"\"promptTokenCount\":"];
/// Names whose value is the answer's tokens.
const OUTPUT: [&[u8]; 3] = [b"\"completion_tokens\":", b"\"output_tokens\":", b"\"candidatesTokenCount\":"];
const MODEL: &[u8] = b"\"model\":";
/// Longest name above, and so the bytes kept between two pieces.
const KEEP: usize = 24;
/// Most tokens one answer can plausibly report.
const PLAUSIBLE: u64 = 1 << 32;
/// Longest model name kept.
const MAX_MODEL: usize = 64;

/// What was read so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Usage {
    pub input: Option<u64>,
    pub output: Option<u64>,
    pub model: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Input,
    Output,
}

/// A value being read after its name matched.
#[derive(Debug)]
enum Reading {
    None,
    /// Digits so far (whitespace before them allowed).
    Number(Field, Option<u64>),
    /// A string value: `started` once its opening quote was seen.
    Text {
        started: bool,
        text: Vec<u8>,
    },
}

/// The matcher: feed it every piece of a body in order.
#[derive(Debug)]
pub struct Scanner {
    usage: Usage,
    /// The end of the previous piece, for a name cut in two.
    tail: [u8; KEEP],
    len: usize,
    reading: Reading,
    /// Whether to take the model (only the first one seen counts).
    want_model: bool,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner { usage: Usage::default(), tail: [0; KEEP], len: 0, reading: Reading::None, want_model: true }
    }
}

impl Scanner {
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// Takes the model from elsewhere (the request path), which the answer
    /// may then not change: text the model writes could name another.
    pub fn set_model(&mut self, model: &str) {
        if self.usage.model.is_none() && !model.is_empty() {
            self.usage.model = Some(model.chars().take(MAX_MODEL).collect());
            self.want_model = false;
        }
    }

    pub fn feed(&mut self, piece: &[u8]) {
        let mut rest = piece;
        while !rest.is_empty() {
            if !matches!(self.reading, Reading::None) {
                self.step(rest[0]);
                rest = &rest[1..];
                continue;
            }
            // Between values only a `:` can end a name: jump from one to the
            // next, keeping just the bytes a name could span.
            let Some(colon) = memchr::memchr(b':', rest) else {
                self.keep(rest);
                return;
            };
            self.keep(&rest[..=colon]);
            self.matched();
            rest = &rest[colon + 1..];
        }
    }

    /// Appends the end of `bytes` to the tail, keeping its last `KEEP`.
    fn keep(&mut self, bytes: &[u8]) {
        let new = &bytes[bytes.len().saturating_sub(KEEP)..];
        let old = (self.len + new.len()).saturating_sub(KEEP).min(self.len);
        self.tail.copy_within(old..self.len, 0);
        self.len -= old;
        self.tail[self.len..self.len + new.len()].copy_from_slice(new);
        self.len += new.len();
    }

    /// One byte of a value being read.
    fn step(&mut self, byte: u8) {
        match &mut self.reading {
            Reading::Number(field, value) => match byte {
                b'0'..=b'9' => {
                    let digit = u64::from(byte - b'0');
                    *value = Some(value.unwrap_or(0).saturating_mul(10).saturating_add(digit));
                    return;
                }
                b' ' | b'\t' | b'\r' | b'\n' if value.is_none() => return,
                _ => {
                    let (field, value) = (*field, *value);
                    self.reading = Reading::None;
                    // A count past 2^32 tokens is no answer's: ignored.
                    if let Some(value) = value.filter(|v| *v <= PLAUSIBLE) {
                        match field {
                            Field::Input => self.usage.input = Some(value),
                            Field::Output => self.usage.output = Some(value),
                        }
                    }
                }
            },
            Reading::Text { started, text } => {
                match (byte, *started) {
                    (b' ' | b'\t' | b'\r' | b'\n', false) => {}
                    (b'"', false) => *started = true,
                    (b'"', true) => {
                        if let Ok(model) = std::str::from_utf8(text) {
                            self.usage.model = Some(model.to_string());
                            self.want_model = false;
                        }
                        self.reading = Reading::None;
                    }
                    (b'\\', true) | (_, false) => self.reading = Reading::None,
                    (_, true) if text.len() < MAX_MODEL => text.push(byte),
                    (_, true) => self.reading = Reading::None,
                }
                return;
            }
            Reading::None => {}
        }
        // The byte that ended a number may start the next name.
        self.keep(&[byte]);
        if byte == b':' {
            self.matched();
        }
    }

    /// A `:` just came: does a name end here?
    fn matched(&mut self) {
        let tail = &self.tail[..self.len];
        let ends = |name: &[u8]| tail.ends_with(name);
        if INPUT.iter().any(|n| ends(n)) {
            self.reading = Reading::Number(Field::Input, None);
        } else if OUTPUT.iter().any(|n| ends(n)) {
            self.reading = Reading::Number(Field::Output, None);
        } else if self.want_model && ends(MODEL) {
            self.reading = Reading::Text { started: false, text: Vec::new() };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `text` cut at every position, and in one piece: same result.
    fn scan_all_ways(text: &str) -> Usage {
        let whole = {
            let mut s = Scanner::default();
            s.feed(text.as_bytes());
            s.usage().clone()
        };
        for cut in 0..=text.len() {
            let mut s = Scanner::default();
            s.feed(&text.as_bytes()[..cut]);
            s.feed(&text.as_bytes()[cut..]);
            assert_eq!(s.usage(), &whole, "cut at {cut}");
        }
        let mut bytewise = Scanner::default();
        for b in text.as_bytes() {
            bytewise.feed(&[*b]);
        }
        assert_eq!(bytewise.usage(), &whole);
        whole
    }

    #[test]
    fn openai_chat_body_and_stream() {
        let body = r#"{"id":"x","model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}"#;
        let u = scan_all_ways(body);
        assert_eq!((u.input, u.output, u.model.as_deref()), (Some(12), Some(34), Some("gpt-4o-mini")));
        let stream = "data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"say \\\"prompt_tokens\\\": 99\"}}]}\n\n\
                      data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\": 7,\"completion_tokens\":8}}\n\ndata: [DONE]\n\n";
        let u = scan_all_ways(stream);
        assert_eq!((u.input, u.output, u.model.as_deref()), (Some(7), Some(8), Some("gpt-4o")));
    }

    #[test]
    fn anthropic_stream_takes_input_from_the_start_and_output_from_the_last_delta() {
        let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-3-5-haiku\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
                      event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n";
        let u = scan_all_ways(stream);
        assert_eq!((u.input, u.output, u.model.as_deref()), (Some(25), Some(15), Some("claude-3-5-haiku")));
    }

    #[test]
    fn gemini_usage_metadata() {
        let body = r#"{"candidates":[],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":9,"totalTokenCount":14},"modelVersion":"gemini-2.0-flash"}"#;
        let u = scan_all_ways(body);
        assert_eq!((u.input, u.output, u.model), (Some(5), Some(9), None));
    }

    #[test]
    fn nothing_to_read_is_none_and_never_an_error() {
        assert_eq!(scan_all_ways("not json at all: \"model\": 12, \"prompt_tokens\": x"), Usage::default());
        let mut s = Scanner::default();
        s.feed(&[0xff, 0xfe, b'"', b':']);
        s.set_model("from-request");
        assert_eq!(s.usage().model.as_deref(), Some("from-request"));
    }
}
