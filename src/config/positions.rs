//! Where each key of the config file sits, for messages. serde_yaml parses
//! the file but keeps no positions once it succeeded; this reads the same text
//! with yaml-rust2's event parser and records the line and column of every
//! key path (`providers[1].weight`) and sequence item (`auth_keys[0]`).

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line and column (both from 1) by key path.
#[derive(Debug, Default)]
pub(super) struct Positions {
    at: HashMap<String, (usize, usize)>,
}

impl Positions {
    /// Positions of `text`; none if it does not parse (serde_yaml, which
    /// reads the file for its values, reports why).
    pub(super) fn read(text: &str) -> Positions {
        let mut recorder = Recorder::default();
        if Parser::new_from_str(text).load(&mut recorder, false).is_err() {
            return Positions::default();
        }
        Positions { at: recorder.at }
    }

    /// Where `key` is, or else the nearest enclosing key that is known (a key
    /// that came from a `<<` merge is not where the file writes it).
    pub(super) fn of(&self, key: &str) -> Option<(usize, usize)> {
        let mut key = key;
        loop {
            if let Some(at) = self.at.get(key) {
                return Some(*at);
            }
            key = &key[..key.rfind(['.', '['])?];
        }
    }
}

enum Frame {
    /// A mapping at `path`; `key` is the key whose value comes next.
    Map { path: String, key: Option<String> },
    /// A sequence at `path`; `next` is the index of its next item.
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Recorder {
    stack: Vec<Frame>,
    at: HashMap<String, (usize, usize)>,
}

impl Recorder {
    /// The path of the value about to start, or `None` when it is a key.
    fn next_value(&mut self, mark: Marker) -> Option<String> {
        let path = match self.stack.last_mut()? {
            Frame::Map { key: None, .. } => return None,
            Frame::Map { path, key } => join(path, key.take().unwrap_or_default().as_str()),
            Frame::Seq { path, next } => {
                let item = format!("{path}[{next}]");
                *next += 1;
                self.at.entry(item.clone()).or_insert((mark.line(), mark.col() + 1));
                item
            }
        };
        Some(path)
    }

    fn start(&mut self, mark: Marker, frame: impl FnOnce(String) -> Frame) {
        let path = match self.stack.is_empty() {
            true => Some(String::new()),
            false => self.next_value(mark),
        };
        // A collection used as a key has no path of its own.
        self.stack.push(frame(path.unwrap_or_else(|| "?".into())));
    }
}

fn join(path: &str, key: &str) -> String {
    match path.is_empty() {
        true => key.to_string(),
        false => format!("{path}.{key}"),
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::MappingStart(..) => self.start(mark, |path| Frame::Map { path, key: None }),
            Event::SequenceStart(..) => self.start(mark, |path| Frame::Seq { path, next: 0 }),
            Event::MappingEnd | Event::SequenceEnd => drop(self.stack.pop()),
            Event::Scalar(text, ..) => {
                if let Some(Frame::Map { path, key: key @ None }) = self.stack.last_mut() {
                    self.at.entry(join(path, &text)).or_insert((mark.line(), mark.col() + 1));
                    *key = Some(text);
                } else {
                    self.next_value(mark);
                }
            }
            Event::Alias(_) => {
                // An alias may stand for a key too: the pairing must stay in step.
                if let Some(Frame::Map { key: key @ None, .. }) = self.stack.last_mut() {
                    *key = Some("*".into());
                } else {
                    self.next_value(mark);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_items_have_their_lines() {
        let text = "http_port: 8080\nauth_keys:\n  - a\n  - b\nproviders:\n  - type: openai\n    weight: 2\n  - {type: x, port: 1}\n";
        let p = Positions::read(text);
        assert_eq!(p.of("http_port").map(|a| a.0), Some(1));
        assert_eq!(p.of("auth_keys[1]").map(|a| a.0), Some(4));
        assert_eq!(p.of("providers[0].weight").map(|a| a.0), Some(7));
        assert_eq!(p.of("providers[1].port").map(|a| a.0), Some(8));
        assert_eq!(p.of("providers[1].nothing").map(|a| a.0), Some(8), "the enclosing item");
        assert_eq!(p.of("nowhere"), None);
    }
}
