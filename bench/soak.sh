#!/usr/bin/env bash
# Soak (issue 10 §2, "Load and soak"): a steady mixed workload for --minutes (default
# 10) against ONE worker process, then an account of every task.
#
# Two processes of the celeriac binary:
#   worker    `celeriac bench --soak-worker` on `short-task` (2 slots, prefetch x128)
#             and `long-task` (3 slots, prefetch x1); one line per task run in a record
#             file (kind, id, retries, start and send time);
#   producer  `celeriac bench --soak`: --rate tasks a second (default 100), one
#             send_task at a time; of every 100: 81 short 1 ms tasks, 4 that store their
#             result, 3 that fail once and retry after 1 s, 2 that always fail (FAILURE
#             stored) on `short-task`, and 10 of 200 ms on `long-task`; reads the queue
#             depths every second; when the time is up, waits for the queues to empty and
#             checks every stored result.
# This script samples the worker's RSS every second, stops the worker (SIGTERM) and
# runs bench/soak_report.py, which reports per minute (sent, run, throughput, short-task
# wait p50/p99, queue depths, worker RSS) and checks: every task ran exactly once (the
# retried ones exactly twice) and every stored result is right; the worker's RSS did
# not trend upward (max RSS of the last minute ≤ 1.2 × that of the first). The section
# goes into BENCHMARKS.md between <!-- bench/soak.sh:begin broker=B --> / end markers.
# Exit status 1 when a check fails. Not part of .ci/run.
#
#   bash bench/soak.sh                          # 10 minutes on Redis
#   bash bench/soak.sh --minutes 1 --no-write   # a short try
#   bash bench/soak.sh --broker sqlite          # embedded SQLite (temp file)
#
# Options:
#   --minutes N        how long the producer sends (default 10)
#   --rate R           tasks sent per second (default 100)
#   --broker B         redis (default), sqlite (a temp file; results in it too) or amqp
#                      (RabbitMQ at --amqp-url, results on --redis-url)
#   --redis-url URL    a Redis db of its own (default redis://127.0.0.1:6379/15);
#                      FLUSHDB'd before and after; db 0 refused
#   --amqp-url URL     default amqp://guest:guest@127.0.0.1:5672//; the queues
#                      short-task and long-task there are purged before and after
#   --short-slots N / --long-slots N   (default 2 / 3)
#   --celeriac PATH    the celeriac binary (default: cargo build --release)
#   --label TEXT       what the binary is built from (default: the commit)
#   --out FILE         write the section into FILE (default BENCHMARKS.md); --no-write
#                      prints it only
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=10
rate=100
broker=redis
redis_url=redis://127.0.0.1:6379/15
amqp_url=amqp://guest:guest@127.0.0.1:5672//
short_slots=2
long_slots=3
celeriac=""
label=""
out=BENCHMARKS.md
write=1
command_line="bash bench/soak.sh$(printf ' %q' "$@")"

die() { echo "soak.sh: $*" >&2; exit 2; }
say() { echo "soak.sh: $*" >&2; }

while [[ $# -gt 0 ]]; do
  case $1 in
    --minutes) minutes=${2:?}; shift 2 ;;
    --rate) rate=${2:?}; shift 2 ;;
    --broker) broker=${2:?}; shift 2 ;;
    --redis-url) redis_url=${2:?}; shift 2 ;;
    --amqp-url) amqp_url=${2:?}; shift 2 ;;
    --short-slots) short_slots=${2:?}; shift 2 ;;
    --long-slots) long_slots=${2:?}; shift 2 ;;
    --celeriac) celeriac=${2:?}; shift 2 ;;
    --label) label=${2:?}; shift 2 ;;
    --out) out=${2:?}; write=1; shift 2 ;;
    --no-write) write=0; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ $minutes =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--minutes must be a number"
[[ $rate =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--rate must be a number"
[[ $broker == redis || $broker == sqlite || $broker == amqp ]] || die "--broker must be redis, sqlite or amqp"
[[ $redis_url =~ ^redis://[^/]+/[0-9]+$ ]] || die "--redis-url must name a db number (got $redis_url)"
[[ ${redis_url##*/} != 0 ]] || die "refusing db 0 of $redis_url: the soak flushes its db"

work=$(mktemp -d /tmp/celeriac-soak.XXXXXX)
worker_pid=""
sampler_pid=""
cleanup() {
  if [[ -n $worker_pid ]] && kill -0 "$worker_pid" 2>/dev/null; then kill -TERM "$worker_pid" 2>/dev/null || true; fi
  if [[ -n $sampler_pid ]] && kill -0 "$sampler_pid" 2>/dev/null; then kill "$sampler_pid" 2>/dev/null || true; fi
  if [[ -x .venv/bin/python && $broker != sqlite ]]; then flushdb >/dev/null 2>&1 || true; fi
  if [[ $broker == amqp && -n ${celeriac:-} ]]; then
    "$celeriac" --log error --broker "$amqp_url" purge -Q short-task long-task --force >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

source bench/common.sh
bench_prepare

case $broker in
  redis) broker_url=$redis_url; backend_url=$redis_url ;;
  sqlite) broker_url="sqlite://$work/soak.db"; backend_url="sqlite://$work/soak.db" ;;
  amqp) broker_url=$amqp_url; backend_url=$redis_url ;;
esac
if [[ $broker != sqlite ]]; then
  redis_version=$(bench_redis_version) || exit 2
  flushdb
else
  redis_version=""
fi
if [[ $broker == amqp ]]; then
  "$celeriac" --log error --broker "$amqp_url" purge -Q short-task long-task --force >/dev/null 2>&1 || true
fi
git_fact=$(bench_git_fact)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
say "load average at start: $load_start"

# 1. The worker, in a process of its own.
common=(--log warn --broker "$broker_url" --backend "$backend_url")
"$celeriac" "${common[@]}" bench --soak-worker --record "$work/runs.log" \
  --short-slots "$short_slots" --long-slots "$long_slots" --json >"$work/worker.out" 2>"$work/worker.err" &
worker_pid=$!
for _ in $(seq 1 100); do
  grep -q "soak worker: running" "$work/worker.err" 2>/dev/null && break
  kill -0 "$worker_pid" 2>/dev/null || { cat "$work/worker.err" >&2; die "the worker exited"; }
  sleep 0.1
done
sleep 1

# 2. Its resident memory, every second (unix time, MiB, 1-minute load average).
(
  while kill -0 "$worker_pid" 2>/dev/null; do
    awk -v t="$(date +%s.%N)" -v l="$(cut -d' ' -f1 /proc/loadavg)" \
      '/^VmRSS/ {printf "%s %.3f %s\n", t, $2/1024, l}' "/proc/$worker_pid/status" 2>/dev/null || true
    sleep 1
  done
) >"$work/rss.log" &
sampler_pid=$!

# 3. The producer, for --minutes.
say "producer: $rate tasks/s for $minutes min on $broker (worker pid $worker_pid)"
if ! "$celeriac" "${common[@]}" bench --soak --minutes "$minutes" --mixed-rate "$rate" --record "$work/sent.log" \
  --short-slots "$short_slots" --long-slots "$long_slots" --json >"$work/producer.out" 2>"$work/producer.err"; then
  tail -n 20 "$work/producer.err" >&2
  die "the producer failed"
fi
tail -n 1 "$work/producer.out" >"$work/producer.json"

# 4. Stop the worker, gracefully.
kill -TERM "$worker_pid"
wait "$worker_pid" || true
worker_pid=""
tail -n 1 "$work/worker.out" >"$work/worker.json" || true
kill "$sampler_pid" 2>/dev/null || true
wait "$sampler_pid" 2>/dev/null || true
sampler_pid=""
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
say "load average at end: $load_end"
warnings=$(grep -c -i "warn\|error" "$work/worker.err" || true)

bench_facts "$work/facts.json" "{\"broker\": \"$broker\", \"worker_log_lines\": $warnings}"

report=("$py" bench/soak_report.py --work "$work")
status=0
if ((write)); then
  "${report[@]}" --out "$out" || status=$?
  say "wrote the section into $out"
else
  "${report[@]}" || status=$?
fi
exit "$status"
