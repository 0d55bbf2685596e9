//! Numbered schema migrations of the schedule store, recorded in `celeriac_schema`.

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// The component name of the schedule store's rows in `celeriac_schema`.
pub(super) const COMPONENT: &str = "beat";

/// The schedule store's migrations, in order: `(version, sql)`. Never edit an applied
/// one; add a new file instead.
pub(super) const MIGRATIONS: &[(i64, &str)] =
    &[(1, include_str!("../../migrations/0001_beat.sql"))];

/// Shared by every celeriac component that stores its schema in the file.
const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS celeriac_schema (
    component TEXT    NOT NULL,
    version   INTEGER NOT NULL,
    PRIMARY KEY (component, version)
)";

/// Applies the migrations not yet recorded for the schedule store, in one
/// `BEGIN IMMEDIATE` transaction (so processes opening the file at the same time apply
/// each once). Returns the versions applied now.
pub(super) fn migrate(conn: &mut Connection) -> Result<Vec<i64>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA_TABLE)?;
    let applied: Vec<i64> = {
        let mut stmt = tx.prepare("SELECT version FROM celeriac_schema WHERE component = ?1")?;
        let rows = stmt.query_map([COMPONENT], |row| row.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let known = MIGRATIONS.last().map_or(0, |(version, _)| *version);
    if let Some(&found) = applied.iter().max() {
        if found > known {
            return Err(StoreError::SchemaTooNew { found, known });
        }
    }
    let mut now_applied = Vec::new();
    for &(version, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO celeriac_schema (component, version) VALUES (?1, ?2)",
            rusqlite::params![COMPONENT, version],
        )?;
        now_applied.push(version);
    }
    tx.commit()?;
    Ok(now_applied)
}

#[cfg(test)]
mod tests {
    use super::*;

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
