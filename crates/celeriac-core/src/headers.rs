//! [`Headers`]: an envelope's application headers, a JSON object decoded on first use.
//!
//! A received envelope keeps its headers as the JSON text they arrived in. The task
//! decoder reads that text straight into typed [`TaskHeaders`](crate::TaskHeaders),
//! and re-encoding an untouched envelope writes the text back as it was: on a worker's
//! path no header map is ever built (building one, a `String` and a hashed map entry
//! per header, was the largest single cost of receiving a message). Anything that
//! reads the headers as a map ([`Deref`]) builds the map once; anything that changes
//! them ([`DerefMut`]) drops the text, so what is written is always what was changed.

use std::ops::{Deref, DerefMut};
use std::sync::OnceLock;

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::DecodeError;

/// Application headers: a JSON object, as a map ([`Deref`] to
/// `Map<String, Value>`), kept as received JSON text until read as a map.
#[derive(Default)]
pub struct Headers {
    /// The JSON object as received, while nothing changed the headers.
    text: Option<Box<RawValue>>,
    /// The headers as a map, built from `text` on first use (or given).
    map: OnceLock<Map<String, Value>>,
}

impl Headers {
    /// Headers from received JSON text, which must be a JSON object nested no
    /// deeper than [`MAX_DEPTH`] levels. The text is checked to be JSON by whoever
    /// made the `RawValue`; it is not decoded here.
    pub fn from_json(text: Box<RawValue>) -> Result<Headers, DecodeError> {
        if !text.get().trim_start().starts_with('{') {
            return Err(DecodeError::InvalidEnvelope(format!(
                "headers must be a JSON object, found {}",
                preview(text.get())
            )));
        }
        if nesting_exceeds(text.get(), MAX_DEPTH) {
            return Err(DecodeError::InvalidEnvelope(format!(
                "headers nest deeper than {MAX_DEPTH} levels (recursion limit exceeded)"
            )));
        }
        Ok(Headers {
            text: Some(text),
            map: OnceLock::new(),
        })
    }

    /// The JSON text the headers arrived in, while nothing has changed them.
    pub fn json_text(&self) -> Option<&RawValue> {
        self.text.as_deref()
    }

    /// The headers as a map (built now if still text).
    pub fn into_map(mut self) -> Map<String, Value> {
        self.materialize();
        self.map.take().unwrap_or_default()
    }

    /// The size of the headers as JSON text while they are text; `None` once they
    /// are a map (for buffer sizes).
    pub fn approximate_len(&self) -> Option<usize> {
        self.text.as_ref().map(|text| text.get().len())
    }

    /// The map of the received text (empty without text).
    fn build_map(&self) -> Map<String, Value> {
        self.text.as_deref().map(parse).unwrap_or_default()
    }

    fn materialize(&mut self) {
        if self.map.get().is_none() {
            let _ = self.map.set(self.build_map());
        }
    }
}

/// How deep received headers may nest (the header object itself is level 1):
/// within the JSON parser's limit of 128 levels for the whole envelope, so the map
/// can always be built.
pub const MAX_DEPTH: usize = 126;

/// Whether JSON `text` nests objects and arrays deeper than `limit` levels (a
/// byte scan: brackets inside strings do not count).
fn nesting_exceeds(text: &str, limit: usize) -> bool {
    // Headers rarely hold more than a few brackets in all: when there are no more
    // than `limit`, no nesting can exceed it.
    if count_openings(text.as_bytes()) <= limit {
        return false;
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in text.as_bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// How many `{` and `[` bytes `bytes` holds. Counted in byte-wide lanes over
/// chunks short enough not to overflow them, which the compiler vectorizes (a
/// `filter().count()` cost about three instructions a byte, the largest part of
/// receiving an envelope's headers).
fn count_openings(bytes: &[u8]) -> usize {
    bytes
        .chunks(255)
        .map(|chunk| {
            // `{` is 0x7B and `[` 0x5B: they differ only in bit 0x20, and no other
            // byte becomes 0x7B with that bit set.
            let count = chunk
                .iter()
                .fold(0u8, |count, &byte| count + u8::from(byte | 0x20 == b'{'));
            usize::from(count)
        })
        .sum()
}

/// Builds the map of a received object. The text is valid JSON, an object, and
/// within the parser's nesting limit ([`Headers::from_json`] checked), so this
/// does not fail; if it did, the headers would read as empty.
fn parse(text: &RawValue) -> Map<String, Value> {
    serde_json::from_str(text.get()).unwrap_or_default()
}

fn preview(text: &str) -> String {
    let mut end = text.len().min(40);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

impl Deref for Headers {
    type Target = Map<String, Value>;

    fn deref(&self) -> &Map<String, Value> {
        self.map.get_or_init(|| self.build_map())
    }
}

impl DerefMut for Headers {
    fn deref_mut(&mut self) -> &mut Map<String, Value> {
        self.materialize();
        // Changed headers are written from the map from now on.
        self.text = None;
        match self.map.get_mut() {
            Some(map) => map,
            None => unreachable!("materialize() set the map"),
        }
    }
}

impl From<Map<String, Value>> for Headers {
    fn from(map: Map<String, Value>) -> Headers {
        Headers {
            text: None,
            map: OnceLock::from(map),
        }
    }
}

impl From<Headers> for Map<String, Value> {
    fn from(headers: Headers) -> Map<String, Value> {
        headers.into_map()
    }
}

impl FromIterator<(String, Value)> for Headers {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Headers {
        Headers::from(iter.into_iter().collect::<Map<String, Value>>())
    }
}

impl IntoIterator for Headers {
    type Item = (String, Value);
    type IntoIter = serde_json::map::IntoIter;

    fn into_iter(self) -> Self::IntoIter {
        self.into_map().into_iter()
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a String, &'a Value);
    type IntoIter = serde_json::map::Iter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl Clone for Headers {
    fn clone(&self) -> Headers {
        Headers {
            text: self.text.clone(),
            map: self.map.clone(),
        }
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Headers) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl Serialize for Headers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.text {
            Some(text) => text.serialize(serializer),
            None => (**self).serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn received(text: &str) -> Headers {
        let raw = RawValue::from_string(text.to_string()).expect("valid JSON");
        Headers::from_json(raw).expect("an object")
    }

    #[test]
    fn received_headers_read_as_a_map_and_write_back_verbatim() {
        let headers = received(r#"{"task": "t",  "id":"x", "n": [1, 2]}"#);
        assert_eq!(headers.get("task"), Some(&json!("t")));
        assert_eq!(headers.len(), 3);
        // Untouched: written as received, spacing included.
        assert_eq!(
            serde_json::to_string(&headers).expect("serializes"),
            r#"{"task": "t",  "id":"x", "n": [1, 2]}"#
        );
        assert!(headers.json_text().is_some());
    }

    #[test]
    fn changed_headers_are_written_from_the_map() {
        let mut headers = received(r#"{"task": "t", "id": "x"}"#);
        headers.insert("retries".into(), json!(1));
        assert!(headers.json_text().is_none());
        assert_eq!(
            serde_json::to_value(&headers).expect("serializes"),
            json!({"task": "t", "id": "x", "retries": 1})
        );
    }

    #[test]
    fn only_objects_are_headers() {
        for text in ["[1, 2]", "\"text\"", "null", "3"] {
            let raw = RawValue::from_string(text.to_string()).expect("valid JSON");
            let error = Headers::from_json(raw).expect_err(text);
            assert!(
                error.to_string().contains("must be a JSON object"),
                "{error}"
            );
        }
    }

    #[test]
    fn text_and_map_headers_compare_by_content() {
        let text = received(r#"{"a": 1, "b": "two"}"#);
        let map = Headers::from(
            json!({"a": 1, "b": "two"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        assert_eq!(text, map);
        assert_eq!(text.clone().into_map(), map.into_map());
    }

    #[test]
    fn openings_are_counted_exactly() {
        let slow = |bytes: &[u8]| bytes.iter().filter(|&&b| b == b'{' || b == b'[').count();
        let mut text = Vec::new();
        for i in 0..2_000u32 {
            // Every byte value, brackets among them, over several chunk lengths.
            text.push((i.wrapping_mul(97) % 256) as u8);
            assert_eq!(count_openings(&text), slow(&text), "length {}", text.len());
        }
        assert_eq!(count_openings(&[b'['; 1_000]), 1_000);
        assert_eq!(count_openings(b"{}[]"), 2);
    }

    #[test]
    fn headers_nested_too_deep_are_refused() {
        let nested = |levels: usize| {
            format!(
                "{{\"x\": {}{}}}",
                "[".repeat(levels - 1),
                "]".repeat(levels - 1)
            )
        };
        let deepest = received(&nested(MAX_DEPTH));
        assert_eq!(deepest.len(), 1, "the deepest allowed headers build a map");
        let raw = RawValue::from_string(nested(MAX_DEPTH + 1)).expect("valid JSON");
        let error = Headers::from_json(raw).expect_err("too deep");
        assert!(error.to_string().contains("recursion limit"), "{error}");
        // Brackets inside strings do not count.
        let quoted = format!("{{\"x\": \"{}\\\"{}\"}}", "[".repeat(500), "{".repeat(500));
        assert!(received(&quoted).get("x").is_some());
    }
}
