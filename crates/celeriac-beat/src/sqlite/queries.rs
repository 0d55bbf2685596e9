//! The statements run against `beat_entries`, `beat_runs` and `beat_changes` (schema
//! in `migrations/0001_beat.sql`). Times are Unix nanoseconds. Each runs inside one
//! `BEGIN IMMEDIATE` transaction.

/// The columns of an entry, in the order `read_entry` reads them.
pub(crate) const ENTRY_COLUMNS: &str = "name, task, args, kwargs, schedule, queue, exchange, \
    routing_key, priority, expires_secs, headers, enabled, one_off, start_time, end_time, \
    catch_up, description, last_run_at, total_run_count, created_at, updated_at";

/// Inserts an entry or replaces its configuration, keeping its run state and
/// creation time. Parameters: `?1` name .. `?18` description (configuration columns
/// in table order), `?19` created_at (for a new entry), `?20` updated_at.
pub(crate) const UPSERT: &str = "
INSERT INTO beat_entries (name, task, args, kwargs, schedule_kind, schedule, queue, exchange,
    routing_key, priority, expires_secs, headers, enabled, one_off, start_time, end_time,
    catch_up, description, created_at, updated_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)
ON CONFLICT (name) DO UPDATE SET
    task = excluded.task, args = excluded.args, kwargs = excluded.kwargs,
    schedule_kind = excluded.schedule_kind, schedule = excluded.schedule,
    queue = excluded.queue, exchange = excluded.exchange, routing_key = excluded.routing_key,
    priority = excluded.priority, expires_secs = excluded.expires_secs,
    headers = excluded.headers, enabled = excluded.enabled, one_off = excluded.one_off,
    start_time = excluded.start_time, end_time = excluded.end_time,
    catch_up = excluded.catch_up, description = excluded.description,
    updated_at = excluded.updated_at";

/// Enables or disables an entry. Parameters: `?1` name, `?2` enabled, `?3` now.
pub(crate) const SET_ENABLED: &str =
    "UPDATE beat_entries SET enabled = ?2, updated_at = ?3 WHERE name = ?1";

/// Deletes an entry. Parameters: `?1` name.
pub(crate) const DELETE_ENTRY: &str = "DELETE FROM beat_entries WHERE name = ?1";

/// Deletes an entry's runs. Parameters: `?1` name.
pub(crate) const DELETE_RUNS: &str = "DELETE FROM beat_runs WHERE entry = ?1";

/// The change counter.
pub(crate) const CHANGE_MARKER: &str = "SELECT counter FROM beat_changes WHERE id = 1";

/// What a claim checks. Parameters: `?1` name. Returns enabled, last_run_at, one_off.
pub(crate) const CLAIM_CHECK: &str =
    "SELECT enabled, last_run_at, one_off FROM beat_entries WHERE name = ?1";

/// Advances the run state of a claimed entry (touches no column the change triggers
/// watch). Parameters: `?1` name, `?2` due_at.
pub(crate) const CLAIM_ADVANCE: &str = "
UPDATE beat_entries SET last_run_at = ?2, total_run_count = total_run_count + 1
WHERE name = ?1";

/// Disables a one-off entry after its claimed run (a configuration change: it moves
/// the change marker). Parameters: `?1` name, `?2` now.
pub(crate) const DISABLE_ONE_OFF: &str =
    "UPDATE beat_entries SET enabled = 0, updated_at = ?2 WHERE name = ?1";

/// Records a claimed run. Parameters: `?1` entry, `?2` due_at, `?3` claimer,
/// `?4` task_id, `?5` claimed_at, `?6` lease_until.
pub(crate) const INSERT_RUN: &str = "
INSERT INTO beat_runs (entry, due_at, claimer, task_id, claimed_at, lease_until)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// Deletes published runs of an entry older than its latest `?2`. Parameters: `?1`
/// entry, `?2` runs to keep.
pub(crate) const PRUNE_RUNS: &str = "
DELETE FROM beat_runs
WHERE entry = ?1 AND sent_at IS NOT NULL AND due_at < (
    SELECT due_at FROM beat_runs WHERE entry = ?1 ORDER BY due_at DESC LIMIT 1 OFFSET ?2 - 1
)";

/// Marks a run published by its current claimer. Parameters: `?1` entry, `?2` due_at,
/// `?3` claimer, `?4` sent_at. Changes: 1 when it held the run.
pub(crate) const FINISH_RUN: &str = "
UPDATE beat_runs SET sent_at = ?4
WHERE entry = ?1 AND due_at = ?2 AND claimer = ?3 AND sent_at IS NULL";

/// Hands stale runs to a new claimer. Parameters: `?1` claimer, `?2` now,
/// `?3` lease_until, `?4` limit. Returns the runs' columns.
pub(crate) const TAKE_OVER: &str = "
UPDATE beat_runs SET claimer = ?1, lease_until = ?3, attempts = attempts + 1
WHERE (entry, due_at) IN (
    SELECT entry, due_at FROM beat_runs
    WHERE sent_at IS NULL AND lease_until <= ?2
    ORDER BY lease_until LIMIT ?4
)
RETURNING entry, due_at, claimer, task_id, claimed_at, lease_until, sent_at, attempts";

/// The columns of a run, in the order `read_run` reads them.
pub(crate) const RUN_COLUMNS: &str =
    "entry, due_at, claimer, task_id, claimed_at, lease_until, sent_at, attempts";
