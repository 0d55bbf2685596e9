-- celeriac dashboard task history, schema version 1 (component 'dashboard' in
-- celeriac_schema).
--
-- Applied once, inside a BEGIN IMMEDIATE transaction, by HistoryStore::open. The file
-- is normally the broker's; the broker, the result backend, the schedule and the lock
-- stores keep their own tables and their own rows in celeriac_schema.

-- One row per task the dashboard learned about from task events (what the tasks
-- screen and GET /api/tasks show), written in batches by the dashboard and pruned to
-- its --history bound, oldest first.
CREATE TABLE dashboard_tasks (
    task_id TEXT    PRIMARY KEY,
    -- When the dashboard first saw the task, Unix microseconds (unique per process,
    -- only grows): newest tasks have the largest seq, pruning deletes the smallest.
    seq     INTEGER NOT NULL,
    -- Latest state (RECEIVED, STARTED, SUCCESS, FAILURE, RETRY, REVOKED, ...) and the
    -- task name, for people reading the table with plain SQL.
    status  TEXT    NOT NULL,
    name    TEXT,
    -- The whole record as JSON (celeriac_dashboard::history::TaskRecord).
    record  TEXT    NOT NULL
) WITHOUT ROWID;

-- Reloading the newest rows and pruning the oldest.
CREATE INDEX dashboard_tasks_seq ON dashboard_tasks (seq);
