#!/usr/bin/env bash
# Side-by-side benchmark on RabbitMQ: `celeriac bench --broker amqp://...` and Python
# Celery (`celery worker --pool prefork -c 2`, default settings) on the same RabbitMQ,
# results on Redis; writes a table into BENCHMARKS.md between the
# <!-- bench/amqp.sh:begin --> / end markers (or prints it with --no-write).
#
#   bash bench/amqp.sh                      # 20,000 no-op tasks
#   bash bench/amqp.sh --tasks 5000 --no-write
#
# Options:
#   --tasks N          tasks per enqueue / drain phase (default 20000)
#   --amqp-url URL     RabbitMQ (default amqp://guest:guest@127.0.0.1:5672//); every
#                      run uses queues of its own and deletes them
#   --redis-url URL    Redis for Celery's drain bookkeeping and round-trip results
#                      (default redis://127.0.0.1:6379/12; only this run's keys are
#                      touched)
#   --celeriac PATH    use this celeriac binary (default: cargo build --release)
#   --no-write         print the table only
#
# Needs: the venv (scripts/python-env.sh), cargo, RabbitMQ and Redis.
set -euo pipefail
cd "$(dirname "$0")/.."

tasks=20000
amqp_url=amqp://guest:guest@127.0.0.1:5672//
redis_url=redis://127.0.0.1:6379/12
celeriac=""
write=1
command_line="bash bench/amqp.sh$(printf ' %q' "$@")"

die() { echo "amqp.sh: $*" >&2; exit 2; }
say() { echo "amqp.sh: $*" >&2; }

while [[ $# -gt 0 ]]; do
  case $1 in
    --tasks) tasks=${2:?--tasks needs a number}; shift 2 ;;
    --amqp-url) amqp_url=${2:?--amqp-url needs a URL}; shift 2 ;;
    --redis-url) redis_url=${2:?--redis-url needs a URL}; shift 2 ;;
    --celeriac) celeriac=${2:?--celeriac needs a path}; shift 2 ;;
    --no-write) write=0; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ $tasks =~ ^[1-9][0-9]*$ ]] || die "--tasks must be a positive number, got '$tasks'"

work=$(mktemp -d /tmp/celeriac-amqp-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

bash scripts/python-env.sh >&2
py=.venv/bin/python
if [[ -z $celeriac ]]; then
  say "cargo build --release --bin celeriac"
  cargo build --release --bin celeriac >&2
  celeriac=target/release/celeriac
fi
[[ -x $celeriac ]] || die "no celeriac binary at $celeriac"
rabbitmq=$(rabbitmqctl version 2>/dev/null | tail -n 1 || echo unknown)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# celeriac bench purges its queues at the end; x-expires has RabbitMQ delete them.
case $amqp_url in *\?*) bench_url="$amqp_url&queue_expires=60000" ;; *) bench_url="$amqp_url?queue_expires=60000" ;; esac

say "celeriac on RabbitMQ: $tasks tasks"
"$celeriac" --log error --broker "$bench_url" --backend "$redis_url" bench --tasks "$tasks" \
  --single-sends "$tasks" --latency-samples 1000 --round-trips 500 --json \
  >"$work/celeriac.out" 2>"$work/celeriac.err" || { cat "$work/celeriac.err" >&2; die "celeriac bench failed"; }
tail -n 1 "$work/celeriac.out" >"$work/celeriac.json"

say "celeriac on RabbitMQ: $tasks tasks, Celery's prefetch x4"
"$celeriac" --log error --broker "$bench_url" bench --tasks "$tasks" --prefetch-multiplier 4 \
  --single-sends 0 --latency-samples 0 --round-trips 0 --json \
  >"$work/celeriac4.out" 2>"$work/celeriac4.err" || { cat "$work/celeriac4.err" >&2; die "celeriac bench failed"; }
tail -n 1 "$work/celeriac4.out" >"$work/celeriac4.json"

say "Python Celery on RabbitMQ: $tasks tasks (prefork -c 2)"
"$py" bench/celery_amqp_bench.py --amqp-url "$amqp_url" --redis-url "$redis_url" --tasks "$tasks" \
  --worker-log "$work/celery-worker.log" >"$work/celery.json" \
  || { tail -n 30 "$work/celery-worker.log" >&2 || true; die "the Celery benchmark failed"; }
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

WORK=$work WRITE=$write COMMAND_LINE=$command_line TASKS=$tasks RABBITMQ=$rabbitmq \
LOAD_START=$load_start LOAD_END=$load_end "$py" - <<'PY'
import json, os, pathlib, platform, subprocess, datetime

work = pathlib.Path(os.environ["WORK"])
c = json.loads((work / "celeriac.json").read_text())
c4 = json.loads((work / "celeriac4.json").read_text())
p = json.loads((work / "celery.json").read_text())


def rate(v):
    return f"{v:,.0f}/s"


def ratio(a, b):
    return f"**{a / b:.1f}×**" if b else "–"


commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
lines = [
    "<!-- bench/amqp.sh:begin -->",
    f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} × {cpu}, "
    f"RabbitMQ {os.environ['RABBITMQ']}, Python {platform.python_version()}, celeriac {commit}; "
    f"{os.environ['TASKS']} no-op tasks; load average {os.environ['LOAD_START']} at start, "
    f"{os.environ['LOAD_END']} at end. Reproduce: `{os.environ['COMMAND_LINE']}`.",
    "",
    "| workload (RabbitMQ) | Celery 5 (prefork -c 2) | celeriac (-c 2) | ratio |",
    "|---|---|---|---|",
    f"| enqueue, one publish at a time | {rate(p['enqueue_single_per_s'])} | {rate(c['enqueue_single_per_s'])} | "
    f"{ratio(c['enqueue_single_per_s'], p['enqueue_single_per_s'])} |",
    f"| enqueue, one at a time, celeriac with deferred confirms (`task_publish_confirms = \"deferred\"`) | {rate(p['enqueue_single_per_s'])} | "
    f"{rate(c.get('enqueue_single_deferred_per_s') or 0)} | {ratio(c.get('enqueue_single_deferred_per_s') or 0, p['enqueue_single_per_s'])} |",
    f"| enqueue, batched (celeriac: 1,000 per confirmed publish) | – | {rate(c['enqueue_per_s'])} | – |",
    f"| drain prefilled, results ignored (celeriac prefetch ×{c['prefetch_multiplier']}) | {rate(p['drain_per_s'])} | {rate(c['drain_per_s'])} | "
    f"{ratio(c['drain_per_s'], p['drain_per_s'])} |",
    f"| drain prefilled, results ignored, celeriac at Celery's prefetch ×4 | {rate(p['drain_per_s'])} | "
    f"{rate(c4['drain_per_s'])} | {ratio(c4['drain_per_s'], p['drain_per_s'])} |",
    f"| send→start latency p50 / p99 (celeriac) | – | {c['latency_ms']['p50']} / {c['latency_ms']['p99']} ms | – |",
    f"| round trip p50 (celeriac, results on Redis) | – | {c['round_trip_ms']['p50']} ms | – |",
    "<!-- bench/amqp.sh:end -->",
]
section = "\n".join(lines)
if os.environ["WRITE"] == "1":
    path = pathlib.Path("BENCHMARKS.md")
    text = path.read_text()
    begin, end = "<!-- bench/amqp.sh:begin -->", "<!-- bench/amqp.sh:end -->"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## RabbitMQ (AMQP)\n\n" + section + "\n"
    path.write_text(text)
    print("amqp.sh: wrote the section into BENCHMARKS.md", file=__import__("sys").stderr)
print(section)
PY
