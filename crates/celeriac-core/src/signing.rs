//! Optional message signing: HMAC-SHA256 over a message's content type, headers and
//! body with a key shared by every producer and worker of a deployment.
//!
//! When signing is on (`signing_key` / `CELERIAC_SIGNING_KEY`), celeriac producers put
//! [`SIGNATURE_HEADER`] on every task message they publish (including retries and
//! deferred runs that workers publish), and celeriac workers refuse any message whose
//! signature is missing or wrong: it goes to the dead letters with the reason, it is
//! never decoded, and no result is written for its task id (a forged message must not
//! be able to overwrite another task's result).
//!
//! # What is signed
//!
//! `HMAC-SHA256(key, "celeriac-signature-v1" ‖ len ‖ content-type ‖ len ‖ headers ‖
//! len ‖ body)`, each part preceded by its length as 8 big-endian bytes, where
//! `headers` is the canonical JSON of the application headers (object keys sorted, no
//! whitespace) without the headers brokers add or change in transit: the signature
//! header itself, `redelivered` (kombu's restore sets it) and every `x-…` header
//! (RabbitMQ's `x-delivery-count`, `x-death`, …). Message properties are not signed
//! (brokers rewrite delivery info, tags and priorities).
//!
//! The header value is `hmac-sha256:<base64 of the 32-byte MAC>`; it is compared in
//! constant time.
//!
//! # Python producers
//!
//! Python Celery cannot produce this signature (its own `auth` serializer signs with
//! X.509 certificates and a different envelope), so a fleet where Python clients or
//! workers send tasks to celeriac workers must leave signing off.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::message::Envelope;

/// The header that carries a message's signature.
pub const SIGNATURE_HEADER: &str = "celeriac_signature";

/// Prefix of the signature header's value (names the algorithm).
const SCHEME: &str = "hmac-sha256:";

/// Domain separation: a MAC over something else with the same key never verifies here.
const CONTEXT: &[u8] = b"celeriac-signature-v1";

/// The shortest key [`SigningKey::new`] accepts, in bytes.
pub const MIN_KEY_BYTES: usize = 16;

/// Why a key or a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SigningError {
    /// The configured key is too short to be a secret.
    #[error("signing_key is {len} bytes; use at least {MIN_KEY_BYTES} random bytes")]
    KeyTooShort {
        /// Length of the key given.
        len: usize,
    },
    /// Signing is on and the message carries no signature.
    #[error("unsigned message refused: signing is on (signing_key) and the message has no {SIGNATURE_HEADER} header")]
    Unsigned,
    /// The signature header is not a string of the expected form.
    #[error("malformed {SIGNATURE_HEADER} header: {0}")]
    Malformed(String),
    /// The signature does not match the message (forged, altered, or another key).
    #[error("bad signature: the {SIGNATURE_HEADER} header does not match the message (altered in transit, forged, or signed with another key)")]
    Mismatch,
}

/// A shared HMAC key. Its `Debug` output never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey {
    key: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(*** {} bytes)", self.key.len())
    }
}

impl SigningKey {
    /// A key from the configured secret (its UTF-8 bytes); at least
    /// [`MIN_KEY_BYTES`] long.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<SigningKey, SigningError> {
        let key = secret.as_ref().to_vec();
        if key.len() < MIN_KEY_BYTES {
            return Err(SigningError::KeyTooShort { len: key.len() });
        }
        Ok(SigningKey { key })
    }

    /// The key of a `signing_key` setting: `None` when the setting is empty (signing
    /// off), an error when it is set but too short.
    pub fn from_setting(secret: &str) -> Result<Option<SigningKey>, SigningError> {
        if secret.is_empty() {
            Ok(None)
        } else {
            SigningKey::new(secret).map(Some)
        }
    }

    /// A key of any non-empty length (`None` when empty), for configurations whose
    /// length was checked elsewhere (the app refuses short keys at build time): a
    /// short key still signs and verifies, so a misconfiguration never turns
    /// verification off.
    pub fn any_length(secret: impl AsRef<[u8]>) -> Option<SigningKey> {
        let key = secret.as_ref().to_vec();
        (!key.is_empty()).then_some(SigningKey { key })
    }

    fn mac(&self, envelope: &Envelope) -> Hmac<Sha256> {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
        let headers = canonical_headers(&envelope.headers);
        for part in [
            CONTEXT,
            envelope.content_type.as_bytes(),
            headers.as_slice(),
            envelope.body.as_slice(),
        ] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The signature header value for `envelope` as it is now.
    pub fn signature(&self, envelope: &Envelope) -> String {
        let tag = self.mac(envelope).finalize().into_bytes();
        format!(
            "{SCHEME}{}",
            base64::engine::general_purpose::STANDARD.encode(tag)
        )
    }

    /// Signs `envelope`: sets (or replaces) its [`SIGNATURE_HEADER`].
    pub fn sign(&self, envelope: &mut Envelope) {
        let signature = self.signature(envelope);
        envelope
            .headers
            .insert(SIGNATURE_HEADER.to_string(), Value::String(signature));
    }

    /// Checks `envelope`'s signature (in constant time).
    pub fn verify(&self, envelope: &Envelope) -> Result<(), SigningError> {
        let given = match envelope.headers.get(SIGNATURE_HEADER) {
            None => return Err(SigningError::Unsigned),
            Some(Value::String(text)) => text,
            Some(other) => {
                return Err(SigningError::Malformed(format!(
                    "expected a string, found {}",
                    json_kind(other)
                )))
            }
        };
        let Some(encoded) = given.strip_prefix(SCHEME) else {
            return Err(SigningError::Malformed(format!(
                "expected {SCHEME}<base64>"
            )));
        };
        let tag = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|e| SigningError::Malformed(format!("not base64: {e}")))?;
        self.mac(envelope)
            .verify_slice(&tag)
            .map_err(|_| SigningError::Mismatch)
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Whether a header takes part in the signature (brokers add or change the others).
fn is_signed_header(name: &str) -> bool {
    name != SIGNATURE_HEADER && name != "redelivered" && !name.starts_with("x-")
}

/// The canonical JSON of the signed headers: keys sorted at every level, no spaces.
fn canonical_headers(headers: &Map<String, Value>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut names: Vec<&String> = headers.keys().filter(|k| is_signed_header(k)).collect();
    names.sort();
    out.push(b'{');
    for (i, name) in names.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(&mut out, name);
        out.push(b':');
        if let Some(value) = headers.get(name) {
            write_canonical(&mut out, value);
        }
    }
    out.push(b'}');
    out
}

/// Writes `value` as canonical JSON. Values come from a JSON parser with a nesting
/// limit (or from our own code), so the recursion is bounded.
fn write_canonical(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, key);
                out.push(b':');
                if let Some(inner) = map.get(key) {
                    write_canonical(out, inner);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(out, item);
            }
            out.push(b']');
        }
        Value::String(text) => write_string(out, text),
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

fn write_string(out: &mut Vec<u8>, text: &str) {
    // serde_json's string escaping is deterministic.
    out.extend_from_slice(Value::String(text.to_string()).to_string().as_bytes());
}

/// Compares two secrets in time that depends only on their lengths' maximum, never
/// on where they differ, and does not stop early on a length mismatch.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len().max(b.len());
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..len {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::TaskMessage;
    use serde_json::json;

    fn key() -> SigningKey {
        SigningKey::new("0123456789abcdef-test-key").expect("key")
    }

    fn signed() -> Envelope {
        let mut envelope =
            TaskMessage::new("tasks.add", "sig-1", vec![json!(2), json!(3)], Map::new()).encode();
        key().sign(&mut envelope);
        envelope
    }

    #[test]
    fn a_signed_message_verifies() {
        let envelope = signed();
        let value = envelope.headers[SIGNATURE_HEADER].as_str().expect("string");
        assert!(value.starts_with("hmac-sha256:"), "{value}");
        assert_eq!(key().verify(&envelope), Ok(()));
    }

    #[test]
    fn the_signature_survives_a_kombu_json_round_trip_and_header_reordering() {
        let envelope = signed();
        let mut back = Envelope::from_kombu_json(&envelope.to_kombu_json()).expect("decodes");
        assert_eq!(key().verify(&back), Ok(()));
        // Reverse the header order (AMQP field tables come back sorted).
        let reversed: Map<String, Value> = back.headers.clone().into_iter().rev().collect();
        back.headers = reversed.into();
        assert_eq!(key().verify(&back), Ok(()));
        // Broker-added headers do not break it.
        back.headers.insert("redelivered".into(), json!(true));
        back.headers.insert("x-delivery-count".into(), json!(2));
        assert_eq!(key().verify(&back), Ok(()));
    }

    #[test]
    fn unsigned_altered_and_foreign_messages_are_refused() {
        let unsigned = TaskMessage::new("tasks.add", "u", vec![], Map::new()).encode();
        assert_eq!(key().verify(&unsigned), Err(SigningError::Unsigned));

        let mut body = signed();
        body.body = br#"[[200, 3], {}, {}]"#.to_vec();
        assert_eq!(key().verify(&body), Err(SigningError::Mismatch));

        let mut header = signed();
        header.headers.insert("task".into(), json!("os.system"));
        assert_eq!(key().verify(&header), Err(SigningError::Mismatch));

        let mut added = signed();
        added
            .headers
            .insert("eta".into(), json!("2099-01-01T00:00:00"));
        assert_eq!(key().verify(&added), Err(SigningError::Mismatch));

        let mut content_type = signed();
        content_type.content_type = "application/x-yaml".into();
        assert_eq!(key().verify(&content_type), Err(SigningError::Mismatch));

        let other = SigningKey::new("another-key-of-16+bytes").expect("key");
        assert_eq!(other.verify(&signed()), Err(SigningError::Mismatch));

        let mut garbage = signed();
        garbage
            .headers
            .insert(SIGNATURE_HEADER.into(), json!("hmac-sha256:***"));
        assert!(matches!(
            key().verify(&garbage),
            Err(SigningError::Malformed(_))
        ));
        garbage.headers.insert(SIGNATURE_HEADER.into(), json!(42));
        assert!(matches!(
            key().verify(&garbage),
            Err(SigningError::Malformed(_))
        ));
        garbage
            .headers
            .insert(SIGNATURE_HEADER.into(), json!("md5:abc"));
        assert!(matches!(
            key().verify(&garbage),
            Err(SigningError::Malformed(_))
        ));
    }

    #[test]
    fn float_headers_survive_parsing_exactly() {
        // Found by the kombu_envelope fuzz target: without serde_json's
        // float_roundtrip, 1795709015.4771734 parsed one ULP off, so a header float
        // changed on every hop and broke signatures.
        let mut envelope = TaskMessage::new("t", "f", vec![], Map::new()).encode();
        envelope.headers.insert(
            "timelimit".into(),
            json!([1795709015.4771734_f64, 0.30000000000000004_f64]),
        );
        key().sign(&mut envelope);
        let back = Envelope::from_kombu_json(&envelope.to_kombu_json()).expect("decodes");
        assert_eq!(back.headers, envelope.headers);
        assert_eq!(key().verify(&back), Ok(()));
    }

    #[test]
    fn nested_header_values_are_canonical() {
        let mut a = Map::new();
        a.insert("stamps".into(), json!({"b": 1, "a": [1, {"y": 2, "x": 1}]}));
        let mut b = Map::new();
        b.insert("stamps".into(), json!({"a": [1, {"x": 1, "y": 2}], "b": 1}));
        assert_eq!(canonical_headers(&a), canonical_headers(&b));
        assert_eq!(
            String::from_utf8(canonical_headers(&a)).expect("utf-8"),
            r#"{"stamps":{"a":[1,{"x":1,"y":2}],"b":1}}"#
        );
    }

    #[test]
    fn short_keys_are_refused_and_keys_never_print() {
        assert_eq!(
            SigningKey::new("short"),
            Err(SigningError::KeyTooShort { len: 5 })
        );
        assert_eq!(SigningKey::from_setting(""), Ok(None));
        let key = key();
        assert_eq!(format!("{key:?}"), "SigningKey(*** 25 bytes)");
    }

    #[test]
    fn constant_time_eq_compares_whole_secrets() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
        // A prefix is not equal, whichever side is longer.
        assert!(!constant_time_eq(b"sec", b"secret"));
        assert!(!constant_time_eq(b"secret\0", b"secret"));
    }
}
