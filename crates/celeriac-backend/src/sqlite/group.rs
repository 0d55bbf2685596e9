//! Saved groups on SQLite: one `backend_groups` row per group id holding the value
//! Celery's Redis backend would store (`{"result": <GroupResult tuple>}`), with an
//! expiry. Saving again replaces the row; expired rows read as absent and are
//! deleted by [`ResultBackend::cleanup_expired`](crate::ResultBackend::cleanup_expired).

use std::time::Duration;

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{expires_at, now_ms, SqliteBackend};
use crate::{BackendError, SavedGroup};

impl SqliteBackend {
    pub(super) async fn sqlite_save_group(
        &self,
        group: &SavedGroup,
        expires: Option<Duration>,
    ) -> Result<(), BackendError> {
        let id = group.id.clone();
        let saved = String::from_utf8_lossy(&group.to_stored()).into_owned();
        self.write(move |conn, _| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(BackendError::storage)?;
            tx.execute(
                "INSERT INTO backend_groups (group_id, saved, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (group_id) DO UPDATE SET saved = excluded.saved,
                                                      expires_at = excluded.expires_at",
                params![id, saved, expires_at(now_ms(), expires)],
            )
            .map_err(BackendError::storage)?;
            tx.commit().map_err(BackendError::storage)
        })
        .await
    }

    pub(super) async fn sqlite_restore_group(
        &self,
        group_id: &str,
    ) -> Result<Option<SavedGroup>, BackendError> {
        let id = group_id.to_string();
        let saved: Option<String> = self
            .read(move |conn| {
                conn.query_row(
                    "SELECT saved FROM backend_groups
                     WHERE group_id = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
                    params![id, now_ms()],
                    |row| row.get(0),
                )
                .optional()
                .map_err(BackendError::storage)
            })
            .await?;
        saved
            .map(|text| {
                SavedGroup::from_stored(text.as_bytes()).map_err(|reason| BackendError::Corrupt {
                    task_id: group_id.to_string(),
                    reason,
                })
            })
            .transpose()
    }

    pub(super) async fn sqlite_forget_group(&self, group_id: &str) -> Result<(), BackendError> {
        let id = group_id.to_string();
        self.write(move |conn, _| {
            conn.execute("DELETE FROM backend_groups WHERE group_id = ?1", [id])
                .map(drop)
                .map_err(BackendError::storage)
        })
        .await
    }

    /// Deletes expired saved groups; returns how many.
    pub(super) async fn sqlite_group_cleanup(&self) -> Result<u64, BackendError> {
        self.write(|conn, _| {
            conn.execute(
                "DELETE FROM backend_groups WHERE expires_at <= ?1",
                [now_ms()],
            )
            .map(|n| n as u64)
            .map_err(BackendError::storage)
        })
        .await
    }
}
