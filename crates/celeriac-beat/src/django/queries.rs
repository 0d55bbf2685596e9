//! The statements of the django-celery-beat store. `t` is
//! `django_celery_beat_periodictask`; times in `celeriac_beat_*` are Unix
//! nanoseconds.

/// Every column [`read_entry`](super::read_entry) reads, with the task's schedule
/// rows and celeriac's extras joined; callers append `WHERE …` (parameter `$1`).
pub(crate) const SELECT_ENTRIES: &str = "
SELECT t.id, t.name, t.task, t.args, t.kwargs, t.queue, t.exchange, t.routing_key,
       t.expires, t.enabled, t.last_run_at, t.total_run_count, t.date_changed,
       t.description, t.one_off, t.start_time, t.priority, t.headers, t.expire_seconds,
       i.every, i.period,
       c.minute, c.hour, c.day_of_week, c.day_of_month, c.month_of_year, c.timezone,
       k.clocked_time,
       s.event, s.latitude::float8 AS solar_latitude, s.longitude::float8 AS solar_longitude,
       e.created_at, e.catch_up, e.schedule AS exact_schedule, e.expires_secs, e.last_run_ns
FROM django_celery_beat_periodictask t
LEFT JOIN django_celery_beat_intervalschedule i ON i.id = t.interval_id
LEFT JOIN django_celery_beat_crontabschedule c ON c.id = t.crontab_id
LEFT JOIN django_celery_beat_clockedschedule k ON k.id = t.clocked_id
LEFT JOIN django_celery_beat_solarschedule s ON s.id = t.solar_id
LEFT JOIN celeriac_beat_entry e ON e.periodic_task_id = t.id";

/// An interval row with these values. Parameters: `$1` every, `$2` period.
pub(crate) const FIND_INTERVAL: &str = "SELECT id FROM django_celery_beat_intervalschedule
WHERE every = $1 AND period = $2 ORDER BY id LIMIT 1";

/// Inserts an interval row. Parameters as [`FIND_INTERVAL`].
pub(crate) const INSERT_INTERVAL: &str =
    "INSERT INTO django_celery_beat_intervalschedule (every, period) VALUES ($1, $2) RETURNING id";

/// A crontab row with these values. Parameters: `$1` minute, `$2` hour, `$3`
/// day_of_week, `$4` day_of_month, `$5` month_of_year, `$6` timezone.
pub(crate) const FIND_CRONTAB: &str = "SELECT id FROM django_celery_beat_crontabschedule
WHERE minute = $1 AND hour = $2 AND day_of_week = $3 AND day_of_month = $4
  AND month_of_year = $5 AND timezone = $6 ORDER BY id LIMIT 1";

/// Inserts a crontab row. Parameters as [`FIND_CRONTAB`].
pub(crate) const INSERT_CRONTAB: &str = "INSERT INTO django_celery_beat_crontabschedule
(minute, hour, day_of_week, day_of_month, month_of_year, timezone)
VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";

/// A clocked row with this time. Parameters: `$1` clocked_time.
pub(crate) const FIND_CLOCKED: &str = "SELECT id FROM django_celery_beat_clockedschedule
WHERE clocked_time = $1 ORDER BY id LIMIT 1";

/// Inserts a clocked row. Parameters as [`FIND_CLOCKED`].
pub(crate) const INSERT_CLOCKED: &str =
    "INSERT INTO django_celery_beat_clockedschedule (clocked_time) VALUES ($1) RETURNING id";

/// Inserts a periodic task or replaces its configuration, keeping `last_run_at` and
/// `total_run_count`; `date_changed` is now (Django's `auto_now`). Parameters: `$1`
/// name, `$2` task, `$3` args, `$4` kwargs, `$5` queue, `$6` exchange, `$7`
/// routing_key, `$8` expires, `$9` enabled, `$10` description, `$11` crontab_id,
/// `$12` interval_id, `$13` one_off, `$14` start_time, `$15` priority, `$16` headers,
/// `$17` clocked_id, `$18` expire_seconds, `$19` solar_id. Returns the id.
pub(crate) const UPSERT_TASK: &str = "
INSERT INTO django_celery_beat_periodictask (name, task, args, kwargs, queue, exchange,
    routing_key, expires, enabled, last_run_at, total_run_count, date_changed, description,
    crontab_id, interval_id, solar_id, one_off, start_time, priority, headers, clocked_id,
    expire_seconds)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, 0, clock_timestamp(), $10, $11, $12, $19,
    $13, $14, $15, $16, $17, $18)
ON CONFLICT (name) DO UPDATE SET
    task = excluded.task, args = excluded.args, kwargs = excluded.kwargs,
    queue = excluded.queue, exchange = excluded.exchange, routing_key = excluded.routing_key,
    expires = excluded.expires, enabled = excluded.enabled,
    date_changed = excluded.date_changed, description = excluded.description,
    crontab_id = excluded.crontab_id, interval_id = excluded.interval_id,
    solar_id = excluded.solar_id,
    one_off = excluded.one_off, start_time = excluded.start_time,
    priority = excluded.priority, headers = excluded.headers,
    clocked_id = excluded.clocked_id, expire_seconds = excluded.expire_seconds
RETURNING id";

/// A solar row with these values (Django keeps 6 decimals). Parameters: `$1` event,
/// `$2` latitude, `$3` longitude (degrees, float8).
pub(crate) const FIND_SOLAR: &str = "SELECT id FROM django_celery_beat_solarschedule
WHERE event = $1 AND latitude = CAST($2::float8 AS numeric(9, 6))
  AND longitude = CAST($3::float8 AS numeric(9, 6)) ORDER BY id LIMIT 1";

/// Inserts a solar row. Parameters as [`FIND_SOLAR`].
pub(crate) const INSERT_SOLAR: &str = "INSERT INTO django_celery_beat_solarschedule
(event, latitude, longitude)
VALUES ($1, CAST($2::float8 AS numeric(9, 6)), CAST($3::float8 AS numeric(9, 6))) RETURNING id";

/// Inserts or replaces celeriac's extras of a task, keeping its creation time and
/// exact last run. Parameters: `$1` id, `$2` created_at, `$3` catch_up, `$4` exact
/// schedule JSON, `$5` expires_secs.
pub(crate) const UPSERT_EXTRA: &str = "
INSERT INTO celeriac_beat_entry (periodic_task_id, created_at, catch_up, schedule, expires_secs)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (periodic_task_id) DO UPDATE SET
    catch_up = excluded.catch_up, schedule = excluded.schedule,
    expires_secs = excluded.expires_secs";

/// Bumps django-celery-beat's change marker (`PeriodicTasks.update_changed()`),
/// strictly forward even within one microsecond.
pub(crate) const BUMP_MARKER: &str = "
INSERT INTO django_celery_beat_periodictasks (ident, last_update) VALUES (1, clock_timestamp())
ON CONFLICT (ident) DO UPDATE SET last_update = GREATEST(clock_timestamp(),
    django_celery_beat_periodictasks.last_update + interval '1 microsecond')";

/// The change marker's parts: last_update, the task count, the latest date_changed.
pub(crate) const CHANGE_MARKER: &str = "
SELECT (SELECT last_update FROM django_celery_beat_periodictasks WHERE ident = 1),
       count(*), max(date_changed)
FROM django_celery_beat_periodictask";

/// Deletes a task (its celeriac rows cascade). Parameters: `$1` name.
pub(crate) const DELETE_TASK: &str = "DELETE FROM django_celery_beat_periodictask WHERE name = $1";

/// Enables or disables a task. Parameters: `$1` name, `$2` enabled.
pub(crate) const SET_ENABLED: &str = "UPDATE django_celery_beat_periodictask
SET enabled = $2, date_changed = clock_timestamp() WHERE name = $1";

/// Locks a task for a claim. Parameters: `$1` name. Returns id, enabled, one_off,
/// last_run_at, date_changed.
pub(crate) const LOCK_TASK: &str = "SELECT id, enabled, one_off, last_run_at, date_changed
FROM django_celery_beat_periodictask WHERE name = $1 FOR UPDATE";

/// celeriac's exact last run of a task. Parameters: `$1` id.
pub(crate) const EXACT_LAST_RUN: &str =
    "SELECT last_run_ns FROM celeriac_beat_entry WHERE periodic_task_id = $1";

/// Records a claimed run; changes nothing when it is recorded already. Parameters:
/// `$1` id, `$2` due_ns, `$3` claimer, `$4` task_id, `$5` claimed_ns, `$6` lease_ns.
pub(crate) const INSERT_RUN: &str = "
INSERT INTO celeriac_beat_run (periodic_task_id, due_ns, claimer, task_id, claimed_ns, lease_ns)
VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";

/// Advances a claimed task's run state (and disables a one-off task, as a change).
/// Parameters: `$1` id, `$2` due (microseconds), `$3` one_off.
pub(crate) const CLAIM_ADVANCE: &str = "
UPDATE django_celery_beat_periodictask SET last_run_at = $2,
    total_run_count = total_run_count + 1,
    enabled = enabled AND NOT $3,
    date_changed = CASE WHEN $3 THEN clock_timestamp() ELSE date_changed END
WHERE id = $1";

/// Records the exact due time of the claim. Parameters: `$1` id, `$2` created_at
/// (for a task without extras: its date_changed), `$3` due_ns.
pub(crate) const CLAIM_EXACT: &str = "
INSERT INTO celeriac_beat_entry (periodic_task_id, created_at, last_run_ns) VALUES ($1, $2, $3)
ON CONFLICT (periodic_task_id) DO UPDATE SET last_run_ns = excluded.last_run_ns";

/// Deletes published runs of a task older than its latest `$2`. Parameters: `$1` id,
/// `$2` runs to keep.
pub(crate) const PRUNE_RUNS: &str = "
DELETE FROM celeriac_beat_run
WHERE periodic_task_id = $1 AND sent_ns IS NOT NULL AND due_ns < (
    SELECT due_ns FROM celeriac_beat_run WHERE periodic_task_id = $1
    ORDER BY due_ns DESC OFFSET $2::bigint - 1 LIMIT 1)";

/// Marks a run published by its current claimer. Parameters: `$1` name, `$2`
/// due_ns, `$3` claimer, `$4` sent_ns.
pub(crate) const FINISH_RUN: &str = "
UPDATE celeriac_beat_run r SET sent_ns = $4
FROM django_celery_beat_periodictask t
WHERE t.id = r.periodic_task_id AND t.name = $1 AND r.due_ns = $2 AND r.claimer = $3
  AND r.sent_ns IS NULL";

/// Hands stale runs to a new claimer; rows another taker holds are skipped, and a
/// row another taker just took fails the re-check. Parameters: `$1` claimer, `$2`
/// now, `$3` lease, `$4` limit.
pub(crate) const TAKE_OVER: &str = "
WITH stale AS (
    SELECT periodic_task_id, due_ns FROM celeriac_beat_run
    WHERE sent_ns IS NULL AND lease_ns <= $2
    ORDER BY lease_ns LIMIT $4::bigint FOR UPDATE SKIP LOCKED
)
UPDATE celeriac_beat_run r SET claimer = $1, lease_ns = $3, attempts = r.attempts + 1
FROM stale, django_celery_beat_periodictask t
WHERE r.periodic_task_id = stale.periodic_task_id AND r.due_ns = stale.due_ns
  AND t.id = r.periodic_task_id
RETURNING t.name, r.due_ns, r.claimer, r.task_id, r.claimed_ns, r.lease_ns, r.sent_ns,
    r.attempts";

/// Recent runs, newest first. Parameters: `$1` name or NULL, `$2` limit.
pub(crate) const RUNS: &str = "
SELECT t.name, r.due_ns, r.claimer, r.task_id, r.claimed_ns, r.lease_ns, r.sent_ns, r.attempts
FROM celeriac_beat_run r JOIN django_celery_beat_periodictask t ON t.id = r.periodic_task_id
WHERE ($1::text IS NULL OR t.name = $1::text)
ORDER BY r.due_ns DESC, t.name LIMIT $2::bigint";
