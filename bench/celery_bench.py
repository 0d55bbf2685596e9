"""Measures Python Celery on Redis for bench/compare.sh; prints one JSON object.

    .venv/bin/python bench/celery_bench.py --redis-url redis://127.0.0.1:6379/12 --tasks 20000

Phases (the Redis db is expected to be dedicated to the benchmark; this script
deletes only its own keys):
  1. enqueue N bench.noop with delay(), one call at a time (timed) -> queue Q;
  2. enqueue N bench.noop with group(...).apply_async() in chunks of --batch, Celery's
     closest thing to a batched publish (timed) -> queue Q-batch, deleted after;
  3. drain: `celery worker --pool prefork -c 2` (default settings) on Q; drain time is
     first message received -> last task finished, counted in the worker's parent
     (see bench/celery_app.py); the time from process start is reported too;
     peak RSS of the worker = parent + pool children, summed;
  4. drain with results stored (--with-results): N bench.noop_r prefilled by group,
     then the same as 3;
  5. round trip: a fresh worker on Q-rt; its idle RSS once ready, then --warmup
     untimed and --round-trips timed sequential echo.delay().get().

With --mixed N only the mixed workload runs: one `celery worker --pool prefork
-c --mixed-concurrency` (default 4, the slots celeriac's side has in all) on the
queues short-task and long-task; N tasks sent one apply_async at a time at --mixed-rate
per second (default 100), every 10th a 200 ms bench.long on long-task, the others a
1 ms bench.short on short-task; reported: the short tasks' wait (send -> start).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent


def log(msg):
    print(f"celery-bench: {msg}", file=sys.stderr, flush=True)


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    rank = round((p / 100.0) * (len(sorted_values) - 1))
    return sorted_values[min(rank, len(sorted_values) - 1)]


def children_of(pid):
    """Direct children of pid (all threads), from /proc."""
    kids = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        for t in task_dir.iterdir():
            try:
                kids += [int(c) for c in (t / "children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return kids


def proc_tree(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children_of(p)
    return out


def status_kb(pid, field):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def pss_kb(pid):
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class RssSampler:
    """Samples a process tree every 100 ms: peak of the summed VmRSS and PSS; the sum
    of the per-process VmHWM at the last sample."""

    def __init__(self, pid):
        self.pid = pid
        self.peak_rss_kb = 0
        self.peak_pss_kb = 0
        self.hwm_sum_kb = 0
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self):
        pids = proc_tree(self.pid)
        rss = sum(status_kb(p, "VmRSS") for p in pids)
        hwm = sum(status_kb(p, "VmHWM") for p in pids)
        pss = sum(pss_kb(p) for p in pids)
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        self.peak_pss_kb = max(self.peak_pss_kb, pss)
        if hwm:
            self.hwm_sum_kb = max(self.hwm_sum_kb, hwm)
        self.processes = max(self.processes, len(pids))
        return rss, pss

    def _run(self):
        while not self._stop.wait(0.1):
            self.sample()

    def stop(self):
        self._stop.set()
        self._thread.join()
        return {
            "peak_rss_sum_mb": round(self.peak_rss_kb / 1024, 1),
            "peak_pss_sum_mb": round(self.peak_pss_kb / 1024, 1),
            "hwm_sum_mb": round(self.hwm_sum_kb / 1024, 1),
            "processes": self.processes,
        }


class Worker:
    """A `celery worker --pool prefork -c N` subprocess on one queue."""

    def __init__(self, args, queue, expect, done_key, ready_key, concurrency=None):
        env = dict(os.environ)
        env.update(
            BENCH_REDIS_URL=args.redis_url,
            BENCH_QUEUE=queue,
            BENCH_EXPECT=str(expect),
            BENCH_DONE_KEY=done_key,
            BENCH_READY_KEY=ready_key,
            PYTHONPATH=str(HERE) + os.pathsep + env.get("PYTHONPATH", ""),
        )
        celery = Path(sys.executable).parent / "celery"
        cmd = [
            str(celery), "-A", "celery_app", "worker", "--pool", "prefork",
            "-c", str(concurrency or args.concurrency), "-Q", queue, "--loglevel", "WARNING",
            "-n", f"bench-{os.getpid()}-{queue}@%h",
        ]
        self.log = open(args.worker_log, "ab") if args.worker_log else subprocess.DEVNULL
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, env=env, cwd=str(HERE), stdout=self.log, stderr=self.log)
        self.rss = RssSampler(self.proc.pid)

    def stop(self):
        rss = self.rss.stop()
        pids = proc_tree(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # warm shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log(f"worker {self.proc.pid} ignored SIGTERM for 30 s; killing it and its pool")
                for p in pids:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.wait()
        if self.log is not subprocess.DEVNULL:
            self.log.close()
        return rss


def wait_key(r, key, what, limit, proc=None, progress=None):
    start = time.time()
    while True:
        value = r.get(key)
        if value is not None:
            return value
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"celery-bench: the worker exited (status {proc.returncode}) during {what}")
        if time.time() - start > limit:
            raise SystemExit(f"celery-bench: {what} did not finish within {limit} s")
        if progress:
            progress()
        time.sleep(0.01)


def enqueue_group(sig, n, batch, queue):
    from celery import group

    left = n
    while left > 0:
        k = min(left, batch)
        group(sig.clone() for _ in range(k)).apply_async(queue=queue)
        left -= k


def drain(args, r, queue, n, label):
    done_key = f"bench:done:{queue}"
    ready_key = f"bench:ready:{queue}"
    r.delete(done_key, ready_key)
    log(f"{label}: draining {n} tasks from {queue} with prefork -c {args.concurrency}")
    w = Worker(args, queue, n, done_key, ready_key)
    raw = wait_key(r, done_key, label, args.limit, proc=w.proc)
    rss = w.stop()
    done = json.loads(raw)
    if r.llen(queue) != 0:
        raise SystemExit(f"celery-bench: {queue} still holds {r.llen(queue)} messages after the drain")
    secs = done["last"] - done["first"]
    secs_from_start = done["last"] - w.started
    return {
        "tasks": n,
        "drain_per_s": round(n / secs),
        "drain_from_process_start_per_s": round(n / secs_from_start),
        "startup_s": round(done["first"] - w.started, 3),
        "rss": rss,
    }


def mixed(args, r):
    """The mixed workload (see the module doc); returns its report."""
    import celery_app

    short_q, long_q = "short-task", "long-task"
    waits_key, long_key = "bench:mixed:waits", "bench:mixed:long"
    ready_key = "bench:ready:mixed"
    r.delete(short_q, long_q, waits_key, long_key, ready_key)
    os.environ.update(BENCH_WAITS_KEY=waits_key, BENCH_LONG_KEY=long_key)
    w = Worker(args, f"{short_q},{long_q}", 0, "bench:done:mixed", ready_key,
               concurrency=args.mixed_concurrency)
    wait_key(r, ready_key, "worker start", 120, proc=w.proc)
    time.sleep(1.0)
    n = args.mixed
    longs = n // 10
    shorts = n - longs
    log(f"mixed: {shorts} short + {longs} long at {args.mixed_rate}/s, prefork -c {args.mixed_concurrency}")
    period = 1.0 / args.mixed_rate
    start = time.perf_counter()
    for i in range(n):
        due = start + i * period
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if i % 10 == 9:
            celery_app.long.apply_async(args=[time.time()], queue=long_q)
        else:
            celery_app.short.apply_async(args=[time.time()], queue=short_q)
    send_secs = time.perf_counter() - start
    limit = 60 + 0.2 * longs
    t0 = time.time()
    while r.llen(waits_key) < shorts or r.llen(long_key) < longs:
        if w.proc.poll() is not None:
            raise SystemExit("celery-bench: the worker exited during the mixed workload")
        if time.time() - t0 > limit:
            raise SystemExit(f"celery-bench: the mixed workload did not finish within {limit:.0f} s "
                             f"({r.llen(waits_key)}/{shorts} short, {r.llen(long_key)}/{longs} long)")
        time.sleep(0.05)
    rss = w.stop()
    waits = sorted(float(v) * 1000 for v in r.lrange(waits_key, 0, -1))
    runs = [json.loads(v) for v in r.lrange(long_key, 0, -1)]
    long_waits = sorted(run[0] * 1000 for run in runs)
    window = max(run[2] for run in runs) - min(run[1] for run in runs) if runs else 0
    busy = sum(run[2] - run[1] for run in runs)
    r.delete(short_q, long_q, waits_key, long_key, ready_key)

    def summary(v):
        return {"samples": len(v), "p50": round(percentile(v, 50), 3), "p90": round(percentile(v, 90), 3),
                "p99": round(percentile(v, 99), 3), "max": round(v[-1], 3)} if v else None

    # The slots a long task can take: any of the pool's processes.
    return {
        "workload": "mixed", "tasks": n, "short_tasks": shorts, "long_tasks": longs,
        "concurrency": args.mixed_concurrency, "rate_per_s": args.mixed_rate,
        "send_secs": round(send_secs, 3),
        "short_wait_ms": summary(waits), "long_wait_ms": summary(long_waits),
        "long_busy_processes": round(busy / window, 3) if window > 0 else None,
        "rss": rss,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    ap.add_argument("--tasks", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--round-trips", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--with-results", action="store_true", help="also drain with results stored")
    ap.add_argument("--queue", default=f"celery-bench-{os.getpid()}")
    ap.add_argument("--limit", type=float, default=1800, help="seconds allowed per phase")
    ap.add_argument("--worker-log", default=None, help="append the workers' output here")
    ap.add_argument("--no-batch", action="store_true", help="skip the group() enqueue phase")
    ap.add_argument("--mixed", type=int, default=0, help="run only the mixed workload, with N tasks")
    ap.add_argument("--mixed-rate", type=float, default=100.0, help="mixed workload: tasks sent per second")
    ap.add_argument("--mixed-concurrency", type=int, default=4, help="mixed workload: prefork processes")
    args = ap.parse_args()

    os.environ["BENCH_REDIS_URL"] = args.redis_url
    os.environ["BENCH_QUEUE"] = args.queue
    sys.path.insert(0, str(HERE))
    import celery
    import celery_app

    r = redis.Redis.from_url(args.redis_url)
    r.ping()
    if args.mixed:
        report = {"celery": celery.__version__, "mixed": mixed(args, r)}
        print(json.dumps(report))
        return
    q, qb, qr, qrt = args.queue, args.queue + "-batch", args.queue + "-results", args.queue + "-rt"
    r.delete(q, qb, qr, qrt)
    report = {"celery": celery.__version__, "tasks": args.tasks, "concurrency": args.concurrency}

    n = args.tasks
    log(f"enqueue: {n} x noop.delay()")
    t = time.perf_counter()
    for _ in range(n):
        celery_app.noop.delay()
    report["enqueue_single_per_s"] = round(n / (time.perf_counter() - t))
    assert r.llen(q) == n, f"expected {n} messages in {q}, found {r.llen(q)}"

    if not args.no_batch:
        log(f"enqueue: {n} x noop via group().apply_async() in chunks of {args.batch}")
        t = time.perf_counter()
        enqueue_group(celery_app.noop.s(), n, args.batch, qb)
        report["enqueue_group_per_s"] = round(n / (time.perf_counter() - t))
        report["batch"] = args.batch
        r.delete(qb)

    report["drain"] = drain(args, r, q, n, "drain (results ignored)")

    if args.with_results:
        log(f"prefill: {n} x noop_r via group()")
        enqueue_group(celery_app.noop_r.s(), n, args.batch, qr)
        report["drain_results"] = drain(args, r, qr, n, "drain (results stored)")
        # Delete the stored results (celery-task-meta-*) this phase wrote.
        batch = []
        for key in r.scan_iter(match="celery-task-meta-*", count=1000):
            batch.append(key)
            if len(batch) == 1000:
                r.unlink(*batch)
                batch = []
        if batch:
            r.unlink(*batch)

    if args.round_trips > 0:
        ready_key = f"bench:ready:{qrt}"
        r.delete(ready_key)
        w = Worker(args, qrt, 0, f"bench:done:{qrt}", ready_key)
        wait_key(r, ready_key, "worker start", 120, proc=w.proc)
        time.sleep(2.0)
        rss_idle, pss_idle = w.rss.sample()
        report["idle_rss_sum_mb"] = round(rss_idle / 1024, 1)
        report["idle_pss_sum_mb"] = round(pss_idle / 1024, 1)
        log(f"round trip: {args.warmup} warm-up + {args.round_trips} x echo.delay().get()")
        for _ in range(args.warmup):
            celery_app.echo.apply_async(queue=qrt).get(timeout=30)
        samples = []
        for _ in range(args.round_trips):
            t = time.perf_counter()
            res = celery_app.echo.apply_async(queue=qrt)
            res.get(timeout=30)
            samples.append((time.perf_counter() - t) * 1000)
            res.forget()
        w.stop()
        samples.sort()
        report["round_trip_ms"] = {
            "samples": len(samples),
            "p50": round(percentile(samples, 50), 3),
            "p90": round(percentile(samples, 90), 3),
            "p99": round(percentile(samples, 99), 3),
        }
    r.delete(q, qb, qr, qrt)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
