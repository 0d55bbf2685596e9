//! Numbered schema migrations of the broker, recorded in `celeriac_schema`.

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// The component name of the broker's rows in `celeriac_schema`.
pub(super) const COMPONENT: &str = "broker";

/// The broker's migrations, in order: `(version, sql)`. Never edit an applied one; add
/// a new file instead.
pub(super) const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/0001_broker.sql")),
    (2, include_str!("../../migrations/0002_workers.sql")),
    (3, include_str!("../../migrations/0003_broadcasts.sql")),
    (4, include_str!("../../migrations/0004_published.sql")),
];

/// Shared by every celeriac component that stores its schema in the file.
const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS celeriac_schema (
    component TEXT    NOT NULL,
    version   INTEGER NOT NULL,
    PRIMARY KEY (component, version)
)";

/// Applies the migrations not yet recorded for the broker, in one `BEGIN IMMEDIATE`
/// transaction (so processes opening the file at the same time apply each once).
/// Returns the versions applied now.
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
