//! Numbered schema migrations of the schedule store, recorded in `celeriac_schema`.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::StoreError;

/// The component name of the schedule store's rows in `celeriac_schema`.
pub(super) const COMPONENT: &str = "beat";

/// The schedule store's migrations, in order: `(version, sql)`. Never edit an applied
/// one; add a new file instead.
pub(super) const MIGRATIONS: &[(i64, &str)] =
    &[(1, include_str!("../../migrations/0001_beat.sql"))];

use celeriac_sqlite::MigrateError;

/// Applies the migrations not yet recorded for this component (see
/// [`celeriac_sqlite::migrate`]). Returns the versions applied now.
#[cfg(test)]
pub(super) fn migrate(conn: &mut Connection) -> Result<Vec<i64>, StoreError> {
    celeriac_sqlite::migrate(conn, COMPONENT, MIGRATIONS).map_err(store_error)
}

/// Opens the file with this component's migrations applied (see
/// [`celeriac_sqlite::open_migrated`]).
pub(super) fn open(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    celeriac_sqlite::open_migrated(path, busy_timeout, COMPONENT, MIGRATIONS).map_err(store_error)
}

fn store_error(error: MigrateError) -> StoreError {
    match error {
        MigrateError::SchemaTooNew { found, known, .. } => {
            StoreError::SchemaTooNew { found, known }
        }
        MigrateError::Sqlite(error) => StoreError::Sqlite(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac_sqlite::SCHEMA_TABLE;

    #[test]
    fn migrations_are_numbered_from_one_and_leave_other_components_alone() {
        for (index, (version, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version, index as i64 + 1);
        }
        let mut conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(SCHEMA_TABLE).expect("ledger");
        conn.execute(
            "INSERT INTO celeriac_schema (component, version) VALUES ('broker', 2)",
            [],
        )
        .expect("broker row");
        assert_eq!(migrate(&mut conn).expect("first"), vec![1]);
        assert!(migrate(&mut conn).expect("second").is_empty());
        let rows: Vec<(String, i64)> = conn
            .prepare("SELECT component, version FROM celeriac_schema ORDER BY component")
            .expect("prepare")
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(rows, vec![("beat".into(), 1), ("broker".into(), 2)]);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(SCHEMA_TABLE).expect("ledger");
        conn.execute(
            "INSERT INTO celeriac_schema (component, version) VALUES ('beat', 99)",
            [],
        )
        .expect("row");
        assert!(matches!(
            migrate(&mut conn),
            Err(StoreError::SchemaTooNew { found: 99, .. })
        ));
    }
}
