-- celeriac result backend, schema version 1 (component 'backend' in celeriac_schema).
--
-- One row per task id. `meta` holds Celery's task meta exactly as
-- `serde_json::to_vec(&TaskMeta)` writes it (the value of the Redis backend's
-- `celery-task-meta-<id>` key); the other columns copy fields out of it so rows can
-- be filtered and expired without parsing JSON.
--
-- Times are Unix milliseconds. `expires_at` is NULL for results that never expire.
-- `updated_at` is the time of the last write. `seq` orders writes: every write sets
-- it to one more than the largest in the table (inside the write transaction), so
-- "newest first" is exact even when many writes share a millisecond.

CREATE TABLE IF NOT EXISTS backend_results (
    task_id    TEXT    NOT NULL PRIMARY KEY,
    status     TEXT    NOT NULL,
    name       TEXT,
    meta       TEXT    NOT NULL,
    date_done  TEXT,
    expires_at INTEGER,
    updated_at INTEGER NOT NULL,
    seq        INTEGER NOT NULL
);

-- Recent results in one state (`recent` with a state filter; `count_by_state`).
CREATE INDEX IF NOT EXISTS backend_results_status_seq
    ON backend_results (status, seq);

-- Recent results of one task name (results stored with `result_extended`).
CREATE INDEX IF NOT EXISTS backend_results_name_seq
    ON backend_results (name, seq) WHERE name IS NOT NULL;

-- Recent results of any state, and the next `seq`.
CREATE UNIQUE INDEX IF NOT EXISTS backend_results_seq
    ON backend_results (seq);

-- Expiry cleanup: only rows that expire are indexed.
CREATE INDEX IF NOT EXISTS backend_results_expires
    ON backend_results (expires_at) WHERE expires_at IS NOT NULL;
