//! The task history's table in a SQLite file, so the history survives a dashboard
//! restart (Flower's `--persistent --db FILE`).
//!
//! # Schema
//!
//! `migrations/0001_task_history.sql`, applied when the store opens the file and
//! recorded in the shared `celeriac_schema(component, version)` table as component
//! `'dashboard'`: `dashboard_tasks(task_id, seq, status, name, record)`, one row per
//! task, `record` being the [`TaskRecord`] as JSON and `seq` when the dashboard first
//! saw the task (Unix microseconds; newest = largest).
//!
//! The file is normally the SQLite broker's own; any SQLite file works (a Redis
//! deployment passes one with `celeriac dashboard --db FILE`). Writes come in
//! batches from [`TaskHistory::flush`](super::TaskHistory::flush), each batch in
//! transactions of at most [`ROWS_PER_TRANSACTION`] rows so the broker sharing the
//! file never waits long for its write lock.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{params, Connection, TransactionBehavior};

use super::TaskRecord;

/// The component name of the dashboard's rows in `celeriac_schema`.
const COMPONENT: &str = "dashboard";

/// The dashboard's migrations, in order: `(version, sql)`. Never edit an applied one;
/// add a new file instead.
const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../../migrations/0001_task_history.sql"))];

/// Rows written per transaction.
pub const ROWS_PER_TRANSACTION: usize = 1000;

/// How long a write waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the history store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// SQLite reported an error.
    #[error("task history store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file was migrated by a newer celeriac than this one.
    #[error("the dashboard schema in this file is version {found}, newer than this celeriac knows ({known}); upgrade celeriac")]
    SchemaTooNew {
        /// Highest version recorded in `celeriac_schema`.
        found: i64,
        /// Highest version this build knows.
        known: i64,
    },
    /// Not a usable location.
    #[error("{location:?} is not a task history file: {reason}")]
    InvalidLocation {
        /// What was given.
        location: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A stored record is not valid JSON of a task record.
    #[error("a stored task record cannot be read: {0}")]
    Record(#[from] serde_json::Error),
    /// The blocking writer thread panicked or was cancelled.
    #[error("the task history writer stopped: {0}")]
    Writer(String),
}

impl From<celeriac_sqlite::MigrateError> for HistoryError {
    fn from(error: celeriac_sqlite::MigrateError) -> HistoryError {
        match error {
            celeriac_sqlite::MigrateError::SchemaTooNew { found, known, .. } => {
                HistoryError::SchemaTooNew { found, known }
            }
            celeriac_sqlite::MigrateError::Sqlite(error) => HistoryError::Sqlite(error),
        }
    }
}

/// The history's table in a SQLite file. Cheap to clone; clones share one
/// connection. Its methods block: call them off the async threads
/// (`spawn_blocking`), as [`TaskHistory`](super::TaskHistory) does.
#[derive(Clone)]
pub struct HistoryStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for HistoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl HistoryStore {
    /// Opens the file named by `location`: `sqlite://PATH` (`sqlite:///abs/x.db` is
    /// `/abs/x.db`, query options ignored) or a plain path.
    pub fn open_url(location: &str) -> Result<HistoryStore, HistoryError> {
        let path = location.strip_prefix("sqlite://").unwrap_or(location);
        let path = path.split_once('?').map_or(path, |(path, _)| path);
        if location.contains("://") && !location.starts_with("sqlite://") {
            return Err(HistoryError::InvalidLocation {
                location: location.to_string(),
                reason: "expected a file path or sqlite://PATH".into(),
            });
        }
        HistoryStore::open(path)
    }

    /// Opens (creating if needed) the file at `path` and applies the pending
    /// migrations. The parent directory must exist.
    pub fn open(path: impl AsRef<Path>) -> Result<HistoryStore, HistoryError> {
        let path = path.as_ref().to_path_buf();
        if path.as_os_str().is_empty() || path == Path::new(":memory:") {
            return Err(HistoryError::InvalidLocation {
                location: path.display().to_string(),
                reason: "a file path is needed (an in-memory history needs no store)".into(),
            });
        }
        let conn = celeriac_sqlite::open_migrated(&path, BUSY_TIMEOUT, COMPONENT, MIGRATIONS)?;
        Ok(HistoryStore {
            path,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The newest `limit` records with their `seq`, oldest first.
    pub fn load(&self, limit: usize) -> Result<Vec<(i64, TaskRecord)>, HistoryError> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached("SELECT seq, record FROM dashboard_tasks ORDER BY seq DESC LIMIT ?1")?;
        let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
        })?;
        let mut records = Vec::new();
        for row in rows {
            let (seq, json) = row?;
            match serde_json::from_str::<TaskRecord>(&json) {
                Ok(record) => records.push((seq, record)),
                // One damaged row costs that task, not the history.
                Err(error) => tracing::warn!(seq, %error, "skipping an unreadable task record"),
            }
        }
        records.reverse();
        Ok(records)
    }

    /// Rows in the table.
    pub fn count(&self) -> Result<u64, HistoryError> {
        let conn = self.conn.lock();
        let count: i64 =
            conn.query_row("SELECT COUNT(*) FROM dashboard_tasks", [], |row| row.get(0))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Inserts or replaces `rows` (`(seq, record)`), then deletes the rows older
    /// than `prune_below` (a `seq`), in transactions of at most
    /// [`ROWS_PER_TRANSACTION`] rows.
    pub fn write(
        &self,
        rows: &[(i64, TaskRecord)],
        prune_below: Option<i64>,
    ) -> Result<(), HistoryError> {
        let mut conn = self.conn.lock();
        for chunk in rows.chunks(ROWS_PER_TRANSACTION) {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut upsert = tx.prepare_cached(
                    "INSERT INTO dashboard_tasks (task_id, seq, status, name, record)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (task_id) DO UPDATE SET
                       seq = excluded.seq, status = excluded.status,
                       name = excluded.name, record = excluded.record",
                )?;
                for (seq, record) in chunk {
                    let json = serde_json::to_string(record)?;
                    upsert.execute(params![
                        record.task_id,
                        seq,
                        record.status,
                        record.name,
                        json
                    ])?;
                }
            }
            tx.commit()?;
        }
        if let Some(seq) = prune_below {
            conn.execute("DELETE FROM dashboard_tasks WHERE seq < ?1", [seq])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, status: &str) -> TaskRecord {
        TaskRecord {
            task_id: id.into(),
            status: status.into(),
            name: Some("t.add".into()),
            ..TaskRecord::default()
        }
    }

    #[test]
    fn rows_are_replaced_pruned_and_loaded_newest_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = HistoryStore::open(dir.path().join("h.db")).expect("open");
        store
            .write(
                &[(1, record("a", "RECEIVED")), (2, record("b", "RECEIVED"))],
                None,
            )
            .expect("first batch");
        store
            .write(
                &[(2, record("b", "SUCCESS")), (3, record("c", "STARTED"))],
                Some(2),
            )
            .expect("second batch");
        let loaded = store.load(10).expect("load");
        let seen: Vec<(i64, &str, &str)> = loaded
            .iter()
            .map(|(seq, r)| (*seq, r.task_id.as_str(), r.status.as_str()))
            .collect();
        assert_eq!(seen, vec![(2, "b", "SUCCESS"), (3, "c", "STARTED")]);
        assert_eq!(store.load(1).expect("newest")[0].1.task_id, "c");
        assert_eq!(store.count().expect("count"), 2);
    }

    #[test]
    fn the_migration_is_recorded_and_other_schemes_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h.db");
        let url = format!("sqlite://{}", path.display());
        drop(HistoryStore::open_url(&url).expect("open"));
        let again = HistoryStore::open_url(&url).expect("reopen applies nothing twice");
        let versions: i64 = again
            .conn
            .lock()
            .query_row(
                "SELECT MAX(version) FROM celeriac_schema WHERE component = 'dashboard'",
                [],
                |row| row.get(0),
            )
            .expect("ledger");
        assert_eq!(versions, 1);
        assert!(matches!(
            HistoryStore::open_url("redis://localhost/0"),
            Err(HistoryError::InvalidLocation { .. })
        ));
    }
}
