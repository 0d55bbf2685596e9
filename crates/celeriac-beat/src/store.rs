//! The `ScheduleStore` seam: entries with CRUD, a change marker beat watches, and the
//! atomic claim of one run `(entry, due time)` that makes sending exactly once across
//! beat replicas.
//!
//! # The run lifecycle
//!
//! 1. Every beat process computes the due times of every entry itself
//!    ([`Entry::due_runs`](crate::Entry::due_runs)) and calls
//!    [`ScheduleStore::claim_run`] for each, with a fresh task id. The claim succeeds
//!    for exactly one caller per `(entry, due_at)`: it requires the entry to be
//!    enabled and `due_at` to be later than its `last_run_at`, and in the same
//!    transaction sets `last_run_at = due_at`, adds one to `total_run_count`,
//!    disables a one-off entry and records the run (claimer, task id, lease).
//! 2. The winner publishes the task with that task id, then calls
//!    [`ScheduleStore::finish_run`].
//! 3. A run claimed but never finished (its beat died between claim and publish, or
//!    the broker refused it) is taken over by another beat once its lease lapses
//!    ([`ScheduleStore::take_over_stale`]) and published with the same task id.
//!
//! So a run is never lost to a dead beat, and it is published twice only if a beat
//! dies (or stalls past the lease) after publishing and before finishing — a window
//! of one store round trip; the two messages then share one task id.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::entry::Entry;
use crate::BeatError;

/// An opaque token that changes whenever an entry's configuration changes (upsert,
/// remove, enable / disable, a one-off entry disabled by its run). Claims and run
/// bookkeeping do not move it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChangeMarker(pub String);

/// Parameters of [`ScheduleStore::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListParams {
    /// Only enabled entries.
    pub enabled_only: bool,
    /// Only entries whose name starts with this.
    pub prefix: Option<String>,
}

impl ListParams {
    /// Every entry.
    pub fn all() -> ListParams {
        ListParams::default()
    }

    /// Only names starting with `prefix`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> ListParams {
        self.prefix = Some(prefix.into());
        self
    }

    /// Only enabled entries.
    pub fn enabled_only(mut self) -> ListParams {
        self.enabled_only = true;
        self
    }
}

/// Parameters of [`ScheduleStore::claim_run`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClaimParams {
    /// The entry's name.
    pub entry: String,
    /// The due time being claimed.
    pub due_at: DateTime<Utc>,
    /// Who claims (a beat's id, `host/pid/random`), for people and for
    /// [`ScheduleStore::finish_run`].
    pub claimer: String,
    /// The task id the run is published with (also by a beat taking it over).
    pub task_id: String,
    /// The claimer's clock now.
    pub now: DateTime<Utc>,
    /// Until when the claimer may publish before others may take the run over.
    pub lease_until: DateTime<Utc>,
}

impl Default for ClaimParams {
    fn default() -> Self {
        ClaimParams {
            entry: String::new(),
            due_at: DateTime::<Utc>::UNIX_EPOCH,
            claimer: String::new(),
            task_id: String::new(),
            now: DateTime::<Utc>::UNIX_EPOCH,
            lease_until: DateTime::<Utc>::UNIX_EPOCH,
        }
    }
}

impl ClaimParams {
    /// A claim of `entry` at `due_at` by `claimer`, publishing as `task_id`, leased
    /// from `now` until `lease_until`.
    pub fn new(
        entry: impl Into<String>,
        due_at: DateTime<Utc>,
        claimer: impl Into<String>,
        task_id: impl Into<String>,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> ClaimParams {
        ClaimParams {
            entry: entry.into(),
            due_at,
            claimer: claimer.into(),
            task_id: task_id.into(),
            now,
            lease_until,
        }
    }
}

/// Parameters of [`ScheduleStore::finish_run`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FinishParams {
    /// The entry's name.
    pub entry: String,
    /// The run's due time.
    pub due_at: DateTime<Utc>,
    /// The claimer that published it.
    pub claimer: String,
    /// When it was published.
    pub sent_at: DateTime<Utc>,
}

impl FinishParams {
    /// `claimer` published the run `(entry, due_at)` at `sent_at`.
    pub fn new(
        entry: impl Into<String>,
        due_at: DateTime<Utc>,
        claimer: impl Into<String>,
        sent_at: DateTime<Utc>,
    ) -> FinishParams {
        FinishParams {
            entry: entry.into(),
            due_at,
            claimer: claimer.into(),
            sent_at,
        }
    }
}

/// Parameters of [`ScheduleStore::take_over_stale`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TakeOverParams {
    /// The beat taking the runs over.
    pub claimer: String,
    /// Its clock now: runs whose lease ends at or before it are stale.
    pub now: DateTime<Utc>,
    /// The new lease.
    pub lease_until: DateTime<Utc>,
    /// At most this many runs.
    pub limit: usize,
}

impl TakeOverParams {
    /// Take over up to `limit` stale runs for `claimer`.
    pub fn new(
        claimer: impl Into<String>,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> TakeOverParams {
        TakeOverParams {
            claimer: claimer.into(),
            now,
            lease_until,
            limit,
        }
    }
}

/// Parameters of [`ScheduleStore::runs`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunsParams {
    /// Only runs of this entry.
    pub entry: Option<String>,
    /// At most this many, newest due time first (default 100).
    pub limit: usize,
}

impl Default for RunsParams {
    fn default() -> Self {
        RunsParams {
            entry: None,
            limit: 100,
        }
    }
}

impl RunsParams {
    /// The latest `limit` runs of `entry`.
    pub fn of(entry: impl Into<String>, limit: usize) -> RunsParams {
        RunsParams {
            entry: Some(entry.into()),
            limit,
        }
    }
}

/// One claimed run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Run {
    /// The entry's name.
    pub entry: String,
    /// Its due time.
    pub due_at: DateTime<Utc>,
    /// The beat that holds (or held) it.
    pub claimer: String,
    /// The task id it is published with.
    pub task_id: String,
    /// When it was first claimed.
    pub claimed_at: DateTime<Utc>,
    /// Until when the current claimer may publish it.
    pub lease_until: DateTime<Utc>,
    /// When it was published (`None`: not yet, or its beat died).
    pub sent_at: Option<DateTime<Utc>>,
    /// How many beats have held it (1 + take-overs).
    pub attempts: u32,
}

/// Where beat's entries live. Every implementation passes the conformance suite in
/// `celeriac_beat::testing` (feature `testing`).
///
/// Every operation is atomic; [`claim_run`](Self::claim_run) in particular succeeds
/// for exactly one of any number of concurrent callers (in any process) per
/// `(entry, due_at)`.
#[async_trait]
pub trait ScheduleStore: Send + Sync + 'static {
    /// Creates the entry or replaces its configuration, keeping its run state
    /// (`last_run_at`, `total_run_count`, `created_at`). Validates it first
    /// ([`Entry::validate`]). Moves the change marker.
    async fn upsert(&self, entry: &Entry) -> Result<(), BeatError>;

    /// The entry called `name`.
    async fn get(&self, name: &str) -> Result<Option<Entry>, BeatError>;

    /// Entries by name.
    async fn list(&self, params: &ListParams) -> Result<Vec<Entry>, BeatError>;

    /// Deletes the entry and its runs; returns whether it existed. Moves the change
    /// marker when it did.
    async fn remove(&self, name: &str) -> Result<bool, BeatError>;

    /// Enables or disables the entry; returns whether it exists. Moves the change
    /// marker.
    async fn set_enabled(&self, name: &str, enabled: bool) -> Result<bool, BeatError>;

    /// The current change marker (cheap: beat polls it every few hundred ms).
    async fn change_marker(&self) -> Result<ChangeMarker, BeatError>;

    /// Claims the run `(entry, due_at)`: returns `true` for exactly one caller, and
    /// only while the entry exists, is enabled and `due_at` is later than its
    /// `last_run_at`. In the same transaction: `last_run_at = due_at`,
    /// `total_run_count + 1`, a one-off entry is disabled, the run is recorded.
    async fn claim_run(&self, params: &ClaimParams) -> Result<bool, BeatError>;

    /// Records that the run was published. Returns `false` (changing nothing) when
    /// `params.claimer` no longer holds it (it was taken over) or it is unknown.
    async fn finish_run(&self, params: &FinishParams) -> Result<bool, BeatError>;

    /// Takes over runs that were claimed, not finished, and whose lease ended: each
    /// goes to exactly one caller, with the new lease. Returns them (with their
    /// original task ids), oldest due time first.
    async fn take_over_stale(&self, params: &TakeOverParams) -> Result<Vec<Run>, BeatError>;

    /// Recent runs, newest due time first. Stores keep at least the latest 100 runs
    /// of each entry.
    async fn runs(&self, params: &RunsParams) -> Result<Vec<Run>, BeatError>;

    /// Where the entries live, for logs (`sqlite:///path`).
    fn describe(&self) -> String;
}
