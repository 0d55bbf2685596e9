"""Remote control (kombu's pidbox, PROTOCOL.md §5.2) between Python Celery and celeriac
on Redis: the real `celery inspect` / `celery control` commands against celeriac
workers, and `celeriac inspect` / `celeriac control` (the interop binary's) against
Python workers.

Every test addresses its own worker by name (`-d`), so other workers on the server
do not matter. A worker subscribes to the pidbox after it printed its banner, so the
first command is retried until the node answers (never longer than 30 s).
"""

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
from celery.result import AsyncResult

import tasks
from conftest import HERE, REDIS_URL, clean_env, run_interop

pytestmark = pytest.mark.usefixtures("needs_redis_broker")


def celery_cli(*args, timeout=60):
    """`celery -A tasks ...` of the venv, on this suite's Redis."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks", *args],
        cwd=HERE,
        env={**clean_env(CELERIAC_BROKER_URL=REDIS_URL, CELERIAC_RESULT_BACKEND=REDIS_URL), "PYTHONPATH": str(HERE)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def until(what, check, timeout=30, pause=0.1):
    """Calls `check` until it returns something truthy; returns that."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(pause)


def inspect(node, method, timeout=2.0):
    """Python's `app.control.inspect` reply of `node`, or None."""
    replies = getattr(tasks.app.control.inspect([node], timeout=timeout), method)() or {}
    return replies.get(node)


def wait_for_node(node):
    until(f"{node} to answer ping", lambda: inspect(node, "ping", timeout=1.0))


def test_celery_inspect_ping_sees_a_celeriac_worker(rust_worker, queue_name):
    worker = rust_worker(queue=queue_name)

    def ping():
        done = celery_cli("inspect", "ping", "-d", worker.name, "-t", "2", "--json")
        return done if done.returncode == 0 else None

    done = until("celery inspect ping to see the celeriac worker", ping)
    replies = json.loads(done.stdout.strip().splitlines()[-1])
    assert replies == {worker.name: {"ok": "pong"}}


def test_python_inspect_sees_active_and_scheduled_tasks_on_celeriac(rust_worker, queue_name, task_ids):
    worker = rust_worker(queue=queue_name)
    wait_for_node(worker.name)
    running = task_ids("active")
    later = task_ids("scheduled")
    tasks.app.send_task("interop.sleep", args=[30], queue=queue_name, task_id=running)
    tasks.app.send_task("interop.add", args=[1, 2], queue=queue_name, task_id=later, countdown=60)

    active = until("the sleep to be active", lambda: inspect(worker.name, "active"))
    assert [t["id"] for t in active] == [running]
    assert active[0]["name"] == "interop.sleep"
    assert active[0]["args"] == [30]
    assert active[0]["hostname"] == worker.name
    assert active[0]["delivery_info"]["routing_key"] == queue_name
    scheduled = until("the ETA task to be scheduled", lambda: inspect(worker.name, "scheduled"))
    assert [s["request"]["id"] for s in scheduled] == [later]
    assert scheduled[0]["eta"]
    registered = inspect(worker.name, "registered")
    assert "interop.add" in registered and "interop.sleep" in registered
    stats = inspect(worker.name, "stats")
    assert stats["pid"] == worker.process.pid
    # Clean up: both revoked, the running one stopped.
    tasks.app.control.revoke([running, later], terminate=True, destination=[worker.name])


def test_celery_control_revoke_stops_an_eta_task_on_celeriac(rust_worker, queue_name, task_ids, tmp_path):
    log = tmp_path / "record.log"
    worker = rust_worker(queue=queue_name, CELERIAC_INTEROP_LOG=log)
    wait_for_node(worker.name)
    token = f"revoked-{uuid.uuid4().hex[:8]}"
    kept = f"kept-{uuid.uuid4().hex[:8]}"
    revoked_id = task_ids("revoke-eta")
    kept_id = task_ids("kept-eta")
    tasks.app.send_task("interop.record", args=[token], queue=queue_name, task_id=revoked_id, countdown=3)
    tasks.app.send_task("interop.record", args=[kept], queue=queue_name, task_id=kept_id, countdown=3)
    done = celery_cli("control", "revoke", revoked_id, "-d", worker.name, "-t", "5", "--json")
    assert done.returncode == 0, done.stderr
    replies = json.loads(done.stdout.strip().splitlines()[-1])
    # `celery control --json` prints the list of replies.
    assert replies == [{worker.name: {"ok": f"tasks {{'{revoked_id}'}} flagged as revoked"}}]
    # The other task runs at its ETA; the revoked one never does.
    assert AsyncResult(kept_id, app=tasks.app).get(timeout=30) == kept
    time.sleep(1.0)
    assert token not in log.read_text()
    assert AsyncResult(revoked_id, app=tasks.app).state == "REVOKED"
    assert revoked_id in inspect(worker.name, "revoked")


def test_celery_control_terminate_stops_a_running_task_on_celeriac(rust_worker, queue_name, task_ids):
    worker = rust_worker(queue=queue_name)
    wait_for_node(worker.name)
    running = task_ids("terminate")
    started = time.monotonic()
    tasks.app.send_task("interop.sleep", args=[60], queue=queue_name, task_id=running)
    until("the sleep to be active", lambda: inspect(worker.name, "active"))
    # `celery control revoke` has no --terminate; `terminate SIGNAL ID` is Celery's way.
    done = celery_cli("control", "terminate", "SIGTERM", running, "-d", worker.name, "-t", "5", "--json")
    assert done.returncode == 0, done.stderr
    replies = json.loads(done.stdout.strip().splitlines()[-1])
    assert replies == [{worker.name: {"ok": f"terminate: {running}"}}]
    result = AsyncResult(running, app=tasks.app)
    until("the terminated task to be REVOKED", lambda: result.state == "REVOKED")
    assert time.monotonic() - started < 30
    assert not inspect(worker.name, "active")


def test_python_revoke_with_terminate_stops_a_running_task_on_celeriac(rust_worker, queue_name, task_ids):
    worker = rust_worker(queue=queue_name)
    wait_for_node(worker.name)
    running = task_ids("revoke-terminate")
    tasks.app.send_task("interop.sleep", args=[60], queue=queue_name, task_id=running)
    until("the sleep to be active", lambda: inspect(worker.name, "active"))
    replies = tasks.app.control.revoke(running, terminate=True, destination=[worker.name], reply=True, timeout=5)
    assert replies == [{worker.name: {"ok": f"terminate: {running}"}}]
    result = AsyncResult(running, app=tasks.app)
    until("the terminated task to be REVOKED", lambda: result.state == "REVOKED")


def test_celeriac_inspect_and_control_a_python_worker(interop_bin, python_worker, queue_name, tmp_path):
    worker = python_worker(queue=queue_name)
    env = clean_env(CELERIAC_BROKER_URL=REDIS_URL, CELERIAC_RESULT_BACKEND=REDIS_URL)

    def ping():
        done = run_interop(interop_bin, "inspect", "ping", "-d", worker.name, "--timeout", "2s", "--json",
                           env=env, cwd=tmp_path)
        return done if done.returncode == 0 else None

    done = until("celeriac inspect ping to see the Python worker", ping)
    assert json.loads(done.stdout) == {worker.name: {"ok": "pong"}}

    done = run_interop(interop_bin, "inspect", "registered", "-d", worker.name, "--timeout", "3s", "--json",
                       env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    registered = json.loads(done.stdout)[worker.name]
    assert "interop.add" in registered

    revoked_id = f"interop-celeriac-revokes-{uuid.uuid4()}"
    done = run_interop(interop_bin, "control", "revoke", revoked_id, "-d", worker.name, "--timeout", "3s",
                       "--json", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {worker.name: {"ok": f"tasks {{'{revoked_id}'}} flagged as revoked"}}
    assert revoked_id in inspect(worker.name, "revoked")

    done = run_interop(interop_bin, "inspect", "ping", "-d", "nobody@nowhere", "--timeout", "500ms",
                       env=env, cwd=tmp_path)
    assert done.returncode != 0
    assert "no nodes replied" in done.stderr
