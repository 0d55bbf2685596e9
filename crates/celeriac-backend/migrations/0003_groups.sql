-- celeriac result backend, schema version 3: saved groups (Celery's
-- `GroupResult.save()`, the value of the Redis backend's `celery-taskset-meta-<gid>`).
--
-- `saved` is `{"result": <GroupResult tuple>}` exactly as Celery stores it.
-- `expires_at` (Unix milliseconds) is NULL for groups that never expire.
CREATE TABLE IF NOT EXISTS backend_groups (
    group_id   TEXT    NOT NULL PRIMARY KEY,
    saved      TEXT    NOT NULL,
    expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS backend_groups_by_expiry ON backend_groups (expires_at)
    WHERE expires_at IS NOT NULL;
