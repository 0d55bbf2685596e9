//! The connection of a store that shares a SQLite file with the others: the file's
//! path checked, the component's migrations applied on open, and every operation one
//! `BEGIN IMMEDIATE` transaction on tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{Connection, TransactionBehavior};
use tokio::task::JoinError;

use crate::MigrateError;

/// Why a `sqlite://` URL or a path names no file a store can share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The URL does not start with `sqlite://` or has nothing after it.
    #[error("expected sqlite://PATH")]
    NotSqliteUrl,
    /// The path is empty or `:memory:`.
    #[error("needs a file path (an in-memory database cannot be shared)")]
    NotAFile,
}

/// The path of a `sqlite://PATH` URL: everything after `sqlite://`
/// (`sqlite:///abs/x.db` is `/abs/x.db`).
pub fn url_path(url: &str) -> Result<&str, PathError> {
    url.strip_prefix("sqlite://")
        .filter(|path| !path.is_empty())
        .ok_or(PathError::NotSqliteUrl)
}

/// `path` if it names a file that processes can share: not empty, not `:memory:`.
pub fn file_path(path: &Path) -> Result<&Path, PathError> {
    if path.as_os_str().is_empty() || path == Path::new(":memory:") {
        Err(PathError::NotAFile)
    } else {
        Ok(path)
    }
}

/// One connection to a store's file, behind a mutex. Cheap to clone; clones share
/// the connection.
#[derive(Clone)]
pub struct SharedConnection {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SharedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedConnection")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// What a store keeps in the shared file: its name in messages and its migrations.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    /// The store, as messages name it after "the SQLite " (`"lock store"`).
    pub store: &'static str,
    /// The component name of its rows in `celeriac_schema`.
    pub component: &'static str,
    /// Its migrations, in order: `(version, sql)`, as [`migrate`](crate::migrate) takes them.
    pub migrations: &'static [(i64, &'static str)],
}

/// Why [`SharedConnection::open`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The path names no file that processes can share (see [`file_path`]).
    #[error("{url}: {reason}")]
    InvalidPath {
        /// The path as a `sqlite://` URL.
        url: String,
        /// What is wrong, naming the store.
        reason: String,
    },
    /// Opening or migrating the file failed.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    /// The blocking task that opened the file panicked or was cancelled.
    #[error(transparent)]
    Task(#[from] JoinError),
}

/// An error boxed for a store's `Storage` variant.
pub type BoxedError = Box<dyn std::error::Error + Send + Sync>;

impl OpenError {
    /// Converts into a store's own error: `invalid_url(url, reason)` for a path naming
    /// no file, otherwise `storage` of the boxed task error or of
    /// `migrate_error(error)`.
    pub fn into_store_error<E, S>(
        self,
        invalid_url: impl FnOnce(String, String) -> E,
        migrate_error: impl FnOnce(MigrateError) -> S,
        storage: impl FnOnce(BoxedError) -> E,
    ) -> E
    where
        S: std::error::Error + Send + Sync + 'static,
    {
        match self {
            OpenError::InvalidPath { url, reason } => invalid_url(url, reason),
            OpenError::Migrate(error) => storage(Box::new(migrate_error(error))),
            OpenError::Task(error) => storage(Box::new(error)),
        }
    }
}

impl SharedConnection {
    /// Opens (creating if needed) the file at `path`, which must name a file (see
    /// [`file_path`]; its parent directory must exist), with
    /// [`open_migrated`](crate::open_migrated) on the blocking pool.
    pub async fn open(
        path: &Path,
        busy_timeout: Duration,
        schema: &Schema,
    ) -> Result<SharedConnection, OpenError> {
        let path = file_path(path)
            .map_err(|error| OpenError::InvalidPath {
                url: format!("sqlite://{}", path.display()),
                reason: format!("the SQLite {} {error}", schema.store),
            })?
            .to_path_buf();
        let Schema {
            component,
            migrations,
            ..
        } = *schema;
        tokio::task::spawn_blocking(move || {
            let conn = crate::open_migrated(&path, busy_timeout, component, migrations)?;
            Ok(SharedConnection {
                inner: Arc::new(Inner {
                    path,
                    conn: Mutex::new(conn),
                }),
            })
        })
        .await?
    }

    /// The path of the file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction on the blocking pool, committing
    /// when it returns `Ok`. The outer error is the blocking task's.
    pub async fn transaction<T, E, F>(&self, f: F) -> Result<Result<T, E>, JoinError>
    where
        T: Send + 'static,
        E: From<rusqlite::Error> + Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, E> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.conn.lock();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths_that_name_no_file_are_refused() {
        assert_eq!(url_path("sqlite:///abs/x.db"), Ok("/abs/x.db"));
        assert_eq!(url_path("sqlite://"), Err(PathError::NotSqliteUrl));
        assert_eq!(url_path("redis://x"), Err(PathError::NotSqliteUrl));
        assert!(file_path(Path::new("x.db")).is_ok());
        assert_eq!(file_path(Path::new("")), Err(PathError::NotAFile));
        assert_eq!(file_path(Path::new(":memory:")), Err(PathError::NotAFile));
    }

    #[tokio::test]
    async fn opening_checks_the_path_and_failed_transactions_roll_back() {
        let dir = tempfile::tempdir().expect("dir");
        const SCHEMA: Schema = Schema {
            store: "demo store",
            component: "demo",
            migrations: &[(1, "CREATE TABLE demo (x INTEGER)")],
        };
        let error = SharedConnection::open(Path::new(":memory:"), Duration::from_secs(5), &SCHEMA)
            .await
            .expect_err("refused");
        assert_eq!(
            error.to_string(),
            "sqlite://:memory:: the SQLite demo store needs a file path (an in-memory database cannot be shared)"
        );
        let conn =
            SharedConnection::open(&dir.path().join("x.db"), Duration::from_secs(5), &SCHEMA)
                .await
                .expect("open");
        let failed = conn
            .transaction(|tx| -> rusqlite::Result<()> {
                tx.execute("INSERT INTO demo VALUES (1)", [])?;
                tx.execute("INSERT INTO missing VALUES (1)", [])?;
                Ok(())
            })
            .await
            .expect("task");
        assert!(failed.is_err());
        let count = conn
            .transaction(|tx| -> rusqlite::Result<i64> {
                tx.query_row("SELECT COUNT(*) FROM demo", [], |row| row.get(0))
            })
            .await
            .expect("task")
            .expect("count");
        assert_eq!(count, 0);
    }
}
