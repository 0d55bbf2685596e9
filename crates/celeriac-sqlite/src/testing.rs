//! Test helpers of the stores built on this crate (feature `testing`): a database
//! file in a temporary directory and the checks every component's migrations pass.

use std::path::PathBuf;

use rusqlite::Connection;

use crate::{migrate, SCHEMA_TABLE};

/// A database file (not created yet) in a temporary directory, deleted on drop.
#[derive(Debug)]
pub struct TempDatabase {
    dir: tempfile::TempDir,
    name: &'static str,
}

impl TempDatabase {
    /// A file called `name` in a new temporary directory. Panics if no temporary
    /// directory can be made.
    pub fn new(name: &'static str) -> TempDatabase {
        TempDatabase {
            dir: tempfile::tempdir().expect("a temporary directory for the SQLite harness"),
            name,
        }
    }

    /// The database file.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join(self.name)
    }
}

/// Checks `migrations` of `component`: numbered from 1, applied once, and leaving
/// another component's rows of `celeriac_schema` alone. Panics when one fails.
pub fn check_migrations(component: &'static str, migrations: &[(i64, &str)]) {
    for (index, (version, _)) in migrations.iter().enumerate() {
        assert_eq!(
            *version,
            index as i64 + 1,
            "{component} migrations are numbered from 1"
        );
    }
    let mut conn = Connection::open_in_memory().expect("open");
    conn.execute_batch(SCHEMA_TABLE).expect("ledger");
    conn.execute(
        "INSERT INTO celeriac_schema (component, version) VALUES ('other component', 2)",
        [],
    )
    .expect("other component's row");
    let all: Vec<i64> = migrations.iter().map(|(version, _)| *version).collect();
    assert_eq!(
        migrate(&mut conn, component, migrations).expect("first"),
        all
    );
    assert!(migrate(&mut conn, component, migrations)
        .expect("second")
        .is_empty());
    let count = |component: &str| -> i64 {
        let sql = "SELECT COUNT(*) FROM celeriac_schema WHERE component = ?1";
        conn.query_row(sql, [component], |row| row.get(0))
            .expect("count")
    };
    assert_eq!(count(component), all.len() as i64);
    assert_eq!(
        count("other component"),
        1,
        "the other component's row is kept"
    );
}

/// A connection whose `celeriac_schema` records `component` at version 99, newer
/// than any celeriac knows, for checking that a store refuses it.
pub fn newer_schema(component: &'static str) -> Connection {
    let conn = Connection::open_in_memory().expect("open");
    conn.execute_batch(SCHEMA_TABLE).expect("ledger");
    conn.execute(
        "INSERT INTO celeriac_schema (component, version) VALUES (?1, 99)",
        [component],
    )
    .expect("row");
    conn
}
