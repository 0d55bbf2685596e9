"""Broadcasts (fanout / topic exchanges over Redis PUB/SUB, PROTOCOL.md §2.7) between
Python Celery and celeriac, through the `broadcast` example of celeriac-broker
(target/release/examples/broadcast; scripts/interop.sh builds it).

Each test uses exchange names of its own (a fresh `control_exchange` /
`event_exchange`), so nothing else on the server is received. Not flaky by design:
the celeriac listener prints "subscribed" only after Redis confirmed its PSUBSCRIBE,
and Python publishes after that; in the other direction kombu subscribes lazily, so
celeriac sends numbered messages until Python received one.
"""

import json
import queue
import socket
import subprocess
import threading
import time
import uuid

import pytest
from celery import Celery
from kombu import Connection, Exchange, Queue

from conftest import REDIS_URL, REPO, clean_env

BROADCAST_BIN = REPO / "target" / "release" / "examples" / "broadcast"


@pytest.fixture(scope="session")
def broadcast_bin(redis_client):
    if not BROADCAST_BIN.exists():
        pytest.fail(
            f"{BROADCAST_BIN} is missing: cargo build --release -p celeriac-broker --example broadcast "
            "(scripts/interop.sh does it)",
            pytrace=False,
        )
    return BROADCAST_BIN


def python_app(**conf):
    app = Celery(f"bcast-{uuid.uuid4().hex[:8]}", broker=REDIS_URL)
    app.conf.update(**conf)
    return app


class Listener:
    """`broadcast listen`: subscribed once this returns."""

    def __init__(self, binary, exchange, binding="-", count=1):
        self.process = subprocess.Popen(
            [str(binary), "listen", REDIS_URL, exchange, binding, str(count)],
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        first = self.process.stdout.readline().strip()
        if first != "subscribed":
            self.process.kill()
            raise AssertionError(f"listener did not subscribe: {first!r} {self.process.stderr.read()}")

    def messages(self, timeout=60):
        out, err = self.process.communicate(timeout=timeout)
        assert self.process.returncode == 0, err
        return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_a_python_control_broadcast_reaches_a_celeriac_subscriber(broadcast_bin):
    """`app.control.broadcast('ping')` as `celery inspect ping` sends it."""
    control = f"interop{uuid.uuid4().hex[:10]}"
    app = python_app(control_exchange=control)
    listener = Listener(broadcast_bin, f"{control}.pidbox", "")
    app.control.broadcast("ping", arguments={}, reply=False, destination=["rust@interop"])
    (message,) = listener.messages()
    assert message["exchange"] == f"{control}.pidbox"
    assert message["routing_key"] == ""
    body = message["body"]
    assert body["method"] == "ping"
    assert body["arguments"] == {}
    assert body["destination"] == ["rust@interop"]
    assert "clock" in message["headers"]
    assert message["properties"]["delivery_info"] == {"exchange": f"{control}.pidbox", "routing_key": ""}


def test_python_events_reach_a_celeriac_topic_subscriber(broadcast_bin):
    """Worker events from Python's EventDispatcher, filtered by the binding key."""
    events = f"interopev{uuid.uuid4().hex[:10]}"
    app = python_app(event_exchange=events)
    listener = Listener(broadcast_bin, events, "worker.#", count=2)
    with app.connection_for_write() as conn:
        dispatcher = app.events.Dispatcher(conn, hostname="py@interop", enabled=True)
        dispatcher.send("task-succeeded", uuid="not-for-worker-hash")  # routing key task.succeeded
        dispatcher.send("worker-heartbeat", freq=2.0, active=0, processed=1)
        dispatcher.send("worker-offline")
        dispatcher.close()
    got = listener.messages()
    assert [m["routing_key"] for m in got] == ["worker.heartbeat", "worker.offline"]
    assert [m["body"]["type"] for m in got] == ["worker-heartbeat", "worker-offline"]
    assert got[0]["body"]["hostname"] == "py@interop"
    assert got[0]["body"]["processed"] == 1


def test_celeriac_broadcasts_reach_python(broadcast_bin):
    """celeriac sends events; Python's EventReceiver (as Flower uses it) gets them."""
    events = f"interopev{uuid.uuid4().hex[:10]}"
    app = python_app(event_exchange=events)
    received = queue.Queue()
    stop = threading.Event()

    def receive():
        with app.connection_for_read() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": received.put})
            while not stop.is_set():
                try:
                    for _ in receiver.itercapture(limit=None, timeout=0.2, wakeup=False):
                        if stop.is_set():
                            return
                except socket.timeout:
                    continue

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    try:
        event = None
        deadline = time.monotonic() + 30
        n = 0
        # kombu PSUBSCRIBEs lazily inside its event loop: send until one arrives.
        while event is None and time.monotonic() < deadline:
            n += 1
            body = {
                "type": "worker-heartbeat", "hostname": "rust@interop", "utcoffset": 0, "pid": 1,
                "clock": n, "timestamp": time.time(), "freq": 2.0, "active": 0, "processed": n,
                "loadavg": [0.0, 0.0, 0.0], "sw_ident": "celeriac", "sw_ver": "0.1.0", "sw_sys": "Linux",
            }
            sent = subprocess.run(
                [str(broadcast_bin), "send", REDIS_URL, events, "worker.heartbeat", json.dumps(body)],
                env=clean_env(), capture_output=True, text=True, timeout=60,
            )
            assert sent.returncode == 0, sent.stderr
            try:
                event = received.get(timeout=0.5)
            except queue.Empty:
                pass
        assert event is not None, "Python received no celeriac event within 30 s"
        assert event["type"] == "worker-heartbeat"
        assert event["hostname"] == "rust@interop"
        assert event["sw_ident"] == "celeriac"
        assert 1 <= event["processed"] <= n
    finally:
        stop.set()
        thread.join(timeout=10)


def test_a_celeriac_broadcast_reaches_a_kombu_fanout_consumer(broadcast_bin):
    """A pidbox-style request from celeriac reaches a kombu consumer of a fanout
    exchange (the way a Python worker's pidbox node listens)."""
    name = f"interop{uuid.uuid4().hex[:10]}.pidbox"
    exchange = Exchange(name, type="fanout", durable=False, auto_delete=True)
    bound = Queue(f"{uuid.uuid4()}.{name}", exchange, durable=False, auto_delete=True)
    got = []
    request = {"method": "ping", "arguments": {}, "destination": None, "pattern": None, "matcher": None}
    with Connection(REDIS_URL) as conn:
        with conn.Consumer(bound, callbacks=[lambda body, message: got.append((body, message))],
                           accept=["json"], no_ack=True):
            deadline = time.monotonic() + 30
            while not got and time.monotonic() < deadline:
                sent = subprocess.run(
                    [str(broadcast_bin), "send", REDIS_URL, name, "", json.dumps(request),
                     json.dumps({"clock": 1, "expires": time.time() + 60})],
                    env=clean_env(), capture_output=True, text=True, timeout=60,
                )
                assert sent.returncode == 0, sent.stderr
                try:
                    conn.drain_events(timeout=0.5)
                except socket.timeout:
                    pass
    assert got, "kombu received no celeriac broadcast within 30 s"
    body, message = got[0]
    assert body == request
    assert message.headers["clock"] == 1
    assert message.delivery_info["exchange"] == name
