//! Schedules in a SQLite file (`sqlite://path`), normally the broker's own file, so
//! one file holds queues, results, locks and schedules, and every beat process on
//! the machine shares them.
//!
//! # Schema
//!
//! `migrations/0001_beat.sql`, applied when a store opens the file and recorded in
//! the shared `celeriac_schema(component, version)` table as component `'beat'`:
//!
//! - `beat_entries`: one row per entry; arguments, headers and the schedule as JSON.
//! - `beat_runs(entry, due_at, claimer, task_id, claimed_at, lease_until, sent_at,
//!   attempts)`: one row per claimed run, primary key `(entry, due_at)`; the latest
//!   100 published runs of each entry are kept.
//! - `beat_changes(counter)`: the change marker, bumped by triggers on every insert,
//!   delete and configuration update of `beat_entries` (an operator's plain SQL edit
//!   included), not by claims.
//!
//! # Atomicity
//!
//! Every operation is one `BEGIN IMMEDIATE` transaction, which takes SQLite's write
//! lock before reading, so a claim's check (`enabled`, `due_at > last_run_at`) and its
//! writes cannot interleave with another claim from any connection or process. Times
//! are Unix nanoseconds, compared exactly.

mod migrate;
mod queries;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use celeriac_sqlite::SharedConnection;
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Row};

use crate::entry::{CatchUp, Entry};
use crate::store::{
    ChangeMarker, ClaimParams, FinishParams, ListParams, Run, RunsParams, ScheduleStore,
    TakeOverParams,
};
use crate::BeatError;

/// Published runs kept per entry.
const RUNS_KEPT: i64 = 100;

/// Errors of the SQLite store, wrapped in [`BeatError::Storage`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite reported an error.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value does not decode.
    #[error("stored entry {name:?} is unreadable: {reason}")]
    Corrupt {
        /// The entry.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// An instant outside the years the store can hold (1678-2261).
    #[error("{0} is outside the years the SQLite schedule store can hold (1678-2261)")]
    OutOfRange(DateTime<Utc>),
    /// The file was migrated by a newer celeriac than this one.
    #[error("the beat schema in this file is version {found}, newer than this celeriac knows ({known}); upgrade celeriac")]
    SchemaTooNew {
        /// Highest version recorded in `celeriac_schema`.
        found: i64,
        /// Highest version this build knows.
        known: i64,
    },
}

impl From<StoreError> for BeatError {
    fn from(error: StoreError) -> BeatError {
        BeatError::storage(error)
    }
}

/// Settings of a [`SqliteScheduleStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteStoreOptions {
    /// How long an operation waits for another connection's write lock before failing
    /// (default 5 s).
    pub busy_timeout: Duration,
}

impl Default for SqliteStoreOptions {
    fn default() -> Self {
        SqliteStoreOptions {
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// The SQLite schedule store. See the [module docs](self). Cheap to clone; clones
/// share one connection.
#[derive(Clone)]
pub struct SqliteScheduleStore {
    conn: SharedConnection,
}

impl std::fmt::Debug for SqliteScheduleStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteScheduleStore")
            .field("path", &self.conn.path())
            .finish_non_exhaustive()
    }
}

impl SqliteScheduleStore {
    /// Opens the store named by a URL: everything after `sqlite://` is the path
    /// (`sqlite:///abs/x.db` is `/abs/x.db`), with default options.
    pub async fn open_url(url: &str) -> Result<SqliteScheduleStore, BeatError> {
        let path = celeriac_sqlite::url_path(url).map_err(|error| BeatError::InvalidUrl {
            url: url.to_string(),
            reason: error.to_string(),
        })?;
        SqliteScheduleStore::open(path, SqliteStoreOptions::default()).await
    }

    /// Opens (creating if needed) the file at `path` and applies the pending
    /// migrations. The parent directory must exist.
    pub async fn open(
        path: impl AsRef<Path>,
        options: SqliteStoreOptions,
    ) -> Result<SqliteScheduleStore, BeatError> {
        let conn = SharedConnection::open(path.as_ref(), options.busy_timeout, &migrate::SCHEMA)
            .await
            .map_err(|error| {
                let invalid_url = |url, reason| BeatError::InvalidUrl { url, reason };
                error.into_store_error(invalid_url, migrate::store_error, BeatError::Storage)
            })?;
        Ok(SqliteScheduleStore { conn })
    }

    /// The path of the file.
    pub fn path(&self) -> &Path {
        self.conn.path()
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction on the blocking pool.
    async fn transaction<T, F>(&self, f: F) -> Result<T, BeatError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.conn
            .transaction(f)
            .await
            .map_err(BeatError::storage)?
            .map_err(|error: StoreError| BeatError::storage(error))
    }
}

#[async_trait]
impl ScheduleStore for SqliteScheduleStore {
    async fn upsert(&self, entry: &Entry) -> Result<(), BeatError> {
        entry.validate()?;
        let entry = entry.clone();
        let schedule = json(&entry.schedule)?;
        let args = json(&entry.args)?;
        let kwargs = json(&entry.kwargs)?;
        let headers = json(&entry.headers)?;
        let now = ns(Utc::now())?;
        let created = entry.created_at.map(ns).transpose()?.unwrap_or(now);
        let start = entry.start_time.map(ns).transpose()?;
        let end = entry.end_time.map(ns).transpose()?;
        self.transaction(move |tx| {
            tx.execute(
                queries::UPSERT,
                params![
                    entry.name,
                    entry.task,
                    args,
                    kwargs,
                    entry.schedule.kind(),
                    schedule,
                    entry.queue,
                    entry.exchange,
                    entry.routing_key,
                    entry.priority,
                    entry.expires.map(|e| e.as_secs_f64()),
                    headers,
                    entry.enabled,
                    entry.one_off,
                    start,
                    end,
                    entry.catch_up.as_str(),
                    entry.description,
                    created,
                    now,
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn get(&self, name: &str) -> Result<Option<Entry>, BeatError> {
        let name = name.to_string();
        self.transaction(move |tx| {
            let sql = format!(
                "SELECT {} FROM beat_entries WHERE name = ?1",
                queries::ENTRY_COLUMNS
            );
            let row = tx
                .query_row(&sql, [&name], |row| Ok(read_entry(row)))
                .optional()?;
            row.transpose()
        })
        .await
    }

    async fn list(&self, params: &ListParams) -> Result<Vec<Entry>, BeatError> {
        let enabled_only = params.enabled_only;
        let prefix = params.prefix.clone().unwrap_or_default();
        self.transaction(move |tx| {
            let sql = format!(
                "SELECT {} FROM beat_entries
                 WHERE (?1 = 0 OR enabled = 1) AND substr(name, 1, length(?2)) = ?2
                 ORDER BY name",
                queries::ENTRY_COLUMNS
            );
            let mut stmt = tx.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![enabled_only, prefix], |row| Ok(read_entry(row)))?;
            let mut entries = Vec::new();
            for row in rows {
                entries.push(row??);
            }
            Ok(entries)
        })
        .await
    }

    async fn remove(&self, name: &str) -> Result<bool, BeatError> {
        let name = name.to_string();
        self.transaction(move |tx| {
            tx.execute(queries::DELETE_RUNS, [&name])?;
            Ok(tx.execute(queries::DELETE_ENTRY, [&name])? == 1)
        })
        .await
    }

    async fn set_enabled(&self, name: &str, enabled: bool) -> Result<bool, BeatError> {
        let name = name.to_string();
        let now = ns(Utc::now())?;
        self.transaction(move |tx| {
            Ok(tx.execute(queries::SET_ENABLED, params![name, enabled, now])? == 1)
        })
        .await
    }

    async fn change_marker(&self) -> Result<ChangeMarker, BeatError> {
        self.transaction(|tx| {
            let counter: i64 = tx.query_row(queries::CHANGE_MARKER, [], |row| row.get(0))?;
            Ok(ChangeMarker(counter.to_string()))
        })
        .await
    }

    async fn claim_run(&self, params: &ClaimParams) -> Result<bool, BeatError> {
        let params = params.clone();
        let due = ns(params.due_at)?;
        let now = ns(params.now)?;
        let lease_until = ns(params.lease_until)?;
        self.transaction(move |tx| {
            let state: Option<(bool, Option<i64>, bool)> = tx
                .query_row(queries::CLAIM_CHECK, [&params.entry], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()?;
            let Some((enabled, last_run_at, one_off)) = state else {
                return Ok(false);
            };
            if !enabled || last_run_at.is_some_and(|last| last >= due) {
                return Ok(false);
            }
            tx.execute(queries::CLAIM_ADVANCE, params![params.entry, due])?;
            if one_off {
                tx.execute(queries::DISABLE_ONE_OFF, params![params.entry, now])?;
            }
            tx.execute(
                queries::INSERT_RUN,
                params![
                    params.entry,
                    due,
                    params.claimer,
                    params.task_id,
                    now,
                    lease_until
                ],
            )?;
            tx.execute(queries::PRUNE_RUNS, params![params.entry, RUNS_KEPT])?;
            Ok(true)
        })
        .await
    }

    async fn finish_run(&self, params: &FinishParams) -> Result<bool, BeatError> {
        let params = params.clone();
        let due = ns(params.due_at)?;
        let sent = ns(params.sent_at)?;
        self.transaction(move |tx| {
            let changed = tx.execute(
                queries::FINISH_RUN,
                params![params.entry, due, params.claimer, sent],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn take_over_stale(&self, params: &TakeOverParams) -> Result<Vec<Run>, BeatError> {
        let claimer = params.claimer.clone();
        let now = ns(params.now)?;
        let lease_until = ns(params.lease_until)?;
        let limit = i64::try_from(params.limit).unwrap_or(i64::MAX);
        self.transaction(move |tx| {
            let mut stmt = tx.prepare_cached(queries::TAKE_OVER)?;
            let rows = stmt.query_map(params![claimer, now, lease_until, limit], |row| {
                Ok(read_run(row))
            })?;
            let mut runs = Vec::new();
            for row in rows {
                runs.push(row??);
            }
            runs.sort_by_key(|run: &Run| run.due_at);
            Ok(runs)
        })
        .await
    }

    async fn runs(&self, params: &RunsParams) -> Result<Vec<Run>, BeatError> {
        let entry = params.entry.clone();
        let limit = i64::try_from(params.limit).unwrap_or(i64::MAX);
        self.transaction(move |tx| {
            let sql = format!(
                "SELECT {} FROM beat_runs WHERE (?1 IS NULL OR entry = ?1)
                 ORDER BY due_at DESC, entry LIMIT ?2",
                queries::RUN_COLUMNS
            );
            let mut stmt = tx.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![entry, limit], |row| Ok(read_run(row)))?;
            let mut runs = Vec::new();
            for row in rows {
                runs.push(row??);
            }
            Ok(runs)
        })
        .await
    }

    fn describe(&self) -> String {
        format!("sqlite://{}", self.conn.path().display())
    }
}

/// Reads an entry from a row of [`queries::ENTRY_COLUMNS`]. The outer result is
/// SQLite's, the inner one whether the stored JSON decodes.
fn read_entry(row: &Row<'_>) -> Result<Entry, StoreError> {
    let name: String = row.get(0)?;
    let corrupt = |what: &str, error: &dyn std::fmt::Display| StoreError::Corrupt {
        name: name.clone(),
        reason: format!("{what}: {error}"),
    };
    let schedule: String = row.get(4)?;
    let schedule: crate::Schedule =
        serde_json::from_str(&schedule).map_err(|e| corrupt("schedule", &e))?;
    let args: String = row.get(2)?;
    let kwargs: String = row.get(3)?;
    let headers: String = row.get(10)?;
    let catch_up: String = row.get(15)?;
    let expires: Option<f64> = row.get(9)?;
    let priority: Option<i64> = row.get(8)?;
    let total: i64 = row.get(18)?;
    let mut entry = Entry::new(name.clone(), row.get::<_, String>(1)?, schedule);
    entry.args = serde_json::from_str(&args).map_err(|e| corrupt("args", &e))?;
    entry.kwargs = serde_json::from_str(&kwargs).map_err(|e| corrupt("kwargs", &e))?;
    entry.queue = row.get(5)?;
    entry.exchange = row.get(6)?;
    entry.routing_key = row.get(7)?;
    entry.priority = priority.and_then(|p| u8::try_from(p).ok());
    entry.expires = expires.and_then(|e| Duration::try_from_secs_f64(e).ok());
    entry.headers = serde_json::from_str(&headers).map_err(|e| corrupt("headers", &e))?;
    entry.enabled = row.get(11)?;
    entry.one_off = row.get(12)?;
    entry.start_time = row.get::<_, Option<i64>>(13)?.map(from_ns);
    entry.end_time = row.get::<_, Option<i64>>(14)?.map(from_ns);
    entry.catch_up = catch_up
        .parse::<CatchUp>()
        .map_err(|e| corrupt("catch_up", &e))?;
    entry.description = row.get(16)?;
    entry.last_run_at = row.get::<_, Option<i64>>(17)?.map(from_ns);
    entry.total_run_count = u64::try_from(total).unwrap_or(0);
    entry.created_at = Some(from_ns(row.get(19)?));
    entry.updated_at = Some(from_ns(row.get(20)?));
    Ok(entry)
}

/// Reads a run from a row of [`queries::RUN_COLUMNS`].
fn read_run(row: &Row<'_>) -> Result<Run, StoreError> {
    let attempts: i64 = row.get(7)?;
    Ok(Run {
        entry: row.get(0)?,
        due_at: from_ns(row.get(1)?),
        claimer: row.get(2)?,
        task_id: row.get(3)?,
        claimed_at: from_ns(row.get(4)?),
        lease_until: from_ns(row.get(5)?),
        sent_at: row.get::<_, Option<i64>>(6)?.map(from_ns),
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
    })
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, BeatError> {
    serde_json::to_string(value).map_err(|e| BeatError::InvalidEntry(e.to_string()))
}

/// An instant as Unix nanoseconds.
fn ns(at: DateTime<Utc>) -> Result<i64, StoreError> {
    at.timestamp_nanos_opt().ok_or(StoreError::OutOfRange(at))
}

fn from_ns(ns: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urls_and_paths_are_checked() {
        for bad in ["sqlite://", "sqlite://:memory:", "redis://x"] {
            assert!(
                matches!(
                    SqliteScheduleStore::open_url(bad).await,
                    Err(BeatError::InvalidUrl { .. })
                ),
                "{bad} is refused"
            );
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("beat.db").display());
        let store = SqliteScheduleStore::open_url(&url).await.expect("open");
        assert_eq!(store.describe(), url);
    }
}
