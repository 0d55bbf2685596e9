//! celeriac beat: periodic and one-off schedules kept in a store, edited at runtime,
//! and sent exactly once by any number of beat processes.
//!
//! # Layout
//!
//! - [`schedule`]: [`Interval`], [`Crontab`] (Celery's crontab semantics in an IANA
//!   time zone) and [`Clocked`] behind [`Schedule::next_after`].
//! - [`entry`]: [`Entry`] (task, arguments, routing, options, schedule, run state) and
//!   [`Entry::due_runs`], the rule deciding which runs are due, with the
//!   [`CatchUp`] policy for runs missed while beat was down.
//! - [`store`]: the [`ScheduleStore`] seam (CRUD, change marker, atomic claim of a
//!   run) and [`connect`].
//! - [`sqlite`] (feature `sqlite`, on by default): entries in a SQLite file, normally
//!   the broker's.
//! - `django` (feature `django`): django-celery-beat's own PostgreSQL tables
//!   (`django+postgres://...`), so schedules made in the Django admin run on celeriac.
//! - `redis` (feature `redis`): entries in Redis under kombu's `global_keyprefix`,
//!   claims as Lua scripts.
//! - [`beat`]: the [`Beat`] service (`run_until(shutdown)`), its [`BeatConfig`], the
//!   [`Clock`] it reads time from and the [`BeatEvent`]s it reports.
//! - `testing` (feature `testing`): the conformance suite every store runs from its
//!   own `tests/`.
//!
//! # Exactly once across replicas
//!
//! Every beat process computes due times itself and *claims* each run
//! `(entry, due_at)` in the store before publishing it: the claim is one atomic
//! compare-and-set (`due_at > last_run_at` on an enabled entry) that succeeds for
//! exactly one process, not a leader lock that could lapse in the middle of a send.
//! A claimed run that its beat did not publish (it died) is taken over after a short
//! lease by another beat and published with the same task id. See [`store`].
//!
//! # Daylight saving time
//!
//! A crontab runs on the wall clock of its zone. A wall-clock time that does not exist
//! (spring forward) runs once, at the first valid instant after the gap; one that
//! occurs twice (fall back) runs once, at its first occurrence. Details in
//! [`schedule`].
//!
//! # Downtime
//!
//! A due time older than [`BeatConfig::misfire_grace`] (5 s) when beat looks at it
//! was missed. The entry's [`CatchUp`] policy decides: `once` (default) sends one run
//! for all missed due times (the latest), `all` sends each, `skip` sends none.

use std::sync::Arc;

pub mod beat;
#[cfg(feature = "django")]
pub mod django;
pub mod entry;
#[cfg(feature = "redis")]
pub mod redis;
pub mod schedule;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use beat::{Beat, BeatConfig, BeatEvent, BeatReport, Clock, SystemClock, TokioClock};
pub use entry::{CatchUp, Entry, BEAT_HEADER};
pub use schedule::{
    Clocked, Crontab, CrontabSpec, Interval, Schedule, ScheduleError, Solar, SolarEvent, SolarSpec,
};
pub use store::{
    ChangeMarker, ClaimParams, FinishParams, ListParams, Run, RunsParams, ScheduleStore,
    TakeOverParams,
};

/// Errors of beat and its stores.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BeatError {
    /// The store URL cannot be used.
    #[error("invalid schedule store URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// No schedule store of this kind exists, or it is not built in (a cargo
    /// feature).
    #[error("the {what} schedule store is not supported by this build (stores: sqlite://PATH; redis://HOST[:PORT][/DB] with feature `redis`; django+postgres://... with feature `django`)")]
    Unsupported {
        /// The kind asked for, e.g. `redis`.
        what: String,
    },
    /// The entry cannot be stored.
    #[error("invalid schedule entry: {0}")]
    InvalidEntry(String),
    /// The schedule cannot be built.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// The store failed.
    #[error("schedule store error: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl BeatError {
    /// Wraps a storage error.
    pub fn storage<E: std::error::Error + Send + Sync + 'static>(error: E) -> BeatError {
        BeatError::Storage(Box::new(error))
    }
}

/// Opens the schedule store named by `url`:
///
/// - `sqlite://PATH` (feature `sqlite`): a SQLite file, created if needed;
/// - `redis://`, `rediss://`, `redis+socket://` (feature `redis`): Redis, with kombu's
///   `?global_keyprefix=P`;
/// - `django+postgres://user@host/db` (feature `django`): django-celery-beat's tables.
///
/// A scheme whose store is not built in returns [`BeatError::Unsupported`].
pub async fn connect(url: &str) -> Result<Arc<dyn ScheduleStore>, BeatError> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    match scheme {
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(Arc::new(sqlite::SqliteScheduleStore::open_url(url).await?)),
        #[cfg(feature = "django")]
        "django+postgres" | "django+postgresql" => {
            Ok(Arc::new(django::DjangoScheduleStore::open_url(url).await?))
        }
        #[cfg(feature = "redis")]
        "redis" | "rediss" | "redis+socket" | "unix" => {
            Ok(Arc::new(redis::RedisScheduleStore::open_url(url).await?))
        }
        "" => Err(BeatError::InvalidUrl {
            url: url.to_string(),
            reason: "expected sqlite://PATH".into(),
        }),
        other => Err(BeatError::Unsupported {
            what: other.to_string(),
        }),
    }
}
