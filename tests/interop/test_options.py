"""Options a Python Celery client sets, honoured by the celeriac worker on Redis:
countdown and eta (never run early), expires (an expired message is not run, its
result is REVOKED), priority (kombu's priority steps: with the queue filled before
the worker starts, higher-priority messages sent later are consumed first) and
compression (`compression='gzip'`, kombu's zlib codec). Each test
uses its own queue. Skipped (with the reason) while celeriac_broker has no Redis
support.
"""

import datetime
import time

import celery.exceptions
import pytest

import tasks

pytestmark = pytest.mark.usefixtures("needs_redis_broker")


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


def done_at(result):
    """The result's date_done as an aware UTC datetime."""
    date_done = result.date_done
    if isinstance(date_done, str):
        date_done = datetime.datetime.fromisoformat(date_done)
    if date_done.tzinfo is None:
        date_done = date_done.replace(tzinfo=datetime.timezone.utc)
    return date_done


def records(log):
    """Tokens in `log` in the order they ran."""
    return [line.split()[0] for line in log.read_text().splitlines() if line.strip()]


@pytest.fixture
def record_log(tmp_path):
    log = tmp_path / "records.log"
    log.touch()
    return log


def test_countdown_from_python_never_runs_early(rust_worker, queue_name, task_ids, record_log):
    rust_worker(queue=queue_name, CELERIAC_INTEROP_LOG=record_log)
    before = utcnow()
    result = tasks.app.send_task("interop.record", ("cd",), queue=queue_name, countdown=2,
                                 task_id=task_ids("countdown"))
    assert result.get(timeout=30) == "cd"
    ran = done_at(result)
    assert ran >= before + datetime.timedelta(seconds=2), f"ran at {ran}, sent at {before} with countdown 2"
    assert ran < before + datetime.timedelta(seconds=8), f"ran late: {ran} (sent {before})"
    assert records(record_log) == ["cd"]


def test_eta_from_python_never_runs_early(rust_worker, queue_name, task_ids, record_log):
    rust_worker(queue=queue_name, CELERIAC_INTEROP_LOG=record_log)
    eta = utcnow() + datetime.timedelta(seconds=2.5)
    result = tasks.app.send_task("interop.record", ("eta",), queue=queue_name, eta=eta,
                                 task_id=task_ids("eta"))
    assert result.get(timeout=30) == "eta"
    ran = done_at(result)
    assert ran >= eta, f"ran at {ran}, eta {eta}"
    assert ran < eta + datetime.timedelta(seconds=6), f"ran late: {ran} (eta {eta})"
    assert records(record_log) == ["eta"]


def test_expires_in_the_past_is_revoked_not_run(rust_worker, queue_name, task_ids, record_log):
    rust_worker(queue=queue_name, CELERIAC_INTEROP_LOG=record_log)
    expired = tasks.app.send_task("interop.record", ("expired",), queue=queue_name,
                                  expires=utcnow() - datetime.timedelta(seconds=30),
                                  task_id=task_ids("expired"))
    # A task sent after it, on the same queue: once it ran, the expired one was seen.
    after = tasks.app.send_task("interop.record", ("after",), queue=queue_name, task_id=task_ids("after"))
    assert after.get(timeout=30) == "after"
    with pytest.raises(celery.exceptions.TaskRevokedError):
        expired.get(timeout=30)
    assert expired.state == "REVOKED"
    assert records(record_log) == ["after"], "the expired task did not run"


def test_a_short_expiry_passed_while_queued_is_revoked_not_run(rust_worker, queue_name, task_ids,
                                                               record_log):
    short = tasks.app.send_task("interop.record", ("short",), queue=queue_name, expires=1,
                                task_id=task_ids("short"))
    kept = tasks.app.send_task("interop.record", ("kept",), queue=queue_name, expires=120,
                               task_id=task_ids("kept"))
    time.sleep(1.5)
    rust_worker(queue=queue_name, CELERIAC_INTEROP_LOG=record_log)
    assert kept.get(timeout=30) == "kept"
    with pytest.raises(celery.exceptions.TaskRevokedError):
        short.get(timeout=30)
    assert short.state == "REVOKED"
    assert records(record_log) == ["kept"], "the expired task did not run"


def test_python_priorities_sent_later_are_consumed_first(rust_worker, queue_name, task_ids, record_log):
    """kombu on Redis: priority 0 is served first, steps 0 / 3 / 6 / 9. The queue is
    filled before the worker starts, lowest priority first."""
    sent = []
    for priority in (9, 6, 3, 0):
        for i in range(3):
            token = f"p{priority}-{i}"
            sent.append(tasks.app.send_task("interop.record", (token,), queue=queue_name, priority=priority,
                                            task_id=task_ids(f"pri{priority}")))
    rust_worker(queue=queue_name, concurrency=1, CELERIAC_INTEROP_LOG=record_log)
    for result in sent:
        result.get(timeout=30)
    ran = records(record_log)
    assert sorted(ran) == sorted(r.get() for r in sent), "each ran once"
    by_priority = [int(token[1]) for token in ran]
    assert by_priority == sorted(by_priority), f"consumed by priority (0 first): {ran}"
    # Within a priority, first in first out.
    for priority in (0, 3, 6, 9):
        same = [token for token in ran if token.startswith(f"p{priority}-")]
        assert same == [f"p{priority}-{i}" for i in range(3)], same


def test_a_task_compressed_by_python_runs(rust_worker, queue_name, task_ids):
    # task_compression='gzip' (kombu's zlib codec, header `compression:
    # application/x-gzip`), with a body worth compressing.
    rust_worker(queue=queue_name)
    text = "celeriac " * 20_000
    result = tasks.app.send_task("interop.echo", (text,), queue=queue_name, compression="gzip",
                                 task_id=task_ids("compressed"))
    assert result.get(timeout=30) == {"args": [text], "kwargs": {}}
