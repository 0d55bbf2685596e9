//! Chords in the SQLite file (`backend_chords`, `backend_chord_parts`, see
//! `migrations/0002_chords.sql`): the same semantics as the Redis keys, each
//! operation one `BEGIN IMMEDIATE` transaction.

use std::time::Duration;

use celeriac_core::TaskState;
use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{expires_at, now_ms, SqliteBackend};
use crate::chord::{ChordPart, ChordPartResult, ChordProgress};
use crate::BackendError;

/// The `claim` value of a dispatched chord.
const DONE: &str = "done";

/// How long the done marker keeps late duplicates from acting (as on Redis).
const DONE_MARKER: Duration = Duration::from_secs(300);

/// `size, claim, claim_expires_at, expires_at` of a `backend_chords` row.
type ChordRow = (Option<i64>, Option<String>, Option<i64>, Option<i64>);

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl SqliteBackend {
    pub(super) async fn sqlite_chord_set_size(
        &self,
        group_id: &str,
        size: u64,
        expires: Option<Duration>,
    ) -> Result<(), BackendError> {
        let group_id = group_id.to_owned();
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        self.write(move |conn, _| {
            let now = now_ms();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(BackendError::storage)?;
            tx.execute(
                "DELETE FROM backend_chord_parts WHERE group_id = ?1",
                [&group_id],
            )
            .map_err(BackendError::storage)?;
            tx.execute(
                "INSERT INTO backend_chords (group_id, size, claim, claim_expires_at, expires_at)
                 VALUES (?1, ?2, NULL, NULL, ?3)
                 ON CONFLICT (group_id) DO UPDATE SET size = excluded.size, claim = NULL,
                   claim_expires_at = NULL, expires_at = excluded.expires_at",
                params![group_id, size, expires_at(now, expires)],
            )
            .map_err(BackendError::storage)?;
            tx.commit().map_err(BackendError::storage)
        })
        .await
    }

    pub(super) async fn sqlite_chord_part_return(
        &self,
        part: &ChordPart,
        expires: Option<Duration>,
        claim_ttl: Duration,
    ) -> Result<ChordProgress, BackendError> {
        let part = part.clone();
        let result = serde_json::to_string(&part.result).map_err(BackendError::storage)?;
        self.write(move |conn, _| {
            let now = now_ms();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(BackendError::storage)?;
            let chord: Option<ChordRow> = tx
                .query_row(
                    "SELECT size, claim, claim_expires_at, expires_at FROM backend_chords
                     WHERE group_id = ?1",
                    [&part.group_id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                )
                .optional()
                .map_err(BackendError::storage)?;
            let chord = chord.filter(|(_, _, _, expiry)| expiry.is_none_or(|at| at > now));
            let claim_live = |claim_expiry: Option<i64>| claim_expiry.is_some_and(|at| at > now);
            if let Some((_, Some(claim), claim_expiry, _)) = &chord {
                if claim == DONE && claim_live(*claim_expiry) {
                    return Ok(ChordProgress::Done);
                }
            }
            let member = match part.group_index {
                Some(index) => format!("{}:{index}", part.task_id),
                None => format!("{}:+inf", part.task_id),
            };
            tx.execute(
                "INSERT INTO backend_chord_parts (group_id, member, position, task_id, state, result)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                params![
                    part.group_id,
                    member,
                    part.group_index,
                    part.task_id,
                    part.state.as_str(),
                    result
                ],
            )
            .map_err(BackendError::storage)?;
            let ready: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM backend_chord_parts WHERE group_id = ?1",
                    [&part.group_id],
                    |row| row.get(0),
                )
                .map_err(BackendError::storage)?;
            let size = chord.as_ref().and_then(|(size, ..)| *size);
            // Every part refreshes the chord's expiry, as on Redis.
            tx.execute(
                "INSERT INTO backend_chords (group_id, expires_at) VALUES (?1, ?2)
                 ON CONFLICT (group_id) DO UPDATE SET expires_at = excluded.expires_at",
                params![part.group_id, expires_at(now, expires)],
            )
            .map_err(BackendError::storage)?;
            let complete = size.is_some_and(|size| ready == size);
            let free = match &chord {
                Some((_, Some(_), claim_expiry, _)) => !claim_live(*claim_expiry),
                _ => true,
            };
            if !complete || !free {
                tx.commit().map_err(BackendError::storage)?;
                return Ok(if complete {
                    ChordProgress::Done
                } else {
                    ChordProgress::Pending {
                        ready: ready as u64,
                    }
                });
            }
            let token = uuid::Uuid::new_v4().simple().to_string();
            tx.execute(
                "UPDATE backend_chords SET claim = ?2, claim_expires_at = ?3 WHERE group_id = ?1",
                params![part.group_id, token, now + millis(claim_ttl)],
            )
            .map_err(BackendError::storage)?;
            let parts = {
                let mut statement = tx
                    .prepare(
                        "SELECT task_id, state, result FROM backend_chord_parts WHERE group_id = ?1
                         ORDER BY position IS NULL, position, member",
                    )
                    .map_err(BackendError::storage)?;
                let rows = statement
                    .query_map([&part.group_id], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, String>(2)?,
                        ))
                    })
                    .map_err(BackendError::storage)?;
                let mut parts = Vec::new();
                for row in rows {
                    let (task_id, state, raw) = row.map_err(BackendError::storage)?;
                    let result = serde_json::from_str(&raw).map_err(|e| BackendError::Corrupt {
                        task_id: task_id.clone(),
                        reason: format!("unreadable chord part: {e}"),
                    })?;
                    parts.push(ChordPartResult {
                        task_id,
                        state: TaskState::parse(&state),
                        result,
                    });
                }
                parts
            };
            tx.commit().map_err(BackendError::storage)?;
            Ok(ChordProgress::Complete {
                claim: token,
                parts,
            })
        })
        .await
    }

    pub(super) async fn sqlite_chord_extend_claim(
        &self,
        group_id: &str,
        claim: &str,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let (group_id, claim) = (group_id.to_owned(), claim.to_owned());
        self.write(move |conn, _| {
            let now = now_ms();
            let changed = conn
                .execute(
                    "UPDATE backend_chords SET claim = ?2, claim_expires_at = ?3
                     WHERE group_id = ?1 AND size IS NOT NULL
                       AND (claim = ?2 OR claim IS NULL OR (claim <> 'done' AND claim_expires_at <= ?4))",
                    params![group_id, claim, now + millis(ttl), now],
                )
                .map_err(BackendError::storage)?;
            Ok(changed == 1)
        })
        .await
    }

    pub(super) async fn sqlite_chord_finish(
        &self,
        group_id: &str,
        claim: &str,
    ) -> Result<bool, BackendError> {
        let (group_id, claim) = (group_id.to_owned(), claim.to_owned());
        self.write(move |conn, _| {
            let now = now_ms();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(BackendError::storage)?;
            let changed = tx
                .execute(
                    "UPDATE backend_chords SET size = NULL, claim = ?3, claim_expires_at = ?4,
                       expires_at = ?4
                     WHERE group_id = ?1 AND claim = ?2",
                    params![group_id, claim, DONE, now + millis(DONE_MARKER)],
                )
                .map_err(BackendError::storage)?;
            if changed == 1 {
                tx.execute(
                    "DELETE FROM backend_chord_parts WHERE group_id = ?1",
                    [&group_id],
                )
                .map_err(BackendError::storage)?;
            }
            tx.commit().map_err(BackendError::storage)?;
            Ok(changed == 1)
        })
        .await
    }

    /// Deletes expired chords and their parts; returns how many chords.
    pub(super) async fn sqlite_chord_cleanup(&self) -> Result<u64, BackendError> {
        self.write(|conn, _| {
            let now = now_ms();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(BackendError::storage)?;
            tx.execute(
                "DELETE FROM backend_chord_parts WHERE group_id IN
                   (SELECT group_id FROM backend_chords WHERE expires_at <= ?1)",
                [now],
            )
            .map_err(BackendError::storage)?;
            let deleted = tx
                .execute("DELETE FROM backend_chords WHERE expires_at <= ?1", [now])
                .map_err(BackendError::storage)?;
            tx.commit().map_err(BackendError::storage)?;
            Ok(deleted as u64)
        })
        .await
    }
}
