"""Tasks through the Redis broker, both ways: Python Celery clients sending to a
celeriac worker, and celeriac sending to a Python Celery worker. Each test uses its
own queue. Skipped (with the reason) while celeriac_broker has no Redis support.
"""

import json
import uuid

import pytest

import tasks
from conftest import REDIS_URL, clean_env, run_interop

pytestmark = pytest.mark.usefixtures("needs_redis_broker")


@pytest.fixture
def celeriac_worker(rust_worker, queue_name):
    """A celeriac interop worker consuming this test's queue on Redis."""
    rust_worker(queue=queue_name)
    return queue_name


def test_python_send_task_runs_on_celeriac(celeriac_worker, task_ids):
    result = tasks.app.send_task("interop.add", (2, 3), queue=celeriac_worker, task_id=task_ids("add"))
    assert result.get(timeout=30) == 5
    assert result.state == "SUCCESS"


def test_python_kwargs_and_floats_reach_celeriac(celeriac_worker, task_ids):
    echo = tasks.app.send_task(
        "interop.echo", (1, "two"), {"three": [3], "four": None}, queue=celeriac_worker, task_id=task_ids("echo")
    )
    assert echo.get(timeout=30) == {"args": [1, "two"], "kwargs": {"three": [3], "four": None}}
    add = tasks.app.send_task("interop.add", (), {"x": 0.5, "y": 2}, queue=celeriac_worker, task_id=task_ids("kw"))
    assert add.get(timeout=30) == 2.5


def test_a_celeriac_failure_raises_in_python_with_its_message(celeriac_worker, task_ids):
    result = tasks.app.send_task("interop.fail", ("kaboom via redis",), queue=celeriac_worker,
                                 task_id=task_ids("fail"))
    with pytest.raises(Exception) as raised:
        result.get(timeout=30)
    assert str(raised.value) == "kaboom via redis"
    assert type(raised.value).__name__ == "ValueError"
    assert result.state == "FAILURE"


def test_celeriac_retries_end_in_success(celeriac_worker, task_ids):
    token = f"flaky-{uuid.uuid4().hex[:8]}"
    result = tasks.app.send_task("interop.flaky", (token, 2), queue=celeriac_worker, task_id=task_ids("flaky"))
    assert result.get(timeout=60) == 3
    assert result.state == "SUCCESS"


def test_celeriac_sends_to_a_python_worker(interop_bin, python_worker, queue_name, task_ids, tmp_path):
    python_worker(queue=queue_name)
    task_id = task_ids("to-python")
    done = run_interop(
        interop_bin, "--broker", REDIS_URL, "--backend", REDIS_URL,
        "call", "interop.add", "--args", json.dumps([20, 22]), "--queue", queue_name,
        "--id", task_id, "--wait", "30s",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n", 1)
    assert lines[0].strip() == task_id
    assert json.loads(lines[1]) == 42


def test_celeriac_sends_compressed_tasks_a_python_worker_reads(interop_bin, python_worker, queue_name, task_ids,
                                                              tmp_path):
    # CELERIAC_TASK_COMPRESSION=gzip: kombu's zlib codec, which Celery decompresses.
    python_worker(queue=queue_name)
    task_id = task_ids("compressed-to-python")
    done = run_interop(
        interop_bin, "--broker", REDIS_URL, "--backend", REDIS_URL,
        "call", "interop.add", "--args", json.dumps([20, 22]), "--queue", queue_name,
        "--id", task_id, "--wait", "30s",
        env=clean_env(CELERIAC_TASK_COMPRESSION="gzip"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.split("\n", 1)[1]) == 42


def test_a_mixed_fleet_runs_each_task_once(rust_worker, python_worker, queue_name, task_ids, tmp_path):
    """A celeriac and a Python worker on one queue: every `interop.record` and
    `interop.record_late` runs exactly once, on one of the two."""
    log = tmp_path / "records.log"
    log.touch()
    rust = rust_worker(queue=queue_name, CELERIAC_INTEROP_LOG=log)
    python = python_worker(queue=queue_name, CELERIAC_INTEROP_LOG=log)
    tokens = [f"tok-{i}" for i in range(60)]
    results = [
        tasks.app.send_task("interop.record_late" if i % 2 else "interop.record", (token,),
                            queue=queue_name, task_id=task_ids("fleet"))
        for i, token in enumerate(tokens)
    ]
    assert [r.get(timeout=60) for r in results] == tokens
    lines = [line.split() for line in log.read_text().splitlines()]
    ran = sorted(token for token, _ in lines)
    assert ran == sorted(tokens), "each task ran exactly once"
    hosts = {host for _, host in lines}
    assert hosts <= {rust.name, python.name}, hosts
    print(f"records by worker: { {h: sum(1 for _, x in lines if x == h) for h in hosts} }")
