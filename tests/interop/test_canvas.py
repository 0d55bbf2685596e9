"""Workflows built by Python Celery (chain, link, link_error, a group callback) and
run by celeriac workers on Redis, alone and hand in hand with a Python worker: each
step's result is passed on exactly as a Python worker would pass it (PROTOCOL.md §4).
"""

import json
import time
import uuid

import pytest
from celery import chain, chord, group
from celery.result import AsyncResult

import tasks
from conftest import REDIS_URL, forget_queue, run_interop

pytestmark = pytest.mark.usefixtures("needs_redis_broker")


def wait_until(check, timeout=20):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def celeriac_queue(rust_worker, queue_name):
    rust_worker(queue=queue_name)
    return queue_name


def test_a_python_chain_runs_on_celeriac(celeriac_queue):
    q = celeriac_queue
    workflow = chain(
        tasks.add.s(1, 2).set(queue=q),
        tasks.add.s(10).set(queue=q),
        tasks.add.s(100).set(queue=q),
    )
    result = workflow.apply_async()
    assert result.get(timeout=30) == 113
    # Every step's meta is readable, and each points at the one before.
    assert result.parent.get(timeout=5) == 13
    assert result.parent.parent.get(timeout=5) == 3
    assert result.parent.parent.state == "SUCCESS"


def test_a_chain_alternates_between_celeriac_and_python_workers(rust_worker, python_worker, queue_name, redis_client):
    rust_q, python_q = f"{queue_name}-rust", f"{queue_name}-py"
    rust_worker(queue=rust_q)
    python_worker(queue=python_q)
    try:
        workflow = chain(
            tasks.add.s(1, 1).set(queue=rust_q),
            tasks.add.s(2).set(queue=python_q),
            tasks.add.s(3).set(queue=rust_q),
            tasks.add.s(4).set(queue=python_q),
        )
        assert workflow.apply_async().get(timeout=45) == 11
    finally:
        forget_queue(redis_client, rust_q)
        forget_queue(redis_client, python_q)


def test_a_failing_step_fails_the_chain_and_calls_the_errback(queue_name, tmp_path, rust_worker):
    q = queue_name
    log = tmp_path / "errback.log"
    log.touch()
    # One worker on the queue, whose record tasks write to the log (with a second one
    # without the log, which of the two ran the errback was a race).
    rust_worker(queue=q, CELERIAC_INTEROP_LOG=log)
    token = f"errback-{uuid.uuid4().hex[:8]}"
    failing = tasks.fail.s("chain broke").set(queue=q)
    failing.link_error(tasks.record.si(token).set(queue=q))
    workflow = chain(failing, tasks.add.s(1).set(queue=q))
    result = workflow.apply_async()
    with pytest.raises(ValueError, match="chain broke"):
        result.get(timeout=30)
    assert result.state == "FAILURE", "the step after the failure is failed too"
    wait_until(lambda: token in log.read_text())
    assert [line.split()[0] for line in log.read_text().splitlines()] == [token], "the errback ran once"


def test_a_link_to_a_group_runs_every_member_on_celeriac(celeriac_queue):
    q = celeriac_queue
    head = tasks.add.s(2, 3).set(queue=q)
    members = group(tasks.add.s(10).set(queue=q), tasks.add.s(20).set(queue=q))
    head.link(members)
    result = head.apply_async()
    assert result.get(timeout=30) == 5
    # The head's children name the group and its members, as a Python worker writes them.
    wait_until(lambda: AsyncResult(result.id, app=tasks.app).children)
    (child,) = AsyncResult(result.id, app=tasks.app).children
    assert sorted(r.get(timeout=30) for r in child.results) == [15, 25]


def test_a_python_chord_runs_on_celeriac_and_the_body_gets_results_in_order(celeriac_queue):
    q = celeriac_queue
    header = [tasks.add.s(i, i).set(queue=q) for i in range(10)]
    result = chord(header, tasks.echo.s("tail").set(queue=q)).apply_async()
    assert result.get(timeout=30) == {"args": [[2 * i for i in range(10)], "tail"], "kwargs": {}}


def test_a_failed_header_task_fails_the_chord_body_with_chord_error(celeriac_queue):
    q = celeriac_queue
    header = [tasks.add.s(1, 1).set(queue=q), tasks.fail.s("header broke").set(queue=q)]
    result = chord(header, tasks.echo.s().set(queue=q)).apply_async()
    # Python's get() re-raises the failed header task's error first, as with Python workers.
    with pytest.raises(ValueError, match="header broke"):
        result.get(timeout=30)
    # The body itself is failed with Celery's ChordError naming the dependency.
    wait_until(lambda: result.state == "FAILURE")
    meta = tasks.app.backend.get_task_meta(result.id)
    assert type(meta["result"]).__name__ == "ChordError", meta
    assert "raised ValueError('header broke')" in str(meta["result"])


def test_a_chord_of_1000_split_between_python_and_celeriac_calls_its_body_once(
    rust_worker, python_worker, queue_name, tmp_path
):
    log = tmp_path / "chord.log"
    log.touch()
    rust_worker(queue=queue_name, CELERIAC_INTEROP_LOG=log)
    python_worker(queue=queue_name, CELERIAC_INTEROP_LOG=log)
    token = f"chord-body-{uuid.uuid4().hex[:8]}"
    header = [tasks.add.s(i, 1).set(queue=queue_name) for i in range(1000)]
    result = chord(header, tasks.record.si(token).set(queue=queue_name)).apply_async()
    assert result.get(timeout=120) == token
    time.sleep(1)  # a second dispatch, if there were one, would land by now
    lines = [line.split() for line in log.read_text().splitlines()]
    assert [t for t, _ in lines] == [token], f"the body ran exactly once: {lines}"


def test_a_celeriac_built_chain_runs_partly_on_a_python_worker(
    interop_bin, rust_worker, python_worker, queue_name, redis_client, tmp_path
):
    """celeriac encodes and sends the workflow (`interop apply`); the steps alternate
    between a Python and a celeriac worker; Python reads the result too."""
    rust_q, python_q = f"{queue_name}-rust", f"{queue_name}-py"
    rust_worker(queue=rust_q)
    python_worker(queue=python_q)
    try:
        workflow = chain(
            tasks.add.s(1, 1).set(queue=python_q),
            tasks.add.s(2).set(queue=rust_q),
            tasks.add.s(3).set(queue=python_q),
        )
        done = run_interop(
            interop_bin, "--broker", REDIS_URL, "--backend", REDIS_URL,
            "apply", json.dumps(workflow), "--wait", "45s", cwd=tmp_path, timeout=90,
        )
        assert done.returncode == 0, done.stderr
        last_id, value = done.stdout.split("\n", 1)
        assert json.loads(value) == 7
        assert AsyncResult(last_id.strip(), app=tasks.app).get(timeout=10) == 7
    finally:
        forget_queue(redis_client, rust_q)
        forget_queue(redis_client, python_q)


def test_a_celeriac_built_chord_has_its_header_run_by_python(
    interop_bin, rust_worker, python_worker, queue_name, redis_client, tmp_path
):
    rust_q, python_q = f"{queue_name}-rust", f"{queue_name}-py"
    rust_worker(queue=rust_q)
    python_worker(queue=python_q)
    try:
        workflow = chord(
            [tasks.add.s(i, i).set(queue=python_q) for i in range(5)],
            tasks.echo.s().set(queue=rust_q),
        )
        done = run_interop(
            interop_bin, "--broker", REDIS_URL, "--backend", REDIS_URL,
            "apply", json.dumps(workflow), "--wait", "45s", cwd=tmp_path, timeout=90,
        )
        assert done.returncode == 0, done.stderr
        body_id, value = done.stdout.split("\n", 1)
        expected = {"args": [[0, 2, 4, 6, 8]], "kwargs": {}}
        assert json.loads(value) == expected
        assert AsyncResult(body_id.strip(), app=tasks.app).get(timeout=10) == expected
    finally:
        forget_queue(redis_client, rust_q)
        forget_queue(redis_client, python_q)


def test_python_map_starmap_and_chunks_run_on_celeriac(celeriac_queue):
    q = celeriac_queue
    assert tasks.echo.map([1, 2]).apply_async(queue=q).get(timeout=30) == [
        {"args": [1], "kwargs": {}},
        {"args": [2], "kwargs": {}},
    ]
    assert tasks.add.starmap([(1, 2), (3, 4)]).apply_async(queue=q).get(timeout=30) == [3, 7]
    chunked = tasks.add.chunks([(i, i) for i in range(5)], 2).apply_async(queue=q)
    assert chunked.get(timeout=30) == [[0, 2], [4, 6], [8]]


def test_a_python_chord_with_chains_in_its_header_runs_on_celeriac(celeriac_queue):
    q = celeriac_queue
    header = [
        chain(tasks.add.s(1, 1).set(queue=q), tasks.add.s(10).set(queue=q)),
        chain(tasks.add.s(2, 2).set(queue=q), tasks.add.s(100).set(queue=q)),
        tasks.add.s(5, 5).set(queue=q),
    ]
    result = chord(header, tasks.echo.s().set(queue=q)).apply_async()
    assert result.get(timeout=30) == {"args": [[12, 104, 10]], "kwargs": {}}
