"""Fixtures of the interop suite: Redis, the celeriac `interop` example binary, and
celeriac / Python Celery workers run as subprocesses.

Environment:
  CELERIAC_INTEROP_REDIS_URL  Redis for broker and results (default redis://127.0.0.1:6379/13;
                              every test uses its own task ids and queue names, nothing is flushed)
  CELERIAC_INTEROP_BIN        the interop binary (default target/release/examples/interop)
  CELERIAC_REQUIRE_SERVICES=1 fail instead of skipping when Redis does not answer
"""

import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest
import redis

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
REDIS_URL = os.environ.get("CELERIAC_INTEROP_REDIS_URL") or "redis://127.0.0.1:6379/13"
INTEROP_BIN = pathlib.Path(
    os.environ.get("CELERIAC_INTEROP_BIN") or REPO / "target" / "release" / "examples" / "interop"
)
REQUIRED = os.environ.get("CELERIAC_REQUIRE_SERVICES") == "1"

# The Python side (tasks.app) talks to the same Redis as the celeriac processes.
os.environ["CELERIAC_BROKER_URL"] = REDIS_URL
os.environ["CELERIAC_RESULT_BACKEND"] = REDIS_URL

import tasks  # noqa: E402  (reads the variables above)

# What celeriac_broker answers for a scheme it was built without.
NO_REDIS_BROKER = re.compile(r"not built into this version|expected sqlite://")


def meta_key(task_id):
    """Celery's result key (no global key prefix in this suite)."""
    return f"celery-task-meta-{task_id}"


def clean_env(**extra):
    """The environment for a subprocess: no inherited CELERIAC_* settings, no
    backtraces in expected failures, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
    env["RUST_BACKTRACE"] = "0"
    env.pop("RUST_LOG", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture(scope="session")
def redis_client():
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as error:
        message = f"Redis does not answer at {REDIS_URL}: {error}"
        if REQUIRED:
            pytest.fail(f"{message} and CELERIAC_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip(message)
    return client


@pytest.fixture(scope="session")
def interop_bin():
    if not INTEROP_BIN.exists():
        pytest.fail(
            f"{INTEROP_BIN} is missing: cargo build --release --example interop "
            "(scripts/interop.sh does it)",
            pytrace=False,
        )
    return INTEROP_BIN


@pytest.fixture(scope="session")
def redis_broker_missing(interop_bin, redis_client, tmp_path_factory):
    """None if celeriac's broker speaks Redis, else the reason it does not (what
    `interop queues --broker redis://...` answers)."""
    cwd = tmp_path_factory.mktemp("broker-probe")
    probe = subprocess.run(
        [str(interop_bin), "--log", "error", "queues", "--broker", REDIS_URL],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = (probe.stdout + probe.stderr).strip()
    if probe.returncode != 0 and NO_REDIS_BROKER.search(output):
        last = [line for line in output.splitlines() if line.strip()][-1]
        return f"celeriac_broker has no Redis support yet ({last.strip()})"
    return None


@pytest.fixture
def needs_redis_broker(redis_broker_missing):
    if redis_broker_missing:
        pytest.skip(redis_broker_missing)


@pytest.fixture
def task_ids(redis_client):
    """Makes unique task ids; their result keys are deleted after the test."""
    made = []

    def make(label="t"):
        task_id = f"interop-{label}-{uuid.uuid4()}"
        made.append(task_id)
        return task_id

    yield make
    if made:
        redis_client.delete(*[meta_key(i) for i in made])


@pytest.fixture
def queue_name(redis_client):
    """A queue no other test uses; its kombu keys are deleted after the test."""
    name = f"interop-{uuid.uuid4().hex[:12]}"
    yield name
    forget_queue(redis_client, name)


def forget_queue(redis_client, name):
    """Deletes what kombu and celeriac keep about queue `name`: its lists, its
    binding tables, its members in other exchanges' binding tables (kombu's member
    `routing_key\x06\x16pattern\x06\x16queue`) and celeriac's queue registry entry."""
    sep = "\x06\x16"
    lists = [name] + [f"{name}{sep}{p}" for p in range(1, 10)]
    tables = [f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}"]
    redis_client.delete(*lists, *tables)
    for table in redis_client.scan_iter(match="_kombu.binding*", count=1000):
        if redis_client.type(table) != b"set":
            continue
        members = [m for m in redis_client.smembers(table) if m.decode(errors="replace").endswith(f"{sep}{name}")]
        if members:
            redis_client.srem(table, *members)
    redis_client.srem("celeriac.queues", name)


def run_interop(interop_bin, *args, env=None, cwd=None, timeout=60):
    """Runs the interop binary to completion; returns the CompletedProcess."""
    return subprocess.run(
        [str(interop_bin), "--log", "warn", *args],
        cwd=cwd or tempfile.gettempdir(),
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Process:
    """A long-running subprocess with its output in a log file, stopped with SIGTERM
    (then SIGKILL) by its own pid."""

    def __init__(self, argv, env, cwd, log_path, ready_pattern, ready_timeout=60):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.process = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + ready_timeout
        while ready_pattern not in self.output():
            if self.process.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited with {self.process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{argv[0]} not ready within {ready_timeout}s:\n{self.output()}")
            time.sleep(0.05)

    def output(self):
        return pathlib.Path(self.log_path).read_text(errors="replace")

    def stop(self, timeout=30):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.close()
        return self.process.returncode


@pytest.fixture
def rust_worker(interop_bin, redis_client, tmp_path, request):
    """Starts celeriac `interop worker` processes: `rust_worker(queue=..., broker=...)`.
    Defaults: consume `celery`, broker and results on REDIS_URL. Stopped after the test;
    their logs are printed when the test failed."""
    started = []

    def start(queue="celery", broker=REDIS_URL, backend=REDIS_URL, concurrency=4, **env):
        name = f"rust-{uuid.uuid4().hex[:8]}@interop"
        log = tmp_path / f"{name}.log"
        process = Process(
            [str(interop_bin), "--log", "info", "worker", "-Q", queue, "-c", str(concurrency), "-n", name],
            env=clean_env(CELERIAC_BROKER_URL=broker, CELERIAC_RESULT_BACKEND=backend, **env),
            cwd=tmp_path,
            log_path=log,
            ready_pattern="celeriac worker ",
        )
        process.name = name
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        for process in started:
            sys.stderr.write(f"\n--- {process.name} ---\n{process.output()}\n")


@pytest.fixture
def python_worker(redis_client, tmp_path, request):
    """Starts Python Celery workers running tests/interop/tasks.py on REDIS_URL:
    `python_worker(queue=...)`. Stopped after the test."""
    started = []

    def start(queue="celery", **env):
        name = f"py-{uuid.uuid4().hex[:8]}@interop"
        log = tmp_path / f"{name}.log"
        process = Process(
            [
                sys.executable, "-m", "celery", "-A", "tasks", "worker",
                "-Q", queue, "-n", name, "-P", "threads", "-c", "4", "-l", "info",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
            ],
            env={
                **clean_env(CELERIAC_BROKER_URL=REDIS_URL, CELERIAC_RESULT_BACKEND=REDIS_URL, **env),
                "PYTHONPATH": str(HERE),
            },
            cwd=HERE,
            log_path=log,
            ready_pattern=" ready.",
        )
        process.name = name
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        for process in started:
            sys.stderr.write(f"\n--- {process.name} ---\n{process.output()}\n")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Exposes each phase's report to fixtures (`request.node.rep_call`)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def wait_for_subscriber(redis_client, channel, timeout=20):
    """Waits until someone subscribes to `channel`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dict(redis_client.pubsub_numsub(channel)).get(channel.encode(), 0) > 0:
            return
        time.sleep(0.01)
    raise AssertionError(f"nobody subscribed to {channel} within {timeout}s")
