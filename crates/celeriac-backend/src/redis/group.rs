//! Saved groups on Redis, as Celery's Redis backend writes them: `GroupResult.save()`
//! is `MULTI; SETEX <prefix>celery-taskset-meta-<gid> <ttl> <value>; PUBLISH <same
//! key> <value>; EXEC` (`SET` without expiry when `result_expires` is 0), the value
//! being `{"result": <GroupResult tuple>}` ([`SavedGroup::to_stored`]). One
//! transaction, no read: no script needed. Restore is `GET`, forget is `DEL`.

use std::time::Duration;

use super::{redis_error, ttl_ms, RedisBackend};
use crate::{BackendError, SavedGroup};

impl RedisBackend {
    pub(super) async fn redis_save_group(
        &self,
        group: &SavedGroup,
        expires: Option<Duration>,
    ) -> Result<(), BackendError> {
        let key = self.keys().group_meta(&group.id);
        let value = group.to_stored();
        let ttl = ttl_ms(expires);
        let (key, value) = (key.as_str(), value.as_slice());
        self.retrying(|mut conn| async move {
            let mut pipe = ::redis::pipe();
            pipe.atomic();
            if ttl == 0 {
                pipe.set(key, value).ignore();
            } else if ttl.is_multiple_of(1000) {
                pipe.cmd("SETEX")
                    .arg(key)
                    .arg(ttl / 1000)
                    .arg(value)
                    .ignore();
            } else {
                pipe.cmd("PSETEX").arg(key).arg(ttl).arg(value).ignore();
            }
            pipe.publish(key, value).ignore();
            pipe.query_async::<()>(&mut conn).await
        })
        .await
        .map_err(redis_error)
    }

    pub(super) async fn redis_restore_group(
        &self,
        group_id: &str,
    ) -> Result<Option<SavedGroup>, BackendError> {
        let key = self.keys().group_meta(group_id);
        let key = key.as_str();
        let stored: Option<Vec<u8>> = self
            .retrying(|mut conn| async move {
                ::redis::cmd("GET").arg(key).query_async(&mut conn).await
            })
            .await
            .map_err(redis_error)?;
        stored
            .map(|bytes| {
                SavedGroup::from_stored(&bytes).map_err(|reason| BackendError::Corrupt {
                    task_id: group_id.to_string(),
                    reason: format!("{key}: {reason}"),
                })
            })
            .transpose()
    }

    pub(super) async fn redis_forget_group(&self, group_id: &str) -> Result<(), BackendError> {
        let key = self.keys().group_meta(group_id);
        let key = key.as_str();
        self.retrying(|mut conn| async move {
            ::redis::cmd("DEL")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(drop)
        .map_err(redis_error)
    }
}
