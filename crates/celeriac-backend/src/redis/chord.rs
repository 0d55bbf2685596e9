//! Chords on Redis with Celery 5.7's keys and algorithm (PROTOCOL.md §3.5), so
//! Python and celeriac workers running header tasks of one chord count together.
//!
//! | key (`K = <prefix>celery-taskset-meta-<gid>`) | what |
//! |---|---|
//! | `K.s` | chord size, set by the client before the header is sent |
//! | `K.j` | sorted set of parts `[1, id, state, result]` scored by `group_index` |
//! | `K.d` | `id:group_index` of every recorded part (a redelivered copy counts once) |
//! | `K.t` | parts added later (`add_to_chord`) |
//! | `K.c` | the dispatch claim token, then `done` for 300 s after dispatch |

use std::sync::LazyLock;
use std::time::Duration;

use ::redis::Script;

use super::{redis_error, RedisBackend, UnexpectedReply};
use crate::chord::{decode_part, encode_part, ChordPart, ChordPartResult, ChordProgress};
use crate::BackendError;

/// Records a part and takes the dispatch claim when it completes the chord.
pub const CHORD_PART_RETURN_SCRIPT: &str = include_str!("chord_part_return.lua");
/// Extends (or retakes) the dispatch claim.
pub const CHORD_EXTEND_CLAIM_SCRIPT: &str = include_str!("chord_extend_claim.lua");
/// Deletes the bookkeeping of a dispatched chord and marks it done.
pub const CHORD_FINISH_SCRIPT: &str = include_str!("chord_finish.lua");

/// The three scripts, hashed once per process rather than on every call.
static PART_RETURN: LazyLock<Script> = LazyLock::new(|| Script::new(CHORD_PART_RETURN_SCRIPT));
static EXTEND_CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(CHORD_EXTEND_CLAIM_SCRIPT));
static FINISH: LazyLock<Script> = LazyLock::new(|| Script::new(CHORD_FINISH_SCRIPT));

/// How long the `done` marker keeps late duplicates from acting (Celery: 300 s).
const DONE_MARKER: Duration = Duration::from_secs(300);

/// The chord's keys.
struct ChordKeys {
    group: String,
}

impl ChordKeys {
    fn new(backend: &RedisBackend, group_id: &str) -> ChordKeys {
        ChordKeys {
            group: backend.keys().group_meta(group_id),
        }
    }

    fn suffixed(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.group)
    }
}

fn whole_seconds(expires: Option<Duration>) -> u64 {
    expires.map(|d| d.as_secs().max(1)).unwrap_or(0)
}

impl RedisBackend {
    pub(super) async fn redis_chord_set_size(
        &self,
        group_id: &str,
        size: u64,
        expires: Option<Duration>,
    ) -> Result<(), BackendError> {
        let keys = ChordKeys::new(self, group_id);
        let mut pipe = ::redis::pipe();
        pipe.atomic().del(keys.suffixed(".c")).ignore();
        match whole_seconds(expires.filter(|d| !d.is_zero())) {
            0 => pipe.set(keys.suffixed(".s"), size).ignore(),
            secs => pipe.set_ex(keys.suffixed(".s"), size, secs).ignore(),
        };
        let pipe = &pipe;
        self.retrying(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
            .await
            .map_err(redis_error)
    }

    pub(super) async fn redis_chord_part_return(
        &self,
        part: &ChordPart,
        expires: Option<Duration>,
        claim_ttl: Duration,
    ) -> Result<ChordProgress, BackendError> {
        let keys = ChordKeys::new(self, &part.group_id);
        let token = uuid::Uuid::new_v4().simple().to_string();
        let score = part
            .group_index
            .map(|i| i.to_string())
            .unwrap_or_else(|| "+inf".into());
        let expires = whole_seconds(expires.filter(|d| !d.is_zero()));
        let mut invocation = PART_RETURN.prepare_invoke();
        invocation
            .key(keys.suffixed(".j"))
            .key(keys.suffixed(".t"))
            .key(keys.suffixed(".s"))
            .key(keys.suffixed(".d"))
            .key(&keys.group)
            .key(keys.suffixed(".c"))
            .arg(&part.task_id)
            .arg(encode_part(part))
            .arg(&score)
            .arg(expires)
            .arg(expires)
            .arg(claim_ttl.as_secs().max(1))
            .arg(&token);
        let invocation = &invocation;
        let (ready, _diff, size, claimed): (i64, Option<i64>, Option<i64>, i64) = self
            .retrying(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
            .map_err(redis_error)?;
        if ready < 0 {
            return Ok(ChordProgress::Done);
        }
        if claimed != 1 {
            if size.is_some_and(|s| ready >= s) {
                // Complete, but another caller holds the claim.
                return Ok(ChordProgress::Done);
            }
            return Ok(ChordProgress::Pending {
                ready: ready as u64,
            });
        }
        let parts_key = keys.suffixed(".j");
        let parts_key = &parts_key;
        let raw: Vec<Vec<u8>> = self
            .retrying(|mut conn| async move {
                ::redis::cmd("ZRANGE")
                    .arg(parts_key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await
            })
            .await
            .map_err(redis_error)?;
        let mut parts = Vec::with_capacity(raw.len());
        for item in &raw {
            let decoded: ChordPartResult = decode_part(item).ok_or_else(|| {
                BackendError::storage(UnexpectedReply(format!(
                    "an unreadable chord part in {parts_key}: {}",
                    String::from_utf8_lossy(item)
                )))
            })?;
            parts.push(decoded);
        }
        Ok(ChordProgress::Complete {
            claim: token,
            parts,
        })
    }

    pub(super) async fn redis_chord_extend_claim(
        &self,
        group_id: &str,
        claim: &str,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let keys = ChordKeys::new(self, group_id);
        let mut invocation = EXTEND_CLAIM.prepare_invoke();
        invocation
            .key(keys.suffixed(".c"))
            .key(keys.suffixed(".s"))
            .arg(claim)
            .arg(ttl.as_secs().max(1));
        let invocation = &invocation;
        let held: i64 = self
            .retrying(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
            .map_err(redis_error)?;
        Ok(held == 1)
    }

    pub(super) async fn redis_chord_finish(
        &self,
        group_id: &str,
        claim: &str,
    ) -> Result<bool, BackendError> {
        let keys = ChordKeys::new(self, group_id);
        let mut invocation = FINISH.prepare_invoke();
        invocation
            .key(keys.suffixed(".c"))
            .key(keys.suffixed(".j"))
            .key(keys.suffixed(".t"))
            .key(keys.suffixed(".s"))
            .key(keys.suffixed(".d"))
            .arg(claim)
            .arg(DONE_MARKER.as_secs());
        let invocation = &invocation;
        let cleaned: i64 = self
            .retrying(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
            .map_err(redis_error)?;
        Ok(cleaned == 1)
    }
}
