//! A bounded task history built from Celery task events (`celeryev`), so the tasks
//! screen shows received / started / runtime, works on result backends that keep no
//! index (Redis), and `/metrics` has a runtime histogram.
//!
//! The history keeps the most recent `capacity` tasks in memory (oldest first out).
//! Made with [`TaskHistory::persistent`] it also keeps them in a SQLite table
//! ([`store`]): it starts from the newest `capacity` rows there, and [`persist`]
//! writes what changed once a second (a batch, off the event path), pruning the
//! rows of tasks that left the memory bound, so the history survives a dashboard
//! restart. Workers send task events with `-E` (`worker_send_task_events`).

pub mod store;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use celeriac_broker::{Broker, SubscribeParams};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

pub use store::{HistoryError, HistoryStore};

/// How often [`persist`] writes the changed records.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Default number of tasks kept.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// Upper bounds (seconds) of the runtime histogram buckets.
pub const RUNTIME_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// What the events told about one task.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TaskRecord {
    /// Task id.
    pub task_id: String,
    /// Latest state (`RECEIVED`, `STARTED`, `SUCCESS`, `FAILURE`, `RETRY`, `REVOKED`, ...).
    pub status: String,
    /// Task name.
    pub name: Option<String>,
    /// Positional arguments as Celery's events show them (a Python repr).
    pub args: Option<String>,
    /// Keyword arguments (a Python repr).
    pub kwargs: Option<String>,
    /// The result (repr) of a success.
    pub result: Option<String>,
    /// The exception (repr) of a failure or retry.
    pub exception: Option<String>,
    /// The worker that reported last.
    pub worker: Option<String>,
    /// Retries so far.
    pub retries: Option<u64>,
    /// When a worker received it (Unix seconds).
    pub received: Option<f64>,
    /// When it started (Unix seconds).
    pub started: Option<f64>,
    /// When it finished (Unix seconds).
    pub finished: Option<f64>,
    /// Run time in seconds.
    pub runtime: Option<f64>,
    /// The routing key it was sent with (`task-sent`).
    pub routing_key: Option<String>,
}

/// Runtime statistics of one task name (cumulative, for Prometheus).
#[derive(Debug, Clone, Default)]
pub struct RuntimeStats {
    /// Count per bucket of [`RUNTIME_BUCKETS`] (not cumulative).
    pub buckets: Vec<u64>,
    /// Runs longer than the last bucket.
    pub overflow: u64,
    /// Sum of runtimes.
    pub sum: f64,
    /// Number of runtimes.
    pub count: u64,
}

/// One kept task: its record and when it was first seen (`seq`).
struct Slot {
    seq: i64,
    record: TaskRecord,
}

#[derive(Default)]
struct Inner {
    order: VecDeque<String>,
    tasks: HashMap<String, Slot>,
    runtimes: BTreeMap<String, RuntimeStats>,
    events: u64,
    /// The last `seq` given out.
    last_seq: i64,
    /// Tasks changed since the last flush (kept only with a store).
    dirty: HashSet<String>,
    /// Tasks left the bound since the last flush (their rows are to be pruned).
    evicted: bool,
}

impl Inner {
    /// A new `seq`: now in Unix microseconds, above every one given out before.
    fn next_seq(&mut self) -> i64 {
        let now = chrono::Utc::now().timestamp_micros();
        self.last_seq = now.max(self.last_seq + 1);
        self.last_seq
    }

    fn count_runtime(&mut self, name: String, runtime: f64) {
        let stats = self.runtimes.entry(name).or_insert_with(|| RuntimeStats {
            buckets: vec![0; RUNTIME_BUCKETS.len()],
            ..RuntimeStats::default()
        });
        match RUNTIME_BUCKETS.iter().position(|bound| runtime <= *bound) {
            Some(bucket) => stats.buckets[bucket] += 1,
            None => stats.overflow += 1,
        }
        stats.sum += runtime;
        stats.count += 1;
    }
}

/// What one applied task event was about (for per-queue counts, see
/// [`crate::rates`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The event type (`task-sent`, `task-received`, `task-succeeded`, ...).
    pub kind: &'static str,
    /// The task's name, when known (from this or an earlier event).
    pub name: Option<String>,
    /// The worker that sent the event (none for `task-sent`).
    pub worker: Option<String>,
    /// The queue the task was sent to, when the event says (`task-sent`).
    pub queue: Option<String>,
}

/// The history. Cheap to share (`Arc`).
pub struct TaskHistory {
    capacity: usize,
    inner: Mutex<Inner>,
    store: Option<HistoryStore>,
}

fn text(event: &Map<String, Value>, key: &str) -> Option<String> {
    match event.get(key)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn number(event: &Map<String, Value>, key: &str) -> Option<f64> {
    event.get(key).and_then(Value::as_f64)
}

/// The event types the history follows, with the state each one means.
fn task_state(kind: &str) -> Option<(&'static str, &'static str)> {
    Some(match kind {
        "task-sent" => ("task-sent", "PENDING"),
        "task-received" => ("task-received", "RECEIVED"),
        "task-started" => ("task-started", "STARTED"),
        "task-succeeded" => ("task-succeeded", "SUCCESS"),
        "task-failed" => ("task-failed", "FAILURE"),
        "task-retried" => ("task-retried", "RETRY"),
        "task-revoked" => ("task-revoked", "REVOKED"),
        "task-rejected" => ("task-rejected", "REJECTED"),
        _ => return None,
    })
}

impl TaskHistory {
    /// An in-memory history of at most `capacity` tasks (at least 1); it starts empty.
    pub fn new(capacity: usize) -> TaskHistory {
        TaskHistory {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
            store: None,
        }
    }

    /// A history of at most `capacity` tasks kept in `store` too: it starts with the
    /// newest `capacity` tasks stored there (and their runtimes), and [`persist`]
    /// (or [`TaskHistory::flush`]) writes what changes.
    pub async fn persistent(
        capacity: usize,
        store: HistoryStore,
    ) -> Result<TaskHistory, HistoryError> {
        let capacity = capacity.max(1);
        let reader = store.clone();
        let (loaded, stored) = tokio::task::spawn_blocking(move || {
            Ok::<_, HistoryError>((reader.load(capacity)?, reader.count()?))
        })
        .await
        .map_err(|e| HistoryError::Writer(e.to_string()))??;
        let mut inner = Inner::default();
        for (seq, record) in loaded {
            if let (Some(runtime), Some(name), "SUCCESS") =
                (record.runtime, record.name.clone(), record.status.as_str())
            {
                inner.count_runtime(name, runtime);
            }
            inner.last_seq = inner.last_seq.max(seq);
            inner.order.push_back(record.task_id.clone());
            inner
                .tasks
                .insert(record.task_id.clone(), Slot { seq, record });
        }
        // A smaller bound than the file holds: prune at the first flush.
        inner.evicted = stored > inner.order.len() as u64;
        Ok(TaskHistory {
            capacity,
            inner: Mutex::new(inner),
            store: Some(store),
        })
    }

    /// The store it persists to, if any.
    pub fn store(&self) -> Option<&HistoryStore> {
        self.store.as_ref()
    }

    /// Applies one Celery event (worker events and unknown types are ignored) and
    /// says what it was about.
    pub fn apply(&self, event: &Map<String, Value>) -> Option<Observed> {
        let kind = event.get("type").and_then(Value::as_str)?;
        let (kind, state) = task_state(kind)?;
        let id = text(event, "uuid")?;
        let timestamp = number(event, "timestamp");
        let mut inner = self.inner.lock();
        inner.events += 1;
        if !inner.tasks.contains_key(&id) {
            if inner.order.len() >= self.capacity {
                if let Some(oldest) = inner.order.pop_front() {
                    inner.tasks.remove(&oldest);
                    inner.dirty.remove(&oldest);
                    inner.evicted = true;
                }
            }
            let seq = inner.next_seq();
            inner.order.push_back(id.clone());
            inner.tasks.insert(
                id.clone(),
                Slot {
                    seq,
                    record: TaskRecord {
                        task_id: id.clone(),
                        status: state.to_string(),
                        ..TaskRecord::default()
                    },
                },
            );
        }
        if self.store.is_some() {
            inner.dirty.insert(id.clone());
        }
        let mut finished_runtime = None;
        let mut observed = Observed {
            kind,
            name: None,
            worker: None,
            queue: text(event, "queue").or_else(|| text(event, "routing_key")),
        };
        if let Some(Slot { record, .. }) = inner.tasks.get_mut(&id) {
            // A late event of an earlier state does not move a finished task back.
            let finished = matches!(record.status.as_str(), "SUCCESS" | "FAILURE" | "REVOKED");
            if !finished || matches!(state, "SUCCESS" | "FAILURE" | "REVOKED") {
                record.status = state.to_string();
            }
            if let Some(name) = text(event, "name") {
                record.name = Some(name);
            }
            if let Some(args) = text(event, "args") {
                record.args = Some(args);
            }
            if let Some(kwargs) = text(event, "kwargs") {
                record.kwargs = Some(kwargs);
            }
            if let Some(retries) = event.get("retries").and_then(Value::as_u64) {
                record.retries = Some(retries);
            }
            if let Some(host) = text(event, "hostname").filter(|_| kind != "task-sent") {
                observed.worker = Some(host.clone());
                record.worker = Some(host);
            }
            if let Some(key) = text(event, "routing_key") {
                record.routing_key = Some(key);
            }
            match kind {
                "task-received" => record.received = timestamp,
                "task-started" => record.started = timestamp,
                "task-succeeded" => {
                    record.finished = timestamp;
                    record.result = text(event, "result");
                    record.runtime = number(event, "runtime");
                    finished_runtime = record.runtime.zip(record.name.clone());
                }
                "task-failed" | "task-revoked" | "task-rejected" => {
                    record.finished = timestamp;
                    record.exception = text(event, "exception").or(record.exception.take());
                }
                "task-retried" => record.exception = text(event, "exception"),
                _ => {}
            }
            observed.name = record.name.clone();
        }
        if let Some((runtime, name)) = finished_runtime {
            inner.count_runtime(name, runtime);
        }
        Some(observed)
    }

    /// Writes the records changed since the last flush to the store (a no-op
    /// without one) and prunes the rows of tasks that left the bound; returns how
    /// many records it wrote. On an error the records stay to be written next time.
    pub async fn flush(&self) -> Result<usize, HistoryError> {
        let Some(store) = self.store.clone() else {
            return Ok(0);
        };
        let (rows, prune_below, ids) = {
            let mut inner = self.inner.lock();
            let ids: Vec<String> = inner.dirty.drain().collect();
            let mut rows: Vec<(i64, TaskRecord)> = ids
                .iter()
                .filter_map(|id| inner.tasks.get(id))
                .map(|slot| (slot.seq, slot.record.clone()))
                .collect();
            rows.sort_by_key(|(seq, _)| *seq);
            let prune_below = if std::mem::take(&mut inner.evicted) {
                inner
                    .order
                    .front()
                    .and_then(|id| inner.tasks.get(id))
                    .map(|slot| slot.seq)
            } else {
                None
            };
            (rows, prune_below, ids)
        };
        if rows.is_empty() && prune_below.is_none() {
            return Ok(0);
        }
        let written = rows.len();
        let result = tokio::task::spawn_blocking(move || store.write(&rows, prune_below))
            .await
            .map_err(|e| HistoryError::Writer(e.to_string()))
            .and_then(|result| result);
        if let Err(error) = result {
            let mut inner = self.inner.lock();
            inner.dirty.extend(ids);
            inner.evicted |= prune_below.is_some();
            return Err(error);
        }
        Ok(written)
    }

    /// The newest records first, those matching `keep`, at most `limit`.
    pub fn list(&self, limit: usize, keep: impl Fn(&TaskRecord) -> bool) -> Vec<TaskRecord> {
        let inner = self.inner.lock();
        inner
            .order
            .iter()
            .rev()
            .filter_map(|id| inner.tasks.get(id))
            .map(|slot| &slot.record)
            .filter(|record| keep(record))
            .take(limit)
            .cloned()
            .collect()
    }

    /// One task's record.
    pub fn get(&self, task_id: &str) -> Option<TaskRecord> {
        self.inner
            .lock()
            .tasks
            .get(task_id)
            .map(|slot| slot.record.clone())
    }

    /// How many tasks are kept.
    pub fn len(&self) -> usize {
        self.inner.lock().order.len()
    }

    /// Whether no task is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runtime statistics per task name.
    pub fn runtimes(&self) -> BTreeMap<String, RuntimeStats> {
        self.inner.lock().runtimes.clone()
    }

    /// Tasks kept per (state, name).
    pub fn counts(&self) -> BTreeMap<(String, String), u64> {
        let inner = self.inner.lock();
        let mut counts = BTreeMap::new();
        for slot in inner.tasks.values() {
            let name = slot.record.name.clone().unwrap_or_default();
            *counts
                .entry((slot.record.status.clone(), name))
                .or_insert(0) += 1;
        }
        counts
    }
}

/// Writes `history`'s changes to its store every [`FLUSH_INTERVAL`] until `stop`,
/// then once more (returns at once for a history without a store).
pub async fn persist(history: Arc<TaskHistory>, stop: CancellationToken) {
    if history.store.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        if let Err(error) = history.flush().await {
            tracing::warn!(%error, "the dashboard could not save its task history; retrying");
        }
        if stopping {
            return;
        }
    }
}

/// Follows the task events on `broker` into `history` (and counts them per queue in
/// `rates`) until `stop`.
pub async fn follow(
    history: Arc<TaskHistory>,
    rates: Option<Arc<crate::rates::QueueRates>>,
    broker: Arc<dyn Broker>,
    stop: CancellationToken,
) {
    let params = SubscribeParams {
        exchange: "celeryev".into(),
        routing_key: Some("task.#".into()),
    };
    let mut subscription = loop {
        match broker.subscribe(&params).await {
            Ok(subscription) => break subscription,
            Err(error) => {
                tracing::warn!(%error, "the dashboard cannot follow task events yet; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                }
            }
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            message = subscription.recv() => {
                let Some(message) = message else { return };
                for event in celeriac_core::event::events_in(&message.envelope) {
                    let observed = history.apply(&event);
                    if let (Some(rates), Some(observed)) = (&rates, observed) {
                        rates.observe(&observed);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn a_task_is_followed_from_received_to_success_with_its_runtime() {
        let history = TaskHistory::new(10);
        history.apply(&event(
            json!({"type": "task-received", "uuid": "a", "name": "t.add",
            "args": "(1, 2)", "kwargs": "{}", "retries": 0, "hostname": "w@h", "timestamp": 10.0}),
        ));
        history.apply(&event(
            json!({"type": "task-started", "uuid": "a", "hostname": "w@h", "timestamp": 10.5}),
        ));
        history.apply(&event(
            json!({"type": "task-succeeded", "uuid": "a", "result": "3", "runtime": 0.02,
            "hostname": "w@h", "timestamp": 10.52}),
        ));
        // A late started event does not move it back.
        history.apply(&event(
            json!({"type": "task-started", "uuid": "a", "timestamp": 10.6}),
        ));
        let record = history.get("a").expect("kept");
        assert_eq!(record.status, "SUCCESS");
        assert_eq!(record.name.as_deref(), Some("t.add"));
        assert_eq!((record.received, record.runtime), (Some(10.0), Some(0.02)));
        assert_eq!(record.result.as_deref(), Some("3"));
        let stats = &history.runtimes()["t.add"];
        assert_eq!(
            (stats.count, stats.buckets[3]),
            (1, 1),
            "0.02 s falls in the 0.05 bucket"
        );
    }

    #[test]
    fn the_oldest_tasks_leave_first_and_worker_events_are_ignored() {
        let history = TaskHistory::new(2);
        for id in ["a", "b", "c"] {
            history.apply(&event(
                json!({"type": "task-received", "uuid": id, "name": "t"}),
            ));
        }
        history.apply(&event(
            json!({"type": "worker-heartbeat", "hostname": "w@h"}),
        ));
        let ids: Vec<String> = history
            .list(10, |_| true)
            .into_iter()
            .map(|r| r.task_id)
            .collect();
        assert_eq!(ids, vec!["c", "b"]);
        history.apply(&event(
            json!({"type": "task-failed", "uuid": "c", "exception": "ValueError('x')"}),
        ));
        let failed = history.list(10, |r| r.status == "FAILURE");
        assert_eq!(failed[0].exception.as_deref(), Some("ValueError('x')"));
        assert_eq!(
            history.counts()[&("FAILURE".to_string(), "t".to_string())],
            1
        );
    }
}
