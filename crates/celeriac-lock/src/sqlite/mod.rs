//! Locks in a SQLite file (`sqlite://path`), normally the broker's own file, so one
//! file holds queues, results and locks and every worker process on the machine
//! shares them.
//!
//! # Schema
//!
//! `migrations/0001_locks.sql`, applied when a manager opens the file and recorded in
//! the shared `celeriac_schema(component, version)` table as component `'lock'`:
//!
//! - `lock_locks(key, token, owner, fencing, acquired_at, expires_at)`: one row per
//!   lock that was acquired and not released. A row past `expires_at` is a lapsed
//!   lock: free for everyone, deleted by the next acquisition.
//! - `lock_fencing(last)`: the last fencing number issued. Every acquisition takes
//!   the next one, so the numbers of any key only grow, across releases and expiries,
//!   without keeping a row per key ever locked (unique-enqueue keys are many).
//!
//! Operators can read the locks with plain SQL
//! (`SELECT key, owner, expires_at FROM lock_locks`) or `celeriac locks list`.
//!
//! # Atomicity
//!
//! Every operation is one `BEGIN IMMEDIATE` transaction, which takes SQLite's write
//! lock before reading: an acquisition checks that no live lock holds the key, takes
//! the next fencing number and inserts its row while no other connection (of this or
//! another process) can write. Renew and release match the key *and* the token, and
//! renew also requires the lock to be live, so a stale holder changes nothing. Times
//! come from the machine's clock, which every process sharing the file reads.

mod migrate;
mod queries;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use celeriac_sqlite::SharedConnection;
use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{params, OptionalExtension};

use crate::{AcquireParams, Lease, LockError, LockInfo, LockManager};

/// Lapsed locks of other keys deleted per acquisition.
const CLEANUP_BATCH: i64 = 64;

/// Errors of the SQLite store, wrapped in [`LockError::Storage`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite reported an error.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The file was migrated by a newer celeriac than this one.
    #[error("the lock schema in this file is version {found}, newer than this celeriac knows ({known}); upgrade celeriac")]
    SchemaTooNew {
        /// Highest version recorded in `celeriac_schema`.
        found: i64,
        /// Highest version this build knows.
        known: i64,
    },
}

impl From<StoreError> for LockError {
    fn from(error: StoreError) -> LockError {
        LockError::storage(error)
    }
}

/// Settings of a [`SqliteLockManager`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteLockOptions {
    /// How long an operation waits for another connection's write lock before failing
    /// (default 5 s).
    pub busy_timeout: Duration,
}

impl Default for SqliteLockOptions {
    fn default() -> Self {
        SqliteLockOptions {
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// The SQLite lock store. See the [module docs](self). Cheap to clone; clones share
/// one connection.
#[derive(Clone)]
pub struct SqliteLockManager {
    conn: SharedConnection,
}

impl std::fmt::Debug for SqliteLockManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteLockManager")
            .field("path", &self.conn.path())
            .finish_non_exhaustive()
    }
}

impl SqliteLockManager {
    /// Opens the store named by a URL: everything after `sqlite://` is the path
    /// (`sqlite:///abs/x.db` is `/abs/x.db`), with default options.
    pub async fn open_url(url: &str) -> Result<SqliteLockManager, LockError> {
        let path = celeriac_sqlite::url_path(url).map_err(|error| LockError::InvalidUrl {
            url: url.to_string(),
            reason: error.to_string(),
        })?;
        SqliteLockManager::open(path, SqliteLockOptions::default()).await
    }

    /// Opens (creating if needed) the file at `path` and applies the pending
    /// migrations. The parent directory must exist.
    pub async fn open(
        path: impl AsRef<Path>,
        options: SqliteLockOptions,
    ) -> Result<SqliteLockManager, LockError> {
        let conn = SharedConnection::open(path.as_ref(), options.busy_timeout, &migrate::SCHEMA)
            .await
            .map_err(|error| {
                let invalid_url = |url, reason| LockError::InvalidUrl { url, reason };
                error.into_store_error(invalid_url, migrate::store_error, LockError::Storage)
            })?;
        Ok(SqliteLockManager { conn })
    }

    /// The path of the file.
    pub fn path(&self) -> &Path {
        self.conn.path()
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction on the blocking pool.
    async fn transaction<T, F>(&self, f: F) -> Result<T, LockError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>, i64) -> rusqlite::Result<T> + Send + 'static,
    {
        self.conn
            .transaction(move |tx| f(tx, now_ms()))
            .await
            .map_err(LockError::storage)?
            .map_err(|error: rusqlite::Error| LockError::storage(error))
    }
}

#[async_trait]
impl LockManager for SqliteLockManager {
    async fn acquire(&self, params: &AcquireParams) -> Result<Option<Lease>, LockError> {
        params.validate()?;
        let key = params.key.clone();
        let owner = params.owner.clone();
        let ttl = millis(params.ttl);
        let token = uuid::Uuid::new_v4().simple().to_string();
        self.transaction(move |tx, now| {
            tx.execute(queries::DELETE_LAPSED_KEY, params![key, now])?;
            let held = tx
                .query_row(queries::LIVE_HOLDER, params![key, now], |_| Ok(()))
                .optional()?
                .is_some();
            if held {
                return Ok(None);
            }
            let fencing: i64 = tx.query_row(queries::NEXT_FENCING, [], |row| row.get(0))?;
            let expires_at = now.saturating_add(ttl);
            tx.execute(
                queries::INSERT,
                params![key, token, owner, fencing, now, expires_at],
            )?;
            tx.execute(queries::DELETE_LAPSED, params![now, CLEANUP_BATCH])?;
            Ok(Some(Lease {
                key,
                token,
                fencing: u64::try_from(fencing).unwrap_or(0),
                expires_at: to_time(expires_at),
            }))
        })
        .await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, LockError> {
        if ttl < Duration::from_millis(1) {
            return Err(LockError::InvalidParams(format!(
                "the TTL of lock {:?} must be at least 1 ms, got {ttl:?}",
                lease.key
            )));
        }
        let key = lease.key.clone();
        let token = lease.token.clone();
        let ttl = millis(ttl);
        self.transaction(move |tx, now| {
            let changed = tx.execute(
                queries::RENEW,
                params![key, token, now, now.saturating_add(ttl)],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn release(&self, lease: &Lease) -> Result<bool, LockError> {
        let key = lease.key.clone();
        let token = lease.token.clone();
        self.transaction(move |tx, now| {
            let expires_at: Option<i64> = tx
                .query_row(queries::RELEASE, params![key, token], |row| row.get(0))
                .optional()?;
            Ok(expires_at.is_some_and(|at| at > now))
        })
        .await
    }

    async fn list(&self) -> Result<Vec<LockInfo>, LockError> {
        self.transaction(|tx, now| {
            let mut stmt = tx.prepare_cached(queries::LIST)?;
            let rows = stmt.query_map([now], |row| {
                let fencing: i64 = row.get(2)?;
                Ok(LockInfo {
                    key: row.get(0)?,
                    owner: row.get(1)?,
                    fencing: u64::try_from(fencing).unwrap_or(0),
                    acquired_at: to_time(row.get(3)?),
                    expires_at: to_time(row.get(4)?),
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn force_release(&self, key: &str) -> Result<bool, LockError> {
        let key = key.to_string();
        self.transaction(move |tx, now| {
            let expires_at: Option<i64> = tx
                .query_row(queries::FORCE_RELEASE, params![key], |row| row.get(0))
                .optional()?;
            Ok(expires_at.is_some_and(|at| at > now))
        })
        .await
    }

    fn describe(&self) -> String {
        format!("sqlite://{}", self.conn.path().display())
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// A duration in whole milliseconds, rounded up (a 0.5 ms TTL is 1 ms, not 0).
fn millis(duration: Duration) -> i64 {
    let ms = duration.as_nanos().div_ceil(1_000_000);
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urls_and_paths_are_checked() {
        for bad in ["sqlite://", "sqlite://:memory:", "redis://x"] {
            assert!(
                matches!(
                    SqliteLockManager::open_url(bad).await,
                    Err(LockError::InvalidUrl { .. })
                ),
                "{bad} is refused"
            );
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("locks.db").display());
        let manager = SqliteLockManager::open_url(&url).await.expect("open");
        assert_eq!(manager.describe(), url);
        let missing = format!("sqlite://{}/no/such/dir/x.db", dir.path().display());
        assert!(SqliteLockManager::open_url(&missing).await.is_err());
    }

    #[test]
    fn durations_round_up_to_milliseconds() {
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::MAX), i64::MAX);
    }
}
