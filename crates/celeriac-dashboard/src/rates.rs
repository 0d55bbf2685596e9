//! Per-queue in and out rates over time, for the queues screen's chart,
//! `GET /api/queues/rates` and `/metrics`.
//!
//! Every [`SAMPLE_INTERVAL`] [`sample_queues`] reads the queue depths (ready +
//! scheduled) and turns them and the task events counted since the last sample into
//! one [`Sample`] per queue; the last [`SAMPLES_KEPT`] are kept (five minutes).
//!
//! - **out** (dequeued per second): `task-received` events of the queue. Without task
//!   events (workers not started with `-E`), the fall of the depth instead.
//! - **in** (enqueued per second): what was received plus the rise of the depth
//!   (`in = out + Δdepth`), or the `task-sent` events of the queue when clients send
//!   them (`task_send_sent_event`) and they say more; without task events, the rise
//!   of the depth. With no events the two are net flows: a queue that takes in as
//!   much as it gives out shows neither.
//!
//! Celery's `task-received` does not say which queue the task came from, so a
//! received (succeeded, failed) task is counted for: the queue its `task-sent` event
//! named; else the queue the app's routing sends that task name to (the
//! [`QueueOfTask`] the dashboard was given); else the one queue its worker consumes.
//! Events matching none are counted as unattributed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use celeriac_broker::{Broker, QueueStats, WorkerInfo};
use parking_lot::Mutex;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::history::Observed;

/// How often the depths are sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);

/// Samples kept per queue (five minutes at [`SAMPLE_INTERVAL`]).
pub const SAMPLES_KEPT: usize = 150;

/// The queue a task name is routed to (the app's routing), if known.
pub type QueueOfTask = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Task events counted for one queue since the dashboard started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueCounters {
    /// `task-sent` (clients with `task_send_sent_event`).
    pub sent: u64,
    /// `task-received`: taken from the queue by a worker.
    pub received: u64,
    /// `task-succeeded`.
    pub succeeded: u64,
    /// `task-failed`.
    pub failed: u64,
}

/// One point of a queue's chart.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// When (Unix seconds).
    pub time: f64,
    /// Messages waiting: ready + scheduled.
    pub depth: u64,
    /// Enqueued per second since the previous sample.
    #[serde(rename = "in")]
    pub in_rate: f64,
    /// Dequeued per second since the previous sample.
    #[serde(rename = "out")]
    pub out_rate: f64,
}

/// A queue's rates as `GET /api/queues/rates` shows them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueSeries {
    /// Queue name.
    pub name: String,
    /// `events` when task events were counted for this queue, else `depth` (net
    /// flows from the depth alone).
    pub source: &'static str,
    /// The latest in rate (per second).
    pub in_rate: f64,
    /// The latest out rate (per second).
    pub out_rate: f64,
    /// Events counted since the dashboard started.
    pub totals: QueueCounters,
    /// The samples, oldest first.
    pub samples: Vec<Sample>,
}

#[derive(Default)]
struct Inner {
    counters: BTreeMap<String, QueueCounters>,
    unattributed: u64,
    /// Queues of each live worker.
    worker_queues: HashMap<String, Vec<String>>,
    /// Task name → queue, from `task-sent` events.
    learned: HashMap<String, String>,
    series: BTreeMap<String, VecDeque<Sample>>,
    /// The previous sample's time, depth and counters per queue.
    previous: HashMap<String, (f64, u64, QueueCounters)>,
}

/// Counters and samples of every queue. Cheap to share (`Arc`).
pub struct QueueRates {
    queue_of: Option<QueueOfTask>,
    inner: Mutex<Inner>,
}

impl Default for QueueRates {
    fn default() -> Self {
        QueueRates::new(None)
    }
}

impl QueueRates {
    /// Rates attributing tasks to queues with `queue_of` (the app's routing) when
    /// their events do not say.
    pub fn new(queue_of: Option<QueueOfTask>) -> QueueRates {
        QueueRates {
            queue_of,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Counts one task event (see [`TaskHistory::apply`](crate::history::TaskHistory::apply)).
    pub fn observe(&self, observed: &Observed) {
        let mut inner = self.inner.lock();
        if let (Some(queue), Some(name)) = (&observed.queue, &observed.name) {
            if !inner.learned.contains_key(name) {
                inner.learned.insert(name.clone(), queue.clone());
            }
        }
        let queue = observed
            .queue
            .clone()
            .or_else(|| {
                let name = observed.name.as_deref()?;
                inner
                    .learned
                    .get(name)
                    .cloned()
                    .or_else(|| self.queue_of.as_ref().and_then(|f| f(name)))
            })
            .or_else(
                || match inner.worker_queues.get(observed.worker.as_deref()?) {
                    Some(queues) if queues.len() == 1 => Some(queues[0].clone()),
                    _ => None,
                },
            );
        let Some(queue) = queue else {
            if matches!(observed.kind, "task-received" | "task-sent") {
                inner.unattributed += 1;
            }
            return;
        };
        let counters = inner.counters.entry(queue).or_default();
        match observed.kind {
            "task-sent" => counters.sent += 1,
            "task-received" => counters.received += 1,
            "task-succeeded" => counters.succeeded += 1,
            "task-failed" => counters.failed += 1,
            _ => {}
        }
    }

    /// Takes one sample at `now` (Unix seconds) from the queues' `stats`, and notes
    /// which queues each live worker consumes.
    pub fn sample(&self, now: f64, stats: &[QueueStats], workers: &[WorkerInfo]) {
        let mut inner = self.inner.lock();
        let alive = chrono::Utc::now();
        inner.worker_queues = workers
            .iter()
            .filter(|w| w.is_alive(alive))
            .map(|w| (w.hostname.clone(), w.queues.clone()))
            .collect();
        for queue in stats {
            let depth = queue.ready + queue.scheduled;
            let counters = inner.counters.get(&queue.name).copied().unwrap_or_default();
            let previous = inner
                .previous
                .insert(queue.name.clone(), (now, depth, counters));
            let Some((then, was, before)) = previous else {
                continue;
            };
            let elapsed = now - then;
            if elapsed <= 0.0 {
                continue;
            }
            let grew = depth as f64 - was as f64;
            let received = counters.received.saturating_sub(before.received) as f64;
            let events = counters.received > 0 || counters.sent > 0;
            let out = if events { received } else { (-grew).max(0.0) };
            // Sent events count what their clients sent; the depth also sees the
            // clients that send none.
            let sent = counters.sent.saturating_sub(before.sent) as f64;
            let into = sent.max(out + grew).max(0.0);
            let samples = inner.series.entry(queue.name.clone()).or_default();
            if samples.len() >= SAMPLES_KEPT {
                samples.pop_front();
            }
            samples.push_back(Sample {
                time: now,
                depth,
                in_rate: into / elapsed,
                out_rate: out / elapsed,
            });
        }
    }

    /// Every sampled queue's series, by name.
    pub fn series(&self) -> Vec<QueueSeries> {
        let inner = self.inner.lock();
        inner
            .series
            .iter()
            .map(|(name, samples)| {
                let totals = inner.counters.get(name).copied().unwrap_or_default();
                let last = samples.back();
                QueueSeries {
                    name: name.clone(),
                    source: if totals.received > 0 || totals.sent > 0 {
                        "events"
                    } else {
                        "depth"
                    },
                    in_rate: last.map_or(0.0, |s| s.in_rate),
                    out_rate: last.map_or(0.0, |s| s.out_rate),
                    totals,
                    samples: samples.iter().copied().collect(),
                }
            })
            .collect()
    }

    /// Events counted per queue since the dashboard started.
    pub fn counters(&self) -> BTreeMap<String, QueueCounters> {
        self.inner.lock().counters.clone()
    }

    /// `task-sent` / `task-received` events no queue could be found for.
    pub fn unattributed(&self) -> u64 {
        self.inner.lock().unattributed
    }
}

/// Samples the broker's queues into `rates` every [`SAMPLE_INTERVAL`] until `stop`.
pub async fn sample_queues(
    rates: Arc<QueueRates>,
    broker: Arc<dyn Broker>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let stats = match broker.queue_stats(&[]).await {
            Ok(stats) => stats,
            Err(error) => {
                tracing::debug!(%error, "queue rates: cannot read the queues");
                continue;
            }
        };
        let workers = broker.workers().await.unwrap_or_default();
        let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        rates.sample(now, &stats, &workers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(kind: &'static str, name: &str, worker: Option<&str>, queue: Option<&str>) -> Observed {
        Observed {
            kind,
            name: Some(name.into()),
            worker: worker.map(Into::into),
            queue: queue.map(Into::into),
        }
    }

    fn stats(name: &str, ready: u64) -> QueueStats {
        QueueStats {
            name: name.into(),
            ready,
            ..QueueStats::default()
        }
    }

    fn worker(hostname: &str, queues: &[&str]) -> WorkerInfo {
        let now = chrono::Utc::now();
        WorkerInfo {
            hostname: hostname.into(),
            pid: 1,
            queues: queues.iter().map(|q| q.to_string()).collect(),
            active: 0,
            processed: 0,
            started_at: now,
            last_heartbeat: now,
            freq: 2.0,
            online: true,
        }
    }

    #[test]
    fn out_is_received_events_and_in_adds_the_growth_of_the_depth() {
        let rates = QueueRates::new(Some(Arc::new(|name: &str| {
            name.starts_with("files.").then(|| "long".to_string())
        })));
        let workers = [
            worker("w1@h", &["short"]),
            worker("w2@h", &["short", "long"]),
        ];
        rates.sample(100.0, &[stats("short", 10), stats("long", 0)], &workers);
        // 6 taken from short by its only-short worker, 4 files by the mixed worker.
        for _ in 0..6 {
            rates.observe(&seen("task-received", "notify.send", Some("w1@h"), None));
        }
        for _ in 0..4 {
            rates.observe(&seen("task-received", "files.process", Some("w2@h"), None));
        }
        // One the mixed worker took whose queue nothing tells.
        rates.observe(&seen("task-received", "other.thing", Some("w2@h"), None));
        // short: 10 -> 8 while 6 left, so 4 came in; long: 0 -> 2 while 4 left: 6 in.
        rates.sample(102.0, &[stats("short", 8), stats("long", 2)], &workers);
        let series = rates.series();
        let short = series.iter().find(|s| s.name == "short").expect("short");
        let long = series.iter().find(|s| s.name == "long").expect("long");
        assert_eq!((short.out_rate, short.in_rate), (3.0, 2.0));
        assert_eq!((long.out_rate, long.in_rate), (2.0, 3.0));
        assert_eq!(short.source, "events");
        assert_eq!(
            short.samples.len(),
            1,
            "the first sample only sets the baseline"
        );
        assert_eq!(rates.unattributed(), 1);
    }

    #[test]
    fn sent_events_name_the_queue_and_without_events_the_depth_decides() {
        let rates = QueueRates::default();
        rates.sample(0.0, &[stats("a", 0), stats("quiet", 5)], &[]);
        for _ in 0..10 {
            rates.observe(&seen("task-sent", "t.x", None, Some("a")));
        }
        // A later received of the same name is counted for the queue it was sent to.
        rates.observe(&seen("task-received", "t.x", Some("w@h"), None));
        rates.sample(5.0, &[stats("a", 9), stats("quiet", 2)], &[]);
        let series = rates.series();
        let a = &series[0];
        assert_eq!((a.in_rate, a.out_rate), (2.0, 0.2));
        assert_eq!(a.totals.sent, 10);
        let quiet = &series[1];
        assert_eq!(quiet.source, "depth");
        assert_eq!((quiet.in_rate, quiet.out_rate), (0.0, 0.6));
    }

    #[test]
    fn only_the_last_samples_are_kept() {
        let rates = QueueRates::default();
        for i in 0..(SAMPLES_KEPT + 10) {
            rates.sample(i as f64, &[stats("q", i as u64)], &[]);
        }
        let series = rates.series();
        assert_eq!(series[0].samples.len(), SAMPLES_KEPT);
        assert_eq!(series[0].samples[0].depth, 10);
    }
}
