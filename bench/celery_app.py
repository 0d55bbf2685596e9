"""The Python Celery side of the side-by-side benchmark (see bench/compare.sh).

Default Celery settings except what the workload defines: JSON (the default), broker
and result backend on BENCH_REDIS_URL, the default queue BENCH_QUEUE.

Tasks:
  bench.noop    no-op, results ignored (enqueue and drain)
  bench.noop_r  no-op, result stored (drain with results stored)
  bench.echo    no-op, result stored (round trip: delay().get())
  bench.short   mixed workload: records its wait (now - sent_at) in BENCH_WAITS_KEY,
                then sleeps 1 ms
  bench.long    mixed workload: sleeps 200 ms, records [start, end] in BENCH_LONG_KEY

Drain timing costs the tasks nothing: a custom Request class counts completions in
the worker's *parent* process (Request.on_success runs there for the prefork pool),
notes the time the first message was received and, when BENCH_EXPECT tasks are done,
writes {"first": t0, "last": t1, "count": n} (Unix seconds) to the Redis key
BENCH_DONE_KEY. The worker_ready signal writes the key BENCH_READY_KEY.
"""

import json
import os
import time

import redis
from celery import Celery, Task, signals
from celery.worker.request import Request

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
QUEUE = os.environ.get("BENCH_QUEUE", "celery-bench")
EXPECT = int(os.environ.get("BENCH_EXPECT", "0") or 0)
DONE_KEY = os.environ.get("BENCH_DONE_KEY", "bench:done")
READY_KEY = os.environ.get("BENCH_READY_KEY", "bench:ready")
WAITS_KEY = os.environ.get("BENCH_WAITS_KEY", "bench:mixed:waits")
LONG_KEY = os.environ.get("BENCH_LONG_KEY", "bench:mixed:long")

app = Celery("celeriac_bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.task_default_queue = QUEUE
# Only silences a deprecation warning at worker start; no effect on the benchmark.
app.conf.broker_connection_retry_on_startup = True

_client = None
_state = {"first": None, "count": 0}


def _redis():
    global _client
    if _client is None:
        _client = redis.Redis.from_url(REDIS_URL)
    return _client


def _finished():
    _state["count"] += 1
    if EXPECT and _state["count"] == EXPECT:
        _redis().set(
            DONE_KEY,
            json.dumps({"first": _state["first"], "last": time.time(), "count": _state["count"]}),
        )


class CountingRequest(Request):
    """Counts finished tasks in the worker's parent process.

    The worker subclasses this per task (celery.worker.request.create_request_cls)
    and overrides on_success without calling up, so the count wraps the bound
    callback on the instance: execute_using_pool passes `callback=self.on_success`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if _state["first"] is None:
            _state["first"] = time.time()
        callback = self.on_success

        def on_success(failed__retval__runtime, **kw):
            callback(failed__retval__runtime, **kw)
            _finished()

        self.on_success = on_success


class CountingTask(Task):
    Request = CountingRequest


@app.task(name="bench.noop", base=CountingTask, ignore_result=True)
def noop():
    return None


@app.task(name="bench.noop_r", base=CountingTask, ignore_result=False)
def noop_r():
    return None


@app.task(name="bench.echo", ignore_result=False)
def echo():
    return None


_clients = {}


def _own_redis():
    """A client per process (a prefork child must not share its parent's socket)."""
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = redis.Redis.from_url(REDIS_URL)
    return _clients[pid]


@app.task(name="bench.short", ignore_result=True)
def short(sent_at):
    _own_redis().rpush(WAITS_KEY, time.time() - sent_at)
    time.sleep(0.001)


@app.task(name="bench.long", ignore_result=True)
def long(sent_at):
    start = time.time()
    time.sleep(0.2)
    _own_redis().rpush(LONG_KEY, json.dumps([start - sent_at, start, time.time()]))


@signals.worker_ready.connect
def _ready(**_kwargs):
    _redis().set(READY_KEY, str(time.time()))
