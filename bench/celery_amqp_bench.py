"""Measures Python Celery on RabbitMQ for bench/amqp.sh; prints one JSON object.

    .venv/bin/python bench/celery_amqp_bench.py --amqp-url amqp://guest:guest@127.0.0.1:5672// \\
        --redis-url redis://127.0.0.1:6379/12 --tasks 20000

Phases, on a queue of its own (deleted at the end):
  1. enqueue N bench.noop with delay(), one call at a time (timed);
  2. drain: `celery worker --pool prefork -c 2` (default settings: prefetch x4, early
     acks) on that queue; drain time is first message received -> last task finished,
     counted in the worker's parent (bench/celery_app.py writes it to Redis).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent


def log(msg):
    print(f"celery-amqp-bench: {msg}", file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672//")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    ap.add_argument("--tasks", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--limit", type=float, default=1800, help="seconds allowed for the drain")
    ap.add_argument("--worker-log", default=None)
    args = ap.parse_args()

    queue = f"celery-amqp-bench-{os.getpid()}"
    done_key = f"bench:amqp:done:{os.getpid()}"
    os.environ.update(BENCH_AMQP_URL=args.amqp_url, BENCH_REDIS_URL=args.redis_url, BENCH_QUEUE=queue)
    sys.path.insert(0, str(HERE))
    from celery_amqp_app import app  # noqa: E402

    noop = app.tasks["bench.noop"]
    r = redis.Redis.from_url(args.redis_url)
    r.delete(done_key)

    log(f"enqueue {args.tasks} bench.noop one delay() at a time -> {queue}")
    noop.delay()  # declares the queue and opens the connection, untimed
    started = time.perf_counter()
    for _ in range(args.tasks - 1):
        noop.delay()
    enqueue_s = time.perf_counter() - started

    log(f"drain with celery worker --pool prefork -c {args.concurrency}")
    env = {**os.environ, "BENCH_EXPECT": str(args.tasks), "BENCH_DONE_KEY": done_key,
           "PYTHONPATH": str(HERE)}
    out = open(args.worker_log, "ab") if args.worker_log else subprocess.DEVNULL
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_amqp_app", "worker", "--pool", "prefork",
         "-c", str(args.concurrency), "-Q", queue, "-l", "warning",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=HERE, env=env, stdout=out, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + args.limit
    try:
        while (raw := r.get(done_key)) is None:
            if worker.poll() is not None:
                sys.exit(f"celery-amqp-bench: the worker exited with {worker.returncode}")
            if time.monotonic() > deadline:
                sys.exit("celery-amqp-bench: the drain did not finish in time")
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        r.delete(done_key)
        with app.connection_for_write() as connection:
            connection.default_channel.queue_delete(queue)
            connection.channel().exchange_delete(queue)
    done = json.loads(raw)
    drain_s = done["last"] - done["first"]
    print(json.dumps({
        "tasks": args.tasks,
        "enqueue_single_per_s": round(args.tasks / enqueue_s, 1),
        "drain_per_s": round(args.tasks / drain_s, 1),
        "drain_s": round(drain_s, 3),
        "concurrency": args.concurrency,
    }))


if __name__ == "__main__":
    main()
