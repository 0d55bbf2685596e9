-- celeriac's own tables next to django-celery-beat's, created if missing when a
-- DjangoScheduleStore connects (under an advisory lock, so concurrent beats do not
-- race). django-celery-beat's tables are never created or altered here: they come
-- from `python manage.py migrate django_celery_beat`.
--
-- Both tables reference django_celery_beat_periodictask(id) with ON DELETE CASCADE,
-- so deleting a periodic task (Django admin, ORM, SQL, celeriac) deletes its rows.
-- To unapply django-celery-beat's migrations, drop these two tables first.

-- What django-celery-beat's columns cannot hold, per periodic task: the creation
-- time, the catch-up policy, and the exact values celeriac wrote (the schedule as
-- JSON, with an interval's anchor and nanoseconds; the per-run expiry in fractional
-- seconds; the last due time in nanoseconds). An exact value is used only while the
-- Django columns still say the same thing (rounded); after an edit on the Django
-- side the Django columns win.
CREATE TABLE IF NOT EXISTS celeriac_beat_entry (
    periodic_task_id integer PRIMARY KEY
        REFERENCES django_celery_beat_periodictask (id) ON DELETE CASCADE,
    created_at       timestamptz NOT NULL,
    catch_up         text NOT NULL DEFAULT 'once' CHECK (catch_up IN ('once', 'all', 'skip')),
    schedule         text,
    expires_secs     double precision,
    last_run_ns      bigint
);

-- One row per claimed run; (periodic task, due time) is claimed once. Times are Unix
-- nanoseconds. sent_ns stays NULL until the claimer published the run; a NULL
-- sent_ns with lease_ns in the past is a run whose beat died, which another beat
-- takes over. The latest 100 published runs of each task are kept.
CREATE TABLE IF NOT EXISTS celeriac_beat_run (
    periodic_task_id integer NOT NULL
        REFERENCES django_celery_beat_periodictask (id) ON DELETE CASCADE,
    due_ns           bigint  NOT NULL,
    claimer          text    NOT NULL,
    task_id          text    NOT NULL,
    claimed_ns       bigint  NOT NULL,
    lease_ns         bigint  NOT NULL,
    sent_ns          bigint,
    attempts         integer NOT NULL DEFAULT 1,
    PRIMARY KEY (periodic_task_id, due_ns)
);

CREATE INDEX IF NOT EXISTS celeriac_beat_run_unsent
    ON celeriac_beat_run (lease_ns) WHERE sent_ns IS NULL;
