"""The `interop.*` tasks for a Python Celery worker: the same names, arguments and
results as the celeriac example `examples/interop/main.rs`.

    CELERIAC_BROKER_URL=redis://127.0.0.1:6379/13 celery -A tasks worker -Q celery

Configuration comes from the environment, as for the celeriac worker:
CELERIAC_BROKER_URL (default redis://127.0.0.1:6379/0), CELERIAC_RESULT_BACKEND
(default: the broker URL), CELERIAC_INTEROP_LOG (file of `interop.record`).
"""

import os
import time

from celery import Celery

BROKER_URL = os.environ.get("CELERIAC_BROKER_URL") or "redis://127.0.0.1:6379/0"
RESULT_BACKEND = os.environ.get("CELERIAC_RESULT_BACKEND") or BROKER_URL

app = Celery("interop", broker=BROKER_URL, backend=RESULT_BACKEND)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=1,
    # Never pick up the host's settings by accident.
    task_default_queue="celery",
)


@app.task(name="interop.add")
def add(x, y):
    """x + y (ints stay ints, floats work)."""
    return x + y


@app.task(name="interop.echo")
def echo(*args, **kwargs):
    """The arguments as received."""
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="interop.sleep")
def sleep(seconds):
    """Sleeps, returns `seconds` as a float."""
    time.sleep(seconds)
    return float(seconds)


@app.task(name="interop.fail")
def fail(message):
    """Fails with ValueError(message)."""
    raise ValueError(message)


@app.task(bind=True, name="interop.flaky", max_retries=100)
def flaky(self, token, failures):
    """Retries `failures` times (countdown 0.1 s), then returns the number of attempts."""
    attempt = self.request.retries + 1
    if self.request.retries < failures:
        raise self.retry(
            exc=RuntimeError(f"flaky {token}: attempt {attempt} of {failures + 1}"),
            countdown=0.1,
        )
    return attempt


def _append_record(token, hostname):
    path = os.environ.get("CELERIAC_INTEROP_LOG")
    if not path:
        raise RuntimeError("CELERIAC_INTEROP_LOG is not set")
    line = f"{token} {hostname}\n".encode()
    # O_APPEND and one write per line: lines of concurrent workers never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return token


@app.task(bind=True, name="interop.record")
def record(self, token):
    """Appends `token hostname` to $CELERIAC_INTEROP_LOG."""
    return _append_record(token, self.request.hostname)


@app.task(bind=True, name="interop.record_late", acks_late=True)
def record_late(self, token):
    """Like interop.record, acknowledged after it ran."""
    return _append_record(token, self.request.hostname)
