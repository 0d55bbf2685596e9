//! Results in a SQLite file (`sqlite://path`), the embedded default.
//!
//! The file is often the same one the SQLite broker uses: the broker's tables are
//! prefixed `broker_`, these are prefixed `backend_`, and both components record
//! their migrations in the shared `celeriac_schema(component, version)` table
//! (this one as component `'backend'`). The file is switched to WAL mode, so readers
//! never block the writer and the worker, the broker and clients in other processes
//! can share it.
//!
//! # Schema
//!
//! One row per task id in `backend_results` (see `migrations/0001_results.sql`):
//!
//! | column | content |
//! |---|---|
//! | `task_id` | primary key |
//! | `status` | the state's wire name (`SUCCESS`, `STARTED`, a custom state, ...) |
//! | `name` | the task name, when the meta has one (`result_extended`) |
//! | `meta` | Celery's task meta JSON, exactly the bytes of `serde_json::to_vec(&TaskMeta)` |
//! | `date_done` | copied from the meta |
//! | `expires_at` | Unix ms after which the row reads as absent; `NULL` = never |
//! | `updated_at` | Unix ms of the last write |
//! | `seq` | write order (each write takes the largest + 1); listings are newest first by it |
//!
//! Indexes serve listing by status and by name (newest first), listing everything
//! newest first (and finding the next `seq`), and expiry cleanup (a partial index on
//! `expires_at`).
//!
//! A store is a single upsert whose `WHERE` refuses to replace a live SUCCESS, run in
//! a `BEGIN IMMEDIATE` transaction; [`ResultBackend::store_many`] writes a whole
//! batch in one such transaction. Expired rows read as absent at once and are
//! deleted by [`ResultBackend::cleanup_expired`].
//!
//! Saved groups ([`ResultBackend::save_group`]) are rows of `backend_groups`
//! (`migrations/0003_groups.sql`): the group id, Celery's stored value and an expiry.
//!
//! # Connections
//!
//! One writer connection, used by one blocking task at a time (callers queue on an
//! async mutex, not on blocking threads), a small pool of reader connections, and
//! one connection for change detection. All SQLite calls run in
//! [`tokio::task::spawn_blocking`]. Each connection has a 5 s busy timeout and
//! `synchronous=NORMAL`.
//!
//! # How `wait` learns about new results
//!
//! - **Same handle** (this [`SqliteBackend`] or its clones): a store of a ready state
//!   notifies an in-process map of waiters keyed by task id, after its commit, and
//!   the waiter reads the row at once. The waiter registers before its first read, so
//!   no store is missed, and the entry is removed with the last waiter of a task id.
//! - **Other processes and other handles**: the waiter re-checks on a timer that
//!   starts at 2 ms and doubles up to 50 ms ([`SqliteOptions::poll_min`],
//!   [`SqliteOptions::poll_max`]). Each re-check first reads `PRAGMA data_version` on
//!   the change-detection connection (shared by all waiters of the handle, coalesced
//!   to one read per millisecond); the row is read again only if something was
//!   committed since the waiter last read it.
//!
//! Opening the same file twice in one process gives two handles that do not share
//! the in-process map; they see each other's results through the re-check.

mod chord;
mod conn;
mod group;
mod queries;
mod schema;
mod waiters;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::{TaskMeta, TaskState};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, TransactionBehavior};
use tokio::time::Instant;

use crate::{BackendError, ResultBackend, ResultQuery, StoreOutcome};
use conn::{ChangeDetector, Readers};
use waiters::Waiters;

/// How many expired rows [`ResultBackend::cleanup_expired`] deletes per transaction.
const CLEANUP_BATCH: i64 = 1000;

/// Settings of a [`SqliteBackend`]. Start from [`SqliteOptions::default`] and change
/// fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// How long a connection waits for a lock held by another connection before an
    /// operation fails (default 5 s).
    pub busy_timeout: Duration,
    /// First re-check interval of [`ResultBackend::wait`] for writes from other
    /// processes (default 2 ms; at least 1 ms).
    pub poll_min: Duration,
    /// Longest re-check interval of [`ResultBackend::wait`] (default 50 ms).
    pub poll_max: Duration,
    /// Reader connections kept open while idle (default 4).
    pub max_idle_readers: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            busy_timeout: Duration::from_secs(5),
            poll_min: Duration::from_millis(2),
            poll_max: Duration::from_millis(50),
            max_idle_readers: 4,
        }
    }
}

/// The SQLite result backend. Cheap to clone; clones share connections and wake
/// each other's waiters.
#[derive(Clone)]
pub struct SqliteBackend {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    options: SqliteOptions,
    writer: Arc<tokio::sync::Mutex<Connection>>,
    readers: Readers,
    detector: ChangeDetector,
    waiters: Waiters,
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("path", &self.inner.path)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl SqliteBackend {
    /// Opens `sqlite://PATH` with default options. The path is everything after
    /// `sqlite://`: `sqlite://celeriac.db` is relative to the working directory,
    /// `sqlite:///var/lib/app/celeriac.db` is absolute.
    pub async fn open_url(url: &str) -> Result<SqliteBackend, BackendError> {
        SqliteBackend::open(path_from_url(url)?, SqliteOptions::default()).await
    }

    /// Opens (creating if needed) the database file at `path`, switches it to WAL
    /// mode and applies pending migrations.
    pub async fn open(
        path: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> Result<SqliteBackend, BackendError> {
        let path = path.as_ref().to_path_buf();
        let mut options = options;
        options.poll_min = options.poll_min.max(Duration::from_millis(1));
        options.poll_max = options.poll_max.max(options.poll_min);

        let writer = {
            let path = path.clone();
            let options = options.clone();
            tokio::task::spawn_blocking(move || open_writer(&path, &options))
                .await
                .map_err(BackendError::storage)??
        };
        Ok(SqliteBackend {
            inner: Arc::new(Inner {
                readers: Readers::new(path.clone(), options.clone()),
                detector: ChangeDetector::new(path.clone(), options.clone()),
                writer: Arc::new(tokio::sync::Mutex::new(writer)),
                waiters: Waiters::default(),
                path,
                options,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` with the writer connection on the blocking pool.
    async fn write<R, F>(&self, f: F) -> Result<R, BackendError>
    where
        F: FnOnce(&mut Connection, &Inner) -> Result<R, BackendError> + Send + 'static,
        R: Send + 'static,
    {
        let mut conn = Arc::clone(&self.inner.writer).lock_owned().await;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&mut conn, &inner))
            .await
            .map_err(BackendError::storage)?
    }

    /// Runs `f` with a reader connection on the blocking pool.
    async fn read<R, F>(&self, f: F) -> Result<R, BackendError>
    where
        F: FnOnce(&Connection) -> Result<R, BackendError> + Send + 'static,
        R: Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.readers.with(f))
            .await
            .map_err(BackendError::storage)?
    }

    /// The live meta of `task_id` if it is in a ready state.
    async fn get_ready(&self, task_id: &str) -> Result<Option<TaskMeta>, BackendError> {
        let task_id = task_id.to_owned();
        self.read(move |conn| query_meta(conn, queries::GET_READY, &task_id))
            .await
    }

    /// The change detector's epoch (see the module docs).
    async fn change_epoch(&self) -> Result<u64, BackendError> {
        if let Some(epoch) = self.inner.detector.fresh_epoch() {
            return Ok(epoch);
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.detector.check().map_err(BackendError::storage))
            .await
            .map_err(BackendError::storage)?
    }
}

/// The file path in `sqlite://PATH`.
fn path_from_url(url: &str) -> Result<PathBuf, BackendError> {
    let invalid = |reason: &str| BackendError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let path = url
        .strip_prefix("sqlite://")
        .ok_or_else(|| invalid("expected sqlite://PATH"))?;
    if path.is_empty() {
        return Err(invalid(
            "the database path is empty (expected sqlite://PATH)",
        ));
    }
    if path == ":memory:" || path.starts_with("file:") {
        return Err(invalid(
            "in-memory and URI databases are not supported: each connection would see its own database; use a file path",
        ));
    }
    Ok(PathBuf::from(path))
}

/// Opens the writer connection, enables WAL and migrates.
fn open_writer(path: &Path, options: &SqliteOptions) -> Result<Connection, BackendError> {
    let mut conn =
        conn::open_connection(path, options).map_err(|e| BackendError::Connection(Box::new(e)))?;
    let mode = conn::enable_wal(&conn).map_err(BackendError::storage)?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), mode, "SQLite result backend is not in WAL mode");
    }
    schema::migrate(&mut conn).map_err(BackendError::storage)?;
    Ok(conn)
}

/// The current time in Unix milliseconds.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `expires_at` for a write at `now`; `None` and zero mean never.
fn expires_at(now: i64, expires: Option<Duration>) -> Option<i64> {
    expires.filter(|d| !d.is_zero()).map(|d| {
        let millis = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        now.saturating_add(millis.max(1))
    })
}

/// A meta encoded for the `backend_results` columns.
struct Row {
    task_id: String,
    status: String,
    name: Option<String>,
    meta: String,
    date_done: Option<String>,
    ready: bool,
}

impl Row {
    fn encode(meta: &TaskMeta) -> Result<Row, BackendError> {
        Ok(Row {
            task_id: meta.task_id.clone(),
            status: meta.status.as_str().to_owned(),
            name: meta.name.clone(),
            meta: serde_json::to_string(meta).map_err(BackendError::storage)?,
            date_done: meta.date_done.clone(),
            ready: meta.status.is_ready(),
        })
    }

    /// Runs [`queries::STORE`]; true if the row was written.
    fn store(
        &self,
        tx: &rusqlite::Transaction<'_>,
        now: i64,
        expires_at: Option<i64>,
    ) -> rusqlite::Result<bool> {
        let mut statement = tx.prepare_cached(queries::STORE)?;
        let changed = statement.execute(params![
            self.task_id,
            self.status,
            self.name,
            self.meta,
            self.date_done,
            expires_at,
            now
        ])?;
        Ok(changed > 0)
    }
}

/// Parses a stored meta.
fn decode(task_id: &str, raw: ValueRef<'_>) -> Result<TaskMeta, BackendError> {
    let bytes = match raw {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => bytes,
        other => {
            return Err(BackendError::Corrupt {
                task_id: task_id.to_owned(),
                reason: format!("meta is {:?}, not JSON text", other.data_type()),
            })
        }
    };
    serde_json::from_slice(bytes).map_err(|e| BackendError::Corrupt {
        task_id: task_id.to_owned(),
        reason: e.to_string(),
    })
}

/// Runs a `(task_id, now) -> meta` query.
fn query_meta(
    conn: &Connection,
    sql: &str,
    task_id: &str,
) -> Result<Option<TaskMeta>, BackendError> {
    let mut statement = conn.prepare_cached(sql).map_err(BackendError::storage)?;
    let mut rows = statement
        .query(params![task_id, now_ms()])
        .map_err(BackendError::storage)?;
    match rows.next().map_err(BackendError::storage)? {
        Some(row) => Ok(Some(decode(
            task_id,
            row.get_ref(0).map_err(BackendError::storage)?,
        )?)),
        None => Ok(None),
    }
}

/// Collects `(task_id, meta)` rows.
fn collect_metas(mut rows: rusqlite::Rows<'_>) -> Result<Vec<TaskMeta>, BackendError> {
    let mut metas = Vec::new();
    while let Some(row) = rows.next().map_err(BackendError::storage)? {
        let task_id: String = row.get(0).map_err(BackendError::storage)?;
        metas.push(decode(
            &task_id,
            row.get_ref(1).map_err(BackendError::storage)?,
        )?);
    }
    Ok(metas)
}

#[async_trait]
impl ResultBackend for SqliteBackend {
    fn describe(&self) -> String {
        format!("sqlite://{}", self.inner.path.display())
    }

    async fn store(
        &self,
        meta: &TaskMeta,
        expires: Option<Duration>,
    ) -> Result<StoreOutcome, BackendError> {
        let row = Row::encode(meta)?;
        self.write(move |conn, inner| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(BackendError::storage)?;
            let now = now_ms();
            let written = row
                .store(&tx, now, expires_at(now, expires))
                .map_err(BackendError::storage)?;
            tx.commit().map_err(BackendError::storage)?;
            if !written {
                return Ok(StoreOutcome::KeptSuccess);
            }
            if row.ready {
                inner.waiters.notify([row.task_id.as_str()]);
            }
            Ok(StoreOutcome::Stored)
        })
        .await
    }

    async fn store_many(
        &self,
        metas: &[TaskMeta],
        expires: Option<Duration>,
    ) -> Result<(), BackendError> {
        if metas.is_empty() {
            return Ok(());
        }
        let rows = metas
            .iter()
            .map(Row::encode)
            .collect::<Result<Vec<_>, _>>()?;
        self.write(move |conn, inner| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(BackendError::storage)?;
            let now = now_ms();
            let expires_at = expires_at(now, expires);
            let mut woken = Vec::new();
            for row in &rows {
                let written = row
                    .store(&tx, now, expires_at)
                    .map_err(BackendError::storage)?;
                if written && row.ready {
                    woken.push(row.task_id.as_str());
                }
            }
            tx.commit().map_err(BackendError::storage)?;
            inner.waiters.notify(woken);
            Ok(())
        })
        .await
    }

    async fn get(&self, task_id: &str) -> Result<Option<TaskMeta>, BackendError> {
        let task_id = task_id.to_owned();
        self.read(move |conn| query_meta(conn, queries::GET, &task_id))
            .await
    }

    async fn wait(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<TaskMeta>, BackendError> {
        let deadline = Instant::now().checked_add(timeout);
        // Register and note the change epoch before the first read, so a store
        // committed after that read is never missed.
        let mut subscription = self.inner.waiters.subscribe(task_id);
        let mut epoch = self.change_epoch().await?;
        if let Some(meta) = self.get_ready(task_id).await? {
            return Ok(Some(meta));
        }
        let poll_max = self.inner.options.poll_max;
        let mut interval = self.inner.options.poll_min;
        loop {
            let next = Instant::now() + interval;
            let (tick, last) = match deadline {
                Some(deadline) if deadline <= next => (deadline, true),
                _ => (next, false),
            };
            tokio::select! {
                () = subscription.notified() => {}
                () = tokio::time::sleep_until(tick) => {
                    if last {
                        return self.get_ready(task_id).await;
                    }
                    interval = (interval * 2).min(poll_max);
                    let current = self.change_epoch().await?;
                    if current == epoch {
                        continue;
                    }
                    epoch = current;
                }
            }
            if let Some(meta) = self.get_ready(task_id).await? {
                return Ok(Some(meta));
            }
        }
    }

    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        let task_id = task_id.to_owned();
        self.write(move |conn, _| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(BackendError::storage)?;
            tx.prepare_cached(queries::FORGET)
                .and_then(|mut statement| statement.execute([&task_id]))
                .map_err(BackendError::storage)?;
            tx.commit().map_err(BackendError::storage)
        })
        .await
    }

    async fn cleanup_expired(&self) -> Result<u64, BackendError> {
        let mut total = 0u64;
        loop {
            let deleted = self
                .write(|conn, _| {
                    let tx = conn
                        .transaction_with_behavior(TransactionBehavior::Immediate)
                        .map_err(BackendError::storage)?;
                    let deleted = tx
                        .prepare_cached(queries::DELETE_EXPIRED)
                        .and_then(|mut statement| {
                            statement.execute(params![now_ms(), CLEANUP_BATCH])
                        })
                        .map_err(BackendError::storage)?;
                    tx.commit().map_err(BackendError::storage)?;
                    Ok(deleted)
                })
                .await?;
            total += deleted as u64;
            if (deleted as i64) < CLEANUP_BATCH {
                break;
            }
        }
        self.sqlite_chord_cleanup().await?;
        self.sqlite_group_cleanup().await?;
        Ok(total)
    }

    async fn chord_set_size(
        &self,
        group_id: &str,
        size: u64,
        expires: Option<Duration>,
    ) -> Result<(), BackendError> {
        self.sqlite_chord_set_size(group_id, size, expires).await
    }

    async fn chord_part_return(
        &self,
        part: &crate::ChordPart,
        expires: Option<Duration>,
        claim_ttl: Duration,
    ) -> Result<crate::ChordProgress, BackendError> {
        self.sqlite_chord_part_return(part, expires, claim_ttl)
            .await
    }

    async fn chord_extend_claim(
        &self,
        group_id: &str,
        claim: &str,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        self.sqlite_chord_extend_claim(group_id, claim, ttl).await
    }

    async fn chord_finish(&self, group_id: &str, claim: &str) -> Result<bool, BackendError> {
        self.sqlite_chord_finish(group_id, claim).await
    }

    async fn save_group(
        &self,
        group: &crate::SavedGroup,
        expires: Option<Duration>,
    ) -> Result<(), BackendError> {
        self.sqlite_save_group(group, expires).await
    }

    async fn restore_group(
        &self,
        group_id: &str,
    ) -> Result<Option<crate::SavedGroup>, BackendError> {
        self.sqlite_restore_group(group_id).await
    }

    async fn forget_group(&self, group_id: &str) -> Result<(), BackendError> {
        self.sqlite_forget_group(group_id).await
    }

    async fn recent(&self, query: &ResultQuery) -> Result<Vec<TaskMeta>, BackendError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let state = query.state.as_ref().map(|s| s.as_str().to_owned());
        self.read(move |conn| {
            let now = now_ms();
            match &state {
                Some(state) => {
                    let mut statement = conn
                        .prepare_cached(queries::RECENT_IN_STATE)
                        .map_err(BackendError::storage)?;
                    let rows = statement
                        .query(params![state, now, limit])
                        .map_err(BackendError::storage)?;
                    collect_metas(rows)
                }
                None => {
                    let mut statement = conn
                        .prepare_cached(queries::RECENT)
                        .map_err(BackendError::storage)?;
                    let rows = statement
                        .query(params![now, limit])
                        .map_err(BackendError::storage)?;
                    collect_metas(rows)
                }
            }
        })
        .await
    }

    async fn count_by_state(&self) -> Result<Vec<(TaskState, u64)>, BackendError> {
        self.read(|conn| {
            let mut statement = conn
                .prepare_cached(queries::COUNT_BY_STATE)
                .map_err(BackendError::storage)?;
            let counts = statement
                .query_map([now_ms()], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(BackendError::storage)?;
            Ok(counts
                .into_iter()
                .map(|(state, count)| (TaskState::parse(&state), u64::try_from(count).unwrap_or(0)))
                .collect())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_name_relative_and_absolute_paths() {
        assert_eq!(
            path_from_url("sqlite://celeriac.db").expect("relative"),
            PathBuf::from("celeriac.db")
        );
        assert_eq!(
            path_from_url("sqlite:///abs/x.db").expect("absolute"),
            PathBuf::from("/abs/x.db")
        );
        for bad in [
            "sqlite://",
            "redis://localhost",
            "celeriac.db",
            "sqlite://:memory:",
        ] {
            assert!(
                matches!(path_from_url(bad), Err(BackendError::InvalidUrl { .. })),
                "{bad} is refused"
            );
        }
    }

    #[test]
    fn zero_and_absent_expiry_mean_never() {
        assert_eq!(expires_at(1_000, None), None);
        assert_eq!(expires_at(1_000, Some(Duration::ZERO)), None);
        assert_eq!(
            expires_at(1_000, Some(Duration::from_millis(250))),
            Some(1_250)
        );
        assert_eq!(expires_at(1_000, Some(Duration::MAX)), Some(i64::MAX));
    }

    #[tokio::test]
    async fn waiters_are_unregistered_after_wait_returns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = SqliteBackend::open(dir.path().join("r.db"), SqliteOptions::default())
            .await
            .expect("open");
        assert_eq!(
            backend
                .wait("never-stored", Duration::from_millis(10))
                .await
                .expect("wait"),
            None
        );
        let waiter = {
            let backend = backend.clone();
            tokio::spawn(async move { backend.wait("soon", Duration::from_secs(10)).await })
        };
        tokio::time::timeout(Duration::from_secs(5), async {
            while backend.inner.waiters.len() == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the waiter registers");
        let started = Instant::now();
        backend
            .store(&TaskMeta::new("soon", TaskState::Success, json!(1)), None)
            .await
            .expect("store");
        let meta = waiter.await.expect("join").expect("wait").expect("ready");
        assert_eq!(meta.result, json!(1));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(
            backend.inner.waiters.len(),
            0,
            "no waiter entry is left behind"
        );
    }

    #[tokio::test]
    async fn the_meta_column_holds_exactly_the_serialized_meta() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = SqliteBackend::open(dir.path().join("r.db"), SqliteOptions::default())
            .await
            .expect("open");
        let mut meta = TaskMeta::new("exact", TaskState::Success, json!({"b": 1, "a": [2]}));
        meta.parent_id = Some("parent".into());
        backend.store(&meta, None).await.expect("store");
        let stored: String = backend
            .read(|conn| {
                conn.query_row(
                    "SELECT meta FROM backend_results WHERE task_id = 'exact'",
                    [],
                    |row| row.get(0),
                )
                .map_err(BackendError::storage)
            })
            .await
            .expect("read");
        assert_eq!(stored.as_bytes(), serde_json::to_vec(&meta).expect("json"));
    }

    #[tokio::test]
    async fn a_corrupt_row_is_reported_as_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = SqliteBackend::open(dir.path().join("r.db"), SqliteOptions::default())
            .await
            .expect("open");
        backend
            .write(|conn, _| {
                conn.execute(
                    "INSERT INTO backend_results (task_id, status, meta, updated_at, seq) VALUES ('bad', 'SUCCESS', '{not json', 0, 0)",
                    [],
                )
                .map_err(BackendError::storage)
            })
            .await
            .expect("insert");
        assert!(matches!(
            backend.get("bad").await,
            Err(BackendError::Corrupt { task_id, .. }) if task_id == "bad"
        ));
    }
}
