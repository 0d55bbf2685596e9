"""The real Flower (pip `flower`) watching a celeriac worker on Redis: Flower's own
HTTP API lists the celeriac worker (through remote control and its heartbeats) and
the tasks it finished (through the task events it sent with -E)."""

import json
import socket
import sys
import time
import urllib.request

import pytest

import tasks
from conftest import HERE, REDIS_URL, Process, clean_env

pytestmark = pytest.mark.usefixtures("needs_redis_broker")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_api(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return json.loads(response.read())


def eventually(check, timeout=45, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as error:  # noqa: BLE001 - retried until the deadline
            last = error
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout}s (last error: {last})")


@pytest.fixture
def flower(tmp_path):
    port = free_port()
    process = Process(
        [sys.executable, "-m", "celery", "-A", "tasks", "flower", f"--port={port}", "--address=127.0.0.1"],
        env={
            **clean_env(CELERIAC_BROKER_URL=REDIS_URL, CELERIAC_RESULT_BACKEND=REDIS_URL),
            "PYTHONPATH": str(HERE),
            "FLOWER_UNAUTHENTICATED_API": "true",
        },
        cwd=HERE,
        log_path=tmp_path / "flower.log",
        ready_pattern="Visit me at",
    )
    yield port
    process.stop()


def test_flower_lists_the_celeriac_worker_and_its_tasks(rust_worker, queue_name, flower, task_ids):
    worker = rust_worker(queue=queue_name, CELERIAC_WORKER_SEND_TASK_EVENTS="true")
    ids = []
    for i in range(3):
        result = tasks.app.send_task("interop.add", (i, 10), queue=queue_name, task_id=task_ids("flower"))
        assert result.get(timeout=30) == i + 10
        ids.append(result.id)

    workers = eventually(
        lambda: worker.name in flower_api(flower, "/api/workers?refresh=1") and flower_api(flower, "/api/workers"),
        what="Flower lists the celeriac worker",
    )
    assert worker.name in workers

    def finished():
        seen = flower_api(flower, "/api/tasks")
        done = {i: seen[i] for i in ids if i in seen and seen[i].get("state") == "SUCCESS"}
        return done if len(done) == len(ids) else None

    done = eventually(finished, what="Flower shows the three tasks as SUCCESS")
    for task_id, info in done.items():
        assert info["name"] == "interop.add"
        assert info["worker"] == worker.name
