//! The statements run against `backend_results` (schema in
//! `migrations/0001_results.sql`). Times are Unix milliseconds; a row is live while
//! `expires_at IS NULL OR expires_at > now`.

/// Writes one meta unless a live SUCCESS is stored (Celery's dedupe guard), in one
/// statement. An expired SUCCESS reads as absent, so it is overwritten. `seq` becomes
/// the newest (run inside a write transaction, so no other writer interleaves).
///
/// Parameters: `?1` task_id, `?2` status, `?3` name, `?4` meta JSON, `?5` date_done,
/// `?6` expires_at, `?7` now. Changes: 1 if written, 0 if a SUCCESS was kept.
pub(crate) const STORE: &str = "
INSERT INTO backend_results (task_id, status, name, meta, date_done, expires_at, updated_at, seq)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, (SELECT COALESCE(MAX(seq), 0) + 1 FROM backend_results))
ON CONFLICT (task_id) DO UPDATE SET
    status = excluded.status,
    name = excluded.name,
    meta = excluded.meta,
    date_done = excluded.date_done,
    expires_at = excluded.expires_at,
    updated_at = excluded.updated_at,
    seq = excluded.seq
WHERE backend_results.status <> 'SUCCESS'
   OR (backend_results.expires_at IS NOT NULL AND backend_results.expires_at <= excluded.updated_at)";

/// The live meta of a task. Parameters: `?1` task_id, `?2` now.
pub(crate) const GET: &str = "
SELECT meta FROM backend_results
WHERE task_id = ?1 AND (expires_at IS NULL OR expires_at > ?2)";

/// The live meta of a task if it is in a ready state (what `wait` looks for).
/// Parameters: `?1` task_id, `?2` now.
pub(crate) const GET_READY: &str = "
SELECT meta FROM backend_results
WHERE task_id = ?1 AND (expires_at IS NULL OR expires_at > ?2)
  AND status IN ('SUCCESS', 'FAILURE', 'REVOKED')";

/// Deletes a result. Parameters: `?1` task_id.
pub(crate) const FORGET: &str = "DELETE FROM backend_results WHERE task_id = ?1";

/// Deletes up to `?2` expired rows (batches keep each write transaction short, so
/// the broker sharing the file is not held up). Parameters: `?1` now, `?2` batch.
pub(crate) const DELETE_EXPIRED: &str = "
DELETE FROM backend_results WHERE rowid IN (
    SELECT rowid FROM backend_results
    WHERE expires_at IS NOT NULL AND expires_at <= ?1
    LIMIT ?2
)";

/// Newest live results in one state. Parameters: `?1` status, `?2` now, `?3` limit.
pub(crate) const RECENT_IN_STATE: &str = "
SELECT task_id, meta FROM backend_results
WHERE status = ?1 AND (expires_at IS NULL OR expires_at > ?2)
ORDER BY seq DESC
LIMIT ?3";

/// Newest live results in any state. Parameters: `?1` now, `?2` limit.
pub(crate) const RECENT: &str = "
SELECT task_id, meta FROM backend_results
WHERE expires_at IS NULL OR expires_at > ?1
ORDER BY seq DESC
LIMIT ?2";

/// Live results per state. Parameters: `?1` now.
pub(crate) const COUNT_BY_STATE: &str = "
SELECT status, COUNT(*) FROM backend_results
WHERE expires_at IS NULL OR expires_at > ?1
GROUP BY status
ORDER BY status";
