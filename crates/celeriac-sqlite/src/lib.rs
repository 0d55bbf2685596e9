//! SQLite plumbing shared by celeriac's embedded stores (schedule store, lock store).
//!
//! # Layout
//!
//! - [`open_connection`]: one connection with the settings every store uses (WAL,
//!   `synchronous=NORMAL`, a busy timeout).
//! - [`open_migrated`]: a connection with the component's migrations applied, retried
//!   while another process is creating the same file.
//! - [`migrate`]: applies a component's numbered migrations, recorded in the
//!   `celeriac_schema(component, version)` table that every component sharing the file
//!   uses, in one `BEGIN IMMEDIATE` transaction so processes opening the file at the
//!   same time apply each migration once.
//! - [`SharedConnection`]: a store's connection to its file, opened with
//!   [`open_migrated`] and running each operation as one `BEGIN IMMEDIATE`
//!   transaction on tokio's blocking pool; [`url_path`] and [`file_path`] check the
//!   `sqlite://PATH` a store is given.
//! - `testing` (feature `testing`): a file in a temporary directory and the checks
//!   every component's migrations pass.

mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use store::{file_path, url_path, BoxedError, OpenError, PathError, Schema, SharedConnection};

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

/// The ledger of applied migrations, shared by every component of the file.
pub const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS celeriac_schema (
    component TEXT    NOT NULL,
    version   INTEGER NOT NULL,
    PRIMARY KEY (component, version)
)";

/// Why migrating failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// SQLite reported an error.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The file was migrated by a newer celeriac than this one.
    #[error("the {component} schema in this file is version {found}, newer than this celeriac knows ({known}); upgrade celeriac")]
    SchemaTooNew {
        /// The component.
        component: &'static str,
        /// Highest version recorded in `celeriac_schema`.
        found: i64,
        /// Highest version this build knows.
        known: i64,
    },
}

impl MigrateError {
    /// Converts into a store's own error: [`MigrateError::SchemaTooNew`] by
    /// `too_new(found, known)`, a SQLite error by `From`.
    pub fn into_store_error<E: From<rusqlite::Error>>(
        self,
        too_new: impl FnOnce(i64, i64) -> E,
    ) -> E {
        match self {
            MigrateError::SchemaTooNew { found, known, .. } => too_new(found, known),
            MigrateError::Sqlite(error) => E::from(error),
        }
    }
}

/// Opens one connection to `path` (creating the file) in WAL mode with
/// `synchronous=NORMAL` and `busy_timeout`.
pub fn open_connection(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(busy_timeout)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), %mode, "SQLite refused WAL mode; writers will block readers");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.set_prepared_statement_cache_capacity(16);
    Ok(conn)
}

/// Opens `path` with [`open_connection`] and applies `component`'s migrations. Two
/// processes creating a new file at once can get `SQLITE_BUSY` while one switches it
/// to WAL (that step does not wait on the busy timeout), so the whole open is retried
/// until `busy_timeout` has passed.
pub fn open_migrated(
    path: &Path,
    busy_timeout: Duration,
    component: &'static str,
    migrations: &[(i64, &str)],
) -> Result<Connection, MigrateError> {
    let deadline = Instant::now() + busy_timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        let attempt = open_connection(path, busy_timeout)
            .map_err(MigrateError::from)
            .and_then(|mut conn| {
                let applied = migrate(&mut conn, component, migrations)?;
                if !applied.is_empty() {
                    tracing::info!(path = %path.display(), component, versions = ?applied, "applied migrations");
                }
                Ok(conn)
            });
        match attempt {
            Err(MigrateError::Sqlite(error))
                if error.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// Applies `migrations` (`(version, sql)`, numbered from 1, never edited once applied)
/// not yet recorded for `component`, leaving other components' rows alone. Returns
/// the versions applied now.
pub fn migrate(
    conn: &mut Connection,
    component: &'static str,
    migrations: &[(i64, &str)],
) -> Result<Vec<i64>, MigrateError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA_TABLE)?;
    let applied: Vec<i64> = {
        let mut stmt = tx.prepare("SELECT version FROM celeriac_schema WHERE component = ?1")?;
        let rows = stmt.query_map([component], |row| row.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let known = migrations.last().map_or(0, |(version, _)| *version);
    if let Some(&found) = applied.iter().max() {
        if found > known {
            return Err(MigrateError::SchemaTooNew {
                component,
                found,
                known,
            });
        }
    }
    let mut now_applied = Vec::new();
    for &(version, sql) in migrations {
        if applied.contains(&version) {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO celeriac_schema (component, version) VALUES (?1, ?2)",
            rusqlite::params![component, version],
        )?;
        now_applied.push(version);
    }
    tx.commit()?;
    Ok(now_applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: &[(i64, &str)] = &[
        (1, "CREATE TABLE demo_a (x INTEGER)"),
        (2, "CREATE TABLE demo_b (y INTEGER)"),
    ];

    #[test]
    fn applies_once_and_leaves_other_components_alone() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(SCHEMA_TABLE).expect("ledger");
        conn.execute("INSERT INTO celeriac_schema VALUES ('broker', 2)", [])
            .expect("other component");
        assert_eq!(
            migrate(&mut conn, "demo", STEPS).expect("first"),
            vec![1, 2]
        );
        assert!(migrate(&mut conn, "demo", STEPS)
            .expect("second")
            .is_empty());
        let rows: Vec<(String, i64)> = conn
            .prepare("SELECT component, version FROM celeriac_schema ORDER BY component, version")
            .expect("prepare")
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            rows,
            vec![("broker".into(), 2), ("demo".into(), 1), ("demo".into(), 2)]
        );
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(SCHEMA_TABLE).expect("ledger");
        conn.execute("INSERT INTO celeriac_schema VALUES ('demo', 99)", [])
            .expect("row");
        let error = migrate(&mut conn, "demo", STEPS).expect_err("refused");
        assert!(matches!(
            error,
            MigrateError::SchemaTooNew {
                found: 99,
                known: 2,
                ..
            }
        ));
        assert!(error.to_string().contains("upgrade celeriac"));
    }
}
