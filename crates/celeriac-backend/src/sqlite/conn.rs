//! Connections: how each one is opened, the pool of readers, and the change detector
//! that tells waiters when another connection (or process) wrote to the file.
//!
//! Everything here is blocking and runs on tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};

use super::SqliteOptions;
use crate::BackendError;

/// Statements cached per connection (there are about ten distinct ones).
const STATEMENT_CACHE: usize = 32;

/// Opens a connection with the per-connection settings: busy timeout,
/// `synchronous=NORMAL` (durable across process crashes in WAL mode; the last
/// commits may be lost on power failure) and a statement cache.
pub(crate) fn open_connection(
    path: &Path,
    options: &SqliteOptions,
) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(options.busy_timeout)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Switches the file to WAL mode (persistent: it stays in WAL for every later
/// connection, the broker's too). Returns the journal mode in effect.
pub(crate) fn enable_wal(conn: &Connection) -> rusqlite::Result<String> {
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
}

/// Idle read connections, reused across operations. WAL lets them read while the
/// writer writes.
#[derive(Debug)]
pub(crate) struct Readers {
    path: PathBuf,
    options: SqliteOptions,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    pub(crate) fn new(path: PathBuf, options: SqliteOptions) -> Readers {
        Readers {
            path,
            options,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on an idle connection (opening one if none is idle) and keeps the
    /// connection for reuse unless enough are idle already.
    pub(crate) fn with<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, BackendError>,
    ) -> Result<R, BackendError> {
        let pooled = self.idle.lock().pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => open_connection(&self.path, &self.options).map_err(BackendError::storage)?,
        };
        let result = f(&conn);
        let mut idle = self.idle.lock();
        if idle.len() < self.options.max_idle_readers {
            idle.push(conn);
        }
        result
    }
}

/// Detects commits by other connections with `PRAGMA data_version`, which changes
/// on a connection whenever *another* connection (in any process) committed to the
/// file. Its own connection never writes, so every commit counts.
///
/// Each detected change bumps an epoch. Waiters remember the epoch they last read
/// their row at and read it again only when the epoch moved, so a quiet file costs
/// one cheap pragma per poll instead of one query per waiter. Checks within
/// [`COALESCE`] of each other share one pragma.
#[derive(Debug)]
pub(crate) struct ChangeDetector {
    path: PathBuf,
    options: SqliteOptions,
    conn: Mutex<Option<Connection>>,
    state: Mutex<DetectorState>,
}

/// How long a `data_version` reading is reused by other waiters.
const COALESCE: Duration = Duration::from_millis(1);

#[derive(Debug, Default)]
struct DetectorState {
    epoch: u64,
    data_version: Option<i64>,
    checked_at: Option<Instant>,
}

impl DetectorState {
    fn fresh_epoch(&self) -> Option<u64> {
        self.checked_at
            .filter(|at| at.elapsed() < COALESCE)
            .map(|_| self.epoch)
    }
}

impl ChangeDetector {
    pub(crate) fn new(path: PathBuf, options: SqliteOptions) -> ChangeDetector {
        ChangeDetector {
            path,
            options,
            conn: Mutex::new(None),
            state: Mutex::new(DetectorState::default()),
        }
    }

    /// The epoch of a reading taken within the last millisecond, without I/O.
    pub(crate) fn fresh_epoch(&self) -> Option<u64> {
        self.state.lock().fresh_epoch()
    }

    /// Reads `data_version` (unless a reading is fresh) and returns the epoch.
    pub(crate) fn check(&self) -> rusqlite::Result<u64> {
        if let Some(epoch) = self.fresh_epoch() {
            return Ok(epoch);
        }
        let mut conn = self.conn.lock();
        // Another waiter may have read it while this one waited for the connection.
        if let Some(epoch) = self.fresh_epoch() {
            return Ok(epoch);
        }
        let conn = match conn.as_mut() {
            Some(conn) => conn,
            None => conn.insert(open_connection(&self.path, &self.options)?),
        };
        let version: i64 = conn.query_row("PRAGMA data_version", [], |row| row.get(0))?;
        let mut state = self.state.lock();
        if state.data_version != Some(version) {
            if state.data_version.is_some() {
                state.epoch += 1;
            }
            state.data_version = Some(version);
        }
        state.checked_at = Some(Instant::now());
        Ok(state.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_by_other_connections_move_the_epoch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("detector.db");
        let options = SqliteOptions::default();
        let writer = open_connection(&path, &options).expect("writer");
        enable_wal(&writer).expect("wal");
        writer
            .execute_batch("CREATE TABLE t (x INTEGER)")
            .expect("table");

        let detector = ChangeDetector::new(path, options);
        let first = detector.check().expect("check");
        std::thread::sleep(COALESCE * 2);
        assert_eq!(
            detector.check().expect("check"),
            first,
            "nothing was written"
        );

        writer
            .execute("INSERT INTO t VALUES (1)", [])
            .expect("insert");
        std::thread::sleep(COALESCE * 2);
        assert_eq!(detector.check().expect("check"), first + 1);
    }
}
