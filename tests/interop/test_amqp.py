"""Interop on RabbitMQ: the same cases as on Redis, with the broker at
CELERIAC_INTEROP_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672//) and results on
this suite's Redis.

- Python sends -> a celeriac worker runs it (and a failure comes back as the exception);
- celeriac sends -> a Python worker runs it;
- `celery inspect ping` / `celery control revoke` against a celeriac worker, and
  celeriac's `inspect ping` / `control revoke` against a Python worker, over the
  `celery.pidbox` fanout exchange;
- a mixed fleet on one queue runs each task once.

Each test uses its own queue (declared by both sides with Celery's settings: durable,
bound to the `celery` direct exchange) and deletes it afterwards. Skipped when RabbitMQ
does not answer (failed with CELERIAC_REQUIRE_SERVICES=1).
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid

import pytest
from celery import Celery
from celery.result import AsyncResult

from conftest import HERE, REDIS_URL, REQUIRED, Process, clean_env, run_interop

AMQP_URL = os.environ.get("CELERIAC_INTEROP_AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672//"


def amqp_answers(url):
    parsed = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 5672), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def amqp_app(redis_client):
    """A Python Celery client on RabbitMQ with results on Redis (tasks.py's settings)."""
    if not amqp_answers(AMQP_URL):
        message = f"RabbitMQ does not answer at {AMQP_URL}"
        if REQUIRED:
            pytest.fail(f"{message} and CELERIAC_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip(message)
    app = Celery("interop", broker=AMQP_URL, backend=REDIS_URL)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        broker_connection_retry_on_startup=True,
        task_default_queue="celery",
    )
    yield app
    # celeriac's interop worker declares Celery's default queue too; drop it unless
    # someone else uses it.
    delete_entities(app, queues=["celery", "celeriac.dead-letter.celery"], if_unused=True, if_empty=True)
    app.close()


@pytest.fixture
def amqp_queue(amqp_app):
    """A queue no other test uses; deleted (with its dead-letter queue) afterwards."""
    name = f"interop-amqp-{uuid.uuid4().hex[:12]}"
    yield name
    delete_entities(amqp_app, queues=[name, f"celeriac.dead-letter.{name}"], exchanges=[name])


def delete_entities(app, queues=(), exchanges=(), **queue_conditions):
    """Deletes queues and exchanges (each on a fresh channel: a refused delete
    closes its channel)."""
    with app.connection_for_write() as connection:
        for queue in queues:
            channel = connection.channel()
            try:
                channel.queue_delete(queue, **queue_conditions)
            except Exception:  # noqa: BLE001 - gone already, or in use
                pass
        for exchange in exchanges:
            channel = connection.channel()
            try:
                channel.exchange_delete(exchange)
            except Exception:  # noqa: BLE001 - gone already
                pass


@pytest.fixture
def amqp_python_worker(amqp_app, tmp_path, request):
    """Python Celery workers running tests/interop/tasks.py on RabbitMQ."""
    started = []

    def start(queue, **env):
        name = f"py-amqp-{uuid.uuid4().hex[:8]}@interop"
        process = Process(
            [
                sys.executable, "-m", "celery", "-A", "tasks", "worker",
                "-Q", queue, "-n", name, "-P", "threads", "-c", "4", "-l", "info",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
            ],
            env={
                **clean_env(CELERIAC_BROKER_URL=AMQP_URL, CELERIAC_RESULT_BACKEND=REDIS_URL, **env),
                "PYTHONPATH": str(HERE),
            },
            cwd=HERE,
            log_path=tmp_path / f"{name}.log",
            ready_pattern=" ready.",
        )
        process.name = name
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        for process in started:
            sys.stderr.write(f"\n--- {process.name} ---\n{process.output()}\n")


def celery_cli(*args, timeout=60):
    """`celery -A tasks ...` of the venv, on RabbitMQ."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks", *args],
        cwd=HERE,
        env={**clean_env(CELERIAC_BROKER_URL=AMQP_URL, CELERIAC_RESULT_BACKEND=REDIS_URL), "PYTHONPATH": str(HERE)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def until(what, check, timeout=30, pause=0.2):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(pause)


def test_python_sends_to_a_celeriac_worker_on_rabbitmq(amqp_app, amqp_queue, rust_worker, task_ids):
    rust_worker(queue=amqp_queue, broker=AMQP_URL)
    result = amqp_app.send_task("interop.add", (2, 3), queue=amqp_queue, task_id=task_ids("amqp-add"))
    assert result.get(timeout=30) == 5
    echo = amqp_app.send_task(
        "interop.echo", (1, "two"), {"three": [3], "four": None, "big": 2**40, "f": 0.5},
        queue=amqp_queue, task_id=task_ids("amqp-echo"),
    )
    assert echo.get(timeout=30) == {
        "args": [1, "two"], "kwargs": {"three": [3], "four": None, "big": 2**40, "f": 0.5}
    }
    failed = amqp_app.send_task("interop.fail", ("kaboom via rabbitmq",), queue=amqp_queue,
                                task_id=task_ids("amqp-fail"))
    with pytest.raises(Exception) as raised:
        failed.get(timeout=30)
    assert str(raised.value) == "kaboom via rabbitmq"
    assert type(raised.value).__name__ == "ValueError"


def test_celeriac_retries_on_rabbitmq(amqp_app, amqp_queue, rust_worker, task_ids):
    rust_worker(queue=amqp_queue, broker=AMQP_URL)
    token = f"flaky-{uuid.uuid4().hex[:8]}"
    result = amqp_app.send_task("interop.flaky", (token, 2), queue=amqp_queue, task_id=task_ids("amqp-flaky"))
    assert result.get(timeout=60) == 3


def test_celeriac_sends_to_a_python_worker_on_rabbitmq(interop_bin, amqp_queue, amqp_python_worker, task_ids,
                                                       tmp_path):
    amqp_python_worker(amqp_queue)
    task_id = task_ids("amqp-to-python")
    done = run_interop(
        interop_bin, "--broker", AMQP_URL, "--backend", REDIS_URL,
        "call", "interop.add", "--args", json.dumps([20, 22]), "--queue", amqp_queue,
        "--id", task_id, "--wait", "30s",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n", 1)
    assert lines[0].strip() == task_id
    assert json.loads(lines[1]) == 42


def test_celery_inspect_and_control_a_celeriac_worker_on_rabbitmq(amqp_app, amqp_queue, rust_worker, task_ids):
    worker = rust_worker(queue=amqp_queue, broker=AMQP_URL)

    def ping():
        done = celery_cli("inspect", "ping", "-d", worker.name, "-t", "2", "--json")
        return done if done.returncode == 0 else None

    done = until("celery inspect ping to see the celeriac worker", ping)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {worker.name: {"ok": "pong"}}

    running = task_ids("amqp-active")
    amqp_app.send_task("interop.sleep", args=[30], queue=amqp_queue, task_id=running)

    def active():
        replies = amqp_app.control.inspect([worker.name], timeout=2).active() or {}
        return replies.get(worker.name)

    listed = until("the sleep to be active", active)
    assert [t["id"] for t in listed] == [running]
    assert listed[0]["delivery_info"]["routing_key"] == amqp_queue
    replies = amqp_app.control.revoke(running, terminate=True, destination=[worker.name], reply=True, timeout=5)
    assert replies == [{worker.name: {"ok": f"terminate: {running}"}}]
    result = AsyncResult(running, app=amqp_app)
    until("the terminated task to be REVOKED", lambda: result.state == "REVOKED")


def test_celeriac_inspects_and_controls_a_python_worker_on_rabbitmq(interop_bin, amqp_queue, amqp_python_worker,
                                                                    tmp_path):
    worker = amqp_python_worker(amqp_queue)
    env = clean_env(CELERIAC_BROKER_URL=AMQP_URL, CELERIAC_RESULT_BACKEND=REDIS_URL)

    def ping():
        done = run_interop(interop_bin, "inspect", "ping", "-d", worker.name, "--timeout", "2s", "--json",
                           env=env, cwd=tmp_path)
        return done if done.returncode == 0 else None

    done = until("celeriac inspect ping to see the Python worker", ping)
    assert json.loads(done.stdout) == {worker.name: {"ok": "pong"}}
    revoked_id = f"interop-amqp-revokes-{uuid.uuid4()}"
    done = run_interop(interop_bin, "control", "revoke", revoked_id, "-d", worker.name, "--timeout", "3s",
                       "--json", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {worker.name: {"ok": f"tasks {{'{revoked_id}'}} flagged as revoked"}}


def test_a_mixed_fleet_on_rabbitmq_runs_each_task_once(amqp_app, amqp_queue, rust_worker, amqp_python_worker,
                                                       task_ids, tmp_path):
    log = tmp_path / "records.log"
    log.touch()
    rust = rust_worker(queue=amqp_queue, broker=AMQP_URL, CELERIAC_INTEROP_LOG=log)
    python = amqp_python_worker(amqp_queue, CELERIAC_INTEROP_LOG=log)
    tokens = [f"tok-{i}" for i in range(60)]
    results = [
        amqp_app.send_task("interop.record_late" if i % 2 else "interop.record", (token,),
                           queue=amqp_queue, task_id=task_ids("amqp-fleet"))
        for i, token in enumerate(tokens)
    ]
    assert [r.get(timeout=60) for r in results] == tokens
    lines = [line.split() for line in log.read_text().splitlines()]
    assert sorted(token for token, _ in lines) == sorted(tokens), "each task ran exactly once"
    assert {host for _, host in lines} <= {rust.name, python.name}
