"""Results through the Redis result backend, both ways, without needing celeriac's
Redis broker: the celeriac worker takes its tasks from a SQLite file and stores the
results in Redis; Python Celery reads them (and writes results celeriac reads).
"""

import json
import threading
import time

import pytest
from celery.result import AsyncResult

import tasks
from conftest import REDIS_URL, meta_key, run_interop, wait_for_subscriber


@pytest.fixture
def sqlite_rust_worker(rust_worker, tmp_path):
    """A celeriac worker on a SQLite broker storing results in Redis, and a `call`
    function sending it tasks through the same file."""
    broker = f"sqlite://{tmp_path}/broker.db"
    worker = rust_worker(queue="celery", broker=broker)

    def call(interop_bin, name, args, task_id):
        done = run_interop(
            interop_bin,
            "--broker", broker, "--backend", REDIS_URL,
            "call", name, "--args", json.dumps(args), "--id", task_id,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == task_id
        return task_id

    worker.call = call
    return worker


def test_python_get_returns_values_stored_by_celeriac(
    interop_bin, sqlite_rust_worker, task_ids, redis_client
):
    cases = [
        ("interop.add", [2, 3], 5),
        ("interop.add", [1.5, 2], 3.5),
        ("interop.echo", [1, "two", None], {"args": [1, "two", None], "kwargs": {}}),
        ("interop.sleep", [0.05], 0.05),
    ]
    for name, args, expected in cases:
        task_id = sqlite_rust_worker.call(interop_bin, name, args, task_ids("value"))
        value = AsyncResult(task_id, app=tasks.app).get(timeout=30)
        assert value == expected, name
        assert type(value) is type(expected), f"{name}: {value!r}"

    # What was stored is Celery's shape, with Celery's default expiry.
    raw = redis_client.get(meta_key(task_id))
    meta = json.loads(raw)
    celery_keys = ["status", "result", "traceback", "children", "date_done", "task_id"]
    extended_keys = celery_keys[:5] + ["name", "args", "kwargs", "worker", "retries", "queue", "task_id"]
    assert list(meta) in (celery_keys, extended_keys), list(meta)
    assert meta["status"] == "SUCCESS" and meta["task_id"] == task_id
    if "name" in meta:  # result_extended, as a Python worker writes it
        assert meta["name"] == "interop.sleep" and meta["args"] == [0.05] and meta["queue"] == "celery"
    assert 86000 < redis_client.ttl(meta_key(task_id)) <= 86400


def test_python_get_is_woken_by_a_celeriac_result(interop_bin, sqlite_rust_worker, task_ids, redis_client):
    task_id = task_ids("woken")
    result = AsyncResult(task_id, app=tasks.app)
    outcome = {}

    def wait():
        try:
            outcome["value"] = result.get(timeout=30)
        except Exception as error:  # reported below
            outcome["error"] = error
        outcome["at"] = time.monotonic()

    waiter = threading.Thread(target=wait)
    waiter.start()
    wait_for_subscriber(redis_client, meta_key(task_id))
    sent = time.monotonic()
    sqlite_rust_worker.call(interop_bin, "interop.add", [20, 22], task_id)
    waiter.join(timeout=40)
    assert outcome.get("value") == 42, outcome
    assert outcome["at"] - sent < 10


def test_python_get_raises_a_celeriac_failure_with_its_message(interop_bin, sqlite_rust_worker, task_ids):
    task_id = sqlite_rust_worker.call(interop_bin, "interop.fail", ["kaboom from rust"], task_ids("fail"))
    result = AsyncResult(task_id, app=tasks.app)
    with pytest.raises(Exception) as raised:
        result.get(timeout=30)
    assert str(raised.value) == "kaboom from rust"
    assert type(raised.value).__name__ == "ValueError"
    assert result.state == "FAILURE"


def test_python_sees_celeriac_retries_end_in_success(interop_bin, sqlite_rust_worker, task_ids):
    task_id = sqlite_rust_worker.call(interop_bin, "interop.flaky", ["flaky-rust", 2], task_ids("flaky"))
    result = AsyncResult(task_id, app=tasks.app)
    assert result.get(timeout=30) == 3
    assert result.state == "SUCCESS"


@pytest.fixture
def celeriac_reader(interop_bin, tmp_path):
    """Reads results with the interop binary (`result --wait`), as a background process."""
    import subprocess

    from conftest import clean_env

    started = []

    def start(task_id, wait="30s"):
        process = subprocess.Popen(
            # The broker is not used; each reader gets its own file.
            [str(interop_bin), "--log", "warn", "--broker", f"sqlite://{tmp_path}/unused-{len(started)}.db",
             "--backend", REDIS_URL, "result", task_id, "--wait", wait],
            cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_celeriac_wait_is_woken_by_a_python_store(celeriac_reader, task_ids, redis_client):
    task_id = task_ids("py-store")
    reader = celeriac_reader(task_id)
    wait_for_subscriber(redis_client, meta_key(task_id))
    stored = time.monotonic()
    tasks.app.backend.store_result(task_id, {"x": [1, 2], "y": "z"}, "SUCCESS")
    stdout, stderr = reader.communicate(timeout=40)
    woken = time.monotonic() - stored
    assert reader.returncode == 0, stderr
    meta = json.loads(stdout)
    assert meta["status"] == "SUCCESS" and meta["result"] == {"x": [1, 2], "y": "z"}
    # The safety re-read runs every 5 s: anything well below is the notification.
    assert woken < 3, f"woken {woken:.2f}s after the store"


def test_celeriac_reads_a_python_failure(celeriac_reader, task_ids):
    task_id = task_ids("py-fail")
    tasks.app.backend.store_result(task_id, ValueError("py boom"), "FAILURE", traceback="Traceback: py boom")
    reader = celeriac_reader(task_id, wait="5s")
    stdout, stderr = reader.communicate(timeout=30)
    assert reader.returncode == 0, stderr
    meta = json.loads(stdout)
    assert meta["status"] == "FAILURE"
    assert meta["result"] == {"exc_type": "ValueError", "exc_message": ["py boom"], "exc_module": "builtins"}
    assert meta["traceback"] == "Traceback: py boom"


def test_a_python_success_is_never_overwritten_by_celeriac(interop_bin, sqlite_rust_worker, task_ids, redis_client):
    task_id = task_ids("kept")
    tasks.app.backend.store_result(task_id, 7, "SUCCESS")
    before = redis_client.get(meta_key(task_id))
    # The same task id runs again on celeriac and fails: the SUCCESS stays.
    sqlite_rust_worker.call(interop_bin, "interop.fail", ["must not replace"], task_id)
    deadline = time.monotonic() + 10
    log = sqlite_rust_worker.output
    while "must not replace" not in log() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # let the (refused) store happen after the failure is logged
    assert redis_client.get(meta_key(task_id)) == before
    assert AsyncResult(task_id, app=tasks.app).get(timeout=5) == 7


def test_celeriac_reads_results_of_a_python_worker(python_worker, queue_name, celeriac_reader, task_ids):
    python_worker(queue=queue_name)
    ok = tasks.app.send_task("interop.add", (2, 3), queue=queue_name, task_id=task_ids("py-worker"))
    failed = tasks.app.send_task("interop.fail", ("python says no",), queue=queue_name,
                                 task_id=task_ids("py-worker-fail"))
    readers = [celeriac_reader(ok.id), celeriac_reader(failed.id)]
    metas = []
    for reader in readers:
        stdout, stderr = reader.communicate(timeout=40)
        assert reader.returncode == 0, stderr
        metas.append(json.loads(stdout))
    assert metas[0]["status"] == "SUCCESS" and metas[0]["result"] == 5
    assert metas[1]["status"] == "FAILURE"
    assert metas[1]["result"]["exc_type"] == "ValueError"
    assert metas[1]["result"]["exc_message"] == ["python says no"]


def test_celeriac_async_result_get_takes_python_values_and_failures(interop_bin, tmp_path, task_ids, redis_client):
    """`interop call --wait` is `AsyncResult::get`: sent to a queue nobody consumes, the
    result comes from Python, and the wait is woken by its publish."""
    import subprocess

    from conftest import clean_env

    def call(task_id):
        return subprocess.Popen(
            [str(interop_bin), "--log", "warn", "--broker", f"sqlite://{tmp_path}/{task_id}.db",
             "--backend", REDIS_URL, "call", "interop.add", "--args", "[1, 2]", "--id", task_id,
             "--wait", "30s"],
            cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    ok_id, fail_id = task_ids("get-ok"), task_ids("get-fail")
    ok, fail = call(ok_id), call(fail_id)
    wait_for_subscriber(redis_client, meta_key(ok_id))
    wait_for_subscriber(redis_client, meta_key(fail_id))
    stored = time.monotonic()
    tasks.app.backend.store_result(ok_id, 99, "SUCCESS")
    tasks.app.backend.store_result(fail_id, ValueError("python says no"), "FAILURE")

    stdout, stderr = ok.communicate(timeout=40)
    assert ok.returncode == 0, stderr
    assert stdout.split() == [ok_id, "99"]
    assert time.monotonic() - stored < 3, "woken by the notification, not the 5 s re-read"

    stdout, stderr = fail.communicate(timeout=40)
    assert fail.returncode != 0
    assert stdout.strip() == fail_id
    assert 'ValueError("python says no")' in stderr, stderr
