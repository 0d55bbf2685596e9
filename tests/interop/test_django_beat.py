"""celeriac beat on django-celery-beat's own tables: periodic tasks created with the
Django ORM (as the admin does) in a database migrated by the real django-celery-beat
run on celeriac beat, edits apply without a restart, and Django sees the runs.

Environment (besides conftest.py's):
  CELERIAC_INTEROP_PG_URL  PostgreSQL server for a throwaway database
                           (default postgres://postgres@127.0.0.1:5432/postgres)
Skipped when Django / django-celery-beat / psycopg are not installed or PostgreSQL
does not answer; failed instead with CELERIAC_REQUIRE_SERVICES=1.
"""

import json
import os
import pathlib
import subprocess
import sys
import time
import urllib.parse
import uuid

import pytest

from conftest import HERE, REDIS_URL, REQUIRED, Process, clean_env, run_interop

DJANGO_DIR = HERE / "django"
PG_URL = os.environ.get("CELERIAC_INTEROP_PG_URL") or "postgres://postgres@127.0.0.1:5432/postgres"


def _unavailable(reason):
    if REQUIRED:
        pytest.fail(f"{reason} and CELERIAC_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def django_db():
    """A new database migrated by `manage.py migrate` (django-celery-beat's real
    migrations); dropped afterwards. Yields (name, env for orm.py / manage.py,
    celeriac store URL)."""
    try:
        import django  # noqa: F401
        import django_celery_beat  # noqa: F401
        import psycopg
    except ImportError as error:
        _unavailable(f"Django interop needs django, django-celery-beat and psycopg: {error}")
    url = urllib.parse.urlsplit(PG_URL)
    server = dict(
        host=url.hostname or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password or "",
    )
    try:
        admin = psycopg.connect(dbname=url.path.lstrip("/") or "postgres", autocommit=True,
                                connect_timeout=3, **server)
    except psycopg.Error as error:
        _unavailable(f"PostgreSQL does not answer at {PG_URL}: {error}")
    name = f"celeriac_django_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    env = {
        **os.environ,
        "CELERIAC_DJANGO_DB": name,
        "CELERIAC_PG_HOST": server["host"],
        "CELERIAC_PG_PORT": str(server["port"]),
        "CELERIAC_PG_USER": server["user"],
        "CELERIAC_PG_PASSWORD": server["password"],
        "DJANGO_SETTINGS_MODULE": "celeriac_django.settings",
    }
    try:
        migrate = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=DJANGO_DIR, env=env, capture_output=True, text=True, timeout=300,
        )
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        auth = server["user"] + (f":{urllib.parse.quote(server['password'])}" if server["password"] else "")
        store = f"django+postgres://{auth}@{server['host']}:{server['port']}/{name}"
        yield name, env, store
    finally:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


def orm(env, *args):
    """Runs tests/interop/django/orm.py; returns its stdout parsed as JSON (or None)."""
    done = subprocess.run(
        [sys.executable, "orm.py", *map(str, args)],
        cwd=DJANGO_DIR, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else None


@pytest.fixture
def beat(interop_bin, tmp_path, request):
    """Starts `interop beat --store URL` (broker on REDIS_URL); stopped after the
    test, its log printed when the test failed."""
    started = []

    def start(store):
        process = Process(
            [str(interop_bin), "--log", "info", "beat", "--store", store, "--poll", "200ms"],
            env=clean_env(CELERIAC_BROKER_URL=REDIS_URL, CELERIAC_RESULT_BACKEND=REDIS_URL),
            cwd=tmp_path,
            log_path=tmp_path / f"beat-{len(started)}.log",
            ready_pattern="celeriac beat ",
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        for process in started:
            sys.stderr.write(f"\n--- beat ---\n{process.output()}\n")


def records(log, token):
    path = pathlib.Path(log)
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.split(" ")[0] == token)


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


def test_an_orm_interval_task_runs_on_celeriac_beat_and_an_orm_disable_stops_it(
    django_db, beat, python_worker, queue_name, tmp_path
):
    _, env, store = django_db
    log = tmp_path / "records.log"
    python_worker(queue=queue_name, CELERIAC_INTEROP_LOG=str(log))
    token = f"django-{uuid.uuid4().hex[:10]}"
    name = f"every-second-{token}"
    orm(env, "interval", name, "interop.record", queue_name, json.dumps([token]), 1, "seconds")
    beat(store)

    wait_until(lambda: records(log, token) >= 2, 20, "two runs recorded by the Python worker")
    seen = orm(env, "show", name)
    assert seen["total_run_count"] >= 2, seen
    assert seen["last_run_at"] is not None, seen
    assert seen["enabled"] is True

    # Disabled through the model's save() (the admin's way): no run after a second.
    orm(env, "disable", name)
    time.sleep(1.5)
    settled = records(log, token)
    time.sleep(3)
    assert records(log, token) == settled, "runs continued after the ORM disable"


def test_a_crontab_with_a_time_zone_and_celeriac_edits_round_trip(django_db, interop_bin, tmp_path):
    _, env, store = django_db
    name = f"cron-{uuid.uuid4().hex[:10]}"
    orm(env, "crontab", name, "proj.report", "reports", "30", "9", "1-5", "*", "*", "Asia/Seoul")

    listed = run_interop(interop_bin, "schedule", "--store", store, "list", "--json",
                         env=clean_env(CELERIAC_BROKER_URL=REDIS_URL), cwd=tmp_path)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    entry = next(e for e in json.loads(listed.stdout) if e["name"] == name)
    assert entry["task"] == "proj.report"
    assert entry["queue"] == "reports"
    assert entry["schedule_text"] == "crontab 30 9 * * 1-5 (Asia/Seoul)"
    # 09:30 in Seoul is 00:30 UTC, on a weekday.
    assert entry["next_run_at"].endswith("T00:30:00Z"), entry

    # An entry added with celeriac's CLI is a valid django-celery-beat task.
    added = f"celeriac-{uuid.uuid4().hex[:10]}"
    done = run_interop(
        interop_bin, "schedule", "--store", store, "add", added, "--task", "proj.tick",
        "--every", "90s", "--args", '[1, "two"]', "--header", "x-origin=celeriac",
        "--queue", "ticks", env=clean_env(CELERIAC_BROKER_URL=REDIS_URL), cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    seen = orm(env, "show", added)
    assert seen["task"] == "proj.tick"
    assert seen["args"] == [1, "two"]
    assert seen["headers"] == {"x-origin": "celeriac"}
    assert seen["queue"] == "ticks"
    assert seen["interval"] == [90, "seconds"]
    assert seen["full_clean"] == "ok", seen
