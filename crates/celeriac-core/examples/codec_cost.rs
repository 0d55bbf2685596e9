//! The codec's cost per message, for instruction counts under
//! `valgrind --tool=callgrind` (repeatable on a loaded machine, unlike wall time).
//!
//! ```sh
//! cargo build --release -p celeriac-core --example codec_cost
//! valgrind --tool=callgrind target/release/examples/codec_cost decode 10000
//! ```
//!
//! Modes: `decode` (kombu JSON → [`Envelope`] → [`TaskMessage`], the worker's
//! receive path), `encode` ([`TaskMessage`] → [`Envelope`] → kombu JSON, the
//! producer's send path), `roundtrip` (both). Prints the wall time per message too.

use std::time::Instant;

use celeriac_core::{Envelope, TaskMessage};

/// A message as Celery 5 publishes it to Redis (`tests/golden/task_plain.json`).
const CELERY_MESSAGE: &str = include_str!("../tests/golden/task_plain.json");

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "roundtrip".into());
    let count: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let raw = CELERY_MESSAGE.as_bytes().to_vec();
    let message = match Envelope::from_kombu_json(&raw).map(|e| TaskMessage::decode(&e)) {
        Ok(Ok(message)) => message,
        other => {
            eprintln!("the sample message does not decode: {other:?}");
            std::process::exit(1);
        }
    };
    let started = Instant::now();
    let mut bytes = 0usize;
    for _ in 0..count {
        if mode == "decode" || mode == "roundtrip" {
            let envelope = Envelope::from_kombu_json(&raw).expect("sample decodes");
            let decoded = TaskMessage::decode(&envelope).expect("sample decodes");
            bytes += decoded.headers.id.len();
        }
        if mode == "encode" || mode == "roundtrip" {
            bytes += message.encode().to_kombu_json().len();
        }
    }
    let per = started.elapsed() / count.max(1) as u32;
    println!("{mode}: {count} messages, {per:?} per message ({bytes} bytes touched)");
}
