//! The beat service on a SQLite store with tokio's paused time: every due run once,
//! with its options; runtime edits; catch-up after downtime; replicas; take-over of a
//! dead beat's run; a failed publish retried. Tests wait on [`BeatEvent`]s.

use std::sync::atomic::{AtomicUsize, Ordering};

use celeriac_core::{Map, SendOptions, Value};
use parking_lot::Mutex;

use super::*;
use crate::entry::{CatchUp, BEAT_HEADER};
use crate::schedule::Interval;
use crate::sqlite::{SqliteScheduleStore, SqliteStoreOptions};
use crate::store::RunsParams;

/// One recorded send.
#[derive(Debug, Clone)]
struct Sent {
    task: String,
    args: Vec<Value>,
    options: SendOptions,
}

impl Sent {
    fn entry(&self) -> String {
        self.options.headers[BEAT_HEADER]["entry"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// A `TaskSender` that records sends; the first `fail_first` sends fail.
#[derive(Default)]
struct Recorder {
    sent: Mutex<Vec<Sent>>,
    fail_first: AtomicUsize,
}

impl TaskSender for Recorder {
    fn send_task(
        &self,
        name: &str,
        args: Vec<Value>,
        _kwargs: Map<String, Value>,
        options: SendOptions,
    ) -> Pin<Box<dyn Future<Output = std::result::Result<String, String>> + Send + '_>> {
        let failing = self
            .fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let id = options.task_id.clone().unwrap_or_default();
        if !failing {
            self.sent.lock().push(Sent {
                task: name.to_string(),
                args,
                options,
            });
        }
        Box::pin(async move {
            if failing {
                Err("broker unavailable".to_string())
            } else {
                Ok(id)
            }
        })
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    clock: Arc<TokioClock>,
    recorder: Arc<Recorder>,
}

fn base() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .expect("base")
        .with_timezone(&Utc)
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("beat.db");
        Fixture {
            _dir: dir,
            path,
            clock: Arc::new(TokioClock::starting_at(base())),
            recorder: Arc::new(Recorder::default()),
        }
    }

    /// A new handle to the store (as another process would open it).
    async fn store(&self) -> Arc<dyn ScheduleStore> {
        Arc::new(
            SqliteScheduleStore::open(&self.path, SqliteStoreOptions::default())
                .await
                .expect("open store"),
        )
    }

    async fn beat(&self, config: BeatConfig) -> Beat {
        Beat::new(
            self.store().await,
            self.recorder.clone(),
            self.clock.clone(),
        )
        .with_config(config)
    }

    fn sent(&self) -> Vec<Sent> {
        self.recorder.sent.lock().clone()
    }
}

fn every(secs: u64) -> Interval {
    Interval::new(Duration::from_secs(secs))
        .expect("interval")
        .anchored(base())
}

fn config(claimer: &str) -> BeatConfig {
    BeatConfig {
        claimer: claimer.into(),
        ..BeatConfig::default()
    }
}

/// Runs `beat` in the background; the returned sender stops it.
fn start(
    beat: Beat,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<BeatReport>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let join = tokio::spawn(beat.run_until(async {
        let _ = stopped.await;
    }));
    (stop, join)
}

async fn stop(
    handle: (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<BeatReport>,
    ),
) -> BeatReport {
    let _ = handle.0.send(());
    handle.1.await.expect("beat task")
}

/// Waits (in virtual time, at most an hour of it) for `count` events matching `pick`.
async fn wait_for(
    events: &mut broadcast::Receiver<BeatEvent>,
    count: usize,
    mut pick: impl FnMut(&BeatEvent) -> bool,
) -> Vec<BeatEvent> {
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(3600), async {
        while seen.len() < count {
            match events.recv().await {
                Ok(event) if pick(&event) => seen.push(event),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{count} events within an hour of virtual time; got {seen:?}"));
    seen
}

fn is_sent(event: &BeatEvent) -> bool {
    matches!(event, BeatEvent::Sent { .. })
}

#[tokio::test(start_paused = true)]
async fn every_due_run_is_sent_once_with_the_entrys_options() {
    let fx = Fixture::new();
    let store = fx.store().await;
    let entry = Entry::new("tick", "tests.tick", every(1))
        .args(vec![serde_json::json!(7)])
        .queue("periodic")
        .expires(Duration::from_secs(10))
        .created_at(base());
    store.upsert(&entry).await.expect("upsert");
    let beat = fx.beat(config("b1")).await;
    let mut events = beat.subscribe();
    let running = start(beat);
    let sent_events = wait_for(&mut events, 10, is_sent).await;
    let report = stop(running).await;
    assert!(report.sent >= 10 && report.errors == 0, "{report:?}");

    let sent = fx.sent();
    for (i, (s, event)) in sent.iter().zip(&sent_events).enumerate() {
        let due = base() + chrono::Duration::seconds(i as i64 + 1);
        let BeatEvent::Sent {
            due_at,
            task_id,
            taken_over,
            ..
        } = event
        else {
            unreachable!("filtered")
        };
        assert_eq!((*due_at, *taken_over), (due, false));
        assert_eq!(s.task, "tests.tick");
        assert_eq!(s.args, vec![serde_json::json!(7)]);
        assert_eq!(s.options.queue.as_deref(), Some("periodic"));
        assert_eq!(s.options.task_id.as_ref(), Some(task_id));
        assert_eq!(
            s.options.publish_once,
            Some(BeatConfig::default().publish_once_window),
            "beat sends publish-once, so a take-over's re-send cannot queue a run twice"
        );
        assert_eq!(
            s.options.expires_at,
            Some(due + chrono::Duration::seconds(10))
        );
        assert_eq!(
            s.options.headers[BEAT_HEADER]["due_at"],
            celeriac_core::time::format_iso(due)
        );
    }
    let runs = store
        .runs(&RunsParams::of("tick", 100))
        .await
        .expect("runs");
    assert!(runs.len() >= 10);
    assert!(runs
        .iter()
        .all(|r| r.sent_at.is_some() && r.claimer == "b1"));
    let stored = store.get("tick").await.expect("get").expect("entry");
    assert_eq!(stored.total_run_count, report.sent);
}

#[tokio::test(start_paused = true)]
async fn entries_added_and_disabled_at_runtime_take_effect_within_a_poll() {
    let fx = Fixture::new();
    let editor = fx.store().await;
    let beat = fx.beat(config("b1")).await;
    let mut events = beat.subscribe();
    let running = start(beat);
    wait_for(&mut events, 1, |e| matches!(e, BeatEvent::Reloaded { .. })).await;

    // Added while beat runs: its first run (one second later) is sent on time.
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    let added = fx.clock.now();
    let every_second = Interval::new(Duration::from_secs(1))
        .expect("1s")
        .anchored(added);
    editor
        .upsert(&Entry::new("added", "tests.added", every_second).created_at(added))
        .await
        .expect("upsert");
    let first = wait_for(&mut events, 1, is_sent).await;
    let BeatEvent::Sent { due_at, .. } = &first[0] else {
        unreachable!()
    };
    assert_eq!(*due_at, added + chrono::Duration::seconds(1));
    assert!(
        fx.clock.now() - added <= chrono::Duration::milliseconds(1_300),
        "sent within a second of being added (+ a poll): {}",
        fx.clock.now() - added
    );

    // Disabled while beat runs: no run due after the edit is sent.
    wait_for(&mut events, 2, is_sent).await;
    let disabled = fx.clock.now();
    assert!(editor.set_enabled("added", false).await.expect("disable"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_disable: Vec<_> = fx
        .sent()
        .into_iter()
        .filter(|s| {
            s.options.headers[BEAT_HEADER]["due_at"]
                .as_str()
                .and_then(celeriac_core::time::parse_iso)
                .is_some_and(|due| due > disabled)
        })
        .collect();
    assert!(
        after_disable.is_empty(),
        "sent after disable: {after_disable:?}"
    );

    // Enabled again (catch-up `once`): one run for the missed seconds, then on time.
    assert!(editor.set_enabled("added", true).await.expect("enable"));
    let resumed = wait_for(&mut events, 2, is_sent).await;
    let dues: Vec<_> = resumed
        .iter()
        .map(|e| match e {
            BeatEvent::Sent { due_at, .. } => *due_at,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(dues[1] - dues[0], chrono::Duration::seconds(1), "{dues:?}");

    // Removed: nothing more.
    assert!(editor.remove("added").await.expect("remove"));
    let count = fx.sent().len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        fx.sent().len() <= count + 1,
        "at most the run in flight at the edit"
    );
    stop(running).await;
}

#[tokio::test(start_paused = true)]
async fn missed_runs_follow_each_entrys_catch_up_policy() {
    let fx = Fixture::new();
    let store = fx.store().await;
    let minutely = Interval::new(Duration::from_secs(60))
        .expect("1m")
        .anchored(base() - chrono::Duration::hours(1));
    for policy in [CatchUp::Once, CatchUp::All, CatchUp::Skip] {
        let name = policy.to_string();
        store
            .upsert(
                &Entry::new(name.clone(), format!("tests.{name}"), minutely)
                    .catch_up(policy)
                    .created_at(base() - chrono::Duration::hours(1)),
            )
            .await
            .expect("upsert");
        // The last run before the downtime: ten minutes ago.
        let last = base() - chrono::Duration::minutes(10);
        assert!(store
            .claim_run(&ClaimParams::new(&name, last, "old", "old-id", last, last))
            .await
            .expect("claim"));
        store
            .finish_run(&FinishParams::new(&name, last, "old", last))
            .await
            .expect("finish");
    }
    // Beat comes back at 00:00:30: 23:51 .. 00:00 were missed.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let beat = fx.beat(config("b1")).await;
    let mut events = beat.subscribe();
    let running = start(beat);
    // once: 1, all: 10; then the next minute all three run on time.
    wait_for(&mut events, 11 + 3, is_sent).await;
    stop(running).await;
    let dues = |entry: &str| -> Vec<DateTime<Utc>> {
        fx.sent()
            .iter()
            .filter(|s| s.entry() == entry)
            .filter_map(|s| {
                s.options.headers[BEAT_HEADER]["due_at"]
                    .as_str()
                    .and_then(celeriac_core::time::parse_iso)
            })
            .collect()
    };
    let minute = |m: i64| base() + chrono::Duration::minutes(m);
    assert_eq!(dues("once"), vec![minute(0), minute(1)]);
    assert_eq!(dues("all"), (-9..=1).map(minute).collect::<Vec<_>>());
    assert_eq!(dues("skip"), vec![minute(1)]);
}

#[tokio::test(start_paused = true)]
async fn three_replicas_send_each_run_exactly_once() {
    let fx = Fixture::new();
    fx.store()
        .await
        .upsert(&Entry::new("tick", "tests.tick", every(1)).created_at(base()))
        .await
        .expect("upsert");
    let mut replicas = Vec::new();
    let mut events = Vec::new();
    for i in 0..3 {
        let beat = fx.beat(config(&format!("replica-{i}"))).await;
        events.push(beat.subscribe());
        replicas.push(start(beat));
    }
    tokio::time::timeout(Duration::from_secs(3600), async {
        while fx.sent().len() < 30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("30 runs");
    let mut reports = Vec::new();
    for replica in replicas {
        reports.push(stop(replica).await);
    }
    let mut dues: Vec<String> = fx
        .sent()
        .iter()
        .map(|s| s.options.headers[BEAT_HEADER]["due_at"].to_string())
        .collect();
    let total = dues.len();
    dues.sort();
    dues.dedup();
    assert_eq!(dues.len(), total, "no run sent twice");
    assert_eq!(
        reports.iter().map(|r| r.sent).sum::<u64>(),
        total as u64,
        "{reports:?}"
    );
    assert!(
        reports.iter().map(|r| r.claims_lost).sum::<u64>() > 0,
        "the replicas did race: {reports:?}"
    );
    let first = base() + chrono::Duration::seconds(1);
    let expected: Vec<String> = (0..total as i64)
        .map(|i| {
            serde_json::Value::String(celeriac_core::time::format_iso(
                first + chrono::Duration::seconds(i),
            ))
            .to_string()
        })
        .collect();
    let mut expected = expected;
    expected.sort();
    assert_eq!(dues, expected, "no gaps");
}

#[tokio::test(start_paused = true)]
async fn a_run_claimed_by_a_dead_beat_is_sent_by_another_with_its_task_id() {
    let fx = Fixture::new();
    let store = fx.store().await;
    store
        .upsert(&Entry::new("tick", "tests.tick", every(60)).created_at(base()))
        .await
        .expect("upsert");
    // A beat claimed the 00:00 run two seconds ago and died before publishing.
    let due = base();
    let claimed = base() - chrono::Duration::seconds(2);
    assert!(store
        .claim_run(&ClaimParams::new(
            "tick",
            due,
            "dead",
            "the-task-id",
            claimed,
            claimed + chrono::Duration::seconds(5),
        ))
        .await
        .expect("claim"));
    let beat = fx
        .beat(BeatConfig {
            claim_lease: Duration::from_secs(5),
            ..config("alive")
        })
        .await;
    let mut events = beat.subscribe();
    let running = start(beat);
    let sent = wait_for(&mut events, 1, is_sent).await;
    let report = stop(running).await;
    let BeatEvent::Sent {
        due_at,
        task_id,
        taken_over,
        ..
    } = &sent[0]
    else {
        unreachable!()
    };
    assert_eq!(
        (*due_at, task_id.as_str(), *taken_over),
        (due, "the-task-id", true)
    );
    assert!(
        fx.clock.now() >= claimed + chrono::Duration::seconds(5),
        "not before the dead beat's lease lapsed"
    );
    assert_eq!(report.taken_over, 1);
    let runs = store.runs(&RunsParams::of("tick", 10)).await.expect("runs");
    assert_eq!(runs[0].claimer, "alive");
    assert_eq!(runs[0].attempts, 2);
    assert!(runs[0].sent_at.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_failed_publish_is_retried_with_the_same_task_id_after_the_lease() {
    let fx = Fixture::new();
    fx.recorder.fail_first.store(1, Ordering::SeqCst);
    fx.store()
        .await
        .upsert(&Entry::new("tick", "tests.tick", every(60)).created_at(base()))
        .await
        .expect("upsert");
    let beat = fx
        .beat(BeatConfig {
            claim_lease: Duration::from_secs(4),
            ..config("b1")
        })
        .await;
    let mut events = beat.subscribe();
    let running = start(beat);
    let seen = wait_for(&mut events, 2, |e| {
        matches!(e, BeatEvent::Sent { .. } | BeatEvent::SendFailed { .. })
    })
    .await;
    stop(running).await;
    let due = base() + chrono::Duration::seconds(60);
    assert!(
        matches!(&seen[0], BeatEvent::SendFailed { due_at, .. } if *due_at == due),
        "{seen:?}"
    );
    assert!(
        matches!(&seen[1], BeatEvent::Sent { due_at, taken_over: true, .. } if *due_at == due),
        "{seen:?}"
    );
    assert_eq!(
        fx.sent().len(),
        1,
        "published once, when the broker was back"
    );
}

#[tokio::test(start_paused = true)]
async fn a_relative_interval_runs_every_period_after_the_previous_run() {
    let fx = Fixture::new();
    let created = base() + chrono::Duration::milliseconds(250);
    fx.store()
        .await
        .upsert(
            &Entry::new(
                "every-30s",
                "tests.tick",
                Interval::new(Duration::from_secs(30)).expect("30s"),
            )
            .created_at(created),
        )
        .await
        .expect("upsert");
    let beat = fx.beat(config("b1")).await;
    let mut events = beat.subscribe();
    let running = start(beat);
    let sent = wait_for(&mut events, 3, is_sent).await;
    let report = stop(running).await;
    let dues: Vec<_> = sent
        .iter()
        .map(|e| match e {
            BeatEvent::Sent { due_at, .. } => *due_at,
            _ => unreachable!(),
        })
        .collect();
    let expected: Vec<_> = (1..=3)
        .map(|k| created + chrono::Duration::seconds(30 * k))
        .collect();
    assert_eq!(dues, expected);
    assert!(
        fx.clock.now() - expected[2] < chrono::Duration::milliseconds(300),
        "sent on time"
    );
    assert_eq!(report.errors, 0);
}
