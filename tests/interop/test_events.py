"""Celery events (PROTOCOL.md §5.1) from celeriac workers, received by Python's
`EventReceiver` (what Flower and `celery events` use) on Redis.

kombu subscribes lazily inside its event loop, so each test first waits for one of
the worker's own heartbeats (sent every 2 s): once that arrived, the receiver is
subscribed and nothing sent later is missed.
"""

import queue
import socket
import threading
import time

import pytest

import tasks

pytestmark = pytest.mark.usefixtures("needs_redis_broker")


class Events:
    """Collects every event Python's EventReceiver gets, in a thread."""

    def __init__(self):
        self.received = queue.Queue()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        with tasks.app.connection_for_read() as conn:
            receiver = tasks.app.events.Receiver(conn, handlers={"*": self.received.put})
            while not self.stop.is_set():
                try:
                    for _ in receiver.itercapture(limit=None, timeout=0.2, wakeup=False):
                        if self.stop.is_set():
                            return
                except socket.timeout:
                    continue

    def wait_for(self, what, match, timeout=30):
        """The first event for which `match(event)` holds; the others are kept in
        `self.seen`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.received.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(event)
            if match(event):
                return event
        raise AssertionError(f"no {what} within {timeout}s; got {[e.get('type') for e in self.seen]}")

    seen = None

    def close(self):
        self.stop.set()
        self.thread.join(timeout=10)


@pytest.fixture
def events():
    collector = Events()
    collector.seen = []
    yield collector
    collector.close()


def test_task_events_from_a_celeriac_worker_reach_python(rust_worker, queue_name, task_ids, events):
    worker = rust_worker(queue=queue_name, CELERIAC_WORKER_SEND_TASK_EVENTS="true")
    heartbeat = events.wait_for(
        "worker heartbeat",
        lambda e: e.get("hostname") == worker.name and e["type"] in ("worker-heartbeat", "worker-online"),
    )
    assert heartbeat["sw_ident"] == "celeriac"
    assert heartbeat["freq"] == 2.0
    assert len(heartbeat["loadavg"]) == 3
    task_id = task_ids("events")
    tasks.app.send_task("interop.add", args=[2, 3], queue=queue_name, task_id=task_id)
    mine = lambda kind: lambda e: e.get("uuid") == task_id and e["type"] == kind  # noqa: E731
    succeeded = events.wait_for("task-succeeded", mine("task-succeeded"))
    kinds = [e["type"] for e in events.seen if e.get("uuid") == task_id]
    assert kinds == ["task-received", "task-started", "task-succeeded"]
    received = next(e for e in events.seen if e.get("uuid") == task_id)
    assert received["name"] == "interop.add"
    # The message's argsrepr (Python's send_task sent the list), as a Python worker
    # reports it.
    assert received["args"] == "[2, 3]"
    assert received["kwargs"] == "{}"
    assert received["hostname"] == worker.name
    assert succeeded["result"] == "5"
    assert succeeded["runtime"] >= 0
    # The receiver's clock handling accepts celeriac's Lamport clock.
    assert succeeded["clock"] > received["clock"]

    # A failure is a task-failed event with Python's repr of the exception.
    failing = task_ids("events-fail")
    tasks.app.send_task("interop.fail", args=["kaboom"], queue=queue_name, task_id=failing)
    failed = events.wait_for("task-failed", lambda e: e.get("uuid") == failing and e["type"] == "task-failed")
    assert failed["exception"] == "ValueError('kaboom')"

    # worker-offline when it stops.
    worker.stop()
    events.wait_for("worker-offline", lambda e: e.get("hostname") == worker.name and e["type"] == "worker-offline")


def test_without_task_events_a_celeriac_worker_sends_only_worker_events(rust_worker, queue_name, task_ids, events):
    worker = rust_worker(queue=queue_name)
    events.wait_for(
        "worker heartbeat",
        lambda e: e.get("hostname") == worker.name and e["type"] in ("worker-heartbeat", "worker-online"),
    )
    task_id = task_ids("no-events")
    result = tasks.app.send_task("interop.add", args=[1, 1], queue=queue_name, task_id=task_id)
    assert result.get(timeout=30) == 2
    worker.stop()
    events.wait_for("worker-offline", lambda e: e.get("hostname") == worker.name and e["type"] == "worker-offline")
    assert not [e for e in events.seen if e.get("uuid") == task_id]
    # `celery control enable_events` would turn them on (tested in Rust on SQLite).
