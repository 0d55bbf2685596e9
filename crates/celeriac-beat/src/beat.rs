//! The beat service: watches the store, sleeps until the next due run, claims it and
//! publishes it.
//!
//! One pass of [`Beat::run_until`]'s loop:
//!
//! 1. **Reload** every entry when the store's change marker moved (polled every
//!    [`BeatConfig::poll_interval`], 250 ms: an edit through any process applies
//!    within a poll).
//! 2. **Take over** runs other beats claimed but never recorded as sent (their lease
//!    of [`BeatConfig::claim_lease`] lapsed: they died), and publish them with their
//!    original task ids. Every send is a publish-once keyed by that task id
//!    ([`BeatConfig::publish_once_window`]), so when the dead beat had published the
//!    run before dying, the broker drops the second send: exactly once, not at least
//!    once, on the SQLite and Redis brokers.
//! 3. **Claim and publish** every due run ([`Entry::due_runs`], with the catch-up
//!    policy): only a successful [`ScheduleStore::claim_run`] publishes; a lost
//!    claim means another beat has it, and the entry is read again.
//! 4. **Sleep** until the next due time or the next poll, whichever is first, or until
//!    the shutdown future completes.
//!
//! Time comes from a [`Clock`]: [`SystemClock`] in production, [`TokioClock`] in
//! tests with tokio's paused time.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use celeriac_core::TaskSender;
use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use crate::entry::Entry;
use crate::store::{ClaimParams, FinishParams, ListParams, Run, ScheduleStore, TakeOverParams};

/// Where beat reads the time.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;

    /// Completes after `duration` (default: `tokio::time::sleep`).
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// The machine's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that starts at a given instant and advances with tokio's clock, so tests
/// with paused time (`#[tokio::test(start_paused = true)]`) run hours of schedule in
/// milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `base` now.
    pub fn starting_at(base: DateTime<Utc>) -> TokioClock {
        TokioClock {
            base,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = chrono::Duration::from_std(self.start.elapsed()).unwrap_or_default();
        self.base + elapsed
    }
}

/// Settings of a [`Beat`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BeatConfig {
    /// This beat's id in claims (`host/pid/random` by default).
    pub claimer: String,
    /// How often the change marker is polled, and the longest sleep (250 ms).
    pub poll_interval: Duration,
    /// A due time older than this when beat looks at it was missed, and the entry's
    /// catch-up policy applies (5 s).
    pub misfire_grace: Duration,
    /// How long a claimed run is reserved for its claimer to publish it; after that
    /// another beat takes it over (30 s).
    pub claim_lease: Duration,
    /// At most this many runs of one entry per pass (`catch_up = all` after a long
    /// downtime continues in the next passes) (100).
    pub max_runs_per_pass: usize,
    /// How long the broker remembers a sent run's task id, so that a beat taking over
    /// a run whose beat died between publishing it and recording it as sent does not
    /// queue it twice ([`SendOptions::publish_once`](celeriac_core::SendOptions); SQLite
    /// and Redis brokers). A take-over later than this after the first send (every
    /// beat down that long) may send the run again (24 h).
    pub publish_once_window: Duration,
}

impl Default for BeatConfig {
    fn default() -> Self {
        BeatConfig {
            claimer: default_claimer(),
            poll_interval: Duration::from_millis(250),
            misfire_grace: Duration::from_secs(5),
            claim_lease: Duration::from_secs(30),
            max_runs_per_pass: 100,
            publish_once_window: Duration::from_secs(24 * 3600),
        }
    }
}

/// `host/pid/8 hex digits`.
pub fn default_claimer() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}/{}/{}", std::process::id(), &random[..8])
}

/// What a beat did, for tests and logs ([`Beat::subscribe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BeatEvent {
    /// Entries were (re)loaded after the change marker moved.
    Reloaded {
        /// How many entries the store has.
        entries: usize,
    },
    /// A run was published.
    Sent {
        /// The entry.
        entry: String,
        /// The run's due time.
        due_at: DateTime<Utc>,
        /// The task id.
        task_id: String,
        /// Whether it was taken over from a beat that claimed it and died.
        taken_over: bool,
    },
    /// Another beat claimed the run first.
    ClaimLost {
        /// The entry.
        entry: String,
        /// The run's due time.
        due_at: DateTime<Utc>,
    },
    /// Publishing failed; the run is retried when its lease lapses.
    SendFailed {
        /// The entry.
        entry: String,
        /// The run's due time.
        due_at: DateTime<Utc>,
        /// Why.
        error: String,
    },
}

/// Counters of one [`Beat::run_until`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BeatReport {
    /// Runs published.
    pub sent: u64,
    /// Of those, runs taken over from dead beats.
    pub taken_over: u64,
    /// Claims another beat won.
    pub claims_lost: u64,
    /// Store or broker errors.
    pub errors: u64,
}

/// The beat service. See the [module docs](self).
pub struct Beat {
    store: Arc<dyn ScheduleStore>,
    sender: Arc<dyn TaskSender>,
    clock: Arc<dyn Clock>,
    config: BeatConfig,
    events: broadcast::Sender<BeatEvent>,
}

impl std::fmt::Debug for Beat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Beat")
            .field("store", &self.store.describe())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The state of one running beat.
struct State {
    entries: BTreeMap<String, Entry>,
    marker: Option<crate::store::ChangeMarker>,
    next_take_over: DateTime<Utc>,
    report: BeatReport,
}

impl Beat {
    /// A beat publishing the due runs of `store`'s entries through `sender` (an
    /// `App` in the `celeriac` facade), reading time from `clock`.
    pub fn new(
        store: Arc<dyn ScheduleStore>,
        sender: Arc<dyn TaskSender>,
        clock: Arc<dyn Clock>,
    ) -> Beat {
        let (events, _) = broadcast::channel(1024);
        Beat {
            store,
            sender,
            clock,
            config: BeatConfig::default(),
            events,
        }
    }

    /// Replaces the settings.
    pub fn with_config(mut self, config: BeatConfig) -> Beat {
        self.config = config;
        self
    }

    /// The settings.
    pub fn config(&self) -> &BeatConfig {
        &self.config
    }

    /// Events from now on (a lagging receiver loses the oldest).
    pub fn subscribe(&self) -> broadcast::Receiver<BeatEvent> {
        self.events.subscribe()
    }

    /// Runs until `shutdown` completes, then returns the counters. Store and broker
    /// errors are logged and retried on the next pass; they never end the loop.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> BeatReport {
        tokio::pin!(shutdown);
        let mut state = State {
            entries: BTreeMap::new(),
            marker: None,
            next_take_over: self.clock.now(),
            report: BeatReport::default(),
        };
        tracing::info!(store = %self.store.describe(), claimer = %self.config.claimer, "beat started");
        loop {
            let errors_before = state.report.errors;
            self.pass(&mut state).await;
            let now = self.clock.now();
            let mut sleep = self.config.poll_interval;
            if state.report.errors == errors_before {
                if let Some(next) = state
                    .entries
                    .values()
                    .filter_map(|e| e.next_due(now, self.config.misfire_grace))
                    .min()
                {
                    let until = (next - now).to_std().unwrap_or(Duration::ZERO);
                    sleep = sleep.min(until.max(Duration::from_millis(1)));
                }
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = self.clock.sleep(sleep) => {}
            }
        }
        tracing::info!(sent = state.report.sent, "beat stopped");
        state.report
    }

    /// One pass: reload, take over, claim and publish.
    async fn pass(&self, state: &mut State) {
        self.reload_if_changed(state).await;
        let now = self.clock.now();
        if now >= state.next_take_over {
            self.take_over(state, now).await;
            let period = (self.config.claim_lease / 4).max(self.config.poll_interval);
            state.next_take_over = now + to_chrono(period);
        }
        let names: Vec<String> = state.entries.keys().cloned().collect();
        for name in names {
            self.run_entry(state, &name).await;
        }
    }

    async fn reload_if_changed(&self, state: &mut State) {
        let marker = match self.store.change_marker().await {
            Ok(marker) => marker,
            Err(error) => {
                state.report.errors += 1;
                tracing::warn!(%error, "reading the schedule change marker failed");
                return;
            }
        };
        if state.marker.as_ref() == Some(&marker) {
            return;
        }
        match self.store.list(&ListParams::all()).await {
            Ok(entries) => {
                state.entries = entries.into_iter().map(|e| (e.name.clone(), e)).collect();
                state.marker = Some(marker);
                tracing::debug!(entries = state.entries.len(), "schedule entries loaded");
                let _ = self.events.send(BeatEvent::Reloaded {
                    entries: state.entries.len(),
                });
            }
            Err(error) => {
                state.report.errors += 1;
                tracing::warn!(%error, "loading schedule entries failed");
            }
        }
    }

    async fn take_over(&self, state: &mut State, now: DateTime<Utc>) {
        let params = TakeOverParams::new(
            self.config.claimer.clone(),
            now,
            now + to_chrono(self.config.claim_lease),
            self.config.max_runs_per_pass,
        );
        let runs = match self.store.take_over_stale(&params).await {
            Ok(runs) => runs,
            Err(error) => {
                state.report.errors += 1;
                tracing::warn!(%error, "taking over stale runs failed");
                return;
            }
        };
        for run in runs {
            let entry = match state.entries.get(&run.entry) {
                Some(entry) => Some(entry.clone()),
                None => self.store.get(&run.entry).await.ok().flatten(),
            };
            let Some(entry) = entry else {
                continue;
            };
            tracing::info!(entry = %run.entry, due_at = %run.due_at, task_id = %run.task_id,
                attempts = run.attempts, "taking over a run its beat claimed but did not send");
            self.publish(state, &entry, &run, true).await;
        }
    }

    /// Claims and publishes the due runs of one entry.
    async fn run_entry(&self, state: &mut State, name: &str) {
        let now = self.clock.now();
        let due = match state.entries.get(name) {
            Some(entry) => entry.due_runs(
                now,
                self.config.misfire_grace,
                self.config.max_runs_per_pass,
            ),
            None => return,
        };
        for due_at in due {
            let task_id = uuid::Uuid::new_v4().to_string();
            let params = ClaimParams::new(
                name,
                due_at,
                self.config.claimer.clone(),
                task_id.clone(),
                now,
                now + to_chrono(self.config.claim_lease),
            );
            match self.store.claim_run(&params).await {
                Ok(true) => {
                    let Some(entry) = state.entries.get_mut(name) else {
                        return;
                    };
                    entry.last_run_at = Some(due_at);
                    entry.total_run_count += 1;
                    if entry.one_off {
                        entry.enabled = false;
                    }
                    let entry = entry.clone();
                    let run = Run {
                        entry: name.to_string(),
                        due_at,
                        claimer: self.config.claimer.clone(),
                        task_id,
                        claimed_at: now,
                        lease_until: params.lease_until,
                        sent_at: None,
                        attempts: 1,
                    };
                    self.publish(state, &entry, &run, false).await;
                }
                Ok(false) => {
                    state.report.claims_lost += 1;
                    tracing::debug!(entry = %name, %due_at, "another beat claimed the run");
                    let _ = self.events.send(BeatEvent::ClaimLost {
                        entry: name.to_string(),
                        due_at,
                    });
                    self.refresh(state, name).await;
                    return;
                }
                Err(error) => {
                    state.report.errors += 1;
                    tracing::warn!(entry = %name, %due_at, %error, "claiming a run failed");
                    return;
                }
            }
        }
    }

    /// Reads one entry again (its run state moved in another beat, or it was edited).
    async fn refresh(&self, state: &mut State, name: &str) {
        match self.store.get(name).await {
            Ok(Some(entry)) => {
                state.entries.insert(name.to_string(), entry);
            }
            Ok(None) => {
                state.entries.remove(name);
            }
            Err(error) => {
                state.report.errors += 1;
                tracing::warn!(entry = %name, %error, "reading an entry failed");
            }
        }
    }

    /// Publishes a claimed run and records it as sent.
    async fn publish(&self, state: &mut State, entry: &Entry, run: &Run, taken_over: bool) {
        let mut options = entry.send_options(run.due_at, &run.task_id);
        options.publish_once = Some(self.config.publish_once_window);
        let sent = self
            .sender
            .send_task(
                &entry.task,
                entry.args.clone(),
                entry.kwargs.clone(),
                options,
            )
            .await;
        if let Err(error) = sent {
            state.report.errors += 1;
            tracing::warn!(entry = %entry.name, due_at = %run.due_at, %error,
                "publishing a run failed; it is retried when its claim lease lapses");
            let _ = self.events.send(BeatEvent::SendFailed {
                entry: entry.name.clone(),
                due_at: run.due_at,
                error,
            });
            return;
        }
        state.report.sent += 1;
        if taken_over {
            state.report.taken_over += 1;
        }
        tracing::info!(entry = %entry.name, task = %entry.task, due_at = %run.due_at,
            task_id = %run.task_id, "sent");
        let finish = FinishParams::new(
            entry.name.clone(),
            run.due_at,
            self.config.claimer.clone(),
            self.clock.now(),
        );
        match self.store.finish_run(&finish).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(entry = %entry.name, due_at = %run.due_at, task_id = %run.task_id,
                "the run was taken over by another beat before it was recorded as sent; it may be sent twice with this task id")
            }
            Err(error) => {
                state.report.errors += 1;
                tracing::warn!(entry = %entry.name, due_at = %run.due_at, %error,
                    "recording a sent run failed; another beat may send it again with the same task id");
            }
        }
        let _ = self.events.send(BeatEvent::Sent {
            entry: entry.name.clone(),
            due_at: run.due_at,
            task_id: run.task_id.clone(),
            taken_over,
        });
    }
}

fn to_chrono(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests;
