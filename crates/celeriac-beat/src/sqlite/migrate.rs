//! Numbered schema migrations of the schedule store, recorded in `celeriac_schema`.

#[cfg(test)]
use rusqlite::Connection;

use celeriac_sqlite::{MigrateError, Schema};

use super::StoreError;

/// The schedule store's rows in `celeriac_schema` (component `"beat"`) and its
/// migrations, in order. Never edit an applied migration; add a new file instead.
pub(super) const SCHEMA: Schema = Schema {
    store: "schedule store",
    component: "beat",
    migrations: &[(1, include_str!("../../migrations/0001_beat.sql"))],
};

/// Applies the migrations not yet recorded for this component (see
/// [`celeriac_sqlite::migrate`]). Returns the versions applied now.
#[cfg(test)]
pub(super) fn migrate(conn: &mut Connection) -> Result<Vec<i64>, StoreError> {
    celeriac_sqlite::migrate(conn, SCHEMA.component, SCHEMA.migrations).map_err(store_error)
}

/// The schedule store's error for a failed migration.
pub(super) fn store_error(error: MigrateError) -> StoreError {
    error.into_store_error(|found, known| StoreError::SchemaTooNew { found, known })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_and_leave_other_components_alone() {
        celeriac_sqlite::testing::check_migrations(SCHEMA.component, SCHEMA.migrations);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let mut conn = celeriac_sqlite::testing::newer_schema(SCHEMA.component);
        assert!(matches!(
            migrate(&mut conn),
            Err(StoreError::SchemaTooNew { found: 99, .. })
        ));
    }
}
