//! Numbered migrations of the result tables, recorded in `celeriac_schema`.
//!
//! `celeriac_schema(component, version)` is shared by every celeriac component that
//! keeps tables in the file (the SQLite broker records itself as `'broker'`); this
//! module only reads and writes rows of component `'backend'`. All pending migrations
//! run in one `BEGIN IMMEDIATE` transaction, so two processes opening a new file at
//! once apply each migration exactly once.

use rusqlite::{params, Connection, TransactionBehavior};

/// This component's name in `celeriac_schema`.
pub(crate) const COMPONENT: &str = "backend";

/// One schema change, applied once per database file.
struct Migration {
    version: i64,
    sql: &'static str,
}

/// Every migration, in version order.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: include_str!("../../migrations/0001_results.sql"),
    },
    Migration {
        version: 2,
        sql: include_str!("../../migrations/0002_chords.sql"),
    },
    Migration {
        version: 3,
        sql: include_str!("../../migrations/0003_groups.sql"),
    },
];

/// The shared migration ledger; created by whichever component opens the file first.
const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS celeriac_schema (
    component TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (component, version)
)";

/// The schema version this build writes.
pub(crate) fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Applies the migrations the file does not have yet; returns how many ran.
pub(crate) fn migrate(conn: &mut Connection) -> rusqlite::Result<usize> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA_TABLE)?;
    let current: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM celeriac_schema WHERE component = ?1",
        [COMPONENT],
        |row| row.get(0),
    )?;
    if current > latest_version() {
        tracing::warn!(
            current,
            known = latest_version(),
            "the result tables were migrated by a newer celeriac; continuing with the known schema"
        );
    }
    let mut applied = 0;
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.execute_batch(migration.sql)?;
        tx.execute(
            "INSERT INTO celeriac_schema (component, version) VALUES (?1, ?2)",
            params![COMPONENT, migration.version],
        )?;
        applied += 1;
    }
    tx.commit()?;
    if applied > 0 {
        tracing::debug!(
            applied,
            version = latest_version(),
            "migrated the result tables"
        );
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_without_gaps() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, index as i64 + 1);
        }
    }

    #[test]
    fn migrating_twice_applies_once_and_leaves_other_components_alone() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(SCHEMA_TABLE).expect("ledger");
        conn.execute(
            "INSERT INTO celeriac_schema (component, version) VALUES ('broker', 7)",
            [],
        )
        .expect("broker row");
        assert_eq!(migrate(&mut conn).expect("first"), MIGRATIONS.len());
        assert_eq!(migrate(&mut conn).expect("second"), 0);
        let versions: Vec<(String, i64)> = conn
            .prepare("SELECT component, version FROM celeriac_schema ORDER BY component, version")
            .expect("prepare")
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            versions,
            vec![
                ("backend".to_string(), 1),
                ("backend".to_string(), 2),
                ("backend".to_string(), 3),
                ("broker".to_string(), 7)
            ]
        );
    }
}
