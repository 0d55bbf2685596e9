//! The properties the fuzz targets check, one function per target, so that they can
//! also be run over a corpus without libFuzzer (see `tests/corpus.rs`).
//!
//! Every function must never panic for any input, except where it asserts a
//! property of celeriac's own parsers (a panic there is a bug found).

use celeriac_core::message::{DecodeError, Envelope, Properties, CONTENT_TYPE_JSON};
use celeriac_core::routing::{glob_matches, topic_matches};
use celeriac_core::TaskMessage;

/// The task message decoder: `data` as a kombu JSON envelope, and as the body of an
/// envelope with valid task headers. A message that decodes must encode into one that
/// decodes again.
pub fn task_message(data: &[u8]) {
    if let Ok(envelope) = Envelope::from_kombu_json(data) {
        decode_and_reencode(&envelope);
    }
    let mut headers = serde_json::Map::new();
    headers.insert("task".into(), "tasks.add".into());
    headers.insert("id".into(), "fuzz-0001".into());
    let envelope = Envelope {
        headers: headers.into(),
        properties: Properties::default(),
        content_type: CONTENT_TYPE_JSON.into(),
        content_encoding: "utf-8".into(),
        body: data.to_vec(),
    };
    decode_and_reencode(&envelope);
}

fn decode_and_reencode(envelope: &Envelope) {
    let _ = envelope.approximate_size();
    match TaskMessage::decode(envelope) {
        Ok(message) => {
            let again = message.encode();
            if let Err(error) = TaskMessage::decode(&again) {
                panic!("a decoded message re-encodes into one that does not decode: {error}");
            }
        }
        Err(error) => {
            // Every refusal has a reason to put in the dead letters.
            assert!(!error.to_string().is_empty());
            let _: &DecodeError = &error;
        }
    }
}

/// kombu's JSON envelope as the Redis and SQLite brokers read it: what decodes must
/// survive our own encoding unchanged (headers, content type, body bytes).
pub fn kombu_envelope(data: &[u8]) {
    let Ok(envelope) = Envelope::from_kombu_json(data) else {
        return;
    };
    let _ = envelope.task_id_hint();
    let _ = envelope.task_name_hint();
    let encoded = envelope.to_kombu_json();
    let back = match Envelope::from_kombu_json(&encoded) {
        Ok(back) => back,
        Err(error) => panic!("our own envelope does not decode: {error}"),
    };
    assert_eq!(back.body, envelope.body, "body bytes survive a round trip");
    assert_eq!(
        back.headers, envelope.headers,
        "headers survive a round trip"
    );
    assert_eq!(back.content_type, envelope.content_type);
    assert_eq!(back.content_encoding, envelope.content_encoding);
}

/// Celery crontab strings: a parsed crontab prints an expression that parses to the
/// same crontab, and its next run after a fixed instant is later than that instant.
pub fn crontab(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(crontab) = celeriac_beat::Crontab::parse(text) else {
        return;
    };
    let expression = crontab.expression();
    match celeriac_beat::Crontab::parse(&expression) {
        Ok(again) => assert!(again == crontab, "{expression:?} parses to another crontab"),
        Err(error) => {
            panic!("the expression {expression:?} of a parsed crontab does not parse: {error}")
        }
    }
    let after = chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default();
    if let Some(next) = crontab.next_after(after) {
        assert!(
            next > after,
            "{expression:?}: next run {next} is not after {after}"
        );
    }
}

/// AMQP topic matching (`*` one word, `#` zero or more) against a plain
/// backtracking reference, on inputs small enough for it; and task-name globs.
/// The input is `pattern \n key`.
pub fn routing_key(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, key) = text.split_once('\n').unwrap_or((text, ""));
    let fast = topic_matches(pattern, key);
    if pattern.split('.').count() <= 12 && key.split('.').count() <= 12 {
        let p: Vec<&str> = pattern.split('.').collect();
        let k: Vec<&str> = key.split('.').collect();
        assert_eq!(
            fast,
            reference_topic(&p, &k),
            "topic_matches({pattern:?}, {key:?})"
        );
    }
    assert!(topic_matches(key, key) || key.split('.').any(|w| w == "*" || w == "#"));
    assert!(topic_matches("#", key), "# matches every key");
    let _ = glob_matches(pattern, key);
    assert!(glob_matches("*", key), "* matches every name");
    assert!(glob_matches(key, key) || key.contains('*') || key.contains('?'));
}

fn reference_topic(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => (0..=key.len()).any(|skip| reference_topic(rest, &key[skip..])),
        Some((&"*", rest)) => !key.is_empty() && reference_topic(rest, &key[1..]),
        Some((word, rest)) => key.first() == Some(word) && reference_topic(rest, &key[1..]),
    }
}
