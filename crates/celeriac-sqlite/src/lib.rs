//! SQLite plumbing shared by celeriac's embedded stores (schedule store, lock store).
//!
//! # Layout
//!
//! - [`migrate`]: applies a component's numbered migrations, recorded in the
//!   `celeriac_schema(component, version)` table that every component sharing the file
//!   uses, in one `BEGIN IMMEDIATE` transaction so processes opening the file at the
//!   same time apply each migration once.

use rusqlite::{Connection, TransactionBehavior};

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
