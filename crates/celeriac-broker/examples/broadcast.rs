//! Broadcasts from the command line, for the Python interop suite and for poking at a
//! broker by hand:
//!
//! ```text
//! broadcast listen URL EXCHANGE [BINDING_KEY] [COUNT]   # prints "subscribed", then one JSON line per message
//! broadcast send URL EXCHANGE ROUTING_KEY BODY_JSON [HEADERS_JSON]
//! ```
//!
//! `listen` exits after COUNT messages (default 1), or with status 2 after 60 s.
//! A BINDING_KEY of `-` listens to every routing key.

use std::io::Write as _;
use std::time::Duration;

use celeriac_broker::{Broadcast, SubscribeParams};
use celeriac_core::Envelope;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("listen") if args.len() >= 3 => listen(&args[1..]).await,
        Some("send") if args.len() >= 5 => send(&args[1..]).await,
        _ => Err("usage: broadcast listen URL EXCHANGE [BINDING_KEY|-] [COUNT] | broadcast send URL EXCHANGE ROUTING_KEY BODY_JSON [HEADERS_JSON]".into()),
    };
    if let Err(error) = result {
        eprintln!("broadcast: {error}");
        std::process::exit(1);
    }
}

async fn listen(args: &[String]) -> Result<(), String> {
    let broker = celeriac_broker::connect(&args[0])
        .await
        .map_err(|e| e.to_string())?;
    let routing_key = match args.get(2).map(String::as_str) {
        None | Some("-") => None,
        Some(key) => Some(key.to_string()),
    };
    let count: usize = match args.get(3) {
        Some(n) => n
            .parse()
            .map_err(|_| format!("COUNT {n:?} is not a number"))?,
        None => 1,
    };
    let mut subscription = broker
        .subscribe(&SubscribeParams {
            exchange: args[1].clone(),
            routing_key,
        })
        .await
        .map_err(|e| e.to_string())?;
    println!("subscribed");
    let _ = std::io::stdout().flush();
    for _ in 0..count {
        let message = match tokio::time::timeout(Duration::from_secs(60), subscription.recv()).await
        {
            Ok(Some(message)) => message,
            Ok(None) => return Err("the subscription ended".into()),
            Err(_) => {
                eprintln!("broadcast: nothing received within 60 s");
                std::process::exit(2);
            }
        };
        let body = serde_json::from_slice::<serde_json::Value>(&message.envelope.body)
            .unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&message.envelope.body).into())
            });
        let line = serde_json::json!({
            "exchange": message.exchange,
            "routing_key": message.routing_key,
            "headers": message.envelope.headers,
            "properties": message.envelope.properties,
            "content_type": message.envelope.content_type,
            "body": body,
        });
        println!("{line}");
        let _ = std::io::stdout().flush();
    }
    Ok(())
}

async fn send(args: &[String]) -> Result<(), String> {
    let broker = celeriac_broker::connect(&args[0])
        .await
        .map_err(|e| e.to_string())?;
    let body: serde_json::Value =
        serde_json::from_str(&args[3]).map_err(|e| format!("BODY_JSON: {e}"))?;
    let headers = match args.get(4) {
        Some(text) => match serde_json::from_str(text).map_err(|e| format!("HEADERS_JSON: {e}"))? {
            serde_json::Value::Object(map) => map,
            _ => return Err("HEADERS_JSON must be an object".into()),
        },
        None => serde_json::Map::new(),
    };
    let mut envelope = Envelope {
        headers: headers.into(),
        properties: Default::default(),
        content_type: "application/json".into(),
        content_encoding: "utf-8".into(),
        body: serde_json::to_vec(&body).map_err(|e| e.to_string())?,
    };
    envelope.properties.delivery_mode = Some(1);
    broker
        .broadcast(Broadcast {
            exchange: args[1].clone(),
            routing_key: args[2].clone(),
            envelope,
        })
        .await
        .map_err(|e| e.to_string())
}
