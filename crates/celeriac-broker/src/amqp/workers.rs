//! Workers on RabbitMQ: there is no registry to write heartbeats to, so, as Flower
//! and `celery events` do, the broker listens to the workers' own events
//! (`worker-online`, `worker-heartbeat`, `worker-offline` on the `celeryev` topic
//! exchange, routing keys `worker.#`) and keeps the latest of each worker. Celery and
//! celeriac workers send them (celeriac always; Celery with `-E` or by default for
//! heartbeats).
//!
//! The first [`WorkerRegistry::workers`] call subscribes and waits one heartbeat
//! interval (Celery's 2 s) so that the live workers have been heard; later calls
//! answer at once from what the subscription has seen since.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use parking_lot::Mutex;
use serde_json::{Map, Value};

use crate::{Broker, BrokerError, SubscribeParams, WorkerInfo};

/// How long the first listing listens before it answers (Celery's heartbeat
/// interval, plus a margin).
pub const FIRST_LISTEN: Duration = Duration::from_millis(2_300);

/// The latest heartbeat of each worker heard on `celeryev`.
#[derive(Default)]
pub struct WorkerRegistry {
    seen: Arc<Mutex<BTreeMap<String, WorkerInfo>>>,
    listening: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl WorkerRegistry {
    /// The workers heard so far, latest heartbeat first; subscribes (and listens
    /// for [`FIRST_LISTEN`]) on the first call or after the subscription ended.
    pub async fn workers(&self, broker: &dyn Broker) -> Result<Vec<WorkerInfo>, BrokerError> {
        let mut listening = self.listening.lock().await;
        if listening.as_ref().is_none_or(|task| task.is_finished()) {
            let params = SubscribeParams {
                exchange: "celeryev".into(),
                routing_key: Some("worker.#".into()),
            };
            let mut subscription = broker.subscribe(&params).await?;
            let seen = Arc::clone(&self.seen);
            *listening = Some(tokio::spawn(async move {
                while let Some(message) = subscription.recv().await {
                    for event in celeriac_core::event::events_in(&message.envelope) {
                        record(&seen, &event);
                    }
                }
            }));
            drop(listening);
            tokio::time::sleep(FIRST_LISTEN).await;
        }
        let mut workers: Vec<WorkerInfo> = self.seen.lock().values().cloned().collect();
        workers.sort_by_key(|w| std::cmp::Reverse(w.last_heartbeat));
        Ok(workers)
    }
}

impl Drop for WorkerRegistry {
    fn drop(&mut self) {
        if let Some(task) = self.listening.get_mut().take() {
            task.abort();
        }
    }
}

/// Folds one worker event into the registry.
fn record(seen: &Mutex<BTreeMap<String, WorkerInfo>>, event: &Map<String, Value>) {
    let kind = event
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !kind.starts_with("worker-") {
        return;
    }
    let Some(hostname) = event.get("hostname").and_then(Value::as_str) else {
        return;
    };
    let number = |key: &str| event.get(key).and_then(Value::as_f64);
    let at = number("timestamp")
        .and_then(|t| Utc.timestamp_millis_opt((t * 1000.0) as i64).single())
        .unwrap_or_else(Utc::now);
    let mut seen = seen.lock();
    let worker = seen
        .entry(hostname.to_string())
        .or_insert_with(|| WorkerInfo {
            hostname: hostname.to_string(),
            pid: 0,
            queues: Vec::new(),
            active: 0,
            processed: 0,
            started_at: at,
            last_heartbeat: at,
            freq: 2.0,
            online: true,
        });
    if kind == "worker-online" {
        worker.started_at = at;
    }
    if let Some(pid) = number("pid") {
        worker.pid = pid as u32;
    }
    if let Some(active) = number("active") {
        worker.active = active as u64;
    }
    if let Some(processed) = number("processed") {
        worker.processed = processed as u64;
    }
    if let Some(freq) = number("freq").filter(|f| *f > 0.0) {
        worker.freq = freq;
    }
    worker.last_heartbeat = at.max(worker.last_heartbeat);
    worker.online = kind != "worker-offline";
}

/// When an event was sent (for tests).
#[cfg(test)]
fn timestamp(at: chrono::DateTime<Utc>) -> f64 {
    at.timestamp_millis() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("an object")
    }

    #[test]
    fn worker_events_make_a_registry_entry_and_offline_ends_it() {
        let seen = Mutex::new(BTreeMap::new());
        let start = Utc::now() - chrono::Duration::seconds(10);
        record(
            &seen,
            &event(
                json!({"type": "worker-online", "hostname": "w1@h", "pid": 42,
                "freq": 2.0, "timestamp": timestamp(start)}),
            ),
        );
        let later = start + chrono::Duration::seconds(9);
        record(
            &seen,
            &event(
                json!({"type": "worker-heartbeat", "hostname": "w1@h", "active": 3,
                "processed": 17, "freq": 2.0, "timestamp": timestamp(later)}),
            ),
        );
        record(
            &seen,
            &event(json!({"type": "task-succeeded", "hostname": "w1@h"})),
        );
        let worker = seen.lock()["w1@h"].clone();
        assert_eq!((worker.pid, worker.active, worker.processed), (42, 3, 17));
        assert_eq!(worker.started_at.timestamp(), start.timestamp());
        assert!(worker.is_alive(later + chrono::Duration::seconds(1)));
        record(
            &seen,
            &event(json!({"type": "worker-offline", "hostname": "w1@h",
                "timestamp": timestamp(later)})),
        );
        assert!(!seen.lock()["w1@h"].online);
    }
}
