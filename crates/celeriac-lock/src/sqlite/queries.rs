//! The statements run against `lock_locks` and `lock_fencing` (schema in
//! `migrations/0001_locks.sql`). Times are Unix milliseconds; a lock is live while
//! `expires_at > now`. Each runs inside a `BEGIN IMMEDIATE` transaction.

/// Whether a live lock holds a key. Parameters: `?1` key, `?2` now.
pub(crate) const LIVE_HOLDER: &str = "SELECT 1 FROM lock_locks WHERE key = ?1 AND expires_at > ?2";

/// Deletes up to `?2` lapsed locks of any key. Parameters: `?1` now, `?2` batch.
pub(crate) const DELETE_LAPSED: &str = "
DELETE FROM lock_locks WHERE key IN (
    SELECT key FROM lock_locks WHERE expires_at <= ?1 LIMIT ?2
)";

/// Deletes the lapsed lock of one key, if any. Parameters: `?1` key, `?2` now.
pub(crate) const DELETE_LAPSED_KEY: &str =
    "DELETE FROM lock_locks WHERE key = ?1 AND expires_at <= ?2";

/// Takes the next fencing number. Returns it.
pub(crate) const NEXT_FENCING: &str =
    "UPDATE lock_fencing SET last = last + 1 WHERE id = 1 RETURNING last";

/// Records a new holder (the key is free: checked in the same transaction).
/// Parameters: `?1` key, `?2` token, `?3` owner, `?4` fencing, `?5` now,
/// `?6` expires_at.
pub(crate) const INSERT: &str = "
INSERT INTO lock_locks (key, token, owner, fencing, acquired_at, expires_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// Extends a live lock held with this token. Parameters: `?1` key, `?2` token,
/// `?3` now, `?4` new expires_at. Changes: 1 if renewed.
pub(crate) const RENEW: &str = "
UPDATE lock_locks SET expires_at = ?4
WHERE key = ?1 AND token = ?2 AND expires_at > ?3";

/// Deletes the lock held with this token (a lapsed one too: it is free anyway).
/// Parameters: `?1` key, `?2` token. Returns the deleted row's `expires_at`.
pub(crate) const RELEASE: &str =
    "DELETE FROM lock_locks WHERE key = ?1 AND token = ?2 RETURNING expires_at";

/// Deletes the lock on a key whoever holds it. Parameters: `?1` key. Returns the
/// deleted row's `expires_at`.
pub(crate) const FORCE_RELEASE: &str = "DELETE FROM lock_locks WHERE key = ?1 RETURNING expires_at";

/// Every live lock by key. Parameters: `?1` now.
pub(crate) const LIST: &str = "
SELECT key, owner, fencing, acquired_at, expires_at FROM lock_locks
WHERE expires_at > ?1
ORDER BY key";
