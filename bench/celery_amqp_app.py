"""bench/celery_app.py with its broker on RabbitMQ (BENCH_AMQP_URL); the result
backend and the drain bookkeeping stay on BENCH_REDIS_URL. Used by
bench/celery_amqp_bench.py and bench/amqp.sh."""

import os

from celery_app import app  # noqa: F401  (the tasks register on import)

app.conf.broker_url = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
